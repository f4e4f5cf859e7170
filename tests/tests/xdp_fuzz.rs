//! Packet fuzzing of the XDP program through BPF_PROG_TEST_RUN: over a million random and
//! mutated frames, each judged against a model of what the program must do with it.
//!
//! The frames are valid packets of the configured services and replies of their flows,
//! with fields flipped, truncated at every length, padded to odd lengths, with IPv4
//! options and every IHL, fragments, 802.1Q and QinQ tags, IPv6, ARP, other IP protocols,
//! bad checksums and plain random bytes. For each one:
//!
//! - the verdict is PASS, TX, REDIRECT or DROP, and the one the design gives (a frame
//!   that is not for a service passes byte-identical; drops only for documented reasons);
//! - a rewritten frame changes only addresses, ports, checksums and MACs, and a checksum
//!   that verified before verifies after (one that did not still does not);
//! - a RST answers exactly the segment it was sent for, and never a RST.
//!
//! The model (`Model`) is a small re-statement of the design's flow rules: which flow a
//! packet belongs to, when a flow is new, when it is cut. With it, every event counter and
//! every per-service and per-backend traffic counter is predicted exactly, and checked
//! every [`CHUNK`] packets; the connection table (`FLOWS`, `NAT_RETURN`) is compared entry
//! by entry with the model after each phase, and the service tables must come out as they
//! went in. Phase B marks a backend of each of two services failed (their flows are cut),
//! phase C brings them back. At the end a known-good connection is forwarded both ways.
//!
//! The run is deterministic for a seed: it prints `seed = N`; `GERBANG_FUZZ_SEED=N`
//! repeats a run, `GERBANG_FUZZ_PACKETS=N` changes its length (default 1,000,000).

mod support;

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    net::{Ipv4Addr, SocketAddrV4},
    os::fd::{AsFd as _, AsRawFd as _},
    time::Instant,
};

use aya::{
    maps::{Array, HashMap as BpfHashMap, Map, MapData},
    programs::{ProgramFd, loaded_programs},
};
use gerbang::{
    config::Config,
    dataplane::{
        AdminState, BackendStatus, Dataplane as _, Plan,
        xdp::{BackgroundMaps, TrafficReport, XdpDataplane},
    },
};
use gerbang_testbed::{Netns, link};
use lb_common::{
    Backend, BackendRing, Event, Flow, FlowKey, Service, ServiceKey, TrafficCounters, Verdict,
    flow::{
        FLOW_CLIENT_ACKED, FLOW_FIN_FROM_BACKEND, FLOW_FIN_FROM_CLIENT, FLOW_HANDSHAKE_TRACKED,
        FLOW_REPLY_SEEN, FLOW_RST,
    },
    map_names,
    service::MAX_BACKENDS,
    wire::{addr_to_wire, port_to_wire},
};
use support::frames::{self, ACK, ETH_HLEN, FIN, FrameSpec, RST, SYN, TCP, UDP};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;
const XDP_REDIRECT: u32 = 4;

/// Most flows the test lets live at once, far below the connection table's size, so that
/// its LRU never evicts one (the model could not know which it would pick).
const MAX_LIVE_FLOWS: usize = 8192;

/// Packets between two comparisons of every counter with the model.
const CHUNK: u64 = 25_000;
const DEFAULT_PACKETS: u64 = 1_000_000;

const VIP: Ipv4Addr = Ipv4Addr::new(10, 201, 100, 1);
const SNAT: Ipv4Addr = Ipv4Addr::new(10, 201, 2, 1);
const SNAT_PORT_MIN: u16 = 10000;
const SNAT_PORT_MAX: u16 = 60000;
/// The one client address with a neighbour entry on `cli0`.
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 201, 1, 2);
const CLIENT_MAC: [u8; 6] = [0x02, 0xc1, 0, 0, 0, 0x02];
/// Client addresses the generator draws from: with and without a neighbour, without a
/// route, and a few that are ours or a backend's.
const CLIENTS: [Ipv4Addr; 8] = [
    CLIENT,
    CLIENT,
    CLIENT,
    Ipv4Addr::new(10, 201, 1, 3),
    Ipv4Addr::new(10, 201, 1, 77),
    Ipv4Addr::new(10, 201, 9, 9),
    Ipv4Addr::new(10, 201, 2, 10),
    SNAT,
];

struct ServiceDef {
    name: &'static str,
    port: u16,
    proto: u8,
}

/// The services, in config order. `void` and `void-udp` have only a backend of weight 0:
/// never any backend available.
const SERVICES: [ServiceDef; 4] = [
    ServiceDef {
        name: "web",
        port: 80,
        proto: TCP,
    },
    ServiceDef {
        name: "dns",
        port: 53,
        proto: UDP,
    },
    ServiceDef {
        name: "void",
        port: 81,
        proto: TCP,
    },
    ServiceDef {
        name: "void-udp",
        port: 54,
        proto: UDP,
    },
];

struct BackendDef {
    service: usize,
    name: &'static str,
    addr: SocketAddrV4,
    mac: [u8; 6],
    weight: u32,
}

const fn backend(
    service: usize,
    name: &'static str,
    last: u8,
    port: u16,
    weight: u32,
) -> BackendDef {
    BackendDef {
        service,
        name,
        addr: SocketAddrV4::new(Ipv4Addr::new(10, 201, 2, last), port),
        mac: [0x02, 0xb0, 0, 0, 0, last],
        weight,
    }
}

const BACKENDS: [BackendDef; 6] = [
    backend(0, "b1", 10, 8080, 1),
    backend(0, "b2", 11, 8080, 1),
    backend(0, "b3", 12, 8080, 1),
    backend(1, "d1", 20, 5353, 1),
    backend(2, "v1", 30, 81, 0),
    backend(3, "v2", 30, 54, 0),
];

/// Backends failed (flows cut) in phase B: web's b3 and dns's only backend.
const FAILED_IN_PHASE_B: [usize; 2] = [2, 3];

/// The fuzz config. Timeouts of an hour: the model has no clock, so no flow may expire
/// during a run.
fn config() -> String {
    let mut text = format!(
        "[dataplane]\ninterfaces = [\"cli0\", \"bk0\"]\nattach = \"generic\"\n\
         snat_address = \"{SNAT}\"\nsnat_ports = \"{SNAT_PORT_MIN}-{SNAT_PORT_MAX}\"\n\n\
         [timeouts]\ntcp_syn = \"1h\"\ntcp_established = \"1h\"\ntcp_closing = \"1h\"\n\
         udp = \"1h\"\n"
    );
    for (i, service) in SERVICES.iter().enumerate() {
        let protocol = if service.proto == TCP { "tcp" } else { "udp" };
        text += &format!(
            "\n[[service]]\nname = \"{}\"\nlisten = \"{VIP}:{}\"\nprotocol = \"{protocol}\"\n",
            service.name, service.port
        );
        for b in BACKENDS.iter().filter(|b| b.service == i) {
            text += &format!(
                "  [[service.backend]]\n  name = \"{}\"\n  address = \"{}\"\n  weight = {}\n",
                b.name, b.addr, b.weight
            );
        }
    }
    text
}

// ---------------------------------------------------------------------------------------
// The namespace and the program under test.

