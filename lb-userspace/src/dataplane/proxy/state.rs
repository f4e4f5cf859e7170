//! What the proxy's tasks share: per service, the backends a new flow may go to (written
//! by [`Dataplane::apply`](crate::dataplane::Dataplane::apply), read at every new flow),
//! counters and gauges; per backend, counters, a gauge and the signal that cuts its
//! established flows.

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::Duration,
};

use lb_common::TrafficCounters;
use tokio::{sync::watch, time::Instant};

use super::{ServiceOptions, schedule::SmoothWeighted};
use crate::{
    config::{DownPolicy, Protocol, ServiceConfig},
    dataplane::plan::{BackendState, ServicePlan},
};

/// Counters with the shape of the XDP program's ([`TrafficCounters`]), updated from any
/// task.
#[derive(Debug, Default)]
pub(super) struct Counters {
    packets_to_backend: AtomicU64,
    bytes_to_backend: AtomicU64,
    packets_to_client: AtomicU64,
    bytes_to_client: AtomicU64,
    new_flows: AtomicU64,
    drops: AtomicU64,
}

/// Which way data moves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Direction {
    ToBackend,
    ToClient,
}

impl Counters {
    /// One read (TCP) or datagram (UDP) of `bytes` payload bytes forwarded.
    pub(super) fn forwarded(&self, direction: Direction, bytes: usize) {
        let (packets, total) = match direction {
            Direction::ToBackend => (&self.packets_to_backend, &self.bytes_to_backend),
            Direction::ToClient => (&self.packets_to_client, &self.bytes_to_client),
        };
        packets.fetch_add(1, Relaxed);
        total.fetch_add(bytes as u64, Relaxed);
    }

    pub(super) fn new_flow(&self) {
        self.new_flows.fetch_add(1, Relaxed);
    }

    pub(super) fn dropped(&self) {
        self.drops.fetch_add(1, Relaxed);
    }

    pub(super) fn snapshot(&self) -> TrafficCounters {
        TrafficCounters {
            packets_to_backend: self.packets_to_backend.load(Relaxed),
            bytes_to_backend: self.bytes_to_backend.load(Relaxed),
            packets_to_client: self.packets_to_client.load(Relaxed),
            bytes_to_client: self.bytes_to_client.load(Relaxed),
            new_flows: self.new_flows.load(Relaxed),
            drops: self.drops.load(Relaxed),
        }
    }
}

/// One backend of one service. Kept across plans while its name and address stay the
/// same, so its counters continue.
#[derive(Debug)]
pub(super) struct Backend {
    pub(super) name: String,
    pub(super) address: SocketAddrV4,
    pub(super) counters: Counters,
    /// Established connections (TCP) or sessions (UDP).
    pub(super) current: AtomicU64,
    /// Bumped when the backend's established flows must be cut; every flow holds a
    /// receiver taken when it picked the backend.
    cut: watch::Sender<u64>,
}

impl Backend {
    fn new(name: &str, address: SocketAddrV4) -> Self {
        Self {
            name: name.to_string(),
            address,
            counters: Counters::default(),
            current: AtomicU64::new(0),
            cut: watch::Sender::new(0),
        }
    }

    /// A receiver that sees every cut from now on.
    pub(super) fn cut_signal(&self) -> watch::Receiver<u64> {
        self.cut.subscribe()
    }

    fn cut_flows(&self) {
        self.cut.send_modify(|generation| *generation += 1);
    }
}

/// A backend chosen for a new flow, and the source address to reach it from.
pub(super) struct Pick {
    pub(super) backend: Arc<Backend>,
    pub(super) snat: Ipv4Addr,
}

/// One service the proxy listens for.
#[derive(Debug)]
pub(super) struct Service {
    pub(super) name: String,
    pub(super) listen: SocketAddrV4,
    pub(super) protocol: Protocol,
    pub(super) counters: Counters,
    /// Open connections (TCP, counted from accept) or live sessions (UDP).
    pub(super) current: AtomicU64,
    routing: Mutex<Routing>,
}

/// The part [`Service::apply`] and a reload rewrite.
#[derive(Debug)]
struct Routing {
    options: ServiceOptions,
    snat: Ipv4Addr,
    /// Every backend of the current plan, in plan order.
    backends: Vec<Arc<Backend>>,
    /// The active ones, weighted.
    schedule: SmoothWeighted<Arc<Backend>>,
}

impl Service {
    /// A service with no backend to send new flows to until the first [`Service::apply`].
    pub(super) fn new(
        name: &str,
        listen: SocketAddrV4,
        protocol: Protocol,
        snat: Ipv4Addr,
        options: ServiceOptions,
    ) -> Self {
        Self {
            name: name.to_string(),
            listen,
            protocol,
            counters: Counters::default(),
            current: AtomicU64::new(0),
            routing: Mutex::new(Routing {
                options,
                snat,
                backends: Vec::new(),
                schedule: SmoothWeighted::new([]),
            }),
        }
    }

