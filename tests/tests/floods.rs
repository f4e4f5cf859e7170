//! Floods against gerbang's XDP data plane with a small connection table (4096 entries): a
//! SYN flood and a UDP flood from thousands of spoofed sources overflow the table ten times
//! a second; it stays bounded (the LRU evicts), real clients still get their connections
//! and answers, and the controller still answers on its control socket and status page
//! within a second.
//!
//! The flood is crafted frames sent through an `AF_PACKET` socket on the client's interface:
//! source addresses spoofed across the client's subnet (10.200.1.3 - 10.200.1.254, never an
//! address that exists), random source ports. The backends answer the spoofed SYNs and
//! datagrams; gerbang translates the answers back and the client's kernel drops them, as a
//! real flooder's network would. Nothing leaves the test's namespaces.
//!
//! The flood is paced at [`DEFAULT_FLOOD_RATE`] frames/s: everything here (flooder,
//! backends, clients, XDP, controller) shares this machine's cores, and past that rate the
//! client's veth drops frames, the legitimate client's among them, which measures the
//! testbed rather than gerbang. `GERBANG_FLOOD_PPS=N` sets another pace, `0` none (as fast
//! as one sender thread goes: the rate this machine holds). Each test prints what the flood
//! offered, what XDP forwarded, how full the table was, what the legitimate clients got and
//! how fast the controller answered; the floods run one at a time.

mod support;

use std::{
    collections::HashSet,
    net::{Ipv4Addr, SocketAddrV4},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Result, bail};
use aya::maps::{HashMap as BpfHashMap, Map, MapData};
use gerbang::{
    config::Config,
    control::{self, Request},
};
use gerbang_testbed::{HttpBackend, Netns, NsThread, TwoArm, UdpEcho, http_get, link, udp_request};
use lb_common::{Flow, FlowKey, map_names};
use support::{
    frames::{FrameSpec, SYN},
    gerbang::{InProcess, backend_entries, isolate},
    tempdir::TempDir,
};

/// Entries of the connection table: small, so the flood overflows it many times a second.
const FLOW_TABLE_SIZE: u32 = 4096;
const HTTP_PORT: u16 = 8080;
const UDP_PORT: u16 = 5353;
/// Distinct spoofed frames the flood cycles through: many times the table's size.
const FLOOD_FRAMES: usize = 65536;
/// The flood's default pace, in frames per second: ten times the table's size every
/// second, yet below what saturates the client's veth on a busy two-core machine.
const DEFAULT_FLOOD_RATE: u64 = 40_000;
/// How long legitimate clients and probes run while the flood goes on.
const MEASURE: Duration = Duration::from_secs(8);
/// The flood's head start, in which it fills the table.
const FILL: Duration = Duration::from_secs(1);
/// The slowest answer from the controller a test accepts during a flood.
const RESPONSIVE: Duration = Duration::from_secs(1);

fn config(t: &TwoArm) -> String {
    let mut text = format!(
        "[dataplane]\nmode = \"xdp\"\ninterfaces = [\"{}\", \"{}\"]\nattach = \"native\"\n\
         snat_address = \"{}\"\nflow_table_size = {FLOW_TABLE_SIZE}\n",
        t.lb_client_if, t.lb_backend_if, t.snat
    );
    for (name, port, backend_port, protocol) in
        [("web", 80, HTTP_PORT, "tcp"), ("echo", 53, UDP_PORT, "udp")]
    {
        // No health checks: nothing but the flood and the clients on the wire.
        text += &format!(
            "\n[[service]]\nname = \"{name}\"\nlisten = \"{}:{port}\"\nprotocol = \"{protocol}\"\n\
             [service.check]\ntype = \"none\"\n",
            t.vip
        );
        text += &backend_entries(&t.backends, backend_port);
    }
    text
}

/// gerbang running in the balancer's namespace, with what a test needs to watch it.
struct Balancer {
    gerbang: InProcess,
    /// Its control socket.
    socket: PathBuf,
    /// Where its maps are pinned (see `PinDir`).
    pins: PathBuf,
    _dir: TempDir,
}

impl Balancer {
    fn start(t: &TwoArm) -> Balancer {
        let dir = TempDir::new();
        let text = isolate(&config(t));
        let parsed = Config::parse(&text, "<flood config>").unwrap();
        let path = dir.write("gerbang.toml", &text);
        let gerbang = InProcess::start_file(&t.lb, &path).unwrap();
        Balancer {
            gerbang,
            socket: parsed.control.socket.clone(),
            pins: parsed
                .dataplane
                .pin_path
                .join(format!("abi-{}", lb_common::ABI_VERSION))
                .join("maps"),
            _dir: dir,
        }
    }

