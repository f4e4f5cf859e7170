//! Health checks, weights, backups, admin states, failover under load, atomic set changes,
//! reloads and fail-fast resets, with real HTTP and TCP backends in namespaces and gerbang
//! running in-process in the balancer's namespace.

mod support;

use std::{
    collections::BTreeMap,
    net::SocketAddrV4,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use gerbang::dataplane::{AdminState, BackendState};
use gerbang_testbed::{
    HttpBackend, TcpStreamClient, TcpStreamServer, TwoArm, http_get, http_get_many,
};
use lb_common::{Event, Verdict};
use support::{
    gerbang::{InProcess, binary, isolate, wait_until},
    tempdir::TempDir,
};

const HTTP: u16 = 8080;
const STREAM: u16 = 9000;

/// Fast HTTP checks so tests see verdicts within a second.
const FAST_HTTP_CHECK: &str =
    "[service.check]\ntype = \"http\"\npath = \"/\"\ninterval = \"200ms\"\nfall = 2\nrise = 2\n";
const NO_CHECK: &str = "[service.check]\ntype = \"none\"\n";

/// Every backend, with nothing added.
fn all(_: &str, _: usize) -> Option<String> {
    Some(String::new())
}

/// One service per `(name, port, backend port, service lines)`, each over the backends of
/// `t` for which `backend_lines(service, i)` gives lines to add (`None` leaves one out).
fn config(
    t: &TwoArm,
    mode: Mode,
    services: &[(&str, u16, u16, &str)],
    backend_lines: impl Fn(&str, usize) -> Option<String>,
) -> String {
    let mut text = format!(
        "[dataplane]\ninterfaces = [\"{}\", \"{}\"]\n{}snat_address = \"{}\"\n",
        t.lb_client_if,
        t.lb_backend_if,
        mode.dataplane_lines(),
        t.snat
    );
    for (name, port, backend_port, lines) in services {
        text += &format!(
            "\n[[service]]\nname = \"{name}\"\nlisten = \"{}:{port}\"\n{lines}",
            t.vip
        );
        for (i, b) in t.backends.iter().enumerate() {
            let Some(lines) = backend_lines(name, i) else {
                continue;
            };
            text += &format!(
                "  [[service.backend]]\n  name = \"b{i}\"\n  address = \"{}:{backend_port}\"\n{lines}",
                b.addr
            );
        }
    }
    text
}

/// A config file (in a directory that lives as long as the returned guard) for the
/// "stream" service over every backend of `t`, without checks.
fn stream_config_file(t: &TwoArm, mode: Mode) -> (TempDir, PathBuf) {
    let dir = TempDir::new();
    let text = isolate(&config(
        t,
        mode,
        &[("stream", STREAM, STREAM, NO_CHECK)],
        all,
    ));
    let path = dir.write("gerbang.toml", &text);
    (dir, path)
}

fn http_servers(t: &TwoArm) -> Vec<HttpBackend> {
    HttpBackend::start_on_each(&t.backends, HTTP).unwrap()
}

fn stream_servers(t: &TwoArm) -> Vec<TcpStreamServer> {
    TcpStreamServer::start_on_each(&t.backends, STREAM).unwrap()
}

fn tally(answers: impl IntoIterator<Item = String>) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for answer in answers {
        *counts.entry(answer.trim().to_string()).or_default() += 1;
    }
    counts
}

/// Requests on new connections, back to back, until stopped; each with its start time.
struct Load {
    stop: Arc<AtomicBool>,
    thread: thread::JoinHandle<Vec<(Instant, Result<String, String>)>>,
}

impl Load {
    fn start(t: &TwoArm, vip: SocketAddrV4) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let client = gerbang_testbed::Netns::existing(t.client.name()).unwrap();
        let flag = stop.clone();
        let thread = thread::spawn(move || {
            let mut results = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                let started = Instant::now();
                let result = http_get(&client, vip).map_err(|e| format!("{e:#}"));
                results.push((started, result));
            }
            results
        });
        Load { stop, thread }
    }

    fn finish(self) -> Vec<(Instant, Result<String, String>)> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

