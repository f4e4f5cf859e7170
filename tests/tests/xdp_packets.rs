//! The XDP program judged packet by packet through BPF_PROG_TEST_RUN: crafted frames in,
//! verdict, rewritten frame and counters out. Checksums are verified from scratch by
//! `support::frames`, independently of the program's incremental updates.
//!
//! Each test builds its own network namespace with two veth pairs (client side `cli0`,
//! backend side `bk0`) and permanent neighbour entries, so the kernel's FIB lookup answers
//! the way it would on a real host; no packet is ever transmitted.

mod support;

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddrV4},
};

use gerbang::{
    config::Config,
    dataplane::{
        Dataplane as _, Plan,
        xdp::{BackgroundMaps, FlowSweeper, NextHopResolver, XdpDataplane, kernel_timeouts},
    },
};

type NextHopMap = aya::maps::HashMap<aya::maps::MapData, u32, lb_common::NextHop>;
use gerbang_testbed::{Netns, link};
use lb_common::Event;
use support::frames::{self, ACK, FIN, FrameSpec, RST, SYN};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_REDIRECT: u32 = 4;

const CLIENT_MAC: [u8; 6] = [0x02, 0xc1, 0, 0, 0, 0x02];
const BACKEND_MACS: [[u8; 6]; 4] = [
    [0x02, 0xb0, 0, 0, 0, 0x10],
    [0x02, 0xb0, 0, 0, 0, 0x11],
    [0x02, 0xb0, 0, 0, 0, 0x12],
    [0x02, 0xb0, 0, 0, 0, 0x20],
];
const BACKEND_IPS: [Ipv4Addr; 4] = [
    Ipv4Addr::new(10, 201, 2, 10),
    Ipv4Addr::new(10, 201, 2, 11),
    Ipv4Addr::new(10, 201, 2, 12),
    Ipv4Addr::new(10, 201, 2, 20),
];
const VIP: Ipv4Addr = Ipv4Addr::new(10, 201, 100, 1);
const SNAT: Ipv4Addr = Ipv4Addr::new(10, 201, 2, 1);
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 201, 1, 2);

fn config(snat_ports: &str, tcp_syn_timeout: &str) -> String {
    format!(
        r#"
[dataplane]
interfaces = ["cli0", "bk0"]
attach = "generic"
snat_address = "10.201.2.1"
snat_ports = "{snat_ports}"

[timeouts]
tcp_syn = "{tcp_syn_timeout}"

[[service]]
name = "web"
listen = "10.201.100.1:80"
protocol = "tcp"
  [[service.backend]]
  name = "b1"
  address = "10.201.2.10:8080"
  [[service.backend]]
  name = "b2"
  address = "10.201.2.11:8080"
  [[service.backend]]
  name = "b3"
  address = "10.201.2.12:8080"

[[service]]
name = "dns"
listen = "10.201.100.1:53"
protocol = "udp"
  [[service.backend]]
  name = "d1"
  address = "10.201.2.20:5353"
"#
    )
}

/// A namespace wired like a load balancer with one client-side and one backend-side link.
fn namespace(forwarding: bool) -> Netns {
    let ns = Netns::new("pkt").unwrap();
    // No IPv6 chatter (router solicitations, DAD) reaching the attached program: the
    // tests count every packet it sees.
    ns.sysctl("net.ipv6.conf.all.disable_ipv6", "1").unwrap();
    ns.sysctl("net.ipv6.conf.default.disable_ipv6", "1")
        .unwrap();
    for (a, b) in [("cli0", "cli1"), ("bk0", "bk1")] {
        link::veth_pair(&ns, a, &ns, b).unwrap();
        link::set_up(&ns, a).unwrap();
        link::set_up(&ns, b).unwrap();
    }
    link::add_addr(&ns, "cli0", "10.201.1.1/24").unwrap();
    link::add_addr(&ns, "bk0", "10.201.2.1/24").unwrap();
    let neighbours = [(CLIENT, CLIENT_MAC, "cli0")].into_iter().chain(
        BACKEND_IPS
            .iter()
            .zip(BACKEND_MACS)
            .map(|(ip, mac)| (*ip, mac, "bk0")),
    );
    for (ip, mac, dev) in neighbours {
        let (ip, mac) = (ip.to_string(), link::format_mac(mac));
        ns.ip([
            "neigh",
            "add",
            &ip,
            "lladdr",
            &mac,
            "dev",
            dev,
            "nud",
            "permanent",
        ])
        .unwrap();
    }
    ns.sysctl("net.ipv4.ip_forward", if forwarding { "1" } else { "0" })
        .unwrap();
    ns
}

