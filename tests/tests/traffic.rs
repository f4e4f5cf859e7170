//! Real traffic through the data path: a client, a load balancer and three backends in
//! their own network namespaces, gerbang running in-process inside the balancer's
//! namespace so its counters can be compared with what the other kernels saw.
//!
//! Every scenario runs with XDP attached natively, with XDP attached generically, and on
//! the userspace proxy, with the same assertions; those about XDP's own packet counters
//! and events only where XDP runs.

mod support;

use std::{collections::BTreeMap, net::SocketAddrV4};

use gerbang_testbed::{
    HttpBackend, OneArm, TcpStreamClient, TcpStreamServer, TwoArm, UdpEcho, http_get_many,
    udp_request,
};
use lb_common::{Event, Verdict};
use support::gerbang::{InProcess, tcp_segments_received};

const HTTP_PORT: u16 = 8080;
const STREAM_PORT: u16 = 9000;
const UDP_PORT: u16 = 5353;

fn config(
    interfaces: &[&str],
    snat: std::net::Ipv4Addr,
    vip: std::net::Ipv4Addr,
    backends: &[std::net::Ipv4Addr],
    plane: Plane,
) -> String {
    let interfaces: Vec<String> = interfaces.iter().map(|i| format!("{i:?}")).collect();
    let mut text = format!(
        "[dataplane]\ninterfaces = [{}]\n{}snat_address = \"{snat}\"\n",
        interfaces.join(", "),
        plane.dataplane_lines()
    );
    for (name, port, backend_port, protocol) in [
        ("web", 80, HTTP_PORT, "tcp"),
        ("stream", STREAM_PORT, STREAM_PORT, "tcp"),
        ("echo", 53, UDP_PORT, "udp"),
    ] {
        // No health checks: these tests count every connection the backends see.
        text += &format!(
            "\n[[service]]\nname = \"{name}\"\nlisten = \"{vip}:{port}\"\nprotocol = \"{protocol}\"\n\
             [service.check]\ntype = \"none\"\n"
        );
        for (i, addr) in backends.iter().enumerate() {
            text += &format!(
                "  [[service.backend]]\n  name = \"b{i}\"\n  address = \"{addr}:{backend_port}\"\n"
            );
        }
    }
    text
}

fn two_arm_config(t: &TwoArm, plane: Plane) -> String {
    config(
        &[&t.lb_client_if, &t.lb_backend_if],
        t.snat,
        t.vip,
        &t.backend_addrs(),
        plane,
    )
}

fn http_backends(backends: &[gerbang_testbed::Backend]) -> Vec<HttpBackend> {
    HttpBackend::start_on_each(backends, HTTP_PORT).unwrap()
}

/// Answers per backend name.
fn tally(answers: &[String]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for answer in answers {
        *counts.entry(answer.trim().to_string()).or_default() += 1;
    }
    counts
}

/// 300 HTTP requests, each on a new connection, through the VIP: all succeed, 100 land on
/// each backend, the backends see the SNAT address, and the XDP program's counters equal
/// the TCP segments the client's and the backends' kernels received. The balancer's own
/// TCP stack receives nothing: IP forwarding is off and there is no netfilter rule, so
/// only XDP can have carried the traffic. (TCP counters, not IP ones: the kernels' own
/// IGMP reports cross the segments too.)
fn round_robin_over_real_connections(plane: Plane) {
    let t = TwoArm::new(3).unwrap();
    let servers = http_backends(&t.backends);
    let gerbang = InProcess::start(&t.lb, &two_arm_config(&t, plane)).unwrap();
    assert_eq!(t.lb.sysctl_get("net.ipv4.ip_forward").unwrap(), "0");
    if let Ok(rules) = t.lb.exec("nft", ["list", "ruleset"]) {
        assert_eq!(rules.trim(), "", "no netfilter rules in the balancer");
    }
    let lb_ip_before = tcp_segments_received(&t.lb).unwrap();
    let client_ip_before = tcp_segments_received(&t.client).unwrap();
    let backend_ip_before: Vec<u64> = t
        .backends
        .iter()
        .map(|b| tcp_segments_received(&b.ns).unwrap())
        .collect();

    let vip = SocketAddrV4::new(t.vip, 80);
    let answers: Vec<String> = http_get_many(&t.client, vip, 300)
        .into_iter()
        .enumerate()
        .map(|(i, r)| r.unwrap_or_else(|e| panic!("request {i} failed: {e:#}")))
        .collect();
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

    // Let the last FINs and ACKs land before comparing counters with the kernels'.
    std::thread::sleep(std::time::Duration::from_millis(300));
    let report = gerbang.traffic();
    let web = report.service("web").unwrap();
    assert_eq!(web.counters.new_flows, 300);
    assert_eq!(web.counters.drops, 0);
    for (i, backend) in t.backends.iter().enumerate() {
        let counted = web.backend(&format!("b{i}")).unwrap().counters;
        assert_eq!(counted.new_flows, 100);
        if plane.is_xdp() {
            assert_eq!(
                counted.packets_to_backend,
                tcp_segments_received(&backend.ns).unwrap() - backend_ip_before[i],
                "b{i}: XDP count = packets its kernel received"
            );
        }
    }
    if !plane.is_xdp() {
        // The proxy terminates connections: the checks below are about XDP's packets.
        gerbang.stop().unwrap();
        return;
    }
    assert_eq!(
        web.counters.packets_to_client,
        tcp_segments_received(&t.client).unwrap() - client_ip_before,
        "XDP count = packets the client received"
    );
    assert_eq!(
        tcp_segments_received(&t.lb).unwrap() - lb_ip_before,
        0,
        "the balancer's TCP stack saw none of it"
    );
    for (event, count) in &report.events {
        if *count > 0 {
            assert!(
                matches!(event.verdict(), Verdict::Redirect | Verdict::PassUntouched),
                "{event:?} = {count}: every balanced packet was redirected"
            );
        }
    }
    assert_eq!(
        report.event(Event::Redirect),
        web.counters.packets_to_backend + web.counters.packets_to_client
    );
    gerbang.stop().unwrap();
}

