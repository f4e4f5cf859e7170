//! Links, addresses, routes and offloads inside namespaces.
//!
//! Everything runs as `ip -n NS ...` (or `ethtool` under `ip netns exec`), so the root
//! namespace's interfaces and routes are never involved: even a veth pair is created
//! directly inside its two namespaces.
//!
//! iproute2 6.1 parses a bare interface name that looks like a keyword (`a`, `up`, ...) as
//! the keyword, so every command here spells `dev IFNAME`.

use std::path::Path;

use anyhow::{Context, Result, bail, ensure};

use crate::Netns;

/// Where `ethtool` may live; `ip netns exec` searches `PATH`, but we want a clear error.
const ETHTOOL_PATHS: [&str; 4] = [
    "/usr/sbin/ethtool",
    "/sbin/ethtool",
    "/usr/bin/ethtool",
    "/bin/ethtool",
];

/// Creates a veth pair: `a_if` inside `a`, `b_if` inside `b` (both still down).
pub fn veth_pair(a: &Netns, a_if: &str, b: &Netns, b_if: &str) -> Result<()> {
    check_ifname(a_if)?;
    check_ifname(b_if)?;
    a.ip([
        "link",
        "add",
        "name",
        a_if,
        "type",
        "veth",
        "peer",
        "name",
        b_if,
        "netns",
        b.name(),
    ])
    .with_context(|| format!("creating veth {}:{a_if} <-> {}:{b_if}", a.name(), b.name()))?;
    Ok(())
}

/// Adds an address in CIDR notation (`"10.200.1.1/24"`) to `ifname`.
pub fn add_addr(ns: &Netns, ifname: &str, cidr: &str) -> Result<()> {
    ns.ip(["addr", "add", cidr, "dev", ifname])?;
    Ok(())
}

/// Brings `ifname` up.
pub fn set_up(ns: &Netns, ifname: &str) -> Result<()> {
    ns.ip(["link", "set", "dev", ifname, "up"])?;
    Ok(())
}

/// Adds a route: `dest` is `"default"` or a prefix such as `"10.200.2.0/24"`.
pub fn add_route(ns: &Netns, dest: &str, via: &str) -> Result<()> {
    ns.ip(["route", "add", dest, "via", via])?;
    Ok(())
}

/// Creates a bridge (STP off, so ports forward at once) and brings it up.
pub fn bridge(ns: &Netns, name: &str) -> Result<()> {
    check_ifname(name)?;
    ns.ip([
        "link",
        "add",
        "name",
        name,
        "type",
        "bridge",
        "stp_state",
        "0",
    ])?;
    set_up(ns, name)
}

/// Makes `ifname` a port of `bridge`.
pub fn enslave(ns: &Netns, ifname: &str, bridge: &str) -> Result<()> {
    ns.ip(["link", "set", "dev", ifname, "master", bridge])?;
    Ok(())
}

/// Turns an offload feature on or off with `ethtool -K IFNAME FEATURE on|off`.
///
/// Features the testbed uses: `tx` (checksum offload; off on senders, because a local
/// sender on veth otherwise leaves TCP/UDP checksums partial for XDP to see) and `gro`
/// (on, on the peer of an XDP-attached veth, so native `XDP_TX`/redirect frames are
/// delivered).
pub fn set_offload(ns: &Netns, ifname: &str, feature: &str, on: bool) -> Result<()> {
    ensure_ethtool()?;
    ns.exec(
        "ethtool",
        ["-K", ifname, feature, if on { "on" } else { "off" }],
    )
    .with_context(|| format!("setting offload {feature} on {}:{ifname}", ns.name()))?;
    Ok(())
}

/// The interface's MAC address.
pub fn mac(ns: &Netns, ifname: &str) -> Result<[u8; 6]> {
    let line = link_line(ns, ifname)?;
    let text = line
        .split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .with_context(|| format!("no link/ether address for {ifname}: {line}"))?;
    parse_mac(text)
}

/// The interface's index inside its namespace.
pub fn ifindex(ns: &Netns, ifname: &str) -> Result<u32> {
    let line = link_line(ns, ifname)?;
    line.split(':')
        .next()
        .and_then(|idx| idx.trim().parse().ok())
        .with_context(|| format!("no ifindex in `ip link` output: {line}"))
}

/// Formats a MAC address as `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn link_line(ns: &Netns, ifname: &str) -> Result<String> {
    let out = ns.ip(["-o", "link", "show", "dev", ifname])?;
    match out.lines().next() {
        Some(line) => Ok(line.to_owned()),
        None => bail!(
            "`ip link show dev {ifname}` printed nothing in {}",
            ns.name()
        ),
    }
}

fn parse_mac(text: &str) -> Result<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        let part = parts.next().with_context(|| format!("short MAC {text}"))?;
        *byte = u8::from_str_radix(part, 16).with_context(|| format!("bad MAC {text}"))?;
    }
    ensure!(parts.next().is_none(), "long MAC {text}");
    Ok(mac)
}

fn check_ifname(name: &str) -> Result<()> {
    ensure!(
        !name.is_empty() && name.len() <= 15 && !name.contains(['/', ' ', ':']),
        "invalid interface name {name:?} (1-15 characters, no '/', ':' or spaces)"
    );
    Ok(())
}

fn ensure_ethtool() -> Result<()> {
    if ETHTOOL_PATHS.iter().any(|p| Path::new(p).exists()) {
        return Ok(());
    }
    bail!("ethtool not found: install ethtool (apt-get install ethtool) or run cargo xtask setup")
}
