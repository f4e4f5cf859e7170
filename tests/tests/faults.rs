//! Fault injection: things break under load and the suite asserts what a user sees.
//!
//! - a backend is `kill -9`ed, hung with SIGSTOP, or loses its link: requests fail only
//!   between the fault and the DOWN verdict, which comes within the check's detection
//!   window, and none after; the backend comes back after `rise` good checks;
//! - a link loses packets at random (nftables `numgen random`, as this kernel has no
//!   netem): every request still gets its answer, in bounded time;
//! - the controller is `kill -9`ed and restarted (XDP): established flows and new ones
//!   carry on without a controller and through the takeover, also when a backend died
//!   while no controller was watching;
//! - the master balancer vanishes (its namespace deleted with gerbang inside): the VIP
//!   moves to the backup and requests through it succeed within the master-down interval;
//! - a PostgreSQL primary is `kill -9`ed: the write service has no backend, no write
//!   reaches the replica, and writes succeed again once it is promoted.
//!
//! Each runs on both data planes where that means something (the proxy's connections die
//! with the controller, so the restart is XDP's alone). One scenario found a bug in the XDP
//! program, a client port reused after an unanswered attempt, now fixed and kept as
//! `xdp_a_source_port_reused_after_an_unanswered_attempt_is_served`.
//!
//! Timing is asserted only against the documented windows (health checks:
//! [`Check::fall_window`]; VRRP: the master-down interval) plus [`MARGIN`]. The measured
//! windows are printed (`cargo test --test faults -- --nocapture`).

mod support;

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddrV4, TcpStream},
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use gerbang::{dataplane::BackendState, vrrp::VrrpState};
use gerbang_testbed::{
    ChildGuard, Cmd, HttpBackend, Netns, NsThread, TcpStreamClient, TcpStreamServer, TwoArm,
};
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use support::{
    db::{PG_PASSWORD, Postgres},
    gerbang::{InProcess, backend_entries, binary, isolate, wait_until},
    tempdir::TempDir,
    vrrp::{IFACE, Lan, VIP, WAIT},
};
use tokio_postgres::NoTls;

const HTTP: u16 = 8080;
const STREAM: u16 = 9000;

/// Added to every documented window before it is a failure: the machine running the
/// suite may be busy with other tests.
const MARGIN: Duration = Duration::from_secs(2);

/// Which data plane a scenario runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Xdp,
    Userspace,
}

impl Mode {
    fn dataplane_lines(self) -> &'static str {
        match self {
            Mode::Xdp => "mode = \"xdp\"\nattach = \"native\"\n",
            Mode::Userspace => "mode = \"userspace\"\n",
        }
    }
}

/// A service's health check, and the windows its numbers promise.
#[derive(Clone, Copy, Debug)]
struct Check {
    kind: &'static str,
    interval: Duration,
    timeout: Duration,
    fall: u32,
    rise: u32,
}

impl Check {
    fn lines(&self) -> String {
        format!(
            "[service.check]\ntype = \"{}\"\ninterval = \"{}ms\"\ntimeout = \"{}ms\"\n\
             fall = {}\nrise = {}\n",
            self.kind,
            self.interval.as_millis(),
            self.timeout.as_millis(),
            self.fall,
            self.rise
        )
    }

    /// The longest a fault can take to become a DOWN verdict: a probe under way when it
    /// struck (at most `timeout`), then `fall` failing probes, each after a pause of
    /// `interval` plus at most 10% jitter, each taking at most `timeout`. For a refused
    /// connection (a dead process) the probes fail at once and it is about
    /// `fall x interval`.
    fn fall_window(&self) -> Duration {
        self.timeout + (self.interval.mul_f64(1.1) + self.timeout) * self.fall
    }

    /// The same for `rise` good probes after a repair.
    fn rise_window(&self) -> Duration {
        self.timeout + (self.interval.mul_f64(1.1) + self.timeout) * self.rise
    }
}

/// The HTTP check of the backend-fault scenarios: DOWN within 1.86 s at worst.
const WEB_CHECK: Check = Check {
    kind: "http",
    interval: Duration::from_millis(200),
    timeout: Duration::from_millis(300),
    fall: 3,
    rise: 2,
};

// ---- clients ----

/// `GET /` on a new connection from the calling thread's namespace; `timeout` bounds the
/// connect and each read and write. The body of a `200`.
fn get(addr: SocketAddrV4, timeout: Duration) -> Result<String> {
    let stream = TcpStream::connect_timeout(&addr.into(), timeout)
        .with_context(|| format!("connecting to {addr}"))?;
    exchange(stream, addr, timeout)
}

/// [`get`] from source port `port`, as a client reusing a port does.
fn get_from(port: u16, addr: SocketAddrV4, timeout: Duration) -> Result<String> {
    use nix::{
        errno::Errno,
        poll::{PollFd, PollFlags, PollTimeout, poll},
        sys::socket::{
            AddressFamily, SockFlag, SockType, SockaddrIn, bind, connect, getsockopt, setsockopt,
            socket, sockopt,
        },
    };
    use std::os::fd::{AsFd as _, AsRawFd as _};

    let fd = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    bind(
        fd.as_raw_fd(),
        &SockaddrIn::from(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port)),
    )
    .with_context(|| format!("binding port {port}"))?;
    match connect(fd.as_raw_fd(), &SockaddrIn::from(addr)) {
        Ok(()) | Err(Errno::EINPROGRESS) => {}
        Err(err) => return Err(err).with_context(|| format!("connecting to {addr}")),
    }
    let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLOUT)];
    let millis = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
    ensure!(
        poll(&mut fds, PollTimeout::from(millis))? > 0,
        "connecting to {addr} from port {port}: connection timed out"
    );
    let error = getsockopt(&fd, sockopt::SocketError)?;
    if error != 0 {
        return Err(std::io::Error::from_raw_os_error(error))
            .with_context(|| format!("connecting to {addr} from port {port}"));
    }
    let stream = TcpStream::from(fd);
    stream.set_nonblocking(false)?;
    exchange(stream, addr, timeout)
}

