//! gerbang's XDP program. A packet's path through it:
//!
//! 1. [`packet`] parses Ethernet, IPv4 and TCP/UDP with bounds checks;
//! 2. `LOCAL_ADDRS` says whether the destination is ours at all (everything else passes
//!    byte-identical: SSH to the host keeps working);
//! 3. a packet to a service VIP goes through [`flow::to_backend`]: find or create its flow,
//!    full NAT towards the chosen backend;
//! 4. a packet to a SNAT address that matches a live flow goes through
//!    [`flow::to_client`]: translate the backend's reply back to VIP:port;
//! 5. [`forward`] picks the next hop (FIB lookup) and sends the frame out.
//!
//! Policy lives in the maps the controller writes; this program only follows it. Every packet
//! is counted under exactly one [`Event`], whose verdict is the program's return value.
#![cfg_attr(target_arch = "bpf", no_std, no_main)]
#![cfg_attr(
    target_arch = "bpf",
    feature(core_intrinsics),
    allow(internal_features)
)]

mod atomic;
mod counters;
mod csum;
mod debug_log;
mod flow;
mod forward;
mod maps;
mod nat;
mod packet;
mod reset;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use lb_common::{
    Event, ServiceKey, Verdict,
    service::{ADDR_SNAT, ADDR_VIP},
};

use crate::{
    maps::{LOCAL_ADDRS, NAT_RETURN, SERVICES},
    packet::ParseError,
};

#[xdp]
pub fn gerbang_xdp(ctx: XdpContext) -> u32 {
    let event = process(&ctx);
    counters::count_event(event);
    debug_log::log_event(&ctx, event);
    match event.verdict() {
        Verdict::PassUntouched | Verdict::PassRewritten => xdp_action::XDP_PASS,
        Verdict::Tx => xdp_action::XDP_TX,
        Verdict::Redirect => xdp_action::XDP_REDIRECT,
        Verdict::Drop => xdp_action::XDP_DROP,
    }
}

#[inline(always)]
fn process(ctx: &XdpContext) -> Event {
    let frame = match packet::ipv4_header(ctx) {
        Ok(frame) => frame,
        Err(event) => return event,
    };
    let daddr = packet::dst_addr(frame.ip);
    let kind = match unsafe { LOCAL_ADDRS.get(daddr) } {
        Some(kind) => *kind,
        None => return Event::PassNotLocal,
    };
    let is_vip = kind & ADDR_VIP != 0;

    // A bad packet to a VIP is ours to drop. A SNAT address may be the host's own address,
    // so anything to it that is not a well-formed reply of a live flow belongs to the host.
    let pkt = match packet::parse(ctx, &frame) {
        Ok(pkt) => pkt,
        Err(_) if !is_vip => return Event::PassHostTraffic,
        Err(ParseError::MalformedIpv4) => return Event::DropMalformedIpv4,
        Err(ParseError::Fragment) => return Event::DropFragment,
        Err(ParseError::MalformedL4) => return Event::DropMalformedL4,
        Err(ParseError::NotTcpOrUdp) => return Event::PassNoService,
    };

    if is_vip {
        let key = ServiceKey::new(daddr, pkt.dst_port, pkt.proto);
        if let Some(service) = unsafe { SERVICES.get(key) } {
            return flow::to_backend(ctx, &pkt, service);
        }
    }
    if kind & ADDR_SNAT != 0 {
        if let Some(client) = unsafe { NAT_RETURN.get(pkt.key()) } {
            return flow::to_client(ctx, &pkt, *client);
        }
        return Event::PassHostTraffic;
    }
    Event::PassNoService
}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    // The verifier rejects any path that could reach here; nothing to do at run time.
    loop {}
}

/// GPL-compatible, as the FIB lookup helper requires.
#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

/// The program only exists for the BPF target; this lets host-side `cargo clippy` build it.
#[cfg(not(target_arch = "bpf"))]
fn main() {}
