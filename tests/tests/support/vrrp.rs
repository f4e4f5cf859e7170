//! VRRP tests' helpers: a LAN of namespaces on one bridge, gerbang's VRRP speaker running
//! in-process inside a namespace, keepalived inside another, and crafted advertisements.
//!
//! ```text
//!                         switch ns: br0
//!        +-------------------+-------------------+------- ...
//!       p0                  p1                  p2
//!        |                   |                   |
//!   lan0 10.200.50.1    lan0 10.200.50.2    lan0 10.200.50.3
//!   (node 0)            (node 1)            (node 2)
//! ```
//!
//! Virtual addresses are 10.200.50.100 and up; everything lives inside the namespaces.

use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    sync::mpsc as std_mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};
use gerbang::{
    config::{NotifyCommands, VirtualAddress, VrrpConfig, VrrpVersion},
    vrrp::{VrrpRunner, VrrpState, VrrpStatus},
};
use gerbang_testbed::{
    ChildGuard, Cmd, Netns, NsThread,
    link::{add_addr, bridge, enslave, mac, set_up, veth_pair},
};
use tokio::sync::{mpsc, oneshot, watch};

use super::tempdir::TempDir;

/// Every node's interface.
pub const IFACE: &str = "lan0";
/// The first virtual address; instances use it and the next few.
pub const VIP: Ipv4Addr = Ipv4Addr::new(10, 200, 50, 100);
pub const VIP2: Ipv4Addr = Ipv4Addr::new(10, 200, 50, 101);
/// How long a helper waits for something to happen before the test fails: generous, so
/// that a loaded machine does not fail a test. Tests assert on measured times instead.
pub const WAIT: Duration = Duration::from_secs(10);

/// Namespaces joined by a bridge.
pub struct Lan {
    pub nodes: Vec<Node>,
    switch: Netns,
}

pub struct Node {
    pub ns: Netns,
    pub addr: Ipv4Addr,
}

impl Lan {
    /// `n` nodes at 10.200.50.1, .2, ... on one bridge, IPv6 off.
    pub fn new(n: usize) -> Result<Lan> {
        let switch = quiet_netns("sw")?;
        bridge(&switch, "br0")?;
        let mut nodes = Vec::with_capacity(n);
        for i in 0..n {
            let ns = quiet_netns(&format!("v{i}"))?;
            let port = format!("p{i}");
            let addr = Ipv4Addr::new(10, 200, 50, 1 + i as u8);
            veth_pair(&ns, IFACE, &switch, &port)?;
            add_addr(&ns, IFACE, &format!("{addr}/24"))?;
            enslave(&switch, &port, "br0")?;
            set_up(&switch, &port)?;
            set_up(&ns, IFACE)?;
            nodes.push(Node { ns, addr });
        }
        Ok(Lan { nodes, switch })
    }

    pub fn ns(&self, node: usize) -> &Netns {
        &self.nodes[node].ns
    }

    pub fn addr(&self, node: usize) -> Ipv4Addr {
        self.nodes[node].addr
    }

    /// Whether `node`'s interface has `address` (`ip addr show`).
    pub fn holds(&self, node: usize, address: Ipv4Addr) -> bool {
        let out = self
            .ns(node)
            .ip(["-4", "-o", "addr", "show", "dev", IFACE])
            .unwrap_or_default();
        out.split_whitespace()
            .any(|word| word.split('/').next() == Some(&address.to_string()))
    }

