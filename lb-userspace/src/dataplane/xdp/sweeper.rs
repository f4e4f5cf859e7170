//! Ageing the connection table from userspace.
//!
//! The XDP program ages a flow when its next packet arrives; flows that simply stop need
//! this sweep. It frees their SNAT ports (a port stays taken while its `NAT_RETURN` entry
//! exists) and keeps the live-flow count honest. It also removes `NAT_RETURN` entries whose
//! client flow the LRU evicted.

use std::time::Duration;

use anyhow::{Context as _, Result};
use aya::maps::{HashMap, MapData, MapError};
use lb_common::{Flow, FlowKey, Timeouts};
use nix::time::{ClockId, clock_gettime};

/// Margin added to every timeout: a flow a packet is refreshing right now must not be
/// removed under it.
const SWEEP_MARGIN: Duration = Duration::from_secs(1);

pub struct FlowSweeper {
    flows: HashMap<MapData, FlowKey, Flow>,
    nat_return: HashMap<MapData, FlowKey, FlowKey>,
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
    pub fn new(
        flows: HashMap<MapData, FlowKey, Flow>,
        nat_return: HashMap<MapData, FlowKey, FlowKey>,
    ) -> Self {
        Self { flows, nat_return }
    }

    /// Removes the flows idle for longer than `timeouts` allow (the same timeouts the XDP
    /// program applies), and return entries left without their flow.
    pub fn sweep(&mut self, timeouts: &Timeouts) -> Result<SweepReport> {
        let mut report = SweepReport::default();
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