/// A long-lived connection keeps its backend, bytes intact, while 30 other connections come
/// and go around it.
fn long_connection_keeps_its_backend(plane: Plane) {
    let t = TwoArm::new(3).unwrap();
    let streams: Vec<TcpStreamServer> =
        TcpStreamServer::start_on_each(&t.backends, STREAM_PORT).unwrap();
    let gerbang = InProcess::start(&t.lb, &two_arm_config(&t, plane)).unwrap();
    let vip = SocketAddrV4::new(t.vip, STREAM_PORT);

    let mut long = TcpStreamClient::connect(&t.client, vip).unwrap();
    let chunk: Vec<u8> = (0..64 * 1024).map(|i| (i * 7 % 251) as u8).collect();
    assert_eq!(long.echo(&chunk).unwrap(), chunk);
    let owner = streams
        .iter()
        .position(|s| s.connections() == 1)
        .expect("one backend has the connection");

    for round in 0..30 {
        let mut short = TcpStreamClient::connect(&t.client, vip).unwrap();
        assert_eq!(short.echo(b"ping").unwrap(), b"ping");
        drop(short);
        let payload: Vec<u8> = chunk.iter().map(|b| b.wrapping_add(round)).collect();
        assert_eq!(
            long.echo(&payload).unwrap(),
            payload,
            "round {round}: bytes intact"
        );
    }
    let total: u64 = streams.iter().map(TcpStreamServer::connections).sum();
    assert_eq!(total, 31);
    let per_backend: Vec<u64> = streams.iter().map(TcpStreamServer::connections).collect();
    assert_eq!(
        per_backend.iter().max().unwrap() - per_backend.iter().min().unwrap(),
        1,
        "round-robin: {per_backend:?}"
    );
    // The long connection's bytes all went to its backend: 31 chunks of 64 KiB.
    assert!(
        streams[owner].bytes() >= 31 * chunk.len() as u64,
        "owner received every chunk"
    );
    gerbang.stop().unwrap();
}

/// UDP request/response through the VIP, balanced per source port, answers from the VIP.
fn udp_request_response(plane: Plane) {
    let t = TwoArm::new(3).unwrap();
    let echoes: Vec<UdpEcho> = UdpEcho::start_on_each(&t.backends, UDP_PORT).unwrap();
    let gerbang = InProcess::start(&t.lb, &two_arm_config(&t, plane)).unwrap();
    let vip = SocketAddrV4::new(t.vip, 53);
    let mut answers = Vec::new();
    for i in 0..30u16 {
        let from = SocketAddrV4::new(t.client_addr, 20000 + i);
        let payload = format!("question {i}");
        let answer = udp_request(&t.client, Some(from), vip, payload.as_bytes()).unwrap();
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
        assert_eq!(echo.datagrams(), 10);
    }
    let report = gerbang.traffic();
    let udp = report.service("echo").unwrap();
    assert_eq!(
        (
            udp.counters.new_flows,
            udp.counters.packets_to_backend,
            udp.counters.packets_to_client
        ),
        (30, 30, 30)
    );
    gerbang.stop().unwrap();
}

/// One interface for clients and backends: with XDP, replies and requests leave the way
/// they came in (XDP_TX).
fn one_arm(plane: Plane) {
    let t = OneArm::new(3).unwrap();
    let _servers = http_backends(&t.backends);
    let config = config(&[&t.lb_if], t.snat, t.vip, &t.backend_addrs(), plane);
    let gerbang = InProcess::start(&t.lb, &config).unwrap();
    let answers: Vec<String> = http_get_many(&t.client, SocketAddrV4::new(t.vip, 80), 30)
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        tally(&answers),
        BTreeMap::from([("b0".into(), 10), ("b1".into(), 10), ("b2".into(), 10)])
    );
    let report = gerbang.traffic();
    let web = report.service("web").unwrap();
    assert_eq!(web.counters.new_flows, 30);
    if !plane.is_xdp() {
        gerbang.stop().unwrap();
        return;
    }
    assert_eq!(
        report.event(Event::Tx),
        web.counters.packets_to_backend + web.counters.packets_to_client
    );
    assert_eq!(report.event(Event::Redirect), 0);
    gerbang.stop().unwrap();
}

/// Where a scenario runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Plane {
    Native,
    Generic,
    Userspace,
}

impl Plane {
    fn dataplane_lines(self) -> &'static str {
        match self {
            Plane::Native => "mode = \"xdp\"\nattach = \"native\"\n",
            Plane::Generic => "mode = \"xdp\"\nattach = \"generic\"\n",
            Plane::Userspace => "mode = \"userspace\"\n",
        }
    }

    fn is_xdp(self) -> bool {
        self != Plane::Userspace
    }
}

macro_rules! on_every_data_plane {
    ($($scenario:ident),* $(,)?) => {
        mod native {
            $(#[test] fn $scenario() { super::$scenario(super::Plane::Native) })*
        }
        mod generic {
            $(#[test] fn $scenario() { super::$scenario(super::Plane::Generic) })*
        }
        mod userspace {
            $(#[test] fn $scenario() { super::$scenario(super::Plane::Userspace) })*
        }
    };
}

on_every_data_plane!(
    round_robin_over_real_connections,
    long_connection_keeps_its_backend,
    udp_request_response,
    one_arm,
);
