//! The load: UDP floods from `gb-flood` processes, HTTP from `wrk`, and small clients of
//! our own for held connections and the failover probes.

use std::{
    fmt::Write as _,
    fs,
    io::{Read as _, Write as _},
    net::{SocketAddrV4, TcpStream},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use gerbang_testbed::{ChildGuard, Cmd, Netns};

use super::{
    Bench, checkpoint,
    measure::{CpuSnapshot, CpuUse, interface_packets, udp_arrived},
};

/// One `GET /` on a new connection from the calling thread's namespace; `timeout`
/// bounds the connect and each read and write. Returns the body of a 200 answer.
pub fn http_get(addr: SocketAddrV4, timeout: Duration) -> Result<String> {
    let mut stream = TcpStream::connect_timeout(&addr.into(), timeout)
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    stream.set_nodelay(true)?;
    stream.write_all(b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")?;
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .with_context(|| format!("reading the answer from {addr}"))?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .with_context(|| format!("no complete answer from {addr}"))?;
    ensure!(
        head.starts_with("HTTP/1.1 200"),
        "{addr} answered {}",
        head.lines().next().unwrap_or("")
    );
    Ok(body.to_owned())
}

/// What a UDP flood achieved.
pub struct Flood {
    /// Datagrams the senders got out.
    pub sent: u64,
    /// Datagrams that reached the backends' sockets.
    pub delivered: u64,
    pub seconds: f64,
    /// CPU spent meanwhile.
    pub cpu: CpuUse,
}

/// `senders` gb-flood processes in `client`, each with its share of `rate` (0: full
/// speed) over its flows, towards `targets` (flow `i` to target `i % len`); delivered
/// datagrams are counted at `backends`.
pub fn flood(
    bench: &Bench<'_>,
    client: &Netns,
    backends: &[&Netns],
    targets: &[SocketAddrV4],
    rate: u64,
) -> Result<Flood> {
    let p = &bench.params;
    let arrived = || -> Result<u64> { backends.iter().map(|ns| udp_arrived(ns)).sum() };
    let before = arrived()?;
    let cpu = CpuSnapshot::now()?;
    let to = targets
        .iter()
        .map(|t| t.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let mut senders = Vec::new();
    for i in 0..p.senders {
        let log = bench.scratch.join(format!("flood-{i}.log"));
        let _ = fs::remove_file(&log);
        let cmd = Cmd::new(&bench.flood)
            .args(["--to", &to])
            .args(["--flows", &p.flows_per_sender.to_string()])
            .args(["--rate", &(rate / p.senders as u64).to_string()])
            .args(["--seconds", &p.seconds.to_string()])
            .log_to(&log);
        senders.push((client.spawn(&cmd)?, log));
    }
    let mut sent = 0;
    for (child, log) in &mut senders {
        wait_exit(child, Duration::from_secs(u64::from(p.seconds) + 10))?;
        let out = fs::read_to_string(&*log).unwrap_or_default();
        sent += out
            .split_whitespace()
            .skip_while(|w| *w != "sent")
            .nth(1)
            .and_then(|n| n.parse::<u64>().ok())
            .with_context(|| format!("gb-flood printed no count: {out}"))?;
    }
    // Let the queues on the way drain before counting.
    std::thread::sleep(Duration::from_millis(200));
    let cpu = cpu.used()?;
    Ok(Flood {
        sent,
        delivered: arrived()? - before,
        seconds: f64::from(p.seconds),
        cpu,
    })
}

fn wait_exit(child: &mut ChildGuard, limit: Duration) -> Result<()> {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            ensure!(status.success(), "gb-flood failed ({status})");
            return Ok(());
        }
        ensure!(started.elapsed() < limit, "gb-flood did not finish");
        checkpoint()?;
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// How wrk is run.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum WrkMode {
    /// Keep-alive connections, as fast as they go.
    KeepAlive,
    /// `Connection: close`: a new connection for every request.
    Close,
    /// Keep-alive at a moderate pace: each connection waits a millisecond between requests.
    Paced,
}

/// What wrk reported.
pub struct Wrk {
    pub requests: u64,
    pub seconds: f64,
    pub errors: u64,
    pub p50_us: f64,
    pub p99_us: f64,
    /// CPU spent during the run.
    pub cpu: CpuUse,
    /// Packets the client's interface sent and received during the run.
    pub client_packets: u64,
}

impl Wrk {
    pub fn rate(&self) -> f64 {
        self.requests as f64 / self.seconds
    }
}

/// Runs wrk in `client` against `targets`: its threads are given the targets in turn (a
/// balancer's VIP, or the backends themselves for the direct path).
pub fn wrk(
    bench: &Bench<'_>,
    client: &Netns,
    client_if: &str,
    targets: &[SocketAddrV4],
    mode: WrkMode,
) -> Result<Wrk> {
    let p = &bench.params;
    let mut script = String::from("local targets = {");
    for t in targets {
        let _ = write!(script, "{{\"{}\", \"{}\"}}, ", t.ip(), t.port());
    }
    script += "}\nlocal n = 0\nfunction setup(thread)\n  local t = targets[n % #targets + 1]\n  \
               thread.addr = wrk.lookup(t[1], t[2])[1]\n  n = n + 1\nend\n";
    if mode == WrkMode::Paced {
        script += "function delay()\n  return 1\nend\n";
    }
    let script_path = bench.scratch.join("wrk.lua");
    fs::write(&script_path, script)?;
    let connections = match mode {
        WrkMode::Paced => p.paced_connections,
        _ => p.connections,
    };
    let url = format!("http://{}/", targets[0]);
    let mut args = vec![
        format!("-t{}", p.wrk_threads),
        format!("-c{connections}"),
        format!("-d{}s", p.seconds),
        "--timeout".into(),
        "2s".into(),
        "--latency".into(),
        "-s".into(),
        script_path.display().to_string(),
    ];
    if mode == WrkMode::Close {
        args.extend(["-H".into(), "Connection: close".into()]);
    }
    args.push(url);
    let packets = interface_packets(client, client_if)?;
    let cpu = CpuSnapshot::now()?;
    let out = client.exec("wrk", &args)?;
    let cpu = cpu.used()?;
    let packets = interface_packets(client, client_if)? - packets;
    let mut result = parse_wrk(&out).with_context(|| format!("reading wrk's output:\n{out}"))?;
    result.cpu = cpu;
    result.client_packets = packets;
    Ok(result)
}

fn parse_wrk(out: &str) -> Result<Wrk> {
    let mut result = Wrk {
        requests: 0,
        seconds: 0.0,
        errors: 0,
        p50_us: f64::NAN,
        p99_us: f64::NAN,
        cpu: CpuUse {
            ours: 0.0,
            machine: 0.0,
        },
        client_packets: 0,
    };
    for line in out.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["50%", value] => result.p50_us = micros(value)?,
            ["99%", value] => result.p99_us = micros(value)?,
            [n, "requests", "in", time, ..] => {
                result.requests = n.parse()?;
                result.seconds = micros(time.trim_end_matches(','))? / 1e6;
            }
            ["Socket", "errors:", rest @ ..] => {
                result.errors += rest
                    .iter()
                    .filter_map(|w| w.trim_end_matches(',').parse::<u64>().ok())
                    .sum::<u64>();
            }
            ["Non-2xx", "or", "3xx", "responses:", n] => result.errors += n.parse::<u64>()?,
            _ => {}
        }
    }
    ensure!(result.seconds > 0.0, "no request count");
    Ok(result)
}