/// The XDP program loaded in the test's namespace, attached (generic) so that its redirect
/// map holds both interfaces. Must be created on a thread inside the namespace.
struct Rig {
    dataplane: XdpDataplane,
    timeouts: lb_common::Timeouts,
    sweeper: FlowSweeper,
    /// Taken by the test that runs a resolver.
    next_hops: Option<NextHopMap>,
    cli0: u32,
    bk0: u32,
    cli0_mac: [u8; 6],
    bk0_mac: [u8; 6],
    runs: u64,
}

impl Rig {
    fn new(config_text: &str) -> Rig {
        let config = Config::parse(config_text, "<packet test>").unwrap();
        let (mut dataplane, BackgroundMaps { sweeper, next_hops }) =
            XdpDataplane::load(&config.dataplane, &config.timeouts, None).unwrap();
        dataplane
            .attach(&config.dataplane.interfaces, config.dataplane.attach)
            .unwrap();
        dataplane
            .apply(&Plan::compute(&config, &BTreeMap::new()))
            .unwrap();
        Rig {
            timeouts: kernel_timeouts(&config.timeouts),
            dataplane,
            sweeper,
            next_hops: Some(next_hops),
            cli0: ifindex("cli0"),
            bk0: ifindex("bk0"),
            cli0_mac: mac("cli0"),
            bk0_mac: mac("bk0"),
            runs: 0,
        }
    }

    fn run(&mut self, frame: &[u8], ingress: u32) -> (u32, Vec<u8>) {
        self.runs += 1;
        self.dataplane.test_run(frame, ingress).unwrap()
    }

    /// A client frame arriving on cli0, addressed to our MAC there.
    fn send_from_client(&mut self, spec: FrameSpec) -> (u32, Vec<u8>) {
        let frame = spec.macs(CLIENT_MAC, self.cli0_mac).build();
        self.run(&frame, self.cli0)
    }

    /// A backend frame arriving on bk0.
    fn send_from_backend(&mut self, backend: usize, spec: FrameSpec) -> (u32, Vec<u8>) {
        let frame = spec.macs(BACKEND_MACS[backend], self.bk0_mac).build();
        self.run(&frame, self.bk0)
    }

    fn event(&self, event: Event) -> u64 {
        self.dataplane.traffic().unwrap().event(event)
    }

    /// Every run counted under exactly one event.
    fn assert_events_add_up(&self) {
        let report = self.dataplane.traffic().unwrap();
        let total: u64 = report.events.iter().map(|(_, n)| n).sum();
        assert_eq!(total, self.runs, "events {:?}", report.events);
    }
}

fn ifindex(name: &str) -> u32 {
    let name = std::ffi::CString::new(name).unwrap();
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    assert_ne!(index, 0);
    index
}

/// The MAC of an interface in the calling thread's namespace (/sys would show the root
/// namespace's devices).
fn mac(name: &str) -> [u8; 6] {
    let sock = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0) };
    assert!(sock >= 0);
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    let rc = unsafe { libc::ioctl(sock, libc::SIOCGIFHWADDR, &mut req) };
    unsafe { libc::close(sock) };
    assert_eq!(rc, 0, "SIOCGIFHWADDR {name}");
    let data = unsafe { req.ifr_ifru.ifru_hwaddr.sa_data };
    std::array::from_fn(|i| data[i] as u8)
}

fn client(port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(CLIENT, port)
}

fn vip(port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(VIP, port)
}

fn backend(index: usize, port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(BACKEND_IPS[index], port)
}

