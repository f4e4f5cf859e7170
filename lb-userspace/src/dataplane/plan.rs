//! What the data plane should forward right now: services, their backends, and for each
//! backend whether it takes new flows.
//!
//! A plan is computed, never edited: [`Plan::compute`] derives it from the configuration
//! and the controller's view of each backend (health, admin state), so both data planes
//! (XDP and the userspace proxy) receive exactly the same decisions.
//!
//! A service of a replicated database (`role = "primary"` or `"replica"`) also goes by
//! each backend's [`RoleVerdict`]: the write service by the one backend claiming to be the
//! primary, and by none while two claim it ([`ServicePlan::conflict`]); the read service by
//! the replicas fit for reads.

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddrV4},
};

use crate::{
    config::{
        BackendConfig, Config, DownPolicy, PortRange, Protocol, ReplicaFallback, ServiceRole,
    },
    health::{Role, RoleVerdict},
};

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
    /// What happens to established flows of a backend that goes [`BackendState::Down`];
    /// always [`DownPolicy::Reset`] in a `role = "primary"` service, so that a backend that
    /// stops being the primary has its flows cut.
    pub on_backend_down: DownPolicy,
    /// Every configured backend, in configuration order, with what it may do now.
    pub backends: Vec<BackendPlan>,
    pub role: ServiceRole,
    /// Why a `role = "primary"` service takes no new flows although backends are up: more
    /// than one claims to be the primary (`"db1, db2 claim to be the primary"`). Writes
    /// resume once exactly one claims it.
    pub conflict: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendPlan {
    pub name: String,
    pub address: SocketAddrV4,
    /// Share of new flows relative to the other active backends (0: none).
    pub weight: u32,
    pub state: BackendState,
    /// The backend's role as the plan used it, in a `role = "primary"` or `"replica"`
    /// service; `None` elsewhere, and while unknown.
    pub role: Option<RoleVerdict>,
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
    /// The plan for `config` given each backend's status, as
    /// [`Plan::compute_with_roles`] without roles (role services then have no backend).
    pub fn compute(config: &Config, status: &BTreeMap<BackendKey, BackendStatus>) -> Self {
        Self::compute_with_roles(config, status, &BTreeMap::new())
    }

    /// The plan for `config` given each backend's status and, for services of replicated
    /// databases, its role. A backend missing from `status` is taken as healthy and ready
    /// (the state before its first health check verdict); one missing from `roles` has no
    /// known role.
    ///
    /// In a `role = "any"` service, primary backends that are healthy and ready are active;
    /// backups become active only while no primary is. A `role = "primary"` service takes
    /// the one backend claiming to be the primary, and none while two claim it; a
    /// `role = "replica"` service the replicas fit for reads, else (by its
    /// `replica_fallback`) the primary.
    pub fn compute_with_roles(
        config: &Config,
        status: &BTreeMap<BackendKey, BackendStatus>,
        roles: &BTreeMap<BackendKey, RoleVerdict>,
    ) -> Self {
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
                let candidates: Vec<Candidate> = service
                    .backends
                    .iter()
                    .map(|backend| Candidate {
                        backend,
                        status: status_of(&backend.name),
                        role: (service.role != ServiceRole::Any)
                            .then(|| roles.get(&(service.name.clone(), backend.name.clone())))
                            .flatten()
                            .copied(),
                    })
                    .collect();
                let (states, conflict) = match service.role {
                    ServiceRole::Any => {
                        let states = candidates
                            .iter()
                            .map(|c| {
                                if !c.status.healthy {
                                    BackendState::Down
                                } else if c.usable() && c.backend.backup == use_backups {
                                    BackendState::Active
                                } else {
                                    BackendState::Standby
                                }
                            })
                            .collect();
                        (states, None)
                    }
                    role => role_states(&candidates, role, service.replica_fallback),
                };
                let backends = candidates
                    .iter()
                    .zip(states)
                    .map(|(c, state)| BackendPlan {
                        name: c.backend.name.clone(),
                        address: c.backend.address,
                        weight: c.backend.weight,
                        state,
                        role: c.role,
                    })
                    .collect();
                ServicePlan {
                    name: service.name.clone(),
                    listen: service.listen,
                    protocol: service.protocol,
                    snat_address: service.snat_address,
                    snat_ports: config.dataplane.snat_ports,
                    on_backend_down: match service.role {
                        ServiceRole::Primary => DownPolicy::Reset,
                        _ => service.on_backend_down,
                    },
                    backends,
                    role: service.role,
                    conflict,
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

/// One backend of a service with what the plan is computed from.
struct Candidate<'a> {
    backend: &'a BackendConfig,
    status: BackendStatus,
    role: Option<RoleVerdict>,
}

impl Candidate<'_> {
    /// May take new flows, whatever its role: healthy, ready and of some weight.
    fn usable(&self) -> bool {
        self.status.healthy && self.status.admin == AdminState::Ready && self.backend.weight > 0
    }

    /// Healthy with this role.
    fn is(&self, role: Role) -> bool {
        self.status.healthy && self.role.is_some_and(|r| r.role == role)
    }

    /// Healthy and fit for reads: a replica within `max_lag`, or a Galera member.
    fn fresh_reader(&self) -> bool {
        (self.is(Role::Replica) || self.is(Role::Member)) && self.role.is_some_and(|r| r.fresh)
    }
}

/// The write side of a replicated database: which backend is the primary, or why none is.
///
/// The backends claiming to be the primary are those whose last probe said so; a claim
/// whose probes have started failing (the backend still UP, within `fall`) counts only
/// while nobody else claims. One claimant is the primary, more than one is a conflict.
/// Without a claim, the first usable Galera member is (primaries before backups, in
/// configuration order: MySQL Router's first-available).
fn primary_of(candidates: &[Candidate]) -> Result<Option<usize>, String> {
    let claimants = |current: bool| -> Vec<usize> {
        (0..candidates.len())
            .filter(|&i| candidates[i].is(Role::Primary))
            .filter(|&i| candidates[i].role.is_some_and(|r| r.current == current))
            .collect()
    };
    let mut claim = claimants(true);
    if claim.is_empty() {
        claim = claimants(false);
    }
    match claim[..] {
        [one] => Ok(Some(one)),
        [] => Ok([false, true].into_iter().find_map(|backup| {
            (0..candidates.len()).find(|&i| {
                let c = &candidates[i];
                c.is(Role::Member) && c.usable() && c.backend.backup == backup
            })
        })),
        _ => {
            let names: Vec<&str> = claim
                .iter()
                .map(|&i| candidates[i].backend.name.as_str())
                .collect();
            Err(format!("{} claim to be the primary", names.join(", ")))
        }
    }
}

/// The states of a `role = "primary"` or `"replica"` service's backends, and the conflict
/// that stops a primary service, if any.
///
/// Primary: the primary is active (standby while drained); a backend that is not the
/// primary is down, so that a demoted primary's established flows are cut, except Galera
/// members, which may hold writes and stand by. While two claim the primary role, none is
/// active.
///
/// Replica: fresh replicas are active (backups only while no other is), then, while none
/// is, the primary if `fallback` says so. Replicas behind `max_lag`, or of unknown role,
/// are down, so that `on_backend_down` decides their established reads; the primary stands
/// by.
fn role_states(
    candidates: &[Candidate],
    role: ServiceRole,
    fallback: ReplicaFallback,
) -> (Vec<BackendState>, Option<String>) {
    let primary = primary_of(candidates);
    let active = |i: usize| {
        if candidates[i].usable() {
            BackendState::Active
        } else {
            BackendState::Standby
        }
    };
    if role == ServiceRole::Primary {
        let chosen = primary.as_ref().ok().copied().flatten();
        let states = (0..candidates.len())
            .map(|i| {
                let c = &candidates[i];
                if Some(i) == chosen {
                    active(i)
                } else if c.is(Role::Member) {
                    BackendState::Standby
                } else {
                    BackendState::Down
                }
            })
            .collect();
        return (states, primary.err());
    }
    let readers: Vec<usize> = [false, true]
        .into_iter()
        .map(|backup| {
            (0..candidates.len())
                .filter(|&i| {
                    let c = &candidates[i];
                    c.fresh_reader() && c.usable() && c.backend.backup == backup
                })
                .collect::<Vec<_>>()
        })
        .find(|readers| !readers.is_empty())
        .unwrap_or_default();
    let fallback = match (readers.is_empty(), fallback, primary) {
        (true, ReplicaFallback::Primary, Ok(Some(primary))) => Some(primary),
        _ => None,
    };
    let states = (0..candidates.len())
        .map(|i| {
            let c = &candidates[i];
            if readers.contains(&i) || Some(i) == fallback {
                active(i)
            } else if c.fresh_reader() || c.is(Role::Primary) || c.is(Role::Member) {
                BackendState::Standby
            } else {
                BackendState::Down
            }
        })
        .collect();
    (states, None)
}

impl ServicePlan {
    /// The backends that take new flows, with their weights, in configuration order.
    pub fn active(&self) -> impl Iterator<Item = &BackendPlan> {
        self.backends
            .iter()
            .filter(|b| b.state == BackendState::Active)
    }
}
