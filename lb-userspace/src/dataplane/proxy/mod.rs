//! The userspace proxy data plane, for hosts whose kernel cannot run the XDP program
//! (32-bit Raspberry Pi kernels, containers without BPF).
//!
//! It forwards the same services as the XDP program, from the same [`Plan`]s, with the
//! same decisions: new flows go to the active backends by smooth weighted round-robin
//! (the schedule the XDP rings are built from), established flows stay with their backend
//! whatever the plan says, unless the backend goes down in a service that resets such
//! flows. Backends see connections from the service's SNAT address, as in XDP mode.
//!
//! Unlike the XDP program it terminates TCP: each client connection is accepted on the
//! VIP and a second connection is made to the backend, then bytes are relayed between
//! them ([`relay`]: copied through a buffer shared by the connections of a thread, or
//! `splice(2)`d through a pipe once they carry bulk data; half-close passed on). That
//! allows what XDP cannot do: a PROXY v2 header towards backends that want the client's
//! address, a per-service connection limit, and a retry on another backend when one does
//! not accept (HAProxy's `redispatch`). TCP connections are accepted and relayed on
//! threads of their own, each with its own listener ([`shard`]). UDP is relayed through a
//! per-client session ([`udp`]) on the caller's runtime.
//!
//! # Counters
//!
//! [`ProxyDataplane::traffic`] reports counters of the XDP program's shape
//! ([`lb_common::TrafficCounters`]) per service and backend, with these meanings:
//! - bytes are payload bytes (the XDP program counts whole frames);
//! - TCP "packets" are socket reads (or `splice` calls) that moved data, UDP packets are
//!   datagrams;
//! - `new_flows` are connections established with a backend, or UDP sessions opened;
//! - `drops` are, per service, connections refused (no backend, over the limit, every
//!   backend tried failed) or cut, and UDP datagrams dropped; per backend, failed connects
//!   and cut connections, and UDP datagrams to or from it that were dropped.
//!
//! The proxy has no packet events: the report's `events` is empty. Current connections
//! and sessions are the report's `current_sessions` (per service: open connections,
//! counted from accept, and UDP sessions; per backend: those established with it), read
//! when asked, and in [`ProxyDataplane::active`].
//!
//! # Footprint
//!
//! A connection costs a task and two sockets (about 2.5 KiB of the process's memory). It
//! has a buffer of its own only while its peer cannot take what was read, and pipes only
//! once it has moved bulk data. Nothing else grows with traffic: the UDP session table is
//! bounded by `dataplane.flow_table_size`, and connection limits bound TCP.

mod proxy_v2;
mod relay;
mod schedule;
mod shard;
mod socket;
mod state;
mod tcp;
mod udp;

use std::{
    collections::BTreeMap,
    io,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use tokio::{
    net::{TcpListener, UdpSocket},
    sync::watch,
    task::JoinHandle,
    time::Instant,
};
use tracing::{info, warn};

use self::state::Service;
use super::{
    Dataplane, Plan,
    xdp::{BackendTraffic, ServiceTraffic, TrafficReport},
};
use crate::config::{Config, FlowTimeouts, Protocol, ServiceConfig};

/// Per-service behaviour only the proxy has (`service.max_connections`,
/// `service.send_proxy_v2`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceOptions {
    /// Most connections (TCP) or sessions (UDP) at once; beyond it new TCP connections
    /// are refused with a RST and UDP datagrams that would open a session are dropped,
    /// both counted as drops.
    pub max_connections: Option<u32>,
    /// Send a PROXY protocol v2 header first on every backend connection (TCP only).
    pub send_proxy_v2: bool,
}

/// How TCP payload moves between the two sockets of a connection (details in
/// [`relay`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RelayMode {
    /// Copy small messages, splice once a direction carries bulk data.
    #[default]
    Auto,
    /// `splice(2)` through a pipe per direction: no copy into userspace.
    Splice,
    /// `read`/`write` through a 16 KiB buffer.
    Copy,
}

/// What [`ProxyDataplane::start_with`] takes beyond the configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProxyOptions {
    /// By service name; services not listed get [`ServiceOptions::default`].
    pub services: BTreeMap<String, ServiceOptions>,
    pub relay: RelayMode,
}

/// Current connections (TCP) or sessions (UDP) of one service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ActiveFlows {
    pub service: String,
    pub total: u64,
    /// Per backend of the current plan, established only (a connection still connecting
    /// counts for the service alone).
    pub backends: Vec<(String, u64)>,
}

/// What every task of the proxy reads: fixed at start but for the idle timeouts, which a
/// reload changes ([`ProxyDataplane::set_timeouts`]).
#[derive(Debug)]
struct Settings {
    relay: RelayMode,
    /// `timeouts.tcp_established`, in milliseconds.
    tcp_idle_ms: AtomicU64,
    /// `timeouts.udp`, in milliseconds.
    udp_idle_ms: AtomicU64,
    flow_table_size: usize,
    /// Origin of the UDP sessions' activity clocks.
    epoch: Instant,
}