/// Asserts the checksums verify and returns the decoded frame.
fn checked(frame: &[u8]) -> frames::Decoded {
    assert!(frames::ipv4_checksum_ok(frame), "IPv4 checksum");
    assert!(frames::l4_checksum_ok(frame), "TCP/UDP checksum");
    frames::decode(frame)
}

#[test]
fn a_tcp_flow_is_translated_to_a_backend_and_back() {
    let ns = namespace(true);
    ns.run(|| {
        let mut rig = Rig::new(&config("20000-20099", "30s"));

        let syn = FrameSpec::tcp(client(40001), vip(80), SYN).payload(b"hi");
        let (action, out) = rig.send_from_client(syn);
        assert_eq!(action, XDP_REDIRECT);
        let to_backend = checked(&out);
        assert_eq!(to_backend.dst, backend(0, 8080));
        assert_eq!(*to_backend.src.ip(), SNAT);
        let snat_port = to_backend.src.port();
        assert!(
            (20000..=20099).contains(&snat_port),
            "SNAT port {snat_port}"
        );
        assert_eq!(to_backend.eth_dst, BACKEND_MACS[0]);
        assert_eq!(to_backend.eth_src, rig.bk0_mac);
        assert_eq!((to_backend.tcp_flags, to_backend.ttl), (SYN, 64));
        assert_eq!(to_backend.payload, b"hi");

        let syn_ack = FrameSpec::tcp(
            backend(0, 8080),
            SocketAddrV4::new(SNAT, snat_port),
            SYN | ACK,
        );
        let (action, out) = rig.send_from_backend(0, syn_ack);
        assert_eq!(action, XDP_REDIRECT);
        let to_client = checked(&out);
        assert_eq!(to_client.src, vip(80));
        assert_eq!(to_client.dst, client(40001));
        assert_eq!(to_client.eth_dst, CLIENT_MAC);
        assert_eq!(to_client.eth_src, rig.cli0_mac);

        // Later packets of the flow keep its backend and its SNAT port.
        let (_, out) =
            rig.send_from_client(FrameSpec::tcp(client(40001), vip(80), ACK).payload(b"GET /"));
        let again = checked(&out);
        assert_eq!(again.dst, backend(0, 8080));
        assert_eq!(again.src.port(), snat_port);
        assert_eq!(again.payload, b"GET /");

        let report = rig.dataplane.traffic().unwrap();
        let web = report.service("web").unwrap();
        assert_eq!(web.counters.new_flows, 1);
        assert_eq!(web.counters.packets_to_backend, 2);
        assert_eq!(web.counters.packets_to_client, 1);
        assert_eq!(web.backend("b1").unwrap().counters.new_flows, 1);
        assert_eq!(web.backend("b2").unwrap().counters.new_flows, 0);
        assert_eq!(report.event(Event::Redirect), 3);
        rig.assert_events_add_up();
    })
    .unwrap();
}

#[test]
fn new_flows_take_the_backends_in_turn_with_distinct_snat_ports() {
    let ns = namespace(true);
    ns.run(|| {
        let mut rig = Rig::new(&config("20000-20099", "30s"));
        let mut ports = std::collections::BTreeSet::new();
        for i in 0..9u16 {
            let (action, out) =
                rig.send_from_client(FrameSpec::tcp(client(41000 + i), vip(80), SYN));
            assert_eq!(action, XDP_REDIRECT);
            let out = checked(&out);
            assert_eq!(out.dst, backend(usize::from(i % 3), 8080), "flow {i}");
            assert!(
                ports.insert(out.src.port()),
                "SNAT port reused: {}",
                out.src.port()
            );
        }
        let web = rig.dataplane.traffic().unwrap();
        let web = web.service("web").unwrap();
        for name in ["b1", "b2", "b3"] {
            assert_eq!(web.backend(name).unwrap().counters.new_flows, 3, "{name}");
        }
        rig.assert_events_add_up();
    })
    .unwrap();
}

