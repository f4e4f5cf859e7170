//! `cargo xtask fuzz`: the cargo-fuzz targets in `fuzz/`, for the parsers of what gerbang
//! reads from outside (the config file, VRRP advertisements, control-socket requests).
//!
//! The fuzz crate is its own workspace, built by cargo-fuzz with the nightly toolchain into
//! `fuzz/target`, without the XDP object (`GERBANG_SKIP_EBPF=1`: no target reaches it), and
//! without a sanitizer: the parsers are safe Rust, so what fuzzing finds is panics (overflow
//! checks and debug assertions are on), hangs and runaway memory, which libFuzzer reports
//! without one, at twice the speed and without rebuilding the standard library.
//!
//! Each run reads the committed seeds (`fuzz/seeds/TARGET`) and grows a local corpus
//! (`fuzz/corpus/TARGET`, not committed); a failing input lands in `fuzz/artifacts/TARGET`.

use std::{fs, path::Path, process::Command, time::Instant};

use anyhow::{Context as _, Result, bail};

use crate::context::{Context, command_line};

/// The fuzz targets, as named in `fuzz/Cargo.toml`.
pub const TARGETS: [&str; 3] = ["config", "vrrp_packet", "control_request"];

/// Longest a single input may take before libFuzzer calls it a hang.
const INPUT_TIMEOUT_SECS: u32 = 10;

/// Builds every target, then runs `target` (or each in turn) for `seconds`.
pub fn run(ctx: &Context, target: Option<&str>, seconds: u64) -> Result<()> {
    let fuzz_dir = ctx.root.join("fuzz");
    let start = Instant::now();
    let mut build = cargo_fuzz(&fuzz_dir);
    build.arg("build").args(BUILD_FLAGS);
    println!("fuzz: building the targets: {}", command_line(&build));
    ctx.run(&mut build)?;
    println!("fuzz: built in {:.1} s", start.elapsed().as_secs_f64());

    let targets: Vec<&str> = match target {
        Some(target) => vec![target],
        None => TARGETS.to_vec(),
    };
    for target in targets {
        run_target(&fuzz_dir, target, seconds)?;
    }
    Ok(())
}

/// The same flags for `build` and `run`, so that `run` finds the build up to date.
const BUILD_FLAGS: &[&str] = &["--sanitizer", "none"];

/// `cargo fuzz` on the nightly toolchain, in `fuzz/`, with its own target directory.
fn cargo_fuzz(fuzz_dir: &Path) -> Command {
    let mut cmd = Command::new("rustup");
    cmd.args(["run", "nightly", "cargo", "fuzz"])
        .current_dir(fuzz_dir)
        .env("GERBANG_SKIP_EBPF", "1")
        // The workspace's target directory holds stable builds; nothing there is reusable
        // by the instrumented nightly one.
        .env_remove("CARGO_TARGET_DIR")
        // Set by the cargo running xtask: it would be the stable one.
        .env_remove("CARGO")
        .env_remove("RUSTC");
    cmd
}

fn run_target(fuzz_dir: &Path, target: &str, seconds: u64) -> Result<()> {
    let corpus = fuzz_dir.join("corpus").join(target);
    fs::create_dir_all(&corpus).with_context(|| format!("creating {}", corpus.display()))?;
    let logs = fuzz_dir.join("target").join("logs");
    fs::create_dir_all(&logs)?;
    let log = logs.join(format!("{target}.log"));

    let mut cmd = cargo_fuzz(fuzz_dir);
    cmd.args(["run"]).args(BUILD_FLAGS).arg(target);
    // The first directory is where libFuzzer writes what it finds; the seeds stay as
    // committed.
    cmd.arg(&corpus).arg(fuzz_dir.join("seeds").join(target));
    cmd.arg("--").args([
        format!("-max_total_time={seconds}"),
        format!("-timeout={INPUT_TIMEOUT_SECS}"),
        "-print_final_stats=1".to_string(),
    ]);
    let dictionary = fuzz_dir.join(format!("{target}.dict"));
    if dictionary.exists() {
        cmd.arg(format!("-dict={}", dictionary.display()));
    }
    println!("fuzz: {target} for {seconds} s (log: {})", log.display());
    let output = fs::File::create(&log)?;
    cmd.stdout(output.try_clone()?).stderr(output);
    let start = Instant::now();
    let status = cmd
        .status()
        .with_context(|| format!("could not start `{}`", command_line(&cmd)))?;
    let took = start.elapsed();
    let text = fs::read_to_string(&log).unwrap_or_default();
    if !status.success() {
        let tail: Vec<&str> = text.lines().rev().take(60).collect();
        for line in tail.into_iter().rev() {
            println!("    {line}");
        }
        let artifact = text.lines().find_map(|l| {
            l.split_once("Test unit written to ")
                .map(|(_, path)| path.trim())
        });
        match artifact {
            Some(path) => bail!(
                "fuzz target {target} failed ({status}); the input is {path}. Reproduce with \
                 `cd fuzz && GERBANG_SKIP_EBPF=1 cargo +nightly fuzz run --sanitizer none \
                 {target} {path}`, fix the parser, and add the input as a regression test"
            ),
            None => bail!(
                "fuzz target {target} failed ({status}): see {}",
                log.display()
            ),
        }
    }
    println!(
        "fuzz: {target}: {} in {:.1} s, corpus {} inputs",
        summary(&text),
        took.as_secs_f64(),
        fs::read_dir(&corpus).map(Iterator::count).unwrap_or(0),
    );
    Ok(())
}

/// libFuzzer's "Done N runs in S second(s)", and its final coverage, from the log.
fn summary(log: &str) -> String {
    let runs = log
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("Done "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse::<u64>().ok());
    let coverage = log
        .lines()
        .rev()
        .find_map(|l| l.split_once(" cov: "))
        .and_then(|(_, rest)| rest.split_whitespace().next());
    match (runs, coverage) {
        (Some(runs), Some(cov)) => format!("{runs} runs, {cov} coverage points"),
        (Some(runs), None) => format!("{runs} runs"),
        _ => "ran".to_string(),
    }
}
