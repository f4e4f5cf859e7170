//! Clients that send real traffic from inside a namespace.
//!
//! The TCP and UDP helpers create their sockets on a thread inside the namespace
//! ([`Netns::run`]); [`curl`] runs the real `curl` binary under `ip netns exec`, a peer
//! nobody here wrote. Connect and read timeouts are [`TIMEOUT`], so a broken data path
//! fails a test quickly instead of hanging it.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream, UdpSocket};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail, ensure};

use crate::Netns;

/// Connect, read and write timeout of every client here.
pub const TIMEOUT: Duration = Duration::from_secs(2);

/// Piece size [`TcpStreamClient::echo`] sends before reading that piece back.
const ECHO_PIECE: usize = 16 * 1024;

/// `GET /` over a new TCP connection from `ns`; returns the body of a `200` response.
pub fn http_get(ns: &Netns, addr: SocketAddrV4) -> Result<String> {
    ns.run(|| get_here(addr))?
}

/// `n` sequential [`http_get`]s, each on a new connection, from one thread inside `ns`.
pub fn http_get_many(ns: &Netns, addr: SocketAddrV4, n: usize) -> Vec<Result<String>> {
    match ns.run(|| (0..n).map(|_| get_here(addr)).collect()) {
        Ok(results) => results,
        Err(err) => (0..n).map(|_| Err(anyhow!("{err:#}"))).collect(),
    }
}

/// Fetches `url` with the real `curl` binary inside `ns` and returns the body.
/// HTTP errors (status >= 400) and timeouts are errors.
pub fn curl(ns: &Netns, url: &str) -> Result<String> {
    let connect = TIMEOUT.as_secs().to_string();
    let max = (TIMEOUT * 2).as_secs().to_string();
    ns.exec(
        "curl",
        [
            "--silent",
            "--show-error",
            "--fail",
            "--connect-timeout",
            connect.as_str(),
            "--max-time",
            max.as_str(),
            url,
        ],
    )
}

/// Sends one UDP datagram from `ns` (from `from`, or an ephemeral port) to `to` and returns
/// the first reply coming from `to`.
pub fn udp_request(
    ns: &Netns,
    from: Option<SocketAddrV4>,
    to: SocketAddrV4,
    payload: &[u8],
) -> Result<Vec<u8>> {
    ns.run(|| -> Result<Vec<u8>> {
        let local = from.unwrap_or(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0));
        let socket = UdpSocket::bind(local).with_context(|| format!("binding UDP {local}"))?;
        // Connecting filters out datagrams from anyone but `to`.
        socket.connect(to)?;
        socket.set_read_timeout(Some(TIMEOUT))?;
        socket
            .send(payload)
            .with_context(|| format!("sending to {to}"))?;
        let mut buf = vec![0u8; 65536];
        let n = socket
            .recv(&mut buf)
            .with_context(|| format!("waiting for a UDP reply from {to}"))?;
        buf.truncate(n);
        Ok(buf)
    })?
}

/// One TCP connection held open, for tests of long-lived flows.
///
/// Created inside a namespace; usable from any thread afterwards.
#[derive(Debug)]
pub struct TcpStreamClient {
    stream: TcpStream,
    local: SocketAddrV4,
    peer: SocketAddrV4,
}

impl TcpStreamClient {
    /// Connects from `ns` to `addr`.
    pub fn connect(ns: &Netns, addr: SocketAddrV4) -> Result<TcpStreamClient> {
        let stream = ns.run(|| connect_here(addr))??;
        let local = match stream.local_addr()? {
            SocketAddr::V4(local) => local,
            other => bail!("unexpected local address {other}"),
        };
        Ok(TcpStreamClient {
            stream,
            local,
            peer: addr,
        })
    }

    /// The connection's local (client) address.
    pub fn local_addr(&self) -> SocketAddrV4 {
        self.local
    }

    /// The address connected to.
    pub fn peer_addr(&self) -> SocketAddrV4 {
        self.peer
    }

    /// Sends `data` and returns what came back, as many bytes as were sent.
    ///
    /// Sends in 16 KiB pieces and reads each piece's echo before the next, so large
    /// chunks cannot deadlock on full socket buffers.
    pub fn echo(&mut self, data: &[u8]) -> Result<Vec<u8>> {
        let mut back = vec![0u8; data.len()];
        for (piece, out) in data.chunks(ECHO_PIECE).zip(back.chunks_mut(ECHO_PIECE)) {
            self.stream
                .write_all(piece)
                .with_context(|| format!("sending to {}", self.peer))?;
            self.stream
                .read_exact(out)
                .with_context(|| format!("reading the echo from {}", self.peer))?;
        }
        Ok(back)
    }
}

fn connect_here(addr: SocketAddrV4) -> Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&addr.into(), TIMEOUT)
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.set_write_timeout(Some(TIMEOUT))?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// One `GET /` on a new connection, from the calling thread's namespace.
fn get_here(addr: SocketAddrV4) -> Result<String> {
    let mut stream = connect_here(addr)?;
    // One write, one segment: `write!` would send each formatted piece on its own.
    let request = format!(
        "GET / HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: gerbang-testbed\r\nConnection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .with_context(|| format!("sending request to {addr}"))?;
    let mut response = Vec::new();
    let mut chunk = [0u8; 4096];
    // Read the head, then exactly Content-Length bytes (or to EOF without one).
    let (status, head_len, content_length) = loop {
        if let Some(end) = response.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&response[..end]);
            let status: u16 = head
                .split_whitespace()
                .nth(1)
                .and_then(|code| code.parse().ok())
                .with_context(|| format!("bad status line from {addr}: {head}"))?;
            let length = head.lines().find_map(|line| {
                let (key, value) = line.split_once(':')?;
                key.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse::<usize>().ok())?
            });
            break (status, end + 4, length);
        }
        let n = stream
            .read(&mut chunk)
            .with_context(|| format!("reading response head from {addr}"))?;
        ensure!(n > 0, "{addr} closed the connection before a response head");
        response.extend_from_slice(&chunk[..n]);
    };
    match content_length {
        Some(length) => {
            while response.len() < head_len + length {
                let n = stream
                    .read(&mut chunk)
                    .with_context(|| format!("reading response body from {addr}"))?;
                ensure!(n > 0, "{addr} closed the connection inside the body");
                response.extend_from_slice(&chunk[..n]);
            }
            response.truncate(head_len + length);
        }
        None => {
            stream
                .read_to_end(&mut response)
                .with_context(|| format!("reading response body from {addr}"))?;
        }
    }
    let body = String::from_utf8_lossy(&response[head_len..]).into_owned();
    ensure!(status == 200, "HTTP {status} from {addr}: {}", body.trim());
    Ok(body)
}