#[test]
fn udp_datagrams_are_balanced_and_translated_back() {
    let ns = namespace(true);
    ns.run(|| {
        let mut rig = Rig::new(&config("20000-20099", "30s"));
        let (action, out) = rig.send_from_client(FrameSpec::udp(client(5000), vip(53), b"query"));
        assert_eq!(action, XDP_REDIRECT);
        let out = checked(&out);
        assert_eq!(out.dst, backend(3, 5353));
        assert_eq!(out.payload, b"query");
        let snat = out.src;

        let (action, reply) =
            rig.send_from_backend(3, FrameSpec::udp(backend(3, 5353), snat, b"answer"));
        assert_eq!(action, XDP_REDIRECT);
        let reply = checked(&reply);
        assert_eq!((reply.src, reply.dst), (vip(53), client(5000)));
        assert_eq!(reply.payload, b"answer");

        // A datagram without a checksum keeps having none.
        let mut spec = FrameSpec::udp(client(5001), vip(53), b"no checksum");
        spec.udp_no_checksum = true;
        let (action, out) = rig.send_from_client(spec);
        assert_eq!(action, XDP_REDIRECT);
        assert_eq!(
            &out[frames::ETH_HLEN + 20 + 6..frames::ETH_HLEN + 20 + 8],
            &[0, 0]
        );
        assert!(frames::ipv4_checksum_ok(&out));
        rig.assert_events_add_up();
    })
    .unwrap();
}

#[test]
fn traffic_for_no_service_passes_byte_identical() {
    let ns = namespace(true);
    ns.run(|| {
        let mut rig = Rig::new(&config("20000-20099", "30s"));
        let lb_own = SocketAddrV4::new(Ipv4Addr::new(10, 201, 1, 1), 22);
        let cases: Vec<(Vec<u8>, Event)> = vec![
            // SSH to the balancer's own address.
            (
                FrameSpec::tcp(client(50000), lb_own, SYN).build(),
                Event::PassNotLocal,
            ),
            // A VIP port no service listens on.
            (
                FrameSpec::tcp(client(50001), vip(22), SYN).build(),
                Event::PassNoService,
            ),
            // The host's own traffic to the SNAT address (not a reply of a live flow).
            (
                FrameSpec::udp(backend(0, 8080), SocketAddrV4::new(SNAT, 20001), b"x").build(),
                Event::PassHostTraffic,
            ),
            (
                FrameSpec::udp(client(1), SocketAddrV4::new(SNAT, 53), b"dns").build(),
                Event::PassHostTraffic,
            ),
            (icmp_echo(VIP), Event::PassNoService),
            (arp_request(), Event::PassNotIpv4),
            (ipv6_frame(), Event::PassNotIpv4),
        ];
        for (frame, event) in cases {
            let before = rig.event(event);
            let (action, out) = rig.run(&frame, rig.cli0);
            assert_eq!(action, XDP_PASS, "{event:?}");
            assert_eq!(out, frame, "{event:?}: the frame must pass byte-identical");
            assert_eq!(rig.event(event), before + 1, "{event:?}");
        }
        rig.assert_events_add_up();
    })
    .unwrap();
}

