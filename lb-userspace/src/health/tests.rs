//! Probes and the monitor against real sockets on 127.0.0.1: small servers that answer
//! well, badly or not at all.

use std::{
    future::Future,
    net::{Ipv4Addr, SocketAddrV4},
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::mpsc,
    task::{AbortHandle, JoinSet},
};

use super::*;
use crate::config::HttpCheck;

/// Far more than anything here takes; only reached when a test fails.
const PATIENCE: Duration = Duration::from_secs(5);

fn key(backend: &str) -> BackendKey {
    ("web".to_owned(), backend.to_owned())
}

fn tcp() -> CheckKind {
    CheckKind::Tcp
}

fn http() -> CheckKind {
    CheckKind::Http(HttpCheck {
        path: "/health".to_owned(),
        host: None,
        expect_status: vec![(200, 299)],
        expect_body: None,
    })
}

fn http_with(edit: impl FnOnce(&mut HttpCheck)) -> CheckKind {
    let CheckKind::Http(mut check) = http() else {
        unreachable!()
    };
    edit(&mut check);
    CheckKind::Http(check)
}

fn check(kind: CheckKind) -> CheckConfig {
    CheckConfig {
        kind,
        interval: Duration::from_millis(50),
        fast_interval: Duration::from_millis(20),
        down_interval: Duration::from_millis(50),
        timeout: Duration::from_millis(500),
        fall: 3,
        rise: 2,
        port: None,
        address: None,
    }
}

fn target(backend: &str, addr: SocketAddrV4, check: CheckConfig) -> CheckTarget {
    CheckTarget {
        key: key(backend),
        target: addr,
        check,
    }
}

/// A server on 127.0.0.1 that hands every connection, with its index, to `handler`.
/// Dropping it closes the listening socket.
struct Server {
    addr: SocketAddrV4,
    accept: AbortHandle,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn serve<F, Fut>(handler: F) -> Server
where
    F: Fn(TcpStream, usize) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let std::net::SocketAddr::V4(addr) = listener.local_addr().unwrap() else {
        unreachable!()
    };
    let accept = tokio::spawn(async move {
        for index in 0.. {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(handler(stream, index));
        }
    });
    Server {
        addr,
        accept: accept.abort_handle(),
    }
}

/// A server that reads the request and answers `response`, then closes.
async fn answering(response: impl Into<Vec<u8>>) -> Server {
    let response: Arc<[u8]> = response.into().into();
    serve(move |mut stream, _| {
        let response = Arc::clone(&response);
        async move {
            read_request(&mut stream).await;
            let _ = stream.write_all(&response).await;
        }
    })
    .await
}

/// An address nobody listens on (a port just closed).
fn refusing() -> SocketAddrV4 {
    let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let std::net::SocketAddr::V4(addr) = listener.local_addr().unwrap() else {
        unreachable!()
    };
    addr
}

