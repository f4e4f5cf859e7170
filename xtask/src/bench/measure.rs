//! What the benchmarks read from the kernel, and how repeated runs are summarised.
//!
//! CPU time comes from `/proc/stat`, for the whole machine: XDP and the rest of the
//! packet path run in softirq on whichever core a packet lands on, so per-process
//! accounting alone would miss it; what the benchmark used is told apart from other
//! people's work on the machine (see [`CpuSnapshot`]). Counters of a namespace (`/proc/net/snmp`,
//! `/proc/net/dev`) are read from a thread inside it through `/proc/thread-self/net`:
//! `/proc/self/net` would show the namespace of the process's main thread instead.

use std::{
    collections::{BTreeSet, HashMap},
    fs,
};

use anyhow::{Context as _, Result, anyhow, bail};
use gerbang_testbed::Netns;

/// CPU time spent on the benchmark's behalf since a snapshot.
///
/// Two readings. `machine`: the busy time of all CPUs from `/proc/stat`. `ours`: the CPU
/// time of the benchmark's own processes (everything inside its namespaces, and xtask
/// with the load generators it reaped) plus the kernel's threads (ksoftirqd and friends),
/// from `/proc/PID/stat`. The kernel here charges softirq work (XDP, the whole packet
/// path) to the task it interrupts, which for this traffic is a sender, a server or
/// ksoftirqd, so `ours` holds it; unlike `machine`, it leaves out other people's work on a
/// shared machine, including processes in other PID namespaces that no `/proc` here shows.
/// On a quiet machine the two agree.
pub struct CpuSnapshot {
    machine: u64,
    ours: HashMap<u32, u64>,
}

/// CPU-seconds used since a [`CpuSnapshot`].
#[derive(Clone, Copy)]
pub struct CpuUse {
    pub ours: f64,
    pub machine: f64,
}

impl CpuSnapshot {
    pub fn now() -> Result<CpuSnapshot> {
        Ok(CpuSnapshot {
            ours: ours_cpu(),
            machine: machine_busy()?,
        })
    }

    /// CPU-seconds used since `self`.
    pub fn used(&self) -> Result<CpuUse> {
        let machine = machine_busy()? - self.machine;
        // A process that started since counts whole.
        let ours: u64 = ours_cpu()
            .into_iter()
            .map(|(pid, ticks)| ticks.saturating_sub(self.ours.get(&pid).copied().unwrap_or(0)))
            .sum();
        Ok(CpuUse {
            ours: ours as f64 / clock_ticks(),
            machine: machine as f64 / clock_ticks(),
        })
    }
}

/// Busy ticks of all CPUs: user, nice, system, irq, softirq, steal (guest is in user).
fn machine_busy() -> Result<u64> {
    let stat = fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let line = stat.lines().next().context("empty /proc/stat")?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().context("parsing /proc/stat"))
        .collect::<Result<_>>()?;
    let [user, nice, system, _idle, _iowait, irq, softirq, steal, ..] = ticks[..] else {
        bail!("short cpu line in /proc/stat: {line}");
    };
    Ok(user + nice + system + irq + softirq + steal)
}

/// `PF_KTHREAD` in the flags of `/proc/PID/stat`.
const PF_KTHREAD: u64 = 0x0020_0000;

/// CPU ticks of the benchmark's processes and of kernel threads, by pid.
fn ours_cpu() -> HashMap<u32, u64> {
    let me = std::process::id();
    let ours = our_namespaces();
    let mut cpu = HashMap::new();
    let Ok(entries) = fs::read_dir("/proc") else {
        return cpu;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // Fields after the command name (which may hold spaces) start with state (3).
        let Some(rest) = stat.rfind(") ").map(|i| &stat[i + 2..]) else {
            continue;
        };
        let fields: Vec<u64> = rest
            .split_whitespace()
            .skip(1)
            .map(|f| f.parse().unwrap_or(0))
            .collect();
        // Indices from field 4 on: flags is field 9, utime, stime, cutime, cstime 14-17.
        if fields.len() < 14 {
            continue;
        }
        let own = fields[10] + fields[11];
        let ticks = if pid == me {
            // The load generators xtask started and reaped are in its children's times.
            own + fields[12] + fields[13]
        } else if fields[5] & PF_KTHREAD != 0 {
            own
        } else {
            let netns = fs::read_link(format!("/proc/{pid}/ns/net")).ok();
            if !netns.is_some_and(|ns| ours.contains(&ns.to_string_lossy().into_owned())) {
                continue;
            }
            own
        };
        cpu.insert(pid, ticks);
    }
    cpu
}