/// A namespace wired like a load balancer: client side `cli0`, backend side `bk0`, with
/// permanent neighbour entries for the client and every backend, IP forwarding on.
fn namespace() -> Netns {
    let ns = Netns::new("fuzz").unwrap();
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
    let mut neighbours = vec![(CLIENT, CLIENT_MAC, "cli0")];
    neighbours.extend(BACKENDS.iter().map(|b| (*b.addr.ip(), b.mac, "bk0")));
    neighbours.dedup_by_key(|(ip, _, _)| *ip);
    for (ip, mac, dev) in neighbours {
        let (ip, mac) = (ip.to_string(), link::format_mac(mac));
        ns.ip([
            "neigh",
            "replace",
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
    ns.sysctl("net.ipv4.ip_forward", "1").unwrap();
    ns
}

/// `BPF_PROG_TEST_RUN`'s part of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

const BPF_PROG_TEST_RUN: libc::c_long = 10;

/// The attached program, reached through its id, so that test runs go straight to the
/// kernel, and its maps, opened by id next to the handles the dataplane keeps.
struct Program {
    fd: ProgramFd,
    out: Vec<u8>,
    flows: BpfHashMap<MapData, FlowKey, Flow>,
    nat_return: BpfHashMap<MapData, FlowKey, FlowKey>,
    services: BpfHashMap<MapData, ServiceKey, Service>,
    local_addrs: BpfHashMap<MapData, u32, u32>,
    ring_select: Array<MapData, u32>,
    rings: Array<MapData, BackendRing>,
    backends: Array<MapData, Backend>,
}

impl Program {
    /// The program attached to `interface` of `ns`.
    fn attached(ns: &Netns, interface: &str) -> Program {
        let json = ns
            .ip(["-j", "-d", "link", "show", "dev", interface])
            .unwrap();
        let links: serde_json::Value = serde_json::from_str(&json).unwrap();
        let xdp = &links[0]["xdp"];
        let id = xdp["prog"]["id"]
            .as_u64()
            .or_else(|| xdp["attached"][0]["prog"]["id"].as_u64())
            .unwrap_or_else(|| panic!("no XDP program on {interface}: {json}"))
            as u32;
        let info = loaded_programs()
            .filter_map(Result::ok)
            .find(|p| p.id() == id)
            .expect("the attached program is loaded");
        let mut maps: HashMap<String, Map> = HashMap::new();
        for map_id in info.map_ids().unwrap().unwrap_or_default() {
            let data = MapData::from_id(map_id).unwrap();
            let name = data.info().unwrap().name_as_str().unwrap_or("").to_owned();
            maps.insert(name, Map::from_map_data(data).unwrap());
        }
        let mut take = |name: &str| {
            maps.remove(name)
                .unwrap_or_else(|| panic!("the program has no map {name}"))
        };
        Program {
            fd: info.fd().unwrap(),
            out: vec![0; 8192],
            flows: take(map_names::FLOWS).try_into().unwrap(),
            nat_return: take(map_names::NAT_RETURN).try_into().unwrap(),
            services: take(map_names::SERVICES).try_into().unwrap(),
            local_addrs: take(map_names::LOCAL_ADDRS).try_into().unwrap(),
            ring_select: take(map_names::RING_SELECT).try_into().unwrap(),
            rings: take(map_names::RINGS).try_into().unwrap(),
            backends: take(map_names::BACKENDS).try_into().unwrap(),
        }
    }

    /// Runs the program `repeat` times on `frame` arriving on `ingress`; returns the action
    /// and the frame as the last run left it.
    fn run(&mut self, frame: &[u8], ingress: u32, repeat: u32) -> (u32, &[u8]) {
        // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index,
        // egress_ifindex.
        let ctx: [u32; 6] = [0, frame.len() as u32, 0, ingress, 0, 0];
        let mut attr = TestRunAttr {
            prog_fd: self.fd.as_fd().as_raw_fd() as u32,
            data_size_in: frame.len() as u32,
            data_size_out: self.out.len() as u32,
            data_in: frame.as_ptr() as u64,
            data_out: self.out.as_mut_ptr() as u64,
            repeat,
            ctx_size_in: std::mem::size_of_val(&ctx) as u32,
            ctx_in: ctx.as_ptr() as u64,
            ..TestRunAttr::default()
        };
        // SAFETY: `attr` is BPF_PROG_TEST_RUN's attribute layout; the buffers it points to
        // live across the call and are as large as it says.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_PROG_TEST_RUN,
                &mut attr as *mut TestRunAttr,
                std::mem::size_of::<TestRunAttr>() as libc::c_uint,
            )
        };
        assert_eq!(
            rc,
            0,
            "BPF_PROG_TEST_RUN on a {}-byte frame: {}",
            frame.len(),
            std::io::Error::last_os_error()
        );
        (attr.retval, &self.out[..attr.data_size_out as usize])
    }

    /// What the controller wrote, in terms of addresses rather than ids.
    fn tables(&self) -> Tables {
        let backend_addr = |id: u32| {
            let b = self.backends.get(&id, 0).unwrap();
            (b.addr, b.port)
        };
        let mut services = BTreeMap::new();
        let mut rings = BTreeMap::new();
        for entry in self.services.iter() {
            let (key, value) = entry.unwrap();
            let key = (key.addr, key.port, key.proto);
            services.insert(
                key,
                (value.snat_addr, value.snat_port_min, value.snat_port_max),
            );
            let slot = self.ring_select.get(&value.id, 0).unwrap() & 1;
            let ring = self.rings.get(&(value.id * 2 + slot), 0).unwrap();
            let live: Vec<_> = ring.slots[..ring.len as usize]
                .iter()
                .map(|id| backend_addr(*id))
                .collect();
            rings.insert(key, live);
        }
        let local_addrs = self
            .local_addrs
            .iter()
            .map(Result::unwrap)
            .collect::<BTreeMap<_, _>>();
        let backends = (0..MAX_BACKENDS)
            .filter_map(|id| {
                let b = self.backends.get(&id, 0).unwrap();
                (b.addr != 0).then_some(((b.addr, b.port), b.flags))
            })
            .collect();
        Tables {
            services,
            local_addrs,
            rings,
            backends,
        }
    }

    fn service_id(&self, service: usize) -> u32 {
        let def = &SERVICES[service];
        let key = ServiceKey::new(addr_to_wire(VIP), port_to_wire(def.port), def.proto);
        self.services.get(&key, 0).unwrap().id
    }
}

/// The service tables, which only the controller writes.
#[derive(Debug, PartialEq, Eq)]
struct Tables {
    services: BTreeMap<(u32, u16, u8), (u32, u16, u16)>,
    local_addrs: BTreeMap<u32, u32>,
    /// Live ring of each service, as backend addresses.
    rings: BTreeMap<(u32, u16, u8), Vec<(u32, u16)>>,
    /// Flags of every backend entry in use.
    backends: BTreeMap<(u32, u16), u16>,
}

// ---------------------------------------------------------------------------------------
// Random numbers.

/// SplitMix64: small, fast, and the same sequence everywhere for a seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn range(&mut self, lo: usize, hi_inclusive: usize) -> usize {
        lo + self.below(hi_inclusive - lo + 1)
    }

    fn percent(&mut self, p: usize) -> bool {
        self.below(100) < p
    }

    fn byte(&mut self) -> u8 {
        self.next() as u8
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.byte()).collect()
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

fn seed() -> u64 {
    match std::env::var("GERBANG_FUZZ_SEED") {
        Ok(text) => text
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("GERBANG_FUZZ_SEED={text:?}: not a u64")),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64,
    }
}

fn packets() -> u64 {
    std::env::var("GERBANG_FUZZ_PACKETS")
        .ok()
        .map(|text| text.trim().parse().expect("GERBANG_FUZZ_PACKETS: a count"))
        .unwrap_or(DEFAULT_PACKETS)
}

// ---------------------------------------------------------------------------------------
// Reading frames, independently of the program.

/// A well-formed IPv4 TCP or UDP packet, as the design defines well-formed.
#[derive(Clone, Copy, Debug)]
struct Pkt {
    proto: u8,
    src: SocketAddrV4,
    dst: SocketAddrV4,
    ihl: usize,
    ip_len: usize,
    tcp_flags: u8,
    seq: u32,
    ack: u32,
    doff: usize,
}

impl Pkt {
    fn tuple(&self) -> Tuple {
        Tuple {
            src: self.src,
            dst: self.dst,
            proto: self.proto,
        }
    }

    fn tcp(&self) -> bool {
        self.proto == TCP
    }

    fn has(&self, flag: u8) -> bool {
        self.tcp() && self.tcp_flags & flag != 0
    }

    /// A SYN without ACK: what may open a flow.
    fn new_syn(&self) -> bool {
        self.has(SYN) && !self.has(ACK)
    }
}

/// What a frame is, by its bytes alone.
#[derive(Debug)]
enum Class {
    /// Its fate does not depend on any flow: exactly this event.
    Static(Event),
    /// A well-formed packet to the VIP port of a service (index into [`SERVICES`]).
    ToService(usize, Pkt),
    /// A well-formed packet to the SNAT address: a backend's reply, if a flow has its tuple.
    ToSnat(Pkt),
}

fn be16(frame: &[u8], at: usize) -> usize {
    usize::from(u16::from_be_bytes([frame[at], frame[at + 1]]))
}

fn be32(frame: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([frame[at], frame[at + 1], frame[at + 2], frame[at + 3]])
}

fn addr_at(frame: &[u8], at: usize) -> Ipv4Addr {
    Ipv4Addr::new(frame[at], frame[at + 1], frame[at + 2], frame[at + 3])
}

enum Malformed {
    Ipv4,
    Fragment,
    L4,
    NotTcpOrUdp,
}

/// The design's rules for a well-formed IPv4 TCP/UDP packet (see `lb-common` `Event`).
fn parse(frame: &[u8]) -> Result<Pkt, Malformed> {
    let ip = ETH_HLEN;
    let (version, ihl) = (frame[ip] >> 4, usize::from(frame[ip] & 0x0f) * 4);
    let ip_len = be16(frame, ip + 2);
    if version != 4 || ihl < 20 || ip_len < ihl || ip + ip_len > frame.len() {
        return Err(Malformed::Ipv4);
    }
    if be16(frame, ip + 6) & 0x3fff != 0 {
        return Err(Malformed::Fragment);
    }
    let proto = frame[ip + 9];
    let l4 = ip + ihl;
    let l4_len = ip_len - ihl;
    let (mut tcp_flags, mut seq, mut ack, mut doff) = (0, 0, 0, 0);
    match proto {
        TCP => {
            if l4_len < 20 {
                return Err(Malformed::L4);
            }
            doff = usize::from(frame[l4 + 12] >> 4) * 4;
            if doff < 20 || doff > l4_len {
                return Err(Malformed::L4);
            }
            tcp_flags = frame[l4 + 13];
            seq = be32(frame, l4 + 4);
            ack = be32(frame, l4 + 8);
        }
        UDP => {
            if l4_len < 8 {
                return Err(Malformed::L4);
            }
            let udp_len = be16(frame, l4 + 4);
            if udp_len < 8 || udp_len > l4_len {
                return Err(Malformed::L4);
            }
        }
        _ => return Err(Malformed::NotTcpOrUdp),
    }
    Ok(Pkt {
        proto,
        src: SocketAddrV4::new(addr_at(frame, ip + 12), be16(frame, l4) as u16),
        dst: SocketAddrV4::new(addr_at(frame, ip + 16), be16(frame, l4 + 2) as u16),
        ihl,
        ip_len,
        tcp_flags,
        seq,
        ack,
        doff,
    })
}

