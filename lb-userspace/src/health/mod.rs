//! Health checks: probing backends and deciding which are UP.
//!
//! The engine is I/O and state only; the controller turns its verdicts into data-plane
//! changes. [`HealthMonitor`] runs one task per checked backend on the caller's tokio
//! runtime (so it also works on a current-thread runtime inside a network namespace):
//! probe, record, wait, repeat. Each verdict change is logged here (info for UP, warn for
//! DOWN) and sent as a [`HealthChange`]; [`HealthMonitor::snapshot`] has the numbers
//! behind the verdicts for the status page and metrics.
//!
//! - `probe`: one TCP or HTTP probe under the check's timeout, with an operator-facing
//!   reason when it fails ([`probe()`] is public, for one-off checks).
//! - `state`: HAProxy's `fall`/`rise` counter, the choice between `interval`,
//!   `fast_interval` and `down_interval`, and the ±10% jitter.
//! - `db`: role checks of replicated databases (PostgreSQL, MySQL/MariaDB, Galera,
//!   Patroni's endpoints) and the [`RoleVerdict`] each backend's reports add up to. A role
//!   check is UP while the database answers; its role travels beside the verdict, in
//!   [`HealthChange::role`], and a change of role alone is sent as a change too.
//!
//! Every backend's first probe runs at once, so that the controller can wait for first
//! verdicts ([`HealthMonitor::first_verdicts`]) before it goes live; the first probe decides
//! the first verdict. A backend without a check ([`CheckKind::None`]) is UP, never probed.

mod db;
mod probe;
mod state;

#[cfg(test)]
mod tests;

use std::{
    collections::BTreeMap,
    net::SocketAddrV4,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::{Duration, Instant, SystemTime},
};

use tokio::{
    sync::{mpsc, watch},
    task::AbortHandle,
};
use tracing::{debug, info, warn};

pub use db::{Role, RoleReport, RoleVerdict};
pub use probe::{ProbeFailure, ProbeSuccess, probe};

use db::RoleState;
use state::{HealthState, Jitter};

use crate::{
    config::{CheckConfig, CheckKind},
    dataplane::plan::BackendKey,
};

/// A backend to check: where to probe it (the check's `address` and `port` overrides
/// already applied) and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckTarget {
    pub key: BackendKey,
    pub target: SocketAddrV4,
    pub check: CheckConfig,
}

impl CheckTarget {
    /// The target for a backend at `backend`: its address and port unless the check
    /// overrides them (HAProxy `addr` and `port`).
    pub fn new(key: BackendKey, backend: SocketAddrV4, check: CheckConfig) -> Self {
        let target = SocketAddrV4::new(
            check.address.unwrap_or(*backend.ip()),
            check.port.unwrap_or(backend.port()),
        );
        Self { key, target, check }
    }
}

/// A backend's verdict changed (or was given for the first time).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthChange {
    pub key: BackendKey,
    pub up: bool,
    /// What decided it, e.g. `HTTP status 503 (3 failures in a row)`.
    pub reason: String,
    pub at: Instant,
    /// The backend's role, for a role check; `None` before its first answer.
    pub role: Option<RoleVerdict>,
}

/// What the engine knows about one backend, for the status page and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendHealth {
    pub key: BackendKey,
    /// Where it is probed.
    pub target: SocketAddrV4,
    /// `"tcp"`, `"http"` or `"none"`.
    pub kind: &'static str,
    /// `None` until the first probe has answered.
    pub up: Option<bool>,
    pub consecutive_successes: u32,
    pub consecutive_failures: u32,
    /// The last probe's detail (`"HTTP 200"`) or failure reason.
    pub last_result: Option<String>,
    /// How long the last probe took, whether it passed or failed.
    pub last_latency: Option<Duration>,
    pub last_checked: Option<SystemTime>,
    /// Probes so far, and how many of them failed.
    pub checks: u64,
    pub failures: u64,
    /// A role check's verdict; `None` for other checks and before the first answer.
    pub role: Option<RoleVerdict>,
    /// A replica's lag at the last probe that told it.
    pub lag: Option<Duration>,
}

/// Checks a set of backends, one task each, until stopped or dropped.
pub struct HealthMonitor {
    shared: Arc<Shared>,
}

/// What the monitor and its tasks share.
struct Shared {
    registry: Mutex<Registry>,
    changes: mpsc::UnboundedSender<HealthChange>,
    /// Bumped on every verdict change, to wake [`HealthMonitor::first_verdicts`].
    verdicts: watch::Sender<u64>,
}

struct Registry {
    backends: BTreeMap<BackendKey, Entry>,
    next_generation: u64,
}