/// A wrk duration (`123.45us`, `1.20ms`, `2.00s`, `1.00m`) in microseconds.
fn micros(value: &str) -> Result<f64> {
    let split = value
        .find(|c: char| c.is_ascii_alphabetic())
        .with_context(|| format!("no unit in {value:?}"))?;
    let (number, unit) = value.split_at(split);
    let number: f64 = number
        .parse()
        .with_context(|| format!("bad number {value:?}"))?;
    let scale = match unit {
        "us" => 1.0,
        "ms" => 1e3,
        "s" => 1e6,
        "m" => 60e6,
        "h" => 3600e6,
        _ => bail!("unknown unit in {value:?}"),
    };
    Ok(number * scale)
}

/// Opens `n` connections from `client` to `targets` in turn, each having carried one
/// keep-alive request (so a proxy has opened its backend side too), and returns them open.
pub fn hold_connections(
    client: &Netns,
    targets: &[SocketAddrV4],
    n: usize,
) -> Result<Vec<TcpStream>> {
    client.run(|| {
        (0..n)
            .map(|i| {
                let addr = targets[i % targets.len()];
                let mut stream = TcpStream::connect_timeout(&addr.into(), Duration::from_secs(2))
                    .with_context(|| format!("connection {i} to {addr}"))?;
                stream.set_read_timeout(Some(Duration::from_secs(2)))?;
                stream.write_all(b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n")?;
                // The whole answer (head and a few bytes of body) comes in one segment.
                let mut answer = [0u8; 1024];
                let len = stream
                    .read(&mut answer)
                    .with_context(|| format!("answer on connection {i} to {addr}"))?;
                ensure!(
                    answer[..len].starts_with(b"HTTP/1.1 200"),
                    "connection {i} to {addr}: no 200 answer"
                );
                Ok(stream)
            })
            .collect()
    })?
}