fn classify(frame: &[u8]) -> Class {
    if frame.len() < ETH_HLEN {
        return Class::Static(Event::PassShortFrame);
    }
    if frame[12..14] != [0x08, 0x00] {
        return Class::Static(Event::PassNotIpv4);
    }
    if frame.len() < ETH_HLEN + 20 {
        return Class::Static(Event::PassTruncatedIpv4);
    }
    let dst = addr_at(frame, ETH_HLEN + 16);
    if dst == SNAT {
        return match parse(frame) {
            Ok(pkt) => Class::ToSnat(pkt),
            Err(_) => Class::Static(Event::PassHostTraffic),
        };
    }
    if dst != VIP {
        return Class::Static(Event::PassNotLocal);
    }
    match parse(frame) {
        Ok(pkt) => match SERVICES
            .iter()
            .position(|s| s.port == pkt.dst.port() && s.proto == pkt.proto)
        {
            Some(service) => Class::ToService(service, pkt),
            None => Class::Static(Event::PassNoService),
        },
        Err(Malformed::Ipv4) => Class::Static(Event::DropMalformedIpv4),
        Err(Malformed::Fragment) => Class::Static(Event::DropFragment),
        Err(Malformed::L4) => Class::Static(Event::DropMalformedL4),
        Err(Malformed::NotTcpOrUdp) => Class::Static(Event::PassNoService),
    }
}

fn action_of(verdict: Verdict) -> u32 {
    match verdict {
        Verdict::PassUntouched | Verdict::PassRewritten => XDP_PASS,
        Verdict::Tx => XDP_TX,
        Verdict::Redirect => XDP_REDIRECT,
        Verdict::Drop => XDP_DROP,
    }
}

// ---------------------------------------------------------------------------------------
// The model.

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Tuple {
    src: SocketAddrV4,
    dst: SocketAddrV4,
    proto: u8,
}

impl Tuple {
    fn key(&self) -> FlowKey {
        FlowKey::new(
            addr_to_wire(*self.src.ip()),
            port_to_wire(self.src.port()),
            addr_to_wire(*self.dst.ip()),
            port_to_wire(self.dst.port()),
            self.proto,
        )
    }
}

#[derive(Clone, Debug)]
struct ModelFlow {
    service: usize,
    backend: usize,
    snat_port: u16,
    flags: u64,
    /// Ingress ifindex and (our MAC, their MAC) of the packet that opened it.
    hop: (u32, [u8; 6], [u8; 6]),
}

impl ModelFlow {
    fn return_tuple(&self, proto: u8) -> Tuple {
        Tuple {
            src: BACKENDS[self.backend].addr,
            dst: SocketAddrV4::new(SNAT, self.snat_port),
            proto,
        }
    }

    fn closed(&self) -> bool {
        self.flags & (FLOW_RST | FLOW_FIN_FROM_CLIENT | FLOW_FIN_FROM_BACKEND) != 0
    }
}

/// Events the program picks from the FIB's answer, which the model does not predict:
/// a rewritten frame handed to the kernel.
const PASS_REWRITTEN: [Event; 4] = [
    Event::PassNoNeighbour,
    Event::PassNoNextHop,
    Event::PassKernelRoute,
    Event::PassNoRedirect,
];

#[derive(Default)]
struct Expected {
    /// Per event (index `Event as usize`), except [`PASS_REWRITTEN`].
    events: [u64; Event::ALL.len()],
    /// The sum over [`PASS_REWRITTEN`].
    pass_rewritten: u64,
    services: [TrafficCounters; SERVICES.len()],
    backends: [TrafficCounters; BACKENDS.len()],
}

struct Model {
    flows: HashMap<Tuple, ModelFlow>,
    /// Return tuple (backend -> SNAT address) -> client tuple.
    nat_return: HashMap<Tuple, Tuple>,
    /// Every return tuple a flow ever had, for generating replies.
    replies: Vec<Tuple>,
    /// Client tuples in the order their flows were opened, for ageing them out.
    opened: VecDeque<Tuple>,
    /// Flows the test removed as the sweeper would.
    aged_out: u64,
    /// Backends failed with their flows cut.
    failed: [bool; BACKENDS.len()],
    expected: Expected,
    /// Packets that continued a flow, for the report.
    continued: u64,
}

/// Everything a test run's result is judged against.
struct Rig {
    program: Program,
    cli0: u32,
    bk0: u32,
    cli0_mac: [u8; 6],
    bk0_mac: [u8; 6],
}

impl Rig {
    fn egress(&self, dst: Ipv4Addr) -> Option<(u32, [u8; 6], [u8; 6])> {
        let o = dst.octets();
        if o[..3] == [10, 201, 2] {
            let mac = BACKENDS.iter().find(|b| *b.addr.ip() == dst)?.mac;
            Some((self.bk0, mac, self.bk0_mac))
        } else if dst == CLIENT {
            Some((self.cli0, CLIENT_MAC, self.cli0_mac))
        } else {
            None
        }
    }
}

/// One run of the program: what went in, where, and what came out.
struct Seen<'a> {
    frame: &'a [u8],
    ingress: u32,
    action: u32,
    out: &'a [u8],
}

