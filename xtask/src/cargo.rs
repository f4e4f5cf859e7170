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

/// `gerbang` for another architecture, without the XDP program (userspace mode only).
pub fn build_cross(ctx: &Context, target: &str, release: bool) -> Result<()> {
    let mut cmd = ctx.cargo();
    cmd.args([
        "build",
        "--package",
        "lb-userspace",
        "--bin",
        "gerbang",
        "--target",
        target,
    ])
    .env(SKIP_EBPF.0, SKIP_EBPF.1);
    if release {
        cmd.arg("--release");
    }
    ctx.run(&mut cmd)?;
    let profile = if release { "release" } else { "debug" };
    let binary = ctx.target_dir.join(target).join(profile).join("gerbang");
    let size = std::fs::metadata(&binary)?.len();
    println!("{} ({:.1} MB)", binary.display(), size as f64 / 1e6);
    Ok(())
}

/// Builds without the XDP object: what a cross build for a host without XDP needs.
const SKIP_EBPF: (&str, &str) = ("GERBANG_SKIP_EBPF", "1");
/// The 32-bit ARM target (Raspberry Pi Zero 2 W) the test command checks under qemu-arm.
const ARMV7: &str = "armv7-unknown-linux-gnueabihf";

/// A CI gate: one cargo invocation that must succeed.
struct Gate {
    name: &'static str,
    args: &'static [&'static str],
    env: &'static [(&'static str, &'static str)],
}

/// In order; the first failure stops the run. Tests run with --no-fail-fast so one failure
/// does not hide the others.
const GATES: &[Gate] = &[
    Gate {
        name: "fmt",
        args: &["fmt", "--all", "--", "--check"],
        env: &[],
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
        env: &[],
    },
    Gate {
        name: "build",
        args: &["build", "--workspace", "--all-targets"],
        env: &[],
    },
    // The Pi build: its binary for the loopback proxy test (in `test`), its unit tests
    // under qemu-arm.
    Gate {
        name: "armv7",
        args: &[
            "build",
            "--package",
            "lb-userspace",
            "--bin",
            "gerbang",
            "--target",
            ARMV7,
        ],
        env: &[SKIP_EBPF],
    },
    Gate {
        name: "armv7-unit",
        args: &[
            "test",
            "--package",
            "lb-userspace",
            "--lib",
            "--target",
            ARMV7,
        ],
        env: &[SKIP_EBPF],
    },
    Gate {
        name: "test",
        args: &["test", "--workspace", "--no-fail-fast"],
        env: &[],
    },
    // Each fuzz target (fuzz/, cargo-fuzz on nightly) for a short bounded run from its seeds;
    // `cargo xtask fuzz TARGET` runs a longer one.
    Gate {
        name: "fuzz",
        args: &[
            "run",
            "--quiet",
            "--package",
            "xtask",
            "--",
            "fuzz",
            "--seconds",
            "15",
        ],
        env: &[],
    },
    // A smoke run of every benchmark so the harness never rots; it asserts nothing about
    // speed (it builds the release binary and writes under the target directory).
    Gate {
        name: "bench",
        args: &[
            "run",
            "--quiet",
            "--package",
            "xtask",
            "--",
            "bench",
            "--quick",
        ],
        env: &[],
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
        cmd.args(gate.args)
            .env("GERBANG_BIN", ctx.debug_bin())
            .env(
                "GERBANG_ARMV7_BIN",
                ctx.target_dir.join(ARMV7).join("debug").join("gerbang"),
            )
            .envs(gate.env.iter().copied());
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
