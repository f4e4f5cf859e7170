//! Measurements of the userspace proxy, printed rather than asserted (speed belongs in
//! benchmarks, never in a timed test). Each is `#[ignore]`d; run them with
//!
//! ```sh
//! cargo test --release -p gerbang-testbed --test proxy_bench -- --ignored --nocapture --test-threads=1
//! ```
//!
//! - `throughput_splice_vs_copy`: one long TCP stream through the proxy, per relay mode.
//! - `requests_per_second_vs_haproxy`: `wrk` against the proxy and against HAProxy 2.6
//!   (`mode tcp`, `balance roundrobin`, `source` = the SNAT address), same backends, with
//!   keep-alive and with a new connection per request.
//!
//! The proxy runs in a process of its own (this test binary re-run), as the binary runs
//! it (a relay thread per CPU) unless said otherwise.

mod support;

use std::{
    io::{Read, Write},
    net::{SocketAddrV4, TcpStream},
    thread,
    time::{Duration, Instant},
};

use gerbang::dataplane::proxy::RelayMode;
use gerbang_testbed::{Cmd, HttpBackend, Netns, TwoArm, http_get};
use support::{
    gerbang::{backend_entries, wait_until},
    proxy::{ProxyProcess, TestServer, child_main},
    tempdir::TempDir,
};

const HTTP_PORT: u16 = 8080;
const SINK_PORT: u16 = 9000;

/// Runs the proxy when this binary is started as [`ProxyProcess`]; skipped otherwise.
#[test]
#[ignore = "the body of the proxy child process of the benchmarks"]
fn proxy_child() {
    child_main();
}

fn config(t: &TwoArm, services: &[(&str, u16, u16)]) -> String {
    let mut text = format!(
        "[dataplane]\ninterfaces = [\"{}\", \"{}\"]\nsnat_address = \"{}\"\n",
        t.lb_client_if, t.lb_backend_if, t.snat
    );
    for (name, port, backend_port) in services {
        text += &format!(
            "\n[[service]]\nname = \"{name}\"\nlisten = \"{}:{port}\"\n",
            t.vip
        );
        text += &backend_entries(&t.backends, *backend_port);
    }
    text
}

/// Reads and discards everything, a thread per connection, on each backend.
fn discard(t: &TwoArm) -> Vec<TestServer> {
    t.backends
        .iter()
        .map(|b| discard_at(&b.ns, SocketAddrV4::new(b.addr, SINK_PORT)))
        .collect()
}

fn discard_at(ns: &Netns, addr: SocketAddrV4) -> TestServer {
    TestServer::start(ns, addr, |mut stream| {
        thread::spawn(move || {
            let mut buf = vec![0u8; 256 * 1024];
            while matches!(stream.read(&mut buf), Ok(n) if n > 0) {}
        });
    })
    .unwrap()
}

/// One stream through the proxy, three rounds per relay mode (interleaved), in two
/// settings: across the topology (client and backend in their own namespaces, veth in
/// between) and all inside the balancer's namespace (loopback-like: no wire, no
/// checksums), which shows the proxy's own cost best.
#[test]
#[ignore = "benchmark"]
fn throughput_splice_vs_copy() {
    let t = TwoArm::new(1).unwrap();
    let _sinks = discard(&t);
    let local = SocketAddrV4::new(t.lb_backend_addr, SINK_PORT + 1);
    let _local_sink = discard_at(&t.lb, local);
    let dir = TempDir::new();
    let mut text = config(&t, &[("bulk", SINK_PORT, SINK_PORT)]);
    text += &format!(
        "\n[[service]]\nname = \"local\"\nlisten = \"{}:{}\"\n  [[service.backend]]\n  name = \"lb\"\n  address = \"{local}\"\n",
        t.vip,
        SINK_PORT + 1
    );
    let path = dir.write("proxy.toml", &text);
    for (setting, client, port) in [
        ("namespaces", &t.client, SINK_PORT),
        ("inside the balancer's namespace", &t.lb, SINK_PORT + 1),
    ] {
        let to = SocketAddrV4::new(t.vip, port);
        for relay in [RelayMode::Auto, RelayMode::Splice, RelayMode::Copy].repeat(3) {
            let proxy = ProxyProcess::start(&t.lb, &path, "proxy_child", relay, false).unwrap();
            let mut stream = wait_until(Duration::from_secs(10), || {
                Ok(client.run(|| TcpStream::connect(to))??)
            })
            .unwrap();
            let (rate, cpu) = push(&mut stream, 2 << 30, proxy.pid());
            eprintln!(
                "{setting}: {relay:?}: {rate:.0} MiB/s over one connection; proxy CPU {cpu:.0}% \
                 of one core; RSS {} KiB",
                proxy.rss_kib().unwrap(),
            );
        }
    }
}