    /// The nodes holding `address`.
    pub fn holders(&self, address: Ipv4Addr) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&node| self.holds(node, address))
            .collect()
    }

    /// Waits (up to [`WAIT`]) until exactly `node` holds `address`; returns how long
    /// that took.
    pub fn wait_sole_holder(&self, node: usize, address: Ipv4Addr) -> Duration {
        wait_for(WAIT, || self.holders(address) == [node]).unwrap_or_else(|_| {
            panic!(
                "node {node} is not the only holder of {address} after {WAIT:?}: held by {:?}",
                self.holders(address)
            )
        })
    }

    /// Takes `node` off the LAN as a host that lost power would be: its link goes down and
    /// the addresses a dead process left behind go with the reboot.
    pub fn power_off(&self, node: usize) {
        let ns = self.ns(node);
        ns.ip(["link", "set", "dev", IFACE, "down"]).unwrap();
        ns.ip(["-4", "addr", "flush", "dev", IFACE]).unwrap();
    }

    /// Takes `node` away for good, as a host that vanished: everything running in its
    /// namespace is killed (SIGKILL) and the namespace deleted, and with it its end of the
    /// LAN. An empty namespace takes its place, so the other nodes keep their numbers.
    pub fn vanish(&mut self, node: usize) -> Result<()> {
        let empty = quiet_netns(&format!("gone{node}"))?;
        drop(std::mem::replace(&mut self.nodes[node].ns, empty));
        Ok(())
    }

    /// Brings `node` back after [`Lan::power_off`], with its own address only.
    pub fn power_on(&self, node: usize) {
        let ns = self.ns(node);
        add_addr(ns, IFACE, &format!("{}/24", self.addr(node))).unwrap();
        set_up(ns, IFACE).unwrap();
    }

    /// Cuts `node` off the bridge or reconnects it. Its link stays up (carrier on both
    /// ends): a partition, not a failure.
    pub fn partition(&self, node: usize, cut: bool) {
        let port = format!("p{node}");
        let how: &[&str] = if cut {
            &["nomaster"]
        } else {
            &["master", "br0"]
        };
        let mut args = vec!["link", "set", "dev", port.as_str()];
        args.extend_from_slice(how);
        self.switch.ip(args).unwrap();
    }

    /// `node`'s Ethernet address.
    pub fn mac(&self, node: usize) -> [u8; 6] {
        mac(self.ns(node), IFACE).unwrap()
    }
}

/// A namespace with IPv6 off, so nothing but what a test sends shows up.
fn quiet_netns(role: &str) -> Result<Netns> {
    let ns = Netns::new(role)?;
    ns.sysctl("net.ipv6.conf.all.disable_ipv6", "1")?;
    ns.sysctl("net.ipv6.conf.default.disable_ipv6", "1")?;
    Ok(ns)
}

/// An instance on [`IFACE`] holding [`VIP`] and [`VIP2`], 100 ms v3 adverts, preempt,
/// one gratuitous ARP, nothing tracked.
pub fn instance(name: &str, vrid: u8, priority: u8) -> VrrpConfig {
    VrrpConfig {
        name: name.to_owned(),
        interface: IFACE.to_owned(),
        virtual_router_id: vrid,
        priority,
        version: VrrpVersion::V3,
        advert_interval: Duration::from_millis(100),
        preempt: true,
        preempt_delay: Duration::ZERO,
        virtual_addresses: [VIP, VIP2]
            .into_iter()
            .map(|address| VirtualAddress {
                address,
                prefix_len: 32,
            })
            .collect(),
        unicast_source: None,
        unicast_peers: Vec::new(),
        auth_password: None,
        garp_count: 1,
        garp_interval: Duration::from_millis(10),
        track_services: Vec::new(),
        track_interfaces: Vec::new(),
        track_scripts: Vec::new(),
        notify: NotifyCommands::default(),
    }
}

enum Request {
    Status(oneshot::Sender<Vec<VrrpStatus>>),
    Stop,
    Crash,
}

/// gerbang's VRRP speaker on a thread inside a namespace, with its own runtime, as the
/// controller runs it.
pub struct Speaker {
    requests: mpsc::UnboundedSender<Request>,
    health: watch::Sender<BTreeMap<String, usize>>,
    thread: Option<NsThread<()>>,
}