/// A backend that stops answering leaves the rotation once its checks say DOWN; from that
/// moment no new request fails; it comes back after `rise` good checks.
fn a_failed_backend_leaves_rotation_and_no_later_request_fails(mode: Mode) {
    let t = TwoArm::new(3).unwrap();
    let mut servers = http_servers(&t);
    let gerbang = InProcess::start(
        &t.lb,
        &config(&t, mode, &[("web", 80, HTTP, FAST_HTTP_CHECK)], all),
    )
    .unwrap();
    let vip = SocketAddrV4::new(t.vip, 80);
    let load = Load::start(&t, vip);

    thread::sleep(Duration::from_millis(400));
    let stopped_at = Instant::now();
    servers[1].stop();
    let down_at = gerbang.wait_for_backend_state("web", "b1", BackendState::Down);
    thread::sleep(Duration::from_millis(600));
    let restarted_at = Instant::now();
    servers[1] = HttpBackend::start(
        &t.backends[1].ns,
        SocketAddrV4::new(t.backends[1].addr, HTTP),
        "b1",
    )
    .unwrap();
    let up_at = gerbang.wait_for_backend_state("web", "b1", BackendState::Active);
    thread::sleep(Duration::from_millis(600));
    let results = load.finish();
    assert!(up_at > restarted_at);

    let after_down: Vec<_> = results.iter().filter(|(at, _)| *at >= down_at).collect();
    let failed_after: Vec<_> = after_down.iter().filter(|(_, r)| r.is_err()).collect();
    assert!(
        failed_after.is_empty(),
        "requests failed after the backend was DOWN: {failed_after:?}"
    );
    let back_on_b1 = results
        .iter()
        .filter(|(at, r)| *at > up_at && r.as_deref().is_ok_and(|b| b.trim() == "b1"))
        .count();
    assert!(back_on_b1 > 0, "b1 takes requests again after rise");
    let detection = down_at - stopped_at;
    assert!(
        detection < Duration::from_secs(3),
        "DOWN after {detection:?}"
    );
    eprintln!(
        "{} requests, {} failed between the stop and the DOWN verdict ({detection:?})",
        results.len(),
        results.iter().filter(|(_, r)| r.is_err()).count()
    );
    gerbang.stop().unwrap();
}

fn weights_three_to_one_split_new_flows_three_to_one(mode: Mode) {
    let t = TwoArm::new(2).unwrap();
    let _servers = http_servers(&t);
    let config = config(&t, mode, &[("web", 80, HTTP, NO_CHECK)], |_, i| {
        Some(format!("  weight = {}\n", if i == 0 { 3 } else { 1 }))
    });
    let gerbang = InProcess::start(&t.lb, &config).unwrap();
    let answers = http_get_many(&t.client, SocketAddrV4::new(t.vip, 80), 400)
        .into_iter()
        .map(Result::unwrap);
    assert_eq!(
        tally(answers),
        BTreeMap::from([("b0".into(), 300), ("b1".into(), 100)])
    );
    gerbang.stop().unwrap();
}