/// Sends `GET /` on `stream` and reads the answer to the end.
fn exchange(mut stream: TcpStream, addr: SocketAddrV4, timeout: Duration) -> Result<String> {
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    stream.set_nodelay(true)?;
    stream
        .write_all(
            format!("GET / HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .context("sending the request")?;
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .context("reading the response")?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("no complete response: {text:?}"))?;
    ensure!(head.starts_with("HTTP/1.1 200 "), "answered {head:?}");
    Ok(body.trim().to_owned())
}

/// One request of a [`Load`].
#[derive(Debug)]
struct Sample {
    start: Instant,
    end: Instant,
    /// The backend's name, or what went wrong.
    answer: Result<String, String>,
}

impl Sample {
    fn failed(&self) -> bool {
        self.answer.is_err()
    }

    fn from(&self, backend: &str) -> bool {
        self.answer.as_deref() == Ok(backend)
    }
}

/// Clients in a namespace sending `GET /` on new connections back to back until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<NsThread<Vec<Sample>>>,
}

impl Load {
    fn start(ns: &Netns, addr: SocketAddrV4, clients: usize, timeout: Duration) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..clients)
            .map(|i| {
                let stop = stop.clone();
                ns.spawn_thread(&format!("load-{i}"), move || {
                    let mut samples = Vec::new();
                    while !stop.load(Ordering::Relaxed) {
                        let start = Instant::now();
                        let answer = get(addr, timeout).map_err(|e| format!("{e:#}"));
                        samples.push(Sample {
                            start,
                            end: Instant::now(),
                            answer,
                        });
                    }
                    samples
                })
                .unwrap()
            })
            .collect();
        Load { stop, threads }
    }

    /// Stops the clients; every request, in the order they started.
    fn finish(self) -> Vec<Sample> {
        self.stop.store(true, Ordering::Relaxed);
        let mut samples: Vec<Sample> = self
            .threads
            .into_iter()
            .flat_map(|t| t.join_timeout(Duration::from_secs(60)).unwrap())
            .collect();
        samples.sort_by_key(|s| s.start);
        samples
    }
}

fn ms(d: Duration) -> String {
    format!("{} ms", d.as_millis())
}

// ---- gerbang's view ----

/// The last check result of `service/backend`.
fn last_result(gerbang: &InProcess, service: &str, backend: &str) -> String {
    let status = gerbang.status();
    let health = status
        .health
        .iter()
        .find(|h| h.key.0 == service && h.key.1 == backend)
        .unwrap_or_else(|| panic!("no health for {service}/{backend}"));
    health.last_result.clone().unwrap_or_default()
}

// ---- backend faults ----

/// What happens to backend b1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    /// `kill -9` of its server process; repaired by starting a new one.
    Kill,
    /// SIGSTOP: the kernel still accepts connections, nobody answers; repaired by SIGCONT.
    Hang,
    /// `ip link set dev b1 down` on the backend's own veth; repaired by bringing it up
    /// (and restoring the default route the kernel removed with it).
    LinkDown,
}

impl Fault {
    /// What the failed check says.
    fn reason(self) -> &'static str {
        match self {
            Fault::Kill => "connection refused",
            Fault::Hang => "timeout after 300ms (waiting for the response)",
            Fault::LinkDown => "timeout after 300ms (connecting)",
        }
    }
}

/// `gb-backend` answering HTTP as `b{i}`: a process of its own, to kill or stop.
fn backend_process(t: &TwoArm, i: usize) -> ChildGuard {
    let b = &t.backends[i];
    b.ns.spawn(&Cmd::new(env!("CARGO_BIN_EXE_gb-backend")).args([
        b.ns.name(),
        "http",
        &format!("{}:{HTTP}", b.addr),
        &format!("b{i}"),
    ]))
    .unwrap()
}

fn signal(process: &ChildGuard, signal: Signal) {
    kill(Pid::from_raw(process.pid() as i32), signal).unwrap();
}

/// A `web` service on the VIP's port 80 over every backend of `t` at [`HTTP`].
fn web_config(t: &TwoArm, mode: Mode, service_lines: &str) -> String {
    let mut text = format!(
        "[dataplane]\ninterfaces = [\"{}\", \"{}\"]\n{}snat_address = \"{}\"\n\n\
         [[service]]\nname = \"web\"\nlisten = \"{}:80\"\n{service_lines}",
        t.lb_client_if,
        t.lb_backend_if,
        mode.dataplane_lines(),
        t.snat,
        t.vip
    );
    text += &backend_entries(&t.backends, HTTP);
    text
}