#[test]
fn malformed_headers_get_a_defined_verdict_and_reason() {
    let ns = namespace(true);
    ns.run(|| {
        let mut rig = Rig::new(&config("20000-20099", "30s"));
        let syn = FrameSpec::tcp(client(42000), vip(80), SYN).build();
        let ip = frames::ETH_HLEN;
        let l4 = ip + 20;
        let patched = |f: &dyn Fn(&mut Vec<u8>)| {
            let mut frame = syn.clone();
            f(&mut frame);
            frame
        };
        let to_snat = FrameSpec::tcp(backend(0, 8080), SocketAddrV4::new(SNAT, 20000), ACK).build();

        let cases: Vec<(&str, Vec<u8>, u32, Event)> = vec![
            // BPF_PROG_TEST_RUN refuses frames below 14 bytes (as NICs drop runts), so the
            // shortest frame a test can feed is a bare Ethernet header.
            (
                "Ethernet header only",
                syn[..ip].to_vec(),
                XDP_PASS,
                Event::PassTruncatedIpv4,
            ),
            (
                "truncated IPv4",
                syn[..ip + 12].to_vec(),
                XDP_PASS,
                Event::PassTruncatedIpv4,
            ),
            (
                "IHL below 5",
                patched(&|f| f[ip] = 0x44),
                XDP_DROP,
                Event::DropMalformedIpv4,
            ),
            (
                "IHL past the end",
                patched(&|f| {
                    f[ip] = 0x4f;
                    f.truncate(ip + 40)
                }),
                XDP_DROP,
                Event::DropMalformedIpv4,
            ),
            (
                "total length past the end",
                patched(&|f| f[ip + 2..ip + 4].copy_from_slice(&200u16.to_be_bytes())),
                XDP_DROP,
                Event::DropMalformedIpv4,
            ),
            (
                "version 6 in an IPv4 frame",
                patched(&|f| f[ip] = 0x65),
                XDP_DROP,
                Event::DropMalformedIpv4,
            ),
            (
                "TCP data offset below 5",
                patched(&|f| f[l4 + 12] = 4 << 4),
                XDP_DROP,
                Event::DropMalformedL4,
            ),
            (
                "TCP data offset past the end",
                patched(&|f| f[l4 + 12] = 15 << 4),
                XDP_DROP,
                Event::DropMalformedL4,
            ),
            (
                "truncated TCP header",
                patched(&|f| {
                    f.truncate(l4 + 10);
                    let len = (f.len() - ip) as u16;
                    f[ip + 2..ip + 4].copy_from_slice(&len.to_be_bytes())
                }),
                XDP_DROP,
                Event::DropMalformedL4,
            ),
            (
                "more fragments",
                patched(&|f| f[ip + 6] = 0x20),
                XDP_DROP,
                Event::DropFragment,
            ),
            (
                "fragment offset",
                patched(&|f| f[ip + 7] = 0x10),
                XDP_DROP,
                Event::DropFragment,
            ),
            (
                "UDP length below 8",
                {
                    let mut f = FrameSpec::udp(client(5000), vip(53), b"q").build();
                    f[l4 + 4..l4 + 6].copy_from_slice(&4u16.to_be_bytes());
                    f
                },
                XDP_DROP,
                Event::DropMalformedL4,
            ),
            // To the SNAT address only, bad packets belong to the host.
            (
                "malformed to the SNAT address",
                {
                    let mut f = to_snat.clone();
                    f[ip] = 0x44;
                    f
                },
                XDP_PASS,
                Event::PassHostTraffic,
            ),
        ];
        for (what, frame, verdict, event) in cases {
            let before = rig.event(event);
            let (action, out) = rig.run(&frame, rig.cli0);
            assert_eq!(action, verdict, "{what}");
            if verdict == XDP_PASS {
                assert_eq!(out, frame, "{what}: passed frames stay byte-identical");
            }
            assert_eq!(rig.event(event), before + 1, "{what}: counted as {event:?}");
        }
        let web = rig.dataplane.traffic().unwrap();
        assert_eq!(
            web.service("web").unwrap().counters.new_flows,
            0,
            "no flow from bad input"
        );
        rig.assert_events_add_up();
    })
    .unwrap();
}

#[test]
fn ip_options_are_carried_through_the_rewrite() {
    let ns = namespace(true);
    ns.run(|| {
        let mut rig = Rig::new(&config("20000-20099", "30s"));
        let mut spec = FrameSpec::tcp(client(43000), vip(80), SYN).payload(b"opt");
        spec.ip_options = vec![1, 1, 1, 0]; // NOP NOP NOP EOL
        let (action, out) = rig.send_from_client(spec);
        assert_eq!(action, XDP_REDIRECT);
        assert_eq!(out[frames::ETH_HLEN] & 0x0f, 6, "IHL kept");
        assert_eq!(
            &out[frames::ETH_HLEN + 20..frames::ETH_HLEN + 24],
            &[1, 1, 1, 0]
        );
        let out = checked(&out);
        assert_eq!(out.dst, backend(0, 8080));
        assert_eq!(out.payload, b"opt");
    })
    .unwrap();
}

