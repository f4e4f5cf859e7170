//! Backend servers that run as threads inside a namespace and count what they see.
//!
//! - [`HttpBackend`]: HTTP/1.1 answering every request with `200 OK` and body `"{name}\n"`
//!   (keep-alive and pipelining supported; [`HttpBackend::set_status`] fakes failures).
//! - [`UdpEcho`]: answers each datagram with `"{name}:"` followed by the payload.
//! - [`TcpStreamServer`]: echoes every byte of every connection back, for long-lived flows.
//!
//! Each server binds its socket inside the namespace before `start` returns (so a bind
//! error is reported there), serves from a thread started with
//! [`Netns::spawn_thread`](crate::Netns::spawn_thread) (a thread per TCP connection), and
//! records connections, requests/datagrams, bytes and peer addresses. Counters are updated
//! before the reply is sent, so a client that got its answer sees itself counted.
//!
//! Every blocking wait is a `poll` on the socket and on a per-server wake pipe. Stopping
//! (explicitly or on drop) closes the pipe's write end, which wakes the accept loop and all
//! connection threads at once; they close their sockets and return. Idle servers cost no
//! wake-ups, and joining is bounded, so a wedged peer cannot hang a test.

use std::collections::BTreeMap;
use std::io::{self, PipeReader, PipeWriter, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::Backend;
use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use crate::Netns;

/// How long a server thread may take to stop before it is left behind.
const STOP_TIMEOUT: Duration = Duration::from_secs(3);
/// How long writing a reply may block on a peer that does not read.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest request head the HTTP server accepts.
const MAX_HEAD: usize = 64 * 1024;

/// Counters shared by a server's threads.
#[derive(Debug, Default)]
struct Stats {
    requests: AtomicU64,
    connections: AtomicU64,
    bytes: AtomicU64,
    /// Connections (TCP) or datagrams (UDP) per peer address.
    peers: Mutex<BTreeMap<SocketAddrV4, u64>>,
}

impl Stats {
    fn record_peer(&self, peer: SocketAddr) {
        if let SocketAddr::V4(peer) = peer {
            let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
            *peers.entry(peer).or_default() += 1;
        }
    }

    fn peers(&self) -> Vec<SocketAddrV4> {
        let peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        peers.keys().copied().collect()
    }

    fn peer_ips(&self) -> BTreeMap<Ipv4Addr, u64> {
        let peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        let mut by_ip = BTreeMap::new();
        for (peer, count) in peers.iter() {
            *by_ip.entry(*peer.ip()).or_default() += count;
        }
        by_ip
    }
}

/// Tells a server's threads to stop, waking them from `poll`.
#[derive(Debug)]
struct StopSignal {
    /// Becomes readable (end of file) once the write end is closed.
    wake: PipeReader,
    trigger: Mutex<Option<PipeWriter>>,
}

impl StopSignal {
    fn new() -> io::Result<Arc<StopSignal>> {
        let (wake, trigger) = io::pipe()?;
        Ok(Arc::new(StopSignal {
            wake,
            trigger: Mutex::new(Some(trigger)),
        }))
    }

    fn stop(&self) {
        drop(
            self.trigger
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take(),
        );
    }

    fn is_stopped(&self) -> bool {
        self.trigger
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_none()
    }

    /// Waits until `fd` is readable (`true`) or the server is stopping (`false`).
    fn wait_readable(&self, fd: BorrowedFd<'_>) -> io::Result<bool> {
        loop {
            let mut fds = [
                PollFd::new(fd, PollFlags::POLLIN),
                PollFd::new(self.wake.as_fd(), PollFlags::POLLIN),
            ];
            match poll(&mut fds, PollTimeout::NONE) {
                Err(Errno::EINTR) => continue,
                Err(err) => return Err(err.into()),
                Ok(_) => {}
            }
            if fds[1].any().unwrap_or(true) {
                return Ok(false);
            }
            if fds[0].any().unwrap_or(false) {
                return Ok(true);
            }
        }
    }
}

/// The serving thread of one server and its stop signal.
#[derive(Debug)]
struct Running {
    label: String,
    stop: Arc<StopSignal>,
    thread: Option<crate::NsThread<()>>,
}

impl Running {
    fn stop(&mut self) {
        self.stop.stop();
        if let Some(thread) = self.thread.take()
            && let Err(err) = thread.join_timeout(STOP_TIMEOUT)
        {
            tracing::warn!(server = %self.label, "stopping: {err:#}");
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Minimal HTTP/1.1 backend answering `200 OK` with body `"{name}\n"`.
#[derive(Debug)]
pub struct HttpBackend {
    name: String,
    addr: SocketAddrV4,
    stats: Arc<Stats>,
    status: Arc<AtomicU16>,
    running: Running,
}

impl HttpBackend {
    /// One on each of `backends`, at `port`, named after the backend (`b0`, `b1`, ...).
    pub fn start_on_each(backends: &[Backend], port: u16) -> Result<Vec<HttpBackend>> {
        backends
            .iter()
            .map(|b| Self::start(&b.ns, SocketAddrV4::new(b.addr, port), &b.name()))
            .collect()
    }

    /// Starts serving on `addr` inside `ns`.
    pub fn start(ns: &Netns, addr: SocketAddrV4, name: &str) -> Result<HttpBackend> {
        let stats = Arc::new(Stats::default());
        let status = Arc::new(AtomicU16::new(200));
        let handler = {
            let (name, stats, status) = (name.to_owned(), stats.clone(), status.clone());
            move |stream: TcpStream, stop: &StopSignal| {
                serve_http(stream, stop, &name, &stats, &status)
            }
        };
        let running = start_tcp(ns, addr, &format!("http-{name}"), stats.clone(), handler)?;
        Ok(HttpBackend {
            name: name.to_owned(),
            addr,
            stats,
            status,
            running,
        })
    }

    /// The name this backend answers with.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddrV4 {
        self.addr
    }

    /// From now on answer with `status` (e.g. 503 to fail an HTTP health check).
    pub fn set_status(&self, status: u16) {
        self.status.store(status, Ordering::Relaxed);
    }

    /// Requests answered.
    pub fn requests(&self) -> u64 {
        self.stats.requests.load(Ordering::Relaxed)
    }

    /// Connections accepted.
    pub fn connections(&self) -> u64 {
        self.stats.connections.load(Ordering::Relaxed)
    }

    /// Distinct peer (source) addresses of accepted connections, sorted.
    pub fn peers(&self) -> Vec<SocketAddrV4> {
        self.stats.peers()
    }

    /// Connections accepted per peer (source) IP.
    pub fn peer_ips(&self) -> BTreeMap<Ipv4Addr, u64> {
        self.stats.peer_ips()
    }

    /// Stops serving and closes the listening socket (counters stay readable).
    pub fn stop(&mut self) {
        self.running.stop();
    }
}

/// UDP server answering each datagram with `"{name}:"` followed by the payload.
#[derive(Debug)]
pub struct UdpEcho {
    name: String,
    addr: SocketAddrV4,
    stats: Arc<Stats>,
    running: Running,
}

impl UdpEcho {
    /// One on each of `backends`, at `port`, named after the backend (`b0`, `b1`, ...).
    pub fn start_on_each(backends: &[Backend], port: u16) -> Result<Vec<UdpEcho>> {
        backends
            .iter()
            .map(|b| Self::start(&b.ns, SocketAddrV4::new(b.addr, port), &b.name()))
            .collect()
    }

    /// Starts serving on `addr` inside `ns`.
    pub fn start(ns: &Netns, addr: SocketAddrV4, name: &str) -> Result<UdpEcho> {
        let socket = ns
            .run(|| UdpSocket::bind(addr))?
            .with_context(|| format!("binding UDP {addr} in {}", ns.name()))?;
        socket.set_nonblocking(true)?;
        let stats = Arc::new(Stats::default());
        let stop = StopSignal::new()?;
        let label = format!("udp-{name}");
        let thread = {
            let (prefix, stats, stop) = (format!("{name}:"), stats.clone(), stop.clone());
            ns.spawn_thread(&label, move || {
                serve_udp(&socket, prefix.as_bytes(), &stats, &stop)
            })?
        };
        Ok(UdpEcho {
            name: name.to_owned(),
            addr,
            stats,
            running: Running {
                label,
                stop,
                thread: Some(thread),
            },
        })
    }

    /// The name this server prefixes replies with.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddrV4 {
        self.addr
    }

    /// Datagrams answered.
    pub fn datagrams(&self) -> u64 {
        self.stats.requests.load(Ordering::Relaxed)
    }

    /// Distinct peer (source) addresses seen, sorted.
    pub fn peers(&self) -> Vec<SocketAddrV4> {
        self.stats.peers()
    }

    /// Datagrams per peer (source) IP.
    pub fn peer_ips(&self) -> BTreeMap<Ipv4Addr, u64> {
        self.stats.peer_ips()
    }

    /// Stops serving and closes the socket (counters stay readable).
    pub fn stop(&mut self) {
        self.running.stop();
    }
}

/// TCP server echoing every byte back, for long-lived-connection tests.
#[derive(Debug)]
pub struct TcpStreamServer {
    name: String,
    addr: SocketAddrV4,
    stats: Arc<Stats>,
    running: Running,
}

impl TcpStreamServer {
    /// One on each of `backends`, at `port`, named after the backend (`b0`, `b1`, ...).
    pub fn start_on_each(backends: &[Backend], port: u16) -> Result<Vec<TcpStreamServer>> {
        backends
            .iter()
            .map(|b| Self::start(&b.ns, SocketAddrV4::new(b.addr, port), &b.name()))
            .collect()
    }

    /// Starts serving on `addr` inside `ns`.
    pub fn start(ns: &Netns, addr: SocketAddrV4, name: &str) -> Result<TcpStreamServer> {
        let stats = Arc::new(Stats::default());
        let handler = {
            let stats = stats.clone();
            move |stream: TcpStream, stop: &StopSignal| serve_echo(stream, stop, &stats)
        };
        let running = start_tcp(ns, addr, &format!("echo-{name}"), stats.clone(), handler)?;
        Ok(TcpStreamServer {
            name: name.to_owned(),
            addr,
            stats,
            running,
        })
    }

    /// The server's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddrV4 {
        self.addr
    }

    /// Connections accepted.
    pub fn connections(&self) -> u64 {
        self.stats.connections.load(Ordering::Relaxed)
    }

    /// Bytes echoed, over all connections.
    pub fn bytes(&self) -> u64 {
        self.stats.bytes.load(Ordering::Relaxed)
    }

    /// Distinct peer (source) addresses of accepted connections, sorted.
    pub fn peers(&self) -> Vec<SocketAddrV4> {
        self.stats.peers()
    }

    /// Stops serving: closes the listener and every connection (counters stay readable).
    pub fn stop(&mut self) {
        self.running.stop();
    }
}

/// Binds a listener in `ns` and starts the accept loop, one `handler` thread per connection.
fn start_tcp<H>(
    ns: &Netns,
    addr: SocketAddrV4,
    label: &str,
    stats: Arc<Stats>,
    handler: H,
) -> Result<Running>
where
    H: Fn(TcpStream, &StopSignal) -> io::Result<()> + Send + Sync + 'static,
{
    let listener = ns
        .run(|| TcpListener::bind(addr))?
        .with_context(|| format!("binding TCP {addr} in {}", ns.name()))?;
    listener.set_nonblocking(true)?;
    let stop = StopSignal::new()?;
    let thread = {
        let (stop, owned) = (stop.clone(), label.to_owned());
        ns.spawn_thread(label, move || {
            accept_loop(&listener, &owned, &stats, &stop, Arc::new(handler))
        })?
    };
    Ok(Running {
        label: label.to_owned(),
        stop,
        thread: Some(thread),
    })
}

fn accept_loop<H>(
    listener: &TcpListener,
    label: &str,
    stats: &Stats,
    stop: &Arc<StopSignal>,
    handler: Arc<H>,
) where
    H: Fn(TcpStream, &StopSignal) -> io::Result<()> + Send + Sync + 'static,
{
    let mut workers: Vec<JoinHandle<()>> = Vec::new();
    loop {
        match stop.wait_readable(listener.as_fd()) {
            Ok(true) => {}
            Ok(false) => break,
            Err(err) => {
                tracing::warn!(server = %label, "poll: {err}");
                break;
            }
        }
        let (stream, peer) = match listener.accept() {
            Ok(accepted) => accepted,
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => continue,
            Err(err) => {
                tracing::warn!(server = %label, "accept: {err}");
                continue;
            }
        };
        stats.connections.fetch_add(1, Ordering::Relaxed);
        stats.record_peer(peer);
        workers.retain(|w| !w.is_finished());
        let (handler, stop, label_owned) = (handler.clone(), stop.clone(), label.to_owned());
        let spawned = thread::Builder::new()
            .name(format!("{label}-conn"))
            .spawn(move || {
                let result = prepare(&stream).and_then(|()| handler(stream, &stop));
                if let Err(err) = result
                    && !stop.is_stopped()
                {
                    tracing::debug!(server = %label_owned, %peer, "connection ended: {err}");
                }
            });
        match spawned {
            Ok(worker) => workers.push(worker),
            Err(err) => tracing::warn!(server = %label, "spawning connection thread: {err}"),
        }
    }
    // Workers wake up at once; only one blocked in a write to a peer that does not read
    // takes longer, and is left behind rather than waited for.
    let deadline = Instant::now() + STOP_TIMEOUT;
    for worker in workers {
        while !worker.is_finished() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(5));
        }
        if worker.is_finished() {
            let _ = worker.join();
        }
    }
}