    /// The connection table as pinned: `FLOWS` or `NAT_RETURN`.
    fn table<V: aya::Pod>(&self, name: &str) -> BpfHashMap<MapData, FlowKey, V> {
        let data = MapData::from_pin(self.pins.join(name)).unwrap();
        Map::from_map_data(data).unwrap().try_into().unwrap()
    }

    /// Entries in a connection table map and its capacity. While packets change the table
    /// the walk may see an entry twice (the kernel restarts it when the current key is
    /// evicted), so keys are counted once each and the walk is bounded.
    fn entries<V: aya::Pod>(&self, name: &str) -> (usize, u32) {
        let map = self.table::<V>(name);
        let capacity = map_capacity(&self.pins.join(name));
        let mut seen = HashSet::new();
        for key in map.keys().take(4 * capacity as usize) {
            let Ok(key) = key else { break };
            seen.insert(key);
        }
        (seen.len(), capacity)
    }
}

fn map_capacity(pin: &Path) -> u32 {
    MapData::from_pin(pin)
        .unwrap()
        .info()
        .unwrap()
        .max_entries()
}

/// Frames sent as fast as possible from an `AF_PACKET` socket inside a namespace.
struct Flood {
    stop: Arc<AtomicBool>,
    thread: Option<NsThread<Result<Sent>>>,
}

#[derive(Clone, Copy, Debug)]
struct Sent {
    frames: u64,
    /// Batches the kernel refused (a full queue on the far side of the veth).
    refused: u64,
    elapsed: Duration,
}

impl Sent {
    fn rate(&self) -> f64 {
        self.frames as f64 / self.elapsed.as_secs_f64()
    }
}

/// Frames per second the flood is paced at, `GERBANG_FLOOD_PPS` (0: as fast as it goes).
fn flood_rate() -> u64 {
    std::env::var("GERBANG_FLOOD_PPS")
        .ok()
        .map(|v| {
            v.trim()
                .parse()
                .expect("GERBANG_FLOOD_PPS: frames per second")
        })
        .unwrap_or(DEFAULT_FLOOD_RATE)
}

/// Frames per `sendmmsg(2)`.
const BATCH: usize = 64;

impl Flood {
    /// Starts sending `frames` over and over out of `ifname` in `ns`.
    fn start(ns: &Netns, ifname: &str, frames: Vec<Vec<u8>>) -> Flood {
        let rate = flood_rate();
        assert!(frames.len().is_multiple_of(BATCH));
        let stop = Arc::new(AtomicBool::new(false));
        let ifname = ifname.to_owned();
        let flag = stop.clone();
        let thread = ns
            .spawn_thread("flood", move || send_frames(&ifname, &frames, rate, &flag))
            .unwrap();
        Flood {
            stop,
            thread: Some(thread),
        }
    }

    fn stop(mut self) -> Sent {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .unwrap()
            .join_timeout(Duration::from_secs(10))
            .unwrap()
            .unwrap()
    }
}

