//! What the data plane should forward right now: services, their backends, and for each
//! backend whether it takes new flows.
//!
//! A plan is computed, never edited: [`Plan::compute`] derives it from the configuration
//! and the controller's view of each backend (health, admin state), so both data planes
//! (XDP and the userspace proxy) receive exactly the same decisions.

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddrV4},
};

use crate::config::{Config, DownPolicy, PortRange, Protocol};

/// The complete forwarding state the controller wants.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub services: Vec<ServicePlan>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePlan {
    pub name: String,
    pub listen: SocketAddrV4,
    pub protocol: Protocol,
    pub snat_address: Ipv4Addr,
    pub snat_ports: PortRange,
    /// What happens to established flows of a backend that goes [`BackendState::Down`].
    pub on_backend_down: DownPolicy,
    /// Every configured backend, in configuration order, with what it may do now.
    pub backends: Vec<BackendPlan>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendPlan {
    pub name: String,
    pub address: SocketAddrV4,
    /// Share of new flows relative to the other active backends (0: none).
    pub weight: u32,
    pub state: BackendState,
}

/// What a backend may do in a plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BackendState {
    /// Takes new flows (in proportion to its weight) and keeps its established ones.
    Active,
    /// Takes no new flows; established flows continue (admin drain or maint, a backup
    /// while a primary is up, a backend of weight 0).
    Standby,
    /// Failed its health checks: no new flows; established flows follow the service's
    /// [`DownPolicy`].
    Down,
}

/// The controller's view of one backend, input to [`Plan::compute`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackendStatus {
    pub healthy: bool,
    pub admin: AdminState,
}

/// What the operator set through the control interface.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum AdminState {
    /// In service.
    #[default]
    Ready,
    /// No new flows; established flows continue.
    Drain,
    /// Out of service for maintenance: no new flows, established flows continue, health
    /// checks keep running and are shown.
    Maint,
}

/// Identifies a backend across the controller: (service name, backend name).
pub type BackendKey = (String, String);

impl Plan {
    /// The plan for `config` given each backend's status. A backend missing from `status`
    /// is taken as healthy and ready (the state before its first health check verdict).
    ///
    /// Primary backends that are healthy and ready are active; backups become active only
    /// while no primary is.
    pub fn compute(config: &Config, status: &BTreeMap<BackendKey, BackendStatus>) -> Self {
        let services = config
            .services
            .iter()
            .map(|service| {
                let status_of = |name: &str| {
                    status
                        .get(&(service.name.clone(), name.to_string()))
                        .copied()
                        .unwrap_or(BackendStatus {
                            healthy: true,
                            admin: AdminState::Ready,
                        })
                };
                let usable = |backup: bool| {
                    service.backends.iter().any(|b| {
                        let s = status_of(&b.name);
                        b.backup == backup
                            && s.healthy
                            && s.admin == AdminState::Ready
                            && b.weight > 0
                    })
                };
                let use_backups = !usable(false);
                let backends = service
                    .backends
                    .iter()
                    .map(|backend| {
                        let s = status_of(&backend.name);
                        let state = if !s.healthy {
                            BackendState::Down
                        } else if s.admin == AdminState::Ready
                            && backend.weight > 0
                            && backend.backup == use_backups
                        {
                            BackendState::Active
                        } else {
                            BackendState::Standby
                        };
                        BackendPlan {
                            name: backend.name.clone(),
                            address: backend.address,
                            weight: backend.weight,
                            state,
                        }
                    })
                    .collect();
                ServicePlan {
                    name: service.name.clone(),
                    listen: service.listen,
                    protocol: service.protocol,
                    snat_address: service.snat_address,
                    snat_ports: config.dataplane.snat_ports,
                    on_backend_down: service.on_backend_down,
                    backends,
                }
            })
            .collect();
        Self { services }
    }

    /// Addresses of every backend, each once.
    pub fn backend_addresses(&self) -> Vec<Ipv4Addr> {
        let mut addresses: Vec<Ipv4Addr> = self
            .services
            .iter()
            .flat_map(|s| s.backends.iter().map(|b| *b.address.ip()))
            .collect();
        addresses.sort_unstable();
        addresses.dedup();
        addresses
    }
}

impl ServicePlan {
    /// The backends that take new flows, with their weights, in configuration order.
    pub fn active(&self) -> impl Iterator<Item = &BackendPlan> {
        self.backends
            .iter()
            .filter(|b| b.state == BackendState::Active)
    }
}
