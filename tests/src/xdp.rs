//! A do-nothing XDP program for the far end of the load balancer's veth pairs.
//!
//! Measured on kernel 6.18 with native XDP on one end of a veth pair:
//! - `XDP_REDIRECT` (including through a DEVMAP) is delivered to the peer if the peer has
//!   GRO on or an XDP program of its own;
//! - `XDP_TX` is delivered only if the peer has an XDP program: with GRO alone the sender
//!   counts the frames as transmitted (`rx_queue_0_xdp_tx` in `ethtool -S`) and the peer
//!   never receives them.
//!
//! So the topologies attach [`XdpPass`] (`r0 = XDP_PASS; exit`) to the peer of every
//! interface gerbang attaches to, and turn GRO on as well. The program is loaded with the
//! raw `bpf(2)` syscall, so no eBPF toolchain is needed, and attached in native mode
//! through a BPF link that is closed, detaching it, when the guard drops.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use anyhow::{Context, Result, bail};

use crate::Netns;

/// `BPF_PROG_LOAD` command of `bpf(2)`.
const BPF_PROG_LOAD: libc::c_long = 5;
/// `BPF_LINK_CREATE` command of `bpf(2)`.
const BPF_LINK_CREATE: libc::c_long = 28;
/// `BPF_PROG_TYPE_XDP`.
const BPF_PROG_TYPE_XDP: u32 = 6;
/// `BPF_XDP` attach type.
const BPF_XDP: u32 = 37;
/// `XDP_FLAGS_DRV_MODE`: native mode, as gerbang uses on veth.
const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;
/// The `XDP_PASS` verdict.
const XDP_PASS: i32 = 2;

/// The prefix of `union bpf_attr` that `BPF_PROG_LOAD` reads (the rest stays zero).
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
}

/// The prefix of `union bpf_attr` that `BPF_LINK_CREATE` reads.
#[repr(C)]
#[derive(Default)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_ifindex: u32,
    attach_type: u32,
    flags: u32,
}

/// An `XDP_PASS` program attached to an interface; detached on drop.
#[derive(Debug)]
pub struct XdpPass {
    /// Closing the link detaches the program (or the interface's deletion already did).
    _link: OwnedFd,
    ifname: String,
}

impl XdpPass {
    /// Attaches `XDP_PASS` in native mode to `ifname` inside `ns`.
    pub fn attach(ns: &Netns, ifname: &str) -> Result<XdpPass> {
        let link = attach_program(ns, ifname, &[mov64_imm(0, XDP_PASS), exit()])?;
        Ok(XdpPass {
            _link: link,
            ifname: ifname.to_owned(),
        })
    }

    /// The interface it is attached to.
    pub fn ifname(&self) -> &str {
        &self.ifname
    }
}

/// Loads `insns` as an XDP program and attaches it natively to `ifname` in `ns`; returns
/// the BPF link.
fn attach_program(ns: &Netns, ifname: &str, insns: &[u64]) -> Result<OwnedFd> {
    let ifindex = crate::link::ifindex(ns, ifname)?;
    let prog = load(insns, "gerbang_tb")?;
    let attr = LinkCreateAttr {
        prog_fd: prog.as_raw_fd() as u32,
        target_ifindex: ifindex,
        attach_type: BPF_XDP,
        flags: XDP_FLAGS_DRV_MODE,
    };
    // The kernel resolves the ifindex in the calling thread's namespace.
    let link = ns
        .run(|| bpf(BPF_LINK_CREATE, &attr))?
        .with_context(|| format!("attaching XDP to {}:{ifname}", ns.name()))?;
    Ok(link)
}

fn load(insns: &[u64], name: &str) -> Result<OwnedFd> {
    let license = c"GPL";
    let mut attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_XDP,
        insn_cnt: u32::try_from(insns.len())?,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        ..ProgLoadAttr::default()
    };
    let len = name.len().min(attr.prog_name.len() - 1);
    attr.prog_name[..len].copy_from_slice(&name.as_bytes()[..len]);
    bpf(BPF_PROG_LOAD, &attr).context("loading an XDP program (needs root or CAP_BPF)")
}

