//! What happened to each packet, and the traffic counters per service and backend.

use crate::impl_pod;

/// What the XDP program returned for a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// `XDP_PASS` with the packet byte-identical to what arrived.
    PassUntouched,
    /// `XDP_PASS` after NAT: the kernel routes the rewritten packet.
    PassRewritten,
    /// `XDP_TX`: rewritten and sent back out of the interface it came in on.
    Tx,
    /// `XDP_REDIRECT`: rewritten and sent out of another interface.
    Redirect,
    /// `XDP_DROP`.
    Drop,
}

/// Every packet the XDP program sees increments exactly one event, so the events add up to
/// the packets seen. Index of the per-CPU `EVENTS` array.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// Frame shorter than an Ethernet header.
    PassShortFrame = 0,
    /// Not IPv4 (ARP, IPv6, VLAN-tagged, ...): passed untouched, documented.
    PassNotIpv4,
    /// IPv4 frame too short for the fixed IPv4 header.
    PassTruncatedIpv4,
    /// Destination is neither a VIP nor a SNAT address.
    PassNotLocal,
    /// To a VIP, but no service listens on that port and protocol (ICMP, say).
    PassNoService,
    /// To a SNAT address but no live flow: the host's own traffic.
    PassHostTraffic,
    /// A backend reply whose client flow is gone (evicted or expired); the kernel answers it.
    PassOrphanReply,
    /// Rewritten; the kernel has no neighbour entry for the next hop yet and routes it.
    PassNoNeighbour,
    /// Rewritten; IP forwarding is off so FIB lookups are refused, and the controller has
    /// not resolved a next hop for this backend yet.
    PassNoNextHop,
    /// Rewritten; the FIB says the kernel must handle it (local destination, needs
    /// fragmentation, tunnel encapsulation).
    PassKernelRoute,
    /// Rewritten; the egress interface is not in the redirect map (a tunnel device).
    PassNoRedirect,
    /// Sent back out of the ingress interface.
    Tx,
    /// Redirected to another interface.
    Redirect,
    /// A new TCP flow to a service with no backend available, answered with a RST.
    RstNoBackend,
    /// A packet of a flow whose backend failed, answered with a RST (the service cuts
    /// such flows so clients fail fast instead of hanging).
    RstBackendDown,
    /// A TCP segment that is not a SYN and belongs to no live flow (the flow expired or
    /// was evicted), answered with a RST so the client does not hang.
    RstNoFlow,
    /// To a VIP with a bad IPv4 header (version, IHL, lengths).
    DropMalformedIpv4,
    /// To a VIP with a truncated or bad TCP/UDP header.
    DropMalformedL4,
    /// IPv4 fragment to a VIP: ports are unknown, so it cannot be balanced.
    DropFragment,
    /// A UDP datagram for a service with no backend available (or a TCP segment with RST
    /// set, which is never answered with a RST).
    DropNoBackend,
    /// A UDP datagram of a flow whose backend failed (the service cuts such flows), or a
    /// TCP segment of it with RST set.
    DropBackendDown,
    /// A TCP RST belonging to no live flow: nothing to answer.
    DropStrayRst,
    /// Every SNAT port tried for this backend is in use by a live flow.
    DropSnatExhausted,
    /// The FIB says the destination is unreachable, blackholed or prohibited.
    DropUnroutable,
}

impl Event {
    pub const ALL: [Event; 24] = [
        Event::PassShortFrame,
        Event::PassNotIpv4,
        Event::PassTruncatedIpv4,
        Event::PassNotLocal,
        Event::PassNoService,
        Event::PassHostTraffic,
        Event::PassOrphanReply,
        Event::PassNoNeighbour,
        Event::PassNoNextHop,
        Event::PassKernelRoute,
        Event::PassNoRedirect,
        Event::Tx,
        Event::Redirect,
        Event::RstNoBackend,
        Event::RstBackendDown,
        Event::RstNoFlow,
        Event::DropMalformedIpv4,
        Event::DropMalformedL4,
        Event::DropFragment,
        Event::DropNoBackend,
        Event::DropBackendDown,
        Event::DropStrayRst,
        Event::DropSnatExhausted,
        Event::DropUnroutable,
    ];

