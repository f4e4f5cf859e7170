//! The controller's state and the one task that owns it: configuration, the data plane,
//! health verdicts, admin states and the current plan. Every change (a health verdict, an
//! operator command, a reload) ends in [`Core::replan`], which applies the difference.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    path::PathBuf,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Result, anyhow, bail};
use lb_common::Timeouts;
use tokio::{
    sync::{mpsc, watch},
    task::JoinHandle,
};
use tracing::{error, info, warn};

use super::{
    Command, FIRST_VERDICT_SLACK, Status, StopMode, UpdateLatency, admin_store::AdminStore,
    dataplane::ActiveDataplane, tasks,
};
use crate::{
    config::{CheckKind, Config},
    control::{self, ControlServer, Incoming, Request},
    dataplane::{
        AdminState, BackendKey, BackendState, BackendStatus, Plan,
        xdp::{SweepReport, TrafficReport, kernel_timeouts},
    },
    health::{CheckTarget, HealthChange, HealthMonitor, RoleVerdict},
    observe::StatusView,
    vrrp::{VrrpRunner, VrrpState, VrrpStatus},
};

pub struct Core {
    config: Config,
    config_path: Option<PathBuf>,
    dataplane: ActiveDataplane,
    health: HealthMonitor,
    health_changes: mpsc::UnboundedReceiver<HealthChange>,
    healthy: BTreeMap<BackendKey, bool>,
    /// Role-checked backends' roles, for services of replicated databases.
    roles: BTreeMap<BackendKey, RoleVerdict>,
    admin: BTreeMap<BackendKey, AdminState>,
    /// Where `admin` is kept across restarts.
    admin_store: AdminStore,
    plan: Plan,
    /// Inputs of the background tasks that reloads change.
    backends: watch::Sender<Vec<Ipv4Addr>>,
    timeouts: watch::Sender<Timeouts>,
    stop: watch::Sender<Option<StopMode>>,
    sweeps: watch::Receiver<SweepReport>,
    tasks: Vec<JoinHandle<()>>,
    started: SystemTime,
    updates: UpdateLatency,
    /// Backends up per service, for VRRP's `track_services`.
    service_health: watch::Sender<BTreeMap<String, usize>>,
    vrrp: Option<VrrpRunner>,
    vrrp_states: watch::Receiver<Vec<VrrpStatus>>,
}

impl Core {
    pub async fn start(config: Config, config_path: Option<PathBuf>) -> Result<Core> {
        let addresses = backend_addresses(&config);
        let (dataplane, companions) = ActiveDataplane::start(&config, &addresses).await?;

        let admin_store = AdminStore::next_to(&config.control.socket);
        let admin = admin_store.load(&config);
        let (health, health_changes) = HealthMonitor::new();
        health.set_targets(check_targets(&config));
        let healthy = health.first_verdicts(first_verdict_wait(&config)).await;
        let roles = known_roles(&health);

        let service_health = watch::Sender::new(backends_up(&config, &healthy));
        let vrrp = if config.vrrp.is_empty() {
            None
        } else {
            Some(VrrpRunner::start(&config.vrrp, service_health.subscribe()).await?)
        };
        let vrrp_states = vrrp
            .as_ref()
            .map_or_else(|| watch::channel(Vec::new()).1, VrrpRunner::subscribe);

        let mut core = Core {
            plan: Plan {
                services: Vec::new(),
            },
            service_health,
            vrrp,
            vrrp_states,
            dataplane,
            health,
            health_changes,
            healthy,
            roles,
            admin,
            admin_store,
            backends: watch::Sender::new(addresses),
            timeouts: watch::Sender::new(kernel_timeouts(&config.timeouts)),
            stop: watch::Sender::new(None),
            sweeps: watch::channel(SweepReport::default()).1,
            tasks: Vec::new(),
            started: SystemTime::now(),
            updates: UpdateLatency::default(),
            config,
            config_path,
        };
        core.replan()?;
        for service in &core.plan.services {
            let active = service.active().count();
            info!(
                service = %service.name,
                listen = %service.listen,
                protocol = %service.protocol,
                snat = %service.snat_address,
                backends = service.backends.len(),
                active,
                "service live"
            );
        }

        if let Some(companions) = companions {
            let (sweep_reports, sweeps) = watch::channel(SweepReport::default());
            core.sweeps = sweeps;
            core.tasks = vec![
                tokio::spawn(tasks::keep_next_hops(
                    companions.resolver,
                    core.backends.subscribe(),
                    core.stop.subscribe(),
                )),
                tokio::spawn(tasks::sweep_flows(
                    companions.sweeper,
                    core.timeouts.subscribe(),
                    sweep_reports,
                    core.stop.subscribe(),
                )),
                companions.netlink,
            ];
        }
        Ok(core)
    }

