//! One probe of one backend: a TCP connect, an HTTP `GET` and a look at its answer, or a
//! role check (in [`super::db`]).
//!
//! Everything a probe does, from `connect` to the last byte of the body, runs under the
//! check's single timeout, and every way a backend can misbehave (refuse, reset, answer
//! garbage, close early, stall, stream forever) ends as a [`ProbeFailure`] whose reason an
//! operator can act on. Nothing a backend sends can make a probe panic, or buffer much
//! more than [`MAX_HEAD`] + [`MAX_BODY`] bytes.

use std::{
    fmt, io,
    net::SocketAddrV4,
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use super::db::{self, RoleReport};
use crate::config::{CheckKind, HttpCheck};

/// Status line and headers longer than this are not a health-check answer.
const MAX_HEAD: usize = 16 * 1024;
/// The largest response body a probe accepts: health endpoints answer briefly, and a body
/// that goes on (or would go on) beyond this is a failure rather than something to wait
/// for, so that an endless one fails at once instead of at the timeout.
const MAX_BODY: usize = HttpCheck::BODY_LIMIT;

/// A probe that passed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeSuccess {
    /// From the start of `connect` to the end of the answer.
    pub latency: Duration,
    /// `"connected"` (TCP), `"HTTP 200"`, or what a role check found
    /// (`"replica: 0.2s behind"`).
    pub detail: String,
    /// What a role check found; `None` for other checks.
    pub role: Option<RoleReport>,
}

/// A probe that failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeFailure {
    /// From the start of `connect` until the failure was known.
    pub elapsed: Duration,
    /// A short reason for an operator: `"connection refused"`, `"HTTP status 503"`,
    /// `"timeout after 1s (waiting for the response)"`, ...
    pub reason: String,
}

impl fmt::Display for ProbeFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reason)
    }
}

impl std::error::Error for ProbeFailure {}

/// Probes `target` once as `kind` says, within `timeout`. [`CheckKind::None`] passes
/// without touching the network.
pub async fn probe(
    target: SocketAddrV4,
    kind: &CheckKind,
    timeout: Duration,
) -> Result<ProbeSuccess, ProbeFailure> {
    let start = Instant::now();
    // The probe records how far it got, so that a timeout can say where it stalled.
    let mut phase = Phase::Connecting;
    let outcome = tokio::time::timeout(timeout, exchange(target, kind, &mut phase)).await;
    let elapsed = start.elapsed();
    match outcome {
        Ok(Ok((detail, role))) => Ok(ProbeSuccess {
            latency: elapsed,
            detail,
            role,
        }),
        Ok(Err(reason)) => Err(ProbeFailure { elapsed, reason }),
        Err(_) => Err(ProbeFailure {
            elapsed,
            // Duration's Debug reads as an operator writes it: 1s, 1.5s, 200ms.
            reason: format!("timeout after {timeout:?} ({})", phase.describe()),
        }),
    }
}

/// How far a probe got.
#[derive(Debug, Clone, Copy)]
pub(super) enum Phase {
    Connecting,
    AwaitingResponse,
    ReadingHeaders,
    ReadingBody,
    /// A database check: from the server's greeting to the end of the login.
    LoggingIn,
    /// A database check: the role queries.
    Querying,
}

impl Phase {
    fn describe(self) -> &'static str {
        match self {
            Phase::Connecting => "connecting",
            Phase::AwaitingResponse => "waiting for the response",
            Phase::ReadingHeaders => "reading the response headers",
            Phase::ReadingBody => "reading the response body",
            Phase::LoggingIn => "logging in",
            Phase::Querying => "waiting for the answer to the role query",
        }
    }
}

/// The probe without its timeout: `Ok((detail, role))` or `Err(reason)`.
async fn exchange(
    target: SocketAddrV4,
    kind: &CheckKind,
    phase: &mut Phase,
) -> Result<(String, Option<RoleReport>), String> {
    let http = match kind {
        CheckKind::None => return Ok(("not checked".to_owned(), None)),
        CheckKind::Tcp => None,
        CheckKind::Http(http) => Some(http),
        CheckKind::Postgres(_)
        | CheckKind::Mysql(_)
        | CheckKind::Galera(_)
        | CheckKind::HttpRole(_) => {
            let (detail, role) = db::exchange(target, kind, phase).await?;
            return Ok((detail, Some(role)));
        }
    };
    let stream = connect(target).await?;
    match http {
        None => Ok(("connected".to_owned(), None)),
        Some(http) => Ok((http_exchange(stream, target, http, phase).await?, None)),
    }
}