#[test]
fn snat_ports_are_never_shared_and_exhaustion_is_counted() {
    let ns = namespace(true);
    ns.run(|| {
        // Four ports for three backends: twelve flows fit, since uniqueness is per backend.
        let mut rig = Rig::new(&config("30000-30003", "30s"));
        let mut seen = std::collections::BTreeSet::new();
        for i in 0..12u16 {
            let (action, out) =
                rig.send_from_client(FrameSpec::tcp(client(44000 + i), vip(80), SYN));
            assert_eq!(action, XDP_REDIRECT, "flow {i}");
            let out = checked(&out);
            assert!(
                seen.insert((out.dst, out.src.port())),
                "tuple reused for flow {i}"
            );
        }
        let (action, _) = rig.send_from_client(FrameSpec::tcp(client(44100), vip(80), SYN));
        assert_eq!(action, XDP_DROP);
        assert_eq!(rig.event(Event::DropSnatExhausted), 1);
        let report = rig.dataplane.traffic().unwrap();
        assert_eq!(report.service("web").unwrap().counters.drops, 1);
        rig.assert_events_add_up();
    })
    .unwrap();
}

#[test]
fn a_new_syn_after_a_reset_starts_a_new_flow() {
    let ns = namespace(true);
    ns.run(|| {
        let mut rig = Rig::new(&config("20000-20099", "30s"));
        let first = checked(
            &rig.send_from_client(FrameSpec::tcp(client(45000), vip(80), SYN))
                .1,
        );
        assert_eq!(first.dst, backend(0, 8080));
        rig.send_from_client(FrameSpec::tcp(client(45000), vip(80), RST));
        let second = checked(
            &rig.send_from_client(FrameSpec::tcp(client(45000), vip(80), SYN))
                .1,
        );
        assert_eq!(
            second.dst,
            backend(1, 8080),
            "the reused port gets the next backend"
        );

        // Both sides' FINs close a flow too.
        let snat = second.src;
        rig.send_from_client(FrameSpec::tcp(client(45000), vip(80), FIN | ACK));
        rig.send_from_backend(1, FrameSpec::tcp(backend(1, 8080), snat, FIN | ACK));
        let third = checked(
            &rig.send_from_client(FrameSpec::tcp(client(45000), vip(80), SYN))
                .1,
        );
        assert_eq!(third.dst, backend(2, 8080));
        rig.assert_events_add_up();
    })
    .unwrap();
}

#[test]
fn idle_flows_expire_and_the_sweeper_frees_them() {
    let ns = namespace(true);
    ns.run(|| {
        let mut rig = Rig::new(&config("20000-20099", "1s"));
        let first = checked(
            &rig.send_from_client(FrameSpec::tcp(client(46000), vip(80), SYN))
                .1,
        );
        assert_eq!(first.dst, backend(0, 8080));
        assert_eq!(rig.sweeper.sweep(&rig.timeouts).unwrap().live, 1);

        // Past the SYN timeout plus the sweeper's one-second margin.
        std::thread::sleep(std::time::Duration::from_millis(2200));
        let report = rig.sweeper.sweep(&rig.timeouts).unwrap();
        assert_eq!((report.live, report.expired), (0, 1));

        let again = checked(
            &rig.send_from_client(FrameSpec::tcp(client(46000), vip(80), SYN))
                .1,
        );
        assert_eq!(
            again.dst,
            backend(1, 8080),
            "an expired flow is scheduled afresh"
        );
    })
    .unwrap();
}