    /// Serves commands, control requests and health verdicts until told to stop.
    pub async fn run(
        mut self,
        mut inbox: mpsc::Receiver<Command>,
        mut control_requests: mpsc::Receiver<Incoming>,
        control: ControlServer,
    ) {
        let mut vrrp_states = self.vrrp_states.clone();
        loop {
            tokio::select! {
                Some(change) = self.health_changes.recv() => self.on_health(change),
                Ok(()) = vrrp_states.changed() => {
                    // A VIP arrived or left: its services follow it.
                    if let Err(err) = self.replan() {
                        error!("following a VRRP transition: {err:#}");
                    }
                }
                command = inbox.recv() => match command {
                    Some(Command::Stop(mode, reply)) => {
                        control.stop();
                        let _ = reply.send(self.stop(mode).await);
                        return;
                    }
                    Some(command) => self.handle(command).await,
                    // The handle is gone without a word: leave nothing behind.
                    None => {
                        control.stop();
                        if let Err(err) = self.stop(StopMode::Detach).await {
                            error!("stopping: {err:#}");
                        }
                        return;
                    }
                },
                Some(incoming) = control_requests.recv() => {
                    let answer = self.control(incoming.request).await.map_err(|err| format!("{err:#}"));
                    let _ = incoming.reply.send(answer);
                }
            }
        }
    }

    async fn handle(&mut self, command: Command) {
        match command {
            Command::Traffic(reply) => {
                let _ = reply.send(self.dataplane.traffic());
            }
            Command::Status(reply) => {
                let _ = reply.send(self.status());
            }
            Command::Reload(reply) => {
                let _ = reply.send(self.reload().await);
            }
            Command::SetAdmin {
                service,
                backend,
                state,
                reply,
            } => {
                let _ = reply.send(self.set_admin(&service, &backend, state));
            }
            Command::Stop(..) => unreachable!("handled by run"),
        }
    }

    async fn control(&mut self, request: Request) -> Result<String> {
        match request {
            Request::Reload => self.reload().await,
            Request::SetAdmin {
                service,
                backend,
                state,
            } => self.set_admin(&service, &backend, state),
            Request::Status => Ok(StatusView::new(&self.status()?).to_json()),
        }
    }

    fn status(&self) -> Result<Status> {
        Ok(Status {
            version: env!("CARGO_PKG_VERSION"),
            started: self.started,
            dataplane: self.dataplane.name(),
            attachments: self.dataplane.attachments(),
            plan: self.plan.clone(),
            admin: self.admin.clone(),
            health: self.health.snapshot(),
            traffic: self.dataplane.traffic()?,
            flows: *self.sweeps.borrow(),
            flow_table_size: self.config.dataplane.flow_table_size,
            updates: self.updates.clone(),
            vrrp: self.vrrp_states.borrow().clone(),
            config: self.config.clone(),
        })
    }

    fn on_health(&mut self, change: HealthChange) {
        let up_changed = self.healthy.insert(change.key.clone(), change.up) != Some(change.up);
        let role_changed = match change.role {
            Some(role) => self.roles.insert(change.key.clone(), role) != Some(role),
            None => self.roles.remove(&change.key).is_some(),
        };
        if !up_changed && !role_changed {
            return;
        }
        if let Err(err) = self.replan() {
            error!(
                "applying a health verdict for {}/{}: {err:#}",
                change.key.0, change.key.1
            );
        }
    }