struct Entry {
    check: CheckConfig,
    health: BackendHealth,
    /// Tells this entry's task from a replaced one that has not noticed its abort yet.
    generation: u64,
    /// `None` for a backend without a check.
    task: Option<AbortHandle>,
}

impl HealthMonitor {
    /// A monitor with no backends, and the receiver of its verdict changes. The monitor
    /// keeps checking (and its snapshot stays current) if the receiver is dropped.
    pub fn new() -> (Self, mpsc::UnboundedReceiver<HealthChange>) {
        let (changes, receiver) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            registry: Mutex::new(Registry {
                backends: BTreeMap::new(),
                next_generation: 0,
            }),
            changes,
            verdicts: watch::Sender::new(0),
        });
        (Self { shared }, receiver)
    }

    /// Makes `targets` the set of checked backends. A backend with the same key, target and
    /// check as before keeps its task and verdict; a new or changed one starts afresh, with
    /// an immediate first probe; one no longer listed stops being checked, without a
    /// [`HealthChange`]. After this returns, no change from a stopped task is sent. If a
    /// key appears more than once, the last one counts.
    ///
    /// Must be called within a tokio runtime: the tasks are spawned on it.
    pub fn set_targets(&self, targets: Vec<CheckTarget>) {
        let wanted: BTreeMap<BackendKey, CheckTarget> = targets
            .into_iter()
            .map(|target| (target.key.clone(), target))
            .collect();
        let mut registry = self.shared.lock();
        registry.backends.retain(|key, entry| {
            let keep = wanted
                .get(key)
                .is_some_and(|t| t.target == entry.health.target && t.check == entry.check);
            if !keep {
                debug!(address = %entry.health.target, "stopped checking backend {}/{}", key.0, key.1);
                if let Some(task) = &entry.task {
                    task.abort();
                }
            }
            keep
        });
        for (key, target) in wanted {
            if registry.backends.contains_key(&key) {
                continue;
            }
            let generation = registry.next_generation;
            registry.next_generation += 1;
            let mut entry = Entry {
                health: BackendHealth {
                    key: key.clone(),
                    target: target.target,
                    kind: target.check.kind.as_str(),
                    up: None,
                    consecutive_successes: 0,
                    consecutive_failures: 0,
                    last_result: None,
                    last_latency: None,
                    last_checked: None,
                    checks: 0,
                    failures: 0,
                    role: None,
                    lag: None,
                },
                check: target.check,
                generation,
                task: None,
            };
            if matches!(entry.check.kind, CheckKind::None) {
                entry.health.up = Some(true);
                entry.health.last_result = Some("not checked".to_owned());
                self.shared
                    .announce(&entry.health, true, "no health check configured".to_owned());
            } else {
                let task = tokio::spawn(check_loop(
                    Arc::clone(&self.shared),
                    key.clone(),
                    entry.health.target,
                    entry.check.clone(),
                    generation,
                ));
                entry.task = Some(task.abort_handle());
            }
            registry.backends.insert(key, entry);
        }
        drop(registry);
        self.shared.verdicts.send_modify(|n| *n += 1);
    }

    /// Waits until every backend has a verdict, or `deadline` has passed, and returns the
    /// verdicts there are: a backend missing from the map has not answered its first probe
    /// yet. Set the deadline a little above the checks' timeout and every probe will have
    /// ended one way or the other.
    pub async fn first_verdicts(&self, deadline: Duration) -> BTreeMap<BackendKey, bool> {
        let end = tokio::time::Instant::now() + deadline;
        // Subscribing before looking means no verdict can slip in between unnoticed.
        let mut verdicts = self.shared.verdicts.subscribe();
        loop {
            let all_known = self
                .shared
                .lock()
                .backends
                .values()
                .all(|entry| entry.health.up.is_some());
            if all_known {
                break;
            }
            if !matches!(
                tokio::time::timeout_at(end, verdicts.changed()).await,
                Ok(Ok(()))
            ) {
                break;
            }
        }
        self.shared
            .lock()
            .backends
            .iter()
            .filter_map(|(key, entry)| Some((key.clone(), entry.health.up?)))
            .collect()
    }

    /// Every checked backend's health, in key order.
    pub fn snapshot(&self) -> Vec<BackendHealth> {
        self.shared
            .lock()
            .backends
            .values()
            .map(|entry| entry.health.clone())
            .collect()
    }

    /// Stops every check; the monitor is empty afterwards and can be given targets again.
    pub fn stop(&self) {
        let mut registry = self.shared.lock();
        for entry in registry.backends.values() {
            if let Some(task) = &entry.task {
                task.abort();
            }
        }
        registry.backends.clear();
    }
}