/// A TCP connection to `target` for one probe.
async fn connect(target: SocketAddrV4) -> Result<TcpStream, String> {
    let stream = TcpStream::connect(target)
        .await
        .map_err(|err| io_reason(&err))?;
    // Close with a RST rather than a FIN, as HAProxy does for its checks: a probe every
    // few seconds per backend would otherwise leave this host with a TIME_WAIT socket (and
    // a busy ephemeral port) for every probe of the last minute. Without it the probe still
    // works, so a failure to set it is no reason to fail the probe.
    let _ = stream.set_zero_linger();
    Ok(stream)
}

/// `GET path` on a new connection to `target`: the final response's status, for role
/// checks that read nothing else (the body is not read).
pub(super) async fn http_status(
    target: SocketAddrV4,
    path: &str,
    phase: &mut Phase,
) -> Result<u16, String> {
    *phase = Phase::Connecting;
    let stream = connect(target).await?;
    let (_, head) = request_head(stream, target, path, None, phase).await?;
    Ok(head.status)
}

/// Sends the check's request and judges the response.
async fn http_exchange(
    stream: TcpStream,
    target: SocketAddrV4,
    http: &HttpCheck,
    phase: &mut Phase,
) -> Result<String, String> {
    let (mut conn, head) =
        request_head(stream, target, &http.path, http.host.as_deref(), phase).await?;
    if !http.status_passes(head.status) {
        return Err(format!("HTTP status {}", head.status));
    }
    *phase = Phase::ReadingBody;
    let body = read_body(&mut conn, head.framing).await?;
    if let Some(expected) = &http.expect_body
        && !contains(&body, expected.as_bytes())
    {
        return Err(format!("body does not contain {expected:?}"));
    }
    Ok(format!("HTTP {}", head.status))
}

/// Sends `GET path` and reads the final response's head.
async fn request_head(
    mut stream: TcpStream,
    target: SocketAddrV4,
    path: &str,
    host: Option<&str>,
    phase: &mut Phase,
) -> Result<(Conn, Head), String> {
    let target = target.to_string();
    let host = host.unwrap_or(&target);
    // One buffer, one write: some embedded servers read the request with a single read.
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: gerbang-check\r\nConnection: close\r\n\r\n"
    );
    *phase = Phase::AwaitingResponse;
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|err| io_reason(&err))?;

    let mut conn = Conn {
        stream,
        buf: Vec::new(),
        start: 0,
    };
    let head = read_head(&mut conn, phase).await?;
    Ok((conn, head))
}

/// The response read so far, and what of it has been parsed.
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    start: usize,
}

impl Conn {
    /// Received bytes not parsed yet.
    fn unparsed(&self) -> &[u8] {
        &self.buf[self.start..]
    }

    fn consume(&mut self, n: usize) {
        self.start += n;
    }

    /// Reads what has arrived, at least one byte; `false` at the end of the stream. The
    /// callers check their limits after every read, which bounds the buffer.
    async fn fill(&mut self) -> Result<bool, String> {
        self.buf.reserve(8 * 1024);
        let n = self
            .stream
            .read_buf(&mut self.buf)
            .await
            .map_err(|err| io_reason(&err))?;
        Ok(n > 0)
    }
}

/// A final response's status and how its body is delimited.
struct Head {
    status: u16,
    framing: Framing,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// 1xx, 204 and 304 have no body.
    Empty,
    Length(u64),
    Chunked,
    /// No length: the body ends when the backend closes.
    UntilClose,
}

