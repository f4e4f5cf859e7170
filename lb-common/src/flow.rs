//! The connection table: one `FLOWS` entry per client flow and one `NAT_RETURN` entry per
//! backend-side tuple, plus the ageing rules both the XDP program and the controller's
//! sweeper apply.

use crate::{NextHop, PROTO_TCP, impl_pod};

/// A 5-tuple as it appears in a packet: source, destination, protocol. Network order.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub src_addr: u32,
    pub dst_addr: u32,
    pub src_port: u16,
    pub dst_port: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}

impl FlowKey {
    pub const fn new(
        src_addr: u32,
        src_port: u16,
        dst_addr: u32,
        dst_port: u16,
        proto: u8,
    ) -> Self {
        Self {
            src_addr,
            dst_addr,
            src_port,
            dst_port,
            proto,
            _pad: [0; 3],
        }
    }
}

/// `Flow::flags`: the backend has answered (a TCP SYN-ACK, or any UDP reply).
pub const FLOW_REPLY_SEEN: u64 = 1 << 0;
/// `Flow::flags`: the client sent a FIN.
pub const FLOW_FIN_FROM_CLIENT: u64 = 1 << 1;
/// `Flow::flags`: the backend sent a FIN.
pub const FLOW_FIN_FROM_BACKEND: u64 = 1 << 2;
/// `Flow::flags`: either side sent a RST.
pub const FLOW_RST: u64 = 1 << 3;
/// `Flow::flags`: the flow was opened by a TCP SYN, so it counts as established only once
/// the client has also sent [`FLOW_CLIENT_ACKED`]. Flows written by versions without these
/// two bits lack it, and keep the older rule (established once the backend answered).
pub const FLOW_HANDSHAKE_TRACKED: u64 = 1 << 4;
/// `Flow::flags`: the client sent a TCP segment without SYN (its handshake ACK, or
/// anything after). A spoofed SYN's source never does: its flow stays half-open and ages
/// out after `tcp_syn`, even once the backend has answered it.
pub const FLOW_CLIENT_ACKED: u64 = 1 << 5;

/// Value of the `FLOWS` map, keyed by the client-side [`FlowKey`] (client -> VIP).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Flow {
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) of the last packet in either direction,
    /// refreshed at most every [`LAST_SEEN_GRANULARITY_NS`].
    pub last_seen_ns: u64,
    /// `FLOW_*` bits. 64 bits wide because BPF has no 32-bit atomic OR.
    pub flags: u64,
    /// Backend the flow is pinned to, network order.
    pub backend_addr: u32,
    /// SNAT source address towards the backend, network order.
    pub snat_addr: u32,
    pub backend_port: u16,
    /// SNAT source port, network order; unique among live flows to this backend.
    pub snat_port: u16,
    /// For counters.
    pub backend_id: u32,
    pub service_id: u32,
    /// The hop the client's first packet came through: replies leave this way when the
    /// kernel will not do a FIB lookup for us (IP forwarding disabled).
    pub client_hop: NextHop,
    pub _pad: u32,
}

impl Flow {
    /// The `NAT_RETURN` key of this flow: the tuple of the backend's replies.
    pub const fn return_key(&self, proto: u8) -> FlowKey {
        FlowKey::new(
            self.backend_addr,
            self.backend_port,
            self.snat_addr,
            self.snat_port,
            proto,
        )
    }
}

const SECOND_NS: u64 = 1_000_000_000;

/// `last_seen_ns` is only rewritten when it is older than this, so a busy flow does not
/// write its table entry on every packet.
pub const LAST_SEEN_GRANULARITY_NS: u64 = SECOND_NS;

/// Entries of `FLOWS` (and of `NAT_RETURN`) unless the config says otherwise.
pub const DEFAULT_FLOW_TABLE_SIZE: u32 = 1 << 16;

/// Idle timeouts by flow state. Single entry of the `TIMEOUTS` map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP flow whose handshake has not completed: the backend has not answered yet, or
    /// the client has not acknowledged the answer.
    pub tcp_syn_ns: u64,
    /// TCP flow in data transfer (at most one side has sent a FIN).
    pub tcp_established_ns: u64,
    /// TCP flow after a RST or after FINs from both sides.
    pub tcp_closing_ns: u64,
    /// UDP flow.
    pub udp_ns: u64,
}

impl Timeouts {
    /// Defaults modelled on IPVS and Linux conntrack, shortened where a full proxy can be.
    pub const DEFAULT: Self = Self {
        tcp_syn_ns: 30 * SECOND_NS,
        tcp_established_ns: 900 * SECOND_NS,
        tcp_closing_ns: 10 * SECOND_NS,
        udp_ns: 60 * SECOND_NS,
    };

    /// How long a flow in this state may stay idle.
    pub const fn idle_limit(&self, proto: u8, flags: u64) -> u64 {
        if proto != PROTO_TCP {
            return self.udp_ns;
        }
        let both_fins = FLOW_FIN_FROM_CLIENT | FLOW_FIN_FROM_BACKEND;
        if flags & FLOW_RST != 0 || flags & both_fins == both_fins {
            self.tcp_closing_ns
        } else if flags & FLOW_REPLY_SEEN == 0
            || flags & (FLOW_HANDSHAKE_TRACKED | FLOW_CLIENT_ACKED) == FLOW_HANDSHAKE_TRACKED
        {
            self.tcp_syn_ns
        } else {
            self.tcp_established_ns
        }
    }

    /// Whether a flow last seen at `last_seen_ns` has expired at `now_ns`. A timestamp from
    /// another CPU may be slightly ahead of `now_ns`; that counts as fresh.
    pub const fn expired(&self, proto: u8, flags: u64, last_seen_ns: u64, now_ns: u64) -> bool {
        now_ns.saturating_sub(last_seen_ns) > self.idle_limit(proto, flags)
    }
}

impl_pod!(FlowKey, Flow, Timeouts);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PROTO_UDP;

    #[test]
    fn a_tcp_flow_is_established_once_both_sides_completed_the_handshake() {
        let t = Timeouts::DEFAULT;
        let limit = |flags| t.idle_limit(PROTO_TCP, flags);
        let opened = FLOW_HANDSHAKE_TRACKED;
        assert_eq!(limit(opened), t.tcp_syn_ns, "SYN sent");
        assert_eq!(
            limit(opened | FLOW_REPLY_SEEN),
            t.tcp_syn_ns,
            "answered, never acknowledged: a spoofed SYN"
        );
        assert_eq!(
            limit(opened | FLOW_REPLY_SEEN | FLOW_CLIENT_ACKED),
            t.tcp_established_ns
        );
        assert_eq!(
            limit(FLOW_REPLY_SEEN),
            t.tcp_established_ns,
            "a flow from a version without the handshake bits"
        );
        assert_eq!(
            limit(opened | FLOW_REPLY_SEEN | FLOW_CLIENT_ACKED | FLOW_RST),
            t.tcp_closing_ns
        );
        assert_eq!(t.idle_limit(PROTO_UDP, 0), t.udp_ns);
    }
}