/// Sends `total` bytes on `stream`, closes it and waits for the proxy to close it too.
/// Returns MiB/s and the proxy's CPU use in percent of one core.
fn push(stream: &mut TcpStream, total: usize, proxy: u32) -> (f64, f64) {
    let chunk = vec![0x5a_u8; 1 << 20];
    let started = Instant::now();
    let cpu_before = cpu_ticks(proxy);
    for _ in 0..total / chunk.len() {
        stream.write_all(&chunk).unwrap();
    }
    stream.shutdown(std::net::Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    let _ = stream.read_to_end(&mut rest);
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = (cpu_ticks(proxy) - cpu_before) as f64 / ticks_per_second();
    (
        total as f64 / (1 << 20) as f64 / elapsed,
        100.0 * cpu / elapsed,
    )
}

/// `wrk` (2 threads, 50 connections, 5 s) through each contender, three rounds, with
/// keep-alive and with a new connection per request. Contenders: the proxy in each relay
/// mode with a relay thread per CPU and HAProxy with one thread per CPU; then the proxy
/// with one relay thread and HAProxy with `nbthread 1`, which compares the work per
/// request without the schedulers.
#[test]
#[ignore = "benchmark"]
fn requests_per_second_vs_haproxy() {
    let t = TwoArm::new(2).unwrap();
    let _servers: Vec<HttpBackend> = HttpBackend::start_on_each(&t.backends, HTTP_PORT).unwrap();
    let dir = TempDir::new();
    let proxy = |port: u16, relay: RelayMode, single_thread: bool| {
        let path = dir.write(
            &format!("proxy-{port}.toml"),
            &config(&t, &[("web", port, HTTP_PORT)]),
        );
        ProxyProcess::start(&t.lb, &path, "proxy_child", relay, single_thread).unwrap()
    };
    let haproxy = |port: u16, threads: Option<u32>| {
        let mut cfg = String::from("global\n  maxconn 8000\n");
        if let Some(threads) = threads {
            cfg += &format!("  nbthread {threads}\n");
        }
        cfg += &format!(
            "defaults\n  mode tcp\n  timeout connect 2s\n  timeout client 15m\n  timeout server 15m\n\
             frontend web\n  bind {}:{port}\n  default_backend web\n\
             backend web\n  balance roundrobin\n  source {}\n",
            t.vip, t.snat
        );
        for b in &t.backends {
            cfg += &format!("  server b{} {}:{HTTP_PORT}\n", b.index, b.addr);
        }
        let path = dir.write(&format!("haproxy-{port}.cfg"), &cfg);
        t.lb.spawn(
            &Cmd::new("haproxy")
                .arg("-db")
                .arg("-f")
                .arg(&path)
                .log_to(dir.path().join(format!("haproxy-{port}.log"))),
        )
        .unwrap()
    };
    let auto = proxy(80, RelayMode::Auto, false);
    let haproxy_all = haproxy(81, None);
    let splice = proxy(82, RelayMode::Splice, false);
    let copy = proxy(83, RelayMode::Copy, false);
    let auto_one = proxy(84, RelayMode::Auto, true);
    let haproxy_one = haproxy(85, Some(1));
    let contenders = [
        ("gerbang proxy (auto)", 80, auto.pid()),
        ("gerbang proxy (splice)", 82, splice.pid()),
        ("gerbang proxy (copy)", 83, copy.pid()),
        ("haproxy 2.6", 81, haproxy_all.pid()),
        ("gerbang proxy (auto), 1 thread", 84, auto_one.pid()),
        ("haproxy 2.6, nbthread 1", 85, haproxy_one.pid()),
    ];
    for (_, port, _) in contenders {
        wait_until(Duration::from_secs(10), || {
            http_get(&t.client, SocketAddrV4::new(t.vip, port))
        })
        .unwrap();
    }
    for (label, extra) in [
        ("keep-alive", None),
        ("new connection per request", Some("Connection: close")),
    ] {
        for round in 1..=3 {
            for (name, port, pid) in contenders {
                let url = format!("http://{}:{port}/", t.vip);
                let mut args = vec!["-t2", "-c50", "-d5s"];
                if let Some(header) = extra {
                    args.extend(["-H", header]);
                }
                args.push(&url);
                let cpu_before = cpu_ticks(pid);
                let out = t.client.exec("wrk", &args).unwrap();
                let cpu = (cpu_ticks(pid) - cpu_before) as f64 / ticks_per_second();
                let rps: f64 = out
                    .lines()
                    .find_map(|l| l.strip_prefix("Requests/sec:"))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0.0);
                let errors = out
                    .lines()
                    .find(|l| l.contains("Socket errors") || l.contains("Non-2xx"))
                    .unwrap_or("no errors");
                eprintln!(
                    "{label}, round {round}: {name}: {rps:.0} requests/s, {:.0} requests per \
                     CPU-second of the proxy ({errors})",
                    rps * 5.0 / cpu.max(0.01)
                );
            }
        }
    }
    eprintln!(
        "RSS after the runs: auto {} KiB, splice {} KiB, copy {} KiB, auto on 1 thread {} KiB",
        auto.rss_kib().unwrap(),
        splice.rss_kib().unwrap(),
        copy.rss_kib().unwrap(),
        auto_one.rss_kib().unwrap()
    );
}

/// User plus system CPU time of `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may contain spaces) start after ") ".
    let rest = &stat[stat.rfind(") ").unwrap() + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

fn ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }) as f64
}
