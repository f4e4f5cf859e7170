//! Full NAT: rewrite both addresses and both ports, patching the IPv4 and TCP/UDP
//! checksums incrementally.

use lb_common::PROTO_UDP;

use crate::{csum, packet::Parsed};

/// New source and destination of a packet, network order.
pub struct Rewrite {
    pub src_addr: u32,
    pub src_port: u16,
    pub dst_addr: u32,
    pub dst_port: u16,
}

#[inline(always)]
pub fn apply(pkt: &Parsed, to: &Rewrite) {
    let ip = unsafe { &mut *pkt.ip };

    // The IPv4 header checksum covers the addresses.
    let mut ip_check = u16::from_ne_bytes(ip.check);
    ip_check = csum::replace32(ip_check, pkt.src_addr, to.src_addr);
    ip_check = csum::replace32(ip_check, pkt.dst_addr, to.dst_addr);
    ip.check = ip_check.to_ne_bytes();
    ip.src_addr = to.src_addr.to_ne_bytes();
    ip.dst_addr = to.dst_addr.to_ne_bytes();

    // The TCP/UDP checksum covers the addresses (pseudo-header) and the ports.
    let check_field = pkt.l4_check();
    let old_check = u16::from_ne_bytes(unsafe { *check_field });
    // A zero UDP checksum means "none"; it stays none.
    if !(pkt.proto == PROTO_UDP && old_check == 0) {
        let mut check = csum::replace32(old_check, pkt.src_addr, to.src_addr);
        check = csum::replace32(check, pkt.dst_addr, to.dst_addr);
        check = csum::replace16(check, pkt.src_port, to.src_port);
        check = csum::replace16(check, pkt.dst_port, to.dst_port);
        // In UDP a computed zero is sent as all ones (RFC 768).
        if pkt.proto == PROTO_UDP && check == 0 {
            check = 0xffff;
        }
        unsafe { *check_field = check.to_ne_bytes() };
    }

    let ports = pkt.l4 as *mut [u8; 4];
    let src = to.src_port.to_ne_bytes();
    let dst = to.dst_port.to_ne_bytes();
    unsafe { *ports = [src[0], src[1], dst[0], dst[1]] };
}