/// Blocking I/O (reads only after `poll` said so), bounded writes.
fn prepare(stream: &TcpStream) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
    stream.set_nodelay(true)
}

/// Reads once: waits for data, end of file or an error, unless the server stops first.
fn read_some(stream: &mut TcpStream, buf: &mut [u8], stop: &StopSignal) -> io::Result<usize> {
    loop {
        if !stop.wait_readable(stream.as_fd())? {
            return Err(io::Error::other("server stopping"));
        }
        match stream.read(buf) {
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            result => return result,
        }
    }
}

fn serve_echo(mut stream: TcpStream, stop: &StopSignal, stats: &Stats) -> io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = read_some(&mut stream, &mut buf, stop)?;
        if n == 0 {
            return Ok(());
        }
        stats.bytes.fetch_add(n as u64, Ordering::Relaxed);
        stream.write_all(&buf[..n])?;
    }
}

fn serve_udp(socket: &UdpSocket, prefix: &[u8], stats: &Stats, stop: &StopSignal) {
    let mut buf = vec![0u8; 65536];
    let mut reply = Vec::with_capacity(65536 + prefix.len());
    loop {
        match stop.wait_readable(socket.as_fd()) {
            Ok(true) => {}
            Ok(false) => return,
            Err(err) => {
                tracing::warn!("udp poll: {err}");
                return;
            }
        }
        let (n, peer) = match socket.recv_from(&mut buf) {
            Ok(received) => received,
            Err(err) => {
                // WouldBlock after a spurious wake-up, or e.g. ECONNREFUSED left by an
                // earlier ICMP error: keep serving.
                if err.kind() != io::ErrorKind::WouldBlock {
                    tracing::debug!("udp recv: {err}");
                }
                continue;
            }
        };
        stats.requests.fetch_add(1, Ordering::Relaxed);
        stats.bytes.fetch_add(n as u64, Ordering::Relaxed);
        stats.record_peer(peer);
        reply.clear();
        reply.extend_from_slice(prefix);
        reply.extend_from_slice(&buf[..n]);
        if let Err(err) = socket.send_to(&reply, peer) {
            tracing::debug!(%peer, "udp send: {err}");
        }
    }
}