/// Backend b1 of three fails under continuous load and is repaired.
fn backend_fault(mode: Mode, fault: Fault) {
    let check = WEB_CHECK;
    let t = TwoArm::new(3).unwrap();
    let mut servers: Vec<ChildGuard> = (0..3).map(|i| backend_process(&t, i)).collect();
    let gerbang = InProcess::start(&t.lb, &web_config(&t, mode, &check.lines())).unwrap();
    for b in ["b0", "b1", "b2"] {
        gerbang.wait_for_backend_state("web", b, BackendState::Active);
    }
    let vip = SocketAddrV4::new(t.vip, 80);
    // Clients wait longer than the detection window for a connection: a SYN that went to
    // b1 is sent again after b1 is DOWN and meets the verdict then, instead of being
    // abandoned (`xdp_a_source_port_reused_after_an_unanswered_attempt_is_served` shows
    // what an abandoned one meets).
    let load = Load::start(&t.client, vip, 2, Duration::from_secs(3));
    thread::sleep(Duration::from_millis(500));

    let victim = &t.backends[1];
    let struck = Instant::now();
    match fault {
        Fault::Kill => signal(&servers[1], Signal::SIGKILL),
        Fault::Hang => signal(&servers[1], Signal::SIGSTOP),
        Fault::LinkDown => {
            victim
                .ns
                .ip(["link", "set", "dev", &victim.ifname, "down"])
                .unwrap();
        }
    }
    let down = gerbang.wait_for_backend_state("web", "b1", BackendState::Down);
    let reason = last_result(&gerbang, "web", "b1");
    thread::sleep(Duration::from_millis(800));

    let repaired = Instant::now();
    match fault {
        Fault::Kill => servers[1] = backend_process(&t, 1),
        Fault::Hang => signal(&servers[1], Signal::SIGCONT),
        Fault::LinkDown => {
            victim
                .ns
                .ip(["link", "set", "dev", &victim.ifname, "up"])
                .unwrap();
            victim
                .ns
                .ip([
                    "route",
                    "replace",
                    "default",
                    "via",
                    &t.lb_backend_addr.to_string(),
                ])
                .unwrap();
        }
    }
    let up = gerbang.wait_for_backend_state("web", "b1", BackendState::Active);
    // Long enough for clients still waiting on a hung b1 (up to their 3 s) to go on.
    thread::sleep(Duration::from_millis(1200));
    let samples = load.finish();
    gerbang.stop().unwrap();

    let failed: Vec<&Sample> = samples.iter().filter(|s| s.failed()).collect();
    let detection = down - struck;
    let recovery = up - repaired;
    let last_failure = failed.iter().map(|s| s.start).max();
    eprintln!(
        "{fault:?} of b1 ({mode:?}): DOWN after {} (window {}; check said {reason:?}); {} of {} \
         requests failed, the last one started {} after the fault; UP {} after the repair \
         (window {})",
        ms(detection),
        ms(check.fall_window()),
        failed.len(),
        samples.len(),
        last_failure.map_or("-".into(), |at| ms(at.saturating_duration_since(struck))),
        ms(recovery),
        ms(check.rise_window()),
    );

    assert!(
        reason.contains(fault.reason()),
        "DOWN because {reason:?}, expected {:?}",
        fault.reason()
    );
    assert!(
        detection <= check.fall_window() + MARGIN,
        "DOWN only after {detection:?}"
    );
    assert!(
        recovery <= check.rise_window() + MARGIN,
        "UP only after {recovery:?}"
    );
    // Failures only overlap the detection window: none before the fault, none started
    // after the verdict.
    let outside: Vec<String> = failed
        .iter()
        .filter(|s| s.end < struck || s.start >= down)
        .map(|s| {
            format!(
                "started {:?} after the fault, took {:?}: {:?}",
                s.start.saturating_duration_since(struck),
                s.end - s.start,
                s.answer
            )
        })
        .collect();
    assert!(
        outside.is_empty(),
        "requests failed outside [fault, DOWN at {detection:?}] (repaired at {:?}, UP at \
         {:?}): {outside:#?}",
        repaired - struck,
        up - struck,
    );
    // While DOWN, b1 takes nothing; once UP again it serves its share.
    assert!(
        !samples
            .iter()
            .any(|s| s.start >= down && s.end < repaired && s.from("b1")),
        "b1 answered while DOWN"
    );
    assert!(samples.iter().any(|s| s.start > up && s.from("b1")));
    for b in ["b0", "b2"] {
        assert!(samples.iter().any(|s| s.start > down && s.from(b)));
    }
}

/// A client whose connection attempt went to a backend just as its link failed gives up,
/// and tries again from the same source port once that backend is DOWN (the kernel hands
/// out an abandoned attempt's port again at once; a busy client gets it back within
/// seconds): it should be served by another backend. XDP only: the proxy terminates the
/// client's connection, and the client's port then sits in TIME_WAIT.
///
/// The abandoned attempt left a flow to the failed backend that saw no reply and no FIN
/// or RST; the program used to take the new SYN for that flow and answer it with the cut
/// flows' RST. A SYN is never the continuation of a cut flow: it retires the flow and is
/// scheduled anew (`to_backend` in `lb-ebpf/src/flow.rs`).
#[test]
fn xdp_a_source_port_reused_after_an_unanswered_attempt_is_served() {
    let t = TwoArm::new(2).unwrap();
    let _servers: Vec<HttpBackend> = HttpBackend::start_on_each(&t.backends, HTTP).unwrap();
    let gerbang = InProcess::start(&t.lb, &web_config(&t, Mode::Xdp, &WEB_CHECK.lines())).unwrap();
    gerbang.wait_for_backend_state("web", "b0", BackendState::Active);
    gerbang.wait_for_backend_state("web", "b1", BackendState::Active);
    let vip = SocketAddrV4::new(t.vip, 80);
    let b1 = &t.backends[1];
    b1.ns
        .ip(["link", "set", "dev", &b1.ifname, "down"])
        .unwrap();

    // Round-robin: of two new connections, one goes to b1 and is never answered.
    let short = Duration::from_millis(300);
    let mut unanswered = None;
    for port in 40000..40004 {
        match t.client.run(|| get_from(port, vip, short)).unwrap() {
            Ok(answer) => assert_eq!(answer, "b0"),
            Err(err) => {
                unanswered = Some(port);
                eprintln!("port {port}: {err:#}");
                break;
            }
        }
    }
    let port = unanswered.expect("an attempt went to b1");
    gerbang.wait_for_backend_state("web", "b1", BackendState::Down);
    let again = t
        .client
        .run(|| get_from(port, vip, Duration::from_secs(2)))
        .unwrap();
    assert_eq!(
        again.as_ref().map_err(|e| format!("{e:#}")),
        Ok(&"b0".to_string()),
        "port {port} again after b1 went DOWN"
    );
    gerbang.stop().unwrap();
}

