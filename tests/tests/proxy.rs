//! The userspace proxy data plane with real traffic: a client, the balancer and backends
//! in their own network namespaces (the two-arm topology), the proxy running in-process
//! inside the balancer's namespace on a current-thread runtime, fed the same plans the
//! XDP data plane gets.

mod support;

use std::{
    collections::BTreeMap,
    io::{self, Read, Write},
    net::{Ipv4Addr, Shutdown, SocketAddrV4, TcpStream, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use gerbang::dataplane::proxy::{ProxyOptions, RelayMode, ServiceOptions};
use gerbang_testbed::{
    HttpBackend, TcpStreamClient, TcpStreamServer, TwoArm, UdpEcho, curl, http_get_many,
    udp_request,
};
use support::{
    proxy::{DOWN, DRAINED, Proxy, ProxyProcess, TestServer, child_main},
    tempdir::TempDir,
};

const HTTP_PORT: u16 = 8080;
const STREAM_PORT: u16 = 9000;
const UDP_PORT: u16 = 5353;

/// A config with `services` (each a `[[service]]` block) for the two-arm topology;
/// `extra` follows the `[dataplane]` keys (more of them, or other tables).
fn config(t: &TwoArm, extra: &str, services: &[String]) -> String {
    let mut text = format!(
        "[dataplane]\ninterfaces = [\"{}\", \"{}\"]\nsnat_address = \"{}\"\n{extra}\n",
        t.lb_client_if, t.lb_backend_if, t.snat
    );
    for service in services {
        text += service;
    }
    text
}

/// One `[[service]]` block: `extra` goes into the service table, each backend is
/// (name, address, extra keys).
fn service(
    name: &str,
    listen: SocketAddrV4,
    protocol: &str,
    extra: &str,
    backends: &[(String, SocketAddrV4, &str)],
) -> String {
    let mut text = format!(
        "\n[[service]]\nname = \"{name}\"\nlisten = \"{listen}\"\nprotocol = \"{protocol}\"\n{extra}\n"
    );
    for (backend, address, keys) in backends {
        text += &format!(
            "  [[service.backend]]\n  name = \"{backend}\"\n  address = \"{address}\"\n  {keys}\n"
        );
    }
    text
}

/// Every backend of `t` at `port`, named b0, b1, ...
fn backends_at(t: &TwoArm, port: u16) -> Vec<(String, SocketAddrV4, &'static str)> {
    t.backends
        .iter()
        .map(|b| (format!("b{}", b.index), SocketAddrV4::new(b.addr, port), ""))
        .collect()
}

fn vip(t: &TwoArm, port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(t.vip, port)
}

fn http_backends(t: &TwoArm) -> Vec<HttpBackend> {
    HttpBackend::start_on_each(&t.backends, HTTP_PORT).unwrap()
}

fn stream_backends(t: &TwoArm) -> Vec<TcpStreamServer> {
    TcpStreamServer::start_on_each(&t.backends, STREAM_PORT).unwrap()
}

/// Answers per backend name.
fn tally(answers: &[String]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for answer in answers {
        *counts.entry(answer.trim().to_string()).or_default() += 1;
    }
    counts
}

fn get_all(t: &TwoArm, port: u16, n: usize) -> Vec<String> {
    http_get_many(&t.client, vip(t, port), n)
        .into_iter()
        .enumerate()
        .map(|(i, r)| r.unwrap_or_else(|e| panic!("request {i} failed: {e:#}")))
        .collect()
}

/// Connects from the client namespace with the testbed's timeouts.
fn connect(t: &TwoArm, to: SocketAddrV4) -> TcpStream {
    t.client
        .run(|| {
            let stream = TcpStream::connect_timeout(&to.into(), Duration::from_secs(2))?;
            stream.set_read_timeout(Some(Duration::from_secs(2)))?;
            stream.set_write_timeout(Some(Duration::from_secs(2)))?;
            io::Result::Ok(stream)
        })
        .unwrap()
        .unwrap()
}

/// Whether the proxy refuses a connection from the client to `to` with a RST (or closes
/// it) rather than leaving it open: a read returns at once with a reset or end of file.
/// The reset may even beat the end of the client's `connect`.
fn refused(t: &TwoArm, to: SocketAddrV4) -> bool {
    let connected = t
        .client
        .run(|| TcpStream::connect_timeout(&to.into(), Duration::from_secs(2)))
        .unwrap();
    let mut stream = match connected {
        Ok(stream) => stream,
        Err(err) => return err.kind() == io::ErrorKind::ConnectionReset,
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let _ = stream.write_all(b"hello");
    let mut byte = [0u8; 1];
    match stream.read(&mut byte) {
        Ok(0) => true,
        Ok(_) => false,
        Err(err) => err.kind() == io::ErrorKind::ConnectionReset,
    }
}

/// 300 HTTP requests, each on a new connection: 100 per backend, backends see the SNAT
/// address, and the counters add up to what was sent and received.
#[test]
fn round_robin_over_real_connections() {
    let t = TwoArm::new(3).unwrap();
    let servers = http_backends(&t);
    let web = service("web", vip(&t, 80), "tcp", "", &backends_at(&t, HTTP_PORT));
    let proxy =
        Proxy::start_healthy(&t.lb, &config(&t, "", &[web]), ProxyOptions::default()).unwrap();

    let answers = get_all(&t, 80, 300);
    assert_eq!(
        tally(&answers),
        BTreeMap::from([("b0".into(), 100), ("b1".into(), 100), ("b2".into(), 100)])
    );
    for server in &servers {
        assert_eq!(server.requests(), 100, "{}", server.name());
        assert_eq!(server.connections(), 100, "{}", server.name());
        assert_eq!(
            server.peer_ips().keys().copied().collect::<Vec<_>>(),
            vec![t.snat],
            "backends see the SNAT address"
        );
    }
    // A peer nobody here wrote.
    let body = curl(&t.client, &format!("http://{}/", vip(&t, 80))).unwrap();
    assert_eq!(body.trim(), "b0");

    proxy.wait_active("web", 0, Duration::from_secs(2)).unwrap();
    let report = proxy.traffic();
    assert!(report.events.is_empty());
    let counters = report.service("web").unwrap().counters;
    assert_eq!(counters.new_flows, 301);
    assert_eq!(counters.drops, 0);
    // The testbed's request and response, byte for byte.
    let request = format!(
        "GET / HTTP/1.1\r\nHost: {}\r\nUser-Agent: gerbang-testbed\r\nConnection: close\r\n\r\n",
        vip(&t, 80)
    );
    let response = |name: &str, connection: &str| {
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\nX-Backend: {name}\r\nConnection: {connection}\r\n\r\n{name}\n"
        )
        .len() as u64
    };
    for name in ["b0", "b1", "b2"] {
        let backend = report.service("web").unwrap().backend(name).unwrap();
        // curl's request went to b0, and curl keeps connections alive.
        let (curled, curl_bytes) = if name == "b0" {
            (1, response(name, "keep-alive"))
        } else {
            (0, 0)
        };
        assert_eq!(backend.counters.new_flows, 100 + curled, "{name}");
        assert_eq!(
            backend.counters.bytes_to_client,
            100 * response(name, "close") + curl_bytes,
            "{name}"
        );
        assert!(backend.counters.packets_to_client >= 100, "{name}");
    }
    let to_backends: u64 = ["b0", "b1", "b2"]
        .iter()
        .map(|name| {
            let b = report.service("web").unwrap().backend(name).unwrap();
            b.counters.bytes_to_backend
        })
        .sum();
    assert_eq!(to_backends, counters.bytes_to_backend);
    assert!(to_backends >= 300 * request.len() as u64);
    proxy.stop().unwrap();
}

/// Weights 3:1 split new connections 3:1, in nginx's smooth order.
#[test]
fn weights_split_connections() {
    let t = TwoArm::new(2).unwrap();
    let _servers = http_backends(&t);
    let a = t.backends[0].addr;
    let b = t.backends[1].addr;
    let web = service(
        "web",
        vip(&t, 80),
        "tcp",
        "",
        &[
            ("b0".into(), SocketAddrV4::new(a, HTTP_PORT), "weight = 3"),
            ("b1".into(), SocketAddrV4::new(b, HTTP_PORT), "weight = 1"),
        ],
    );
    let proxy =
        Proxy::start_healthy(&t.lb, &config(&t, "", &[web]), ProxyOptions::default()).unwrap();
    let answers = get_all(&t, 80, 400);
    assert_eq!(
        tally(&answers),
        BTreeMap::from([("b0".into(), 300), ("b1".into(), 100)])
    );
    let order: Vec<&str> = answers.iter().take(8).map(|a| a.trim()).collect();
    assert_eq!(order, ["b0", "b0", "b1", "b0", "b0", "b0", "b1", "b0"]);
    proxy.stop().unwrap();
}

/// The outcome for a long-lived connection whose backend changes state in a new plan.
enum Expect {
    Cut,
    Continues,
}

/// Opens a long-lived echo connection (to b0, the first pick), applies a plan where b0
/// has `status` and checks `expect`; new connections go to b1 only.
fn established_connection_when_backend_changes(
    on_backend_down: &str,
    status: gerbang::dataplane::BackendStatus,
    expect: Expect,
) {
    let t = TwoArm::new(2).unwrap();
    let servers = stream_backends(&t);
    let stream = service(
        "stream",
        vip(&t, STREAM_PORT),
        "tcp",
        &format!("on_backend_down = \"{on_backend_down}\""),
        &backends_at(&t, STREAM_PORT),
    );
    let proxy =
        Proxy::start_healthy(&t.lb, &config(&t, "", &[stream]), ProxyOptions::default()).unwrap();
    let mut long = TcpStreamClient::connect(&t.client, vip(&t, STREAM_PORT)).unwrap();
    let chunk: Vec<u8> = (0..64 * 1024).map(|i| (i * 7 % 251) as u8).collect();
    assert_eq!(long.echo(&chunk).unwrap(), chunk);
    assert_eq!(
        servers[0].connections(),
        1,
        "the first connection goes to b0"
    );

    proxy
        .apply(&proxy.plan(&[("stream", "b0", status)]))
        .unwrap();
    let started = Instant::now();
    let result = long.echo(&chunk);
    match expect {
        Expect::Cut => {
            assert!(
                result.is_err(),
                "the connection to the down backend was cut"
            );
            assert!(
                started.elapsed() < Duration::from_secs(1),
                "cut at once, not after a timeout: {:?}",
                started.elapsed()
            );
            let report = proxy.traffic();
            let b0 = report.service("stream").unwrap().backend("b0").unwrap();
            assert_eq!(b0.counters.drops, 1);
        }
        Expect::Continues => {
            assert_eq!(
                result.unwrap(),
                chunk,
                "the established connection continues"
            );
        }
    }
    for _ in 0..4 {
        let mut short = TcpStreamClient::connect(&t.client, vip(&t, STREAM_PORT)).unwrap();
        assert_eq!(short.echo(b"ping").unwrap(), b"ping");
    }
    assert_eq!(servers[0].connections(), 1, "no new connection to b0");
    assert_eq!(servers[1].connections(), 4);
    if let Expect::Continues = expect {
        let payload: Vec<u8> = chunk.iter().map(|b| b.wrapping_add(1)).collect();
        assert_eq!(long.echo(&payload).unwrap(), payload);
        assert_eq!(proxy.active("stream").backends[0], ("b0".to_string(), 1));
    }
    proxy.stop().unwrap();
}

#[test]
fn down_backend_with_reset_policy_loses_its_connections() {
    established_connection_when_backend_changes("reset", DOWN, Expect::Cut);
}

#[test]
fn down_backend_with_keep_policy_keeps_its_connections() {
    established_connection_when_backend_changes("keep", DOWN, Expect::Continues);
}

#[test]
fn drained_backend_keeps_its_connections_and_gets_no_new_ones() {
    established_connection_when_backend_changes("reset", DRAINED, Expect::Continues);
}

/// The byte the half-close tests send at `offset` (a pattern that catches reordering).
fn pattern(offset: usize, salt: u8) -> u8 {
    ((offset * 31 + offset / 4096) % 251) as u8 ^ salt
}

fn send_pattern(stream: &mut TcpStream, len: usize, salt: u8) -> io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut sent = 0;
    while sent < len {
        let n = buf.len().min(len - sent);
        for (i, b) in buf[..n].iter_mut().enumerate() {
            *b = pattern(sent + i, salt);
        }
        stream.write_all(&buf[..n])?;
        sent += n;
    }
    Ok(())
}

/// Reads to end of file; returns how many bytes came and whether they all matched.
fn receive_pattern(stream: &mut TcpStream, salt: u8) -> io::Result<(usize, bool)> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut received = 0;
    let mut intact = true;
    loop {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Ok((received, intact));
        }
        intact &= buf[..n]
            .iter()
            .enumerate()
            .all(|(i, b)| *b == pattern(received + i, salt));
        received += n;
    }
}

