//! Throughput, cost, latency and memory of each system, in one two-arm topology.
//!
//! ```text
//!  client ns          lb ns                          switch ns      backend ns i
//!  c0 10.200.1.2 --- lbc 10.200.1.1, VIP 10.200.100.1
//!                    lbb 10.200.2.1 (SNAT) --------- br0 ---------- b{i} 10.200.2.(10+i)
//! ```
//!
//! Every system carries the traffic across the same three veth pairs (`c0`-`lbc`,
//! `lbb`-`s-lb`, `s-b{i}`-`b{i}`) and the bridge. The balancers answer on the VIP inside
//! the lb namespace. The direct path has no balancer: the lb namespace is a plain router
//! (IP forwarding on, no netfilter rules) and the clients address the backends
//! themselves, spreading over them exactly as a balancer's round-robin would (wrk thread
//! `i` and UDP flow `i` to backend `i mod 3`). Systems are measured one after the other
//! within a round, and rounds repeat, so a change in the machine's load spreads over
//! all of them instead of falling on one.

use std::{
    fs,
    net::SocketAddrV4,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use gerbang_testbed::{ChildGuard, Cmd, Netns, TwoArm};

use super::{
    Bench, checkpoint,
    load::{WrkMode, flood, hold_connections, wrk},
    measure::memory,
    peers::{
        BackendHost, Backends, Checks, Job, NGINX_STREAM_MODULE, VIP_HTTP, VIP_UDP, find_program,
        gerbang_conf, haproxy_cmd, haproxy_conf, nginx_cmd, nginx_lb_conf, wait_http,
    },
    results::{Metric, Results, Sys},
};

/// Backends behind every balancer.
pub const BACKENDS: usize = 3;

/// The columns of the throughput tables, in order.
pub const SYSTEMS: [Sys; 6] = [
    Sys::Direct,
    Sys::XdpNative,
    Sys::XdpGeneric,
    Sys::Userspace,
    Sys::Haproxy,
    Sys::Nginx,
];

/// The systems that can run here; the others are marked "not run" with the reason.
pub fn available_systems(
    bench: &Bench<'_>,
    t: &TwoArm,
    backends: &Backends<'_>,
    results: &mut Results,
) -> Vec<Sys> {
    let mut systems = Vec::new();
    for sys in SYSTEMS {
        match available(bench, t, backends, sys) {
            Ok(()) => systems.push(sys),
            Err((reason, detail)) => {
                println!("bench: {}: not run: {reason}", sys.label());
                results.not_run(None, sys, reason);
                results.notes.extend(detail);
            }
        }
    }
    systems
}

/// Measures `systems`, `rounds` times.
pub fn run(
    bench: &Bench<'_>,
    t: &TwoArm,
    backends: &Backends<'_>,
    systems: &[Sys],
    results: &mut Results,
) -> Result<()> {
    results.not_run(
        Some(Metric::UdpDelivered),
        Sys::Haproxy,
        "HAProxy 2.6 does not proxy UDP",
    );
    for round in 1..=bench.params.rounds {
        for &sys in systems {
            checkpoint()?;
            println!(
                "bench: round {round}/{}: {}",
                bench.params.rounds,
                sys.label()
            );
            if let Err(err) = measure(bench, t, backends, sys, results) {
                checkpoint()?;
                println!("bench: {}: failed: {err:#}", sys.label());
                results
                    .failures
                    .push(format!("{} (round {round}): {err:#}", sys.label()));
                results.not_run(None, sys, format!("failed: {}", first_line(&err)));
            }
        }
    }
    Ok(())
}

fn first_line(err: &anyhow::Error) -> String {
    format!("{err:#}").lines().next().unwrap_or("").to_owned()
}

/// Whether `sys` can run here; if not, a short reason and maybe a longer one.
fn available(
    bench: &Bench<'_>,
    t: &TwoArm,
    backends: &Backends<'_>,
    sys: Sys,
) -> Result<(), (String, Option<String>)> {
    let missing = |what: &str| Err((format!("{what} (`cargo xtask setup` installs it)"), None));
    match sys {
        Sys::Direct | Sys::XdpNative | Sys::XdpGeneric | Sys::Keepalived => Ok(()),
        Sys::Userspace => {
            // The binary is the judge: once it accepts the mode, the column runs.
            let conf = bench.scratch.join("userspace-check.toml");
            let text = gerbang_conf(
                &job(t, backends),
                &[&t.lb_client_if, &t.lb_backend_if],
                "userspace",
                Checks::Off,
                &bench.scratch,
                "check",
            );
            let out = fs::write(&conf, text).and_then(|()| {
                std::process::Command::new(&bench.gerbang)
                    .arg("check-config")
                    .arg(&conf)
                    .output()
            });
            match out {
                Ok(out) if out.status.success() => Ok(()),
                Ok(out) => {
                    // The message names the file, a scratch path: keep what follows it.
                    let why = String::from_utf8_lossy(&out.stderr);
                    let why = why.lines().next().unwrap_or("").trim();
                    let why = why.find("dataplane").map_or(why, |at| &why[at..]);
                    Err((
                        "`gerbang run` has no userspace mode yet".into(),
                        Some(format!(
                            "gerbang userspace: `gerbang check-config` refuses \
                             `dataplane.mode = \"userspace\"`: {why}. The column runs as soon as \
                             the binary accepts it."
                        )),
                    ))
                }
                Err(err) => Err((format!("could not run `gerbang check-config`: {err}"), None)),
            }
        }
        Sys::Haproxy if find_program("haproxy").is_none() => missing("HAProxy is not installed"),
        Sys::Nginx if find_program("nginx").is_none() => missing("nginx is not installed"),
        Sys::Nginx if !Path::new(NGINX_STREAM_MODULE).exists() => {
            missing("nginx's stream module (libnginx-mod-stream) is not installed")
        }
        Sys::Haproxy | Sys::Nginx => Ok(()),
    }
}

fn job<'a>(t: &TwoArm, backends: &'a Backends<'_>) -> Job<'a> {
    Job {
        vip: t.vip,
        snat: t.snat,
        backends: backends.http(),
        udp_backends: backends.udp(),
    }
}

/// A system carrying traffic, stopped when dropped.
struct Running<'t> {
    t: &'t TwoArm,
    /// The balancer's processes; empty for the direct path.
    children: Vec<ChildGuard>,
    /// Where the clients send: the VIP, or the backends for the direct path.
    http: Vec<SocketAddrV4>,
    udp: Option<Vec<SocketAddrV4>>,
    direct: bool,
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.terminate();
        }
        if self.direct {
            let _ = self.t.set_forwarding(false);
        }
    }
}