impl Settings {
    fn tcp_idle(&self) -> Duration {
        Duration::from_millis(self.tcp_idle_ms.load(Relaxed))
    }

    fn udp_idle(&self) -> Duration {
        Duration::from_millis(self.udp_idle_ms.load(Relaxed))
    }

    fn set_timeouts(&self, timeouts: &FlowTimeouts) {
        let millis = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        self.tcp_idle_ms
            .store(millis(timeouts.tcp_established), Relaxed);
        self.udp_idle_ms.store(millis(timeouts.udp), Relaxed);
    }
}

/// The running proxy: per TCP service a listener task on every relay thread
/// ([`shard`]), per UDP service one task on the caller's runtime.
pub struct ProxyDataplane {
    serving: Vec<Serving>,
    shards: Vec<shard::Shard>,
    settings: Arc<Settings>,
}

/// A service being served: its state, its listener tasks and what stops them. Stopping
/// the tasks closes the service's connections and sessions with them.
struct Serving {
    service: Arc<Service>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Serving {
    async fn stop(self) {
        let _ = self.stop.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

/// Sockets bound for a service that is about to be served.
enum Bound {
    /// One listener per relay thread, each registered with that thread's runtime.
    Tcp(Vec<TcpListener>),
    Udp(UdpSocket),
}

impl ProxyDataplane {
    /// [`ProxyDataplane::start_with`] default options.
    pub async fn start(config: &Config) -> Result<Self> {
        Self::start_with(config, &ProxyOptions::default()).await
    }

    /// Binds a listener for every service of `config` and starts serving. No service has
    /// a backend until the first [`Dataplane::apply`]: until then TCP clients are reset
    /// and UDP datagrams dropped.
    ///
    /// Must run inside a tokio runtime (with I/O and time enabled), in the network
    /// namespace of the VIPs. Raises the process's open-file limit to its hard limit.
    pub async fn start_with(config: &Config, options: &ProxyOptions) -> Result<Self> {
        if let Err(err) = socket::raise_file_limit() {
            warn!(
                "could not raise the open-file limit: {err}; the proxy may run out of descriptors"
            );
        }
        let settings = Arc::new(Settings {
            relay: options.relay,
            tcp_idle_ms: AtomicU64::new(0),
            udp_idle_ms: AtomicU64::new(0),
            flow_table_size: usize::try_from(config.dataplane.flow_table_size)
                .unwrap_or(usize::MAX),
            epoch: Instant::now(),
        });
        settings.set_timeouts(&config.timeouts);
        let mut proxy = Self {
            serving: Vec::new(),
            shards: shard::start_all(config.dataplane.proxy_threads)?,
            settings,
        };
        proxy.reconfigure(config, options).await?;
        Ok(proxy)
    }

    /// Serves exactly `config`'s services, as a reload asks. The listeners of services
    /// that are new, or moved to another address or protocol, are bound first, so that a
    /// failure changes nothing; then the services that went stop (their connections and
    /// sessions close) and the new ones start. Services that stay keep their listeners,
    /// connections and counters, and take `options` for their new connections. Timeouts
    /// change through [`Self::set_timeouts`]; the relay mode stays as it was at start.
    pub async fn reconfigure(&mut self, config: &Config, options: &ProxyOptions) -> Result<()> {
        if let Some(unknown) = options
            .services
            .keys()
            .find(|name| !config.services.iter().any(|s| &s.name == *name))
        {
            bail!("proxy options name service {unknown:?}, which the configuration does not have");
        }
        let options_of = |name: &str| options.services.get(name).copied().unwrap_or_default();
        let mut added = Vec::new();
        for service in &config.services {
            if service.protocol == Protocol::Udp && options_of(&service.name).send_proxy_v2 {
                bail!(
                    "service {}: PROXY protocol v2 is only sent on TCP connections",
                    service.name
                );
            }
            if !self.serving.iter().any(|s| s.service.listens_as(service)) {
                let bound = self.bind(service).with_context(|| {
                    format!(
                        "service {}: listening on {} {}",
                        service.name, service.protocol, service.listen
                    )
                })?;
                added.push((service, bound));
            }
        }

        let (kept, gone): (Vec<Serving>, Vec<Serving>) = std::mem::take(&mut self.serving)
            .into_iter()
            .partition(|s| config.services.iter().any(|c| s.service.listens_as(c)));
        for serving in gone {
            info!(
                service = %serving.service.name,
                listen = %serving.service.listen,
                "proxy no longer serves this service; closing its connections"
            );
            serving.stop().await;
        }
        self.serving = kept;
        for serving in &self.serving {
            serving
                .service
                .set_options(options_of(&serving.service.name));
        }
        for (service, bound) in added {
            let serving = self.serve(service, options_of(&service.name), bound);
            info!(
                service = %service.name,
                listen = %service.listen,
                protocol = %service.protocol,
                relay = ?self.settings.relay,
                threads = self.shards.len(),
                "proxy listening"
            );
            self.serving.push(serving);
        }
        Ok(())
    }

    /// The sockets `service` will be served on.
    fn bind(&self, service: &ServiceConfig) -> io::Result<Bound> {
        match service.protocol {
            Protocol::Tcp => self
                .shards
                .iter()
                .map(|shard| {
                    let _runtime = shard.runtime.enter();
                    socket::tcp_listener(service.listen)
                })
                .collect::<io::Result<_>>()
                .map(Bound::Tcp),
            Protocol::Udp => socket::udp_socket(service.listen, true)
                .and_then(UdpSocket::from_std)
                .map(Bound::Udp),
        }
    }

    fn serve(&self, config: &ServiceConfig, options: ServiceOptions, bound: Bound) -> Serving {
        let service = Arc::new(Service::new(
            &config.name,
            config.listen,
            config.protocol,
            config.snat_address,
            options,
        ));
        let (stop, stopped) = watch::channel(false);
        let tasks = match bound {
            Bound::Tcp(listeners) => listeners
                .into_iter()
                .zip(&self.shards)
                .map(|(listener, shard)| {
                    shard.runtime.spawn(tcp::serve(
                        listener,
                        service.clone(),
                        self.settings.clone(),
                        stopped.clone(),
                    ))
                })
                .collect(),
            Bound::Udp(vip) => vec![tokio::spawn(udp::serve(
                vip,
                service.clone(),
                self.settings.clone(),
                stopped,
            ))],
        };
        Serving {
            service,
            stop,
            tasks,
        }
    }

    /// New idle timeouts from a reload: TCP connections accepted from now on get the new
    /// `tcp_established` (open ones keep theirs, as with HAProxy, whose old process serves
    /// them to the end); every UDP session is aged by the new `udp` from the next sweep.
    pub fn set_timeouts(&self, timeouts: &FlowTimeouts) {
        self.settings.set_timeouts(timeouts);
    }

    fn services(&self) -> impl Iterator<Item = &Service> {
        self.serving.iter().map(|s| &*s.service)
    }

    /// Counters of every service and of the backends of its current plan.
    pub fn traffic(&self) -> TrafficReport {
        let services = self
            .services()
            .map(|service| ServiceTraffic {
                name: service.name.clone(),
                counters: service.counters.snapshot(),
                current_sessions: service.current.load(Relaxed),
                backends: service
                    .backends()
                    .iter()
                    .map(|backend| BackendTraffic {
                        name: backend.name.clone(),
                        address: backend.address,
                        counters: backend.counters.snapshot(),
                        current_sessions: backend.current.load(Relaxed),
                    })
                    .collect(),
            })
            .collect();
        TrafficReport {
            events: Vec::new(),
            services,
        }
    }

    /// Connections and sessions open now, per service and backend.
    pub fn active(&self) -> Vec<ActiveFlows> {
        self.services()
            .map(|service| ActiveFlows {
                service: service.name.clone(),
                total: service.current.load(Relaxed),
                backends: service
                    .backends()
                    .iter()
                    .map(|b| (b.name.clone(), b.current.load(Relaxed)))
                    .collect(),
            })
            .collect()
    }

    /// Stops accepting and closes every connection and session.
    pub async fn stop(self) {
        for serving in self.serving {
            serving.stop().await;
        }
        for shard in self.shards {
            shard.stop().await;
        }
    }
}

impl Dataplane for ProxyDataplane {
    /// Swaps each service's backend set under a short lock; the tasks see it at their
    /// next new flow. Cutting a down backend's connections is a signal they act on.
    /// Fails for a service of the plan the proxy does not serve ([`Self::reconfigure`]
    /// first).
    fn apply(&mut self, plan: &Plan) -> Result<()> {
        for service in self.services() {
            match plan.services.iter().find(|s| s.name == service.name) {
                Some(wanted) => service.apply(wanted),
                None => service.clear(),
            }
        }
        let unserved: Vec<String> = plan
            .services
            .iter()
            .filter(|wanted| {
                !self.services().any(|s| {
                    s.name == wanted.name
                        && s.listen == wanted.listen
                        && s.protocol == wanted.protocol
                })
            })
            .map(|s| format!("{} ({} {})", s.name, s.protocol, s.listen))
            .collect();
        if !unserved.is_empty() {
            bail!("the proxy has no listener for {}", unserved.join(", "));
        }
        Ok(())
    }
}
