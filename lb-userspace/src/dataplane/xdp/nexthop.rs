//! Next hops towards backends, resolved by the controller.
//!
//! With IP forwarding disabled (a full-NAT balancer does not need the host to route) the
//! kernel answers every `bpf_fib_lookup` from XDP with "forwarding disabled". For that case
//! the controller resolves each backend's next hop itself (route, egress interface,
//! neighbour MAC) and writes it to `NEXT_HOPS`.
//!
//! It also registers each next hop as a *managed* neighbour (Linux 5.16+), so the kernel
//! resolves it before the first packet and keeps it fresh: XDP never finds the neighbour
//! missing, whichever way it looks. Neighbours gerbang made managed are removed on stop.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr},
};

use anyhow::{Context as _, Result, anyhow};
use aya::maps::{HashMap, MapData};
use futures::TryStreamExt as _;
use lb_common::{NextHop, wire::addr_to_wire};
use netlink_packet_route::{
    link::LinkAttribute,
    neighbour::{
        NeighbourAddress, NeighbourAttribute, NeighbourExtFlags, NeighbourMessage, NeighbourState,
    },
    route::{RouteAddress, RouteAttribute, RouteType},
};
use rtnetlink::{Handle, RouteMessageBuilder};
use tracing::{debug, info, warn};

pub struct NextHopResolver {
    netlink: Handle,
    map: HashMap<MapData, u32, NextHop>,
    /// (neighbour, ifindex) pairs gerbang made managed.
    managed: BTreeSet<(Ipv4Addr, u32)>,
    /// What `map` holds, to write only changes and log them once.
    written: BTreeMap<Ipv4Addr, NextHop>,
}

/// A neighbour as the kernel knows it.
struct Neighbour {
    state: NeighbourState,
    mac: Option<[u8; 6]>,
}

impl NextHopResolver {
    /// `netlink` must have been opened in the network namespace of the interfaces.
    pub fn new(netlink: Handle, map: HashMap<MapData, u32, NextHop>) -> Self {
        Self {
            netlink,
            map,
            managed: BTreeSet::new(),
            written: BTreeMap::new(),
        }
    }

    /// Resolves every backend's next hop and updates `NEXT_HOPS`. Returns the backends
    /// whose next hop is not known yet; they are retried on the next call.
    pub async fn refresh(&mut self, backends: &[Ipv4Addr]) -> Result<Vec<Ipv4Addr>> {
        let neighbours = self.neighbours().await?;
        let mut unresolved = Vec::new();
        for &backend in backends {
            match self.resolve(backend, &neighbours).await {
                Ok(Some(hop)) => self.write(backend, hop)?,
                Ok(None) => {
                    self.forget(backend)?;
                    unresolved.push(backend);
                }
                Err(err) => {
                    warn!(%backend, "cannot resolve the next hop: {err:#}");
                    self.forget(backend)?;
                    unresolved.push(backend);
                }
            }
        }
        let wanted: BTreeSet<Ipv4Addr> = backends.iter().copied().collect();
        let stale: Vec<Ipv4Addr> = self
            .written
            .keys()
            .filter(|addr| !wanted.contains(addr))
            .copied()
            .collect();
        for addr in stale {
            self.forget(addr)?;
        }
        Ok(unresolved)
    }