impl Drop for Flood {
    /// A failing test stops its flood too.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn send_frames(ifname: &str, frames: &[Vec<u8>], rate: u64, stop: &AtomicBool) -> Result<Sent> {
    let name = std::ffi::CString::new(ifname)?;
    // SAFETY: a valid C string.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if ifindex == 0 {
        bail!("no interface {ifname}: {}", std::io::Error::last_os_error());
    }
    // Protocol 0: this socket only sends, it receives nothing.
    // SAFETY: plain socket(2).
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
    if fd < 0 {
        bail!("AF_PACKET socket: {}", std::io::Error::last_os_error());
    }
    // SAFETY: we own the new descriptor.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: an all-zero sockaddr_ll is valid; the fields set below make it an address.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_ifindex = ifindex as i32;
    // SAFETY: `addr` is a sockaddr_ll of the size given.
    let rc = unsafe {
        libc::bind(
            fd,
            &addr as *const libc::sockaddr_ll as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    if rc != 0 {
        bail!("binding to {ifname}: {}", std::io::Error::last_os_error());
    }
    let one: libc::c_int = 1;
    // SAFETY: an int option of the right size. Best effort: straight to the driver.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_PACKET,
            libc::PACKET_QDISC_BYPASS,
            &one as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as u32,
        )
    };

    let mut iovecs: Vec<libc::iovec> = frames
        .iter()
        .map(|f| libc::iovec {
            iov_base: f.as_ptr() as *mut libc::c_void,
            iov_len: f.len(),
        })
        .collect();
    let mut msgs: Vec<libc::mmsghdr> = iovecs
        .iter_mut()
        .map(|iov| {
            // SAFETY: an all-zero mmsghdr is a valid "no name, no control" header.
            let mut msg: libc::mmsghdr = unsafe { std::mem::zeroed() };
            msg.msg_hdr.msg_iov = iov;
            msg.msg_hdr.msg_iovlen = 1;
            msg
        })
        .collect();

    let (mut sent, mut refused, mut at) = (0u64, 0u64, 0usize);
    let start = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        if rate > 0 {
            let due = (start.elapsed().as_secs_f64() * rate as f64) as u64;
            if due < sent + BATCH as u64 {
                std::thread::sleep(Duration::from_micros(200));
                continue;
            }
        }
        // SAFETY: `msgs[at..at + BATCH]` are initialised headers whose iovecs point into
        // `frames`, all alive for the call.
        let n = unsafe {
            libc::sendmmsg(
                socket.as_raw_fd(),
                msgs.as_mut_ptr().add(at),
                BATCH as u32,
                0,
            )
        };
        if n < 0 {
            refused += 1;
            std::thread::yield_now();
        } else {
            sent += n as u64;
        }
        at = (at + BATCH) % msgs.len();
    }
    Ok(Sent {
        frames: sent,
        refused,
        elapsed: start.elapsed(),
    })
}

/// `n` frames from spoofed sources in the client's subnet (never .1, the balancer, or .2,
/// the client) to `dst`, with random source ports; `make` builds one from its addresses.
fn spoofed(t: &TwoArm, n: usize, make: impl Fn(SocketAddrV4) -> FrameSpec) -> Vec<Vec<u8>> {
    let client_mac = link::mac(&t.client, &t.client_if).unwrap();
    let lb_mac = link::mac(&t.lb, &t.lb_client_if).unwrap();
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        // xorshift64: the flood needs variety, not quality.
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let [a, b, c, _] = t.client_addr.octets();
    (0..n)
        .map(|_| {
            let r = next();
            let host = 3 + (r % 252) as u8;
            let port = 1024 + ((r >> 8) % 64512) as u16;
            let src = SocketAddrV4::new(Ipv4Addr::new(a, b, c, host), port);
            make(src).macs(client_mac, lb_mac).build()
        })
        .collect()
}

/// What a flood did and what everyone else got meanwhile.
#[derive(Default)]
struct Outcome {
    legit_ok: usize,
    legit_failed: usize,
    first_failures: Vec<String>,
    legit_latencies: Vec<Duration>,
    /// Probes of the controller that failed (a timeout: 2 s on the status page).
    probe_failures: Vec<String>,
    /// Answers over the control socket.
    control_latencies: Vec<Duration>,
    /// Answers of the status page.
    page_latencies: Vec<Duration>,
    table_samples: Vec<usize>,
    /// How long each sample's walk over the table took.
    table_walks: Vec<Duration>,
}

impl Outcome {
    fn legit_rate(&self) -> f64 {
        self.legit_ok as f64 / (self.legit_ok + self.legit_failed).max(1) as f64
    }
}

fn percentile(values: &[Duration], p: f64) -> Duration {
    let mut sorted = values.to_vec();
    sorted.sort();
    sorted
        .get(((sorted.len() as f64 - 1.0) * p).round() as usize)
        .copied()
        .unwrap_or_default()
}