async fn read_request(stream: &mut TcpStream) -> Vec<u8> {
    let mut request = Vec::new();
    let mut buf = [0; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 8192 {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
    }
    request
}

/// A server that records when each request came and answers the status `status_of`
/// gives for its index.
struct Recorder {
    server: Server,
    requests: Arc<Mutex<Vec<Instant>>>,
}

impl Recorder {
    fn count(&self) -> usize {
        self.requests.lock().unwrap().len()
    }

    fn times(&self) -> Vec<Instant> {
        self.requests.lock().unwrap().clone()
    }
}

async fn recording(status_of: impl Fn(usize) -> u16 + Send + Sync + 'static) -> Recorder {
    let requests = Arc::new(Mutex::new(Vec::new()));
    let status_of = Arc::new(status_of);
    let server = serve({
        let requests = Arc::clone(&requests);
        move |mut stream, _| {
            let requests = Arc::clone(&requests);
            let status_of = Arc::clone(&status_of);
            async move {
                read_request(&mut stream).await;
                let status = {
                    let mut requests = requests.lock().unwrap();
                    requests.push(Instant::now());
                    status_of(requests.len() - 1)
                };
                let response = format!("HTTP/1.1 {status} X\r\nContent-Length: 0\r\n\r\n");
                let _ = stream.write_all(response.as_bytes()).await;
            }
        }
    })
    .await;
    Recorder { server, requests }
}

async fn next_change(changes: &mut mpsc::UnboundedReceiver<HealthChange>) -> HealthChange {
    tokio::time::timeout(PATIENCE, changes.recv())
        .await
        .expect("no health change in time")
        .expect("monitor gone")
}

async fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
    let end = Instant::now() + PATIENCE;
    while !condition() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn probe_http(response: &[u8], kind: CheckKind) -> Result<ProbeSuccess, ProbeFailure> {
    let server = answering(response).await;
    probe(server.addr, &kind, Duration::from_secs(2)).await
}

fn reason(result: Result<ProbeSuccess, ProbeFailure>) -> String {
    result.expect_err("the probe passed").reason
}

// ---- probes ----

#[tokio::test]
async fn tcp_probe_connects() {
    let server = serve(|_, _| async {}).await;
    let success = probe(server.addr, &tcp(), Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(success.detail, "connected");
    assert!(success.latency < Duration::from_secs(1));
}

#[tokio::test]
async fn tcp_probe_refused() {
    let failure = probe(refusing(), &tcp(), Duration::from_secs(1))
        .await
        .unwrap_err();
    assert_eq!(failure.reason, "connection refused");
    assert_eq!(failure.to_string(), "connection refused");
}

#[tokio::test]
async fn http_probe_sends_one_well_formed_request() {
    let (seen, mut requests) = mpsc::unbounded_channel();
    let server = serve(move |mut stream, _| {
        let seen = seen.clone();
        async move {
            // One read: the request comes in one write, hence one segment.
            let mut buf = [0; 1024];
            let n = stream.read(&mut buf).await.unwrap();
            seen.send(buf[..n].to_vec()).unwrap();
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nOK")
                .await;
        }
    })
    .await;
    let success = probe(server.addr, &http(), Duration::from_secs(2))
        .await
        .unwrap();
    assert_eq!(success.detail, "HTTP 200");
    let expected = format!(
        "GET /health HTTP/1.1\r\nHost: {}\r\nUser-Agent: gerbang-check\r\nConnection: close\r\n\r\n",
        server.addr
    );
    assert_eq!(
        String::from_utf8(requests.recv().await.unwrap()).unwrap(),
        expected
    );
}

#[tokio::test]
async fn http_probe_sends_the_configured_host() {
    let (seen, mut requests) = mpsc::unbounded_channel();
    let server = serve(move |mut stream, _| {
        let seen = seen.clone();
        async move {
            seen.send(read_request(&mut stream).await).unwrap();
            let _ = stream.write_all(b"HTTP/1.0 204 No Content\r\n\r\n").await;
        }
    })
    .await;
    let kind = http_with(|c| {
        c.path = "/status?full=1".to_owned();
        c.host = Some("health.example".to_owned());
    });
    probe(server.addr, &kind, Duration::from_secs(2))
        .await
        .unwrap();
    let request = String::from_utf8(requests.recv().await.unwrap()).unwrap();
    assert!(
        request.starts_with("GET /status?full=1 HTTP/1.1\r\n"),
        "{request}"
    );
    assert!(
        request.contains("\r\nHost: health.example\r\n"),
        "{request}"
    );
}

#[tokio::test]
async fn http_status_outside_the_expected_fails() {
    let result = probe_http(b"HTTP/1.1 503 Service Unavailable\r\n\r\n", http()).await;
    assert_eq!(reason(result), "HTTP status 503");
}

#[tokio::test]
async fn http_expected_status_ranges() {
    let ranges = http_with(|c| c.expect_status = vec![(200, 204), (301, 302)]);
    for (status, passes) in [
        (200, true),
        (204, true),
        (205, false),
        (302, true),
        (404, false),
    ] {
        let response = format!("HTTP/1.1 {status} X\r\nContent-Length: 0\r\n\r\n");
        let result = probe_http(response.as_bytes(), ranges.clone()).await;
        assert_eq!(result.is_ok(), passes, "{status}: {result:?}");
    }
    // The default: 2xx and 3xx, as HAProxy.
    let default = CheckKind::Http(HttpCheck::default());
    for (status, passes) in [
        (200, true),
        (301, true),
        (399, true),
        (400, false),
        (500, false),
    ] {
        let response = format!("HTTP/1.1 {status} X\r\nContent-Length: 0\r\n\r\n");
        let result = probe_http(response.as_bytes(), default.clone()).await;
        assert_eq!(result.is_ok(), passes, "{status}: {result:?}");
    }
}

#[tokio::test]
async fn http_body_must_contain_the_expected_text() {
    let expect_ok = http_with(|c| c.expect_body = Some("OK".to_owned()));
    let good = [
        &b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\nstatus: OK\n"[..],
        // Bare LFs, no length: the body runs to the close.
        b"HTTP/1.0 200 OK\nServer: tiny\n\nall OK",
        // Chunked, with the text split across chunks and an extension.
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nis \r\n1\r\nO\r\n1\r\nK\r\n0\r\n\r\n",
    ];
    for response in good {
        let result = probe_http(response, expect_ok.clone()).await;
        assert_eq!(result.map(|s| s.detail), Ok("HTTP 200".to_owned()));
    }
    let bad = b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nstarting!";
    assert_eq!(
        reason(probe_http(bad, expect_ok.clone()).await),
        "body does not contain \"OK\""
    );
    let malformed = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nOK\r\n0\r\n\r\n";
    assert_eq!(
        reason(probe_http(malformed, expect_ok).await),
        "malformed chunked body"
    );
}

#[tokio::test]
async fn http_interim_responses_are_skipped() {
    let response = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
    assert_eq!(
        probe_http(response, http()).await.unwrap().detail,
        "HTTP 200"
    );
}

#[tokio::test]
async fn http_responses_split_into_single_bytes() {
    let server = serve(|mut stream, _| async move {
        read_request(&mut stream).await;
        stream.set_nodelay(true).unwrap();
        let response = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nOK\r\n0\r\n\r\n";
        for byte in response {
            if stream.write_all(&[*byte]).await.is_err() {
                return;
            }
            tokio::task::yield_now().await;
        }
    })
    .await;
    let kind = http_with(|c| c.expect_body = Some("OK".to_owned()));
    let success = probe(server.addr, &kind, Duration::from_secs(3))
        .await
        .unwrap();
    assert_eq!(success.detail, "HTTP 200");
}

#[tokio::test]
async fn http_garbage_fails_at_once() {
    let result = probe_http(b"SSH-2.0-OpenSSH_9.2\r\n", http()).await;
    assert_eq!(
        reason(result),
        "not an HTTP response: \"SSH-2.0-OpenSSH_9.2\""
    );
    // Without a newline, and the connection left open: the first bytes are enough.
    let server = serve(|mut stream, _| async move {
        read_request(&mut stream).await;
        let _ = stream.write_all(b"\x16\x03\x01").await;
        tokio::time::sleep(PATIENCE).await;
    })
    .await;
    let failure = probe(server.addr, &http(), Duration::from_secs(3))
        .await
        .unwrap_err();
    assert_eq!(failure.reason, "not an HTTP response: \"\\x16\\x03\\x01\"");
    assert!(failure.elapsed < Duration::from_secs(1), "{failure:?}");
}

#[tokio::test]
async fn http_closed_before_answering() {
    // Reads the request, then closes: a clean FIN, nothing sent.
    let result = probe_http(b"", http()).await;
    assert_eq!(reason(result), "closed before answering");
    // Closes at once, perhaps before the request has arrived: a FIN or a RST.
    let server = serve(|stream, _| async move { drop(stream) }).await;
    let failure = probe(server.addr, &http(), Duration::from_secs(2))
        .await
        .unwrap_err();
    assert!(
        ["closed before answering", "connection reset"].contains(&failure.reason.as_str()),
        "{failure:?}"
    );
}

#[tokio::test]
async fn http_truncated_responses_fail() {
    let cases: [(&[u8], &str); 3] = [
        (
            b"HTTP/1.1 200 OK\r\nContent-",
            "closed in the middle of the response headers",
        ),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort",
            "closed before the end of the body",
        ),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 1, 2\r\n\r\n",
            "invalid Content-Length header",
        ),
    ];
    for (response, expected) in cases {
        assert_eq!(reason(probe_http(response, http()).await), expected);
    }
}