fn a_backend_killed_fails_requests_only_until_it_is_down(mode: Mode) {
    backend_fault(mode, Fault::Kill);
}

fn a_hung_backend_times_out_and_comes_back_after_sigcont(mode: Mode) {
    backend_fault(mode, Fault::Hang);
}

fn a_backend_whose_link_goes_down_is_taken_out_and_back(mode: Mode) {
    backend_fault(mode, Fault::LinkDown);
}

// ---- a lossy link ----

/// The one link between the balancer and the backends' network loses this share of the
/// IPv4 packets crossing it, in each direction.
const LOSS_PERCENT: u32 = 10;
/// How long one request may take on the lossy link. A lost SYN is sent again after 1 s
/// (then every second, `tcp_syn_linear_timeouts`), a lost segment after 200 ms, doubling
/// each time; with about 19% of round trips losing a packet, 15 s takes seven losses of
/// one segment in a row (or eight of a SYN). At 20% each way (a third of the round trips)
/// that tail is common enough to take 25 s now and then, so the suite loses a tenth.
const LOSSY_LATENCY_BOUND: Duration = Duration::from_secs(15);

/// The TCP check of the lossy scenario: its timeout leaves room for two resent SYNs, and
/// `fall` failures in a row are unlikely while fewer than half the handshakes fail.
const LOSSY_CHECK: Check = Check {
    kind: "tcp",
    interval: Duration::from_millis(500),
    timeout: Duration::from_millis(2500),
    fall: 3,
    rise: 2,
};

/// `nft` rules in the switch namespace dropping [`LOSS_PERCENT`] of the IPv4 frames the
/// bridge forwards to and from `port`: loss on that wire, invisible to the hosts' TCP
/// stacks except as missing packets. ARP is spared, as a lost neighbour probe would only
/// delay every flow alike.
fn lose_packets(switch: &Netns, port: &str) {
    let rules = format!(
        "table bridge faults {{\n  chain forward {{\n    type filter hook forward priority 0; policy accept;\n    \
         oifname \"{port}\" ether type ip numgen random mod 100 < {LOSS_PERCENT} counter drop\n    \
         iifname \"{port}\" ether type ip numgen random mod 100 < {LOSS_PERCENT} counter drop\n  }}\n}}\n"
    );
    let dir = TempDir::new();
    let file = dir.write("loss.nft", &rules);
    switch.exec("nft", ["-f", file.to_str().unwrap()]).unwrap();
}