impl Speaker {
    /// Starts `instances` in `ns`; every service in `services` starts with one backend up.
    pub fn start(ns: &Netns, instances: Vec<VrrpConfig>, services: &[&str]) -> Result<Speaker> {
        let map = services.iter().map(|s| (s.to_string(), 1)).collect();
        let (health, health_rx) = watch::channel(map);
        let (requests, mut inbox) = mpsc::unbounded_channel();
        let (ready_tx, ready_rx) = std_mpsc::sync_channel(1);
        let thread = ns.spawn_thread("vrrp", move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a tokio runtime");
            runtime.block_on(async move {
                let runner = match VrrpRunner::start(&instances, health_rx).await {
                    Ok(runner) => {
                        let _ = ready_tx.send(Ok(()));
                        runner
                    }
                    Err(error) => {
                        let _ = ready_tx.send(Err(error));
                        return;
                    }
                };
                while let Some(request) = inbox.recv().await {
                    match request {
                        Request::Status(reply) => {
                            let _ = reply.send(runner.status());
                        }
                        Request::Stop => return runner.stop().await,
                        // No priority 0, no cleanup: a process that died.
                        Request::Crash => return,
                    }
                }
            })
        })?;
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .context("the VRRP speaker did not start within 10 s")??;
        Ok(Speaker {
            requests,
            health,
            thread: Some(thread),
        })
    }

    pub fn status(&self) -> Vec<VrrpStatus> {
        let (reply, answer) = oneshot::channel();
        self.requests.send(Request::Status(reply)).unwrap();
        answer.blocking_recv().unwrap()
    }

    /// The first instance's state.
    pub fn state(&self) -> VrrpState {
        self.status()[0].state
    }

    /// Waits (up to [`WAIT`]) until the first instance is in `state`; returns how long
    /// that took.
    pub fn wait_state(&self, state: VrrpState) -> Duration {
        wait_for(WAIT, || self.state() == state)
            .unwrap_or_else(|_| panic!("not {state} after {WAIT:?}: {:#?}", self.status()[0]))
    }

    /// Sets how many backends of `service` are up.
    pub fn set_health(&self, service: &str, up: usize) {
        self.health.send_modify(|map| {
            map.insert(service.to_owned(), up);
        });
    }

    /// Stops gracefully and waits.
    pub fn stop(mut self) {
        self.finish(Request::Stop);
    }

    /// Ends the speaker as a killed process ends: no advertisement, addresses left behind.
    pub fn crash(mut self) {
        self.finish(Request::Crash);
    }

    fn finish(&mut self, request: Request) {
        if let Some(thread) = self.thread.take() {
            let _ = self.requests.send(request);
            thread
                .join_timeout(Duration::from_secs(15))
                .expect("the VRRP speaker ends");
        }
    }
}

impl Drop for Speaker {
    fn drop(&mut self) {
        self.finish(Request::Stop);
    }
}

/// keepalived (Debian's 2.2.7), VRRP only, in a namespace, logging to a file.
pub struct Keepalived {
    child: ChildGuard,
    log: PathBuf,
    _dir: TempDir,
}

/// What keepalived logs about an advertisement it rejects (`vrrp_check_packet` and the
/// receive path of keepalived 2.2.7). gerbang's packets must cause none of these.
const KEEPALIVED_COMPLAINTS: &[&str] = &[
    "vrrp packet too",
    "invalid ttl",
    "wrong version",
    "invalid auth type",
    "auth, expecting",
    "invalid passwd",
    "advertisement interval mismatch",
    "invalid packet type",
    "unexpected ip number count",
    "ip_tot_len mismatch",
    "checksum",
    "expected multicast packet",
    "expected unicast packet",
    "vips but received",
    "not present in master advert",
    "not a unicast peer",
    "ttl/hl",
    "icast packet on",
    "unknown vrid",
];

