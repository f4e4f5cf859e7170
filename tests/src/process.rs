//! Long-running programs (real peers such as keepalived, nginx, gerbang itself) started
//! inside a namespace, stopped when their guard is dropped.
//!
//! [`Cmd`] describes the program; [`Netns::spawn`](crate::Netns::spawn) starts it under
//! `ip netns exec`, which `exec`s the program in place, so [`ChildGuard::pid`] is the
//! program's own pid. Each child leads its own process group: stopping it signals the whole
//! group (helpers it forked included), SIGTERM first and SIGKILL after a grace period.
//!
//! Also what servers that run as their own users need around that (the databases of
//! [`crate::postgres`] and of the tests): short programs run to completion
//! ([`run_program`]), directories and files owned by the server's user ([`owned_dir`],
//! [`owned_file`]), waiting for a server to answer ([`retry_until`]) and stopping one with
//! the signal that picks its shutdown mode ([`ChildGuard::stop_with`]).

use std::ffi::{OsStr, OsString};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, ensure};
use nix::sys::signal::{Signal, kill, killpg};
use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid};
use nix::unistd::{Pid, User, chown};

/// How long a child gets between SIGTERM and SIGKILL.
pub const TERM_GRACE: Duration = Duration::from_secs(3);

/// A program to start inside a namespace: program, arguments, environment, log file.
#[derive(Debug, Clone)]
pub struct Cmd {
    program: OsString,
    args: Vec<OsString>,
    envs: Vec<(OsString, OsString)>,
    current_dir: Option<PathBuf>,
    log: Option<PathBuf>,
}

impl Cmd {
    /// A command running `program` (looked up in `PATH`).
    pub fn new(program: impl AsRef<OsStr>) -> Cmd {
        Cmd {
            program: program.as_ref().to_owned(),
            args: Vec::new(),
            envs: Vec::new(),
            current_dir: None,
            log: None,
        }
    }