/// The benchmark's namespaces as `/proc/PID/ns/net` names them (`net:[INODE]`): those
/// under /run/netns that the testbed named after this process.
fn our_namespaces() -> BTreeSet<String> {
    let prefix = format!("gb{}x", std::process::id());
    fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .filter_map(|e| e.metadata().ok())
        .map(|m| format!("net:[{}]", std::os::unix::fs::MetadataExt::ino(&m)))
        .collect()
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }) as f64
}

/// Reads `/proc/net/FILE` of `ns`.
fn net_file(ns: &Netns, file: &str) -> Result<String> {
    let path = format!("/proc/thread-self/net/{file}");
    ns.run(|| fs::read_to_string(&path))?
        .with_context(|| format!("reading {path} in {}", ns.name()))
}

/// UDP datagrams that reached a socket of `ns`: queued (`InDatagrams`) or dropped because
/// the socket's buffer was full (`RcvbufErrors`). Checksum errors are not counted.
pub fn udp_arrived(ns: &Netns) -> Result<u64> {
    let snmp = net_file(ns, "snmp")?;
    let mut lines = snmp.lines().filter(|line| line.starts_with("Udp:"));
    let (Some(names), Some(values)) = (lines.next(), lines.next()) else {
        bail!("no Udp lines in /proc/net/snmp");
    };
    let value = |name: &str| -> Result<u64> {
        let column = names
            .split_whitespace()
            .position(|n| n == name)
            .ok_or_else(|| anyhow!("no Udp {name} column"))?;
        values
            .split_whitespace()
            .nth(column)
            .ok_or_else(|| anyhow!("short Udp line"))?
            .parse()
            .with_context(|| format!("parsing Udp {name}"))
    };
    Ok(value("InDatagrams")? + value("RcvbufErrors")?)
}

/// Packets received plus packets sent by `ifname` in `ns`.
pub fn interface_packets(ns: &Netns, ifname: &str) -> Result<u64> {
    let dev = net_file(ns, "dev")?;
    let line = dev
        .lines()
        .find_map(|line| line.trim_start().strip_prefix(&format!("{ifname}:")))
        .with_context(|| format!("no {ifname} in /proc/net/dev"))?;
    // rx: bytes packets errs drop fifo frame compressed multicast; tx: bytes packets ...
    let fields: Vec<u64> = line
        .split_whitespace()
        .map(|v| v.parse().context("parsing /proc/net/dev"))
        .collect::<Result<_>>()?;
    Ok(fields[1] + fields[9])
}

/// Memory of a balancer's processes, in bytes.
pub struct Memory {
    /// Proportional set size summed over the processes: shared pages (nginx's master and
    /// workers) are counted once overall.
    pub pss: u64,
    /// Kernel memory of the BPF maps the processes hold (`memlock` in fdinfo), each map
    /// once.
    pub bpf_maps: u64,
}

pub fn memory(pids: &[i32]) -> Result<Memory> {
    let mut pss = 0;
    let mut bpf_maps = 0;
    let mut seen = BTreeSet::new();
    for pid in pids {
        let rollup = fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
            .with_context(|| format!("reading smaps_rollup of {pid}"))?;
        pss += rollup
            .lines()
            .find_map(|l| l.strip_prefix("Pss:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .context("no Pss in smaps_rollup")?
            * 1024;
        let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Ok(info) = fs::read_to_string(fd.path()) else {
                continue;
            };
            let field = |key: &str| {
                info.lines()
                    .find_map(|l| l.strip_prefix(key))
                    .and_then(|v| v.trim().parse::<u64>().ok())
            };
            if let (Some(id), Some(memlock)) = (field("map_id:"), field("memlock:"))
                && seen.insert(id)
            {
                bpf_maps += memlock;
            }
        }
    }
    Ok(Memory { pss, bpf_maps })
}

/// The 1, 5 and 15 minute load averages.
pub fn load_average() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// Median and range of repeated runs.
#[derive(Clone, Copy, Debug)]
pub struct Figure {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub runs: usize,
}

impl Figure {
    pub fn of(samples: &[f64]) -> Option<Figure> {
        let mut sorted: Vec<f64> = samples.iter().copied().filter(|v| v.is_finite()).collect();
        if sorted.is_empty() {
            return None;
        }
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        let median = if n % 2 == 1 {
            sorted[n / 2]
        } else {
            (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
        };
        Some(Figure {
            median,
            min: sorted[0],
            max: sorted[n - 1],
            runs: n,
        })
    }
}
