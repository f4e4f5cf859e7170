//! Services, backends and the per-service backend rings the XDP program schedules from.

use crate::impl_pod;

/// Capacity of the service maps; service ids are `0..MAX_SERVICES`.
pub const MAX_SERVICES: u32 = 256;
/// Capacity of the backend map; backend ids are `0..MAX_BACKENDS`.
pub const MAX_BACKENDS: u32 = 4096;
/// Length of a backend ring. Weighted schedules are expanded into it, so it bounds the
/// resolution of weights; it is a power of two so an index can be masked for the verifier.
pub const RING_SLOTS: usize = 256;

/// `LOCAL_ADDRS` bit: the address is a service VIP; malformed packets to it are dropped.
pub const ADDR_VIP: u32 = 1 << 0;
/// `LOCAL_ADDRS` bit: the address is a SNAT source; only packets that match a live
/// `NAT_RETURN` entry are taken, everything else to it belongs to the host.
pub const ADDR_SNAT: u32 = 1 << 1;

/// Key of the `SERVICES` map: what a client connects to.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceKey {
    /// VIP, network order.
    pub addr: u32,
    /// Port, network order.
    pub port: u16,
    /// [`crate::PROTO_TCP`] or [`crate::PROTO_UDP`].
    pub proto: u8,
    pub _pad: u8,
}

impl ServiceKey {
    pub const fn new(addr: u32, port: u16, proto: u8) -> Self {
        Self {
            addr,
            port,
            proto,
            _pad: 0,
        }
    }
}

/// Value of the `SERVICES` map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Service {
    /// Index into `RING_SELECT`, `RINGS` (times two), `RR_CURSORS` and `SERVICE_STATS`.
    pub id: u32,
    /// Source address of packets sent to backends, network order.
    pub snat_addr: u32,
    /// SNAT source ports are taken from `snat_port_min..=snat_port_max` (host order).
    pub snat_port_min: u16,
    pub snat_port_max: u16,
}

/// `Backend::flags`: the backend failed its health checks and its service cuts
/// established flows: a client's next packet is answered with a TCP RST (UDP: dropped).
pub const BACKEND_CUT_FLOWS: u16 = 1 << 0;

/// Value of the `BACKENDS` map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backend {
    /// Network order.
    pub addr: u32,
    /// Network order.
    pub port: u16,
    /// `BACKEND_*` bits.
    pub flags: u16,
}

/// A service's schedule: new flows take `slots[cursor % len]`.
///
/// The controller fills all [`RING_SLOTS`] slots by repeating the schedule, so a slot read
/// at any index always names a backend of a complete set, never a stale or empty one.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackendRing {
    /// Number of slots in one round of the schedule; 0 means no backend is available.
    pub len: u32,
    /// Backend ids.
    pub slots: [u32; RING_SLOTS],
}

impl BackendRing {
    pub const EMPTY: Self = Self {
        len: 0,
        slots: [0; RING_SLOTS],
    };
}

/// An Ethernet next hop: where to send a frame without asking the kernel.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NextHop {
    /// Egress interface.
    pub ifindex: u32,
    /// Our MAC on that interface (the frame's source).
    pub src_mac: [u8; 6],
    /// The neighbour's MAC (the frame's destination).
    pub dst_mac: [u8; 6],
}

impl_pod!(ServiceKey, Service, Backend, BackendRing, NextHop);
