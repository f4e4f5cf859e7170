//! Writes a [`Plan`] into the maps the XDP program reads: services, backends, rings and
//! the set of local addresses.
//!
//! Every change is made so that a packet in flight sees either the old state or the new
//! one, never a mix: backends are written before a ring names them, a ring is written into
//! the service's spare slot and made live by flipping one word, and a service key appears
//! only once its ring is live.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddrV4,
};

use anyhow::{Context as _, Result};
use aya::maps::{Array, HashMap, MapData};
use lb_common::{
    Backend, BackendRing, PROTO_TCP, PROTO_UDP, Service, ServiceKey,
    service::{ADDR_SNAT, ADDR_VIP, BACKEND_CUT_FLOWS, MAX_BACKENDS, MAX_SERVICES},
    wire::{addr_from_wire, addr_to_wire, port_from_wire, port_to_wire},
};

use super::{counters::CounterMaps, ids::IdPool, rcu::GracePeriods, ring};
use crate::{
    config::{DownPolicy, Protocol},
    dataplane::{BackendState, Plan, ServicePlan},
};

/// A backend as installed in the `BACKENDS` map.
#[derive(Clone, Debug)]
struct InstalledBackend {
    name: String,
    address: SocketAddrV4,
    id: u32,
    flags: u16,
}

/// A service as installed in the maps.
#[derive(Debug)]
struct Installed {
    id: u32,
    key: ServiceKey,
    /// In configuration order.
    backends: Vec<InstalledBackend>,
    /// The live ring; `None` until the first is written.
    ring: Option<BackendRing>,
    live_slot: u32,
    /// The grace period after which the spare slot, live until the last flip, may be
    /// rewritten; `None` when no reader can be in it.
    spare_free_after: Option<u64>,
}

/// A service a previous run installed, found in the pinned maps; names are not in the maps,
/// so backends are matched to the plan by address.
#[derive(Debug)]
struct Adopted {
    id: u32,
    live_slot: u32,
    ring: BackendRing,
    /// (id, address, flags) of the backends in its live ring.
    backends: Vec<(u32, SocketAddrV4, u16)>,
}

/// The maps the controller writes, and what it has written to them.
pub struct Tables {
    /// Owned here because an id's counters are zeroed before the id goes live again.
    counters: CounterMaps,
    services: HashMap<MapData, ServiceKey, Service>,
    local_addrs: HashMap<MapData, u32, u32>,
    ring_select: Array<MapData, u32>,
    rings: Array<MapData, BackendRing>,
    backends: Array<MapData, Backend>,
    installed: BTreeMap<String, Installed>,
    /// From the pinned maps, until the first plan claims them.
    adopted: BTreeMap<ServiceKey, Adopted>,
    /// Backend ids in the pinned maps that no adopted ring names (standby or down backends
    /// of the previous run), by address.
    adopted_spare: Vec<(u32, SocketAddrV4, u16)>,
    service_ids: IdPool,
    backend_ids: IdPool,
    grace: GracePeriods,
}

/// Names of what an id stands for, for counters.
#[derive(Clone, Debug)]
pub struct InstalledService {
    pub name: String,
    pub id: u32,
    pub backends: Vec<(String, SocketAddrV4, u32)>,
}

impl Tables {
    pub fn new(
        counters: CounterMaps,
        services: HashMap<MapData, ServiceKey, Service>,
        local_addrs: HashMap<MapData, u32, u32>,
        ring_select: Array<MapData, u32>,
        rings: Array<MapData, BackendRing>,
        backends: Array<MapData, Backend>,
    ) -> Self {
        Self {
            counters,
            services,
            local_addrs,
            ring_select,
            rings,
            backends,
            installed: BTreeMap::new(),
            adopted: BTreeMap::new(),
            adopted_spare: Vec::new(),
            service_ids: IdPool::new("service", MAX_SERVICES),
            backend_ids: IdPool::new("backend", MAX_BACKENDS),
            grace: GracePeriods::default(),
        }
    }

    pub fn counters(&self) -> &CounterMaps {
        &self.counters
    }