impl Keepalived {
    pub fn start(ns: &Netns, config: &str) -> Result<Keepalived> {
        let dir = TempDir::new();
        let conf = dir.write("keepalived.conf", config);
        let log = dir.path().join("keepalived.log");
        let pid = |name: &str| dir.path().join(name);
        let cmd = Cmd::new("keepalived")
            .args(["-n", "-l", "-D", "-G", "-P", "-f"])
            .arg(&conf)
            .arg("-p")
            .arg(pid("keepalived.pid"))
            .arg("-r")
            .arg(pid("vrrp.pid"))
            .arg("-c")
            .arg(pid("checker.pid"))
            .log_to(&log);
        let child = ns.spawn(&cmd)?;
        let keepalived = Keepalived {
            child,
            log,
            _dir: dir,
        };
        wait_for(Duration::from_secs(5), || {
            keepalived.log().contains("Entering BACKUP STATE")
                || keepalived.log().contains("Entering MASTER STATE")
        })
        .map_err(|_| anyhow!("keepalived did not start: {}", keepalived.log()))?;
        Ok(keepalived)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Stops it (SIGTERM: it sends priority 0 as master and removes its addresses).
    pub fn stop(mut self) {
        self.child.terminate().unwrap();
        self.assert_no_complaints();
    }

    /// Panics with the log if keepalived rejected any advertisement.
    pub fn assert_no_complaints(&self) {
        let log = self.log();
        for line in log.lines() {
            let lower = line.to_lowercase();
            if let Some(complaint) = KEEPALIVED_COMPLAINTS.iter().find(|c| lower.contains(*c)) {
                panic!("keepalived complained ({complaint:?}): {line}\nfull log:\n{log}");
            }
        }
    }
}

/// Polls `done` every 10 ms until it holds; returns how long that took.
pub fn wait_for(timeout: Duration, mut done: impl FnMut() -> bool) -> Result<Duration> {
    let start = Instant::now();
    loop {
        if done() {
            return Ok(start.elapsed());
        }
        if start.elapsed() >= timeout {
            bail!("still false after {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Sends `message` (a VRRP message) from `ns` in an IPv4 packet to 224.0.0.18 with the
/// given source and TTL, out of [`IFACE`].
pub fn inject(ns: &Netns, source: Ipv4Addr, ttl: u8, message: &[u8]) -> Result<()> {
    use nix::sys::socket::{
        AddressFamily, MsgFlags, SockFlag, SockProtocol, SockType, SockaddrIn, sendto, setsockopt,
        socket, sockopt,
    };
    use std::os::fd::AsRawFd as _;

    let group = Ipv4Addr::new(224, 0, 0, 18);
    let mut packet = vec![0x45, 0xc0, 0, 0, 0, 0, 0, 0, ttl, 112, 0, 0];
    packet.extend_from_slice(&source.octets());
    packet.extend_from_slice(&group.octets());
    packet.extend_from_slice(message);
    let total = packet.len() as u16;
    packet[2..4].copy_from_slice(&total.to_be_bytes());
    ns.run(|| -> Result<()> {
        // IPPROTO_RAW: we write the IP header ourselves (the kernel fills its checksum).
        let fd = socket(
            AddressFamily::Inet,
            SockType::Raw,
            SockFlag::empty(),
            SockProtocol::Raw,
        )?;
        setsockopt(&fd, sockopt::BindToDevice, &IFACE.into())?;
        let to = SockaddrIn::from(std::net::SocketAddrV4::new(group, 0));
        sendto(fd.as_raw_fd(), &packet, &to, MsgFlags::empty())?;
        Ok(())
    })?
}

/// A VRRP advertisement built independently of gerbang's encoder: `version` 2 or 3,
/// checksum over the message (v2) or with the IPv4 pseudo-header to 224.0.0.18 (v3).
/// `interval` is centiseconds (v3) or seconds (v2); v2 carries `password` as auth type 1.
pub fn advert(
    version: u8,
    vrid: u8,
    priority: u8,
    interval: u16,
    addresses: &[Ipv4Addr],
    source: Ipv4Addr,
    password: Option<&str>,
) -> Vec<u8> {
    let mut m = vec![version << 4 | 1, vrid, priority, addresses.len() as u8];
    if version == 2 {
        m.push(u8::from(password.is_some()));
        m.push(interval as u8);
    } else {
        m.extend_from_slice(&interval.to_be_bytes());
    }
    m.extend_from_slice(&[0, 0]);
    for address in addresses {
        m.extend_from_slice(&address.octets());
    }
    let mut sum: u32 = 0;
    if version == 2 {
        let mut auth = [0u8; 8];
        if let Some(password) = password {
            auth[..password.len()].copy_from_slice(password.as_bytes());
        }
        m.extend_from_slice(&auth);
    } else {
        let s = source.octets();
        for word in [[s[0], s[1]], [s[2], s[3]], [224, 0], [0, 18], [0, 112]] {
            sum += u32::from(u16::from_be_bytes(word));
        }
        sum += m.len() as u32;
    }
    for word in m.chunks(2) {
        sum += u32::from(u16::from_be_bytes([word[0], *word.get(1).unwrap_or(&0)]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    let checksum = !(sum as u16);
    m[6..8].copy_from_slice(&checksum.to_be_bytes());
    m
}

/// A file a notify command appends to, and its lines.
pub fn read_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}