impl Seen<'_> {
    /// Fails the test with everything needed to look at the packet.
    fn fail(&self, what: &str) -> ! {
        panic!(
            "{what}\n  ingress ifindex {}, action {}\n  in  ({} bytes) {}\n  out ({} bytes) {}",
            self.ingress,
            self.action,
            self.frame.len(),
            hex(self.frame),
            self.out.len(),
            hex(self.out)
        );
    }

    fn passed_untouched(&self) -> bool {
        self.action == XDP_PASS && self.out == self.frame
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Model {
    fn new() -> Model {
        Model {
            flows: HashMap::new(),
            nat_return: HashMap::new(),
            replies: Vec::new(),
            opened: VecDeque::new(),
            aged_out: 0,
            failed: [false; BACKENDS.len()],
            expected: Expected::default(),
            continued: 0,
        }
    }

    fn active(&self, service: usize) -> impl Iterator<Item = usize> + '_ {
        (0..BACKENDS.len())
            .filter(move |&b| BACKENDS[b].service == service && BACKENDS[b].weight > 0)
            .filter(|&b| !self.failed[b])
    }

    fn count(&mut self, event: Event) {
        if PASS_REWRITTEN.contains(&event) {
            self.expected.pass_rewritten += 1;
        } else {
            self.expected.events[event as usize] += 1;
        }
    }

    fn drop_of(&mut self, service: usize, backend: Option<usize>) {
        self.expected.services[service].drops += 1;
        if let Some(b) = backend {
            self.expected.backends[b].drops += 1;
        }
    }

    fn retire(&mut self, client: &Tuple) {
        if let Some(flow) = self.flows.remove(client) {
            let back = flow.return_tuple(client.proto);
            if self.nat_return.get(&back) == Some(client) {
                self.nat_return.remove(&back);
            }
        }
    }

    /// Judges one run of the program and accounts for it.
    fn judge(&mut self, rig: &Rig, seen: &Seen) {
        if !matches!(seen.action, XDP_DROP | XDP_PASS | XDP_TX | XDP_REDIRECT) {
            seen.fail("not a verdict the design allows");
        }
        match classify(seen.frame) {
            Class::Static(event) => {
                if seen.action != action_of(event.verdict()) {
                    seen.fail(&format!("expected {event:?}"));
                }
                if seen.action == XDP_PASS && seen.out != seen.frame {
                    seen.fail(&format!(
                        "{event:?}: a passed frame must stay byte-identical"
                    ));
                }
                self.count(event);
            }
            Class::ToService(service, pkt) => self.judge_client(rig, service, &pkt, seen),
            Class::ToSnat(pkt) => self.judge_snat(rig, &pkt, seen),
        }
    }

    /// A client's packet to a service: continues its flow, opens one, or ends here.
    fn judge_client(&mut self, rig: &Rig, service: usize, pkt: &Pkt, seen: &Seen) {
        let key = pkt.tuple();
        let flags = client_flags(pkt);
        let existing = self.flows.get(&key).cloned();
        // A SYN or a datagram on a flow whose backend failed starts a new flow instead.
        let live = existing.as_ref().is_some_and(|f| {
            !(pkt.new_syn() && f.closed())
                && !(self.failed[f.backend] && (!pkt.tcp() || pkt.new_syn()))
        });

        let (flow, new) = if let Some(flow) = existing.filter(|_| live) {
            if self.failed[flow.backend] {
                self.retire(&key);
                self.drop_of(service, Some(flow.backend));
                // Its backend failed: TCP is told at once, but a RST is never answered.
                let event = if pkt.tcp() && !pkt.has(RST) {
                    Event::RstBackendDown
                } else {
                    Event::DropBackendDown
                };
                return self.expect_end(event, pkt, seen);
            }
            self.flows.get_mut(&key).unwrap().flags |= flags;
            (flow, false)
        } else {
            self.retire(&key);
            if pkt.tcp() && !pkt.new_syn() {
                // Mid-connection without a flow.
                self.drop_of(service, None);
                let event = if pkt.has(RST) {
                    Event::DropStrayRst
                } else {
                    Event::RstNoFlow
                };
                return self.expect_end(event, pkt, seen);
            }
            if self.active(service).next().is_none() {
                self.drop_of(service, None);
                let event = if pkt.tcp() && !pkt.has(RST) {
                    Event::RstNoBackend
                } else {
                    Event::DropNoBackend
                };
                return self.expect_end(event, pkt, seen);
            }
            (self.open(service, pkt, seen), true)
        };

        let from = SocketAddrV4::new(SNAT, flow.snat_port);
        let to = BACKENDS[flow.backend].addr;
        let event = self.expect_forward(rig, from, to, pkt, seen);
        let (s, b) = (flow.service, flow.backend);
        if event == Event::DropUnroutable {
            self.drop_of(s, Some(b));
        } else {
            for c in [
                &mut self.expected.services[s],
                &mut self.expected.backends[b],
            ] {
                c.packets_to_backend += 1;
                c.bytes_to_backend += seen.frame.len() as u64;
            }
        }
        if !new {
            self.continued += 1;
        }
    }

    /// A new flow: the output says which backend and SNAT port it got; both must be
    /// allowed.
    fn open(&mut self, service: usize, pkt: &Pkt, seen: &Seen) -> ModelFlow {
        if seen.action == XDP_DROP || seen.passed_untouched() {
            seen.fail("a new flow was not forwarded");
        }
        if seen.out.len() != seen.frame.len() {
            seen.fail("a forwarded frame changed length");
        }
        let Ok(to) = parse(seen.out) else {
            seen.fail("forwarded frame unreadable")
        };
        let Some(backend) = self.active(service).find(|&b| BACKENDS[b].addr == to.dst) else {
            seen.fail("a new flow went to no active backend of its service")
        };
        let snat_port = to.src.port();
        if *to.src.ip() != SNAT || !(SNAT_PORT_MIN..=SNAT_PORT_MAX).contains(&snat_port) {
            seen.fail("SNAT source outside the configured address and ports");
        }
        let flow = ModelFlow {
            service,
            backend,
            snat_port,
            flags: client_flags(pkt) | if pkt.tcp() { FLOW_HANDSHAKE_TRACKED } else { 0 },
            hop: (
                seen.ingress,
                seen.frame[0..6].try_into().unwrap(),
                seen.frame[6..12].try_into().unwrap(),
            ),
        };
        let back = flow.return_tuple(pkt.proto);
        if self.nat_return.contains_key(&back) {
            seen.fail("SNAT port shared with a live flow to the same backend");
        }
        let key = pkt.tuple();
        self.nat_return.insert(back, key);
        self.replies.push(back);
        self.opened.push_back(key);
        self.flows.insert(key, flow.clone());
        self.expected.services[service].new_flows += 1;
        self.expected.backends[backend].new_flows += 1;
        flow
    }

    /// A packet to the SNAT address: a backend's reply if a live flow has its tuple,
    /// otherwise the host's.
    fn judge_snat(&mut self, rig: &Rig, pkt: &Pkt, seen: &Seen) {
        let back = pkt.tuple();
        let Some(client) = self.nat_return.get(&back).copied() else {
            return self.expect_end(Event::PassHostTraffic, pkt, seen);
        };
        let flow = match self.flows.get(&client) {
            Some(flow) if flow.return_tuple(client.proto) == back => flow.clone(),
            _ => {
                self.nat_return.remove(&back);
                return self.expect_end(Event::PassOrphanReply, pkt, seen);
            }
        };
        if self.failed[flow.backend] {
            self.retire(&client);
            self.drop_of(flow.service, Some(flow.backend));
            return self.expect_end(Event::DropBackendDown, pkt, seen);
        }
        self.flows.get_mut(&client).unwrap().flags |= backend_flags(pkt);
        let event = self.expect_forward(rig, client.dst, client.src, pkt, seen);
        let (s, b) = (flow.service, flow.backend);
        if event == Event::DropUnroutable {
            self.drop_of(s, Some(b));
        } else {
            for c in [
                &mut self.expected.services[s],
                &mut self.expected.backends[b],
            ] {
                c.packets_to_client += 1;
                c.bytes_to_client += seen.frame.len() as u64;
            }
        }
    }

    /// A packet that goes no further than the balancer: passed untouched, dropped, or
    /// answered with a RST.
    fn expect_end(&mut self, event: Event, pkt: &Pkt, seen: &Seen) {
        if seen.action != action_of(event.verdict()) {
            seen.fail(&format!("expected {event:?}"));
        }
        match event.verdict() {
            Verdict::PassUntouched if seen.out != seen.frame => seen.fail(&format!(
                "{event:?}: a passed frame must stay byte-identical"
            )),
            Verdict::Tx => {
                if let Err(why) = check_rst(pkt, seen.frame, seen.out) {
                    seen.fail(&format!("{event:?}: bad RST: {why}"));
                }
            }
            _ => {}
        }
        self.count(event);
    }

    /// A packet translated to `from` -> `to` and sent on; returns the event its verdict
    /// and output show.
    fn expect_forward(
        &mut self,
        rig: &Rig,
        from: SocketAddrV4,
        to: SocketAddrV4,
        pkt: &Pkt,
        seen: &Seen,
    ) -> Event {
        let event = match seen.action {
            // The FIB said unreachable, blackhole or prohibit: no route here says so.
            XDP_DROP => seen.fail("a translated packet was dropped"),
            XDP_PASS => {
                if seen.out == seen.frame {
                    seen.fail("a packet of a flow passed untranslated");
                }
                // Stands for any of PASS_REWRITTEN.
                Event::PassNoNeighbour
            }
            _ => {
                let Some((egress, dst_mac, src_mac)) = rig.egress(*to.ip()) else {
                    seen.fail("sent on towards an address with no neighbour")
                };
                if (seen.action == XDP_TX) != (egress == seen.ingress) {
                    seen.fail("TX must mean out of the ingress interface, REDIRECT another");
                }
                if seen.out.len() < 12 || seen.out[0..6] != dst_mac || seen.out[6..12] != src_mac {
                    seen.fail("wrong MAC addresses for the next hop");
                }
                if seen.action == XDP_TX {
                    Event::Tx
                } else {
                    Event::Redirect
                }
            }
        };
        let macs_rewritten = seen.action != XDP_PASS;
        if let Err(why) = check_nat(pkt, seen.frame, seen.out, from, to, macs_rewritten) {
            seen.fail(&format!("bad translation to {from} -> {to}: {why}"));
        }
        self.count(event);
        event
    }
}

fn client_flags(pkt: &Pkt) -> u64 {
    let mut flags = 0;
    if pkt.has(FIN) {
        flags |= FLOW_FIN_FROM_CLIENT;
    }
    if pkt.has(RST) {
        flags |= FLOW_RST;
    }
    if pkt.tcp() && !pkt.has(SYN) {
        flags |= FLOW_CLIENT_ACKED;
    }
    flags
}

fn backend_flags(pkt: &Pkt) -> u64 {
    let mut flags = FLOW_REPLY_SEEN;
    if pkt.has(FIN) {
        flags |= FLOW_FIN_FROM_BACKEND;
    }
    if pkt.has(RST) {
        flags |= FLOW_RST;
    }
    flags
}

fn ensure(ok: bool, what: &str) -> Result<(), String> {
    if ok { Ok(()) } else { Err(what.to_owned()) }
}

/// `out` is `frame` with the addresses and ports translated to `from` -> `to`: everything
/// else identical (MACs aside, when it was sent on), checksums as valid as they were.
fn check_nat(
    pkt: &Pkt,
    frame: &[u8],
    out: &[u8],
    from: SocketAddrV4,
    to: SocketAddrV4,
    macs_rewritten: bool,
) -> Result<(), String> {
    ensure(out.len() == frame.len(), "length changed")?;
    if !macs_rewritten {
        ensure(out[..12] == frame[..12], "MACs changed")?;
    }
    let ip = ETH_HLEN;
    let l4 = ip + pkt.ihl;
    ensure(
        out[12..ip + 10] == frame[12..ip + 10],
        "IPv4 header changed",
    )?;
    ensure(
        out[ip + 12..ip + 16] == from.ip().octets(),
        "source address",
    )?;
    ensure(
        out[ip + 16..ip + 20] == to.ip().octets(),
        "destination address",
    )?;
    ensure(
        out[ip + 20..l4] == frame[ip + 20..l4],
        "IPv4 options changed",
    )?;
    ensure(out[l4..l4 + 2] == from.port().to_be_bytes(), "source port")?;
    ensure(
        out[l4 + 2..l4 + 4] == to.port().to_be_bytes(),
        "destination port",
    )?;
    let check = l4 + if pkt.tcp() { 16 } else { 6 };
    ensure(
        out[l4 + 4..check] == frame[l4 + 4..check],
        "L4 header changed",
    )?;
    ensure(out[check + 2..] == frame[check + 2..], "payload changed")?;
    ensure(
        frames::ipv4_checksum_ok(out) == frames::ipv4_checksum_ok(frame),
        "IPv4 checksum validity changed",
    )?;
    if !pkt.tcp() && frame[check..check + 2] == [0, 0] {
        ensure(
            out[check..check + 2] == [0, 0],
            "a UDP datagram without checksum got one",
        )?;
    } else {
        ensure(
            frames::l4_checksum_ok(out) == frames::l4_checksum_ok(frame),
            "TCP/UDP checksum validity changed",
        )?;
    }
    Ok(())
}