    /// Services as installed, with their ids.
    pub fn installed(&self) -> Vec<InstalledService> {
        self.installed
            .iter()
            .map(|(name, s)| InstalledService {
                name: name.clone(),
                id: s.id,
                backends: s
                    .backends
                    .iter()
                    .map(|b| (b.name.clone(), b.address, b.id))
                    .collect(),
            })
            .collect()
    }

    /// Reads what a previous run installed in the (pinned) maps, so that the next
    /// [`Tables::apply`] keeps its ids: flows and counters carry on. Returns the number of
    /// services found.
    pub fn adopt(&mut self) -> Result<usize> {
        let services: Vec<(ServiceKey, Service)> = self
            .services
            .iter()
            .collect::<Result<_, _>>()
            .context("reading SERVICES")?;
        let mut in_rings = BTreeSet::new();
        for (key, service) in services {
            let live_slot = self.ring_select.get(&service.id, 0)? & 1;
            let ring = self.rings.get(&(service.id * 2 + live_slot), 0)?;
            let mut backends = Vec::new();
            for &id in ring.slots.iter().take(ring.len as usize) {
                if in_rings.insert(id) {
                    let backend = self.backends.get(&id, 0)?;
                    backends.push((id, backend_address(&backend), backend.flags));
                    self.backend_ids.claim(id);
                }
            }
            self.service_ids.claim(service.id);
            self.adopted.insert(
                key,
                Adopted {
                    id: service.id,
                    live_slot,
                    ring,
                    backends,
                },
            );
        }
        for id in 0..MAX_BACKENDS {
            let backend = self.backends.get(&id, 0)?;
            if backend.addr != 0 && !in_rings.contains(&id) {
                self.backend_ids.claim(id);
                self.adopted_spare
                    .push((id, backend_address(&backend), backend.flags));
            }
        }
        Ok(self.adopted.len())
    }

    pub fn apply(&mut self, plan: &Plan) -> Result<()> {
        let wanted: BTreeSet<&str> = plan.services.iter().map(|s| s.name.as_str()).collect();
        let gone: Vec<String> = self
            .installed
            .keys()
            .filter(|name| !wanted.contains(name.as_str()))
            .cloned()
            .collect();

        // Addresses first when shrinking, last when growing: a packet is only ever
        // claimed for a service whose state is complete.
        self.shrink_local_addrs(plan)?;
        for name in gone {
            self.remove_service(&name)?;
        }
        for service in &plan.services {
            self.install_service(service)
                .with_context(|| format!("installing service {}", service.name))?;
        }
        // What the previous run had and this plan does not.
        for (key, adopted) in std::mem::take(&mut self.adopted) {
            self.services
                .remove(&key)
                .context("removing a service of the previous run")?;
            self.service_ids.release(adopted.id);
            for (id, _, _) in adopted.backends {
                self.backend_ids.release(id);
            }
        }
        for (id, _, _) in std::mem::take(&mut self.adopted_spare) {
            self.backend_ids.release(id);
        }
        self.grow_local_addrs(plan)
    }

    fn install_service(&mut self, plan: &ServicePlan) -> Result<()> {
        let key = ServiceKey::new(
            addr_to_wire(*plan.listen.ip()),
            port_to_wire(plan.listen.port()),
            proto_number(plan.protocol),
        );
        let value_for = |id| Service {
            id,
            snat_addr: addr_to_wire(plan.snat_address),
            snat_port_min: plan.snat_ports.min,
            snat_port_max: plan.snat_ports.max,
        };

        let mut entry = match self.installed.remove(&plan.name) {
            Some(entry) => entry,
            None => match self.adopted.remove(&key) {
                Some(adopted) => self.take_over(adopted, key, plan),
                None => Installed {
                    id: self.new_service_id()?,
                    key,
                    backends: Vec::new(),
                    ring: None,
                    live_slot: 0,
                    spare_free_after: None,
                },
            },
        };
        let value = value_for(entry.id);
        let result = self.update_service(&mut entry, plan, key, value);
        self.installed.insert(plan.name.clone(), entry);
        result
    }

