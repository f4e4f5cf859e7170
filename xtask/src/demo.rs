//! `cargo xtask demo`: gerbang balancing real HTTP traffic in a throwaway topology.
//!
//! Builds a client, a load balancer and three HTTP backends, each in its own network
//! namespace, runs the release `gerbang` binary in the balancer's namespace, sends requests
//! through the VIP and shows where they landed. Everything it creates is removed when it
//! ends, fails or is interrupted (Ctrl-C), and namespaces left by a killed earlier run are
//! removed at start.

use std::{
    collections::BTreeMap,
    fs,
    net::SocketAddrV4,
    path::Path,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use gerbang_testbed::{Cmd, HttpBackend, TwoArm, http_get, http_get_many, remove_stale};
use nix::sys::signal::{SigHandler, Signal, signal};

use crate::context::{Context, require_root};

const BACKENDS: usize = 3;
const REQUESTS: usize = 30;
const HTTP_PORT: u16 = 8080;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: std::os::raw::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

pub fn run(ctx: &Context) -> Result<()> {
    require_root(
        "`cargo xtask demo`",
        "it creates network namespaces and attaches XDP",
    )?;
    // Ctrl-C lets the current step finish, then everything is torn down in order.
    for sig in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only stores to an atomic.
        unsafe { signal(sig, SigHandler::Handler(on_signal)) }
            .context("installing a signal handler")?;
    }
    let stale = remove_stale()?;
    if stale > 0 {
        println!("removed {stale} network namespaces left by an earlier, killed run");
    }

    println!("Building the demo network: a client, a load balancer and {BACKENDS} HTTP backends,");
    println!("each in its own network namespace (nothing leaves this machine).");
    let topology = TwoArm::new(BACKENDS)?;
    let backends: Vec<HttpBackend> = topology
        .backends
        .iter()
        .map(|b| {
            HttpBackend::start(
                &b.ns,
                SocketAddrV4::new(b.addr, HTTP_PORT),
                &format!("web-{}", b.index + 1),
            )
        })
        .collect::<Result<_>>()?;
    print_picture(&topology, &backends);
    checkpoint()?;

    let scratch = std::env::temp_dir().join(format!("gerbang-demo-{}", std::process::id()));
    fs::create_dir_all(&scratch)?;
    let result = run_gerbang(ctx, &topology, &backends, &scratch);
    let _ = fs::remove_dir_all(&scratch);
    drop(backends);
    drop(topology);
    println!("\nDemo network removed.");
    result
}

fn run_gerbang(ctx: &Context, t: &TwoArm, backends: &[HttpBackend], scratch: &Path) -> Result<()> {
    let config = scratch.join("gerbang.toml");
    fs::write(&config, demo_config(t))?;
    let log = scratch.join("gerbang.log");
    println!(
        "\n$ gerbang run --config {}   (in the load balancer's namespace)",
        config.display()
    );
    let mut gerbang = t.lb.spawn(
        &Cmd::new(ctx.release_bin())
            .args(["run", "--config"])
            .arg(&config)
            .log_to(&log),
    )?;

    let vip = SocketAddrV4::new(t.vip, 80);
    let started = Instant::now();
    while http_get(&t.client, vip).is_err() {
        if let Some(status) = gerbang.try_wait()? {
            bail!("gerbang exited ({status}) before serving:\n{}", read(&log));
        }
        if started.elapsed() > Duration::from_secs(10) {
            bail!("gerbang did not serve the VIP within 10 s:\n{}", read(&log));
        }
        checkpoint()?;
        std::thread::sleep(Duration::from_millis(50));
    }
    let shown = print_log(&log, 0);
    checkpoint()?;

    println!(
        "\nBalancing: {REQUESTS} HTTP requests to http://{vip}/, each on a new TCP connection"
    );
    let mut answers: BTreeMap<String, usize> = BTreeMap::new();
    let mut failed = 0;
    for answer in http_get_many(&t.client, vip, REQUESTS) {
        match answer {
            Ok(body) => *answers.entry(body.trim().to_string()).or_default() += 1,
            Err(_) => failed += 1,
        }
    }
    for backend in backends {
        let n = answers.get(backend.name()).copied().unwrap_or(0);
        println!("  {:<6} {:>3}  {}", backend.name(), n, "#".repeat(n));
    }
    println!(
        "  {failed} failed; each backend saw the SNAT address {} as the client",
        t.snat
    );
    checkpoint()?;

    println!("\nStopping gerbang (SIGTERM): it prints what the XDP program counted and detaches.");
    let status = gerbang.terminate()?;
    print_log(&log, shown);
    if !status.success() {
        bail!("gerbang exited with {status}");
    }
    if failed > 0 {
        bail!("{failed} of {REQUESTS} requests failed");
    }
    Ok(())
}

fn demo_config(t: &TwoArm) -> String {
    let mut config = format!(
        "# Written by `cargo xtask demo`.\n\
         [dataplane]\n\
         interfaces = [\"{}\", \"{}\"]\n\
         attach = \"auto\"\n\
         snat_address = \"{}\"\n\n\
         [[service]]\n\
         name = \"web\"\n\
         listen = \"{}:80\"\n\
         protocol = \"tcp\"\n",
        t.lb_client_if, t.lb_backend_if, t.snat, t.vip
    );
    for b in &t.backends {
        config += &format!(
            "  [[service.backend]]\n  name = \"web-{}\"\n  address = \"{}:{HTTP_PORT}\"\n",
            b.index + 1,
            b.addr
        );
    }
    config
}

fn print_picture(t: &TwoArm, backends: &[HttpBackend]) {
    println!();
    println!(
        "  client {:<12}  ->  gerbang  VIP {}:80",
        t.client_addr, t.vip
    );
    println!(
        "                         (XDP on {} and {}, SNAT {})",
        t.lb_client_if, t.lb_backend_if, t.snat
    );
    for backend in backends {
        println!(
            "                           ->  {:<6} {}",
            backend.name(),
            backend.addr()
        );
    }
}

/// Prints gerbang's log from line `from` on; returns how many lines it has.
fn print_log(log: &Path, from: usize) -> usize {
    let text = read(log);
    for line in text.lines().skip(from) {
        println!("  | {line}");
    }
    text.lines().count()
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_default()
}

/// Ends the demo early, cleaning up, once Ctrl-C was pressed.
fn checkpoint() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}