/// Long streams with half-close both ways round, in every relay mode:
/// - the client sends 16 MiB and shuts down its side; the backend reads to the end, then
///   answers with 16 MiB and closes;
/// - the backend sends 8 MiB and shuts down its side first; the client reads to the end,
///   then sends 4 MiB and closes.
fn half_close(relay: RelayMode) {
    const UPLOAD: usize = 16 << 20;
    const ANSWER: usize = 16 << 20;
    const GREETING: usize = 8 << 20;
    const LATE: usize = 4 << 20;
    let t = TwoArm::new(2).unwrap();
    let results: Arc<std::sync::Mutex<Vec<(usize, bool)>>> = Arc::default();
    let addr0 = SocketAddrV4::new(t.backends[0].addr, STREAM_PORT);
    let addr1 = SocketAddrV4::new(t.backends[1].addr, STREAM_PORT);
    // b0: read everything, then answer.
    let seen = results.clone();
    let _listens_first = TestServer::start(&t.backends[0].ns, addr0, move |mut stream| {
        let seen = seen.clone();
        thread::spawn(move || {
            let got = receive_pattern(&mut stream, 1).unwrap();
            seen.lock().unwrap().push(got);
            send_pattern(&mut stream, ANSWER, 2).unwrap();
        });
    })
    .unwrap();
    // b1: talk first, shut down, then read everything.
    let seen = results.clone();
    let _talks_first = TestServer::start(&t.backends[1].ns, addr1, move |mut stream| {
        let seen = seen.clone();
        thread::spawn(move || {
            send_pattern(&mut stream, GREETING, 3).unwrap();
            stream.shutdown(Shutdown::Write).unwrap();
            let got = receive_pattern(&mut stream, 4).unwrap();
            seen.lock().unwrap().push(got);
        });
    })
    .unwrap();
    let stream = service(
        "stream",
        vip(&t, STREAM_PORT),
        "tcp",
        "",
        &backends_at(&t, STREAM_PORT),
    );
    let options = ProxyOptions {
        relay,
        ..ProxyOptions::default()
    };
    let proxy = Proxy::start_healthy(&t.lb, &config(&t, "", &[stream]), options).unwrap();

    // To b0 (first pick).
    let mut client = connect(&t, vip(&t, STREAM_PORT));
    send_pattern(&mut client, UPLOAD, 1).unwrap();
    client.shutdown(Shutdown::Write).unwrap();
    assert_eq!(receive_pattern(&mut client, 2).unwrap(), (ANSWER, true));
    // To b1.
    let mut client = connect(&t, vip(&t, STREAM_PORT));
    assert_eq!(receive_pattern(&mut client, 3).unwrap(), (GREETING, true));
    send_pattern(&mut client, LATE, 4).unwrap();
    client.shutdown(Shutdown::Write).unwrap();
    drop(client);

    proxy
        .wait_active("stream", 0, Duration::from_secs(3))
        .unwrap();
    let mut seen = support::gerbang::wait_until(Duration::from_secs(3), || {
        let seen = results.lock().unwrap().clone();
        anyhow::ensure!(seen.len() == 2, "backends saw {seen:?} so far");
        Ok(seen)
    })
    .unwrap();
    seen.sort_unstable();
    assert_eq!(seen, vec![(LATE, true), (UPLOAD, true)]);
    let counters = proxy.traffic().service("stream").unwrap().counters;
    assert_eq!(counters.bytes_to_backend, (UPLOAD + LATE) as u64);
    assert_eq!(counters.bytes_to_client, (ANSWER + GREETING) as u64);
    assert_eq!(counters.drops, 0);
    proxy.stop().unwrap();
}