impl Drop for HealthMonitor {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Registry> {
        // The registry is consistent after every statement, so a panic elsewhere while
        // holding the lock leaves nothing to distrust.
        self.registry.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records a probe of `key`; `false` when the task has been stopped or replaced and
    /// should end.
    fn record(
        &self,
        key: &BackendKey,
        generation: u64,
        state: &HealthState,
        result: &Result<ProbeSuccess, ProbeFailure>,
        changed: Option<bool>,
        role: (&RoleState, bool),
    ) -> bool {
        let mut registry = self.lock();
        let Some(entry) = registry
            .backends
            .get_mut(key)
            .filter(|entry| entry.generation == generation)
        else {
            return false;
        };
        let health = &mut entry.health;
        let (text, latency) = match result {
            Ok(success) => (&success.detail, success.latency),
            Err(failure) => (&failure.reason, failure.elapsed),
        };
        debug!(address = %health.target, "check of backend {}/{}: {text}", key.0, key.1);
        health.checks += 1;
        health.failures += u64::from(result.is_err());
        health.up = state.up();
        health.consecutive_successes = state.consecutive_successes();
        health.consecutive_failures = state.consecutive_failures();
        health.last_result = Some(text.clone());
        health.last_latency = Some(latency);
        health.last_checked = Some(SystemTime::now());
        let (role, role_changed) = role;
        let report = result.as_ref().ok().and_then(|success| success.role);
        let role_moved = role_changed
            && health.role.map(|r| (r.role, r.fresh)) != role.verdict().map(|r| (r.role, r.fresh));
        health.role = role.verdict();
        if let Some(report) = report {
            health.lag = report.lag;
        }
        if let Some(up) = changed {
            let reason = if health.checks == 1 {
                format!("{text} (first check)")
            } else if up {
                format!(
                    "{text} ({})",
                    in_a_row(state.consecutive_successes(), "success", "successes")
                )
            } else {
                format!(
                    "{text} ({})",
                    in_a_row(state.consecutive_failures(), "failure", "failures")
                )
            };
            // Sent under the lock, so that `set_targets` cannot return between the
            // generation check and the send.
            self.announce(health, up, reason);
        } else if role_changed {
            // The role alone changed, or the last probe stopped (or started again)
            // confirming it: the controller plans with both.
            if role_moved && let Some(verdict) = health.role {
                let (service, backend) = &health.key;
                info!(address = %health.target, "backend {service}/{backend} is now {verdict}: {text}");
            }
            self.send(health, health.up == Some(true), text.clone());
        }
        drop(registry);
        if changed.is_some() || role_changed {
            self.verdicts.send_modify(|n| *n += 1);
        }
        true
    }

    /// Logs a verdict change and sends it to the controller.
    fn announce(&self, health: &BackendHealth, up: bool, reason: String) {
        let (service, backend) = &health.key;
        if up {
            info!(address = %health.target, "backend {service}/{backend} is UP: {reason}");
        } else {
            warn!(address = %health.target, "backend {service}/{backend} is DOWN: {reason}");
        }
        self.send(health, up, reason);
    }

    /// Sends a change to the controller.
    fn send(&self, health: &BackendHealth, up: bool, reason: String) {
        // Nobody listening is fine: the snapshot still tells.
        let _ = self.changes.send(HealthChange {
            key: health.key.clone(),
            up,
            reason,
            at: Instant::now(),
            role: health.role,
        });
    }
}

fn in_a_row(n: u32, one: &str, many: &str) -> String {
    format!("{n} {} in a row", if n == 1 { one } else { many })
}

/// One backend's checks: the first probe at once, then one per (jittered) interval.
async fn check_loop(
    shared: Arc<Shared>,
    key: BackendKey,
    target: SocketAddrV4,
    check: CheckConfig,
    generation: u64,
) {
    let mut state = HealthState::new(check.rise, check.fall);
    let mut role = RoleState::new(check.rise);
    let mut jitter = Jitter::new(&key);
    loop {
        let result = probe(target, &check.kind, check.timeout).await;
        let changed = state.record(result.is_ok());
        let role_changed = role.record(result.as_ref().ok().and_then(|s| s.role.as_ref()));
        if !shared.record(
            &key,
            generation,
            &state,
            &result,
            changed,
            (&role, role_changed),
        ) {
            return;
        }
        // A role being gained is confirmed at the pace of a backend coming UP.
        let interval = if role.pending() {
            check.fast_interval
        } else {
            state.next_interval(&check)
        };
        tokio::time::sleep(jitter.spread(interval)).await;
    }
}