    /// Appends one argument.
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Cmd {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    /// Appends arguments.
    pub fn args<I, S>(mut self, args: I) -> Cmd
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// Sets an environment variable for the program.
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Cmd {
        self.envs
            .push((key.as_ref().to_owned(), value.as_ref().to_owned()));
        self
    }

    /// Runs the program in `dir`.
    pub fn current_dir(mut self, dir: impl AsRef<Path>) -> Cmd {
        self.current_dir = Some(dir.as_ref().to_owned());
        self
    }

    /// Appends the program's stdout and stderr to `path` (created if missing).
    /// Without a log file both go to `/dev/null`.
    pub fn log_to(mut self, path: impl AsRef<Path>) -> Cmd {
        self.log = Some(path.as_ref().to_owned());
        self
    }

    /// Starts this command as the tail of `prefix` (e.g. `ip netns exec NAME`).
    pub(crate) fn spawn_with(&self, mut prefix: Command) -> Result<ChildGuard> {
        prefix
            .arg(&self.program)
            .args(&self.args)
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .process_group(0);
        if let Some(dir) = &self.current_dir {
            prefix.current_dir(dir);
        }
        match &self.log {
            Some(path) => {
                let log = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .with_context(|| format!("opening log file {}", path.display()))?;
                let log_err: File = log.try_clone().context("duplicating log file")?;
                prefix.stdout(log).stderr(log_err);
            }
            None => {
                prefix.stdout(Stdio::null()).stderr(Stdio::null());
            }
        }
        let shown = self.program.to_string_lossy().into_owned();
        let child = prefix
            .spawn()
            .with_context(|| format!("starting {shown}"))?;
        tracing::debug!(program = %shown, pid = child.id(), "started child");
        Ok(ChildGuard {
            child,
            program: shown,
            status: None,
        })
    }
}

/// A running child process; stopped and reaped on drop.
#[derive(Debug)]
pub struct ChildGuard {
    child: Child,
    program: String,
    status: Option<ExitStatus>,
}

impl ChildGuard {
    /// The program's pid (also its process group id).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit status if the child has exited (reaping it), `None` while it runs.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        if self.status.is_none() {
            self.status = self
                .child
                .try_wait()
                .with_context(|| format!("waiting for {}", self.program))?;
        }
        Ok(self.status)
    }

    /// Stops the child (SIGTERM to its process group, SIGKILL after [`TERM_GRACE`]) and
    /// returns its exit status. Returns the recorded status if it had already exited.
    pub fn terminate(&mut self) -> Result<ExitStatus> {
        if let Some(status) = self.status {
            return Ok(status);
        }
        let pgid = Pid::from_raw(self.child.id() as i32);
        // The group is signalled only while the leader is unreaped (running or zombie):
        // its pid, and therefore the group id, cannot have been reused yet.
        if !self.exited_unreaped() {
            let _ = killpg(pgid, Signal::SIGTERM);
            let deadline = Instant::now() + TERM_GRACE;
            while !self.exited_unreaped() && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(10));
            }
        }
        // Leftover group members (or the leader itself, past the grace period).
        let _ = killpg(pgid, Signal::SIGKILL);
        let status = self
            .child
            .wait()
            .with_context(|| format!("reaping {}", self.program))?;
        tracing::debug!(program = %self.program, ?status, "child stopped");
        self.status = Some(status);
        Ok(status)
    }

    /// Sends `signal` to the program alone (a server's own shutdown then stops its
    /// helpers) and waits for it to exit; after `grace`, [`ChildGuard::terminate`]s it.
    /// Does nothing if it has exited already.
    pub fn stop_with(&mut self, signal: Signal, grace: Duration) {
        if matches!(self.try_wait(), Ok(Some(_))) {
            return;
        }
        let _ = kill(Pid::from_raw(self.child.id() as i32), signal);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if matches!(self.try_wait(), Ok(Some(_))) {
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
        let _ = self.terminate();
    }

    /// Whether the child has exited, without reaping it.
    fn exited_unreaped(&self) -> bool {
        let pid = Pid::from_raw(self.child.id() as i32);
        let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
        match waitid(Id::Pid(pid), flags) {
            Ok(WaitStatus::StillAlive) => false,
            Ok(_) => true,
            // ECHILD: already reaped elsewhere; treat as gone.
            Err(_) => true,
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Err(err) = self.terminate() {
            tracing::warn!(program = %self.program, "stopping child: {err:#}");
        }
    }
}

/// Whether `status` means "stopped by SIGTERM or exited cleanly", the two ways a well
/// behaved server ends after [`ChildGuard::terminate`].
pub fn stopped_cleanly(status: ExitStatus) -> bool {
    status.success() || status.signal() == Some(libc::SIGTERM)
}

/// Runs `program` to completion outside any namespace, with `env` added to the
/// environment; its stdout on success, else an error with its stderr.
pub fn run_program(
    program: impl AsRef<OsStr>,
    args: &[&str],
    env: &[(&str, &str)],
) -> Result<String> {
    let shown = format!("{} {}", program.as_ref().to_string_lossy(), args.join(" "));
    let out = Command::new(program)
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {shown}"))?;
    ensure!(
        out.status.success(),
        "{shown} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `dir` (and its parents), created if missing, owned by `user` with `mode`.
pub fn owned_dir(dir: &Path, user: &str, mode: u32) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let user = User::from_name(user)?.ok_or_else(|| anyhow!("no user {user}"))?;
    chown(dir, Some(user.uid), Some(user.gid))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))?;
    Ok(dir.to_path_buf())
}

/// Gives the existing file `path` to `user`, readable by it alone.
pub fn owned_file(path: &Path, user: &str) -> Result<()> {
    let user = User::from_name(user)?.ok_or_else(|| anyhow!("no user {user}"))?;
    chown(path, Some(user.uid), Some(user.gid))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(())
}

/// Calls `probe` every 100 ms until it succeeds, failing with its last error after
/// `timeout`.
pub fn retry_until<T>(timeout: Duration, mut probe: impl FnMut() -> Result<T>) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        match probe() {
            Ok(value) => return Ok(value),
            Err(err) if Instant::now() >= deadline => return Err(err),
            Err(_) => thread::sleep(Duration::from_millis(100)),
        }
    }
}