    fn update_service(
        &mut self,
        entry: &mut Installed,
        plan: &ServicePlan,
        key: ServiceKey,
        value: Service,
    ) -> Result<()> {
        // Keep the id of a backend whose name and address are unchanged, so its flows and
        // counters carry on; anything else gets a fresh id (a live id never changes address).
        let old: BTreeMap<(&str, SocketAddrV4), &InstalledBackend> = entry
            .backends
            .iter()
            .map(|b| ((b.name.as_str(), b.address), b))
            .collect();
        let mut kept = Vec::with_capacity(plan.backends.len());
        // Flags that come down are lowered before the new ring is live, flags that go up
        // after it: a backend is never in a live ring while marked as cutting its flows.
        let mut raise = Vec::new();
        for backend in &plan.backends {
            let cut =
                backend.state == BackendState::Down && plan.on_backend_down == DownPolicy::Reset;
            let flags = if cut { BACKEND_CUT_FLOWS } else { 0 };
            let installed = match old.get(&(backend.name.as_str(), backend.address)) {
                Some(old) => InstalledBackend {
                    flags: old.flags,
                    ..(*old).clone()
                },
                None => {
                    let installed = InstalledBackend {
                        name: backend.name.clone(),
                        address: backend.address,
                        id: self.new_backend_id()?,
                        flags: 0,
                    };
                    self.write_backend(&installed)?;
                    installed
                }
            };
            if flags & !installed.flags != 0 {
                raise.push((kept.len(), flags));
            } else if flags != installed.flags {
                let lowered = InstalledBackend {
                    flags,
                    ..installed.clone()
                };
                self.write_backend(&lowered)?;
                kept.push(lowered);
                continue;
            }
            kept.push(installed);
        }
        let kept_ids: BTreeSet<u32> = kept.iter().map(|b| b.id).collect();
        let released: Vec<u32> = entry
            .backends
            .iter()
            .map(|b| b.id)
            .filter(|id| !kept_ids.contains(id))
            .collect();

        let active: Vec<(u32, u32)> = plan
            .backends
            .iter()
            .zip(&kept)
            .filter(|(plan, _)| plan.state == BackendState::Active)
            .map(|(plan, installed)| (installed.id, plan.weight))
            .collect();
        let ring = ring::weighted(&active)?;
        if entry.ring != Some(ring) {
            self.flip_ring(entry, &ring)?;
        }
        for (index, flags) in raise {
            kept[index].flags = flags;
            self.write_backend(&kept[index])?;
        }
        entry.backends = kept;

        if entry.key != key {
            // The listen address changed: the old key goes, the new one takes over.
            let _ = self.services.remove(&entry.key);
            entry.key = key;
        }
        self.services.insert(key, value, 0)?;

        for id in released {
            self.backend_ids.release(id);
        }
        Ok(())
    }

    /// Turns a service found in the pinned maps into an installed one, naming its backends
    /// after the plan's backends at the same addresses.
    fn take_over(&mut self, adopted: Adopted, key: ServiceKey, plan: &ServicePlan) -> Installed {
        let mut backends = Vec::new();
        for backend in &plan.backends {
            let in_ring = adopted
                .backends
                .iter()
                .find(|(_, a, _)| *a == backend.address);
            let found = match in_ring {
                Some(found) => Some(*found),
                None => self
                    .adopted_spare
                    .iter()
                    .position(|(_, a, _)| *a == backend.address)
                    .map(|i| self.adopted_spare.swap_remove(i)),
            };
            if let Some((id, address, flags)) = found {
                backends.push(InstalledBackend {
                    name: backend.name.clone(),
                    address,
                    id,
                    flags,
                });
            }
        }
        // Ring members the plan no longer has: their ids wait out a grace period.
        for (id, address, _) in &adopted.backends {
            if !plan.backends.iter().any(|b| b.address == *address) {
                self.backend_ids.release(*id);
            }
        }
        Installed {
            id: adopted.id,
            key,
            backends,
            ring: Some(adopted.ring),
            live_slot: adopted.live_slot,
            // The previous run may have flipped a moment ago: a reader may still be in the
            // spare slot.
            spare_free_after: Some(self.grace.start()),
        }
    }

