//! `cargo xtask bench`: gerbang against the direct path and its peers, on this machine.
//!
//! One run measures, one after the other and in the same network-namespace topology, the
//! direct path (no balancer: the ceiling), gerbang with XDP in native and in generic mode,
//! gerbang's userspace proxy, HAProxy (`mode tcp`, round-robin) and nginx's stream
//! module, all doing the same job over the same nginx backends:
//!
//! - UDP: small datagrams from several `gb-flood` processes (`sendmmsg`), delivered
//!   packets per second and loss at full speed, and CPU per packet at a fixed rate;
//! - TCP: new connections per second (`wrk`, one HTTP request per connection);
//! - HTTP keep-alive: requests per second and latency with `wrk`, at full speed and at a
//!   moderate pace;
//! - cost: the machine's CPU time (`/proc/stat`) per packet or connection, and the
//!   balancer's memory idle and holding a thousand connections;
//! - failover: a backend's death under load, and a VRRP master's death (gerbang pair and
//!   keepalived + HAProxy pair, 100 ms and 1 s adverts);
//! - the write service following a PostgreSQL promotion (a primary and its streaming
//!   replica behind gerbang, writes all the while).
//!
//! Each figure is the median of several rounds, with its range. The results go to
//! `bench/results.md` and `bench/results.png` (`--quick`: short runs, one round, written
//! under the target directory so the committed results stay; `cargo xtask test` runs it
//! so the harness keeps working, and it asserts nothing about speed).
//!
//! Everything runs inside namespaces this run creates; they, the programs in them and
//! every attached program are removed when the run ends, fails or is interrupted (Ctrl-C
//! lets the current step finish, then tears down).

mod chart;
mod failover;
mod load;
mod measure;
mod peers;
mod promotion;
mod report;
mod results;
mod throughput;

use std::{
    fs,
    path::PathBuf,
    sync::atomic::{AtomicBool, Ordering},
    time::Instant,
};

use anyhow::{Context as _, Result, bail};
use gerbang_testbed::{Netns, TwoArm, remove_stale};
use nix::sys::{
    resource::{Resource, getrlimit, setrlimit},
    signal::{SigHandler, Signal, signal},
};

use crate::context::{Context, require_root, run_captured};

use self::{peers::Backends, results::Results};

/// How long and how often each figure is measured.
pub struct Params {
    /// Rounds over all systems; each figure is the median over them.
    pub rounds: usize,
    /// Length of one measurement run.
    pub seconds: u32,
    /// gb-flood processes, and UDP flows each.
    pub senders: usize,
    pub flows_per_sender: usize,
    /// Datagrams per second of the fixed-rate run that measures CPU per packet.
    pub udp_rate: u64,
    /// wrk threads (one per backend, so the direct path spreads like round-robin) and
    /// connections.
    pub wrk_threads: usize,
    pub connections: usize,
    pub paced_connections: usize,
    /// Connections held open to measure a balancer's memory under them.
    pub held_connections: usize,
    /// Repetitions of each failover measurement.
    pub failover_runs: usize,
    /// Whether to measure VRRP with 1 s adverts too (about 10 s a run).
    pub slow_vrrp: bool,
}

impl Params {
    fn new(quick: bool) -> Params {
        Params {
            // Five: one 4 s run of a system moves by up to a tenth from the next on a
            // 2-core machine shared by load generator, balancer and backends, and the
            // median of five holds still where that of three did not.
            rounds: if quick { 1 } else { 5 },
            seconds: if quick { 1 } else { 4 },
            senders: 2,
            flows_per_sender: 12,
            udp_rate: 40_000,
            wrk_threads: throughput::BACKENDS,
            connections: 48,
            paced_connections: 6,
            held_connections: 1000,
            failover_runs: if quick { 1 } else { 3 },
            slow_vrrp: !quick,
        }
    }
}

/// What every benchmark needs.
pub struct Bench<'a> {
    pub ctx: &'a Context,
    pub quick: bool,
    pub params: Params,
    /// Configs, logs and scripts of this run; removed at the end.
    pub scratch: PathBuf,
    /// The release `gerbang` and `gb-flood`.
    pub gerbang: PathBuf,
    pub flood: PathBuf,
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: std::os::raw::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Ends the benchmark early, cleaning up, once Ctrl-C was pressed.
pub fn checkpoint() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