fn the_backup_serves_only_while_no_primary_is_up(mode: Mode) {
    let t = TwoArm::new(3).unwrap();
    let mut servers = http_servers(&t);
    let config = config(&t, mode, &[("web", 80, HTTP, FAST_HTTP_CHECK)], |_, i| {
        Some(if i == 2 {
            "  backup = true\n".into()
        } else {
            String::new()
        })
    });
    let gerbang = InProcess::start(&t.lb, &config).unwrap();
    let vip = SocketAddrV4::new(t.vip, 80);
    let get = |n| {
        tally(
            http_get_many(&t.client, vip, n)
                .into_iter()
                .map(Result::unwrap),
        )
    };
    assert_eq!(
        get(20),
        BTreeMap::from([("b0".into(), 10), ("b1".into(), 10)])
    );

    servers[0].stop();
    servers[1].stop();
    gerbang.wait_for_backend_state("web", "b0", BackendState::Down);
    gerbang.wait_for_backend_state("web", "b1", BackendState::Down);
    assert_eq!(gerbang.backend_state("web", "b2"), BackendState::Active);
    assert_eq!(get(10), BTreeMap::from([("b2".into(), 10)]));

    servers[0] = HttpBackend::start(
        &t.backends[0].ns,
        SocketAddrV4::new(t.backends[0].addr, HTTP),
        "b0",
    )
    .unwrap();
    gerbang.wait_for_backend_state("web", "b0", BackendState::Active);
    assert_eq!(gerbang.backend_state("web", "b2"), BackendState::Standby);
    assert_eq!(get(10), BTreeMap::from([("b0".into(), 10)]));
    gerbang.stop().unwrap();
}

/// `gerbang backend drain` through the control socket: the drained backend keeps its live
/// connection and gets no new one; `ready` brings it back; unknown names are errors.
fn drain_through_the_cli_keeps_live_connections_and_moves_new_ones(mode: Mode) {
    let t = TwoArm::new(3).unwrap();
    let streams = stream_servers(&t);
    let (_dir, path) = stream_config_file(&t, mode);
    let gerbang = InProcess::start_file(&t.lb, &path).unwrap();
    let vip = SocketAddrV4::new(t.vip, STREAM);
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(binary())
            .args(args)
            .args(["--config", path.to_str().unwrap()])
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };

    let mut long = TcpStreamClient::connect(&t.client, vip).unwrap();
    assert_eq!(long.echo(b"first").unwrap(), b"first");
    let owner = streams.iter().position(|s| s.connections() == 1).unwrap();
    let name = format!("b{owner}");

    let (ok, said) = cli(&["backend", "drain", "stream", &name]);
    assert!(ok, "{said}");
    assert!(
        said.contains(&format!("stream/{name} is drain (was ready)")),
        "{said}"
    );
    assert_eq!(
        gerbang.backend_state("stream", &name),
        BackendState::Standby
    );
    for i in 0..12 {
        let mut short = TcpStreamClient::connect(&t.client, vip).unwrap();
        assert_eq!(short.echo(b"x").unwrap(), b"x", "connection {i}");
        assert_eq!(long.echo(b"still here").unwrap(), b"still here");
    }
    assert_eq!(
        streams[owner].connections(),
        1,
        "the drained backend got no new connection"
    );

    let (ok, said) = cli(&["backend", "ready", "stream", &name]);
    assert!(ok, "{said}");
    for _ in 0..3 {
        TcpStreamClient::connect(&t.client, vip)
            .unwrap()
            .echo(b"y")
            .unwrap();
    }
    assert!(
        streams[owner].connections() > 1,
        "ready again: it gets new connections"
    );

    let (ok, said) = cli(&["backend", "drain", "stream", "b9"]);
    assert!(!ok);
    assert!(
        said.contains("has no backend \"b9\"") && said.contains("b0, b1, b2"),
        "{said}"
    );
    let (ok, said) = cli(&["backend", "maint", "nope", "b0"]);
    assert!(!ok);
    assert!(said.contains("no service \"nope\""), "{said}");
    gerbang.stop().unwrap();
}

