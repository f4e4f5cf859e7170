//! Self-tests of the testbed, using the kernel as the router instead of gerbang.
//!
//! Needs root. Every test owns its namespaces and checks they are gone afterwards.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::ExitStatusExt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::time::{Duration, Instant};

use gerbang_testbed::link::{format_mac, ifindex, mac};
use gerbang_testbed::process::stopped_cleanly;
use gerbang_testbed::{
    Cmd, HttpBackend, Netns, OneArm, TcpStreamClient, TcpStreamServer, TwoArm, UdpEcho, curl,
    http_get, http_get_many, udp_request,
};

fn ns_exists(name: &str) -> bool {
    Path::new("/run/netns").join(name).exists()
}

/// Inode of the network namespace the calling thread is in.
fn current_netns_inode() -> u64 {
    std::fs::metadata("/proc/thread-self/ns/net")
        .expect("stat /proc/thread-self/ns/net")
        .ino()
}

fn netns_inode(ns: &Netns) -> u64 {
    std::fs::metadata(ns.path()).expect("stat netns").ino()
}

/// Gone, or a zombie nobody reaps (no real init in this container).
fn process_dead(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn netns_lifecycle_exec_and_errors() {
    let ns = Netns::new("t").unwrap();
    let name = ns.name().to_owned();
    assert!(name.starts_with(&format!("gb{}x", std::process::id())));
    assert!(ns_exists(&name));
    assert!(
        ns.ip(["-o", "link", "show", "dev", "lo"])
            .unwrap()
            .contains("UP")
    );
    let addrs = ns.exec("ip", ["-o", "addr"]).unwrap();
    assert!(addrs.contains("127.0.0.1"), "{addrs}");

    let err = ns
        .exec("sh", ["-c", "echo oops >&2; exit 3"])
        .unwrap_err()
        .to_string();
    assert!(err.contains("oops") && err.contains("3"), "{err}");
    assert!(Netns::new("bad role!").is_err());

    let other = Netns::new("t").unwrap();
    assert_ne!(other.name(), name);
    drop(ns);
    drop(other);
    assert!(!ns_exists(&name));
}

#[test]
fn run_and_spawn_thread_enter_the_namespace() {
    let ns = Netns::new("t").unwrap();
    let want = netns_inode(&ns);
    assert_ne!(current_netns_inode(), want);
    assert_eq!(ns.run(current_netns_inode).unwrap(), want);
    let thread = ns.spawn_thread("probe", current_netns_inode).unwrap();
    assert_eq!(thread.join().unwrap(), want);
    // The caller stays where it was.
    assert_ne!(current_netns_inode(), want);
    // A panic inside `run` reaches the caller.
    let panicked = catch_unwind(AssertUnwindSafe(|| ns.run(|| panic!("inside"))));
    assert!(panicked.is_err());
}

#[test]
fn sysctl_writes_the_namespace_value_only() {
    let root_before = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap();
    let ns = Netns::new("t").unwrap();
    let other = Netns::new("t").unwrap();
    let flipped = if root_before.trim() == "1" { "0" } else { "1" };
    ns.sysctl("net.ipv4.ip_forward", flipped).unwrap();
    assert_eq!(ns.sysctl_get("net.ipv4.ip_forward").unwrap(), flipped);
    // Seen the same way by a program inside the namespace ...
    let seen = ns.exec("sysctl", ["-n", "net.ipv4.ip_forward"]).unwrap();
    assert_eq!(seen.trim(), flipped);
    // ... but not by the root namespace or another namespace.
    let root_after = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap();
    assert_eq!(root_after, root_before);
    assert_eq!(
        other.sysctl_get("net/ipv4/ip_forward").unwrap(),
        root_before.trim()
    );
    assert!(ns.sysctl("net.ipv4.../x", "1").is_err());
}

#[test]
fn spawned_programs_run_inside_and_are_stopped() {
    let ns = Netns::new("t").unwrap();
    let log = std::env::temp_dir().join(format!("{}-spawn.log", ns.name()));
    let mut child = ns
        .spawn(
            &Cmd::new("sh")
                .args(["-c", "echo \"hello $GREETING\"; exec sleep 30"])
                .env("GREETING", "there")
                .log_to(&log),
        )
        .unwrap();
    let pid = child.pid();
    assert!(wait_until(Duration::from_secs(2), || {
        std::fs::read_to_string(&log).is_ok_and(|l| l.contains("hello there"))
    }));
    let child_ns = std::fs::metadata(format!("/proc/{pid}/ns/net"))
        .unwrap()
        .ino();
    assert_eq!(child_ns, netns_inode(&ns));
    assert!(child.try_wait().unwrap().is_none());
    let status = child.terminate().unwrap();
    assert_eq!(status.signal(), Some(libc::SIGTERM));
    assert!(stopped_cleanly(status));
    std::fs::remove_file(&log).unwrap();

    // A program ignoring SIGTERM is killed after the grace period.
    let mut stubborn = ns
        .spawn(&Cmd::new("sh").args(["-c", "trap '' TERM; while :; do sleep 0.1; done"]))
        .unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let status = stubborn.terminate().unwrap();
    assert_eq!(status.signal(), Some(libc::SIGKILL));
}

#[test]
fn dropping_a_namespace_kills_what_runs_inside() {
    let ns = Netns::new("t").unwrap();
    let name = ns.name().to_owned();
    // An orphan nobody holds a guard for.
    let pid: i32 = ns
        .exec("sh", ["-c", "sleep 60 >/dev/null 2>&1 & echo $!"])
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(ns.pids().unwrap(), vec![pid]);
    // And a guarded child whose guard is leaked.
    let guarded = ns.spawn(&Cmd::new("sleep").arg("60")).unwrap();
    let guarded_pid = guarded.pid() as i32;
    std::mem::forget(guarded);
    drop(ns);
    assert!(!ns_exists(&name));
    assert!(wait_until(Duration::from_secs(2), || process_dead(pid)));
    assert!(wait_until(Duration::from_secs(2), || process_dead(
        guarded_pid
    )));
}

#[test]
fn two_arm_routes_through_the_lb_when_forwarding_is_on() {
    let start = Instant::now();
    let topo = TwoArm::new(3).unwrap();
    let setup = start.elapsed();
    let names: Vec<String> = topo
        .namespaces()
        .iter()
        .map(|n| n.name().to_owned())
        .collect();

    // Addresses and interfaces as documented.
    let lbc = topo.lb.ip(["-o", "addr", "show", "dev", "lbc"]).unwrap();
    assert!(
        lbc.contains("10.200.1.1/24") && lbc.contains("10.200.100.1/32"),
        "{lbc}"
    );
    assert_eq!(topo.snat, Ipv4Addr::new(10, 200, 2, 1));
    assert_eq!(
        topo.backend_addrs(),
        [10, 11, 12].map(|i| Ipv4Addr::new(10, 200, 2, i))
    );
    assert!(ifindex(&topo.lb, &topo.lb_client_if).unwrap() > 1);
    let lb_mac = mac(&topo.lb, &topo.lb_client_if).unwrap();
    assert_ne!(lb_mac, [0; 6]);
    let offloads = topo.client.exec("ethtool", ["-k", "c0"]).unwrap();
    assert!(offloads.contains("tx-checksumming: off"), "{offloads}");
    assert!(
        offloads.contains("generic-receive-offload: on"),
        "{offloads}"
    );
    let port = topo.switch.exec("ethtool", ["-k", "s-lb"]).unwrap();
    assert!(port.contains("generic-receive-offload: on"), "{port}");
    let backend = topo.backends[1].ns.exec("ethtool", ["-k", "b1"]).unwrap();
    assert!(backend.contains("tx-checksumming: off"), "{backend}");

    // Forwarding is off by default: the lb's kernel drops what is not addressed to it.
    assert_eq!(topo.lb.sysctl_get("net.ipv4.ip_forward").unwrap(), "0");
    let b0 = topo.backends[0].addr;
    let http_b0 = SocketAddrV4::new(b0, 80);
    let servers: Vec<HttpBackend> = HttpBackend::start_on_each(&topo.backends, 80).unwrap();
    let blocked = topo
        .client
        .run(|| TcpStream::connect_timeout(&http_b0.into(), Duration::from_millis(300)))
        .unwrap();
    assert!(blocked.is_err());
    // The lb itself is reachable on both arms without forwarding.
    topo.lb
        .run(|| TcpStream::connect_timeout(&http_b0.into(), Duration::from_secs(2)))
        .unwrap()
        .unwrap();

    topo.set_forwarding(true).unwrap();
    for (backend, server) in topo.backends.iter().zip(&servers) {
        let addr = SocketAddrV4::new(backend.addr, 80);
        assert_eq!(
            http_get(&topo.client, addr).unwrap(),
            format!("b{}\n", backend.index)
        );
        assert_eq!(server.requests(), 1);
    }
    let neigh = topo.client.ip(["neigh", "show", "10.200.1.1"]).unwrap();
    assert!(neigh.contains(&format_mac(lb_mac)), "{neigh}");
    let many = http_get_many(
        &topo.client,
        SocketAddrV4::new(topo.backends[1].addr, 80),
        20,
    );
    assert!(
        many.iter().all(|r| r.as_deref().ok() == Some("b1\n")),
        "{many:?}"
    );
    assert_eq!(servers[1].requests(), 21);
    assert_eq!(servers[1].connections(), 21);
    // Kernel routing, no NAT: the backend sees the client's own address.
    assert_eq!(
        servers[1].peer_ips().into_iter().collect::<Vec<_>>(),
        vec![(topo.client_addr, 21)]
    );
    assert_eq!(servers[1].peers().len(), 21);

    // curl, a real peer.
    let body = curl(&topo.client, &format!("http://{}/", topo.backends[2].addr)).unwrap();
    assert_eq!(body, "b2\n");
    assert_eq!(servers[2].requests(), 2);

    // Health flips.
    servers[2].set_status(503);
    let err = http_get(&topo.client, SocketAddrV4::new(topo.backends[2].addr, 80)).unwrap_err();
    assert!(err.to_string().contains("503"), "{err:#}");
    assert!(curl(&topo.client, &format!("http://{}/", topo.backends[2].addr)).is_err());

    // UDP echo.
    let echoes: Vec<UdpEcho> = UdpEcho::start_on_each(&topo.backends, 5353).unwrap();
    for backend in &topo.backends {
        let to = SocketAddrV4::new(backend.addr, 5353);
        let reply = udp_request(&topo.client, None, to, b"ping").unwrap();
        assert_eq!(reply, format!("b{}:ping", backend.index).into_bytes());
    }
    let from = SocketAddrV4::new(topo.client_addr, 40000);
    let reply = udp_request(&topo.client, Some(from), SocketAddrV4::new(b0, 5353), b"x").unwrap();
    assert_eq!(reply, b"b0:x");
    assert_eq!(echoes[0].datagrams(), 2);
    assert!(echoes[0].peers().contains(&from));

    // A long-lived stream echoes every byte.
    let stream_server =
        TcpStreamServer::start(&topo.backends[0].ns, SocketAddrV4::new(b0, 9000), "s0").unwrap();
    let mut stream = TcpStreamClient::connect(&topo.client, stream_server.addr()).unwrap();
    assert_eq!(*stream.local_addr().ip(), topo.client_addr);
    let data: Vec<u8> = (0..1_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    for chunk in data.chunks(300_000) {
        assert_eq!(stream.echo(chunk).unwrap(), chunk);
        // Other connections come and go meanwhile.
        assert_eq!(http_get(&topo.client, http_b0).unwrap(), "b0\n");
    }
    assert_eq!(stream_server.bytes(), data.len() as u64);
    assert_eq!(stream_server.connections(), 1);
    assert_eq!(stream_server.peers(), vec![stream.local_addr()]);

    let start = Instant::now();
    drop(stream);
    drop(stream_server);
    drop(echoes);
    drop(servers);
    let servers_stop = start.elapsed();
    let start = Instant::now();
    drop(topo);
    let teardown = start.elapsed();
    eprintln!("TwoArm(3): setup {setup:?}, servers stop {servers_stop:?}, teardown {teardown:?}");
    assert!(names.iter().all(|n| !ns_exists(n)));
}

#[test]
fn http_keep_alive_and_pipelining() {
    let topo = OneArm::new(1).unwrap();
    let addr = SocketAddrV4::new(topo.backends[0].addr, 8080);
    let server = HttpBackend::start(&topo.backends[0].ns, addr, "ka").unwrap();
    let responses = topo
        .client
        .run(|| {
            let mut s = TcpStream::connect_timeout(&addr.into(), Duration::from_secs(2)).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let get = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
            // One request, read its answer, then two pipelined, the last with a body and
            // `Connection: close`.
            s.write_all(get.as_bytes()).unwrap();
            let mut first = vec![0u8; 4096];
            let n = s.read(&mut first).unwrap();
            first.truncate(n);
            s.write_all(
                format!(
                    "{get}POST /x HTTP/1.1\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello"
                )
                .as_bytes(),
            )
            .unwrap();
            let mut rest = String::new();
            s.read_to_string(&mut rest).unwrap();
            (String::from_utf8(first).unwrap(), rest)
        })
        .unwrap();
    assert!(
        responses.0.starts_with("HTTP/1.1 200 OK\r\n"),
        "{}",
        responses.0
    );
    assert!(
        responses.0.contains("Connection: keep-alive") && responses.0.ends_with("\r\n\r\nka\n")
    );
    assert_eq!(
        responses.1.matches("HTTP/1.1 200 OK").count(),
        2,
        "{}",
        responses.1
    );
    assert!(
        responses.1.ends_with("Connection: close\r\n\r\nka\n"),
        "{}",
        responses.1
    );
    assert_eq!(server.requests(), 3);
    assert_eq!(server.connections(), 1);
    // HTTP/1.0 without keep-alive is closed after one answer.
    let ten = topo
        .client
        .run(|| {
            let mut s = TcpStream::connect_timeout(&addr.into(), Duration::from_secs(2)).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            s.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
            let mut all = String::new();
            s.read_to_string(&mut all).unwrap();
            all
        })
        .unwrap();
    assert!(
        ten.contains("Connection: close") && ten.ends_with("ka\n"),
        "{ten}"
    );
}

#[test]
fn one_arm_reaches_backends_on_the_segment() {
    let start = Instant::now();
    let topo = OneArm::new(2).unwrap();
    let setup = start.elapsed();
    let lb0 = topo.lb.ip(["-o", "addr", "show", "dev", "lb0"]).unwrap();
    assert!(
        lb0.contains("10.200.0.1/24") && lb0.contains("10.200.0.100/32"),
        "{lb0}"
    );
    assert_eq!(topo.lb.sysctl_get("net.ipv4.ip_forward").unwrap(), "0");
    let port = topo.switch.exec("ethtool", ["-k", "s-lb"]).unwrap();
    assert!(port.contains("generic-receive-offload: on"), "{port}");

    let servers: Vec<HttpBackend> = topo
        .backends
        .iter()
        .map(|b| {
            HttpBackend::start(
                &b.ns,
                SocketAddrV4::new(b.addr, 80),
                &format!("one{}", b.index),
            )
            .unwrap()
        })
        .collect();
    for (backend, server) in topo.backends.iter().zip(&servers) {
        let addr = SocketAddrV4::new(backend.addr, 80);
        assert_eq!(
            http_get(&topo.client, addr).unwrap(),
            format!("one{}\n", backend.index)
        );
        let url = format!("http://{}/", backend.addr);
        assert_eq!(
            curl(&topo.client, &url).unwrap(),
            format!("one{}\n", backend.index)
        );
        assert_eq!(server.requests(), 2);
        assert_eq!(server.peer_ips().get(&topo.client_addr), Some(&2));
    }
    let echo = UdpEcho::start(
        &topo.backends[1].ns,
        SocketAddrV4::new(topo.backends[1].addr, 7),
        "u",
    )
    .unwrap();
    let reply = udp_request(&topo.client, None, echo.addr(), b"hi").unwrap();
    assert_eq!(reply, b"u:hi");
    // The VIP answers ARP from the lb: a client socket can reach the lb's kernel there.
    let vip = SocketAddrV4::new(topo.vip, 80);
    let lb_server = HttpBackend::start(&topo.lb, vip, "lb").unwrap();
    assert_eq!(http_get(&topo.client, vip).unwrap(), "lb\n");
    drop((lb_server, echo, servers));
    let start = Instant::now();
    drop(topo);
    eprintln!("OneArm(2): setup {setup:?}, teardown {:?}", start.elapsed());
}

#[test]
fn topology_is_torn_down_after_a_panic() {
    let mut names = Vec::new();
    let result = catch_unwind(AssertUnwindSafe(|| {
        let topo = TwoArm::new(1).unwrap();
        names.extend(topo.namespaces().iter().map(|n| n.name().to_owned()));
        let _server = HttpBackend::start(
            &topo.backends[0].ns,
            SocketAddrV4::new(topo.backends[0].addr, 80),
            "doomed",
        )
        .unwrap();
        let _sleeper = topo.lb.spawn(&Cmd::new("sleep").arg("60")).unwrap();
        assert!(names.iter().all(|n| ns_exists(n)));
        panic!("test body failed");
    }));
    assert!(result.is_err());
    assert_eq!(names.len(), 4);
    assert!(names.iter().all(|n| !ns_exists(n)), "{names:?}");
}

#[test]
fn topologies_coexist_in_parallel() {
    let root_links_before = root_link_names();
    let run = |tag: &'static str| {
        std::thread::spawn(move || {
            let topo = TwoArm::new(2).unwrap();
            topo.set_forwarding(true).unwrap();
            let servers: Vec<HttpBackend> = topo
                .backends
                .iter()
                .map(|b| {
                    HttpBackend::start(
                        &b.ns,
                        SocketAddrV4::new(b.addr, 80),
                        &format!("{tag}{}", b.index),
                    )
                    .unwrap()
                })
                .collect();
            for backend in &topo.backends {
                let bodies = http_get_many(&topo.client, SocketAddrV4::new(backend.addr, 80), 10);
                for body in bodies {
                    assert_eq!(body.unwrap(), format!("{tag}{}\n", backend.index));
                }
            }
            assert!(servers.iter().all(|s| s.requests() == 10));
            let names: Vec<String> = topo
                .namespaces()
                .iter()
                .map(|n| n.name().to_owned())
                .collect();
            drop(servers);
            drop(topo);
            names
        })
    };
    let (a, b) = (run("A"), run("B"));
    let (a, b) = (a.join().unwrap(), b.join().unwrap());
    assert!(a.iter().all(|n| !b.contains(n)));
    assert!(a.iter().chain(&b).all(|n| !ns_exists(n)));
    // Nothing leaked into the root namespace.
    let created = [
        "c0", "lbc", "lbb", "s-lb", "b0", "b1", "s-b0", "s-b1", "br0",
    ];
    let root_links_after = root_link_names();
    for name in created {
        assert_eq!(
            root_links_before.contains(&name.to_owned()),
            root_links_after.contains(&name.to_owned()),
            "{name}"
        );
    }
}

/// Interface names in the root namespace (read only).
fn root_link_names() -> Vec<String> {
    let out = std::process::Command::new("ip")
        .args(["-o", "link"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split(':').nth(1))
        .map(|n| n.trim().split('@').next().unwrap_or_default().to_owned())
        .collect()
}