    /// Stable snake_case name, used in metrics labels and logs.
    pub const fn name(self) -> &'static str {
        match self {
            Event::PassShortFrame => "pass_short_frame",
            Event::PassNotIpv4 => "pass_not_ipv4",
            Event::PassTruncatedIpv4 => "pass_truncated_ipv4",
            Event::PassNotLocal => "pass_not_local",
            Event::PassNoService => "pass_no_service",
            Event::PassHostTraffic => "pass_host_traffic",
            Event::PassOrphanReply => "pass_orphan_reply",
            Event::PassNoNeighbour => "pass_no_neighbour",
            Event::PassNoNextHop => "pass_no_next_hop",
            Event::PassKernelRoute => "pass_kernel_route",
            Event::PassNoRedirect => "pass_no_redirect",
            Event::Tx => "tx",
            Event::Redirect => "redirect",
            Event::RstNoBackend => "rst_no_backend",
            Event::RstBackendDown => "rst_backend_down",
            Event::RstNoFlow => "rst_no_flow",
            Event::DropMalformedIpv4 => "drop_malformed_ipv4",
            Event::DropMalformedL4 => "drop_malformed_l4",
            Event::DropFragment => "drop_fragment",
            Event::DropNoBackend => "drop_no_backend",
            Event::DropBackendDown => "drop_backend_down",
            Event::DropStrayRst => "drop_stray_rst",
            Event::DropSnatExhausted => "drop_snat_exhausted",
            Event::DropUnroutable => "drop_unroutable",
        }
    }

    /// The verdict that goes with this event.
    pub const fn verdict(self) -> Verdict {
        match self {
            Event::PassShortFrame
            | Event::PassNotIpv4
            | Event::PassTruncatedIpv4
            | Event::PassNotLocal
            | Event::PassNoService
            | Event::PassHostTraffic
            | Event::PassOrphanReply => Verdict::PassUntouched,
            Event::PassNoNeighbour
            | Event::PassNoNextHop
            | Event::PassKernelRoute
            | Event::PassNoRedirect => Verdict::PassRewritten,
            Event::Tx | Event::RstNoBackend | Event::RstBackendDown | Event::RstNoFlow => {
                Verdict::Tx
            }
            Event::Redirect => Verdict::Redirect,
            Event::DropMalformedIpv4
            | Event::DropMalformedL4
            | Event::DropFragment
            | Event::DropNoBackend
            | Event::DropBackendDown
            | Event::DropStrayRst
            | Event::DropSnatExhausted
            | Event::DropUnroutable => Verdict::Drop,
        }
    }
}

/// Number of [`Event`]s: the length of the `EVENTS` array.
pub const EVENT_COUNT: u32 = Event::ALL.len() as u32;

/// Per-CPU traffic counters of one service or one backend.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrafficCounters {
    /// Client -> backend packets forwarded.
    pub packets_to_backend: u64,
    /// Their bytes, Ethernet header included.
    pub bytes_to_backend: u64,
    /// Backend -> client packets forwarded.
    pub packets_to_client: u64,
    pub bytes_to_client: u64,
    /// Flows created.
    pub new_flows: u64,
    /// Packets of this service or backend that were dropped.
    pub drops: u64,
}

impl TrafficCounters {
    /// Adds another CPU's counters (the controller sums the per-CPU values).
    pub fn add(&mut self, other: &Self) {
        self.packets_to_backend += other.packets_to_backend;
        self.bytes_to_backend += other.bytes_to_backend;
        self.packets_to_client += other.packets_to_client;
        self.bytes_to_client += other.bytes_to_client;
        self.new_flows += other.new_flows;
        self.drops += other.drops;
    }
}

impl_pod!(TrafficCounters);