    fn write_backend(&mut self, backend: &InstalledBackend) -> Result<()> {
        let value = Backend {
            addr: addr_to_wire(*backend.address.ip()),
            port: port_to_wire(backend.address.port()),
            flags: backend.flags,
        };
        self.backends
            .set(backend.id, value, 0)
            .with_context(|| format!("writing backend {}", backend.name))
    }

    fn new_service_id(&mut self) -> Result<u32> {
        let id = self.service_ids.allocate()?;
        self.counters.reset_service(id)?;
        Ok(id)
    }

    fn new_backend_id(&mut self) -> Result<u32> {
        let id = self.backend_ids.allocate()?;
        self.counters.reset_backend(id)?;
        Ok(id)
    }

    /// Writes `ring` into the service's spare slot and makes it the live one.
    fn flip_ring(&mut self, entry: &mut Installed, ring: &BackendRing) -> Result<()> {
        let spare = entry.live_slot ^ 1;
        if let Some(grace) = entry.spare_free_after {
            // Passed long ago unless the last flip was a moment ago.
            self.grace.wait_for(grace);
        }
        self.rings.set(entry.id * 2 + spare, ring, 0)?;
        self.ring_select.set(entry.id, spare, 0)?;
        entry.live_slot = spare;
        entry.ring = Some(*ring);
        entry.spare_free_after = Some(self.grace.start());
        Ok(())
    }

    fn remove_service(&mut self, name: &str) -> Result<()> {
        let Some(entry) = self.installed.remove(name) else {
            return Ok(());
        };
        self.services
            .remove(&entry.key)
            .with_context(|| format!("removing service {name}"))?;
        for backend in entry.backends {
            self.backend_ids.release(backend.id);
        }
        self.service_ids.release(entry.id);
        Ok(())
    }

    /// Removes from `LOCAL_ADDRS` what `plan` no longer claims.
    fn shrink_local_addrs(&mut self, plan: &Plan) -> Result<()> {
        let wanted = wanted_local_addrs(plan);
        for (addr, bits) in self.current_local_addrs()? {
            let keep = wanted.get(&addr).copied().unwrap_or(0) & bits;
            if keep == 0 {
                self.local_addrs.remove(&addr)?;
            } else if keep != bits {
                self.local_addrs.insert(addr, keep, 0)?;
            }
        }
        Ok(())
    }

    /// Adds to `LOCAL_ADDRS` what `plan` claims.
    fn grow_local_addrs(&mut self, plan: &Plan) -> Result<()> {
        let current = self.current_local_addrs()?;
        for (addr, bits) in wanted_local_addrs(plan) {
            if current.get(&addr) != Some(&bits) {
                self.local_addrs.insert(addr, bits, 0)?;
            }
        }
        Ok(())
    }

    fn current_local_addrs(&self) -> Result<BTreeMap<u32, u32>> {
        self.local_addrs
            .iter()
            .collect::<Result<_, _>>()
            .context("reading LOCAL_ADDRS")
    }
}

fn backend_address(backend: &Backend) -> SocketAddrV4 {
    SocketAddrV4::new(addr_from_wire(backend.addr), port_from_wire(backend.port))
}

/// Every VIP and SNAT address of `plan` with its `ADDR_*` bits.
fn wanted_local_addrs(plan: &Plan) -> BTreeMap<u32, u32> {
    let mut wanted: BTreeMap<u32, u32> = BTreeMap::new();
    for service in &plan.services {
        *wanted
            .entry(addr_to_wire(*service.listen.ip()))
            .or_default() |= ADDR_VIP;
        *wanted
            .entry(addr_to_wire(service.snat_address))
            .or_default() |= ADDR_SNAT;
    }
    wanted
}

pub fn proto_number(protocol: Protocol) -> u8 {
    match protocol {
        Protocol::Tcp => PROTO_TCP,
        Protocol::Udp => PROTO_UDP,
    }
}
