//! The systems compared, the figures measured, and the samples collected for each.

use std::collections::BTreeMap;

use super::measure::{CpuUse, Figure};

/// A system under test: one column of the results.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Sys {
    /// No balancer: clients spread over the backends themselves, the balancer's namespace
    /// routes (the ceiling).
    Direct,
    XdpNative,
    XdpGeneric,
    Userspace,
    Haproxy,
    Nginx,
    /// keepalived + HAProxy, the stack gerbang replaces: the VRRP peer.
    Keepalived,
}

impl Sys {
    pub fn label(self) -> &'static str {
        match self {
            Sys::Direct => "direct (no balancer)",
            Sys::XdpNative => "gerbang XDP native",
            Sys::XdpGeneric => "gerbang XDP generic",
            Sys::Userspace => "gerbang userspace",
            Sys::Haproxy => "HAProxy 2.6",
            Sys::Nginx => "nginx 1.22 stream",
            Sys::Keepalived => "keepalived 2.2 + HAProxy",
        }
    }

    /// A short name for the chart's legend.
    pub fn short(self) -> &'static str {
        match self {
            Sys::Direct => "direct",
            Sys::XdpNative => "XDP native",
            Sys::XdpGeneric => "XDP generic",
            Sys::Userspace => "userspace",
            Sys::Haproxy => "HAProxy",
            Sys::Nginx => "nginx",
            Sys::Keepalived => "keepalived",
        }
    }
}

/// A measured quantity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Metric {
    /// Datagrams per second the senders got out, at full speed.
    UdpOffered,
    /// Datagrams per second that reached the backends' sockets, at full speed.
    UdpDelivered,
    /// Percent of the datagrams sent at full speed that never reached a backend.
    UdpLoss,
    /// Machine CPU-microseconds per delivered datagram at a fixed, moderate rate.
    UdpCpu,
    /// Percent lost at that fixed rate.
    UdpCpuLoss,
    /// New TCP connections (one HTTP request each) per second.
    ConnRate,
    /// Socket errors and non-2xx answers wrk counted during that run.
    ConnErrors,
    /// Machine CPU-microseconds per connection (= CPU-ms per thousand).
    ConnCpu,
    /// Keep-alive HTTP requests per second.
    HttpRps,
    /// Their latency percentiles, microseconds.
    HttpP50,
    HttpP99,
    /// Machine CPU-microseconds per packet crossing the client's interface.
    HttpCpu,
    /// Paced keep-alive requests: the rate reached and latency percentiles, microseconds.
    LatRate,
    LatP50,
    LatP99,
    /// The balancer's memory (PSS), MiB, idle and holding the held connections.
    MemIdle,
    MemHeld,
    /// BPF maps the balancer holds, MiB (kernel memory, not in PSS).
    MemBpf,
    /// Seconds from a backend's death to the last request that failed.
    BackendDeath,
    /// Requests that failed in that window.
    BackendDeathFailed,
    /// The longest a backend-set change took to reach the data path after the verdict, over
    /// the backend-death runs (gerbang's own measure, from its status API), seconds.
    UpdateMax,
    /// How many updates there were, and how many of them took at most 1 ms.
    UpdateCount,
    UpdateUnder1ms,
    /// Seconds from the VRRP master's death to the first request answered via the backup.
    VrrpFast,
    VrrpSlow,
    /// Seconds from a PostgreSQL promotion to the first write answered by the new primary
    /// through the write service.
    PgPromotion,
    /// Writes that failed in that window (refused, or cut with the old primary).
    PgRefused,
    /// Writes that reached the old primary's host after its shutdown was complete (answered
    /// by it, or refused by it as a read-only replica once rebuilt): the target is none.
    PgOldWrites,
    /// Writes the old primary answered between the promotion and the end of its shutdown,
    /// while both servers were primaries and before a check could tell (not the target's
    /// concern).
    PgSplitWrites,
}

/// Every sample, and why a figure or a whole system was not measured.
#[derive(Default)]
pub struct Results {
    samples: BTreeMap<(Metric, Sys), Vec<f64>>,
    /// Keyed by metric, or by `None` for the whole system.
    not_run: BTreeMap<(Option<Metric>, Sys), String>,
    /// Systems that failed while being measured: the harness reports them as errors.
    pub failures: Vec<String>,
    /// Longer explanations for the report's notes (a peer's own words on why it could not
    /// run, ...).
    pub notes: Vec<String>,
    /// CPU-seconds over every CPU measurement: the benchmark's own, and the machine's.
    pub cpu_ours: f64,
    pub cpu_machine: f64,
}

impl Results {
    pub fn add(&mut self, metric: Metric, sys: Sys, value: f64) {
        self.samples.entry((metric, sys)).or_default().push(value);
    }

    /// Adds a CPU measurement to the totals that show how busy the machine was otherwise.
    pub fn account(&mut self, cpu: CpuUse) {
        self.cpu_ours += cpu.ours;
        self.cpu_machine += cpu.machine;
    }

    /// The share (0 to 1) of the machine's busy time during the CPU measurements that
    /// was not the benchmark's: other people's work on a shared machine.
    pub fn other_work_share(&self) -> Option<f64> {
        (self.cpu_machine > 0.0).then(|| (1.0 - self.cpu_ours / self.cpu_machine).max(0.0))
    }

    pub fn figure(&self, metric: Metric, sys: Sys) -> Option<Figure> {
        self.samples
            .get(&(metric, sys))
            .and_then(|samples| Figure::of(samples))
    }

    /// Marks a figure (`Some`) or a whole system (`None`) as not run, with the reason.
    pub fn not_run(&mut self, metric: Option<Metric>, sys: Sys, reason: impl Into<String>) {
        self.not_run
            .entry((metric, sys))
            .or_insert_with(|| reason.into());
    }

    /// Why `metric` of `sys` has no figure, if it is known.
    pub fn reason(&self, metric: Metric, sys: Sys) -> Option<&str> {
        self.not_run
            .get(&(Some(metric), sys))
            .or_else(|| self.not_run.get(&(None, sys)))
            .map(String::as_str)
    }

    /// Whether the whole system was left out.
    pub fn system_not_run(&self, sys: Sys) -> Option<&str> {
        self.not_run.get(&(None, sys)).map(String::as_str)
    }
}