/// `bpf(cmd, attr, sizeof attr)`, returning the new file descriptor.
fn bpf<T>(cmd: libc::c_long, attr: &T) -> Result<OwnedFd> {
    // SAFETY: `attr` is a live, properly laid out prefix of `union bpf_attr` for `cmd`
    // (the kernel zero-extends shorter attributes); pointers inside it outlive the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *const T,
            std::mem::size_of::<T>() as libc::c_uint,
        )
    };
    if ret < 0 {
        bail!("bpf(): {}", std::io::Error::last_os_error());
    }
    let fd = libc::c_int::try_from(ret)?;
    // SAFETY: on success these commands return a new file descriptor that we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `dst = imm` (BPF_ALU64 | BPF_MOV | BPF_K).
fn mov64_imm(dst: u8, imm: i32) -> u64 {
    insn(0xb7, dst, imm)
}

/// `exit` (BPF_JMP | BPF_EXIT).
fn exit() -> u64 {
    insn(0x95, 0, 0)
}

/// One `struct bpf_insn` (code, dst/src registers, 16-bit offset, 32-bit immediate).
fn insn(code: u8, dst: u8, imm: i32) -> u64 {
    let imm = imm.to_le_bytes();
    u64::from_le_bytes([code, dst & 0x0f, 0, 0, imm[0], imm[1], imm[2], imm[3]])
}

#[cfg(test)]
mod tests {
    //! Checks the claim the topologies rely on: with the defaults, native `XDP_TX` and
    //! `XDP_REDIRECT` from the load balancer's interface reach the peer.

    use std::net::{SocketAddrV4, UdpSocket};

    use super::*;
    use crate::TwoArm;
    use crate::link::{format_mac, mac};

    /// `XDP_TX`.
    const XDP_TX: i32 = 3;
    /// `bpf_redirect` helper id.
    const BPF_FUNC_REDIRECT: i32 = 23;

    fn rx_packets(ns: &Netns, ifname: &str) -> u64 {
        let out = ns.ip(["-s", "-o", "link", "show", "dev", ifname]).unwrap();
        // "... RX:  bytes packets errors ... \    BYTES PACKETS ..."
        let rx = out.split("RX:").nth(1).unwrap();
        let numbers: Vec<u64> = rx
            .split_whitespace()
            .filter_map(|w| w.parse().ok())
            .collect();
        numbers[1]
    }

    /// Sends `n` UDP datagrams from the client to the lb's client-side address and returns
    /// how many frames the client's interface received meanwhile.
    fn bounced(topo: &TwoArm, n: u64) -> u64 {
        let before = rx_packets(&topo.client, &topo.client_if);
        let to = SocketAddrV4::new(topo.lb_client_addr, 9);
        topo.client
            .run(|| {
                let socket = UdpSocket::bind("0.0.0.0:0").unwrap();
                for _ in 0..n {
                    socket.send_to(b"bounce", to).unwrap();
                }
            })
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
        loop {
            let got = rx_packets(&topo.client, &topo.client_if) - before;
            if got >= n || std::time::Instant::now() > deadline {
                return got;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    #[test]
    fn xdp_tx_and_redirect_reach_the_peer() {
        let topo = TwoArm::new(0).unwrap();
        // The bouncing program would bounce ARP too: resolve the lb statically.
        let lb_mac = format_mac(mac(&topo.lb, &topo.lb_client_if).unwrap());
        let gateway = topo.lb_client_addr.to_string();
        let client_if = topo.client_if.as_str();
        topo.client
            .ip([
                "neigh",
                "replace",
                &gateway,
                "lladdr",
                &lb_mac,
                "dev",
                client_if,
                "nud",
                "permanent",
            ])
            .unwrap();

        let tx = attach_program(&topo.lb, "lbc", &[mov64_imm(0, XDP_TX), exit()]).unwrap();
        assert_eq!(bounced(&topo, 5), 5, "XDP_TX frames lost");
        drop(tx);

        let ifindex = crate::link::ifindex(&topo.lb, "lbc").unwrap();
        let redirect = [
            mov64_imm(1, ifindex as i32),
            mov64_imm(2, 0),
            insn(0x85, 0, BPF_FUNC_REDIRECT),
            exit(),
        ];
        let _redirect = attach_program(&topo.lb, "lbc", &redirect).unwrap();
        assert_eq!(bounced(&topo, 5), 5, "XDP_REDIRECT frames lost");
    }
}
