//! The one place where the BPF map ABI between gerbang's XDP program (`lb-ebpf`) and its
//! controller (`lb-userspace`) is defined: map names, keys, values, counters and the
//! helpers both sides need to agree on (byte order, flow ageing).
//!
//! Every type is `#[repr(C)]` with explicit padding fields, so no uninitialised byte ever
//! reaches a hash-map key. Addresses and ports are stored in network byte order exactly as
//! they appear on the wire (see [`wire`]), so the XDP program never swaps bytes.
#![no_std]

pub mod event;
pub mod flow;
pub mod service;
pub mod wire;

pub use event::{EVENT_COUNT, Event, TrafficCounters, Verdict};
pub use flow::{Flow, FlowKey, Timeouts};
pub use service::{Backend, BackendRing, NextHop, Service, ServiceKey};

/// Version of the map layout. Maps are pinned under a directory named after it, so a
/// controller only ever adopts maps whose layout it knows; bump it with any change to a map
/// type, size or meaning.
pub const ABI_VERSION: u32 = 1;

/// IP protocol numbers the data path balances.
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

/// Names of the maps in the XDP object. The eBPF side spells them as literals in its
/// `#[map(name = ...)]` attributes; the controller opens them through these constants
/// (`RR_CURSORS` and `SNAT_CURSOR` are the program's own and never opened).
pub mod map_names {
    /// (VIP, port, protocol) -> [`crate::Service`].
    pub const SERVICES: &str = "SERVICES";
    /// Every VIP and SNAT address -> `ADDR_*` bits: the fast "is this packet ours" test.
    pub const LOCAL_ADDRS: &str = "LOCAL_ADDRS";
    /// Service id -> which of its two rings (0 or 1) is live.
    pub const RING_SELECT: &str = "RING_SELECT";
    /// Service id * 2 + slot -> [`crate::BackendRing`].
    pub const RINGS: &str = "RINGS";
    /// Service id -> round-robin cursor (u64: BPF atomics are 64-bit), advanced by every
    /// new flow.
    pub const RR_CURSORS: &str = "RR_CURSORS";
    /// Backend id -> [`crate::Backend`].
    pub const BACKENDS: &str = "BACKENDS";
    /// Client-side 5-tuple -> [`crate::Flow`].
    pub const FLOWS: &str = "FLOWS";
    /// Backend-side 5-tuple (backend -> SNAT address) -> client-side 5-tuple.
    pub const NAT_RETURN: &str = "NAT_RETURN";
    /// Backend address -> [`crate::NextHop`], used when the kernel refuses FIB lookups.
    pub const NEXT_HOPS: &str = "NEXT_HOPS";
    /// Interfaces a packet may be redirected to (DEVMAP_HASH keyed by ifindex).
    pub const DEVICES: &str = "DEVICES";
    /// Single entry: [`crate::Timeouts`].
    pub const TIMEOUTS: &str = "TIMEOUTS";
    /// Single entry (u64): the SNAT port cursor shared by all services.
    pub const SNAT_CURSOR: &str = "SNAT_CURSOR";
    /// Per-CPU [`crate::TrafficCounters`] per service id.
    pub const SERVICE_STATS: &str = "SERVICE_STATS";
    /// Per-CPU [`crate::TrafficCounters`] per backend id.
    pub const BACKEND_STATS: &str = "BACKEND_STATS";
    /// Per-CPU packet count per [`crate::Event`].
    pub const EVENTS: &str = "EVENTS";
}

/// The XDP program's name in the object.
pub const XDP_PROGRAM: &str = "gerbang_xdp";

/// Implements `aya::Pod` for map types when the controller builds this crate.
macro_rules! impl_pod {
    ($($t:ty),* $(,)?) => {
        $(
            // SAFETY: #[repr(C)], only integer fields and explicit padding, valid for any bytes.
            #[cfg(feature = "user")]
            unsafe impl aya::Pod for $t {}
        )*
    };
}
pub(crate) use impl_pod;