/// Reads up to the end of a final response's headers, skipping interim (1xx) responses.
/// Lines may end in CRLF or a bare LF.
async fn read_head(conn: &mut Conn, phase: &mut Phase) -> Result<Head, String> {
    // Where the line being looked for starts, and how far the bytes have been searched
    // for its end: each byte is looked at once, however the response is split.
    let (mut line_start, mut searched) = (0, 0);
    'response: loop {
        let unparsed = conn.unparsed();
        if !unparsed.is_empty() {
            *phase = Phase::ReadingHeaders;
        }
        // Judge the status line as it arrives: a backend that answers garbage fails now
        // rather than at the timeout.
        if line_start == 0 && !b"HTTP/".starts_with(&unparsed[..unparsed.len().min(5)]) {
            return Err(not_http(unparsed));
        }
        while let Some(len) = unparsed[searched..].iter().position(|&b| b == b'\n') {
            let line = trim_cr(&unparsed[line_start..searched + len]);
            let status_line = line_start == 0;
            (line_start, searched) = (searched + len + 1, searched + len + 1);
            if status_line {
                if parse_status_line(line).is_none() {
                    return Err(not_http(unparsed));
                }
            } else if line.is_empty() {
                let head = parse_head(&unparsed[..line_start])?;
                conn.consume(line_start);
                if (100..200).contains(&head.status) {
                    (line_start, searched) = (0, 0);
                    continue 'response;
                }
                return Ok(head);
            }
        }
        searched = unparsed.len();
        // Interim responses count too, so that an endless run of them is cut short.
        if conn.buf.len() > MAX_HEAD {
            return Err(format!(
                "response headers longer than {} KiB",
                MAX_HEAD / 1024
            ));
        }
        if !conn.fill().await? {
            return Err(if conn.buf.is_empty() {
                "closed before answering".to_owned()
            } else {
                "closed in the middle of the response headers".to_owned()
            });
        }
    }
}

fn trim_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// `HTTP/1.x NNN[ reason]`, with NNN in 100..=599.
fn parse_status_line(line: &[u8]) -> Option<u16> {
    let rest = line.strip_prefix(b"HTTP/1.")?;
    let (minor, rest) = rest.split_first()?;
    if !minor.is_ascii_digit() {
        return None;
    }
    let rest = rest.strip_prefix(b" ")?;
    let digits = rest.get(..3)?;
    if !digits.iter().all(u8::is_ascii_digit) || rest.get(3).is_some_and(|&b| b != b' ') {
        return None;
    }
    let status = digits
        .iter()
        .fold(0u16, |n, d| n * 10 + u16::from(d - b'0'));
    (100..=599).contains(&status).then_some(status)
}