/// A backend process that accepts connections but never answers (SIGSTOP) passes a TCP
/// check but not an HTTP one.
fn a_stopped_process_is_marked_down_by_the_http_check(mode: Mode) {
    let t = TwoArm::new(2).unwrap();
    let backends: Vec<_> = t
        .backends
        .iter()
        .map(|b| {
            b.ns.spawn(
                &gerbang_testbed::Cmd::new(env!("CARGO_BIN_EXE_gb-backend")).args([
                    b.ns.name(),
                    "http",
                    &format!("{}:{HTTP}", b.addr),
                    &format!("b{}", b.index),
                ]),
            )
            .unwrap()
        })
        .collect();
    let vip = SocketAddrV4::new(t.vip, 80);
    let gerbang = InProcess::start(
        &t.lb,
        &config(&t, mode, &[("web", 80, HTTP, FAST_HTTP_CHECK)], all),
    )
    .unwrap();
    wait_until(Duration::from_secs(5), || http_get(&t.client, vip)).unwrap();
    // The backends are processes of their own: b0 may have been checked before it listened.
    for b in &t.backends {
        gerbang.wait_for_backend_state("web", &format!("b{}", b.index), BackendState::Active);
    }

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(backends[0].pid() as i32),
        nix::sys::signal::Signal::SIGSTOP,
    )
    .unwrap();
    gerbang.wait_for_backend_state("web", "b0", BackendState::Down);
    let health = gerbang.status().health;
    let b0 = health.iter().find(|h| h.key.1 == "b0").unwrap();
    assert!(
        b0.last_result.as_deref().unwrap_or("").contains("timeout"),
        "{b0:?}"
    );
    let answers = tally(
        http_get_many(&t.client, vip, 6)
            .into_iter()
            .map(Result::unwrap),
    );
    assert_eq!(answers, BTreeMap::from([("b1".into(), 6)]));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(backends[0].pid() as i32),
        nix::sys::signal::Signal::SIGCONT,
    )
    .unwrap();
    gerbang.wait_for_backend_state("web", "b0", BackendState::Active);
    gerbang.stop().unwrap();
}

/// The backend set is rewritten over and over while requests run: none fails, no packet
/// is dropped or reset, and every answer comes from a backend of some complete set.
fn backend_sets_change_atomically_under_traffic(mode: Mode) {
    let t = TwoArm::new(3).unwrap();
    let _servers = http_servers(&t);
    let gerbang = InProcess::start(
        &t.lb,
        &config(&t, mode, &[("web", 80, HTTP, NO_CHECK)], all),
    )
    .unwrap();
    let vip = SocketAddrV4::new(t.vip, 80);
    let load = Load::start(&t, vip);
    let started = Instant::now();
    let mut flips = 0;
    while started.elapsed() < Duration::from_secs(3) {
        for victim in ["b0", "b1", "b2"] {
            gerbang.set_admin("web", victim, AdminState::Drain).unwrap();
            gerbang.set_admin("web", victim, AdminState::Ready).unwrap();
            flips += 2;
        }
    }
    let results = load.finish();
    let failed: Vec<_> = results.iter().filter(|(_, r)| r.is_err()).collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {:?}",
        failed.len(),
        results.len(),
        &failed[..failed.len().min(3)]
    );
    let report = gerbang.traffic();
    for (event, count) in &report.events {
        if event.verdict() == Verdict::Drop
            || matches!(
                event,
                Event::RstNoBackend | Event::RstBackendDown | Event::RstNoFlow
            )
        {
            assert_eq!(*count, 0, "{event:?}");
        }
    }
    eprintln!(
        "{} requests while the set was rewritten {flips} times",
        results.len()
    );
    assert!(results.len() > 100 && flips > 100);
    gerbang.stop().unwrap();
}

/// With no backend up, a new TCP connection is refused at once (a RST), not left hanging.
/// XDP answers the SYN itself; the proxy's listener has completed the handshake, so its
/// client sees the RST as a reset of the connection it just opened.
fn no_backend_up_means_connections_are_refused_at_once(mode: Mode) {
    let t = TwoArm::new(2).unwrap();
    let mut servers = http_servers(&t);
    let gerbang = InProcess::start(
        &t.lb,
        &config(&t, mode, &[("web", 80, HTTP, FAST_HTTP_CHECK)], all),
    )
    .unwrap();
    for server in &mut servers {
        server.stop();
    }
    gerbang.wait_for_backend_state("web", "b0", BackendState::Down);
    gerbang.wait_for_backend_state("web", "b1", BackendState::Down);
    let vip = SocketAddrV4::new(t.vip, 80);
    let started = Instant::now();
    let err = http_get(&t.client, vip).unwrap_err();
    let elapsed = started.elapsed();
    let expected = match mode {
        Mode::Xdp => std::io::ErrorKind::ConnectionRefused,
        Mode::Userspace => std::io::ErrorKind::ConnectionReset,
    };
    let refused = err.chain().any(|e| {
        e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == expected)
    });
    assert!(refused, "{err:#}");
    assert!(
        elapsed < Duration::from_millis(500),
        "refused after {elapsed:?}"
    );
    if mode == Mode::Xdp {
        assert!(gerbang.traffic().event(Event::RstNoBackend) >= 1);
    }
    gerbang.stop().unwrap();
}