/// `out` is the RST that answers `pkt` (RFC 9293 3.10.7.1), from the VIP back to the hop
/// the segment came from.
fn check_rst(pkt: &Pkt, frame: &[u8], out: &[u8]) -> Result<(), String> {
    ensure(pkt.tcp(), "a RST for a non-TCP packet")?;
    ensure(!pkt.has(RST), "a RST answering a RST")?;
    let ip = ETH_HLEN;
    let l4 = ip + pkt.ihl;
    ensure(out.len() == l4 + 20, "options and payload not cut")?;
    ensure(
        out[0..6] == frame[6..12] && out[6..12] == frame[0..6],
        "MACs not swapped",
    )?;
    ensure(out[12..ip + 2] == frame[12..ip + 2], "header start changed")?;
    ensure(be16(out, ip + 2) == pkt.ihl + 20, "IPv4 total length")?;
    ensure(
        out[ip + 4..ip + 10] == frame[ip + 4..ip + 10],
        "IPv4 header changed",
    )?;
    ensure(
        out[ip + 12..ip + 16] == frame[ip + 16..ip + 20]
            && out[ip + 16..ip + 20] == frame[ip + 12..ip + 16],
        "addresses not swapped",
    )?;
    ensure(
        out[ip + 20..l4] == frame[ip + 20..l4],
        "IPv4 options changed",
    )?;
    ensure(
        frames::ipv4_checksum_ok(out) == frames::ipv4_checksum_ok(frame),
        "IPv4 checksum validity changed",
    )?;
    ensure(
        out[l4..l4 + 2] == frame[l4 + 2..l4 + 4] && out[l4 + 2..l4 + 4] == frame[l4..l4 + 2],
        "ports not swapped",
    )?;
    let (seq, ack, flags) = if pkt.has(ACK) {
        (pkt.ack, 0, RST)
    } else {
        let mut occupied = (pkt.ip_len - pkt.ihl - pkt.doff) as u32;
        occupied += u32::from(pkt.has(SYN)) + u32::from(pkt.has(FIN));
        (0, pkt.seq.wrapping_add(occupied), RST | ACK)
    };
    ensure(be32(out, l4 + 4) == seq, "sequence number")?;
    ensure(be32(out, l4 + 8) == ack, "acknowledgment number")?;
    ensure(out[l4 + 12] == 5 << 4 && out[l4 + 13] == flags, "flags")?;
    ensure(out[l4 + 14..l4 + 16] == [0, 0], "window")?;
    ensure(out[l4 + 18..l4 + 20] == [0, 0], "urgent pointer")?;
    ensure(frames::l4_checksum_ok(out), "TCP checksum")?;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Making frames.

/// Recomputes the IPv4 header checksum and, when the lengths allow, the TCP/UDP one, of a
/// frame with a plain IPv4 Ethernet header.
fn fix_checksums(frame: &mut [u8]) {
    let ip = ETH_HLEN;
    if frame.len() < ip + 20 || frame[12..14] != [0x08, 0x00] {
        return;
    }
    let ihl = usize::from(frame[ip] & 0x0f) * 4;
    if ihl < 20 || ip + ihl > frame.len() {
        return;
    }
    frame[ip + 10..ip + 12].copy_from_slice(&[0, 0]);
    let check = frames::checksum(&frame[ip..ip + ihl]);
    frame[ip + 10..ip + 12].copy_from_slice(&check.to_be_bytes());

    let total = be16(frame, ip + 2);
    let l4 = ip + ihl;
    let offset = match frame[ip + 9] {
        TCP => 16,
        UDP => 6,
        _ => return,
    };
    if total < ihl + offset + 2 || ip + total > frame.len() {
        return;
    }
    frame[l4 + offset..l4 + offset + 2].copy_from_slice(&[0, 0]);
    let mut pseudo = Vec::with_capacity(12 + total - ihl);
    pseudo.extend_from_slice(&frame[ip + 12..ip + 20]);
    pseudo.extend_from_slice(&[0, frame[ip + 9]]);
    pseudo.extend_from_slice(&((total - ihl) as u16).to_be_bytes());
    pseudo.extend_from_slice(&frame[l4..ip + total]);
    let mut check = frames::checksum(&pseudo);
    if frame[ip + 9] == UDP && check == 0 {
        check = 0xffff;
    }
    frame[l4 + offset..l4 + offset + 2].copy_from_slice(&check.to_be_bytes());
}

/// TCP flags a generator picks from, mostly what real connections carry.
fn tcp_flags(rng: &mut Rng) -> u8 {
    match rng.below(100) {
        0..30 => SYN,
        30..45 => ACK,
        45..60 => ACK | 0x08, // PSH
        60..68 => FIN | ACK,
        68..73 => RST,
        73..78 => RST | ACK,
        78..81 => SYN | ACK,
        81..85 => SYN | RST,
        85..87 => SYN | FIN,
        87..89 => 0,
        _ => rng.byte(),
    }
}

fn payload(rng: &mut Rng) -> Vec<u8> {
    let len = match rng.below(100) {
        0..40 => 0,
        40..90 => rng.range(1, 64),
        90..98 => rng.range(65, 1400),
        // Larger than the MTU: the FIB asks the kernel to fragment.
        _ => rng.range(1401, 2000),
    };
    rng.bytes(len)
}

fn client_addr(rng: &mut Rng) -> SocketAddrV4 {
    let port = if rng.percent(95) {
        1024 + rng.below(400) as u16
    } else {
        rng.next() as u16
    };
    SocketAddrV4::new(*rng.pick(&CLIENTS), port)
}

/// Random seq/ack numbers, and TCP options now and then, with checksums recomputed.
fn tcp_details(rng: &mut Rng, frame: &mut Vec<u8>, ihl: usize) {
    let l4 = ETH_HLEN + ihl;
    if frame.len() < l4 + 20 || frame[ETH_HLEN + 9] != TCP {
        return;
    }
    let seq = rng.next();
    frame[l4 + 4..l4 + 12].copy_from_slice(&seq.to_be_bytes());
    if rng.percent(20) {
        // MSS, SACK-permitted, timestamps, window scale, or garbage: 4..40 bytes.
        let words = rng.range(1, 10);
        let options: Vec<u8> = if rng.percent(50) {
            let mut o = vec![2, 4, 0x05, 0xb4];
            o.resize(words * 4, 1);
            o
        } else {
            rng.bytes(words * 4)
        };
        let at = l4 + 20;
        frame.splice(at..at, options);
        frame[l4 + 12] = ((5 + words) as u8) << 4;
        let total = be16(frame, ETH_HLEN + 2) + words * 4;
        frame[ETH_HLEN + 2..ETH_HLEN + 4].copy_from_slice(&(total as u16).to_be_bytes());
    }
    fix_checksums(frame);
}

struct Generator {
    rng: Rng,
}

impl Generator {
    /// A client packet to the service at `port`.
    fn client_packet(&mut self, rig: &Rig, port: u16, proto: u8) -> Vec<u8> {
        let rng = &mut self.rng;
        let src = client_addr(rng);
        let dst = SocketAddrV4::new(VIP, port);
        let mut spec = if proto == TCP {
            FrameSpec::tcp(src, dst, tcp_flags(rng)).payload(&payload(rng))
        } else {
            let mut spec = FrameSpec::udp(src, dst, &payload(rng));
            spec.udp_no_checksum = rng.percent(10);
            spec
        };
        spec = spec.macs(CLIENT_MAC, rig.cli0_mac);
        if rng.percent(10) {
            spec.ip_options = ip_options(rng);
        }
        let mut frame = spec.build();
        tcp_details(rng, &mut frame, 20 + spec.ip_options.len());
        frame
    }

    /// A backend's reply to a flow the program created (or to any port of the SNAT address).
    fn reply(&mut self, rig: &Rig, model: &Model) -> Vec<u8> {
        let rng = &mut self.rng;
        let (src, dst, proto) = if !model.replies.is_empty() && rng.percent(95) {
            // Recent flows are the likeliest to be live.
            let n = model.replies.len();
            let back = if rng.percent(70) {
                model.replies[n - 1 - rng.below(n.min(64))]
            } else {
                *rng.pick(&model.replies)
            };
            (back.src, back.dst, back.proto)
        } else {
            let b = rng.pick(&BACKENDS[..4]);
            let proto = if b.addr.port() == 5353 { UDP } else { TCP };
            let port = rng.range(1, 65535) as u16;
            (b.addr, SocketAddrV4::new(SNAT, port), proto)
        };
        let mac = BACKENDS
            .iter()
            .find(|b| b.addr.ip() == src.ip())
            .map_or([2, 0, 0, 0, 0, 1], |b| b.mac);
        let mut spec = if proto == TCP {
            FrameSpec::tcp(src, dst, tcp_flags(rng)).payload(&payload(rng))
        } else {
            FrameSpec::udp(src, dst, &payload(rng))
        };
        spec = spec.macs(mac, rig.bk0_mac);
        let mut frame = spec.build();
        tcp_details(rng, &mut frame, 20);
        frame
    }

    /// Anything else that reaches the interface.
    fn other(&mut self, rig: &Rig) -> Vec<u8> {
        let rng = &mut self.rng;
        let src = client_addr(rng);
        match rng.below(9) {
            // Not ours at all: the host's own traffic, other hosts.
            0 | 1 => {
                let dst = SocketAddrV4::new(Ipv4Addr::from(rng.next() as u32), rng.next() as u16);
                let spec = if rng.percent(50) {
                    FrameSpec::tcp(src, dst, tcp_flags(rng))
                } else {
                    FrameSpec::udp(src, dst, &payload(rng))
                };
                spec.macs(CLIENT_MAC, rig.cli0_mac).build()
            }
            // The VIP on a port or protocol no service has.
            2 => {
                let (port, proto) = *rng.pick(&[
                    (22, TCP),
                    (443, TCP),
                    (80, UDP),
                    (53, TCP),
                    (81, UDP),
                    (54, TCP),
                    (0, TCP),
                    (65535, UDP),
                ]);
                let dst = SocketAddrV4::new(VIP, port);
                let spec = if proto == TCP {
                    FrameSpec::tcp(src, dst, tcp_flags(rng))
                } else {
                    FrameSpec::udp(src, dst, &payload(rng))
                };
                spec.macs(CLIENT_MAC, rig.cli0_mac).build()
            }
            // ICMP, GRE, ESP, SCTP, anything, to the VIP or the SNAT address.
            3 | 4 => {
                let dst = if rng.percent(50) { VIP } else { SNAT };
                let mut frame = FrameSpec::udp(src, SocketAddrV4::new(dst, 80), &payload(rng))
                    .macs(CLIENT_MAC, rig.cli0_mac)
                    .build();
                let any = rng.byte();
                frame[ETH_HLEN + 9] = *rng.pick(&[1, 2, 47, 50, 132, 0, 255, any]);
                fix_checksums(&mut frame);
                frame
            }
            // The host's own traffic to the SNAT address.
            5 => FrameSpec::tcp(src, SocketAddrV4::new(SNAT, 22), tcp_flags(rng))
                .macs(CLIENT_MAC, rig.bk0_mac)
                .build(),
            6 => arp(rng),
            7 => ipv6(rng),
            // Random bytes; half of them claiming IPv4 to the VIP.
            _ => {
                let len = rng.range(ETH_HLEN, 200);
                let mut frame = rng.bytes(len);
                if rng.percent(50) && len >= ETH_HLEN + 20 {
                    frame[12..14].copy_from_slice(&[0x08, 0x00]);
                    frame[ETH_HLEN + 16..ETH_HLEN + 20].copy_from_slice(&VIP.octets());
                    if rng.percent(50) {
                        frame[ETH_HLEN] = 0x45;
                        frame[ETH_HLEN + 9] = *rng.pick(&[TCP, UDP]);
                    }
                }
                frame
            }
        }
    }

    /// Breaks `frame` in one to three ways.
    fn mutate(&mut self, frame: &mut Vec<u8>) {
        let rng = &mut self.rng;
        let ip = ETH_HLEN;
        for _ in 0..rng.range(1, 3) {
            let len = frame.len();
            match rng.below(17) {
                // Bits flipped anywhere.
                0 | 1 => {
                    for _ in 0..rng.range(1, 4) {
                        let at = rng.below(len);
                        frame[at] ^= 1 << rng.below(8);
                    }
                }
                2 => {
                    let at = rng.below(len);
                    frame[at] = rng.byte();
                }
                // Truncated, or padded to any length.
                3 => frame.truncate(rng.range(ETH_HLEN, len)),
                4 => {
                    let n = rng.range(1, 64);
                    frame.extend(rng.bytes(n));
                }
                // IHL of any value, the rest unchanged.
                5 if len > ip => frame[ip] = (frame[ip] & 0xf0) | rng.below(16) as u8,
                // Fragments: MF, an offset, or both.
                6 if len > ip + 8 => {
                    let frag = match rng.below(3) {
                        0 => 0x2000,
                        1 => rng.range(1, 0x1fff) as u16,
                        _ => 0x2000 | rng.range(1, 0x1fff) as u16,
                    };
                    let keep_df = u16::from_be_bytes([frame[ip + 6], frame[ip + 7]]) & 0x4000;
                    frame[ip + 6..ip + 8].copy_from_slice(&(frag | keep_df).to_be_bytes());
                }
                // The IPv4 total length off by a little or a lot.
                7 if len > ip + 4 => {
                    let total = be16(frame, ip + 2) as i64;
                    let new = match rng.below(3) {
                        0 => total + rng.range(1, 8) as i64,
                        1 => total - rng.range(1, 8) as i64,
                        _ => rng.next() as u16 as i64,
                    };
                    frame[ip + 2..ip + 4]
                        .copy_from_slice(&(new.clamp(0, 65535) as u16).to_be_bytes());
                }
                // TCP data offset or UDP length of any value.
                8 if len > ip + 20 => {
                    let l4 = ip + usize::from(frame[ip] & 0x0f) * 4;
                    if frame[ip + 9] == TCP && l4 + 13 <= len {
                        frame[l4 + 12] = ((rng.below(16) as u8) << 4) | (frame[l4 + 12] & 0x0f);
                    } else if l4 + 6 <= len {
                        let udp_len = rng.next() as u16 % 100;
                        frame[l4 + 4..l4 + 6].copy_from_slice(&udp_len.to_be_bytes());
                    }
                }
                // Another protocol or version.
                9 if len > ip + 9 => frame[ip + 9] = rng.byte(),
                10 if len > ip => frame[ip] = (rng.byte() & 0xf0) | (frame[ip] & 0x0f),
                // A bad checksum, IPv4 or TCP/UDP.
                11 if len > ip + 30 => {
                    let ihl = usize::from(frame[ip] & 0x0f) * 4;
                    let at = if rng.percent(50) || ip + ihl + 18 > len {
                        ip + 10
                    } else if frame[ip + 9] == TCP {
                        ip + ihl + 16
                    } else {
                        ip + ihl + 6
                    };
                    frame[at] ^= rng.range(1, 255) as u8;
                }
                // 802.1Q, or QinQ.
                12 if len >= 14 => {
                    let mut tag = vec![0x81, 0x00, rng.byte() & 0x0f, rng.byte()];
                    if rng.percent(40) {
                        tag.splice(0..0, [0x88, 0xa8, rng.byte() & 0x0f, rng.byte()]);
                    }
                    frame.splice(12..12, tag);
                }
                // Any EtherType.
                13 if len >= 14 => {
                    let ethertype = *rng.pick(&[0x86dd, 0x0806, 0x8100, 0x88a8, 0x0801, 0x0008]);
                    frame[12..14].copy_from_slice(&(ethertype as u16).to_be_bytes());
                }
                // The destination swapped for another address of ours, or not ours.
                14 if len >= ip + 20 => {
                    let any = Ipv4Addr::from(rng.next() as u32);
                    let dst = *rng.pick(&[VIP, SNAT, CLIENT, any]);
                    frame[ip + 16..ip + 20].copy_from_slice(&dst.octets());
                    fix_checksums(frame);
                }
                // Structure broken with the checksums made right again, so nothing but
                // the structure is wrong.
                15 => fix_checksums(frame),
                // IPv4 options inserted (valid or not), header and checksums consistent.
                _ if len >= ip + 20 => {
                    let ihl = usize::from(frame[ip] & 0x0f) * 4;
                    let options = ip_options(rng);
                    if ihl + options.len() <= 60 && ip + ihl <= len {
                        let n = options.len();
                        frame.splice(ip + ihl..ip + ihl, options);
                        frame[ip] = (frame[ip] & 0xf0) | ((ihl + n) / 4) as u8;
                        let total = be16(frame, ip + 2) + n;
                        frame[ip + 2..ip + 4].copy_from_slice(&(total as u16).to_be_bytes());
                        fix_checksums(frame);
                    }
                }
                _ => {}
            }
        }
        if frame.len() < ETH_HLEN {
            frame.resize(ETH_HLEN, 0);
        }
    }
}

/// IPv4 options: NOPs and EOL, record-route-like garbage, 4 to 40 bytes.
fn ip_options(rng: &mut Rng) -> Vec<u8> {
    let len = rng.range(1, 10) * 4;
    if rng.percent(50) {
        let mut o = vec![1; len - 1];
        o.push(0);
        o
    } else {
        rng.bytes(len)
    }
}

fn arp(rng: &mut Rng) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&CLIENT_MAC);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 8, 0, 6, 4, 0, *rng.pick(&[1, 2])]);
    f.extend_from_slice(&CLIENT_MAC);
    f.extend_from_slice(&CLIENT.octets());
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&rng.pick(&[VIP, SNAT]).octets());
    f
}