#[test]
fn half_close_with_auto_relay() {
    half_close(RelayMode::Auto);
}

#[test]
fn half_close_with_splice() {
    half_close(RelayMode::Splice);
}

#[test]
fn half_close_with_copy() {
    half_close(RelayMode::Copy);
}

fn udp_config(t: &TwoArm) -> String {
    let echo = service("echo", vip(t, 53), "udp", "", &backends_at(t, UDP_PORT));
    config(t, "[timeouts]\nudp = \"1s\"\n", &[echo])
}

fn udp_echoes(t: &TwoArm) -> Vec<UdpEcho> {
    UdpEcho::start_on_each(&t.backends, UDP_PORT).unwrap()
}

/// A UDP client socket in the client namespace, connected to `to` (so an answer from any
/// other address is not seen), held for several requests. Holding it matters: a fixed
/// port closed and bound again at once can still be held by a child some other test
/// forked (a child holds every descriptor until it execs).
struct UdpClient(UdpSocket);

impl UdpClient {
    fn new(t: &TwoArm, port: u16, to: SocketAddrV4) -> UdpClient {
        let from = SocketAddrV4::new(t.client_addr, port);
        let socket = t
            .client
            .run(|| {
                let socket = UdpSocket::bind(from)?;
                socket.connect(to)?;
                socket.set_read_timeout(Some(Duration::from_secs(2)))?;
                io::Result::Ok(socket)
            })
            .unwrap()
            .unwrap();
        UdpClient(socket)
    }