/// Frames the rules of [`lose_packets`] dropped.
fn dropped_frames(switch: &Netns) -> u64 {
    let rules = switch
        .exec("nft", ["list", "table", "bridge", "faults"])
        .unwrap();
    rules
        .split("packets ")
        .skip(1)
        .filter_map(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

fn lossy_link_every_request_is_answered(mode: Mode) {
    let t = TwoArm::new(3).unwrap();
    let _servers: Vec<HttpBackend> = HttpBackend::start_on_each(&t.backends, HTTP).unwrap();
    let gerbang = InProcess::start(&t.lb, &web_config(&t, mode, &LOSSY_CHECK.lines())).unwrap();
    for b in ["b0", "b1", "b2"] {
        gerbang.wait_for_backend_state("web", b, BackendState::Active);
    }
    lose_packets(&t.switch, &t.switch_lb_if);

    let vip = SocketAddrV4::new(t.vip, 80);
    let load = Load::start(&t.client, vip, 4, Duration::from_secs(30));
    // Health as the controller sees it, while the clients run.
    let mut downs = Vec::new();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(5) {
        for b in ["b0", "b1", "b2"] {
            if gerbang.backend_state("web", b) != BackendState::Active {
                downs.push((b, last_result(&gerbang, "web", b)));
            }
        }
        thread::sleep(Duration::from_millis(100));
    }
    let samples = load.finish();
    let lost = dropped_frames(&t.switch);
    let health = gerbang.status().health;
    gerbang.stop().unwrap();

    let mut latencies: Vec<Duration> = samples.iter().map(|s| s.end - s.start).collect();
    latencies.sort();
    let failed: Vec<&Sample> = samples.iter().filter(|s| s.failed()).collect();
    let (probes, probe_failures) = health
        .iter()
        .fold((0, 0), |(n, f), h| (n + h.checks, f + h.failures));
    eprintln!(
        "{LOSS_PERCENT}% loss each way ({mode:?}): {} requests, {} failed, {lost} frames \
         dropped; latency median {}, p90 {}, max {}; {probe_failures} of {probes} probes \
         failed, backend not UP at {} samples",
        samples.len(),
        failed.len(),
        ms(latencies[latencies.len() / 2]),
        ms(latencies[latencies.len() * 9 / 10]),
        ms(*latencies.last().unwrap()),
        downs.len(),
    );
    assert!(lost > 0, "the link lost nothing");
    assert!(samples.len() >= 20, "only {} requests", samples.len());
    assert!(failed.is_empty(), "requests failed: {failed:#?}");
    let slowest = *latencies.last().unwrap();
    assert!(slowest <= LOSSY_LATENCY_BOUND, "a request took {slowest:?}");
    // A backend may only leave the rotation after `fall` failed probes in a row, and the
    // clients above saw nothing of it; with this check it stays UP.
    assert!(downs.is_empty(), "health flapped: {downs:?}");
}

// ---- the controller killed and restarted ----

/// Reads a log file, empty if it is not there yet.
fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Waits until the log at `path` says `what`; when it was seen.
fn wait_for_log(path: &Path, what: &str) -> Instant {
    wait_until(Duration::from_secs(20), || {
        if read(path).contains(what) {
            Ok(Instant::now())
        } else {
            Err(anyhow!("no {what:?} in the log yet"))
        }
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", read(path)))
}

/// Waits until `process` has exited.
fn wait_exit(process: &mut ChildGuard) {
    wait_until(Duration::from_secs(10), || match process.try_wait()? {
        Some(status) => Ok(status),
        None => Err(anyhow!("still running")),
    })
    .unwrap();
}

/// How a [`Streamer`] went: when each echo came back whole (with the bytes so far), and
/// the error that ended the stream, if one did.
type StreamRecord = (Vec<(Instant, u64)>, Option<String>);

/// One TCP stream sending and checking its echo as fast as it goes, from its own thread.
struct Streamer {
    stop: Arc<AtomicBool>,
    /// Bytes echoed back intact so far.
    bytes: Arc<AtomicU64>,
    thread: thread::JoinHandle<StreamRecord>,
}

impl Streamer {
    fn start(mut stream: TcpStreamClient) -> Streamer {
        let stop = Arc::new(AtomicBool::new(false));
        let bytes = Arc::new(AtomicU64::new(0));
        let (flag, counter) = (stop.clone(), bytes.clone());
        let thread = thread::spawn(move || {
            let mut progress = Vec::new();
            let mut round = 0u8;
            while !flag.load(Ordering::Relaxed) {
                let chunk: Vec<u8> = (0..8192u32)
                    .map(|i| (i as u8).wrapping_mul(31).wrapping_add(round))
                    .collect();
                match stream.echo(&chunk) {
                    Ok(back) if back == chunk => {
                        let total = counter.fetch_add(chunk.len() as u64, Ordering::Relaxed)
                            + chunk.len() as u64;
                        progress.push((Instant::now(), total));
                    }
                    Ok(_) => return (progress, Some("the echo came back altered".into())),
                    Err(err) => return (progress, Some(format!("{err:#}"))),
                }
                round = round.wrapping_add(1);
            }
            (progress, None)
        });
        Streamer {
            stop,
            bytes,
            thread,
        }
    }

    fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Stops; what the stream did.
    fn finish(self) -> StreamRecord {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

/// `restart.rs` checks that a stream survives `kill -9` of the controller and a takeover,
/// in rounds of echoes while nothing else happens. This covers the rest: traffic never
/// pauses (a stream pushing bytes and new HTTP connections back to back right through the
/// kill, the time without a controller and the takeover), not one request fails, and a
/// backend that dies while no controller runs is taken out by the next one as it starts,
/// while the stream it does not carry goes on. XDP only: the userspace proxy's connections
/// live in the controller's process and die with it.
#[test]
fn xdp_traffic_flows_through_controller_kill_9_and_restart() {
    let t = TwoArm::new(2).unwrap();
    let mut web: Vec<HttpBackend> = HttpBackend::start_on_each(&t.backends, HTTP).unwrap();
    let streams: Vec<TcpStreamServer> =
        TcpStreamServer::start_on_each(&t.backends, STREAM).unwrap();
    let mut text = web_config(&t, Mode::Xdp, &WEB_CHECK.lines());
    text += &format!(
        "\n[[service]]\nname = \"stream\"\nlisten = \"{}:{STREAM}\"\n\
         [service.check]\ninterval = \"200ms\"\n",
        t.vip
    );
    text += &backend_entries(&t.backends, STREAM);
    let dir = TempDir::new();
    let config = dir.write("gerbang.toml", &isolate(&text));
    let logs: Vec<PathBuf> = (0..3)
        .map(|i| dir.path().join(format!("run{i}.log")))
        .collect();
    let run = |i: usize| {
        t.lb.spawn(
            &Cmd::new(binary())
                .args(["run", "--config", config.to_str().unwrap()])
                .log_to(&logs[i]),
        )
        .unwrap()
    };

    let mut first = run(0);
    wait_for_log(&logs[0], "gerbang running");
    let vip = SocketAddrV4::new(t.vip, 80);
    let long = TcpStreamClient::connect(&t.client, SocketAddrV4::new(t.vip, STREAM)).unwrap();
    let streamer = Streamer::start(long);
    let load = Load::start(&t.client, vip, 1, Duration::from_secs(2));
    thread::sleep(Duration::from_millis(500));

    // kill -9; a second without a controller; a new one takes over.
    let killed = Instant::now();
    signal(&first, Signal::SIGKILL);
    wait_exit(&mut first);
    let bytes_at_kill = streamer.bytes();
    thread::sleep(Duration::from_secs(1));
    let bytes_alone = streamer.bytes();
    let mut second = run(1);
    let restarted = Instant::now();
    wait_for_log(&logs[1], "took over the maps of the previous run");
    let live = wait_for_log(&logs[1], "gerbang running");
    let bytes_at_takeover = streamer.bytes();
    thread::sleep(Duration::from_millis(700));
    let bytes_after = streamer.bytes();

    // Again, and b1's web server dies while no controller runs.
    let killed_again = Instant::now();
    signal(&second, Signal::SIGKILL);
    wait_exit(&mut second);
    let b1_died = Instant::now();
    web[1].stop();
    thread::sleep(Duration::from_millis(500));
    let mut third = run(2);
    let live_again = wait_for_log(&logs[2], "gerbang running");
    let bytes_at_third = streamer.bytes();
    thread::sleep(Duration::from_millis(700));
    let samples = load.finish();
    let (progress, stream_error) = streamer.finish();
    let third_status = third.terminate().unwrap();
    let third_said = read(&logs[2]);

    let stall = progress
        .windows(2)
        .map(|w| w[1].0 - w[0].0)
        .max()
        .unwrap_or_default();
    let failed: Vec<&Sample> = samples.iter().filter(|s| s.failed()).collect();
    eprintln!(
        "controller kill -9 (XDP): takeover live {} after the restart, {} after the kill; \
         stream moved {} B in total, {} B with no controller, longest pause {}; {} requests, \
         {} failed (all between b1's death and the third controller going live {} later)",
        ms(live - restarted),
        ms(live - killed),
        progress.last().map_or(0, |p| p.1),
        bytes_alone - bytes_at_kill,
        ms(stall),
        samples.len(),
        failed.len(),
        ms(live_again - b1_died),
    );
    assert_eq!(stream_error, None, "the stream broke");
    assert!(bytes_alone > bytes_at_kill, "no bytes without a controller");
    assert!(
        bytes_at_takeover > bytes_alone,
        "no bytes during the takeover"
    );
    assert!(
        bytes_after > bytes_at_takeover,
        "no bytes after the takeover"
    );
    assert!(
        progress.last().unwrap().1 > bytes_at_third,
        "no bytes after the second takeover"
    );
    // Every byte went to one backend (its health checks connect, but send nothing).
    let echoed: Vec<u64> = streams.iter().map(|s| s.bytes()).collect();
    assert!(
        echoed.contains(&0) && echoed.contains(&progress.last().unwrap().1),
        "the stream stayed with one backend: {echoed:?}"
    );
    assert!(
        samples
            .iter()
            .any(|s| s.start > killed && s.end < restarted && s.answer.is_ok()),
        "new connections were served without a controller"
    );
    let before_b1_died: Vec<String> = failed
        .iter()
        .filter(|s| s.end < b1_died)
        .map(|s| {
            format!(
                "{:?} after the kill: {:?}",
                s.start.saturating_duration_since(killed),
                s.answer
            )
        })
        .collect();
    assert!(
        before_b1_died.is_empty(),
        "requests failed across the first kill and restart (restarted {:?}, live {:?}, killed again {:?} after the kill): {before_b1_died:#?}",
        restarted - killed,
        live - killed,
        killed_again - killed,
    );
    let after_live: Vec<&Sample> = samples.iter().filter(|s| s.start >= live_again).collect();
    assert!(!after_live.is_empty());
    assert!(
        after_live.iter().all(|s| s.from("b0")),
        "after the third controller went live: {after_live:#?}"
    );
    assert!(
        killed_again > live,
        "the second kill came after the takeover"
    );
    assert!(
        third_said.contains("backend web/b1 is DOWN"),
        "{third_said}"
    );
    assert!(third_status.success(), "{third_said}");
}

// ---- the master balancer vanishes ----

/// VRRP advertisement interval of the pair.
const ADVERT: Duration = Duration::from_millis(100);

/// A balancer node of a [`Lan`]: the `web` service on [`VIP`] over nodes 3 and 4, and a
/// VRRP instance holding the VIP while the service has a backend up.
fn node_config(lan: &Lan, mode: Mode, node: usize, priority: u8) -> String {
    let mut text = format!(
        "[dataplane]\ninterfaces = [\"{IFACE}\"]\n{}snat_address = \"{}\"\n\n\
         [[service]]\nname = \"web\"\nlisten = \"{VIP}:80\"\n\
         [service.check]\ntype = \"http\"\ninterval = \"100ms\"\nfall = 2\nrise = 2\n",
        match mode {
            // As in ha_pair.rs: the LAN's veths have no XDP program on their peers.
            Mode::Xdp => "mode = \"xdp\"\nattach = \"generic\"\n",
            Mode::Userspace => "mode = \"userspace\"\n",
        },
        lan.addr(node)
    );
    for backend in [3, 4] {
        text += &format!(
            "  [[service.backend]]\n  name = \"n{backend}\"\n  address = \"{}:{HTTP}\"\n",
            lan.addr(backend)
        );
    }
    text += &format!(
        "\n[[vrrp]]\nname = \"vip\"\ninterface = \"{IFACE}\"\nvirtual_router_id = 51\n\
         priority = {priority}\nadvert_interval = \"{}ms\"\nvirtual_addresses = [\"{VIP}/24\"]\n\
         garp_count = 1\ntrack_services = [{{ service = \"web\", weight = 0 }}]\n",
        ADVERT.as_millis()
    );
    text
}

/// RFC 5798's master-down interval of a backup of `priority`: three advertisements and
/// the skew time.
fn master_down_interval(priority: u8) -> Duration {
    ADVERT * 3 + ADVERT * (256 - u32::from(priority)) / 256
}

/// Removes a pin directory a killed gerbang left behind (its namespace is gone, so no
/// later run takes it over).
struct RemoveOnDrop(Option<PathBuf>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(dir) = &self.0 {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn the_vip_moves_when_the_master_node_vanishes(mode: Mode) {
    // Nodes 0 and 1 balance, 2 is the client, 3 and 4 are backends.
    let mut lan = Lan::new(5).unwrap();
    let _web: Vec<HttpBackend> = [3, 4]
        .iter()
        .map(|&n| {
            HttpBackend::start(
                lan.ns(n),
                SocketAddrV4::new(lan.addr(n), HTTP),
                &format!("n{n}"),
            )
            .unwrap()
        })
        .collect();
    // The master is the real binary in node 0, so that it can vanish with its namespace.
    let dir = TempDir::new();
    let text = isolate(&node_config(&lan, mode, 0, 150));
    let _pins = RemoveOnDrop(
        text.lines()
            .find_map(|l| l.strip_prefix("pin_path = \""))
            .map(|p| PathBuf::from(p.trim_end_matches('"'))),
    );
    let config = dir.write("a.toml", &text);
    let log = dir.path().join("a.log");
    let mut master = lan
        .ns(0)
        .spawn(
            &Cmd::new(binary())
                .args(["run", "--config", config.to_str().unwrap()])
                .log_to(&log),
        )
        .unwrap();
    lan.wait_sole_holder(0, VIP);
    let backup = InProcess::start(lan.ns(1), &node_config(&lan, mode, 1, 100)).unwrap();
    wait_until(WAIT, || match backup.status().vrrp[0].state {
        VrrpState::Backup => Ok(()),
        other => bail!("backup is {other:?}"),
    })
    .unwrap();
    let vip = SocketAddrV4::new(VIP, 80);
    let answer = wait_until(WAIT, || {
        lan.ns(2).run(|| get(vip, Duration::from_secs(1)))?
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", read(&log)));
    assert!(answer == "n3" || answer == "n4", "{answer}");

    // Short attempts, so that one whose SYN went to the vanished node is soon replaced by
    // a new one instead of waiting a second to resend it.
    let load = Load::start(lan.ns(2), vip, 1, Duration::from_millis(300));
    thread::sleep(Duration::from_millis(300));
    let vanishing = Instant::now();
    lan.vanish(0).unwrap();
    // Its process is dead and its namespace gone from here on.
    let vanished = Instant::now();
    let moved = lan.wait_sole_holder(1, VIP);
    thread::sleep(Duration::from_millis(1500));
    let samples = load.finish();
    assert!(
        master.try_wait().unwrap().is_some(),
        "gerbang died with its node"
    );
    let status = backup.status();
    backup.stop().unwrap();

    // What a user sees: the longest time without an answer, from the last one before the
    // node went (or started going) to the first one after.
    let window = master_down_interval(100);
    let mut answered: Vec<Instant> = samples
        .iter()
        .filter(|s| s.answer.is_ok())
        .map(|s| s.end)
        .collect();
    answered.sort();
    let outage = answered
        .windows(2)
        .filter(|w| w[1] > vanishing)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default();
    let failed: Vec<&Sample> = samples.iter().filter(|s| s.failed()).collect();
    let last_failure = failed
        .iter()
        .map(|s| s.end.saturating_duration_since(vanishing))
        .max();
    eprintln!(
        "master node vanished ({mode:?}; deleting it took {}): VIP on the backup {} later, no \
         answer for {} (master-down interval {}); {} of {} requests failed, the last one \
         ending {} after the node started going",
        ms(vanished - vanishing),
        ms(moved),
        ms(outage),
        ms(window),
        failed.len(),
        samples.len(),
        last_failure.map_or("-".into(), ms),
    );
    for s in failed.iter().filter(|s| s.start > vanished + moved) {
        eprintln!(
            "  failed after the VIP moved: started {} after the node started going: {:?}",
            ms(s.start - vanishing),
            s.answer
        );
    }
    assert_eq!(status.vrrp[0].state, VrrpState::Master);
    assert!(
        answered.last().is_some_and(|&at| at > vanished + moved),
        "answers after the VIP moved"
    );
    assert!(outage <= window + MARGIN, "no answer for {outage:?}");
    // The dead node's kernel may refuse connections while its namespace is torn down (the
    // userspace proxy died with gerbang); nothing fails once the backup has the VIP.
    let late: Vec<&&Sample> = failed
        .iter()
        .filter(|s| s.start >= vanishing + window + MARGIN)
        .collect();
    assert!(late.is_empty(), "{late:#?}");
    assert!(
        samples
            .iter()
            .all(|s| s.failed() || s.from("n3") || s.from("n4"))
    );
    let new_flows = status.traffic.service("web").unwrap().counters.new_flows;
    assert!(new_flows > 0, "the backup carried the traffic");
}

// ---- a database primary killed ----

const PG_WRITE: u16 = 6432;
const MONITOR_PASSWORD: &str = "monitor-secret";

/// One statement through the VIP on a new connection as the PostgreSQL superuser; the
/// first column of the first row. An error says whether a server answered it.
fn pg(vip: Ipv4Addr, sql: &str) -> Result<String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        tokio::time::timeout(Duration::from_secs(3), async {
            let mut config = tokio_postgres::Config::new();
            config
                .hostaddr(vip.into())
                .port(PG_WRITE)
                .user("postgres")
                .password(PG_PASSWORD)
                .dbname("postgres");
            let (client, connection) = config.connect(NoTls).await?;
            let connection = tokio::spawn(connection);
            let rows = client.simple_query(sql).await?;
            drop(client);
            let _ = connection.await;
            rows.iter()
                .find_map(|m| match m {
                    tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).map(str::to_owned),
                    _ => None,
                })
                .ok_or_else(|| anyhow!("no row"))
        })
        .await?
    })
}

/// Whether a PostgreSQL server answered the failed statement (rather than the connection
/// failing).
fn a_server_answered(err: &anyhow::Error) -> bool {
    err.chain().any(|e| {
        e.downcast_ref::<tokio_postgres::Error>()
            .is_some_and(|e| e.as_db_error().is_some())
    })
}

/// `kill -9` of a PostgreSQL server's postmaster (the first line of `postmaster.pid` in
/// its data directory, beside its log); returns once its port refuses connections.
fn kill_postgres(ns: &Netns, server: &Postgres) {
    let pid_file = server.log.with_file_name("data").join("postmaster.pid");
    let pid: i32 = read(&pid_file)
        .lines()
        .next()
        .and_then(|line| line.trim().parse().ok())
        .unwrap_or_else(|| panic!("no pid in {}", pid_file.display()));
    kill(Pid::from_raw(pid), Signal::SIGKILL).unwrap();
    let addr = server.addr;
    wait_until(Duration::from_secs(10), || {
        match ns.run(|| TcpStream::connect_timeout(&addr.into(), Duration::from_secs(1)))? {
            Ok(_) => bail!("{addr} still accepts connections"),
            Err(_) => Ok(()),
        }
    })
    .unwrap();
}

fn write(vip: Ipv4Addr, tag: &str) -> Result<String> {
    pg(
        vip,
        &format!("INSERT INTO writes (tag) VALUES ('{tag}') RETURNING host(inet_server_addr())"),
    )
}

fn a_killed_primary_leaves_writes_nowhere_until_a_promotion(mode: Mode) {
    let t = TwoArm::new(2).unwrap();
    let scratch = TempDir::new();
    let (a1, a2) = (t.backends[0].addr, t.backends[1].addr);
    let primary = Postgres::primary(&t.backends[0].ns, a1, scratch.path(), "pg1").unwrap();
    primary
        .psql(&format!(
            "CREATE ROLE gerbang LOGIN PASSWORD '{MONITOR_PASSWORD}'; \
             CREATE TABLE writes (id serial PRIMARY KEY, tag text)"
        ))
        .unwrap();
    let replica =
        Postgres::replica(&t.backends[1].ns, a2, scratch.path(), "pg2", &primary).unwrap();
    let check = Check {
        kind: "postgres",
        interval: Duration::from_millis(300),
        timeout: Duration::from_millis(500),
        fall: 2,
        rise: 2,
    };
    let config = format!(
        "[dataplane]\ninterfaces = [\"{}\", \"{}\"]\n{}snat_address = \"{}\"\n\n\
         [[service]]\nname = \"pg-write\"\nlisten = \"{}:{PG_WRITE}\"\nrole = \"primary\"\n{}\
         user = \"gerbang\"\npassword = \"{MONITOR_PASSWORD}\"\n\
         [[service.backend]]\nname = \"pg1\"\naddress = \"{a1}:{}\"\n\
         [[service.backend]]\nname = \"pg2\"\naddress = \"{a2}:{}\"\n",
        t.lb_client_if,
        t.lb_backend_if,
        mode.dataplane_lines(),
        t.snat,
        t.vip,
        check.lines(),
        Postgres::PORT,
        Postgres::PORT,
    );
    let gerbang = InProcess::start(&t.lb, &config).unwrap();
    gerbang.wait_for_backend_state("pg-write", "pg1", BackendState::Active);
    assert_eq!(gerbang.backend_state("pg-write", "pg2"), BackendState::Down);
    let vip = t.vip;

    t.client
        .run(|| {
            for _ in 0..5 {
                assert_eq!(write(vip, "before").unwrap(), a1.to_string());
            }
            wait_until(Duration::from_secs(20), || {
                match replica.psql("SELECT count(*) FROM writes")?.as_str() {
                    "5" => Ok(()),
                    n => bail!("{n} rows replicated"),
                }
            })
            .unwrap();

            let killed = Instant::now();
            kill_postgres(&t.backends[0].ns, &primary);
            // Writes keep coming while gerbang notices, and after: none may reach the
            // replica, which would answer (refusing: it is read-only).
            let mut outage = Vec::new();
            let down = loop {
                outage.push(write(vip, "outage"));
                if gerbang.backend_state("pg-write", "pg1") == BackendState::Down {
                    break Instant::now();
                }
                thread::sleep(Duration::from_millis(50));
            };
            let plan = gerbang.status().plan;
            let service = plan.services.iter().find(|s| s.name == "pg-write").unwrap();
            assert!(
                service
                    .backends
                    .iter()
                    .all(|b| b.state == BackendState::Down),
                "the write service has no backend: {service:?}"
            );
            for _ in 0..5 {
                let started = Instant::now();
                outage.push(write(vip, "outage"));
                assert!(
                    started.elapsed() < Duration::from_secs(1),
                    "refused at once, not left to time out"
                );
            }
            for result in &outage {
                match result {
                    Ok(at) => panic!("a write succeeded at {at} with no primary"),
                    Err(err) => assert!(!a_server_answered(err), "a server answered: {err:#}"),
                }
            }

            replica.psql("SELECT pg_promote()").unwrap();
            let promoted = Instant::now();
            let mut waiting = 0;
            let first = loop {
                match write(vip, "after") {
                    Ok(at) => break at,
                    Err(err) => {
                        assert!(!a_server_answered(&err), "a server answered: {err:#}");
                        waiting += 1;
                        assert!(
                            promoted.elapsed() < Duration::from_secs(20),
                            "no write since the promotion"
                        );
                        thread::sleep(Duration::from_millis(50));
                    }
                }
            };
            let served = promoted.elapsed();
            assert_eq!(first, a2.to_string());
            for _ in 0..4 {
                assert_eq!(write(vip, "after").unwrap(), a2.to_string());
            }
            eprintln!(
                "PostgreSQL primary kill -9 ({mode:?}): DOWN after {} (window {}); {} writes \
                 refused meanwhile and after; writes served {} after the promotion ({waiting} \
                 refused while it was noticed)",
                ms(down - killed),
                ms(check.fall_window()),
                outage.len(),
                ms(served),
            );
            assert!(down - killed <= check.fall_window() + MARGIN);
        })
        .unwrap();

    // What the promoted replica holds: the writes before the kill and after the promotion,
    // nothing from the outage; and it never refused a write as a read-only server.
    let rows = replica
        .psql("SELECT tag, count(*) FROM writes GROUP BY tag ORDER BY tag")
        .unwrap();
    assert_eq!(rows, "after|5\nbefore|5");
    let replica_log = read(&replica.log);
    assert!(
        !replica_log.contains("read-only transaction"),
        "a write reached the replica:\n{replica_log}"
    );
    gerbang.stop().unwrap();
}

macro_rules! on_both_data_planes {
    ($($scenario:ident),* $(,)?) => {
        mod xdp {
            $(#[test] fn $scenario() { super::$scenario(super::Mode::Xdp) })*
        }
        mod userspace {
            $(#[test] fn $scenario() { super::$scenario(super::Mode::Userspace) })*
        }
    };
}

on_both_data_planes!(
    a_backend_killed_fails_requests_only_until_it_is_down,
    a_hung_backend_times_out_and_comes_back_after_sigcont,
    a_backend_whose_link_goes_down_is_taken_out_and_back,
    lossy_link_every_request_is_answered,
    the_vip_moves_when_the_master_node_vanishes,
    a_killed_primary_leaves_writes_nowhere_until_a_promotion,
);
