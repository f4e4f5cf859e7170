//! Network byte order as stored in the maps: an address or port is kept as the integer whose
//! in-memory bytes equal the bytes on the wire, so the XDP program compares and copies
//! header fields without swapping.

use core::net::Ipv4Addr;

/// An IPv4 address as stored in map keys and values.
pub const fn addr_to_wire(addr: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(addr.octets())
}

/// The inverse of [`addr_to_wire`].
pub const fn addr_from_wire(wire: u32) -> Ipv4Addr {
    let b = wire.to_ne_bytes();
    Ipv4Addr::new(b[0], b[1], b[2], b[3])
}

/// A TCP/UDP port as stored in map keys and values.
pub const fn port_to_wire(port: u16) -> u16 {
    port.to_be()
}

/// The inverse of [`port_to_wire`].
pub const fn port_from_wire(wire: u16) -> u16 {
    u16::from_be(wire)
}