    /// Sends `payload` and returns the answer.
    fn ask(&self, payload: &[u8]) -> io::Result<Vec<u8>> {
        self.0.send(payload)?;
        let mut buf = vec![0u8; 65536];
        let n = self.0.recv(&mut buf)?;
        buf.truncate(n);
        Ok(buf)
    }
}

/// UDP request/response through per-client sessions, answered from the VIP; sessions end
/// after `timeouts.udp` of silence and the next datagram opens a new one.
#[test]
fn udp_sessions_and_idle_timeout() {
    let t = TwoArm::new(3).unwrap();
    let echoes = udp_echoes(&t);
    let proxy = Proxy::start_healthy(&t.lb, &udp_config(&t), ProxyOptions::default()).unwrap();
    let to = vip(&t, 53);
    let first = UdpClient::new(&t, 20000, to);
    let mut answers = Vec::new();
    for i in 0..30u16 {
        let payload = format!("question {i}");
        // `udp_request` connects to the VIP: an answer from any other address is not seen.
        let answer = if i == 0 {
            first.ask(payload.as_bytes()).unwrap()
        } else {
            let from = SocketAddrV4::new(t.client_addr, 20000 + i);
            udp_request(&t.client, Some(from), to, payload.as_bytes()).unwrap()
        };
        let answer = String::from_utf8(answer).unwrap();
        let (backend, echoed) = answer.split_once(':').unwrap();
        assert_eq!(echoed, payload);
        answers.push(backend.to_string());
    }
    assert_eq!(
        tally(&answers),
        BTreeMap::from([("b0".into(), 10), ("b1".into(), 10), ("b2".into(), 10)])
    );
    for echo in &echoes {
        assert_eq!(
            echo.peer_ips().keys().copied().collect::<Vec<_>>(),
            vec![t.snat]
        );
    }
    // The same client again within the timeout: same session, same backend.
    let again = first.ask(b"again").unwrap();
    assert_eq!(again, b"b0:again");
    assert_eq!(proxy.active("echo").total, 30);
    let counters = proxy.traffic().service("echo").unwrap().counters;
    assert_eq!(
        (
            counters.new_flows,
            counters.packets_to_backend,
            counters.packets_to_client
        ),
        (30, 31, 31)
    );

    proxy
        .wait_active("echo", 0, Duration::from_secs(3))
        .unwrap();
    let peers_before = echoes[0].peers().len() + echoes[1].peers().len() + echoes[2].peers().len();
    first.ask(b"after").unwrap();
    let peers_after = echoes[0].peers().len() + echoes[1].peers().len() + echoes[2].peers().len();
    assert_eq!(
        peers_after,
        peers_before + 1,
        "a new session, from a new port"
    );
    assert_eq!(
        proxy.traffic().service("echo").unwrap().counters.new_flows,
        31
    );
    proxy.stop().unwrap();
}

/// A UDP session whose backend goes down (reset policy) is cut: the client's next
/// datagram is dropped and counted, the one after goes to a live backend.
#[test]
fn udp_session_of_a_down_backend_is_cut() {
    let t = TwoArm::new(2).unwrap();
    let _echoes = udp_echoes(&t);
    let proxy = Proxy::start_healthy(&t.lb, &udp_config(&t), ProxyOptions::default()).unwrap();
    let to = vip(&t, 53);
    let client = UdpClient::new(&t, 30000, to);
    assert_eq!(client.ask(b"x").unwrap(), b"b0:x");
    proxy.apply(&proxy.plan(&[("echo", "b0", DOWN)])).unwrap();
    assert!(client.ask(b"y").is_err());
    assert_eq!(client.ask(b"z").unwrap(), b"b1:z");
    let report = proxy.traffic();
    let echo = report.service("echo").unwrap();
    assert_eq!(echo.counters.drops, 1);
    assert_eq!(echo.backend("b0").unwrap().counters.drops, 1);
    proxy.stop().unwrap();
}

