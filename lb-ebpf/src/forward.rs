//! Sending a rewritten frame on: ask the kernel's FIB for the next hop, then transmit on
//! the same interface, redirect to another, or hand the frame to the kernel to route.

use aya_ebpf::{
    EbpfContext as _,
    bindings::{
        BPF_FIB_LKUP_RET_BLACKHOLE, BPF_FIB_LKUP_RET_FWD_DISABLED, BPF_FIB_LKUP_RET_NO_NEIGH,
        BPF_FIB_LKUP_RET_PROHIBIT, BPF_FIB_LKUP_RET_SUCCESS, BPF_FIB_LKUP_RET_UNREACHABLE,
        bpf_fib_lookup as FibParams, xdp_action,
    },
    helpers::generated::bpf_fib_lookup,
    programs::XdpContext,
};
use lb_common::{Event, NextHop};

use crate::{maps::DEVICES, nat::Rewrite, packet::Parsed};

const AF_INET: u8 = 2;

/// Where the frame goes once rewritten to `to`. `fallback` is the hop to use when the
/// kernel refuses FIB lookups because IP forwarding is disabled on the ingress interface
/// (a full-NAT balancer does not need the host to be a router); ifindex 0 means none.
/// (Not an `Option`: LLVM spills the undefined payload of `None`, which the verifier rejects.)
#[inline(always)]
pub fn forward(ctx: &XdpContext, pkt: &Parsed, to: &Rewrite, fallback: NextHop) -> Event {
    let ingress = unsafe { (*ctx.ctx).ingress_ifindex };
    let mut params: FibParams = unsafe { core::mem::zeroed() };
    params.family = AF_INET;
    params.l4_protocol = pkt.proto;
    params.sport = to.src_port;
    params.dport = to.dst_port;
    params.__bindgen_anon_1.tot_len = pkt.ip_len;
    params.ifindex = ingress;
    params.__bindgen_anon_3.ipv4_src = to.src_addr;
    params.__bindgen_anon_4.ipv4_dst = to.dst_addr;

    let rc = unsafe {
        bpf_fib_lookup(
            ctx.as_ptr(),
            &mut params,
            core::mem::size_of::<FibParams>() as i32,
            0,
        )
    };
    let hop = match rc as u32 {
        BPF_FIB_LKUP_RET_SUCCESS => NextHop {
            ifindex: params.ifindex,
            src_mac: params.smac,
            dst_mac: params.dmac,
        },
        BPF_FIB_LKUP_RET_FWD_DISABLED if fallback.ifindex != 0 => fallback,
        BPF_FIB_LKUP_RET_FWD_DISABLED => return Event::PassNoNextHop,
        BPF_FIB_LKUP_RET_NO_NEIGH => return Event::PassNoNeighbour,
        BPF_FIB_LKUP_RET_BLACKHOLE | BPF_FIB_LKUP_RET_UNREACHABLE | BPF_FIB_LKUP_RET_PROHIBIT => {
            return Event::DropUnroutable;
        }
        // Local destination, fragmentation needed, tunnel encapsulation, errors.
        _ => return Event::PassKernelRoute,
    };

    let same_interface = hop.ifindex == ingress;
    // Decide before touching the MACs: the kernel drops a passed frame that is not
    // addressed to this host.
    if !same_interface && DEVICES.get_ifindex(hop.ifindex).is_none() {
        return Event::PassNoRedirect;
    }

    let eth = unsafe { &mut *pkt.eth };
    eth.dst_addr = hop.dst_mac;
    eth.src_addr = hop.src_mac;

    if same_interface {
        return Event::Tx;
    }
    match DEVICES.redirect(hop.ifindex, u64::from(xdp_action::XDP_PASS)) {
        Ok(action) if action == xdp_action::XDP_REDIRECT => Event::Redirect,
        _ => Event::PassNoRedirect,
    }
}