/// What the HTTP server needs from one request head.
struct RequestHead {
    head_len: usize,
    content_length: usize,
    keep_alive: bool,
    is_head: bool,
}

fn serve_http(
    mut stream: TcpStream,
    stop: &StopSignal,
    name: &str,
    stats: &Stats,
    status: &AtomicU16,
) -> io::Result<()> {
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let mut chunk = [0u8; 16 * 1024];
    loop {
        // Read until a complete head is buffered (pipelined requests may already be).
        let request = loop {
            if let Some(request) = parse_head(&buf)? {
                break request;
            }
            if buf.len() > MAX_HEAD {
                let _ = stream.write_all(
                    b"HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
                return Ok(());
            }
            let n = read_some(&mut stream, &mut chunk, stop)?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        // Skip the request body.
        let total = request.head_len + request.content_length;
        while buf.len() < total {
            let n = read_some(&mut stream, &mut chunk, stop)?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        buf.drain(..total);

        let code = status.load(Ordering::Relaxed);
        let body = format!("{name}\n");
        let response = format!(
            "HTTP/1.1 {code} {}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nX-Backend: {name}\r\nConnection: {}\r\n\r\n{}",
            reason(code),
            body.len(),
            if request.keep_alive {
                "keep-alive"
            } else {
                "close"
            },
            if request.is_head { "" } else { body.as_str() },
        );
        stats.requests.fetch_add(1, Ordering::Relaxed);
        stream.write_all(response.as_bytes())?;
        if !request.keep_alive {
            let _ = stream.shutdown(std::net::Shutdown::Write);
            return Ok(());
        }
    }
}

/// Parses a request head if `buf` holds a complete one.
fn parse_head(buf: &[u8]) -> io::Result<Option<RequestHead>> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(None);
    };
    let head = String::from_utf8_lossy(&buf[..end]);
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or_default();
    let version = parts.nth(1).unwrap_or("HTTP/1.0");
    let mut content_length = 0;
    let mut connection = String::new();
    for line in lines {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if key.eq_ignore_ascii_case("content-length") {
            content_length = value
                .parse()
                .map_err(|_| io::Error::other(format!("bad Content-Length {value:?}")))?;
        } else if key.eq_ignore_ascii_case("connection") {
            connection = value.to_ascii_lowercase();
        }
    }
    let keep_alive = if version.eq_ignore_ascii_case("HTTP/1.1") {
        !connection.contains("close")
    } else {
        connection.contains("keep-alive")
    };
    Ok(Some(RequestHead {
        head_len: end + 4,
        content_length,
        keep_alive,
        is_head: method.eq_ignore_ascii_case("HEAD"),
    }))
}

fn reason(code: u16) -> &'static str {
    match code {
        200 => "OK",
        404 => "Not Found",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Status",
    }
}