/// A backend that fails its checks cuts its established flows by default (the client's
/// next packet gets a RST); with `on_backend_down = "keep"` they continue.
fn established_flows_of_a_down_backend(mode: Mode, policy: &str, cut: bool) {
    let t = TwoArm::new(2).unwrap();
    let http = http_servers(&t);
    let _streams = stream_servers(&t);
    // The stream service is checked over HTTP on the backend's web port.
    let lines = format!("on_backend_down = \"{policy}\"\n{FAST_HTTP_CHECK}port = {HTTP}\n");
    let gerbang = InProcess::start(
        &t.lb,
        &config(&t, mode, &[("stream", STREAM, STREAM, &lines)], all),
    )
    .unwrap();
    let vip = SocketAddrV4::new(t.vip, STREAM);
    let mut long = TcpStreamClient::connect(&t.client, vip).unwrap();
    assert_eq!(long.echo(b"hello").unwrap(), b"hello");
    // b0 takes the first flow; make its HTTP check fail while its stream server runs on.
    http[0].set_status(503);
    gerbang.wait_for_backend_state("stream", "b0", BackendState::Down);
    let started = Instant::now();
    let result = long.echo(b"after");
    if cut {
        let err = result.unwrap_err();
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "reset at once, not a timeout: {err:#}"
        );
        if mode == Mode::Xdp {
            assert!(gerbang.traffic().event(Event::RstBackendDown) >= 1);
        }
    } else {
        assert_eq!(result.unwrap(), b"after");
    }
    gerbang.stop().unwrap();
}

fn established_flows_of_a_down_backend_are_reset_by_default(mode: Mode) {
    established_flows_of_a_down_backend(mode, "reset", true);
}

fn established_flows_of_a_down_backend_continue_with_keep(mode: Mode) {
    established_flows_of_a_down_backend(mode, "keep", false);
}

/// An invalid file changes nothing; a valid one adding and removing backends leaves the
/// flows of the backends it keeps alone.
fn reload_applies_only_valid_changes_and_keeps_unrelated_flows(mode: Mode) {
    let t = TwoArm::new(3).unwrap();
    let streams = stream_servers(&t);
    let dir = TempDir::new();
    let with = |keep: &'static [usize]| {
        config(
            &t,
            mode,
            &[("stream", STREAM, STREAM, NO_CHECK)],
            move |_, i| keep.contains(&i).then(String::new),
        )
    };
    let text = isolate(&with(&[0, 1]));
    let path = dir.write("gerbang.toml", &text);
    let gerbang = InProcess::start_file(&t.lb, &path).unwrap();
    let vip = SocketAddrV4::new(t.vip, STREAM);
    let mut long = TcpStreamClient::connect(&t.client, vip).unwrap();
    assert_eq!(long.echo(b"one").unwrap(), b"one");
    assert_eq!(streams[0].connections(), 1, "the first flow is b0's");

    std::fs::write(&path, text.replace("listen = ", "listen == ")).unwrap();
    let err = gerbang.reload().unwrap_err();
    assert!(format!("{err:#}").contains("gerbang.toml:"), "{err:#}");
    assert_eq!(
        long.echo(b"two").unwrap(),
        b"two",
        "the old config still runs"
    );

    // Now b1 goes and b2 comes; b0 and its flow stay.
    let services = |text: String| text[text.find("\n[[service]]").unwrap()..].to_string();
    let new_text = text.replace(&services(with(&[0, 1])), &services(with(&[0, 2])));
    assert_ne!(new_text, text);
    std::fs::write(&path, new_text).unwrap();
    let said = gerbang.reload().unwrap();
    assert!(said.contains("2 backends (was 2)"), "{said}");
    assert_eq!(
        long.echo(b"three").unwrap(),
        b"three",
        "b0's flow survived the reload"
    );
    for _ in 0..4 {
        TcpStreamClient::connect(&t.client, vip)
            .unwrap()
            .echo(b"z")
            .unwrap();
    }
    assert_eq!(streams[1].connections(), 0, "b1 left the service");
    assert_eq!(streams[2].connections(), 2, "b2 joined it");
    assert_eq!(streams[0].connections(), 3);
    gerbang.stop().unwrap();
}