/// A flow keeps the long established timeout only once the client has acknowledged the
/// backend's answer: the flow of a spoofed SYN, which the backend answers but whose
/// source never replies, is forgotten after `tcp_syn` like an unanswered one, so a SYN
/// flood cannot fill the table with flows that live for `tcp_established`.
#[test]
fn an_answered_but_unacknowledged_syn_ages_like_a_syn() {
    let ns = namespace(true);
    ns.run(|| {
        let mut rig = Rig::new(&config("20000-20099", "1s"));
        // Port 47000 completes its handshake; 47001's source never acknowledges.
        for (index, port, acknowledges) in [(0, 47000, true), (1, 47001, false)] {
            let to_backend = checked(
                &rig.send_from_client(FrameSpec::tcp(client(port), vip(80), SYN))
                    .1,
            );
            assert_eq!(to_backend.dst, backend(index, 8080));
            let syn_ack = FrameSpec::tcp(to_backend.dst, to_backend.src, SYN | ACK);
            assert_eq!(rig.send_from_backend(index, syn_ack).0, XDP_REDIRECT);
            if acknowledges {
                rig.send_from_client(FrameSpec::tcp(client(port), vip(80), ACK));
            }
        }
        assert_eq!(rig.sweeper.sweep(&rig.timeouts).unwrap().live, 2);

        // Past the SYN timeout plus the sweeper's one-second margin.
        std::thread::sleep(std::time::Duration::from_millis(2200));
        let report = rig.sweeper.sweep(&rig.timeouts).unwrap();
        assert_eq!((report.live, report.expired), (1, 1));
        let kept = checked(
            &rig.send_from_client(FrameSpec::tcp(client(47000), vip(80), ACK).payload(b"GET /"))
                .1,
        );
        assert_eq!(
            kept.dst,
            backend(0, 8080),
            "the acknowledged flow kept its backend"
        );
        rig.assert_events_add_up();
    })
    .unwrap();
}

#[test]
fn without_ip_forwarding_the_controller_resolved_next_hops_are_used() {
    let ns = namespace(false);
    ns.run(|| {
        let mut rig = Rig::new(&config("20000-20099", "30s"));

        // Nothing resolved yet: rewritten, then handed to the kernel (which will not route).
        let (action, out) = rig.send_from_client(FrameSpec::tcp(client(47000), vip(80), SYN));
        assert_eq!(action, XDP_PASS);
        assert_eq!(checked(&out).dst, backend(0, 8080));
        assert_eq!(rig.event(Event::PassNoNextHop), 1);

        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let (connection, netlink, _) = rtnetlink::new_connection().unwrap();
            tokio::spawn(connection);
            let mut resolver = NextHopResolver::new(netlink, rig.next_hops.take().unwrap());
            assert!(resolver.refresh(&BACKEND_IPS).await.unwrap().is_empty());
        });

        let (action, out) = rig.send_from_client(FrameSpec::tcp(client(47001), vip(80), SYN));
        assert_eq!(action, XDP_REDIRECT);
        let out = checked(&out);
        assert_eq!(out.dst, backend(1, 8080));
        assert_eq!((out.eth_dst, out.eth_src), (BACKEND_MACS[1], rig.bk0_mac));

        // The reply goes back the way the client's packet came.
        let (action, reply) =
            rig.send_from_backend(1, FrameSpec::tcp(backend(1, 8080), out.src, SYN | ACK));
        assert_eq!(action, XDP_REDIRECT);
        let reply = checked(&reply);
        assert_eq!(reply.dst, client(47001));
        assert_eq!((reply.eth_dst, reply.eth_src), (CLIENT_MAC, rig.cli0_mac));
        rig.assert_events_add_up();
    })
    .unwrap();
}

fn icmp_echo(dst: Ipv4Addr) -> Vec<u8> {
    let mut frame = FrameSpec::udp(client(0), SocketAddrV4::new(dst, 0), b"ping").build();
    frame[frames::ETH_HLEN + 9] = 1; // ICMP
    frame
}

fn arp_request() -> Vec<u8> {
    let mut frame = vec![0xff; 6];
    frame.extend_from_slice(&CLIENT_MAC);
    frame.extend_from_slice(&[0x08, 0x06]);
    frame.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    frame.extend_from_slice(&CLIENT_MAC);
    frame.extend_from_slice(&CLIENT.octets());
    frame.extend_from_slice(&[0; 6]);
    frame.extend_from_slice(&VIP.octets());
    frame
}

fn ipv6_frame() -> Vec<u8> {
    let mut frame = vec![0x02, 0, 0, 0, 0, 2];
    frame.extend_from_slice(&CLIENT_MAC);
    frame.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0, 0, 8, 17, 64]);
    frame.extend_from_slice(&[0; 32]);
    frame.extend_from_slice(&[0; 8]);
    frame
}