fn ipv6(rng: &mut Rng) -> Vec<u8> {
    let payload = payload(rng);
    let mut f = vec![0x02, 0, 0, 0, 0, 2];
    f.extend_from_slice(&CLIENT_MAC);
    f.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0]);
    f.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    f.extend_from_slice(&[*rng.pick(&[TCP, UDP, 58]), 64]);
    f.extend(rng.bytes(32));
    f.extend(payload);
    f
}

// ---------------------------------------------------------------------------------------
// Checking counters and maps against the model.

fn check_counters(report: &TrafficReport, model: &Model, sent: u64, context: &str) {
    let total: u64 = report.events.iter().map(|(_, n)| n).sum();
    assert_eq!(total, sent, "{context}: events add up to the packets sent");
    let mut pass_rewritten = 0;
    for (event, count) in &report.events {
        if PASS_REWRITTEN.contains(event) {
            pass_rewritten += count;
        } else {
            assert_eq!(
                *count, model.expected.events[*event as usize],
                "{context}: {event:?} counter"
            );
        }
    }
    assert_eq!(
        pass_rewritten, model.expected.pass_rewritten,
        "{context}: rewritten and passed to the kernel"
    );
    for (i, def) in SERVICES.iter().enumerate() {
        let service = report.service(def.name).unwrap();
        assert_eq!(
            service.counters, model.expected.services[i],
            "{context}: counters of service {}",
            def.name
        );
        for (j, b) in BACKENDS.iter().enumerate().filter(|(_, b)| b.service == i) {
            assert_eq!(
                service.backend(b.name).unwrap().counters,
                model.expected.backends[j],
                "{context}: counters of backend {}/{}",
                def.name,
                b.name
            );
        }
    }
}

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid clock id and a valid out pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The connection table holds exactly the model's flows, each well-formed.
fn check_flow_table(rig: &Rig, model: &Model, context: &str) {
    let program = &rig.program;
    let now = monotonic_ns();
    let flows: HashMap<FlowKey, Flow> = program.flows.iter().map(Result::unwrap).collect();
    assert_eq!(flows.len(), model.flows.len(), "{context}: FLOWS entries");
    let service_ids: Vec<u32> = (0..SERVICES.len()).map(|s| program.service_id(s)).collect();
    for (tuple, expected) in &model.flows {
        let flow = flows
            .get(&tuple.key())
            .unwrap_or_else(|| panic!("{context}: flow {tuple:?} missing"));
        let backend = &BACKENDS[expected.backend];
        let in_table = program.backends.get(&flow.backend_id, 0).unwrap();
        let (ifindex, src_mac, dst_mac) = expected.hop;
        let ok = flow.backend_addr == addr_to_wire(*backend.addr.ip())
            && flow.backend_port == port_to_wire(backend.addr.port())
            && (in_table.addr, in_table.port) == (flow.backend_addr, flow.backend_port)
            && flow.snat_addr == addr_to_wire(SNAT)
            && flow.snat_port == port_to_wire(expected.snat_port)
            && flow.service_id == service_ids[expected.service]
            && flow.flags == expected.flags
            && flow.last_seen_ns <= now
            && flow.client_hop.ifindex == ifindex
            && flow.client_hop.src_mac == src_mac
            && flow.client_hop.dst_mac == dst_mac
            && flow._pad == 0;
        assert!(
            ok,
            "{context}: flow {tuple:?} is {flow:?}, expected {expected:?}"
        );
    }
    let returns: HashMap<FlowKey, FlowKey> =
        program.nat_return.iter().map(Result::unwrap).collect();
    assert_eq!(
        returns.len(),
        model.nat_return.len(),
        "{context}: NAT_RETURN entries"
    );
    for (back, client) in &model.nat_return {
        assert_eq!(
            returns.get(&back.key()),
            Some(&client.key()),
            "{context}: return entry {back:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// The test.

struct Run {
    rig: Rig,
    model: Model,
    generator: Generator,
    sent: u64,
    dataplane: XdpDataplane,
    /// The sweeper's and resolver's map handles, unused: the test ages flows itself.
    _background: BackgroundMaps,
}

impl Run {
    /// Runs the program on `frame`, judges the outcome and returns the XDP action.
    fn send(&mut self, frame: &[u8], ingress: u32) -> u32 {
        let (action, out) = self.rig.program.run(frame, ingress, 1);
        let out = out.to_vec();
        self.sent += 1;
        let seen = Seen {
            frame,
            ingress,
            action,
            out: &out,
        };
        self.model.judge(&self.rig, &seen);
        if self.sent.is_multiple_of(CHUNK) {
            self.check_counters("after a chunk");
        }
        action
    }

    fn check_counters(&self, context: &str) {
        let report = self.dataplane.traffic().unwrap();
        check_counters(&report, &self.model, self.sent, context);
    }

    /// Removes the oldest flows from the connection table, as the controller's sweeper
    /// does with expired ones, once more than [`MAX_LIVE_FLOWS`] are live.
    fn age_out(&mut self) {
        if self.model.flows.len() <= MAX_LIVE_FLOWS {
            return;
        }
        while self.model.flows.len() > MAX_LIVE_FLOWS / 2 {
            let tuple = self.model.opened.pop_front().unwrap();
            let Some(flow) = self.model.flows.get(&tuple) else {
                continue;
            };
            let back = flow.return_tuple(tuple.proto);
            let program = &mut self.rig.program;
            if self.model.nat_return.get(&back) == Some(&tuple) {
                program.nat_return.remove(&back.key()).unwrap();
            }
            program.flows.remove(&tuple.key()).unwrap();
            self.model.retire(&tuple);
            self.model.aged_out += 1;
        }
    }

    /// One random packet, mutated or not.
    fn fuzz_one(&mut self) {
        self.age_out();
        let rig = &self.rig;
        let g = &mut self.generator;
        let (mut frame, toward_backends) = match g.rng.below(100) {
            0..40 => (g.client_packet(rig, 80, TCP), true),
            40..52 => (g.client_packet(rig, 53, UDP), true),
            52..55 => (g.client_packet(rig, 81, TCP), true),
            55..57 => (g.client_packet(rig, 54, UDP), true),
            57..80 => (g.reply(rig, &self.model), false),
            _ => (g.other(rig), true),
        };
        if g.rng.percent(45) {
            g.mutate(&mut frame);
        }
        // Now and then from the other side: forwarded out of the same interface (TX).
        let ingress = if toward_backends == g.rng.percent(85) {
            rig.cli0
        } else {
            rig.bk0
        };
        self.send(&frame, ingress);
    }

    /// Every truncation of a few valid frames, with the IPv4 total length left as it was
    /// and made to fit.
    fn truncations(&mut self) {
        let rig = &self.rig;
        let mut bases = Vec::new();
        let mut syn = FrameSpec::tcp(
            SocketAddrV4::new(CLIENT, 50000),
            SocketAddrV4::new(VIP, 80),
            SYN,
        )
        .payload(b"an odd-length payload")
        .macs(CLIENT_MAC, rig.cli0_mac);
        syn.ip_options = vec![1, 1, 1, 0];
        bases.push((syn.build(), rig.cli0));
        bases.push((
            FrameSpec::udp(
                SocketAddrV4::new(CLIENT, 50001),
                SocketAddrV4::new(VIP, 53),
                b"query",
            )
            .macs(CLIENT_MAC, rig.cli0_mac)
            .build(),
            rig.cli0,
        ));
        bases.push((
            FrameSpec::tcp(
                SocketAddrV4::new(CLIENT, 50002),
                SocketAddrV4::new(VIP, 81),
                SYN,
            )
            .macs(CLIENT_MAC, rig.cli0_mac)
            .build(),
            rig.cli0,
        ));
        bases.push((
            FrameSpec::tcp(BACKENDS[0].addr, SocketAddrV4::new(SNAT, 10000), SYN | ACK)
                .payload(b"reply")
                .macs(BACKENDS[0].mac, rig.bk0_mac)
                .build(),
            rig.bk0,
        ));
        for (frame, ingress) in bases {
            for len in ETH_HLEN..=frame.len() {
                let cut = frame[..len].to_vec();
                self.send(&cut, ingress);
                if len >= ETH_HLEN + 20 {
                    let mut fitted = cut;
                    let total = (len - ETH_HLEN) as u16;
                    fitted[ETH_HLEN + 2..ETH_HLEN + 4].copy_from_slice(&total.to_be_bytes());
                    fix_checksums(&mut fitted);
                    self.send(&fitted, ingress);
                }
            }
        }
    }

    /// Runs `packets` random packets, then checks counters, the connection table and that
    /// the service tables are what the controller wrote.
    fn phase(&mut self, name: &str, packets: u64, tables: &Tables) {
        for _ in 0..packets {
            self.fuzz_one();
        }
        self.check_counters(&format!("end of phase {name}"));
        check_flow_table(&self.rig, &self.model, &format!("end of phase {name}"));
        assert_eq!(
            self.rig.program.tables(),
            *tables,
            "phase {name}: the service tables changed"
        );
    }
}

fn plan(config: &Config, failed: &[usize]) -> Plan {
    let status = failed
        .iter()
        .map(|&b| {
            let def = &BACKENDS[b];
            (
                (SERVICES[def.service].name.to_owned(), def.name.to_owned()),
                BackendStatus {
                    healthy: false,
                    admin: AdminState::Ready,
                },
            )
        })
        .collect();
    Plan::compute(config, &status)
}

/// Loads the program in `ns`, attaches it and installs the services, every backend up.
/// Call it on a thread inside `ns`.
fn start(ns: &Netns, seed: u64) -> (Run, Config) {
    let config = Config::parse(&config(), "<fuzz config>").unwrap();
    let (mut dataplane, background) =
        XdpDataplane::load(&config.dataplane, &config.timeouts, None).unwrap();
    dataplane
        .attach(&config.dataplane.interfaces, config.dataplane.attach)
        .unwrap();
    dataplane.apply(&plan(&config, &[])).unwrap();
    let rig = Rig {
        program: Program::attached(ns, "cli0"),
        cli0: link::ifindex(ns, "cli0").unwrap(),
        bk0: link::ifindex(ns, "bk0").unwrap(),
        cli0_mac: link::mac(ns, "cli0").unwrap(),
        bk0_mac: link::mac(ns, "bk0").unwrap(),
    };
    let run = Run {
        rig,
        model: Model::new(),
        generator: Generator { rng: Rng(seed) },
        sent: 0,
        dataplane,
        _background: background,
    };
    (run, config)
}

#[test]
fn a_million_random_and_mutated_packets() {
    let seed = seed();
    let packets = packets();
    println!("seed = {seed} (GERBANG_FUZZ_SEED={seed} repeats this run), {packets} packets");
    let ns = namespace();
    ns.run(|| {
        let (mut run, config) = start(&ns, seed);
        let all_up = run.rig.program.tables();
        let started = Instant::now();

        run.truncations();
        let truncations = run.sent;
        let rest = packets.saturating_sub(truncations);
        run.phase("A (all backends up)", rest / 2, &all_up);

        run.dataplane
            .apply(&plan(&config, &FAILED_IN_PHASE_B))
            .unwrap();
        for b in FAILED_IN_PHASE_B {
            run.model.failed[b] = true;
        }
        let failed = run.rig.program.tables();
        run.phase("B (b3 and d1 failed)", rest / 4, &failed);

        run.dataplane.apply(&plan(&config, &[])).unwrap();
        run.model.failed = [false; BACKENDS.len()];
        let restored = run.rig.program.tables();
        assert_eq!(restored, all_up, "the same plan gives the same tables");
        run.phase("C (all up again)", rest - rest / 2 - rest / 4, &all_up);
        let elapsed = started.elapsed();

        known_good_connection(&mut run);

        let model = &run.model;
        println!(
            "{} packets ({truncations} truncations) in {:.1} s ({:.0} per second): {} new \
             flows, {} packets of existing ones, {} flows aged out, {} live at the end",
            run.sent,
            elapsed.as_secs_f64(),
            run.sent as f64 / elapsed.as_secs_f64(),
            model.replies.len(),
            model.continued,
            model.aged_out,
            model.flows.len(),
        );
        for (event, count) in run.dataplane.traffic().unwrap().events {
            if count > 0 {
                println!("  {:>20} {count}", event.name());
            }
        }
        assert!(run.sent >= packets);
    })
    .unwrap();
}

/// After all that, a fresh connection is translated both ways, checksums intact.
fn known_good_connection(run: &mut Run) {
    let client = (1..1024)
        .map(|port| SocketAddrV4::new(CLIENT, port))
        .find(|client| !run.model.flows.keys().any(|t| t.src == *client))
        .expect("a client port without a flow");
    let (cli0, bk0, cli0_mac, bk0_mac) =
        (run.rig.cli0, run.rig.bk0, run.rig.cli0_mac, run.rig.bk0_mac);
    let syn = FrameSpec::tcp(client, SocketAddrV4::new(VIP, 80), SYN)
        .payload(b"hello")
        .macs(CLIENT_MAC, cli0_mac)
        .build();
    let (action, out) = run.rig.program.run(&syn, cli0, 1);
    assert_eq!(action, XDP_REDIRECT);
    let out = out.to_vec();
    assert!(frames::ipv4_checksum_ok(&out) && frames::l4_checksum_ok(&out));
    let to_backend = frames::decode(&out);
    let backend = BACKENDS[..3]
        .iter()
        .find(|b| b.addr == to_backend.dst)
        .expect("forwarded to a web backend");
    assert_eq!(*to_backend.src.ip(), SNAT);
    assert_eq!(
        (to_backend.eth_dst, to_backend.eth_src),
        (backend.mac, bk0_mac)
    );
    assert_eq!(to_backend.payload, b"hello");
    run.sent += 1;
    let seen = Seen {
        frame: &syn,
        ingress: cli0,
        action,
        out: &out,
    };
    run.model.judge(&run.rig, &seen);

    let syn_ack = FrameSpec::tcp(backend.addr, to_backend.src, SYN | ACK)
        .macs(backend.mac, bk0_mac)
        .build();
    let (action, out) = run.rig.program.run(&syn_ack, bk0, 1);
    assert_eq!(action, XDP_REDIRECT);
    let out = out.to_vec();
    assert!(frames::ipv4_checksum_ok(&out) && frames::l4_checksum_ok(&out));
    let to_client = frames::decode(&out);
    assert_eq!(
        (to_client.src, to_client.dst),
        (SocketAddrV4::new(VIP, 80), client)
    );
    assert_eq!(
        (to_client.eth_dst, to_client.eth_src),
        (CLIENT_MAC, cli0_mac)
    );
    run.sent += 1;
    let seen = Seen {
        frame: &syn_ack,
        ingress: bk0,
        action,
        out: &out,
    };
    run.model.judge(&run.rig, &seen);
    run.check_counters("after the known-good connection");
    check_flow_table(&run.rig, &run.model, "after the known-good connection");
}

/// Regression (found by the fuzzer): a segment with RST set was answered with a RST when
/// its service had no backend or its flow's backend had failed. A RST is never answered
/// (RFC 9293 3.10.7.1); two balancers could otherwise bounce RSTs between them for ever.
#[test]
fn a_rst_is_never_answered_with_a_rst() {
    let ns = namespace();
    ns.run(|| {
        let (mut run, config) = start(&ns, 0);
        let (cli0, cli0_mac) = (run.rig.cli0, run.rig.cli0_mac);
        let frame = |port: u16, service: u16, flags: u8| {
            let client = SocketAddrV4::new(CLIENT, port);
            FrameSpec::tcp(client, SocketAddrV4::new(VIP, service), flags)
                .macs(CLIENT_MAC, cli0_mac)
                .build()
        };

        // No backend available: a SYN is answered with a RST, a SYN with RST set dropped.
        assert_eq!(run.send(&frame(2000, 81, SYN), cli0), XDP_TX);
        assert_eq!(run.send(&frame(2001, 81, SYN | RST), cli0), XDP_DROP);

        // Flows on a backend that fails: the next segment is answered with a RST unless
        // it carries one.
        for port in 3000..3006 {
            assert_eq!(run.send(&frame(port, 80, SYN), cli0), XDP_REDIRECT);
        }
        let b3 = SocketAddrV4::new(*BACKENDS[2].addr.ip(), BACKENDS[2].addr.port());
        let mut on_b3: Vec<u16> = run
            .model
            .flows
            .iter()
            .filter(|(_, f)| BACKENDS[f.backend].addr == b3)
            .map(|(t, _)| t.src.port())
            .collect();
        on_b3.sort();
        assert_eq!(on_b3.len(), 2, "round-robin over three backends");
        run.dataplane
            .apply(&plan(&config, &FAILED_IN_PHASE_B))
            .unwrap();
        run.model.failed[2] = true;
        run.model.failed[3] = true;
        assert_eq!(run.send(&frame(on_b3[0], 80, ACK), cli0), XDP_TX);
        assert_eq!(run.send(&frame(on_b3[1], 80, RST | ACK), cli0), XDP_DROP);

        let report = run.dataplane.traffic().unwrap();
        for (event, count) in [
            (Event::RstNoBackend, 1),
            (Event::DropNoBackend, 1),
            (Event::RstBackendDown, 1),
            (Event::DropBackendDown, 1),
        ] {
            assert_eq!(report.event(event), count, "{event:?}");
        }
        run.check_counters("after the RSTs");
        check_flow_table(&run.rig, &run.model, "after the RSTs");
    })
    .unwrap();
}