    fn set_admin(&mut self, service: &str, backend: &str, state: AdminState) -> Result<String> {
        let Some(configured) = self.config.services.iter().find(|s| s.name == service) else {
            let names: Vec<&str> = self
                .config
                .services
                .iter()
                .map(|s| s.name.as_str())
                .collect();
            bail!("no service {service:?}; services: {}", names.join(", "));
        };
        if !configured.backends.iter().any(|b| b.name == backend) {
            let names: Vec<&str> = configured
                .backends
                .iter()
                .map(|b| b.name.as_str())
                .collect();
            bail!(
                "service {service} has no backend {backend:?}; backends: {}",
                names.join(", ")
            );
        }
        let key = (service.to_string(), backend.to_string());
        let before = self.admin.get(&key).copied().unwrap_or_default();
        if state == AdminState::Ready {
            self.admin.remove(&key);
        } else {
            self.admin.insert(key, state);
        }
        self.replan()?;
        let (before, after) = (control::admin_word(before), control::admin_word(state));
        info!(service, backend, before, after, "admin state set");
        let mut answer = format!("{service}/{backend} is {after} (was {before})");
        if let Err(err) = self.admin_store.save(&self.admin) {
            warn!("{err:#}: the admin state holds until gerbang stops");
            answer += &format!("; not kept across a restart ({err:#})");
        }
        Ok(answer)
    }

    /// Reads the configuration file again and applies only what changed. An invalid file
    /// changes nothing.
    async fn reload(&mut self) -> Result<String> {
        let path = self
            .config_path
            .clone()
            .ok_or_else(|| anyhow!("gerbang was started without a configuration file"))?;
        let new = Config::load(&path)?;
        self.dataplane.reconfigure(&new).await?;
        let old = &self.config;
        let mut notes = Vec::new();
        for (what, changed) in [
            (
                "dataplane.pin_path",
                new.dataplane.pin_path != old.dataplane.pin_path,
            ),
            (
                "dataplane.flow_table_size",
                new.dataplane.flow_table_size != old.dataplane.flow_table_size,
            ),
            (
                "dataplane.xdp_log_rate",
                new.dataplane.xdp_log_rate != old.dataplane.xdp_log_rate,
            ),
            (
                "dataplane.proxy_threads",
                new.dataplane.proxy_threads != old.dataplane.proxy_threads,
            ),
            ("control.socket", new.control.socket != old.control.socket),
            ("[http]", new.http != old.http),
            ("[[vrrp]]", new.vrrp != old.vrrp),
            ("dataplane.mode", new.dataplane.mode != old.dataplane.mode),
        ] {
            if changed {
                notes.push(format!("{what} changes only at the next start"));
            }
        }
        if new.dataplane.interfaces != old.dataplane.interfaces {
            self.dataplane
                .set_interfaces(&new.dataplane.interfaces, new.dataplane.attach)?;
        }
        if new.timeouts != old.timeouts
            && let Some(timeouts) = self.dataplane.set_timeouts(&new.timeouts)?
        {
            self.timeouts.send_replace(timeouts);
        }

        let (before_services, before_backends) = counts(old);
        self.health.set_targets(check_targets(&new));
        let known: BTreeSet<BackendKey> = backend_keys(&new).collect();
        self.healthy.retain(|key, _| known.contains(key));
        self.roles.retain(|key, _| known.contains(key));
        let admin_before = self.admin.len();
        self.admin.retain(|key, _| known.contains(key));
        if self.admin.len() != admin_before
            && let Err(err) = self.admin_store.save(&self.admin)
        {
            warn!("{err:#}");
        }
        // A new backend takes traffic only once its first check has passed.
        for (key, up) in self.health.first_verdicts(first_verdict_wait(&new)).await {
            self.healthy.entry(key).or_insert(up);
        }
        for key in &known {
            self.healthy.entry(key.clone()).or_insert(false);
        }
        for (key, role) in known_roles(&self.health) {
            self.roles.entry(key).or_insert(role);
        }
        self.config = new;
        self.replan()?;
        self.backends.send_replace(backend_addresses(&self.config));

        let (services, backends) = counts(&self.config);
        let mut message = format!(
            "reloaded {}: {services} services (was {before_services}), {backends} backends (was {before_backends})",
            path.display()
        );
        for note in &notes {
            warn!("{note}");
            message += &format!("; {note}");
        }
        info!("{message}");
        Ok(message)
    }

