//! `cargo xtask`: the project's automation, in Rust so it needs nothing but cargo.
//!
//! Every command that builds first runs [`setup`], which is quick when the machine is ready,
//! so a fresh Debian 12 machine needs only `cargo xtask test` (which is what CI runs).

mod bench;
mod cargo;
mod context;
mod demo;
mod fuzz;
mod setup;

use std::{ffi::OsString, os::unix::process::CommandExt as _, path::PathBuf, process::ExitCode};

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};

use crate::context::{Context, command_line, require_root};

#[derive(Parser)]
#[command(
    bin_name = "cargo xtask",
    about = "Build, test, run and benchmark gerbang"
)]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install the toolchain and system packages gerbang needs (apt, nightly rust-src, bpf-linker)
    Setup,
    /// Set up, then build the whole workspace, XDP program included
    Build {
        /// Build with the release profile
        #[arg(long)]
        release: bool,
        /// Build `gerbang` for another target, without the XDP program (userspace mode):
        /// armv7-unknown-linux-gnueabihf (Raspberry Pi Zero 2 W) or aarch64-unknown-linux-gnu
        #[arg(long, value_name = "TRIPLE")]
        target: Option<String>,
    },
    /// Set up, build the release binary and run `gerbang run` with a config (root)
    Run {
        /// Config file [default: config/gerbang.toml in the workspace]
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// More arguments for `gerbang run`, after `--`
        #[arg(last = true, value_name = "EXTRA_ARGS")]
        extra: Vec<OsString>,
    },
    /// Set up, then run the CI gates: fmt, clippy, build, tests (root)
    Test,
    /// Set up, build the release binary and run the demo
    Demo,
    /// Set up, build the release binary and run the benchmarks
    Bench {
        /// Short runs: checks the benchmarks work, numbers are rough
        #[arg(long)]
        quick: bool,
    },
    /// Set up, build the cargo-fuzz targets in fuzz/ (nightly) and fuzz one, or each in turn
    Fuzz {
        /// The target [default: each in turn]
        #[arg(value_parser = fuzz::TARGETS)]
        target: Option<String>,
        /// How long to fuzz each target, in seconds
        #[arg(long, default_value_t = 600)]
        seconds: u64,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse().command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(task: Task) -> Result<()> {
    let ctx = Context::new()?;
    match task {
        Task::Setup => setup::ensure(),
        Task::Build { release, target } => {
            setup::ensure()?;
            match target {
                Some(target) => cargo::build_cross(&ctx, &target, release),
                None => cargo::build_workspace(&ctx, release),
            }
        }
        Task::Run { config, extra } => {
            // Check before the build: a release build is slow to find this out after.
            require_root("`cargo xtask run`", "gerbang attaches XDP programs")?;
            setup::ensure()?;
            cargo::build_release_binary(&ctx)?;
            let config = config.unwrap_or_else(|| ctx.root.join("config/gerbang.toml"));
            let mut gerbang = std::process::Command::new(ctx.release_bin());
            gerbang.arg("run").arg("--config").arg(config).args(extra);
            // Replace xtask so signals and the exit status are gerbang's own.
            let err = gerbang.exec();
            Err(err).with_context(|| format!("could not run `{}`", command_line(&gerbang)))
        }
        Task::Test => {
            require_root(
                "`cargo xtask test`",
                "the integration tests build network namespaces and attach XDP programs",
            )?;
            setup::ensure()?;
            cargo::test(&ctx)
        }
        Task::Demo => {
            setup::ensure()?;
            cargo::build_release_binary(&ctx)?;
            demo::run(&ctx)
        }
        Task::Bench { quick } => {
            setup::ensure()?;
            cargo::build_release_binary(&ctx)?;
            bench::run(&ctx, quick)
        }
        Task::Fuzz { target, seconds } => {
            setup::ensure()?;
            fuzz::run(&ctx, target.as_deref(), seconds)
        }
    }
}
