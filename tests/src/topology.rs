//! The standard scenarios gerbang is tested, demonstrated and benchmarked in.
//!
//! Each scenario owns its namespaces: dropping it kills what runs inside and deletes them,
//! and with them every veth and bridge. All addresses are in 10.200.0.0/16 and exist only
//! inside these namespaces.
//!
//! # Two-arm: the load balancer routes between a client network and a backend network
//!
//! ```text
//!  client ns            lb ns                       switch ns          backend ns i
//! +-------------+     +-----------------------+     +--------------+     +-----------------+
//! | c0          |-----| lbc 10.200.1.1/24     |     |     br0      |     | b{i}            |
//! | 10.200.1.2  |     |  VIP 10.200.100.1/32  |     |              |     | 10.200.2.{10+i} |
//! | default via |     | lbb 10.200.2.1/24     |-----| s-lb  s-b{i} |-----| default via     |
//! | 10.200.1.1  |     |  (= SNAT address)     |     |              |     | 10.200.2.1      |
//! +-------------+     +-----------------------+     +--------------+     +-----------------+
//! ```
//!
//! gerbang attaches XDP to `lbc` and `lbb`. Their peers (`c0`, `s-lb`) carry an
//! [`XdpPass`] program and have GRO on, so native `XDP_TX` and redirected frames are
//! delivered (see [`crate::xdp`]); senders (`c0`, `b{i}`) have TX checksum offload off so
//! packets carry full checksums (a local sender on veth otherwise leaves them partial).
//! IP forwarding in the lb namespace is off (the kernel must not be what forwards) unless
//! [`TwoArm::set_forwarding`] turns it on.
//!
//! # One-arm: client, load balancer and backends share one L2 segment
//!
//! ```text
//!                         switch ns: br0
//!        +-------------------+------------------+-------------------+
//!      s-c                 s-lb               s-b0       ...       s-b{i}
//!        |                   |                  |                   |
//!   c0 10.200.0.2     lb0 10.200.0.1         b0 10.200.0.10     b{i} 10.200.0.{10+i}
//!   (client ns)       + VIP 10.200.0.100/32  (backend ns 0)     (backend ns i)
//!                     (lb ns; SNAT 10.200.0.1)
//! ```
//!
//! gerbang attaches XDP to `lb0`; its peer `s-lb` carries an [`XdpPass`] program and has GRO
//! on, senders have TX checksum offload off.
//!
//! IPv6 is disabled in every namespace so that no router solicitations, MLD reports or
//! DAD probes show up in packet counters.

use std::net::Ipv4Addr;
use std::path::Path;

use anyhow::{Context, Result, ensure};

use crate::Netns;
use crate::link::{add_addr, add_route, bridge, enslave, set_offload, set_up, veth_pair};
use crate::xdp::XdpPass;

/// Backends a topology supports (addresses 10.200.x.10 .. 10.200.x.249).
pub const MAX_BACKENDS: usize = 240;

/// One backend host: its namespace, interface and address.
#[derive(Debug)]
pub struct Backend {
    /// The backend's namespace.
    pub ns: Netns,
    /// Its interface (`b{i}`).
    pub ifname: String,
    /// Its address.
    pub addr: Ipv4Addr,
    /// Its position in the topology's backend list.
    pub index: usize,
}

impl Backend {
    /// Its name in test configs and in what its servers answer: `b{index}`.
    pub fn name(&self) -> String {
        format!("b{}", self.index)
    }
}

/// Client network and backend network joined by the load balancer (see module docs).
#[derive(Debug)]
pub struct TwoArm {
    /// `XDP_PASS` on the peers of the lb's interfaces; first, so it is detached first.
    peer_xdp: Vec<XdpPass>,
    /// The client's namespace.
    pub client: Netns,
    /// The client's interface (`c0`).
    pub client_if: String,
    /// The client's address, 10.200.1.2.
    pub client_addr: Ipv4Addr,
    /// The load balancer's namespace.
    pub lb: Netns,
    /// The load balancer's client-side interface (`lbc`); gerbang attaches here.
    pub lb_client_if: String,
    /// Address of `lbc`, 10.200.1.1 (the client's gateway).
    pub lb_client_addr: Ipv4Addr,
    /// The load balancer's backend-side interface (`lbb`); gerbang attaches here.
    pub lb_backend_if: String,
    /// Address of `lbb`, 10.200.2.1 (the backends' gateway).
    pub lb_backend_addr: Ipv4Addr,
    /// The virtual IP, 10.200.100.1, assigned as /32 to `lbc`.
    pub vip: Ipv4Addr,
    /// The SNAT address, 10.200.2.1 (the address of `lbb`).
    pub snat: Ipv4Addr,
    /// The switch's namespace, holding bridge `br0`.
    pub switch: Netns,
    /// The switch port facing the load balancer (`s-lb`, peer of `lbb`).
    pub switch_lb_if: String,
    /// The backends, `b{i}` at 10.200.2.(10+i).
    pub backends: Vec<Backend>,
}

