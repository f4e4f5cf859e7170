//! `cargo xtask demo`: gerbang balancing real HTTP traffic in a throwaway topology, and
//! failing over when a backend dies.
//!
//! Builds a client, a load balancer and three HTTP backends, each in its own network
//! namespace, and runs the release `gerbang` binary in the balancer's namespace. It sends
//! requests through the VIP and shows where they landed; stops one backend and shows the
//! health checks take it out while requests carry on over the other two; brings it back.
//! Everything it creates is removed when it ends, fails or is interrupted (Ctrl-C), and
//! namespaces left by a killed earlier run are removed at start.

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
/// The backend the demo stops and brings back.
const VICTIM: usize = 1;
const WAIT: Duration = Duration::from_secs(10);

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
    let mut backends: Vec<HttpBackend> = topology
        .backends
        .iter()
        .map(|b| HttpBackend::start(&b.ns, SocketAddrV4::new(b.addr, HTTP_PORT), &name(b.index)))
        .collect::<Result<_>>()?;
    print_picture(&topology, &backends);
    checkpoint()?;

    let scratch = std::env::temp_dir().join(format!("gerbang-demo-{}", std::process::id()));
    fs::create_dir_all(&scratch)?;
    let result = Demo::start(ctx, &topology, &scratch).and_then(|demo| demo.run(&mut backends));
    let _ = fs::remove_dir_all(&scratch);
    drop(backends);
    drop(topology);
    println!("\nDemo network removed.");
    result
}

fn name(index: usize) -> String {
    format!("web-{}", index + 1)
}

/// gerbang running in the demo network, and what of its log has been shown.
struct Demo<'t> {
    topology: &'t TwoArm,
    gerbang: gerbang_testbed::ChildGuard,
    log: std::path::PathBuf,
    shown: usize,
    vip: SocketAddrV4,
}

impl<'t> Demo<'t> {
    fn start(ctx: &Context, t: &'t TwoArm, scratch: &Path) -> Result<Demo<'t>> {
        let config = scratch.join("gerbang.toml");
        fs::write(&config, demo_config(t, scratch))?;
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
            if started.elapsed() > WAIT {
                bail!("gerbang did not serve the VIP within 10 s:\n{}", read(&log));
            }
            checkpoint()?;
            std::thread::sleep(Duration::from_millis(50));
        }
        let mut demo = Demo {
            topology: t,
            gerbang,
            log,
            shown: 0,
            vip,
        };
        demo.show_log();
        Ok(demo)
    }

    fn run(mut self, backends: &mut [HttpBackend]) -> Result<()> {
        println!(
            "\nBalancing: {REQUESTS} HTTP requests to http://{}/, each on a new TCP connection",
            self.vip
        );
        let mut failed = self.spread(backends);
        println!(
            "  (each backend saw the SNAT address {} as the client)",
            self.topology.snat
        );
        checkpoint()?;

        let victim = backends[VICTIM].name().to_string();
        println!(
            "\nFailover: {victim} stops answering; gerbang checks every 500 ms and takes a \
             backend out after 2 failures, while requests keep coming"
        );
        let stopped = Instant::now();
        backends[VICTIM].stop();
        let mut lost = 0;
        // The controller logs a change once the data path follows it.
        let applied = format!("active -> down service=web backend={victim}");
        let mut sent = 0;
        while !read(&self.log).contains(&applied) {
            if stopped.elapsed() > WAIT {
                bail!("gerbang did not mark {victim} DOWN:\n{}", read(&self.log));
            }
            sent += 1;
            if http_get(&self.topology.client, self.vip).is_err() {
                lost += 1;
            }
            checkpoint()?;
            std::thread::sleep(Duration::from_millis(20));
        }
        let detected = stopped.elapsed();
        self.show_log();
        println!(
            "  {victim} was taken out {} ms after it stopped; {lost} of {sent} requests (one every \
             20 ms) failed in that window",
            detected.as_millis()
        );
        println!("  {REQUESTS} more requests:");
        failed += self.spread(backends);
        checkpoint()?;

        println!("\nRecovery: {victim} comes back and is taken in again after 2 good checks");
        let b = &self.topology.backends[VICTIM];
        backends[VICTIM] =
            HttpBackend::start(&b.ns, SocketAddrV4::new(b.addr, HTTP_PORT), &victim)?;
        let back = Instant::now();
        let applied = format!("down -> active service=web backend={victim}");
        while !read(&self.log).contains(&applied) {
            if back.elapsed() > WAIT {
                bail!("gerbang did not take {victim} back:\n{}", read(&self.log));
            }
            checkpoint()?;
            std::thread::sleep(Duration::from_millis(50));
        }
        self.show_log();
        failed += self.spread(backends);
        checkpoint()?;

        println!(
            "\nStopping gerbang (SIGTERM): it prints what the XDP program counted and detaches."
        );
        let status = self.gerbang.terminate()?;
        self.show_log();
        if !status.success() {
            bail!("gerbang exited with {status}");
        }
        if failed > 0 {
            bail!("{failed} requests failed outside the failover window");
        }
        Ok(())
    }

    /// Sends [`REQUESTS`] requests, prints where they landed, returns how many failed.
    fn spread(&self, backends: &[HttpBackend]) -> usize {
        let mut answers: BTreeMap<String, usize> = BTreeMap::new();
        let mut failed = 0;
        for answer in http_get_many(&self.topology.client, self.vip, REQUESTS) {
            match answer {
                Ok(body) => *answers.entry(body.trim().to_string()).or_default() += 1,
                Err(_) => failed += 1,
            }
        }
        for backend in backends {
            let n = answers.get(backend.name()).copied().unwrap_or(0);
            println!("  {:<6} {:>3}  {}", backend.name(), n, "#".repeat(n));
        }
        println!("  failed {failed:>3}");
        failed
    }

    /// Prints gerbang's log lines not shown yet.
    fn show_log(&mut self) {
        let text = read(&self.log);
        for line in text.lines().skip(self.shown) {
            println!("  | {line}");
        }
        self.shown = text.lines().count();
    }
}

fn demo_config(t: &TwoArm, scratch: &Path) -> String {
    // Pins and the control socket of its own, so the demo never touches a gerbang that
    // may run on this host.
    let mut config = format!(
        "# Written by `cargo xtask demo`.\n\
         [dataplane]\n\
         interfaces = [\"{}\", \"{}\"]\n\
         attach = \"auto\"\n\
         snat_address = \"{}\"\n\
         pin_path = \"/sys/fs/bpf/gerbang-demo-{}\"\n\n\
         [control]\n\
         socket = \"{}/control.sock\"\n\n\
         [[service]]\n\
         name = \"web\"\n\
         listen = \"{}:80\"\n\
         protocol = \"tcp\"\n\
         [service.check]\n\
         type = \"http\"\n\
         path = \"/\"\n\
         interval = \"500ms\"\n\
         fall = 2\n\
         rise = 2\n",
        t.lb_client_if,
        t.lb_backend_if,
        t.snat,
        std::process::id(),
        scratch.display(),
        t.vip
    );
    for b in &t.backends {
        config += &format!(
            "  [[service.backend]]\n  name = \"{}\"\n  address = \"{}:{HTTP_PORT}\"\n",
            name(b.index),
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