/// Without an active backend, TCP clients are reset at once and UDP datagrams dropped,
/// both counted.
#[test]
fn no_active_backend_refuses_at_once() {
    let t = TwoArm::new(2).unwrap();
    let _servers = http_backends(&t);
    let _echoes = udp_echoes(&t);
    let web = service("web", vip(&t, 80), "tcp", "", &backends_at(&t, HTTP_PORT));
    let echo = service("echo", vip(&t, 53), "udp", "", &backends_at(&t, UDP_PORT));
    // No plan applied yet: nothing is active.
    let proxy = Proxy::start(
        &t.lb,
        &config(&t, "", &[web, echo]),
        ProxyOptions::default(),
    )
    .unwrap();
    let started = Instant::now();
    assert!(refused(&t, vip(&t, 80)));
    assert!(started.elapsed() < Duration::from_secs(1));

    // Every backend down.
    let plan = proxy.plan(&[
        ("web", "b0", DOWN),
        ("web", "b1", DOWN),
        ("echo", "b0", DOWN),
        ("echo", "b1", DOWN),
    ]);
    proxy.apply(&plan).unwrap();
    let started = Instant::now();
    assert!(refused(&t, vip(&t, 80)));
    assert!(started.elapsed() < Duration::from_secs(1));
    assert!(udp_request(&t.client, None, vip(&t, 53), b"anyone?").is_err());

    let report = proxy.traffic();
    assert_eq!(report.service("web").unwrap().counters.drops, 2);
    assert_eq!(report.service("web").unwrap().counters.new_flows, 0);
    assert_eq!(report.service("echo").unwrap().counters.drops, 1);

    // And back.
    proxy.apply(&proxy.plan(&[])).unwrap();
    assert_eq!(get_all(&t, 80, 2).len(), 2);
    proxy.stop().unwrap();
}

/// A service's connection limit: connections beyond it are reset and counted; once one
/// closes, a new one is accepted.
#[test]
fn connection_limit_is_enforced() {
    let t = TwoArm::new(2).unwrap();
    let _servers = stream_backends(&t);
    let stream = service(
        "stream",
        vip(&t, STREAM_PORT),
        "tcp",
        "",
        &backends_at(&t, STREAM_PORT),
    );
    let options = ProxyOptions {
        services: BTreeMap::from([(
            "stream".to_string(),
            ServiceOptions {
                max_connections: Some(5),
                send_proxy_v2: false,
            },
        )]),
        ..ProxyOptions::default()
    };
    let proxy = Proxy::start_healthy(&t.lb, &config(&t, "", &[stream]), options).unwrap();
    let mut open: Vec<TcpStreamClient> = (0..5)
        .map(|_| TcpStreamClient::connect(&t.client, vip(&t, STREAM_PORT)).unwrap())
        .collect();
    for client in &mut open {
        assert_eq!(client.echo(b"hello").unwrap(), b"hello");
    }
    for _ in 0..3 {
        assert!(refused(&t, vip(&t, STREAM_PORT)));
    }
    assert_eq!(proxy.active("stream").total, 5);
    let counters = proxy.traffic().service("stream").unwrap().counters;
    assert_eq!((counters.new_flows, counters.drops), (5, 3));
    for client in &mut open {
        assert_eq!(client.echo(b"still").unwrap(), b"still");
    }

    open.pop();
    proxy
        .wait_active("stream", 4, Duration::from_secs(2))
        .unwrap();
    let mut next = TcpStreamClient::connect(&t.client, vip(&t, STREAM_PORT)).unwrap();
    assert_eq!(next.echo(b"room again").unwrap(), b"room again");
    proxy.stop().unwrap();
}