impl TwoArm {
    /// Builds the two-arm topology with `n_backends` backends.
    pub fn new(n_backends: usize) -> Result<TwoArm> {
        ensure!(
            n_backends <= MAX_BACKENDS,
            "at most {MAX_BACKENDS} backends"
        );
        let client = quiet_netns("c")?;
        let lb = quiet_netns("lb")?;
        let switch = quiet_netns("sw")?;
        let mut topo = TwoArm {
            peer_xdp: Vec::new(),
            client,
            client_if: "c0".into(),
            client_addr: Ipv4Addr::new(10, 200, 1, 2),
            lb,
            lb_client_if: "lbc".into(),
            lb_client_addr: Ipv4Addr::new(10, 200, 1, 1),
            lb_backend_if: "lbb".into(),
            lb_backend_addr: Ipv4Addr::new(10, 200, 2, 1),
            vip: Ipv4Addr::new(10, 200, 100, 1),
            snat: Ipv4Addr::new(10, 200, 2, 1),
            switch,
            switch_lb_if: "s-lb".into(),
            backends: backend_netns(n_backends, [10, 200, 2])?,
        };
        topo.peer_xdp = topo.wire().context("building the two-arm topology")?;
        Ok(topo)
    }

    /// Creates links, addresses and routes; returns the peers' XDP programs.
    fn wire(&self) -> Result<Vec<XdpPass>> {
        let (client, lb, switch) = (&self.client, &self.lb, &self.switch);
        lb.sysctl("net.ipv4.ip_forward", "0")?;

        veth_pair(client, &self.client_if, lb, &self.lb_client_if)?;
        add_addr(client, &self.client_if, &format!("{}/24", self.client_addr))?;
        add_addr(
            lb,
            &self.lb_client_if,
            &format!("{}/24", self.lb_client_addr),
        )?;
        add_addr(lb, &self.lb_client_if, &format!("{}/32", self.vip))?;
        set_offload(client, &self.client_if, "tx", false)?;
        set_offload(client, &self.client_if, "gro", true)?;
        set_up(client, &self.client_if)?;
        set_up(lb, &self.lb_client_if)?;
        add_route(client, "default", &self.lb_client_addr.to_string())?;

        bridge(switch, BRIDGE)?;
        veth_pair(lb, &self.lb_backend_if, switch, &self.switch_lb_if)?;
        add_addr(
            lb,
            &self.lb_backend_if,
            &format!("{}/24", self.lb_backend_addr),
        )?;
        set_offload(switch, &self.switch_lb_if, "gro", true)?;
        enslave(switch, &self.switch_lb_if, BRIDGE)?;
        set_up(switch, &self.switch_lb_if)?;
        set_up(lb, &self.lb_backend_if)?;

        let gateway = self.lb_backend_addr.to_string();
        for backend in &self.backends {
            attach_backend(switch, backend)?;
            add_route(&backend.ns, "default", &gateway)?;
        }
        Ok(vec![
            XdpPass::attach(client, &self.client_if)?,
            XdpPass::attach(switch, &self.switch_lb_if)?,
        ])
    }

    /// Turns IP forwarding in the lb namespace on or off (off after [`TwoArm::new`]).
    ///
    /// With forwarding on, the lb namespace is an ordinary router between the two networks:
    /// useful to validate the topology itself, never what a gerbang test should rely on.
    pub fn set_forwarding(&self, on: bool) -> Result<()> {
        self.lb
            .sysctl("net.ipv4.ip_forward", if on { "1" } else { "0" })
    }

    /// The backends' addresses, in order.
    pub fn backend_addrs(&self) -> Vec<Ipv4Addr> {
        self.backends.iter().map(|b| b.addr).collect()
    }

    /// Every namespace of the topology.
    pub fn namespaces(&self) -> Vec<&Netns> {
        let mut all = vec![&self.client, &self.lb, &self.switch];
        all.extend(self.backends.iter().map(|b| &b.ns));
        all
    }
}

/// Client, load balancer and backends on one L2 segment (see module docs).
#[derive(Debug)]
pub struct OneArm {
    /// `XDP_PASS` on the peers of the lb's interfaces; first, so it is detached first.
    peer_xdp: Vec<XdpPass>,
    /// The client's namespace.
    pub client: Netns,
    /// The client's interface (`c0`).
    pub client_if: String,
    /// The client's address, 10.200.0.2.
    pub client_addr: Ipv4Addr,
    /// The load balancer's namespace.
    pub lb: Netns,
    /// The load balancer's only interface (`lb0`); gerbang attaches here.
    pub lb_if: String,
    /// Address of `lb0`, 10.200.0.1.
    pub lb_addr: Ipv4Addr,
    /// The virtual IP, 10.200.0.100, assigned as /32 to `lb0`.
    pub vip: Ipv4Addr,
    /// The SNAT address, 10.200.0.1 (the address of `lb0`).
    pub snat: Ipv4Addr,
    /// The switch's namespace, holding bridge `br0`.
    pub switch: Netns,
    /// The switch port facing the load balancer (`s-lb`, peer of `lb0`).
    pub switch_lb_if: String,
    /// The backends, `b{i}` at 10.200.0.(10+i).
    pub backends: Vec<Backend>,
}

