//! Where things are, and how xtask runs other programs.

use std::{
    env,
    ffi::OsStr,
    fmt::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

/// Paths every command needs, handed to the `demo` and `bench` modules too.
pub struct Context {
    /// The workspace root: the directory holding the top-level `Cargo.toml`.
    pub root: PathBuf,
    /// Cargo's target directory (`CARGO_TARGET_DIR`, else `<root>/target`).
    pub target_dir: PathBuf,
}

impl Context {
    pub fn new() -> Result<Self> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .context("xtask's manifest directory has no parent")?
            .to_path_buf();
        // Cargo reads a relative CARGO_TARGET_DIR against the directory it was started in,
        // which is ours too.
        let target_dir = match env::var_os("CARGO_TARGET_DIR") {
            Some(dir) => env::current_dir()
                .context("reading the current directory")?
                .join(dir),
            None => root.join("target"),
        };
        Ok(Self { root, target_dir })
    }

    /// `gerbang` as `cargo build` leaves it.
    pub fn debug_bin(&self) -> PathBuf {
        self.target_dir.join("debug/gerbang")
    }

    /// `gerbang` as `cargo build --release` leaves it.
    pub fn release_bin(&self) -> PathBuf {
        self.target_dir.join("release/gerbang")
    }

    /// A `cargo` command run in the workspace root, using the cargo that started xtask.
    pub fn cargo(&self) -> Command {
        let mut cmd = Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
        cmd.current_dir(&self.root);
        if env::var_os("CARGO_TARGET_DIR").is_some() {
            // A relative one would now resolve against the root, not where we were started.
            cmd.env("CARGO_TARGET_DIR", &self.target_dir);
        }
        cmd
    }

    /// Runs `cmd` with inherited stdio; fails with its command line and exit status.
    pub fn run(&self, cmd: &mut Command) -> Result<()> {
        let status = cmd
            .status()
            .with_context(|| format!("could not start `{}`", command_line(cmd)))?;
        if !status.success() {
            bail!("`{}` failed ({status})", command_line(cmd));
        }
        Ok(())
    }
}

/// Runs `cmd` without a terminal and with its output captured, which is shown only if it fails.
pub fn run_captured(cmd: &mut Command) -> Result<()> {
    let output = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("could not start `{}`", command_line(cmd)))?;
    if !output.status.success() {
        bail!(
            "`{}` failed ({})\n{}{}",
            command_line(cmd),
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
        );
    }
    Ok(())
}

/// Runs `cmd` for its standard output; `None` if it cannot start or fails.
pub fn query(cmd: &mut Command) -> Option<String> {
    let output = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
}

/// `cmd` as a shell line (environment overrides first), for messages.
pub fn command_line(cmd: &Command) -> String {
    let mut line = String::new();
    for (key, value) in cmd.get_envs() {
        if let Some(value) = value {
            let _ = write!(line, "{}={} ", key.display(), quote(value));
        }
    }
    line.push_str(&quote(cmd.get_program()));
    for arg in cmd.get_args() {
        line.push(' ');
        line.push_str(&quote(arg));
    }
    line
}

fn quote(word: &OsStr) -> String {
    let word = word.to_string_lossy();
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c));
    if plain {
        word.into_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// Whether xtask runs as root, which installing packages, XDP and the network tests need.
pub fn is_root() -> bool {
    nix::unistd::Uid::effective().is_root()
}

/// Fails unless xtask runs as root, saying that `what` needs it and `why`.
pub fn require_root(what: &str, why: &str) -> Result<()> {
    if !is_root() {
        bail!("{what} must run as root: {why}");
    }
    Ok(())
}