    /// Computes the plan from the current state and applies it if it differs. A service
    /// whose VIP a VRRP instance manages is live only while that instance is master.
    fn replan(&mut self) -> Result<()> {
        self.service_health.send_if_modified(|up| {
            replace_if_changed(up, backends_up(&self.config, &self.healthy))
        });
        let statuses: BTreeMap<BackendKey, BackendStatus> = backend_keys(&self.config)
            .map(|key| {
                let status = BackendStatus {
                    healthy: self.healthy.get(&key).copied().unwrap_or(true),
                    admin: self.admin.get(&key).copied().unwrap_or_default(),
                };
                (key, status)
            })
            .collect();
        let mut plan = Plan::compute_with_roles(&self.config, &statuses, &self.roles);
        let held = self.vrrp_held();
        plan.services
            .retain(|s| held.get(s.listen.ip()).copied().unwrap_or(true));
        if plan == self.plan {
            return Ok(());
        }
        let started = Instant::now();
        self.dataplane.apply(&plan)?;
        self.updates.record(started.elapsed());
        // Logged once applied: a line in the log means the data path already follows it.
        log_changes(&self.plan, &plan);
        self.plan = plan;
        Ok(())
    }

    /// VRRP-managed addresses, each with whether this node holds it (is master).
    fn vrrp_held(&self) -> BTreeMap<Ipv4Addr, bool> {
        let states = self.vrrp_states.borrow();
        let mut held = BTreeMap::new();
        for (config, status) in self.config.vrrp.iter().zip(states.iter()) {
            for vip in &config.virtual_addresses {
                let master = status.state == VrrpState::Master;
                *held.entry(vip.address).or_insert(false) |= master;
            }
        }
        held
    }

    async fn stop(mut self, mode: StopMode) -> Result<()> {
        // A graceful stop hands the VIPs to the peer at once (priority 0); a hand-over
        // leaves them here, where the next gerbang resumes as master.
        if let Some(vrrp) = self.vrrp.take()
            && mode == StopMode::Detach
        {
            vrrp.stop().await;
        }
        self.stop.send_replace(Some(mode));
        self.health.stop();
        let mut tasks = std::mem::take(&mut self.tasks).into_iter();
        // The next-hop and sweep tasks end on the signal; the netlink connection would run
        // forever, so it is aborted once they are done.
        for task in tasks.by_ref().take(2) {
            let _ = task.await;
        }
        for task in tasks {
            task.abort();
        }
        match self.dataplane.traffic() {
            Ok(report) => log_summary(&report),
            Err(err) => warn!("reading the final counters: {err:#}"),
        }
        for (interface, how) in self.dataplane.attachments() {
            if mode == StopMode::Detach {
                info!(%interface, mode = how, "detaching XDP program");
            } else {
                info!(%interface, mode = how, "XDP program stays attached");
            }
        }
        self.dataplane.close(mode).await
    }
}

/// Healthy backends per service, whatever their admin state: what VRRP's
/// `track_services` follows ("a service with no backend UP").
fn backends_up(config: &Config, healthy: &BTreeMap<BackendKey, bool>) -> BTreeMap<String, usize> {
    config
        .services
        .iter()
        .map(|s| {
            let up = s
                .backends
                .iter()
                .filter(|b| {
                    let key = (s.name.clone(), b.name.clone());
                    healthy.get(&key).copied().unwrap_or(true)
                })
                .count();
            (s.name.clone(), up)
        })
        .collect()
}