/// A reload adds a service (it serves at once, the others' flows untouched), moves one to
/// another port (the old port refuses, the new one serves) and removes one (its port
/// refuses): what XDP does with its service map, the proxy does with its listeners.
fn reload_adds_moves_and_removes_services(mode: Mode) {
    let t = TwoArm::new(2).unwrap();
    let streams = stream_servers(&t);
    let _http = http_servers(&t);
    let dir = TempDir::new();
    let with = |services: &[(&str, u16, u16, &str)]| isolate(&config(&t, mode, services, all));
    let path = dir.write(
        "gerbang.toml",
        &with(&[("stream", STREAM, STREAM, NO_CHECK)]),
    );
    let gerbang = InProcess::start_file(&t.lb, &path).unwrap();
    let stream_vip = SocketAddrV4::new(t.vip, STREAM);
    let web_vip = SocketAddrV4::new(t.vip, 80);
    let mut long = TcpStreamClient::connect(&t.client, stream_vip).unwrap();
    assert_eq!(long.echo(b"one").unwrap(), b"one");
    assert!(http_get(&t.client, web_vip).is_err(), "no web service yet");

    std::fs::write(
        &path,
        with(&[
            ("stream", STREAM, STREAM, NO_CHECK),
            ("web", 80, HTTP, NO_CHECK),
        ]),
    )
    .unwrap();
    let said = gerbang.reload().unwrap();
    assert!(said.contains("2 services (was 1)"), "{said}");
    let body = wait_until(Duration::from_secs(5), || http_get(&t.client, web_vip)).unwrap();
    assert!(body.starts_with('b'), "answered by a backend: {body:?}");
    assert_eq!(
        long.echo(b"two").unwrap(),
        b"two",
        "the stream flow survived adding a service"
    );

    // "stream" moves to the next port; "web" goes.
    let moved = SocketAddrV4::new(t.vip, STREAM + 1);
    std::fs::write(&path, with(&[("stream", STREAM + 1, STREAM, NO_CHECK)])).unwrap();
    let said = gerbang.reload().unwrap();
    assert!(said.contains("1 services (was 2)"), "{said}");
    let before = streams.iter().map(|s| s.connections()).sum::<u64>();
    let mut client = wait_until(Duration::from_secs(5), || {
        TcpStreamClient::connect(&t.client, moved)
    })
    .unwrap();
    assert_eq!(client.echo(b"moved").unwrap(), b"moved");
    assert_eq!(
        streams.iter().map(|s| s.connections()).sum::<u64>(),
        before + 1,
        "the moved service reached a backend"
    );
    for (gone, what) in [
        (stream_vip, "the old port"),
        (web_vip, "the removed service"),
    ] {
        let started = Instant::now();
        assert!(
            TcpStreamClient::connect(&t.client, gone).is_err(),
            "{what} ({gone}) still accepts"
        );
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{what} refuses at once"
        );
    }
    gerbang.stop().unwrap();
}