/// With `send_proxy_v2`, the backend reads a PROXY v2 header carrying the client's
/// address and the VIP before the client's bytes.
#[test]
fn proxy_protocol_v2_tells_the_backend_who_the_client_is() {
    let t = TwoArm::new(1).unwrap();
    let addr = SocketAddrV4::new(t.backends[0].addr, STREAM_PORT);
    let _backend = TestServer::start(&t.backends[0].ns, addr, |mut stream| {
        thread::spawn(move || {
            let answer = match parse_proxy_v2(&mut stream) {
                Ok((source, destination)) => format!("{source} {destination}\n"),
                Err(err) => format!("bad header: {err}\n"),
            };
            stream.write_all(answer.as_bytes()).unwrap();
            // Then echo, to show the client's own bytes follow the header intact.
            let mut buf = [0u8; 1024];
            while let Ok(n) = stream.read(&mut buf) {
                if n == 0 || stream.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        });
    })
    .unwrap();
    let stream = service(
        "stream",
        vip(&t, 443),
        "tcp",
        "",
        &[("b0".into(), addr, "")],
    );
    let options = ProxyOptions {
        services: BTreeMap::from([(
            "stream".to_string(),
            ServiceOptions {
                max_connections: None,
                send_proxy_v2: true,
            },
        )]),
        ..ProxyOptions::default()
    };
    let proxy = Proxy::start_healthy(&t.lb, &config(&t, "", &[stream]), options).unwrap();
    for _ in 0..3 {
        let mut client = connect(&t, vip(&t, 443));
        let me = match client.local_addr().unwrap() {
            std::net::SocketAddr::V4(me) => me,
            other => panic!("{other}"),
        };
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        while line.last() != Some(&b'\n') {
            client.read_exact(&mut byte).unwrap();
            line.push(byte[0]);
        }
        assert_eq!(
            String::from_utf8(line).unwrap(),
            format!("{me} {}\n", vip(&t, 443))
        );
        client.write_all(b"payload").unwrap();
        let mut echoed = [0u8; 7];
        client.read_exact(&mut echoed).unwrap();
        assert_eq!(&echoed, b"payload");
    }
    proxy.stop().unwrap();
}

/// Parses a PROXY v2 header for TCP over IPv4 as a backend would (HAProxy's
/// `accept-proxy`): returns the source and destination it carries.
fn parse_proxy_v2(stream: &mut TcpStream) -> Result<(SocketAddrV4, SocketAddrV4), String> {
    let mut fixed = [0u8; 16];
    stream.read_exact(&mut fixed).map_err(|e| e.to_string())?;
    if &fixed[..12] != b"\r\n\r\n\0\r\nQUIT\n" {
        return Err(format!("signature {:?}", &fixed[..12]));
    }
    if fixed[12] != 0x21 {
        return Err(format!("version/command {:#x}", fixed[12]));
    }
    if fixed[13] != 0x11 {
        return Err(format!("family/transport {:#x}", fixed[13]));
    }
    let len = usize::from(u16::from_be_bytes([fixed[14], fixed[15]]));
    let mut rest = vec![0u8; len];
    stream.read_exact(&mut rest).map_err(|e| e.to_string())?;
    if len < 12 {
        return Err(format!("address block of {len} bytes"));
    }
    let ip = |b: &[u8]| Ipv4Addr::new(b[0], b[1], b[2], b[3]);
    let port = |b: &[u8]| u16::from_be_bytes([b[0], b[1]]);
    Ok((
        SocketAddrV4::new(ip(&rest[0..4]), port(&rest[8..10])),
        SocketAddrV4::new(ip(&rest[4..8]), port(&rest[10..12])),
    ))
}

/// A thousand clients that open a connection and say nothing do not stop other clients
/// from being served; closing them frees everything.
#[test]
fn thousand_idle_connections_do_not_starve_others() {
    const IDLE: usize = 1000;
    let t = TwoArm::new(2).unwrap();
    let _servers = http_backends(&t);
    let _quiet: Vec<TestServer> = t
        .backends
        .iter()
        .map(|b| TestServer::quiet(&b.ns, SocketAddrV4::new(b.addr, STREAM_PORT)).unwrap())
        .collect();
    let web = service("web", vip(&t, 80), "tcp", "", &backends_at(&t, HTTP_PORT));
    let idle = service(
        "idle",
        vip(&t, STREAM_PORT),
        "tcp",
        "",
        &backends_at(&t, STREAM_PORT),
    );
    let proxy = Proxy::start_healthy(
        &t.lb,
        &config(&t, "", &[web, idle]),
        ProxyOptions::default(),
    )
    .unwrap();
    let to = vip(&t, STREAM_PORT);
    let clients: Vec<TcpStream> = t
        .client
        .run(|| {
            (0..IDLE)
                .map(|_| TcpStream::connect_timeout(&to.into(), Duration::from_secs(2)))
                .collect::<io::Result<Vec<_>>>()
        })
        .unwrap()
        .unwrap();
    proxy
        .wait_active("idle", IDLE as u64, Duration::from_secs(10))
        .unwrap();
    // Accepted first, established with their backends a moment later.
    support::gerbang::wait_until(Duration::from_secs(10), || {
        let backends = proxy.active("idle").backends;
        anyhow::ensure!(
            backends == [("b0".to_string(), 500), ("b1".to_string(), 500)],
            "established so far: {backends:?}"
        );
        Ok(())
    })
    .unwrap();

    let answers = get_all(&t, 80, 50);
    assert_eq!(
        tally(&answers),
        BTreeMap::from([("b0".into(), 25), ("b1".into(), 25)])
    );

    drop(clients);
    proxy
        .wait_active("idle", 0, Duration::from_secs(10))
        .unwrap();
    proxy.stop().unwrap();
}

/// Runs the proxy when this binary is started as [`ProxyProcess`]; skipped otherwise.
#[test]
#[ignore = "the body of the proxy child process of proxy_memory_footprint"]
fn proxy_child() {
    child_main();
}

/// The proxy in a process of its own stays small: idle, and with 1,000 open connections
/// that have each moved data both ways (so their pipes exist).
#[test]
fn proxy_memory_footprint() {
    const CONNECTIONS: usize = 1000;
    let t = TwoArm::new(2).unwrap();
    let _servers = stream_backends(&t);
    let stream = service(
        "stream",
        vip(&t, STREAM_PORT),
        "tcp",
        "",
        &backends_at(&t, STREAM_PORT),
    );
    let dir = TempDir::new();
    let path = dir.write("proxy.toml", &config(&t, "", &[stream]));
    let proxy = ProxyProcess::start(&t.lb, &path, "proxy_child", RelayMode::Auto, false).unwrap();
    let to = vip(&t, STREAM_PORT);
    support::gerbang::wait_until(Duration::from_secs(10), || {
        let mut client = TcpStreamClient::connect(&t.client, to)?;
        client.echo(b"up?")
    })
    .unwrap();
    thread::sleep(Duration::from_millis(200));
    let idle_kib = proxy.rss_kib().unwrap();

    let mut clients: Vec<TcpStream> = t
        .client
        .run(|| {
            (0..CONNECTIONS)
                .map(|_| {
                    let s = TcpStream::connect_timeout(&to.into(), Duration::from_secs(2))?;
                    s.set_read_timeout(Some(Duration::from_secs(2)))?;
                    Ok(s)
                })
                .collect::<io::Result<Vec<_>>>()
        })
        .unwrap()
        .unwrap();
    let payload = [7u8; 1024];
    for client in &mut clients {
        client.write_all(&payload).unwrap();
    }
    for client in &mut clients {
        let mut back = [0u8; 1024];
        client.read_exact(&mut back).unwrap();
        assert_eq!(back, payload);
    }
    let busy_kib = proxy.rss_kib().unwrap();
    let fds = proxy.open_fds().unwrap();
    eprintln!(
        "proxy process (test harness included): {idle_kib} KiB idle, {busy_kib} KiB with \
         {CONNECTIONS} connections, {fds} open descriptors"
    );
    assert!(idle_kib < 10 * 1024, "idle: {idle_kib} KiB");
    assert!(
        busy_kib < 40 * 1024,
        "{CONNECTIONS} connections: {busy_kib} KiB"
    );
    drop(clients);
}

/// Backends that reset, stall or send more than asked for: each client of theirs gets
/// what its backend does, backpressure bounds what the proxy takes in, and clients of a
/// healthy service keep being served throughout.
#[test]
fn misbehaving_backends_do_not_hurt_others() {
    const RESET_PORT: u16 = 7001;
    const STALL_PORT: u16 = 7002;
    const FLOOD_PORT: u16 = 7003;
    let t = TwoArm::new(2).unwrap();
    let _servers = http_backends(&t);
    let b1 = &t.backends[1];
    let _resetter = TestServer::resetter(&b1.ns, SocketAddrV4::new(b1.addr, RESET_PORT)).unwrap();
    let _sink = TestServer::sink(&b1.ns, SocketAddrV4::new(b1.addr, STALL_PORT)).unwrap();
    let flooded = Arc::new(AtomicU64::new(0));
    let counter = flooded.clone();
    let _flooder = TestServer::start(
        &b1.ns,
        SocketAddrV4::new(b1.addr, FLOOD_PORT),
        move |mut stream| {
            let counter = counter.clone();
            thread::spawn(move || {
                stream
                    .set_write_timeout(Some(Duration::from_secs(3)))
                    .unwrap();
                let chunk = vec![b'x'; 64 * 1024];
                while let Ok(n) = stream.write(&chunk) {
                    counter.fetch_add(n as u64, Ordering::Relaxed);
                }
            });
        },
    )
    .unwrap();
    let one = |name: &str, port: u16| {
        service(
            name,
            vip(&t, port),
            "tcp",
            "",
            &[("b1".into(), SocketAddrV4::new(b1.addr, port), "")],
        )
    };
    let web = service("web", vip(&t, 80), "tcp", "", &backends_at(&t, HTTP_PORT));
    let services = [
        web,
        one("reset", RESET_PORT),
        one("stall", STALL_PORT),
        one("flood", FLOOD_PORT),
    ];
    let proxy =
        Proxy::start_healthy(&t.lb, &config(&t, "", &services), ProxyOptions::default()).unwrap();

    // A backend that resets: its clients see the reset at once.
    for _ in 0..20 {
        let started = Instant::now();
        assert!(refused(&t, vip(&t, RESET_PORT)));
        assert!(started.elapsed() < Duration::from_secs(1));
    }

    // A backend that never reads: the client can only push what the buffers on the way
    // hold, and the proxy holds at most a pipe of it.
    let mut stalled = connect(&t, vip(&t, STALL_PORT));
    stalled.set_nonblocking(true).unwrap();
    let chunk = vec![b's'; 64 * 1024];
    let mut pushed = 0u64;
    let mut last_progress = Instant::now();
    while last_progress.elapsed() < Duration::from_millis(500) {
        match stalled.write(&chunk) {
            Ok(n) => {
                pushed += n as u64;
                last_progress = Instant::now();
            }
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                thread::sleep(Duration::from_millis(10));
            }
            Err(err) => panic!("writing to the stalled backend: {err}"),
        }
        assert!(
            pushed < 256 << 20,
            "backpressure: the proxy keeps taking data"
        );
    }

    // A backend that sends more than the client reads: it is held back the same way.
    let mut flood = connect(&t, vip(&t, FLOOD_PORT));
    let mut first = [0u8; 1024];
    flood.read_exact(&mut first).unwrap();
    thread::sleep(Duration::from_millis(500));
    let sent_then = flooded.load(Ordering::Relaxed);
    thread::sleep(Duration::from_millis(500));
    assert_eq!(
        flooded.load(Ordering::Relaxed),
        sent_then,
        "the flooding backend is blocked while its client does not read"
    );
    assert!(sent_then < 256 << 20);

    // Meanwhile, the healthy service works as before.
    let answers = get_all(&t, 80, 20);
    assert_eq!(
        tally(&answers),
        BTreeMap::from([("b0".into(), 10), ("b1".into(), 10)])
    );
    let report = proxy.traffic();
    let stall = report.service("stall").unwrap().counters;
    assert!(stall.bytes_to_backend <= pushed);
    let flood_counters = report.service("flood").unwrap().counters;
    assert!(flood_counters.bytes_to_client <= sent_then);
    eprintln!(
        "stalled backend: client pushed {pushed} bytes, proxy moved {}; flooding backend \
         sent {sent_then} bytes, proxy moved {}",
        stall.bytes_to_backend, flood_counters.bytes_to_client
    );
    drop((stalled, flood));
    proxy.stop().unwrap();
}