/// The roles the health checks know, for backends whose first role check has answered.
fn known_roles(health: &HealthMonitor) -> BTreeMap<BackendKey, RoleVerdict> {
    health
        .snapshot()
        .into_iter()
        .filter_map(|backend| Some((backend.key, backend.role?)))
        .collect()
}

fn replace_if_changed<T: PartialEq>(slot: &mut T, value: T) -> bool {
    if *slot == value {
        return false;
    }
    *slot = value;
    true
}

fn backend_keys(config: &Config) -> impl Iterator<Item = BackendKey> + '_ {
    config.services.iter().flat_map(|s| {
        s.backends
            .iter()
            .map(move |b| (s.name.clone(), b.name.clone()))
    })
}

fn backend_addresses(config: &Config) -> Vec<Ipv4Addr> {
    let mut addresses: Vec<Ipv4Addr> = config
        .services
        .iter()
        .flat_map(|s| s.backends.iter().map(|b| *b.address.ip()))
        .collect();
    addresses.sort_unstable();
    addresses.dedup();
    addresses
}

fn check_targets(config: &Config) -> Vec<CheckTarget> {
    config
        .services
        .iter()
        .flat_map(|s| {
            s.backends.iter().map(move |b| {
                CheckTarget::new((s.name.clone(), b.name.clone()), b.address, b.check.clone())
            })
        })
        .collect()
}

/// The slowest first probe's timeout, and a little more.
fn first_verdict_wait(config: &Config) -> Duration {
    let slowest = config
        .services
        .iter()
        .flat_map(|s| &s.backends)
        .filter(|b| !matches!(b.check.kind, CheckKind::None))
        .map(|b| b.check.timeout)
        .max()
        .unwrap_or_default();
    slowest + FIRST_VERDICT_SLACK
}

fn counts(config: &Config) -> (usize, usize) {
    let backends = config.services.iter().map(|s| s.backends.len()).sum();
    (config.services.len(), backends)
}

/// Logs every backend whose state changed, and services left without a backend.
fn log_changes(old: &Plan, new: &Plan) {
    for service in &new.services {
        let before = old.services.iter().find(|s| s.name == service.name);
        for backend in &service.backends {
            let was = before.and_then(|s| s.backends.iter().find(|b| b.name == backend.name));
            match was {
                Some(was) if was.state == backend.state => {}
                Some(was) => info!(
                    service = %service.name,
                    backend = %backend.name,
                    "{} -> {}",
                    state_word(was.state),
                    state_word(backend.state)
                ),
                None => {}
            }
        }
        let had_conflict = before.and_then(|s| s.conflict.as_deref());
        match (had_conflict, service.conflict.as_deref()) {
            (None, Some(conflict)) => error!(
                service = %service.name,
                "no primary: {conflict}; new flows are refused until exactly one does"
            ),
            (Some(_), None) => info!(service = %service.name, "primary conflict over"),
            _ => {}
        }
        let had_active = before.is_some_and(|s| s.active().next().is_some());
        if service.active().next().is_none() && (had_active || before.is_none()) {
            warn!(
                service = %service.name,
                "no backend available: new TCP connections are answered with a reset, UDP \
                 datagrams are dropped"
            );
        }
    }
}

fn state_word(state: BackendState) -> &'static str {
    match state {
        BackendState::Active => "active",
        BackendState::Standby => "standby",
        BackendState::Down => "down",
    }
}

fn log_summary(report: &TrafficReport) {
    for service in &report.services {
        let c = &service.counters;
        info!(
            service = %service.name,
            new_flows = c.new_flows,
            packets_to_backends = c.packets_to_backend,
            packets_to_clients = c.packets_to_client,
            drops = c.drops,
            "forwarded"
        );
        for backend in &service.backends {
            info!(
                service = %service.name,
                backend = %backend.name,
                address = %backend.address,
                new_flows = backend.counters.new_flows,
                packets = backend.counters.packets_to_backend + backend.counters.packets_to_client,
                "forwarded"
            );
        }
    }
}
