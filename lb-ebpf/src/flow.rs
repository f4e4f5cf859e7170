//! The connection table: find or create a client's flow, pin it to a backend and a SNAT
//! port, age it, and translate in both directions.

use aya_ebpf::{bindings::BPF_NOEXIST, helpers::bpf_ktime_get_ns, programs::XdpContext};
use lb_common::{
    Event, Flow, FlowKey, NextHop, PROTO_TCP, Service, Timeouts, Verdict,
    flow::{
        FLOW_CLIENT_ACKED, FLOW_FIN_FROM_BACKEND, FLOW_FIN_FROM_CLIENT, FLOW_HANDSHAKE_TRACKED,
        FLOW_REPLY_SEEN, FLOW_RST, LAST_SEEN_GRANULARITY_NS,
    },
    service::{BACKEND_CUT_FLOWS, RING_SLOTS},
};

use crate::{
    atomic, counters,
    forward::forward,
    maps::{
        BACKENDS, FLOWS, NAT_RETURN, NEXT_HOPS, RING_SELECT, RINGS, RR_CURSORS, SNAT_CURSOR,
        TIMEOUTS,
    },
    nat::{self, Rewrite},
    packet::{Parsed, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
    reset,
};

/// SNAT ports tried for a new flow before giving up on it.
const SNAT_PORT_ATTEMPTS: u64 = 8;

/// Client -> VIP: DNAT to the flow's backend, SNAT to the service's address.
#[inline(always)]
pub fn to_backend(ctx: &XdpContext, pkt: &Parsed, service: &Service) -> Event {
    let key = pkt.key();
    let now = unsafe { bpf_ktime_get_ns() };
    let timeouts = timeouts();

    let found = FLOWS.get_ptr_mut(key);
    let continued = match found {
        Some(existing) if is_live(unsafe { &*existing }, pkt, &timeouts, now) => {
            let existing = unsafe { &mut *existing };
            if !backend_cut(existing.backend_id) {
                refresh(existing, now, client_flags(pkt));
                Some(*existing)
            } else if opens_a_flow(pkt) {
                // Its backend was cut: a SYN or a datagram starts a new flow below.
                None
            } else {
                let flow = *existing;
                retire(&key, &flow);
                counters::count_drop(flow.service_id, Some(flow.backend_id));
                return cut(ctx, pkt, Event::RstBackendDown, Event::DropBackendDown);
            }
        }
        _ => None,
    };
    let flow = match continued {
        Some(flow) => flow,
        None => {
            if let Some(old) = found {
                retire(&key, unsafe { &*old });
            }
            if pkt.proto == PROTO_TCP && !is_new_syn(pkt) {
                // Mid-connection with no flow: the backend would not know it either.
                counters::count_drop(service.id, None);
                if pkt.has_tcp_flag(TCP_RST) {
                    return Event::DropStrayRst;
                }
                return reset::reset_client(ctx, pkt, Event::RstNoFlow);
            }
            match new_flow(ctx, pkt, &key, service, now) {
                Ok(flow) => flow,
                Err(Event::DropNoBackend) => {
                    counters::count_drop(service.id, None);
                    return cut(ctx, pkt, Event::RstNoBackend, Event::DropNoBackend);
                }
                Err(event) => {
                    counters::count_drop(service.id, None);
                    return event;
                }
            }
        }
    };

    let to = Rewrite {
        src_addr: flow.snat_addr,
        src_port: flow.snat_port,
        dst_addr: flow.backend_addr,
        dst_port: flow.backend_port,
    };
    nat::apply(pkt, &to);
    let fallback = unsafe { NEXT_HOPS.get(flow.backend_addr) }
        .copied()
        .unwrap_or_default();
    let event = forward(ctx, pkt, &to, fallback);
    count(&flow, false, pkt.frame_len, event);
    event
}

/// Backend -> SNAT address: translate the reply back to VIP:port -> client.
#[inline(always)]
pub fn to_client(ctx: &XdpContext, pkt: &Parsed, client: FlowKey) -> Event {
    let now = unsafe { bpf_ktime_get_ns() };
    let timeouts = timeouts();
    let return_key = pkt.key();

    let flow = match FLOWS.get_ptr_mut(client) {
        Some(flow) if unsafe { (*flow).return_key(pkt.proto) } == return_key => flow,
        // The client flow was evicted or replaced: this return entry leads nowhere.
        _ => {
            let _ = NAT_RETURN.remove(return_key);
            return Event::PassOrphanReply;
        }
    };
    let flow = unsafe { &mut *flow };
    if timeouts.expired(pkt.proto, flow.flags, flow.last_seen_ns, now) {
        retire(&client, flow);
        return Event::PassOrphanReply;
    }
    if backend_cut(flow.backend_id) {
        // The client's next packet finds no flow and is answered with a RST.
        let flow = *flow;
        retire(&client, &flow);
        counters::count_drop(flow.service_id, Some(flow.backend_id));
        return Event::DropBackendDown;
    }
    refresh(flow, now, backend_flags(pkt));
    let flow = *flow;

    let to = Rewrite {
        src_addr: client.dst_addr,
        src_port: client.dst_port,
        dst_addr: client.src_addr,
        dst_port: client.src_port,
    };
    nat::apply(pkt, &to);
    let event = forward(ctx, pkt, &to, flow.client_hop);
    count(&flow, true, pkt.frame_len, event);
    event
}

/// Ends a client's packet that cannot go on: TCP gets a RST, anything else is dropped,
/// and so is a segment that carries a RST itself: a RST is never answered with one (RFC
/// 9293 §3.10.7.1), or two balancers could bounce them forever.
#[inline(always)]
fn cut(ctx: &XdpContext, pkt: &Parsed, tcp: Event, other: Event) -> Event {
    if pkt.proto == PROTO_TCP && !pkt.has_tcp_flag(TCP_RST) {
        reset::reset_client(ctx, pkt, tcp)
    } else {
        other
    }
}

/// Whether the backend failed and its service cuts its flows.
#[inline(always)]
fn backend_cut(backend_id: u32) -> bool {
    BACKENDS
        .get(backend_id)
        .is_some_and(|backend| backend.flags & BACKEND_CUT_FLOWS != 0)
}

#[inline(always)]
fn is_new_syn(pkt: &Parsed) -> bool {
    pkt.has_tcp_flag(TCP_SYN) && !pkt.has_tcp_flag(TCP_ACK)
}

/// Whether the packet could start a flow: a datagram, or a SYN. One that arrives on a flow
/// whose backend was cut starts a new flow on a live backend instead of being turned away:
/// a client retrying from the same port after an unanswered attempt, or a UDP client,
/// loses nothing it did not have to.
#[inline(always)]
fn opens_a_flow(pkt: &Parsed) -> bool {
    pkt.proto != PROTO_TCP || is_new_syn(pkt)
}

#[inline(always)]
fn timeouts() -> Timeouts {
    TIMEOUTS.get(0).copied().unwrap_or(Timeouts::DEFAULT)
}

/// Whether a client packet continues `flow`. A SYN after the flow closed starts a new
/// connection from a reused source port, which deserves a fresh backend.
#[inline(always)]
fn is_live(flow: &Flow, pkt: &Parsed, timeouts: &Timeouts, now: u64) -> bool {
    if timeouts.expired(pkt.proto, flow.flags, flow.last_seen_ns, now) {
        return false;
    }
    let new_syn = is_new_syn(pkt);
    let closed = flow.flags & (FLOW_RST | FLOW_FIN_FROM_CLIENT | FLOW_FIN_FROM_BACKEND) != 0;
    !(new_syn && closed)
}

/// Removes a flow and its return entry (if the return entry still points at this flow).
#[inline(always)]
fn retire(key: &FlowKey, flow: &Flow) {
    let return_key = flow.return_key(key.proto);
    if let Some(owner) = unsafe { NAT_RETURN.get(return_key) }
        && owner == key
    {
        let _ = NAT_RETURN.remove(return_key);
    }
    let _ = FLOWS.remove(key);
}

#[inline(always)]
fn client_flags(pkt: &Parsed) -> u64 {
    let mut flags = tcp_close_flags(pkt, FLOW_FIN_FROM_CLIENT);
    if pkt.proto == PROTO_TCP && !pkt.has_tcp_flag(TCP_SYN) {
        flags |= FLOW_CLIENT_ACKED;
    }
    flags
}

/// Flags of a flow the client's packet opens: a TCP flow only ever opens on a SYN, and
/// its handshake is followed from there.
#[inline(always)]
fn opening_flags(pkt: &Parsed) -> u64 {
    let mut flags = client_flags(pkt);
    if pkt.proto == PROTO_TCP {
        flags |= FLOW_HANDSHAKE_TRACKED;
    }
    flags
}

#[inline(always)]
fn backend_flags(pkt: &Parsed) -> u64 {
    FLOW_REPLY_SEEN | tcp_close_flags(pkt, FLOW_FIN_FROM_BACKEND)
}

#[inline(always)]
fn tcp_close_flags(pkt: &Parsed, fin_flag: u64) -> u64 {
    if pkt.proto != PROTO_TCP {
        return 0;
    }
    let mut flags = 0;
    if pkt.has_tcp_flag(TCP_FIN) {
        flags |= fin_flag;
    }
    if pkt.has_tcp_flag(TCP_RST) {
        flags |= FLOW_RST;
    }
    flags
}

/// Records activity on a flow. Writes only when something changed, so a busy flow does not
/// bounce its cache line between CPUs on every packet.
#[inline(always)]
fn refresh(flow: &mut Flow, now: u64, flags: u64) {
    if now > flow.last_seen_ns + LAST_SEEN_GRANULARITY_NS {
        flow.last_seen_ns = now;
    }
    if flags & !flow.flags != 0 {
        // Both directions update the flags, possibly on different CPUs.
        atomic::fetch_or(&mut flow.flags, flags);
    }
}

/// Schedules a new flow: next backend round-robin, a free SNAT port, a table entry.
#[inline(always)]
fn new_flow(
    ctx: &XdpContext,
    pkt: &Parsed,
    key: &FlowKey,
    service: &Service,
    now: u64,
) -> Result<Flow, Event> {
    let backend_id = next_backend(service.id).ok_or(Event::DropNoBackend)?;
    let backend = BACKENDS.get(backend_id).ok_or(Event::DropNoBackend)?;
    let snat_port = reserve_snat_port(service, backend.addr, backend.port, key)?;

    // The hop the client came through, for replies when FIB lookups are refused.
    let eth = unsafe { &*pkt.eth };
    let flow = Flow {
        last_seen_ns: now,
        backend_addr: backend.addr,
        snat_addr: service.snat_addr,
        backend_port: backend.port,
        snat_port,
        backend_id,
        service_id: service.id,
        flags: opening_flags(pkt),
        client_hop: NextHop {
            ifindex: unsafe { (*ctx.ctx).ingress_ifindex },
            src_mac: eth.dst_addr,
            dst_mac: eth.src_addr,
        },
        _pad: 0,
    };
    if FLOWS.insert(key, flow, u64::from(BPF_NOEXIST)).is_err() {
        // Another CPU created this flow since our lookup: follow it, release our port.
        let _ = NAT_RETURN.remove(flow.return_key(key.proto));
        return match FLOWS.get_ptr(key) {
            Some(theirs) => Ok(unsafe { *theirs }),
            None => Err(Event::DropNoBackend),
        };
    }
    counters::count_new_flow(service.id, backend_id);
    Ok(flow)
}

/// The next backend of the service's live ring, round-robin across all CPUs.
#[inline(always)]
fn next_backend(service_id: u32) -> Option<u32> {
    let slot = *RING_SELECT.get(service_id)? & 1;
    let ring = RINGS.get(service_id * 2 + slot)?;
    let len = ring.len;
    if len == 0 || len as usize > RING_SLOTS {
        return None;
    }
    let cursor = RR_CURSORS.get_ptr_mut(service_id)?;
    let turn = atomic::fetch_add(cursor, 1);
    // The verifier does not track bounds through `%`; the mask proves the index in range.
    // LLVM knows the mask is a no-op after `% len`, so it must not see through the value.
    let index = unsafe { core::ptr::read_volatile(&(turn % u64::from(len))) } as usize;
    Some(ring.slots[index & (RING_SLOTS - 1)])
}

/// Finds a SNAT port no live flow to this backend uses and claims it by inserting the
/// flow's return entry; the insert fails if the tuple exists, so two flows never share it.
#[inline(always)]
fn reserve_snat_port(
    service: &Service,
    backend_addr: u32,
    backend_port: u16,
    key: &FlowKey,
) -> Result<u16, Event> {
    let min = u32::from(service.snat_port_min);
    let max = u32::from(service.snat_port_max);
    if max < min {
        return Err(Event::DropSnatExhausted);
    }
    let span = max - min + 1;
    let cursor = SNAT_CURSOR.get_ptr_mut(0).ok_or(Event::DropSnatExhausted)?;
    // Ports are handed out in sequence, so a port is reused as late as possible (the
    // backend may still hold the previous connection in TIME_WAIT).
    let start = atomic::fetch_add(cursor, 1);
    for attempt in 0..SNAT_PORT_ATTEMPTS {
        let offset = (start.wrapping_add(attempt) % u64::from(span)) as u32;
        let port = ((min + offset) as u16).to_be();
        let return_key = FlowKey::new(
            backend_addr,
            backend_port,
            service.snat_addr,
            port,
            key.proto,
        );
        if NAT_RETURN
            .insert(return_key, key, u64::from(BPF_NOEXIST))
            .is_ok()
        {
            return Ok(port);
        }
    }
    Err(Event::DropSnatExhausted)
}

#[inline(always)]
fn count(flow: &Flow, to_client: bool, bytes: u64, event: Event) {
    if event.verdict() == Verdict::Drop {
        counters::count_drop(flow.service_id, Some(flow.backend_id));
    } else {
        counters::count_traffic(flow.service_id, flow.backend_id, to_client, bytes);
    }
}