/// While the flood runs for [`MEASURE`]: `legit` in a loop (its own thread), the control
/// socket and the status page probed every 200 ms, and the table's fill sampled.
fn measure(lb: &Balancer, t: &TwoArm, legit: impl Fn() -> Result<()> + Sync) -> Outcome {
    let done = AtomicBool::new(false);
    let http = lb.gerbang.http_address().expect("[http] is enabled");
    let std::net::SocketAddr::V4(http) = http else {
        panic!("status page on {http}")
    };
    let begun = Instant::now();
    std::thread::scope(|scope| {
        let legit = scope.spawn(|| {
            let mut out = Outcome::default();
            while !done.load(Ordering::Relaxed) {
                let started = Instant::now();
                match legit() {
                    Ok(()) => {
                        out.legit_ok += 1;
                        out.legit_latencies.push(started.elapsed());
                    }
                    Err(err) => {
                        out.legit_failed += 1;
                        if out.first_failures.len() < 5 {
                            let at = begun.elapsed().as_secs_f64();
                            out.first_failures.push(format!("at {at:.2} s: {err:#}"));
                        }
                    }
                }
            }
            out
        });

        // Stops the legitimate client however this thread leaves the scope.
        struct Done<'a>(&'a AtomicBool);
        impl Drop for Done<'_> {
            fn drop(&mut self) {
                self.0.store(true, Ordering::Relaxed);
            }
        }
        let done_guard = Done(&done);

        let (mut control_latencies, mut page_latencies) = (Vec::new(), Vec::new());
        let (mut samples, mut walks, mut probe_failures) = (Vec::new(), Vec::new(), Vec::new());
        let deadline = Instant::now() + MEASURE;
        let mut next_sample = Instant::now();
        while Instant::now() < deadline {
            let at = begun.elapsed().as_secs_f64();
            let started = Instant::now();
            match control::send(&lb.socket, &Request::Status) {
                Ok(status) if status.contains("\"table_size\"") => {
                    control_latencies.push(started.elapsed())
                }
                Ok(status) => probe_failures.push(format!("at {at:.2} s: status {status}")),
                Err(err) => probe_failures.push(format!("at {at:.2} s: control socket: {err:#}")),
            }
            let started = Instant::now();
            match http_get(&t.lb, http) {
                Ok(_) => page_latencies.push(started.elapsed()),
                Err(err) => probe_failures.push(format!("at {at:.2} s: status page: {err:#}")),
            }
            if Instant::now() >= next_sample {
                let started = Instant::now();
                samples.push(lb.entries::<Flow>(map_names::FLOWS).0);
                walks.push(started.elapsed());
                next_sample += Duration::from_secs(1);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        drop(done_guard);
        let mut out = legit.join().unwrap();
        out.probe_failures = probe_failures;
        out.control_latencies = control_latencies;
        out.page_latencies = page_latencies;
        out.table_samples = samples;
        out.table_walks = walks;
        out
    })
}

/// Floods take every core this machine has: one at a time, so each measures alone.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static FLOODS: std::sync::Mutex<()> = std::sync::Mutex::new(());
    FLOODS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The checks and the numbers every flood test ends with.
fn report(
    what: &str,
    lb: &Balancer,
    sent: Sent,
    out: &Outcome,
    service: &str,
    before: gerbang::dataplane::xdp::ServiceTraffic,
) {
    let traffic = lb.gerbang.traffic();
    let after = traffic.service(service).unwrap();
    let new_flows = after.counters.new_flows - before.counters.new_flows;
    let forwarded = after.counters.packets_to_backend - before.counters.packets_to_backend;
    let answered = after.counters.packets_to_client - before.counters.packets_to_client;
    let drops = after.counters.drops - before.counters.drops;
    let seconds = sent.elapsed.as_secs_f64();
    let (flows, flows_capacity) = lb.entries::<Flow>(map_names::FLOWS);
    let (returns, returns_capacity) = lb.entries::<FlowKey>(map_names::NAT_RETURN);
    let status = lb.gerbang.status();
    let events: Vec<String> = traffic
        .events
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(e, n)| format!("{}={n}", e.name()))
        .collect();
    println!(
        "{what}: offered {:.0} frames/s ({} sent in {seconds:.1} s, {} batches refused); \
         XDP forwarded {:.0}/s to backends, {:.0}/s answers back, {new_flows} new flows \
         ({:.0}/s), {drops} drops\n  \
         table: {flows}/{flows_capacity} FLOWS and {returns}/{returns_capacity} NAT_RETURN \
         entries after the flood; during it, walks counted {:?} keys (a walk during churn also \
         sees keys inserted as it goes) and took up to {:?}; {} live at the \
         controller's last sweep\n  \
         legitimate: {}/{} ok ({:.1}%), latency p50 {:?} p99 {:?}; first failures {:?}\n  \
         controller: {} control socket answers, p50 {:?}, slowest {:?}; {} status pages, \
         p50 {:?}, slowest {:?}\n  \
         events: {}",
        sent.rate(),
        sent.frames,
        sent.refused,
        forwarded as f64 / seconds,
        answered as f64 / seconds,
        new_flows as f64 / seconds,
        out.table_samples,
        percentile(&out.table_walks, 1.0),
        status.flows.live,
        out.legit_ok,
        out.legit_ok + out.legit_failed,
        out.legit_rate() * 100.0,
        percentile(&out.legit_latencies, 0.5),
        percentile(&out.legit_latencies, 0.99),
        out.first_failures,
        out.control_latencies.len(),
        percentile(&out.control_latencies, 0.5),
        percentile(&out.control_latencies, 1.0),
        out.page_latencies.len(),
        percentile(&out.page_latencies, 0.5),
        percentile(&out.page_latencies, 1.0),
        events.join(" "),
    );

    assert_eq!(flows_capacity, FLOW_TABLE_SIZE, "FLOWS sized by the config");
    assert_eq!(
        returns_capacity, FLOW_TABLE_SIZE,
        "NAT_RETURN sized by the config"
    );
    assert_eq!(status.flow_table_size, FLOW_TABLE_SIZE);
    assert!(flows <= FLOW_TABLE_SIZE as usize, "FLOWS bounded: {flows}");
    assert!(
        returns <= FLOW_TABLE_SIZE as usize,
        "NAT_RETURN bounded: {returns}"
    );
    assert!(
        new_flows > 4 * u64::from(FLOW_TABLE_SIZE),
        "the flood overflowed the table several times ({new_flows} new flows)"
    );
    assert!(
        flows >= FLOW_TABLE_SIZE as usize / 2,
        "the flood filled the table ({flows} entries)"
    );
    assert!(
        out.legit_ok + out.legit_failed >= 20,
        "enough legitimate attempts to judge"
    );
    assert!(
        out.legit_rate() >= 0.95,
        "legitimate clients served during the flood: {}/{}; {:?}",
        out.legit_ok,
        out.legit_ok + out.legit_failed,
        out.first_failures
    );
    assert!(
        out.probe_failures.is_empty(),
        "the controller answered every probe: {:?}",
        out.probe_failures
    );
    for (what, latencies) in [
        ("control socket", &out.control_latencies),
        ("status page", &out.page_latencies),
    ] {
        let slowest = percentile(latencies, 1.0);
        assert!(
            slowest < RESPONSIVE,
            "the {what} answered within {RESPONSIVE:?} (slowest {slowest:?})"
        );
    }
}