fn start<'t>(
    bench: &Bench<'_>,
    t: &'t TwoArm,
    backends: &Backends<'_>,
    sys: Sys,
) -> Result<Running<'t>> {
    let vip_http = vec![SocketAddrV4::new(t.vip, VIP_HTTP)];
    let vip_udp = Some(vec![SocketAddrV4::new(t.vip, VIP_UDP)]);
    let job = job(t, backends);
    let dir = &bench.scratch;
    let log = dir.join(format!("{}.log", sys.short().replace(' ', "-")));
    let _ = fs::remove_file(&log);
    let (cmd, udp) = match sys {
        Sys::Direct => {
            t.set_forwarding(true)?;
            let running = Running {
                t,
                children: Vec::new(),
                http: backends.http().to_vec(),
                udp: Some(backends.udp().to_vec()),
                direct: true,
            };
            for addr in &running.http {
                wait_http(&t.client, *addr, None)?;
            }
            return Ok(running);
        }
        Sys::XdpNative | Sys::XdpGeneric | Sys::Userspace => {
            let data_plane = match sys {
                Sys::XdpNative => "native",
                Sys::XdpGeneric => "generic",
                _ => "userspace",
            };
            let conf = write(
                dir,
                &format!("gerbang-{data_plane}.toml"),
                &gerbang_conf(
                    &job,
                    &[&t.lb_client_if, &t.lb_backend_if],
                    data_plane,
                    Checks::Off,
                    dir,
                    data_plane,
                ),
            )?;
            let cmd = Cmd::new(&bench.gerbang)
                .args(["run", "--config"])
                .arg(conf)
                .log_to(&log);
            (cmd, vip_udp)
        }
        Sys::Haproxy => {
            let conf = write(
                dir,
                "haproxy.cfg",
                &haproxy_conf(&job, &t.vip.to_string(), Checks::Off),
            )?;
            (haproxy_cmd(&conf, &log), None)
        }
        Sys::Nginx => {
            let nginx_dir = dir.join("nginx-lb");
            fs::create_dir_all(&nginx_dir)?;
            let conf = write(&nginx_dir, "nginx.conf", &nginx_lb_conf(&job, &nginx_dir))?;
            (nginx_cmd(&conf, &nginx_dir), vip_udp)
        }
        Sys::Keepalived => bail!("keepalived runs only in the VRRP benchmark"),
    };
    let mut child = t.lb.spawn(&cmd)?;
    wait_http(&t.client, vip_http[0], Some((&mut child, &log)))?;
    Ok(Running {
        t,
        children: vec![child],
        http: vip_http,
        udp,
        direct: false,
    })
}

