//! Checking, before anything else, that gerbang may do what it needs to.

use anyhow::{Result, bail};

/// Capability numbers from linux/capability.h.
const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_BPF: u32 = 39;

/// Fails with one paragraph saying what to do when gerbang cannot load and attach XDP.
pub fn check() -> Result<()> {
    let effective = effective_capabilities().unwrap_or(0);
    let has = |cap: u32| effective & (1u64 << cap) != 0;
    if has(CAP_NET_ADMIN) && (has(CAP_BPF) || has(CAP_SYS_ADMIN)) {
        return Ok(());
    }
    bail!(
        "gerbang needs root to load its XDP program and attach it to network interfaces \
         (precisely: CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON). Run it as root, for example \
         `sudo gerbang run --config /etc/gerbang/gerbang.toml`; `gerbang check-config FILE` \
         works without privileges"
    )
}

/// The effective capability set of this process, from /proc/self/status.
fn effective_capabilities() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let hex = status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}
