//! Background tasks that maintain maps on their own schedule: next hops towards backends
//! and the flow table's ageing.

use std::{net::Ipv4Addr, time::Duration};

use anyhow::Result;
use tokio::{
    sync::watch,
    time::{MissedTickBehavior, interval},
};
use tracing::{debug, error, warn};

use lb_common::Timeouts;

use super::StopMode;
use crate::dataplane::xdp::{FlowSweeper, NextHopResolver, SweepReport};

/// How often next hops towards backends are re-resolved.
const NEXT_HOP_INTERVAL: Duration = Duration::from_secs(1);
/// How long start-up waits for the kernel to resolve backends' link-layer addresses.
const RESOLVE_WAIT: Duration = Duration::from_secs(2);
/// How often the connection table is swept for idle flows.
const SWEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Resolves the backends' next hops before any service goes live, so that first packets
/// are not handed to a kernel that may not route them. A backend still unresolved after
/// [`RESOLVE_WAIT`] is reported and retried in the background.
pub async fn resolve_before_going_live(
    resolver: &mut NextHopResolver,
    backends: &[Ipv4Addr],
) -> Result<()> {
    let deadline = tokio::time::Instant::now() + RESOLVE_WAIT;
    loop {
        let unresolved = resolver.refresh(backends).await?;
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

/// Keeps the next hops of the backends in `backends` (which reloads update) resolved.
/// On a detaching stop it removes the managed neighbours it added; when the program keeps
/// forwarding without a controller they stay, so the kernel keeps them fresh meanwhile.
pub async fn keep_next_hops(
    mut resolver: NextHopResolver,
    mut backends: watch::Receiver<Vec<Ipv4Addr>>,
    mut stop: watch::Receiver<Option<StopMode>>,
) {
    let mut ticks = interval(NEXT_HOP_INTERVAL);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            changed = backends.changed() => if changed.is_err() { break },
            _ = stop.changed() => break,
        }
        if stop.borrow().is_some() {
            break;
        }
        let current = backends.borrow().clone();
        match resolver.refresh(&current).await {
            Ok(unresolved) if !unresolved.is_empty() => {
                debug!(?unresolved, "next hops not resolved yet");
            }
            Ok(_) => {}
            Err(err) => warn!("refreshing next hops: {err:#}"),
        }
    }
    if *stop.borrow() == Some(StopMode::Detach) {
        resolver.release().await;
    }
}

/// Sweeps idle flows out of the connection table with the current `timeouts` and
/// publishes what it found.
///
/// A sweep is one system call per entry and takes up to a few hundred milliseconds on a
/// full table (a SYN flood fills it), so it runs on tokio's blocking pool: on the
/// controller's own threads it would hold up VRRP adverts and health checks meanwhile.
pub async fn sweep_flows(
    mut sweeper: FlowSweeper,
    timeouts: watch::Receiver<Timeouts>,
    reports: watch::Sender<SweepReport>,
    mut stop: watch::Receiver<Option<StopMode>>,
) {
    let mut ticks = interval(SWEEP_INTERVAL);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = stop.changed() => break,
        }
        let timeouts = *timeouts.borrow();
        let swept = tokio::task::spawn_blocking(move || {
            let result = sweeper.sweep(&timeouts);
            (sweeper, result)
        })
        .await;
        let result = match swept {
            Ok((returned, result)) => {
                sweeper = returned;
                result
            }
            Err(err) => {
                error!(
                    "the flow sweeper failed and stops: {err}; idle flows now leave the \
                     table only when it is full"
                );
                return;
            }
        };
        match result {
            Ok(report) => {
                if report.expired + report.orphans > 0 {
                    debug!(
                        live = report.live,
                        expired = report.expired,
                        orphans = report.orphans,
                        "flow table swept"
                    );
                }
                let _ = reports.send(report);
            }
            Err(err) => warn!("sweeping the flow table: {err:#}"),
        }
    }
}