fn write(dir: &Path, name: &str, text: &str) -> Result<PathBuf> {
    let path = dir.join(name);
    fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// One round of every workload on `sys`.
fn measure(
    bench: &Bench<'_>,
    t: &TwoArm,
    backends: &Backends<'_>,
    sys: Sys,
    results: &mut Results,
) -> Result<()> {
    let p = &bench.params;
    let running = start(bench, t, backends, sys)?;
    let balancer = !running.direct;
    let lb_memory = |results: &mut Results, metric: Metric| -> Result<()> {
        std::thread::sleep(Duration::from_millis(300));
        let m = memory(&t.lb.pids()?)?;
        results.add(metric, sys, m.pss as f64 / MIB);
        if metric == Metric::MemIdle && m.bpf_maps > 0 {
            results.add(Metric::MemBpf, sys, m.bpf_maps as f64 / MIB);
        }
        Ok(())
    };
    if balancer {
        lb_memory(results, Metric::MemIdle)?;
    }
    let backend_ns: Vec<&Netns> = backends.hosts().iter().map(|h| h.ns).collect();

    if let Some(udp) = &running.udp {
        checkpoint()?;
        let f = flood(bench, &t.client, &backend_ns, udp, 0)?;
        results.add(Metric::UdpOffered, sys, f.sent as f64 / f.seconds);
        results.add(Metric::UdpDelivered, sys, f.delivered as f64 / f.seconds);
        results.add(Metric::UdpLoss, sys, loss(f.sent, f.delivered));
        println!(
            "  UDP full speed: {:.0} pps sent, {:.0} pps delivered",
            f.sent as f64 / f.seconds,
            f.delivered as f64 / f.seconds
        );
        checkpoint()?;
        let f = flood(bench, &t.client, &backend_ns, udp, p.udp_rate)?;
        results.account(f.cpu);
        if f.delivered > 0 {
            results.add(Metric::UdpCpu, sys, f.cpu.ours / f.delivered as f64 * 1e6);
        }
        results.add(Metric::UdpCpuLoss, sys, loss(f.sent, f.delivered));
        println!(
            "  UDP at {} pps: {:.2} CPU-us per delivered datagram, {:.1}% lost",
            p.udp_rate,
            f.cpu.ours / f.delivered.max(1) as f64 * 1e6,
            loss(f.sent, f.delivered)
        );
    }

    checkpoint()?;
    let w = wrk(
        bench,
        &t.client,
        &t.client_if,
        &running.http,
        WrkMode::Close,
    )?;
    results.add(Metric::ConnRate, sys, w.rate());
    results.add(Metric::ConnErrors, sys, w.errors as f64);
    results.account(w.cpu);
    results.add(
        Metric::ConnCpu,
        sys,
        w.cpu.ours / w.requests.max(1) as f64 * 1e6,
    );
    println!(
        "  TCP new connections: {:.0}/s, {} errors, {:.1} CPU-us each",
        w.rate(),
        w.errors,
        w.cpu.ours / w.requests.max(1) as f64 * 1e6
    );

    checkpoint()?;
    let w = wrk(
        bench,
        &t.client,
        &t.client_if,
        &running.http,
        WrkMode::KeepAlive,
    )?;
    results.add(Metric::HttpRps, sys, w.rate());
    results.add(Metric::HttpP50, sys, w.p50_us);
    results.add(Metric::HttpP99, sys, w.p99_us);
    results.account(w.cpu);
    results.add(
        Metric::HttpCpu,
        sys,
        w.cpu.ours / w.client_packets.max(1) as f64 * 1e6,
    );
    println!(
        "  HTTP keep-alive: {:.0} req/s, p50 {:.0} us, p99 {:.0} us, {:.2} CPU-us per packet",
        w.rate(),
        w.p50_us,
        w.p99_us,
        w.cpu.ours / w.client_packets.max(1) as f64 * 1e6
    );

    checkpoint()?;
    let w = wrk(
        bench,
        &t.client,
        &t.client_if,
        &running.http,
        WrkMode::Paced,
    )?;
    results.add(Metric::LatRate, sys, w.rate());
    results.add(Metric::LatP50, sys, w.p50_us);
    results.add(Metric::LatP99, sys, w.p99_us);
    println!(
        "  HTTP paced: {:.0} req/s, p50 {:.0} us, p99 {:.0} us",
        w.rate(),
        w.p50_us,
        w.p99_us
    );

    if balancer {
        checkpoint()?;
        let held = hold_connections(&t.client, &running.http, p.held_connections)?;
        lb_memory(results, Metric::MemHeld)?;
        drop(held);
    }
    drop(running);
    Ok(())
}

const MIB: f64 = 1024.0 * 1024.0;

fn loss(sent: u64, delivered: u64) -> f64 {
    if sent == 0 {
        return 0.0;
    }
    100.0 * (sent.saturating_sub(delivered)) as f64 / sent as f64
}

/// The backends' hosts in the topology, for [`Backends::start`].
pub fn backend_hosts(t: &TwoArm) -> Vec<BackendHost<'_>> {
    t.backends
        .iter()
        .map(|b| BackendHost {
            ns: &b.ns,
            addr: b.addr,
            name: format!("b{}", b.index),
        })
        .collect()
}