pub fn run(ctx: &Context, quick: bool) -> Result<()> {
    require_root(
        "`cargo xtask bench`",
        "it creates network namespaces and attaches XDP",
    )?;
    for sig in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only stores to an atomic.
        unsafe { signal(sig, SigHandler::Handler(on_signal)) }
            .context("installing a signal handler")?;
    }
    let stale = remove_stale()?;
    if stale > 0 {
        println!("bench: removed {stale} network namespaces left by an earlier, killed run");
    }
    // Held connections, and the proxies started from here (they inherit the limit), need
    // more than 1024 descriptors.
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;

    println!("bench: building gb-flood (release)");
    run_captured(ctx.cargo().args([
        "build",
        "--release",
        "--package",
        "gerbang-testbed",
        "--bin",
        "gb-flood",
    ]))?;
    let scratch = std::env::temp_dir().join(format!("gerbang-bench-{}", std::process::id()));
    fs::create_dir_all(&scratch)?;
    let bench = Bench {
        ctx,
        quick,
        params: Params::new(quick),
        scratch: scratch.clone(),
        gerbang: ctx.release_bin(),
        flood: ctx.target_dir.join("release/gb-flood"),
    };
    let result = run_in(&bench);
    // gerbang removes its pins when stopped; these are what a killed one left.
    remove_pins();
    if result.is_ok() {
        let _ = fs::remove_dir_all(&scratch);
    } else {
        println!(
            "bench: configs and logs of this run are kept in {}",
            scratch.display()
        );
    }
    result
}

/// Removes the bpffs pin directories of this run's gerbangs, detaching what they hold.
fn remove_pins() {
    let prefix = format!("gerbang-bench-{}-", std::process::id());
    for entry in fs::read_dir("/sys/fs/bpf").into_iter().flatten().flatten() {
        if entry.file_name().to_string_lossy().starts_with(&prefix) {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

fn run_in(bench: &Bench<'_>) -> Result<()> {
    let started = Instant::now();
    let load_before = measure::load_average();
    let mut results = Results::default();
    println!(
        "bench: {} run, load average {load_before}",
        if bench.quick { "quick" } else { "full" }
    );
    {
        let t = TwoArm::new(throughput::BACKENDS)?;
        tune(&t)?;
        let mut backends = Backends::start(throughput::backend_hosts(&t), &bench.scratch)?;
        let systems = throughput::available_systems(bench, &t, &backends, &mut results);
        throughput::run(bench, &t, &backends, &systems, &mut results)?;
        failover::backend_death(bench, &t, &mut backends, &mut results)?;
    }
    failover::vrrp(bench, &mut results)?;
    promotion::run(bench, &mut results)?;

    let out_dir = if bench.quick {
        bench.ctx.target_dir.join("bench-quick")
    } else {
        bench.ctx.root.join("bench")
    };
    fs::create_dir_all(&out_dir)?;
    let machine = report::Machine::probe(
        load_before,
        measure::load_average(),
        started.elapsed(),
        &bench.gerbang,
    );
    let markdown = report::markdown(bench, &machine, &results);
    let md_path = out_dir.join("results.md");
    fs::write(&md_path, markdown)?;
    let png_path = out_dir.join("results.png");
    chart::draw(&results, &png_path)?;
    println!(
        "bench: done in {:.0} s; wrote {} and {}",
        started.elapsed().as_secs_f64(),
        md_path.display(),
        png_path.display()
    );
    if !results.failures.is_empty() {
        bail!(
            "the benchmark could not measure everything:\n  {}",
            results.failures.join("\n  ")
        );
    }
    Ok(())
}

/// Sysctls of the topology's namespaces that a benchmark at tens of thousands of
/// connections per second needs, the same for every system.
fn tune(t: &TwoArm) -> Result<()> {
    let set = |ns: &Netns, key: &str, value: &str| ns.sysctl(key, value);
    // The client opens a connection per request: give it the whole port range.
    set(&t.client, "net.ipv4.ip_local_port_range", "10000 65000")?;
    set(&t.lb, "net.ipv4.ip_local_port_range", "32768 65000")?;
    for ns in t.namespaces() {
        set(ns, "net.core.somaxconn", "8192")?;
        set(ns, "net.ipv4.tcp_max_syn_backlog", "8192")?;
    }
    // No TIME_WAIT on the backends. Each round restarts every balancer, and gerbang's SNAT
    // ports then start over from the bottom of the range: a reused port meets the backend's
    // TIME_WAIT from the last round, whose PAWS check rejects the SYN when the timestamps
    // of the two unrelated client connections go backwards (half the time). That would
    // measure the harness, not the balancer; results.md reports it as a finding.
    for backend in &t.backends {
        set(&backend.ns, "net.ipv4.tcp_max_tw_buckets", "0")?;
    }
    Ok(())
}
