//! The cargo steps behind `build`, `run`, `demo`, `bench` and `test`.

use std::time::{Duration, Instant};

use anyhow::Result;

use crate::context::Context;

/// `cargo build --workspace`; the lb-userspace build script compiles the XDP program.
pub fn build_workspace(ctx: &Context, release: bool) -> Result<()> {
    let mut cmd = ctx.cargo();
    cmd.args(["build", "--workspace"]);
    if release {
        cmd.arg("--release");
    }
    ctx.run(&mut cmd)
}

/// Builds `target/release/gerbang` and nothing else.
pub fn build_release_binary(ctx: &Context) -> Result<()> {
    ctx.run(
        ctx.cargo()
            .args(["build", "--release", "--package", "lb-userspace"]),
    )
}

/// A CI gate: one cargo invocation that must succeed.
struct Gate {
    name: &'static str,
    args: &'static [&'static str],
}

/// In order; the first failure stops the run. Tests run with --no-fail-fast so one failure
/// does not hide the others.
const GATES: &[Gate] = &[
    Gate {
        name: "fmt",
        args: &["fmt", "--all", "--", "--check"],
    },
    Gate {
        name: "clippy",
        args: &[
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ],
    },
    Gate {
        name: "build",
        args: &["build", "--workspace", "--all-targets"],
    },
    Gate {
        name: "test",
        args: &["test", "--workspace", "--no-fail-fast"],
    },
];

enum Outcome {
    Passed(Duration),
    Failed(Duration),
    Skipped,
}

/// Runs the gates with their output streamed, then prints one line per gate.
pub fn test(ctx: &Context) -> Result<()> {
    let mut outcomes = Vec::new();
    let mut failure = None;
    for gate in GATES {
        if failure.is_some() {
            outcomes.push((gate.name, Outcome::Skipped));
            continue;
        }
        let mut cmd = ctx.cargo();
        // Integration tests spawn the real binary. Set for every gate, not just `test`, so a
        // crate reading it at compile time is not rebuilt between `build` and `test`.
        cmd.args(gate.args).env("GERBANG_BIN", ctx.debug_bin());
        println!("==> {}: cargo {}", gate.name, gate.args.join(" "));
        let start = Instant::now();
        let result = ctx.run(&mut cmd);
        let took = start.elapsed();
        match result {
            Ok(()) => {
                println!("==> {}: ok in {:.1} s", gate.name, took.as_secs_f64());
                outcomes.push((gate.name, Outcome::Passed(took)));
            }
            Err(err) => {
                println!("==> {}: FAILED in {:.1} s", gate.name, took.as_secs_f64());
                outcomes.push((gate.name, Outcome::Failed(took)));
                failure = Some(err);
            }
        }
    }

    println!("\nsummary:");
    for (name, outcome) in &outcomes {
        match outcome {
            Outcome::Passed(took) => println!("  {name:<8} ok      {:>7.1} s", took.as_secs_f64()),
            Outcome::Failed(took) => println!("  {name:<8} FAILED  {:>7.1} s", took.as_secs_f64()),
            Outcome::Skipped => println!("  {name:<8} skipped"),
        }
    }
    match failure {
        Some(err) => Err(err),
        None => Ok(()),
    }
}