/// The proxy binds a reload's new listeners before it changes anything: when one cannot
/// be bound the reload is refused and the old services run on as they were; once it can,
/// the new service listens and a kept service takes its new connection limit.
#[test]
fn a_proxy_reload_that_cannot_bind_changes_nothing() {
    let t = TwoArm::new(2).unwrap();
    let _streams = stream_servers(&t);
    let _http = http_servers(&t);
    let dir = TempDir::new();
    let limited = format!("max_connections = 3\n{NO_CHECK}");
    let with =
        |services: &[(&str, u16, u16, &str)]| isolate(&config(&t, Mode::Userspace, services, all));
    let path = dir.write(
        "gerbang.toml",
        &with(&[("stream", STREAM, STREAM, NO_CHECK)]),
    );
    let gerbang = InProcess::start_file(&t.lb, &path).unwrap();
    let stream_vip = SocketAddrV4::new(t.vip, STREAM);
    let web_vip = SocketAddrV4::new(t.vip, 81);
    let mut open: Vec<TcpStreamClient> = (0..3)
        .map(|_| TcpStreamClient::connect(&t.client, stream_vip).unwrap())
        .collect();

    // Something else holds the new service's port.
    let squatter =
        t.lb.run(|| std::net::TcpListener::bind(web_vip))
            .unwrap()
            .unwrap();
    std::fs::write(
        &path,
        with(&[
            ("stream", STREAM, STREAM, &limited),
            ("web", 81, HTTP, NO_CHECK),
        ]),
    )
    .unwrap();
    let err = format!("{:#}", gerbang.reload().unwrap_err());
    assert!(err.contains("service web: listening on tcp"), "{err}");
    // The limit did not come in: a fourth connection is served.
    open.push(TcpStreamClient::connect(&t.client, stream_vip).unwrap());
    for stream in &mut open {
        assert_eq!(stream.echo(b"still").unwrap(), b"still");
    }

    // Another test's child process may hold a copy of the squatter's descriptor for the
    // moment between its fork and its exec, so the port frees within a moment, not at once.
    drop(squatter);
    let said = wait_until(Duration::from_secs(5), || gerbang.reload())
        .unwrap_or_else(|err| panic!("the reload after the port was freed: {err:#}"));
    assert!(said.contains("2 services (was 1)"), "{said}");
    let body = wait_until(Duration::from_secs(5), || http_get(&t.client, web_vip)).unwrap();
    assert!(body.starts_with('b'), "answered by a backend: {body:?}");
    // Four open, limit three: the next connection is refused, the open ones go on.
    let refused =
        TcpStreamClient::connect(&t.client, stream_vip).and_then(|mut extra| extra.echo(b"over"));
    assert!(
        refused.is_err(),
        "a connection over the new limit was served"
    );
    for stream in &mut open {
        assert_eq!(stream.echo(b"after").unwrap(), b"after");
    }
    gerbang.stop().unwrap();
}

/// A reload that shortens `timeouts.tcp_established` applies to the proxy's new
/// connections; one accepted before keeps the timeout it started with (as with HAProxy,
/// whose old process serves its connections to the end).
#[test]
fn a_proxy_reload_changes_the_idle_timeout_of_new_connections() {
    let t = TwoArm::new(1).unwrap();
    let _streams = stream_servers(&t);
    let dir = TempDir::new();
    let text = isolate(&config(
        &t,
        Mode::Userspace,
        &[("stream", STREAM, STREAM, NO_CHECK)],
        all,
    ));
    let path = dir.write("gerbang.toml", &text);
    let gerbang = InProcess::start_file(&t.lb, &path).unwrap();
    let vip = SocketAddrV4::new(t.vip, STREAM);
    let mut before = TcpStreamClient::connect(&t.client, vip).unwrap();
    assert_eq!(before.echo(b"one").unwrap(), b"one");

    std::fs::write(&path, text + "\n[timeouts]\ntcp_established = \"1s\"\n").unwrap();
    let said = gerbang.reload().unwrap();
    assert!(!said.contains("timeouts"), "applied, not deferred: {said}");
    let mut after = TcpStreamClient::connect(&t.client, vip).unwrap();
    assert_eq!(after.echo(b"two").unwrap(), b"two");

    thread::sleep(Duration::from_millis(2500));
    assert!(
        after.echo(b"idle").is_err(),
        "a connection accepted after the reload idles out after 1 s"
    );
    assert_eq!(
        before.echo(b"still").unwrap(),
        b"still",
        "the older connection keeps its 15 minutes"
    );
    gerbang.stop().unwrap();
}