/// Parses a complete head whose status line has been checked already.
fn parse_head(head: &[u8]) -> Result<Head, String> {
    let mut lines = head.split(|&b| b == b'\n').map(trim_cr);
    let status = lines
        .next()
        .and_then(parse_status_line)
        .ok_or_else(|| not_http(head))?;
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut transfer_encoding = false;
    for line in lines {
        // Lines without a colon (or obsolete folded ones) carry nothing a check needs.
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let name = &line[..colon];
        let value = line[colon + 1..].trim_ascii();
        if name.eq_ignore_ascii_case(b"content-length") {
            let parsed = parse_decimal(value)
                .filter(|&n| length.is_none_or(|previous| previous == n))
                .ok_or("invalid Content-Length header")?;
            length = Some(parsed);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            // Per RFC 9112 the body is chunked if chunked is the last coding, and otherwise
            // runs to the close.
            transfer_encoding = true;
            chunked = value
                .rsplit(|&b| b == b',')
                .next()
                .is_some_and(|coding| coding.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        }
    }
    let framing = if (100..200).contains(&status) || status == 204 || status == 304 {
        Framing::Empty
    } else if chunked {
        Framing::Chunked
    } else if transfer_encoding {
        Framing::UntilClose
    } else if let Some(length) = length {
        Framing::Length(length)
    } else {
        Framing::UntilClose
    };
    Ok(Head { status, framing })
}

fn parse_decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    digits.iter().try_fold(0u64, |n, d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

/// Reads the body as framed, failing if it is (or would be) longer than [`MAX_BODY`].
async fn read_body(conn: &mut Conn, framing: Framing) -> Result<Vec<u8>, String> {
    let too_long = || format!("response body longer than {} KiB", MAX_BODY / 1024);
    match framing {
        Framing::Empty => Ok(Vec::new()),
        Framing::Length(length) => {
            let length = usize::try_from(length)
                .ok()
                .filter(|&n| n <= MAX_BODY)
                .ok_or_else(too_long)?;
            while conn.unparsed().len() < length {
                if !conn.fill().await? {
                    return Err("closed before the end of the body".to_owned());
                }
            }
            Ok(conn.unparsed()[..length].to_vec())
        }
        Framing::UntilClose => loop {
            if conn.unparsed().len() > MAX_BODY {
                return Err(too_long());
            }
            if !conn.fill().await? {
                return Ok(conn.unparsed().to_vec());
            }
        },
        Framing::Chunked => read_chunked(conn, too_long).await,
    }
}

/// Decodes a chunked body up to its last chunk; trailers are not read.
async fn read_chunked(conn: &mut Conn, too_long: impl Fn() -> String) -> Result<Vec<u8>, String> {
    const MALFORMED: &str = "malformed chunked body";
    let mut body = Vec::new();
    loop {
        // The size line: hex digits, then optional extensions after ';'.
        let line_len = loop {
            if let Some(len) = conn.unparsed().iter().position(|&b| b == b'\n') {
                break len;
            }
            if conn.unparsed().len() > 1024 {
                return Err(MALFORMED.to_owned());
            }
            if !conn.fill().await? {
                return Err("closed before the end of the body".to_owned());
            }
        };
        let line = trim_cr(&conn.unparsed()[..line_len]);
        let digits = line
            .split(|&b| b == b';')
            .next()
            .unwrap_or_default()
            .trim_ascii();
        let size = parse_hex(digits).ok_or(MALFORMED)?;
        conn.consume(line_len + 1);
        if size == 0 {
            return Ok(body);
        }
        let size = usize::try_from(size)
            .ok()
            .filter(|&n| n <= MAX_BODY - body.len())
            .ok_or_else(&too_long)?;
        // The data and the CRLF (or LF) that ends it.
        while conn.unparsed().len() < size + 2 {
            if !conn.fill().await? {
                return Err("closed before the end of the body".to_owned());
            }
        }
        let unparsed = conn.unparsed();
        body.extend_from_slice(&unparsed[..size]);
        let terminator = match &unparsed[size..size + 2] {
            b"\r\n" => 2,
            [b'\n', _] => 1,
            _ => return Err(MALFORMED.to_owned()),
        };
        conn.consume(size + terminator);
    }
}

fn parse_hex(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 16 {
        return None;
    }
    let text = std::str::from_utf8(digits).ok()?;
    u64::from_str_radix(text, 16).ok()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty()
        || haystack
            .windows(needle.len())
            .any(|window| window == needle)
}

/// `not an HTTP response: "<the start of the first line>"`.
fn not_http(received: &[u8]) -> String {
    const SHOWN: usize = 40;
    let line = received.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = trim_cr(line);
    let ellipsis = if line.len() > SHOWN { "..." } else { "" };
    format!(
        "not an HTTP response: \"{}{ellipsis}\"",
        line[..line.len().min(SHOWN)].escape_ascii()
    )
}

/// A socket error as an operator says it.
pub(super) fn io_reason(err: &io::Error) -> String {
    use io::ErrorKind;
    let reason = match err.kind() {
        ErrorKind::ConnectionRefused => "connection refused",
        ErrorKind::ConnectionReset => "connection reset",
        ErrorKind::ConnectionAborted => "connection aborted",
        ErrorKind::BrokenPipe => "connection closed by the backend",
        ErrorKind::HostUnreachable => "no route to host",
        ErrorKind::NetworkUnreachable => "network unreachable",
        ErrorKind::TimedOut => "connection timed out",
        ErrorKind::AddrNotAvailable => "no local address or port available",
        _ => {
            // std's text is "<description> (os error N)"; the number adds nothing here.
            let text = err.to_string();
            return match text.find(" (os error") {
                Some(end) => text[..end].to_lowercase(),
                None => text,
            };
        }
    };
    reason.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines() {
        assert_eq!(parse_status_line(b"HTTP/1.1 200 OK"), Some(200));
        assert_eq!(parse_status_line(b"HTTP/1.0 503"), Some(503));
        for bad in [
            &b"HTTP/2 200 OK"[..],
            b"HTTP/1.1 20 OK",
            b"HTTP/1.1 2000",
            b"HTTP/1.x 200",
            b"HTTP/1.1 099 x",
            b"http/1.1 200 OK",
            b"",
        ] {
            assert_eq!(parse_status_line(bad), None, "{}", bad.escape_ascii());
        }
    }
}