/// A backend that refuses connections is skipped: the connection is retried once on the
/// next backend, so clients do not notice.
#[test]
fn refused_connect_is_retried_on_another_backend() {
    let t = TwoArm::new(2).unwrap();
    // Only b1 serves; nothing listens on b0's port.
    let _b1 = HttpBackend::start(
        &t.backends[1].ns,
        SocketAddrV4::new(t.backends[1].addr, HTTP_PORT),
        "b1",
    )
    .unwrap();
    let web = service("web", vip(&t, 80), "tcp", "", &backends_at(&t, HTTP_PORT));
    let proxy =
        Proxy::start_healthy(&t.lb, &config(&t, "", &[web]), ProxyOptions::default()).unwrap();
    let answers = get_all(&t, 80, 20);
    assert_eq!(tally(&answers), BTreeMap::from([("b1".into(), 20)]));
    let report = proxy.traffic();
    let web = report.service("web").unwrap();
    assert_eq!(web.counters.new_flows, 20);
    assert_eq!(web.counters.drops, 0);
    assert!(web.backend("b0").unwrap().counters.drops >= 1);
    assert_eq!(web.backend("b1").unwrap().counters.new_flows, 20);
    proxy.stop().unwrap();
}

/// A TCP connection with nothing moving for `timeouts.tcp_established` is reset; one that
/// keeps talking stays.
#[test]
fn idle_tcp_connections_are_closed() {
    let t = TwoArm::new(1).unwrap();
    let _servers = stream_backends(&t);
    let stream = service(
        "stream",
        vip(&t, STREAM_PORT),
        "tcp",
        "",
        &backends_at(&t, STREAM_PORT),
    );
    let text = config(&t, "[timeouts]\ntcp_established = \"1s\"\n", &[stream]);
    let proxy = Proxy::start_healthy(&t.lb, &text, ProxyOptions::default()).unwrap();
    let mut quiet = TcpStreamClient::connect(&t.client, vip(&t, STREAM_PORT)).unwrap();
    let mut chatty = TcpStreamClient::connect(&t.client, vip(&t, STREAM_PORT)).unwrap();
    assert_eq!(quiet.echo(b"hi").unwrap(), b"hi");
    for _ in 0..8 {
        thread::sleep(Duration::from_millis(250));
        assert_eq!(chatty.echo(b"still here").unwrap(), b"still here");
    }
    proxy
        .wait_active("stream", 1, Duration::from_secs(1))
        .unwrap();
    assert!(
        quiet.echo(b"hello?").is_err(),
        "the idle connection was closed"
    );
    proxy.stop().unwrap();
}