impl OneArm {
    /// Builds the one-arm topology with `n_backends` backends.
    pub fn new(n_backends: usize) -> Result<OneArm> {
        ensure!(
            n_backends <= MAX_BACKENDS,
            "at most {MAX_BACKENDS} backends"
        );
        let client = quiet_netns("c")?;
        let lb = quiet_netns("lb")?;
        let switch = quiet_netns("sw")?;
        let mut topo = OneArm {
            peer_xdp: Vec::new(),
            client,
            client_if: "c0".into(),
            client_addr: Ipv4Addr::new(10, 200, 0, 2),
            lb,
            lb_if: "lb0".into(),
            lb_addr: Ipv4Addr::new(10, 200, 0, 1),
            vip: Ipv4Addr::new(10, 200, 0, 100),
            snat: Ipv4Addr::new(10, 200, 0, 1),
            switch,
            switch_lb_if: "s-lb".into(),
            backends: backend_netns(n_backends, [10, 200, 0])?,
        };
        topo.peer_xdp = topo.wire().context("building the one-arm topology")?;
        Ok(topo)
    }

    /// Creates links, addresses and routes; returns the peers' XDP programs.
    fn wire(&self) -> Result<Vec<XdpPass>> {
        let (client, lb, switch) = (&self.client, &self.lb, &self.switch);
        lb.sysctl("net.ipv4.ip_forward", "0")?;
        bridge(switch, BRIDGE)?;

        veth_pair(client, &self.client_if, switch, "s-c")?;
        add_addr(client, &self.client_if, &format!("{}/24", self.client_addr))?;
        set_offload(client, &self.client_if, "tx", false)?;
        enslave(switch, "s-c", BRIDGE)?;
        set_up(switch, "s-c")?;
        set_up(client, &self.client_if)?;

        veth_pair(lb, &self.lb_if, switch, &self.switch_lb_if)?;
        add_addr(lb, &self.lb_if, &format!("{}/24", self.lb_addr))?;
        add_addr(lb, &self.lb_if, &format!("{}/32", self.vip))?;
        set_offload(switch, &self.switch_lb_if, "gro", true)?;
        enslave(switch, &self.switch_lb_if, BRIDGE)?;
        set_up(switch, &self.switch_lb_if)?;
        set_up(lb, &self.lb_if)?;

        for backend in &self.backends {
            attach_backend(switch, backend)?;
        }
        Ok(vec![XdpPass::attach(switch, &self.switch_lb_if)?])
    }

    /// The backends' addresses, in order.
    pub fn backend_addrs(&self) -> Vec<Ipv4Addr> {
        self.backends.iter().map(|b| b.addr).collect()
    }

    /// Every namespace of the topology.
    pub fn namespaces(&self) -> Vec<&Netns> {
        let mut all = vec![&self.client, &self.lb, &self.switch];
        all.extend(self.backends.iter().map(|b| &b.ns));
        all
    }
}

/// The bridge in every switch namespace.
const BRIDGE: &str = "br0";

/// A namespace with IPv6 off, so new interfaces stay silent on IPv6.
fn quiet_netns(role: &str) -> Result<Netns> {
    let ns = Netns::new(role)?;
    if Path::new("/proc/sys/net/ipv6").exists() {
        ns.sysctl("net.ipv6.conf.all.disable_ipv6", "1")?;
        ns.sysctl("net.ipv6.conf.default.disable_ipv6", "1")?;
    }
    Ok(ns)
}

/// Namespaces for `n` backends at `prefix.(10+i)`, not yet wired.
fn backend_netns(n: usize, prefix: [u8; 3]) -> Result<Vec<Backend>> {
    (0..n)
        .map(|index| {
            Ok(Backend {
                ns: quiet_netns(&format!("b{index}"))?,
                ifname: format!("b{index}"),
                addr: Ipv4Addr::new(prefix[0], prefix[1], prefix[2], 10 + index as u8),
                index,
            })
        })
        .collect()
}

/// Connects a backend to the switch's bridge: `b{i}` <-> `s-b{i}`, /24 address, TX
/// checksum offload off.
fn attach_backend(switch: &Netns, backend: &Backend) -> Result<()> {
    let port = format!("s-{}", backend.ifname);
    veth_pair(&backend.ns, &backend.ifname, switch, &port)?;
    add_addr(
        &backend.ns,
        &backend.ifname,
        &format!("{}/24", backend.addr),
    )?;
    set_offload(&backend.ns, &backend.ifname, "tx", false)?;
    enslave(switch, &port, BRIDGE)?;
    set_up(switch, &port)?;
    set_up(&backend.ns, &backend.ifname)?;
    Ok(())
}