/// SYNs from ~250 spoofed addresses and random ports fill the 4096-entry table many times a
/// second; real HTTP connections through the VIP keep working, the controller keeps
/// answering.
#[test]
fn syn_flood_fills_the_table_but_real_connections_are_served() {
    let _one_flood_at_a_time = serial();
    let t = TwoArm::new(2).unwrap();
    let _servers: Vec<HttpBackend> = HttpBackend::start_on_each(&t.backends, HTTP_PORT).unwrap();
    let lb = Balancer::start(&t);
    let vip = SocketAddrV4::new(t.vip, 80);
    http_get(&t.client, vip).expect("served before the flood");
    let before = lb.gerbang.traffic().service("web").unwrap().clone();

    let frames = spoofed(&t, FLOOD_FRAMES, |src| FrameSpec::tcp(src, vip, SYN));
    let flood = Flood::start(&t.client, &t.client_if, frames);
    std::thread::sleep(FILL);
    let out = measure(&lb, &t, || {
        let body = http_get(&t.client, vip)?;
        if !body.starts_with('b') {
            bail!("unexpected answer {body:?}");
        }
        Ok(())
    });
    let sent = flood.stop();
    report("SYN flood", &lb, sent, &out, "web", before);
    lb.gerbang.stop().unwrap();
}

/// Datagrams from ~250 spoofed addresses and random ports fill the table; real UDP
/// requests through the VIP are still answered.
#[test]
fn udp_flood_fills_the_table_but_real_requests_are_answered() {
    let _one_flood_at_a_time = serial();
    let t = TwoArm::new(2).unwrap();
    let _echoes: Vec<UdpEcho> = UdpEcho::start_on_each(&t.backends, UDP_PORT).unwrap();
    let lb = Balancer::start(&t);
    let vip = SocketAddrV4::new(t.vip, 53);
    udp_request(&t.client, None, vip, b"before").expect("answered before the flood");
    let before = lb.gerbang.traffic().service("echo").unwrap().clone();

    let frames = spoofed(&t, FLOOD_FRAMES, |src| {
        FrameSpec::udp(src, vip, b"flood flood flood")
    });
    let flood = Flood::start(&t.client, &t.client_if, frames);
    std::thread::sleep(FILL);
    let out = measure(&lb, &t, || {
        let answer = udp_request(&t.client, None, vip, b"legit question")?;
        if !answer.ends_with(b":legit question") {
            bail!("unexpected answer {:?}", String::from_utf8_lossy(&answer));
        }
        Ok(())
    });
    let sent = flood.stop();
    report("UDP flood", &lb, sent, &out, "echo", before);
    lb.gerbang.stop().unwrap();
}
