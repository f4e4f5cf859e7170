//! Failover times: a backend's death under load, and a VRRP master's death.
//!
//! Both are measured from the client's side with real requests, each on a new TCP
//! connection: [`Prober`] threads in the client's namespace record when every request
//! started and ended and whether it got a 200.
//!
//! - Backend death: gerbang (and HAProxy, same checks: HTTP every 200 ms, `fall 2 rise 2`,
//!   established sessions cut) in the throughput topology; four client threads send
//!   requests back to back; one backend's nginx is SIGKILLed. The figure is the time from
//!   the kill to the start of the last request that failed.
//! - VRRP: two balancers, a client and two backends on one bridge. The master is killed
//!   the way a host loses power (SIGKILL, link down, addresses gone); a request starts
//!   every 5 ms with a 100 ms timeout. The figure is the time from the kill to the end of
//!   the first request answered through the backup. The gerbang pair is compared with
//!   the stack it replaces, keepalived + HAProxy, with the same adverts (VRRPv3).

use std::{
    fs,
    net::{Ipv4Addr, SocketAddrV4},
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use gerbang_testbed::{
    ChildGuard, Cmd, Netns, NsThread, TwoArm,
    link::{add_addr, bridge, enslave, set_offload, set_up, veth_pair},
};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

use super::{
    Bench, checkpoint,
    load::http_get,
    peers::{
        BackendHost, Backends, Checks, Job, VIP_HTTP, gerbang_conf, haproxy_cmd, haproxy_conf,
        wait_http,
    },
    results::{Metric, Results, Sys},
};

/// The backend that dies.
const VICTIM: usize = 1;

/// One request of a probe.
#[derive(Clone, Copy)]
struct Outcome {
    start: Instant,
    end: Instant,
    ok: bool,
}

/// Client threads sending requests on new connections until stopped.
struct Prober {
    stop: Arc<AtomicBool>,
    outcomes: Arc<Mutex<Vec<Outcome>>>,
    threads: Vec<NsThread<()>>,
}

impl Prober {
    /// `workers` threads; with `spacing`, request starts are spread that far apart
    /// over all threads, else each thread sends back to back.
    fn start(
        client: &Netns,
        target: SocketAddrV4,
        workers: usize,
        spacing: Option<Duration>,
        timeout: Duration,
    ) -> Result<Prober> {
        let stop = Arc::new(AtomicBool::new(false));
        let outcomes = Arc::new(Mutex::new(Vec::new()));
        let origin = Instant::now();
        let threads = (0..workers)
            .map(|k| {
                let (stop, outcomes) = (stop.clone(), outcomes.clone());
                client.spawn_thread(&format!("probe-{k}"), move || {
                    let period = spacing.map(|s| s * workers as u32);
                    let mut next = origin + spacing.unwrap_or_default() * k as u32;
                    while !stop.load(Ordering::Relaxed) {
                        if let Some(period) = period {
                            let now = Instant::now();
                            if next > now {
                                std::thread::sleep(next - now);
                            }
                            next = (next + period).max(Instant::now());
                        }
                        let start = Instant::now();
                        let ok = http_get(target, timeout).is_ok();
                        let outcome = Outcome {
                            start,
                            end: Instant::now(),
                            ok,
                        };
                        outcomes
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push(outcome);
                    }
                })
            })
            .collect::<Result<_>>()?;
        Ok(Prober {
            stop,
            outcomes,
            threads,
        })
    }

    fn outcomes(&self) -> Vec<Outcome> {
        self.outcomes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn finish(self) -> Result<Vec<Outcome>> {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads {
            thread.join_timeout(Duration::from_secs(5))?;
        }
        let outcomes = self.outcomes.lock().unwrap_or_else(|e| e.into_inner());
        Ok(outcomes.clone())
    }
}

/// A backend's death under load, for gerbang (XDP native, and userspace when it runs)
/// and HAProxy with the same health checks.
pub fn backend_death(
    bench: &Bench<'_>,
    t: &TwoArm,
    backends: &mut Backends<'_>,
    results: &mut Results,
) -> Result<()> {
    let vip = SocketAddrV4::new(t.vip, VIP_HTTP);
    let http = backends.http().to_vec();
    let udp = Vec::new();
    let job = Job {
        vip: t.vip,
        snat: t.snat,
        backends: &http,
        udp_backends: &udp,
    };
    for sys in [Sys::XdpNative, Sys::Userspace, Sys::Haproxy] {
        if let Some(reason) = results.system_not_run(sys) {
            let reason = reason.to_owned();
            results.not_run(Some(Metric::BackendDeath), sys, reason);
            continue;
        }
        checkpoint()?;
        let dir = &bench.scratch;
        let log = dir.join(format!("death-{}.log", sys.short().replace(' ', "-")));
        let cmd = match sys {
            Sys::Haproxy => {
                let conf = dir.join("haproxy-checks.cfg");
                fs::write(&conf, haproxy_conf(&job, &t.vip.to_string(), Checks::Fast))?;
                haproxy_cmd(&conf, &log)
            }
            _ => {
                let mode = if sys == Sys::Userspace {
                    "userspace"
                } else {
                    "native"
                };
                let conf = dir.join(format!("gerbang-checks-{mode}.toml"));
                let interfaces = [t.lb_client_if.as_str(), t.lb_backend_if.as_str()];
                let text = gerbang_conf(&job, &interfaces, mode, Checks::Fast, dir, "checks");
                fs::write(&conf, text)?;
                Cmd::new(&bench.gerbang)
                    .args(["run", "--config"])
                    .arg(&conf)
                    .log_to(&log)
            }
        };
        let mut balancer = t.lb.spawn(&cmd)?;
        wait_http(&t.client, vip, Some((&mut balancer, &log)))?;
        for run in 1..=bench.params.failover_runs {
            checkpoint()?;
            // Every backend up and checked (rise 2 at 200 ms) before the kill.
            std::thread::sleep(Duration::from_millis(1000));
            let prober = Prober::start(&t.client, vip, 4, None, Duration::from_secs(1))?;
            std::thread::sleep(Duration::from_millis(1000));
            let killed = Instant::now();
            backends.kill(VICTIM);
            std::thread::sleep(Duration::from_millis(2000));
            let outcomes = prober.finish()?;
            let failed: Vec<&Outcome> = outcomes.iter().filter(|o| !o.ok).collect();
            let early = failed.iter().filter(|o| o.end < killed).count();
            let last = failed
                .iter()
                .map(|o| o.start.saturating_duration_since(killed))
                .max()
                .unwrap_or_default();
            let after = failed.iter().filter(|o| o.end >= killed).count();
            println!(
                "bench: backend death, {} run {run}: last failure {:.0} ms after the kill, \
                 {after} of {} requests failed{}",
                sys.label(),
                last.as_secs_f64() * 1e3,
                outcomes.len(),
                if early > 0 {
                    format!(" ({early} failed before the kill)")
                } else {
                    String::new()
                }
            );
            results.add(Metric::BackendDeath, sys, last.as_secs_f64());
            results.add(Metric::BackendDeathFailed, sys, after as f64);
            backends.restart(VICTIM)?;
        }
        if sys != Sys::Haproxy {
            let socket = bench.scratch.join("control-checks.sock");
            match updates(&bench.gerbang, &socket) {
                Ok(updates) => {
                    results.add(Metric::UpdateMax, sys, updates.max_seconds);
                    results.add(Metric::UpdateCount, sys, updates.count);
                    results.add(Metric::UpdateUnder1ms, sys, updates.under_1ms);
                }
                Err(err) => results.not_run(Some(Metric::UpdateMax), sys, format!("{err:#}")),
            }
        }
        balancer.terminate()?;
    }
    Ok(())
}

/// The backend-set updates gerbang has applied since it started, from the status API.
struct Updates {
    /// The longest: the time from the controller taking a verdict to the data path
    /// following it.
    max_seconds: f64,
    count: f64,
    /// How many took at most 1 ms (a bucket of gerbang's histogram).
    under_1ms: f64,
}

fn updates(gerbang: &std::path::Path, socket: &std::path::Path) -> Result<Updates> {
    let out = std::process::Command::new(gerbang)
        .args(["status", "--json", "--socket"])
        .arg(socket)
        .output()?;
    if !out.status.success() {
        anyhow::bail!(
            "gerbang status failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let status: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let updates = &status["updates"];
    let field = |name: &str| {
        updates[name]
            .as_f64()
            .ok_or_else(|| anyhow::anyhow!("no updates.{name} in gerbang's status"))
    };
    let under_1ms = updates["buckets"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|bucket| bucket[0].as_f64() == Some(0.001))
        .and_then(|bucket| bucket[1].as_f64())
        .ok_or_else(|| anyhow::anyhow!("no 1 ms bucket in gerbang's update histogram"))?;
    Ok(Updates {
        max_seconds: field("max_seconds")?,
        count: field("count")?,
        under_1ms,
    })
}

/// Node roles on the VRRP LAN.
const NODE_A: usize = 0;
const NODE_B: usize = 1;
const CLIENT: usize = 2;
const LAN_BACKENDS: [usize; 2] = [3, 4];
const LAN_IF: &str = "lan0";
const LAN_VIP: Ipv4Addr = Ipv4Addr::new(10, 200, 60, 100);
const VRID: u8 = 60;

/// Hosts on one bridge: two balancers, a client, two backends (10.200.60.1 ...).
struct Lan {
    nodes: Vec<(Netns, Ipv4Addr)>,
    _switch: Netns,
}

impl Lan {
    fn new() -> Result<Lan> {
        let switch = Netns::new("vsw")?;
        bridge(&switch, "br0")?;
        let mut nodes = Vec::new();
        for i in 0..5 {
            let ns = Netns::new(&format!("v{i}"))?;
            ns.sysctl("net.ipv6.conf.all.disable_ipv6", "1")?;
            ns.sysctl("net.ipv6.conf.default.disable_ipv6", "1")?;
            let port = format!("p{i}");
            let addr = Ipv4Addr::new(10, 200, 60, 1 + i as u8);
            veth_pair(&ns, LAN_IF, &switch, &port)?;
            add_addr(&ns, LAN_IF, &format!("{addr}/24"))?;
            // Full checksums from local senders: the XDP program updates them in place.
            set_offload(&ns, LAN_IF, "tx", false)?;
            enslave(&switch, &port, "br0")?;
            set_up(&switch, &port)?;
            set_up(&ns, LAN_IF)?;
            nodes.push((ns, addr));
        }
        Ok(Lan {
            nodes,
            _switch: switch,
        })
    }

    fn ns(&self, node: usize) -> &Netns {
        &self.nodes[node].0
    }

    fn addr(&self, node: usize) -> Ipv4Addr {
        self.nodes[node].1
    }

    fn holds_vip(&self, node: usize) -> bool {
        self.ns(node)
            .ip(["-4", "-o", "addr", "show", "dev", LAN_IF])
            .is_ok_and(|out| out.contains(&format!(" {LAN_VIP}/")))
    }

    /// The host loses power: its link goes down and its addresses go with it.
    fn power_off(&self, node: usize) -> Result<()> {
        self.ns(node).ip(["link", "set", "dev", LAN_IF, "down"])?;
        self.ns(node).ip(["-4", "addr", "flush", "dev", LAN_IF])?;
        Ok(())
    }

    /// Undoes [`Lan::power_off`]; harmless on a host that is up.
    fn power_on(&self, node: usize) -> Result<()> {
        let cidr = format!("{}/24", self.addr(node));
        self.ns(node)
            .ip(["addr", "replace", cidr.as_str(), "dev", LAN_IF])?;
        set_up(self.ns(node), LAN_IF)
    }
}

/// A VRRP pair's configuration.
#[derive(Clone, Copy)]
struct Pair {
    sys: Sys,
    advert: Duration,
    metric: Metric,
}

/// VRRP failover of a gerbang pair and a keepalived + HAProxy pair, 100 ms adverts and
/// (full runs) 1 s adverts.
pub fn vrrp(bench: &Bench<'_>, results: &mut Results) -> Result<()> {
    let mut pairs = Vec::new();
    let mut adverts = vec![(Duration::from_millis(100), Metric::VrrpFast)];
    if bench.params.slow_vrrp {
        adverts.push((Duration::from_secs(1), Metric::VrrpSlow));
    } else {
        for sys in [Sys::XdpNative, Sys::Keepalived] {
            results.not_run(
                Some(Metric::VrrpSlow),
                sys,
                "skipped in --quick runs (10 s a run)",
            );
        }
    }
    let keepalived = super::peers::find_program("keepalived").is_some()
        && super::peers::find_program("haproxy").is_some();
    for (advert, metric) in adverts {
        pairs.push(Pair {
            sys: Sys::XdpNative,
            advert,
            metric,
        });
        if keepalived {
            pairs.push(Pair {
                sys: Sys::Keepalived,
                advert,
                metric,
            });
        } else {
            results.not_run(
                Some(metric),
                Sys::Keepalived,
                "keepalived or haproxy is not installed (`cargo xtask setup` installs them)",
            );
        }
    }
    let lan = Lan::new()?;
    let backends = Backends::start(
        LAN_BACKENDS
            .iter()
            .map(|&n| BackendHost {
                ns: lan.ns(n),
                addr: lan.addr(n),
                name: format!("n{n}"),
            })
            .collect(),
        &bench.scratch,
    )?;
    for pair in pairs {
        for run in 1..=bench.params.failover_runs {
            checkpoint()?;
            let took = vrrp_run(bench, &lan, &backends, pair)
                .with_context(|| format!("VRRP failover of {}", pair.sys.label()))?;
            println!(
                "bench: VRRP {} ms adverts, {} run {run}: first answer through the backup \
                 {:.0} ms after the master died",
                pair.advert.as_millis(),
                pair.sys.label(),
                took.as_secs_f64() * 1e3
            );
            results.add(pair.metric, pair.sys, took.as_secs_f64());
        }
    }
    drop(backends);
    Ok(())
}

/// gerbang's pin directory for a VRRP node.
fn pin_path(tag: &str) -> PathBuf {
    PathBuf::from(format!(
        "/sys/fs/bpf/gerbang-bench-{}-{tag}",
        std::process::id()
    ))
}

/// One failover: start the pair, wait until A is master and B has heard it, kill A,
/// time the first answer through B.
fn vrrp_run(bench: &Bench<'_>, lan: &Lan, backends: &Backends<'_>, pair: Pair) -> Result<Duration> {
    let vip = SocketAddrV4::new(LAN_VIP, VIP_HTTP);
    let mut nodes: Vec<Vec<ChildGuard>> = Vec::new();
    for (node, priority) in [(NODE_A, 150), (NODE_B, 100)] {
        nodes.push(start_node(bench, lan, backends, pair, node, priority)?);
    }
    let result = (|| {
        let started = Instant::now();
        while !lan.holds_vip(NODE_A) {
            ensure!(
                started.elapsed() < Duration::from_secs(15),
                "node A did not become master"
            );
            checkpoint()?;
            std::thread::sleep(Duration::from_millis(20));
        }
        wait_http(lan.ns(CLIENT), vip, None)?;
        // B hears A's adverts, so its master-down timer runs from A's last one.
        std::thread::sleep(pair.advert * 2 + Duration::from_millis(300));
        ensure!(!lan.holds_vip(NODE_B), "both nodes hold the VIP");
        let prober = Prober::start(
            lan.ns(CLIENT),
            vip,
            24,
            Some(Duration::from_millis(5)),
            Duration::from_millis(100),
        )?;
        std::thread::sleep(Duration::from_millis(300));
        // The host dies when its link does; its processes die with it.
        lan.power_off(NODE_A)?;
        let killed = Instant::now();
        for child in &mut nodes[NODE_A] {
            let _ = killpg(Pid::from_raw(child.pid() as i32), Signal::SIGKILL);
        }
        let answered = loop {
            let first = prober
                .outcomes()
                .iter()
                .filter(|o| o.ok && o.start >= killed)
                .map(|o| o.end)
                .min();
            if let Some(end) = first {
                break end;
            }
            if killed.elapsed() > Duration::from_secs(20) {
                prober.finish()?;
                bail!("no answer through the backup 20 s after the master died");
            }
            checkpoint()?;
            std::thread::sleep(Duration::from_millis(10));
        };
        prober.finish()?;
        Ok(answered - killed)
    })();
    drop(nodes);
    // A SIGKILLed gerbang leaves its program pinned and attached: remove it so the next
    // run starts cold, and bring the host back.
    let _ = fs::remove_dir_all(pin_path("vrrp-a"));
    let restored = lan.power_on(NODE_A);
    let took = result?;
    restored?;
    Ok(took)
}

fn start_node(
    bench: &Bench<'_>,
    lan: &Lan,
    backends: &Backends<'_>,
    pair: Pair,
    node: usize,
    priority: u8,
) -> Result<Vec<ChildGuard>> {
    let dir = bench.scratch.join(format!("vrrp-{node}"));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir)?;
    let ns = lan.ns(node);
    let addr = lan.addr(node);
    let udp = Vec::new();
    let job = Job {
        vip: LAN_VIP,
        snat: addr,
        backends: backends.http(),
        udp_backends: &udp,
    };
    let tag = if node == NODE_A { "vrrp-a" } else { "vrrp-b" };
    let advert_ms = pair.advert.as_millis();
    match pair.sys {
        Sys::Keepalived => {
            let conf = dir.join("keepalived.conf");
            let advert = if pair.advert < Duration::from_secs(1) {
                format!("{:.1}", pair.advert.as_secs_f64())
            } else {
                pair.advert.as_secs().to_string()
            };
            fs::write(
                &conf,
                format!(
                    "global_defs {{\n  router_id bench-{node}\n  vrrp_version 3\n  \
                     enable_script_security\n}}\n\
                     vrrp_instance VI_1 {{\n  state BACKUP\n  interface {LAN_IF}\n  \
                     virtual_router_id {VRID}\n  priority {priority}\n  advert_int {advert}\n  \
                     virtual_ipaddress {{\n    {LAN_VIP}/32\n  }}\n}}\n"
                ),
            )?;
            let keepalived = Cmd::new("keepalived")
                .args(["-n", "-l", "-D", "-G", "-P", "-f"])
                .arg(&conf)
                .arg("-p")
                .arg(dir.join("keepalived.pid"))
                .arg("-r")
                .arg(dir.join("vrrp.pid"))
                .arg("-c")
                .arg(dir.join("checker.pid"))
                .log_to(dir.join("keepalived.log"));
            // Listening on every address, HAProxy serves the VIP wherever it lands.
            let haproxy_conf_path = dir.join("haproxy.cfg");
            fs::write(
                &haproxy_conf_path,
                haproxy_conf(&job, "0.0.0.0", Checks::Off),
            )?;
            let haproxy = ns.spawn(&haproxy_cmd(&haproxy_conf_path, &dir.join("haproxy.log")))?;
            Ok(vec![haproxy, ns.spawn(&keepalived)?])
        }
        _ => {
            // Its pins are `pin_path(tag)`, which the runs remove after a kill.
            let mut text = gerbang_conf(&job, &[LAN_IF], "generic", Checks::Off, &dir, tag);
            text += &format!(
                "\n[[vrrp]]\nname = \"vip\"\ninterface = \"{LAN_IF}\"\n\
                 virtual_router_id = {VRID}\npriority = {priority}\nversion = 3\n\
                 advert_interval = \"{advert_ms}ms\"\nvirtual_addresses = [\"{LAN_VIP}/32\"]\n"
            );
            let conf = dir.join("gerbang.toml");
            fs::write(&conf, text)?;
            let gerbang = Cmd::new(&bench.gerbang)
                .args(["run", "--config"])
                .arg(&conf)
                .log_to(dir.join("gerbang.log"));
            Ok(vec![ns.spawn(&gerbang)?])
        }
    }
}
