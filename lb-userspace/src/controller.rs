//! The controller: starts the data plane from a configuration and runs the tasks that keep
//! it current until it is told to stop.

use std::{path::Path, time::Duration};

use anyhow::{Context as _, Result};
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::watch,
    task::JoinHandle,
    time::{MissedTickBehavior, interval},
};
use tracing::{debug, info, warn};

use crate::{
    config::Config,
    dataplane::{
        Dataplane as _, Plan,
        xdp::{FlowSweeper, NextHopResolver, SweepReport, TrafficReport, XdpDataplane, mode_name},
    },
    privileges,
};

/// How often next hops towards backends are re-resolved.
const NEXT_HOP_INTERVAL: Duration = Duration::from_secs(1);
/// How long start-up waits for the kernel to resolve backends' link-layer addresses.
const RESOLVE_WAIT: Duration = Duration::from_secs(2);
/// How often the connection table is swept for idle flows.
const SWEEP_INTERVAL: Duration = Duration::from_secs(5);

/// A running gerbang: the data plane and its background tasks.
pub struct Controller {
    dataplane: XdpDataplane,
    stop: watch::Sender<bool>,
    sweeps: watch::Receiver<SweepReport>,
    tasks: Vec<JoinHandle<()>>,
}

impl Controller {
    /// Loads and attaches the data plane and makes the configured services live.
    ///
    /// Must run in the network namespace of the configured interfaces (netlink sockets and
    /// interface names belong to the namespace of the thread that opens them).
    pub async fn start(config: &Config) -> Result<Self> {
        let (mut dataplane, background) = XdpDataplane::load(&config.dataplane, &config.timeouts)?;
        dataplane.attach(&config.dataplane.interfaces, config.dataplane.attach)?;
        let plan = Plan::from_config(config);

        let (connection, netlink, _) =
            rtnetlink::new_connection().context("opening a netlink socket")?;
        let connection = tokio::spawn(connection);
        let mut next_hops = NextHopResolver::new(netlink, background.next_hops);
        resolve_before_going_live(&mut next_hops, &plan).await?;

        dataplane.apply(&plan)?;
        for service in &plan.services {
            info!(
                service = %service.name,
                listen = %service.listen,
                protocol = %service.protocol,
                snat = %service.snat_address,
                backends = service.backends.len(),
                "service live"
            );
        }

        let (stop, stopped) = watch::channel(false);
        let (sweep_reports, sweeps) = watch::channel(SweepReport::default());
        let tasks = vec![
            tokio::spawn(keep_next_hops(next_hops, plan, stopped.clone())),
            tokio::spawn(sweep_flows(background.sweeper, sweep_reports, stopped)),
            connection,
        ];
        Ok(Self {
            dataplane,
            stop,
            sweeps,
            tasks,
        })
    }

    /// The XDP program's counters.
    pub fn traffic(&self) -> Result<TrafficReport> {
        self.dataplane.traffic()
    }

    /// What the last sweep of the connection table found.
    pub fn last_sweep(&self) -> SweepReport {
        *self.sweeps.borrow()
    }

    /// Stops the background tasks, detaches the program and logs what it forwarded.
    pub async fn stop(self) -> Result<()> {
        let _ = self.stop.send(true);
        let mut tasks = self.tasks.into_iter();
        // The next-hop and sweep tasks finish on the signal; the netlink connection would
        // run forever, so it is aborted once they are done.
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
        for attachment in self.dataplane.attachments() {
            info!(
                interface = %attachment.interface,
                mode = mode_name(attachment.mode),
                "detaching XDP program"
            );
        }
        drop(self.dataplane);
        Ok(())
    }
}

/// `gerbang run`: start from the config file, run until SIGINT or SIGTERM, stop cleanly.
pub async fn run(config_path: &Path) -> Result<()> {
    let config = Config::load(config_path)?;
    privileges::check()?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let controller = Controller::start(&config).await?;
    info!(config = %config_path.display(), "gerbang running; SIGINT or SIGTERM stops it");
    tokio::select! {
        _ = interrupt.recv() => info!("SIGINT received, stopping"),
        _ = terminate.recv() => info!("SIGTERM received, stopping"),
    }
    controller.stop().await
}

/// Resolves the backends' next hops before any service goes live, so that first packets
/// are not handed to a kernel that may not route them. A backend still unresolved after
/// [`RESOLVE_WAIT`] is reported and retried in the background.
async fn resolve_before_going_live(resolver: &mut NextHopResolver, plan: &Plan) -> Result<()> {
    let backends = plan.backend_addresses();
    let deadline = tokio::time::Instant::now() + RESOLVE_WAIT;
    loop {
        let unresolved = resolver.refresh(&backends).await?;
        if unresolved.is_empty() {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            let list: Vec<String> = unresolved.iter().map(ToString::to_string).collect();
            warn!(
                backends = %list.join(", "),
                "no link-layer address for these backends yet (down, or not on a connected \
                 network?); their first packets may be lost until they answer ARP"
            );
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn keep_next_hops(
    mut resolver: NextHopResolver,
    plan: Plan,
    mut stop: watch::Receiver<bool>,
) {
    let backends = plan.backend_addresses();
    let mut ticks = interval(NEXT_HOP_INTERVAL);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {
                match resolver.refresh(&backends).await {
                    Ok(unresolved) if !unresolved.is_empty() => {
                        debug!(?unresolved, "next hops not resolved yet");
                    }
                    Ok(_) => {}
                    Err(err) => warn!("refreshing next hops: {err:#}"),
                }
            }
            _ = stop.changed() => break,
        }
    }
    resolver.release().await;
}

async fn sweep_flows(
    mut sweeper: FlowSweeper,
    reports: watch::Sender<SweepReport>,
    mut stop: watch::Receiver<bool>,
) {
    let mut ticks = interval(SWEEP_INTERVAL);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => match sweeper.sweep() {
                Ok(report) => {
                    if report.expired + report.orphans > 0 {
                        debug!(live = report.live, expired = report.expired, orphans = report.orphans, "flow table swept");
                    }
                    let _ = reports.send(report);
                }
                Err(err) => warn!("sweeping the flow table: {err:#}"),
            },
            _ = stop.changed() => break,
        }
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