    fn routing(&self) -> MutexGuard<'_, Routing> {
        // A panic elsewhere cannot leave `Routing` half-written (it is replaced field by
        // field from complete values), so a poisoned lock is still usable.
        self.routing
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Takes `plan`'s backends for new flows. Backends that keep their name and address
    /// keep their counters and established flows; those that are `Down` while the service
    /// resets on failure have their established flows cut.
    pub(super) fn apply(&self, plan: &ServicePlan) {
        let mut routing = self.routing();
        let backends: Vec<Arc<Backend>> = plan
            .backends
            .iter()
            .map(|b| {
                routing
                    .backends
                    .iter()
                    .find(|known| known.name == b.name && known.address == b.address)
                    .cloned()
                    .unwrap_or_else(|| Arc::new(Backend::new(&b.name, b.address)))
            })
            .collect();
        for (backend, wanted) in backends.iter().zip(&plan.backends) {
            if wanted.state == BackendState::Down && plan.on_backend_down == DownPolicy::Reset {
                backend.cut_flows();
            }
        }
        let active: Vec<(Arc<Backend>, u32)> = backends
            .iter()
            .zip(&plan.backends)
            .filter(|(_, wanted)| wanted.state == BackendState::Active && wanted.weight > 0)
            .map(|(backend, wanted)| (backend.clone(), wanted.weight))
            .collect();
        // Re-applying the same active set keeps the schedule's position, so that a plan
        // pushed for an unrelated reason does not restart the rotation.
        let unchanged = routing
            .schedule
            .items()
            .map(|(b, w)| (Arc::as_ptr(b), w))
            .eq(active.iter().map(|(b, w)| (Arc::as_ptr(b), *w)));
        if !unchanged {
            routing.schedule = SmoothWeighted::new(active);
        }
        routing.snat = plan.snat_address;
        routing.backends = backends;
    }

    /// No new flows (the service is absent from the plan); established ones continue.
    pub(super) fn clear(&self) {
        let mut routing = self.routing();
        routing.schedule = SmoothWeighted::new([]);
        routing.backends.clear();
    }

    /// The backend for a new flow.
    pub(super) fn pick(&self) -> Option<Pick> {
        let mut routing = self.routing();
        let backend = routing.schedule.pick()?.clone();
        Some(Pick {
            backend,
            snat: routing.snat,
        })
    }

    /// Another backend for a flow whose connect to `failed` did not succeed.
    pub(super) fn pick_other(&self, failed: &Arc<Backend>) -> Option<Pick> {
        let mut routing = self.routing();
        let backend = routing
            .schedule
            .pick_except(|b| Arc::ptr_eq(b, failed))?
            .clone();
        Some(Pick {
            backend,
            snat: routing.snat,
        })
    }

    /// Whether `config` describes this service's listener: same name, address and
    /// protocol. A reload keeps such a service with its connections and counters.
    pub(super) fn listens_as(&self, config: &ServiceConfig) -> bool {
        self.name == config.name && self.listen == config.listen && self.protocol == config.protocol
    }

    pub(super) fn options(&self) -> ServiceOptions {
        self.routing().options
    }

    /// New options from a reload; they apply to new connections and sessions.
    pub(super) fn set_options(&self, options: ServiceOptions) {
        self.routing().options = options;
    }

    /// Whether the service is at its connection limit.
    pub(super) fn at_limit(&self) -> bool {
        self.options()
            .max_connections
            .is_some_and(|max| self.current.load(Relaxed) >= u64::from(max))
    }

    /// The backends of the current plan.
    pub(super) fn backends(&self) -> Vec<Arc<Backend>> {
        self.routing().backends.clone()
    }
}

/// Holds a flow in its service's gauge (and, once it has one, its backend's) while alive.
pub(super) struct Occupancy {
    service: Arc<Service>,
    backend: Option<Arc<Backend>>,
}

impl Occupancy {
    pub(super) fn new(service: Arc<Service>) -> Self {
        service.current.fetch_add(1, Relaxed);
        Self {
            service,
            backend: None,
        }
    }

    /// The flow is now established with `backend`.
    pub(super) fn established(&mut self, backend: &Arc<Backend>) {
        backend.current.fetch_add(1, Relaxed);
        if let Some(previous) = self.backend.replace(backend.clone()) {
            previous.current.fetch_sub(1, Relaxed);
        }
    }
}

impl Drop for Occupancy {
    fn drop(&mut self) {
        self.service.current.fetch_sub(1, Relaxed);
        if let Some(backend) = &self.backend {
            backend.current.fetch_sub(1, Relaxed);
        }
    }
}

/// When a flow last moved data, for idle timeouts; shared by the tasks that move it.
#[derive(Debug)]
pub(super) struct Activity {
    epoch: Instant,
    /// Milliseconds since `epoch`.
    last: AtomicU64,
}

impl Activity {
    pub(super) fn new(epoch: Instant) -> Self {
        let activity = Self {
            epoch,
            last: AtomicU64::new(0),
        };
        activity.touch();
        activity
    }

    pub(super) fn touch(&self) {
        self.last.store(millis_since(self.epoch), Relaxed);
    }

    /// When data last moved, in milliseconds since the epoch (see [`millis_since`]).
    pub(super) fn last_ms(&self) -> u64 {
        self.last.load(Relaxed)
    }

    /// Resolves once nothing has moved for `timeout`.
    pub(super) async fn idle(&self, timeout: Duration) {
        loop {
            let deadline = self.epoch + Duration::from_millis(self.last_ms()) + timeout;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

/// Milliseconds from `epoch` to now: a compact timestamp for activity clocks.
pub(super) fn millis_since(epoch: Instant) -> u64 {
    u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
}