/// The UDP session table holds at most `dataplane.flow_table_size` sessions, evicting the
/// least recently used; a service's connection limit caps its sessions and drops (and
/// counts) datagrams that would open more.
#[test]
fn udp_sessions_are_bounded() {
    const TABLE: u16 = 1024;
    let t = TwoArm::new(1).unwrap();
    let _echoes = udp_echoes(&t);
    let echo = service("echo", vip(&t, 53), "udp", "", &backends_at(&t, UDP_PORT));
    let limited = service(
        "limited",
        vip(&t, 54),
        "udp",
        "",
        &backends_at(&t, UDP_PORT),
    );
    // Right under `[dataplane]`.
    let text = config(
        &t,
        &format!("flow_table_size = {TABLE}\n"),
        &[echo, limited],
    );
    let options = ProxyOptions {
        services: BTreeMap::from([(
            "limited".to_string(),
            ServiceOptions {
                max_connections: Some(5),
                send_proxy_v2: false,
            },
        )]),
        ..ProxyOptions::default()
    };
    let proxy = Proxy::start_healthy(&t.lb, &text, options).unwrap();

    let to = vip(&t, 53);
    let first = UdpClient::new(&t, 20000, to);
    first.ask(b"q").unwrap();
    for port in 20001..20000 + TABLE + 10 {
        let from = SocketAddrV4::new(t.client_addr, port);
        udp_request(&t.client, Some(from), to, b"q").unwrap();
    }
    assert_eq!(proxy.active("echo").total, u64::from(TABLE));
    // The oldest sessions were evicted: the first client gets a new one.
    first.ask(b"again").unwrap();
    let counters = proxy.traffic().service("echo").unwrap().counters;
    assert_eq!(counters.new_flows, u64::from(TABLE) + 11);
    assert_eq!(proxy.active("echo").total, u64::from(TABLE));

    let to = vip(&t, 54);
    for port in 0..5 {
        let from = SocketAddrV4::new(t.client_addr, 40000 + port);
        udp_request(&t.client, Some(from), to, b"q").unwrap();
    }
    let sixth = SocketAddrV4::new(t.client_addr, 40005);
    assert!(udp_request(&t.client, Some(sixth), to, b"q").is_err());
    let counters = proxy.traffic().service("limited").unwrap().counters;
    assert_eq!((counters.new_flows, counters.drops), (5, 1));
    proxy.stop().unwrap();
}

/// A VRRP backup listens before it holds the VIP: the proxy binds a VIP the host does not
/// have (`IP_FREEBIND`) and serves it once the address arrives.
#[test]
fn listens_on_a_vip_before_the_host_has_it() {
    let t = TwoArm::new(1).unwrap();
    let _servers = http_backends(&t);
    let _echoes = udp_echoes(&t);
    let later = Ipv4Addr::new(10, 200, 100, 7);
    let web = service(
        "web",
        SocketAddrV4::new(later, 80),
        "tcp",
        "",
        &backends_at(&t, HTTP_PORT),
    );
    let echo = service(
        "echo",
        SocketAddrV4::new(later, 53),
        "udp",
        "",
        &backends_at(&t, UDP_PORT),
    );
    let proxy = Proxy::start_healthy(
        &t.lb,
        &config(&t, "", &[web, echo]),
        ProxyOptions::default(),
    )
    .unwrap();
    t.lb.ip([
        "addr",
        "add",
        &format!("{later}/32"),
        "dev",
        &t.lb_client_if,
    ])
    .unwrap();
    let answers: Vec<String> = http_get_many(&t.client, SocketAddrV4::new(later, 80), 2)
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(tally(&answers), BTreeMap::from([("b0".into(), 2)]));
    let answer = udp_request(&t.client, None, SocketAddrV4::new(later, 53), b"hi").unwrap();
    assert_eq!(answer, b"b0:hi");
    proxy.stop().unwrap();
}
