//! Role checks: asking a replicated database which role each backend has, so that a
//! `role = "primary"` service writes to the primary only and a `role = "replica"` service
//! reads from replicas that are not too far behind.
//!
//! - `postgres`: `pg_is_in_recovery()` and the replay lag (tokio-postgres).
//! - `mysql`: `@@global.read_only`, the replica status, and for Galera the `wsrep_%`
//!   status (mysql_async).
//! - `http_role`: Patroni-style endpoints, `GET /primary` and `GET /replica` (the HTTP code
//!   of [`super::probe`]).
//!
//! A probe reports a [`RoleReport`]; [`RoleState`] turns reports into the [`RoleVerdict`]
//! the controller plans with. Gaining a role that takes more traffic (becoming the primary,
//! a replica catching up) needs `rise` reports in a row, as coming UP does; losing one
//! (a primary demoted, a replica falling behind) counts at once, since acting late on it is
//! what lands a write on a node that is no longer the primary. Every probe runs under the
//! check's single timeout, and whatever a server answers (a refusal, an error, garbage, an
//! unknown version's answer) ends as a failure with a reason, never a panic.
//!
//! Connections are plain TCP without TLS: the databases are checked on the private network
//! behind the balancer (see [`crate::config::DbCheck`]).

mod http_role;
mod mysql;
mod postgres;

#[cfg(test)]
mod tests;

use std::{fmt, net::SocketAddrV4, time::Duration};

use super::probe::Phase;
use crate::config::CheckKind;

/// What a backend is in its replication topology.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// Takes writes: the one a `role = "primary"` service sends them to.
    Primary,
    /// Follows a primary; takes reads.
    Replica,
    /// A synced Galera node: takes writes and reads, as each of its peers does.
    Member,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Primary => "primary",
            Self::Replica => "replica",
            Self::Member => "galera member",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What one role check found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RoleReport {
    pub role: Role,
    /// A replica's lag, when the database tells it.
    pub lag: Option<Duration>,
    /// Fit for reads: a primary or member, or a replica known to be within the check's
    /// `max_lag` (or judged fresh by its HTTP endpoint).
    pub fresh: bool,
}

impl RoleReport {
    /// A role whose data is current by definition.
    pub(super) fn writer(role: Role) -> Self {
        Self {
            role,
            lag: None,
            fresh: true,
        }
    }

    /// A replica `lag` behind (`None`: unknown), fresh when that is within `max_lag`.
    pub(super) fn replica(lag: Option<Duration>, max_lag: Duration) -> Self {
        Self {
            role: Role::Replica,
            lag,
            fresh: lag.is_some_and(|lag| lag <= max_lag),
        }
    }
}

/// A backend's role as the controller plans with it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RoleVerdict {
    pub role: Role,
    /// See [`RoleReport::fresh`].
    pub fresh: bool,
    /// The last probe confirmed it. False while probes fail and the backend is still UP
    /// (within `fall`): its claim is then stale, and a primary claimed by a backend that
    /// answers wins over it.
    pub current: bool,
}

impl fmt::Display for RoleVerdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.role.as_str())?;
        if !self.fresh {
            f.write_str(" (not fit for reads)")?;
        }
        Ok(())
    }
}

/// One backend's role verdict from its probes.
#[derive(Clone, Debug)]
pub(super) struct RoleState {
    rise: u32,
    verdict: Option<RoleVerdict>,
    /// A claim that takes more traffic than the verdict, and how many reports in a row
    /// made it.
    pending: Option<(Role, bool, u32)>,
}

impl RoleState {
    /// `rise` below 1 is taken as 1.
    pub fn new(rise: u32) -> Self {
        Self {
            rise: rise.max(1),
            verdict: None,
            pending: None,
        }
    }

    pub fn verdict(&self) -> Option<RoleVerdict> {
        self.verdict
    }

    /// Whether a claim is waiting for `rise` reports, during which probes run at
    /// `fast_interval`.
    pub fn pending(&self) -> bool {
        self.pending.is_some()
    }

    /// Takes a probe's report (`None`: the probe failed); returns whether the verdict
    /// changed.
    pub fn record(&mut self, report: Option<&RoleReport>) -> bool {
        let before = self.verdict;
        match (report, &mut self.verdict) {
            (None, verdict) => {
                self.pending = None;
                if let Some(verdict) = verdict {
                    verdict.current = false;
                }
            }
            // The first report decides, as the first probe decides UP or DOWN.
            (Some(report), None) => self.verdict = Some(confirmed(report.role, report.fresh)),
            (Some(report), Some(verdict)) => {
                let claim = (report.role, report.fresh);
                if claim == (verdict.role, verdict.fresh) {
                    self.pending = None;
                    verdict.current = true;
                } else if takes_more(verdict, claim) {
                    let count = match self.pending {
                        Some((role, fresh, count)) if (role, fresh) == claim => count + 1,
                        _ => 1,
                    };
                    verdict.current = true;
                    if count >= self.rise {
                        self.pending = None;
                        *verdict = confirmed(claim.0, claim.1);
                    } else {
                        self.pending = Some((claim.0, claim.1, count));
                    }
                } else {
                    self.pending = None;
                    *verdict = confirmed(claim.0, claim.1);
                }
            }
        }
        self.verdict != before
    }
}

fn confirmed(role: Role, fresh: bool) -> RoleVerdict {
    RoleVerdict {
        role,
        fresh,
        current: true,
    }
}

/// Whether `claim` would take more traffic than `verdict`: new writes, or reads again.
fn takes_more(verdict: &RoleVerdict, (role, fresh): (Role, bool)) -> bool {
    let writes = |role| matches!(role, Role::Primary | Role::Member);
    (role != verdict.role && writes(role)) || (fresh && !verdict.fresh)
}

/// One role check, without its timeout: what it found, in words and as a report.
pub(super) async fn exchange(
    target: SocketAddrV4,
    kind: &CheckKind,
    phase: &mut Phase,
) -> Result<(String, RoleReport), String> {
    match kind {
        CheckKind::Postgres(check) => postgres::exchange(target, check, phase).await,
        CheckKind::Mysql(check) => mysql::exchange(target, check, false, phase).await,
        CheckKind::Galera(check) => mysql::exchange(target, check, true, phase).await,
        CheckKind::HttpRole(check) => http_role::exchange(target, check, phase).await,
        CheckKind::None | CheckKind::Tcp | CheckKind::Http(_) => Err("not a role check".to_owned()),
    }
}

/// A lag as an operator reads it: `"0.3s"`, `"12s"`.
fn seconds(lag: Duration) -> String {
    let secs = lag.as_secs_f64();
    if secs < 10.0 {
        format!("{secs:.1}s")
    } else {
        format!("{secs:.0}s")
    }
}

/// What a replica's detail says about its lag.
fn lag_words(report: &RoleReport, max_lag: Duration) -> String {
    match report.lag {
        Some(lag) if report.fresh => format!("{} behind", seconds(lag)),
        Some(lag) => format!(
            "lagging {} behind (max_lag {})",
            seconds(lag),
            seconds(max_lag)
        ),
        None => "lag unknown".to_owned(),
    }
}

/// `text` cut to a length that fits in a log line, printable.
fn shown(text: &str) -> String {
    const SHOWN: usize = 200;
    let mut out: String = text
        .chars()
        .take(SHOWN)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if text.chars().count() > SHOWN {
        out.push_str("...");
    }
    out
}
