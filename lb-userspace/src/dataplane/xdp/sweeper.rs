//! Ageing the connection table from userspace.
//!
//! The XDP program ages a flow when its next packet arrives; flows that simply stop need
//! this sweep. It frees their SNAT ports (a port stays taken while its `NAT_RETURN` entry
//! exists) and keeps the live-flow count honest. It also removes `NAT_RETURN` entries whose
//! client flow the LRU evicted.
//!
//! Since it reads every flow anyway, the sweep also counts the open ones per service and
//! backend ([`Sessions`]): HAProxy's "current sessions", as of the last sweep, at no cost
//! to the packet path.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context as _, Result};
use aya::maps::{HashMap, MapData, MapError};
use lb_common::{
    Flow, FlowKey, PROTO_TCP, Timeouts,
    flow::{FLOW_FIN_FROM_BACKEND, FLOW_FIN_FROM_CLIENT, FLOW_RST},
};
use nix::time::{ClockId, clock_gettime};

/// Margin added to every timeout: a flow a packet is refreshing right now must not be
/// removed under it.
const SWEEP_MARGIN: Duration = Duration::from_secs(1);

pub struct FlowSweeper {
    flows: HashMap<MapData, FlowKey, Flow>,
    nat_return: HashMap<MapData, FlowKey, FlowKey>,
    sessions: SharedSessions,
}

/// Open flows per service id and per backend id, as the last sweep counted them: live
/// (not idle past their timeout) and, for TCP, not closing (no RST, not FINs both ways).
/// A flow the XDP program has just created counts from the next sweep on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sessions {
    pub services: BTreeMap<u32, u64>,
    pub backends: BTreeMap<u32, u64>,
}

impl Sessions {
    pub fn service(&self, id: u32) -> u64 {
        self.services.get(&id).copied().unwrap_or(0)
    }

    pub fn backend(&self, id: u32) -> u64 {
        self.backends.get(&id).copied().unwrap_or(0)
    }

    fn count(&mut self, flow: &Flow) {
        *self.services.entry(flow.service_id).or_default() += 1;
        *self.backends.entry(flow.backend_id).or_default() += 1;
    }
}

/// The last sweep's [`Sessions`]: written by the sweeper, read by
/// [`super::XdpDataplane::traffic`].
pub type SharedSessions = Arc<Mutex<Sessions>>;

/// Whether a live flow is still a session: TCP until a RST or FINs both ways, UDP while
/// live.
fn is_open(proto: u8, flags: u64) -> bool {
    let both_fins = FLOW_FIN_FROM_CLIENT | FLOW_FIN_FROM_BACKEND;
    proto != PROTO_TCP || (flags & FLOW_RST == 0 && flags & both_fins != both_fins)
}

/// What one sweep found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// Flows still live after the sweep.
    pub live: usize,
    pub expired: usize,
    pub orphans: usize,
}

impl FlowSweeper {
    /// A sweeper publishing what it counts to `sessions`.
    pub fn new(
        flows: HashMap<MapData, FlowKey, Flow>,
        nat_return: HashMap<MapData, FlowKey, FlowKey>,
        sessions: SharedSessions,
    ) -> Self {
        Self {
            flows,
            nat_return,
            sessions,
        }
    }

    /// Removes the flows idle for longer than `timeouts` allow (the same timeouts the XDP
    /// program applies), and return entries left without their flow; counts the open
    /// flows left (see [`Sessions`]).
    pub fn sweep(&mut self, timeouts: &Timeouts) -> Result<SweepReport> {
        let mut report = SweepReport::default();
        let mut sessions = Sessions::default();
        let now = monotonic_ns()?;
        let margin = SWEEP_MARGIN.as_nanos() as u64;

        let keys: Vec<FlowKey> = self.flows.keys().filter_map(Result::ok).collect();
        for key in keys {
            let Some(flow) = ignore_missing(self.flows.get(&key, 0))? else {
                continue;
            };
            let expired = timeouts.expired(
                key.proto,
                flow.flags,
                flow.last_seen_ns.saturating_add(margin),
                now,
            );
            if !expired {
                report.live += 1;
                if is_open(key.proto, flow.flags) {
                    sessions.count(&flow);
                }
                continue;
            }
            let return_key = flow.return_key(key.proto);
            if ignore_missing(self.nat_return.get(&return_key, 0))? == Some(key) {
                ignore_missing(self.nat_return.remove(&return_key))?;
            }
            ignore_missing(self.flows.remove(&key))?;
            report.expired += 1;
        }

        let return_keys: Vec<FlowKey> = self.nat_return.keys().filter_map(Result::ok).collect();
        for return_key in return_keys {
            let Some(client) = ignore_missing(self.nat_return.get(&return_key, 0))? else {
                continue;
            };
            let owner = ignore_missing(self.flows.get(&client, 0))?;
            if owner.is_none_or(|flow| flow.return_key(client.proto) != return_key) {
                ignore_missing(self.nat_return.remove(&return_key))?;
                report.orphans += 1;
            }
        }
        *self
            .sessions
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = sessions;
        Ok(report)
    }
}

/// The clock `bpf_ktime_get_ns` reads.
fn monotonic_ns() -> Result<u64> {
    let now = clock_gettime(ClockId::CLOCK_MONOTONIC).context("reading CLOCK_MONOTONIC")?;
    Ok(now.tv_sec() as u64 * 1_000_000_000 + now.tv_nsec() as u64)
}

/// Entries may vanish between listing and reading: the XDP program and the LRU remove them
/// too. That is not an error.
fn ignore_missing<T>(result: Result<T, MapError>) -> Result<Option<T>> {
    match result {
        Ok(value) => Ok(Some(value)),
        Err(MapError::KeyNotFound) => Ok(None),
        Err(MapError::SyscallError(err)) if err.io_error.raw_os_error() == Some(libc::ENOENT) => {
            Ok(None)
        }
        Err(err) => Err(err.into()),
    }
}

#[cfg(test)]
mod tests {
    use lb_common::{PROTO_UDP, flow::FLOW_REPLY_SEEN};

    use super::*;

    #[test]
    fn closing_tcp_flows_are_not_sessions() {
        assert!(is_open(PROTO_TCP, 0), "a SYN sent, not answered yet");
        assert!(is_open(PROTO_TCP, FLOW_REPLY_SEEN));
        assert!(is_open(PROTO_TCP, FLOW_REPLY_SEEN | FLOW_FIN_FROM_CLIENT));
        assert!(!is_open(
            PROTO_TCP,
            FLOW_REPLY_SEEN | FLOW_FIN_FROM_CLIENT | FLOW_FIN_FROM_BACKEND
        ));
        assert!(!is_open(PROTO_TCP, FLOW_REPLY_SEEN | FLOW_RST));
        assert!(is_open(PROTO_UDP, 0));
    }
}