/// A drained backend stays drained across a restart of gerbang (and a maintenance state
/// too), so an upgrade does not put it back into rotation; `ready` is kept as well.
fn admin_states_survive_a_restart(mode: Mode) {
    let t = TwoArm::new(3).unwrap();
    let streams = stream_servers(&t);
    let (_dir, path) = stream_config_file(&t, mode);
    let vip = SocketAddrV4::new(t.vip, STREAM);
    let new_flows_reach = |n: usize| {
        let before: Vec<u64> = streams.iter().map(|s| s.connections()).collect();
        for _ in 0..n {
            let mut client = TcpStreamClient::connect(&t.client, vip).unwrap();
            assert_eq!(client.echo(b"x").unwrap(), b"x");
        }
        streams
            .iter()
            .zip(before)
            .map(|(s, b)| s.connections() - b)
            .collect::<Vec<u64>>()
    };

    let gerbang = InProcess::start_file(&t.lb, &path).unwrap();
    gerbang
        .set_admin("stream", "b0", AdminState::Drain)
        .unwrap();
    gerbang
        .set_admin("stream", "b2", AdminState::Maint)
        .unwrap();
    gerbang.stop().unwrap();

    let admin = |gerbang: &InProcess| {
        gerbang
            .status()
            .admin
            .into_iter()
            .map(|((_, backend), state)| (backend, state))
            .collect::<BTreeMap<String, AdminState>>()
    };
    let gerbang = InProcess::start_file(&t.lb, &path).unwrap();
    assert_eq!(
        admin(&gerbang),
        BTreeMap::from([
            ("b0".to_string(), AdminState::Drain),
            ("b2".to_string(), AdminState::Maint)
        ])
    );
    assert_eq!(gerbang.backend_state("stream", "b0"), BackendState::Standby);
    assert_eq!(new_flows_reach(4), vec![0, 4, 0], "only b1 takes new flows");
    let said = gerbang
        .set_admin("stream", "b0", AdminState::Ready)
        .unwrap();
    assert!(!said.contains("not kept"), "{said}");
    gerbang.stop().unwrap();

    let gerbang = InProcess::start_file(&t.lb, &path).unwrap();
    assert_eq!(
        admin(&gerbang),
        BTreeMap::from([("b2".to_string(), AdminState::Maint)])
    );
    assert_eq!(new_flows_reach(4), vec![2, 2, 0]);
    gerbang.stop().unwrap();
}

/// Which data plane a scenario runs on; every scenario runs on both, with the same
/// assertions (a few about XDP's packet events only where XDP runs).
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
    a_failed_backend_leaves_rotation_and_no_later_request_fails,
    weights_three_to_one_split_new_flows_three_to_one,
    the_backup_serves_only_while_no_primary_is_up,
    drain_through_the_cli_keeps_live_connections_and_moves_new_ones,
    a_stopped_process_is_marked_down_by_the_http_check,
    backend_sets_change_atomically_under_traffic,
    no_backend_up_means_connections_are_refused_at_once,
    established_flows_of_a_down_backend_are_reset_by_default,
    established_flows_of_a_down_backend_continue_with_keep,
    reload_applies_only_valid_changes_and_keeps_unrelated_flows,
    reload_adds_moves_and_removes_services,
    admin_states_survive_a_restart,
);