#[tokio::test]
async fn a_backend_that_never_answers_times_out() {
    let server = serve(|stream, _| async move {
        let _open = stream;
        tokio::time::sleep(PATIENCE).await;
    })
    .await;
    let timeout = Duration::from_millis(200);
    let failure = probe(server.addr, &http(), timeout).await.unwrap_err();
    assert_eq!(
        failure.reason,
        "timeout after 200ms (waiting for the response)"
    );
    assert!(failure.elapsed >= timeout && failure.elapsed < timeout + Duration::from_secs(1));
}

#[tokio::test]
async fn endless_responses_are_cut_short() {
    // Fast and endless, with each framing, and endless headers: the limits end them.
    let mut chunk = b"400\r\n".to_vec();
    chunk.extend([b'x'; 0x400]);
    chunk.extend(b"\r\n");
    let cases: [(&[u8], Vec<u8>, &str); 5] = [
        (
            b"HTTP/1.1 200 OK\r\n\r\n",
            vec![b'x'; 1024],
            "response body longer than 64 KiB",
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            chunk,
            "response body longer than 64 KiB",
        ),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 10000000000\r\n\r\n",
            vec![b'x'; 1024],
            "response body longer than 64 KiB",
        ),
        (
            b"HTTP/1.1 200 OK\r\n",
            b"X-Filler: y\r\n".repeat(100),
            "response headers longer than 16 KiB",
        ),
        (
            b"",
            b"HTTP/1.1 100 Continue\r\n\r\n".repeat(100),
            "response headers longer than 16 KiB",
        ),
    ];
    for (head, filler, expected) in cases {
        let filler: Arc<[u8]> = filler.into();
        let server = serve(move |mut stream, _| {
            let filler = Arc::clone(&filler);
            async move {
                read_request(&mut stream).await;
                let _ = stream.write_all(head).await;
                while stream.write_all(&filler).await.is_ok() {}
            }
        })
        .await;
        let failure = probe(server.addr, &http(), Duration::from_secs(3))
            .await
            .unwrap_err();
        assert_eq!(failure.reason, expected);
    }
    // A trickle that never ends: the timeout ends it.
    let server = serve(|mut stream, _| async move {
        read_request(&mut stream).await;
        let _ = stream.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await;
        while stream.write_all(b"x").await.is_ok() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let timeout = Duration::from_millis(300);
    let failure = probe(server.addr, &http(), timeout).await.unwrap_err();
    assert_eq!(
        failure.reason,
        "timeout after 300ms (reading the response body)"
    );
    assert!(failure.elapsed < timeout + Duration::from_secs(1));
}

#[tokio::test]
async fn random_responses_never_pass_unless_valid() {
    // A fixed seed: a failure reproduces.
    let mut rng = 0x5eed_u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let valid: [&[u8]; 4] = [
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nOK",
        b"HTTP/1.1 204 No Content\r\n\r\n",
        b"HTTP/1.0 200 OK\r\n\r\nfine",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nOK\r\n0\r\n\r\n",
    ];
    let mut cases: Vec<(Vec<u8>, bool)> = Vec::new();
    for i in 0..400 {
        let base = valid[i % valid.len()];
        let response = match i % 4 {
            // Valid, untouched: must pass.
            0 => base.to_vec(),
            // Random bytes, sometimes behind a plausible start.
            1 => {
                let mut bytes = if next() % 2 == 0 {
                    b"HTTP/1.1 ".to_vec()
                } else {
                    Vec::new()
                };
                bytes.extend((0..next() % 300).map(|_| next() as u8));
                bytes
            }
            // A valid response with bytes changed.
            2 => {
                let mut bytes = base.to_vec();
                for _ in 0..1 + next() % 4 {
                    let at = next() as usize % bytes.len();
                    bytes[at] = next() as u8;
                }
                bytes
            }
            // A valid response cut short or with random bytes inserted.
            _ => {
                let mut bytes = base.to_vec();
                let at = next() as usize % bytes.len();
                if next() % 2 == 0 {
                    bytes.truncate(at);
                } else {
                    let insert: Vec<u8> = (0..1 + next() % 8).map(|_| next() as u8).collect();
                    bytes.splice(at..at, insert);
                }
                bytes
            }
        };
        cases.push((response, i % 4 == 0));
    }

    // In batches, to bound the open sockets; each batch takes at most the timeout.
    let timeout = Duration::from_millis(200);
    for batch in cases.chunks(100) {
        check_random_responses(batch, timeout, &mut next).await;
    }
}

async fn check_random_responses(
    cases: &[(Vec<u8>, bool)],
    timeout: Duration,
    next: &mut impl FnMut() -> u64,
) {
    let mut probes = JoinSet::new();
    for (response, must_pass) in cases.iter().cloned() {
        // Some servers keep the connection open after answering.
        let linger = next().is_multiple_of(4);
        let shared: Arc<[u8]> = response.clone().into();
        let server = serve(move |mut stream, _| {
            let shared = Arc::clone(&shared);
            async move {
                read_request(&mut stream).await;
                let _ = stream.write_all(&shared).await;
                if linger {
                    tokio::time::sleep(PATIENCE).await;
                }
            }
        })
        .await;
        probes.spawn(async move {
            let started = Instant::now();
            let result = probe(server.addr, &http(), timeout).await;
            drop(server);
            (response, must_pass, linger, result, started.elapsed())
        });
    }
    while let Some(outcome) = probes.join_next().await {
        let (response, must_pass, linger, result, elapsed) = outcome.unwrap();
        let shown = response.escape_ascii().to_string();
        assert!(
            elapsed < timeout + Duration::from_secs(2),
            "{shown}: took {elapsed:?}"
        );
        match &result {
            Ok(success) => {
                let status = std::str::from_utf8(&response[..12.min(response.len())])
                    .ok()
                    .filter(|line| {
                        line.len() == 12 && line.starts_with("HTTP/1.") && &line[8..10] == " 2"
                    })
                    .and_then(|line| line[9..12].parse::<u16>().ok());
                assert_eq!(
                    status.map(|s| format!("HTTP {s}")).as_deref(),
                    Some(success.detail.as_str()),
                    "{shown} passed"
                );
            }
            Err(failure) => {
                assert!(!failure.reason.is_empty());
                // Valid responses with an end pass; only an open connection with the
                // body running to the close may time out.
                assert!(
                    !must_pass || (linger && response.starts_with(b"HTTP/1.0 200 OK\r\n\r\n")),
                    "{shown} failed: {failure}"
                );
            }
        }
    }
}

// ---- the monitor ----

#[test]
fn check_overrides_apply_to_the_target() {
    let backend = SocketAddrV4::new(Ipv4Addr::new(10, 0, 1, 11), 8080);
    let plain = CheckTarget::new(key("a"), backend, check(tcp()));
    assert_eq!(plain.target, backend);
    let mut other = check(tcp());
    other.port = Some(9000);
    assert_eq!(
        CheckTarget::new(key("a"), backend, other.clone()).target,
        SocketAddrV4::new(Ipv4Addr::new(10, 0, 1, 11), 9000)
    );
    other.address = Some(Ipv4Addr::new(10, 0, 2, 11));
    assert_eq!(
        CheckTarget::new(key("a"), backend, other).target,
        SocketAddrV4::new(Ipv4Addr::new(10, 0, 2, 11), 9000)
    );
}

#[tokio::test]
async fn tcp_backend_goes_down_after_exactly_fall_failures() {
    let server = serve(|_, _| async {}).await;
    let (monitor, mut changes) = HealthMonitor::new();
    monitor.set_targets(vec![target("pi-1", server.addr, check(tcp()))]);
    let up = next_change(&mut changes).await;
    assert_eq!((up.key, up.up), (key("pi-1"), true));
    assert_eq!(up.reason, "connected (first check)");

    drop(server);
    let down = next_change(&mut changes).await;
    assert!(!down.up);
    assert_eq!(down.reason, "connection refused (3 failures in a row)");
}

#[tokio::test]
async fn http_backend_down_on_503_and_back_after_rise_successes() {
    // Request 0 and 1 pass, 2..5 fail, then pass again.
    let server = recording(|i| if (2..6).contains(&i) { 503 } else { 200 }).await;
    let (monitor, mut changes) = HealthMonitor::new();
    // Pauses long enough that the next probe cannot come before the counts are read.
    let mut config = check(http());
    config.interval = Duration::from_millis(200);
    config.down_interval = Duration::from_millis(200);
    monitor.set_targets(vec![target("pi-2", server.server.addr, config)]);
    let first = next_change(&mut changes).await;
    assert_eq!(
        (first.up, first.reason.as_str()),
        (true, "HTTP 200 (first check)")
    );
    let down = next_change(&mut changes).await;
    assert_eq!(
        (down.up, down.reason.as_str()),
        (false, "HTTP status 503 (3 failures in a row)")
    );
    // Requests 2, 3, 4 took it down.
    assert_eq!(server.count(), 5);
    let up = next_change(&mut changes).await;
    assert_eq!(
        (up.up, up.reason.as_str()),
        (true, "HTTP 200 (2 successes in a row)")
    );
    // Request 5 failed too; 6 and 7 brought it back.
    assert_eq!(server.count(), 8);
}

#[tokio::test]
async fn a_silent_backend_is_down_with_a_timeout() {
    let server = serve(|stream, _| async move {
        let _open = stream;
        tokio::time::sleep(PATIENCE).await;
    })
    .await;
    let (monitor, mut changes) = HealthMonitor::new();
    let mut silent = check(http());
    silent.timeout = Duration::from_millis(100);
    monitor.set_targets(vec![target("pi-3", server.addr, silent)]);
    let down = next_change(&mut changes).await;
    assert!(!down.up);
    assert_eq!(
        down.reason,
        "timeout after 100ms (waiting for the response) (first check)"
    );
}

#[tokio::test]
async fn intervals_follow_the_state() {
    // Three failures (DOWN from the first), three successes (UP), four failures.
    let statuses = [503, 503, 503, 200, 200, 200, 503, 503, 503, 503];
    let server = recording(move |i| statuses.get(i).copied().unwrap_or(503)).await;
    let mut config = check(http());
    config.interval = Duration::from_millis(800);
    config.fast_interval = Duration::from_millis(10);
    config.down_interval = Duration::from_millis(300);
    config.rise = 3;
    config.fall = 3;
    let (monitor, mut changes) = HealthMonitor::new();
    monitor.set_targets(vec![target("pi-4", server.server.addr, config)]);
    wait_for("ten probes", || server.count() >= statuses.len()).await;

    let mut seen = Vec::new();
    while let Ok(change) = changes.try_recv() {
        seen.push((change.up, change.reason));
    }
    assert_eq!(
        seen,
        [
            (false, "HTTP status 503 (first check)".to_owned()),
            (true, "HTTP 200 (3 successes in a row)".to_owned()),
            (false, "HTTP status 503 (3 failures in a row)".to_owned()),
        ]
    );
    // The pause before each probe: ±10% jitter, sleeps are never early, and a loaded
    // machine may add a little; the three ranges do not overlap.
    let times = server.times();
    let gaps: Vec<Duration> = times.windows(2).map(|w| w[1] - w[0]).collect();
    let within = |gap: Duration, interval: u64| {
        let interval = Duration::from_millis(interval);
        gap >= interval.mul_f64(0.85) && gap <= interval.mul_f64(1.1) + Duration::from_millis(200)
    };
    let expected = [300, 300, 300, 10, 10, 800, 10, 10, 300];
    for (i, (&gap, &interval)) in gaps.iter().zip(&expected).enumerate() {
        assert!(
            within(gap, interval),
            "gap {i} was {gap:?}, expected about {interval}ms: {gaps:?}"
        );
    }
}

#[tokio::test]
async fn first_verdicts_wait_for_every_backend() {
    let healthy = serve(|_, _| async {}).await;
    let silent = serve(|stream, _| async move {
        let _open = stream;
        tokio::time::sleep(PATIENCE).await;
    })
    .await;
    let mut slow = check(http());
    slow.timeout = Duration::from_millis(300);
    let (monitor, _changes) = HealthMonitor::new();
    monitor.set_targets(vec![
        target("healthy", healthy.addr, check(tcp())),
        target("refusing", refusing(), check(tcp())),
        target("silent", silent.addr, slow),
        target("unchecked", refusing(), check(CheckKind::None)),
    ]);
    let started = Instant::now();
    let verdicts = monitor.first_verdicts(Duration::from_secs(3)).await;
    let expected: BTreeMap<BackendKey, bool> = [
        (key("healthy"), true),
        (key("refusing"), false),
        (key("silent"), false),
        (key("unchecked"), true),
    ]
    .into();
    assert_eq!(verdicts, expected);
    // The silent one's timeout, not the deadline, ended the wait.
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn first_verdicts_stop_at_the_deadline() {
    let silent = serve(|stream, _| async move {
        let _open = stream;
        tokio::time::sleep(PATIENCE).await;
    })
    .await;
    let healthy = serve(|_, _| async {}).await;
    let (monitor, _changes) = HealthMonitor::new();
    monitor.set_targets(vec![
        target("healthy", healthy.addr, check(tcp())),
        target("silent", silent.addr, check(http())),
    ]);
    let started = Instant::now();
    let verdicts = monitor.first_verdicts(Duration::from_millis(100)).await;
    assert!(started.elapsed() < Duration::from_millis(400));
    assert_eq!(verdicts, [(key("healthy"), true)].into());
}

#[tokio::test]
async fn unchecked_backends_are_up_without_probes() {
    let (monitor, mut changes) = HealthMonitor::new();
    let addr = refusing();
    monitor.set_targets(vec![target("static", addr, check(CheckKind::None))]);
    let change = next_change(&mut changes).await;
    assert_eq!(
        (change.up, change.reason.as_str()),
        (true, "no health check configured")
    );
    let snapshot = monitor.snapshot();
    assert_eq!(snapshot.len(), 1);
    assert_eq!(
        (snapshot[0].kind, snapshot[0].up, snapshot[0].checks),
        ("none", Some(true), 0)
    );
    // Nothing more comes.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(changes.try_recv().is_err());
}

#[tokio::test]
async fn set_targets_keeps_unchanged_backends_and_restarts_changed_ones() {
    let kept = recording(|_| 200).await;
    let changed = recording(|_| 200).await;
    let removed = recording(|_| 200).await;
    let (monitor, mut changes) = HealthMonitor::new();
    let targets = vec![
        target("kept", kept.server.addr, check(http())),
        target("changed", changed.server.addr, check(http())),
        target("removed", removed.server.addr, check(http())),
    ];
    monitor.set_targets(targets.clone());
    for _ in 0..3 {
        assert!(next_change(&mut changes).await.up);
    }
    wait_for("a few probes", || kept.count() >= 3 && changed.count() >= 3).await;

    let mut slower = check(http());
    slower.rise = 5;
    monitor.set_targets(vec![
        targets[0].clone(),
        target("changed", changed.server.addr, slower),
    ]);
    let kept_checks = monitor.snapshot()[1].checks;
    let restarted = next_change(&mut changes).await;
    assert_eq!(restarted.key, key("changed"));
    assert_eq!(restarted.reason, "HTTP 200 (first check)");

    // A request sent just before the removal may still be on its way.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let removed_after = removed.count();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        changes.try_recv().is_err(),
        "only the changed backend reports"
    );
    let snapshot = monitor.snapshot();
    let keys: Vec<&str> = snapshot.iter().map(|h| h.key.1.as_str()).collect();
    assert_eq!(keys, ["changed", "kept"]);
    assert!(
        snapshot[1].checks > kept_checks,
        "the kept backend's counters go on"
    );
    assert!(
        snapshot[0].checks < changed.count() as u64,
        "the changed one's start over"
    );
    assert_eq!(
        removed.count(),
        removed_after,
        "the removed one is not probed any more"
    );
}

#[tokio::test]
async fn snapshot_has_the_numbers() {
    let healthy = recording(|_| 200).await;
    let refused = refusing();
    let (monitor, _changes) = HealthMonitor::new();
    let before = SystemTime::now();
    monitor.set_targets(vec![
        target("a", healthy.server.addr, check(http())),
        target("b", refused, check(tcp())),
    ]);
    wait_for("a few probes", || {
        monitor.snapshot().iter().all(|h| h.checks >= 3)
    })
    .await;
    let snapshot = monitor.snapshot();
    let (a, b) = (&snapshot[0], &snapshot[1]);

    assert_eq!(
        (a.key.clone(), a.target, a.kind, a.up),
        (key("a"), healthy.server.addr, "http", Some(true))
    );
    assert_eq!(a.last_result.as_deref(), Some("HTTP 200"));
    assert_eq!(a.failures, 0);
    assert_eq!(u64::from(a.consecutive_successes), a.checks);
    assert_eq!(a.consecutive_failures, 0);
    assert!(a.last_latency.unwrap() < Duration::from_millis(500));
    let checked = a.last_checked.unwrap();
    assert!(checked >= before && checked <= SystemTime::now());

    assert_eq!((b.target, b.kind, b.up), (refused, "tcp", Some(false)));
    assert_eq!(b.last_result.as_deref(), Some("connection refused"));
    assert_eq!(b.failures, b.checks);
    assert_eq!(u64::from(b.consecutive_failures), b.checks);
    assert_eq!(b.consecutive_successes, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_and_drop_end_every_check() {
    let first = recording(|_| 200).await;
    let second = recording(|_| 200).await;
    let (monitor, _changes) = HealthMonitor::new();
    monitor.set_targets(vec![target("first", first.server.addr, check(http()))]);
    let (dropped, _changes) = HealthMonitor::new();
    dropped.set_targets(vec![target("second", second.server.addr, check(http()))]);
    wait_for("probes", || first.count() >= 2 && second.count() >= 2).await;

    monitor.stop();
    drop(dropped);
    assert!(monitor.snapshot().is_empty());
    // A probe under way may still arrive; after that, nothing.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let counts = (first.count(), second.count());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!((first.count(), second.count()), counts);
}