    /// Removes the managed neighbours gerbang added.
    pub async fn release(&mut self) {
        for (addr, ifindex) in std::mem::take(&mut self.managed) {
            let mut message = NeighbourMessage::default();
            message.header.ifindex = ifindex;
            message.header.family = netlink_packet_route::AddressFamily::Inet;
            message
                .attributes
                .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(
                    addr,
                )));
            if let Err(err) = self.netlink.neighbours().del(message).execute().await {
                debug!(%addr, ifindex, "removing managed neighbour: {err}");
            }
        }
    }

    /// The next hop for `backend`, or `None` while its neighbour is still being resolved.
    async fn resolve(
        &mut self,
        backend: Ipv4Addr,
        neighbours: &BTreeMap<(Ipv4Addr, u32), Neighbour>,
    ) -> Result<Option<NextHop>> {
        let (ifindex, gateway) = self.route(backend).await?;
        let hop_addr = gateway.unwrap_or(backend);
        let neighbour = neighbours.get(&(hop_addr, ifindex));
        let usable = neighbour.is_some_and(|n| {
            matches!(
                n.state,
                NeighbourState::Reachable
                    | NeighbourState::Stale
                    | NeighbourState::Delay
                    | NeighbourState::Probe
                    | NeighbourState::Permanent
            )
        });
        let operator_owned = neighbour
            .is_some_and(|n| matches!(n.state, NeighbourState::Permanent | NeighbourState::Noarp));
        if !operator_owned && !self.managed.contains(&(hop_addr, ifindex)) {
            self.manage(hop_addr, ifindex).await?;
        }
        let mac = match neighbour.and_then(|n| n.mac) {
            Some(mac) if usable => mac,
            _ => return Ok(None),
        };
        Ok(Some(NextHop {
            ifindex,
            src_mac: self.link_mac(ifindex).await?,
            dst_mac: mac,
        }))
    }

    /// The egress interface and gateway (if any) of the kernel's route to `addr`.
    async fn route(&self, addr: Ipv4Addr) -> Result<(u32, Option<Ipv4Addr>)> {
        let request = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(addr, 32)
            .build();
        let route = self
            .netlink
            .route()
            .get(request)
            .execute()
            .try_next()
            .await
            .with_context(|| format!("no route to {addr}"))?
            .ok_or_else(|| anyhow!("no route to {addr}"))?;
        if route.header.kind != RouteType::Unicast {
            return Err(anyhow!(
                "the route to {addr} is of type {:?}, not a unicast next hop",
                route.header.kind
            ));
        }
        let mut ifindex = None;
        let mut gateway = None;
        for attribute in &route.attributes {
            match attribute {
                RouteAttribute::Oif(index) => ifindex = Some(*index),
                RouteAttribute::Gateway(RouteAddress::Inet(via)) => gateway = Some(*via),
                _ => {}
            }
        }
        let ifindex = ifindex.ok_or_else(|| anyhow!("the route to {addr} has no interface"))?;
        Ok((ifindex, gateway))
    }

    /// Every IPv4 neighbour, keyed by (address, ifindex).
    async fn neighbours(&self) -> Result<BTreeMap<(Ipv4Addr, u32), Neighbour>> {
        let mut stream = self
            .netlink
            .neighbours()
            .get()
            .set_address_family(netlink_packet_route::AddressFamily::Inet)
            .execute();
        let mut neighbours = BTreeMap::new();
        while let Some(message) = stream.try_next().await.context("listing neighbours")? {
            let mut addr = None;
            let mut mac = None;
            for attribute in &message.attributes {
                match attribute {
                    NeighbourAttribute::Destination(NeighbourAddress::Inet(a)) => addr = Some(*a),
                    NeighbourAttribute::LinkLayerAddress(bytes) => {
                        mac = <[u8; 6]>::try_from(bytes.as_slice()).ok();
                    }
                    _ => {}
                }
            }
            if let Some(addr) = addr {
                let neighbour = Neighbour {
                    state: message.header.state,
                    mac,
                };
                neighbours.insert((addr, message.header.ifindex), neighbour);
            }
        }
        Ok(neighbours)
    }

    /// Asks the kernel to resolve `addr` on `ifindex` now and keep it resolved.
    async fn manage(&mut self, addr: Ipv4Addr, ifindex: u32) -> Result<()> {
        let mut request = self
            .netlink
            .neighbours()
            .add(ifindex, IpAddr::V4(addr))
            .state(NeighbourState::None)
            .replace();
        request
            .message_mut()
            .attributes
            .push(NeighbourAttribute::ExtFlags(NeighbourExtFlags::Managed));
        request
            .execute()
            .await
            .with_context(|| format!("adding managed neighbour {addr} on interface {ifindex}"))?;
        self.managed.insert((addr, ifindex));
        debug!(%addr, ifindex, "managed neighbour added");
        Ok(())
    }

    async fn link_mac(&self, ifindex: u32) -> Result<[u8; 6]> {
        let link = self
            .netlink
            .link()
            .get()
            .match_index(ifindex)
            .execute()
            .try_next()
            .await?
            .ok_or_else(|| anyhow!("interface {ifindex} vanished"))?;
        link.attributes
            .iter()
            .find_map(|attribute| match attribute {
                LinkAttribute::Address(bytes) => <[u8; 6]>::try_from(bytes.as_slice()).ok(),
                _ => None,
            })
            .ok_or_else(|| anyhow!("interface {ifindex} has no Ethernet address"))
    }

    fn write(&mut self, backend: Ipv4Addr, hop: NextHop) -> Result<()> {
        if self.written.get(&backend) == Some(&hop) {
            return Ok(());
        }
        self.map.insert(addr_to_wire(backend), hop, 0)?;
        info!(%backend, ifindex = hop.ifindex, mac = %format_mac(hop.dst_mac), "next hop resolved");
        self.written.insert(backend, hop);
        Ok(())
    }

    fn forget(&mut self, backend: Ipv4Addr) -> Result<()> {
        if self.written.remove(&backend).is_some() {
            self.map.remove(&addr_to_wire(backend))?;
            info!(%backend, "next hop unresolved");
        }
        Ok(())
    }
}

fn format_mac(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}
