//! Answering a client's TCP segment with a RST from the VIP, so that a client whose flow
//! cannot continue fails at once instead of waiting for a timeout. The RST goes back out of
//! the interface the segment came in on, to the hop it came from (MAC addresses swapped).

use aya_ebpf::{helpers::bpf_xdp_adjust_tail, programs::XdpContext};
use lb_common::{Event, PROTO_TCP};

use crate::{
    csum,
    packet::{Parsed, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
};

const TCP_HLEN: usize = 20;

/// Turns the client's segment into the RST that answers it (RFC 9293 §3.10.7.1) and
/// returns `event`, whose verdict transmits it.
#[inline(always)]
pub fn reset_client(ctx: &XdpContext, pkt: &Parsed, event: Event) -> Event {
    let ip = unsafe { &mut *pkt.ip };
    // `parse` checked that a whole TCP header is in bounds.
    let tcp = unsafe { &mut *(pkt.l4 as *mut [u8; TCP_HLEN]) };

    let ip_hlen = u16::from(ip.vihl & 0x0f) * 4;
    let data_offset = u16::from(tcp[12] >> 4) * 4;
    let segment_len = u32::from(pkt.ip_len - ip_hlen - data_offset);
    let their_seq = u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]);
    let their_ack = [tcp[8], tcp[9], tcp[10], tcp[11]];
    // A segment with an ACK is answered with a RST at the sequence number it acknowledged;
    // one without (a SYN) with a RST+ACK acknowledging everything it occupied.
    let (seq, ack, flags) = if pkt.has_tcp_flag(TCP_ACK) {
        (their_ack, [0; 4], TCP_RST)
    } else {
        let mut occupied = segment_len;
        if pkt.has_tcp_flag(TCP_SYN) {
            occupied += 1;
        }
        if pkt.has_tcp_flag(TCP_FIN) {
            occupied += 1;
        }
        (
            [0; 4],
            their_seq.wrapping_add(occupied).to_be_bytes(),
            TCP_RST | TCP_ACK,
        )
    };

    let eth = unsafe { &mut *pkt.eth };
    core::mem::swap(&mut eth.src_addr, &mut eth.dst_addr);

    // Swapping the addresses leaves the IPv4 checksum as it is; the length changes it.
    let new_ip_len = ip_hlen + TCP_HLEN as u16;
    let check = csum::replace16(
        u16::from_ne_bytes(ip.check),
        u16::from_ne_bytes(ip.tot_len),
        u16::from_ne_bytes(new_ip_len.to_be_bytes()),
    );
    ip.check = check.to_ne_bytes();
    ip.tot_len = new_ip_len.to_be_bytes();
    core::mem::swap(&mut ip.src_addr, &mut ip.dst_addr);

    let mut header = [0u8; TCP_HLEN];
    header[0..2].copy_from_slice(&tcp[2..4]);
    header[2..4].copy_from_slice(&tcp[0..2]);
    header[4..8].copy_from_slice(&seq);
    header[8..12].copy_from_slice(&ack);
    header[12] = 5 << 4;
    header[13] = flags;
    let check = tcp_checksum(&ip.src_addr, &ip.dst_addr, &header);
    header[16..18].copy_from_slice(&check.to_ne_bytes());
    *tcp = header;

    // Cut options and payload. Should the helper refuse, the receiver still reads only
    // the IPv4 total length and takes the rest for padding.
    let delta = (pkt.l4 + TCP_HLEN) as i64 - ctx.data_end() as i64;
    if delta != 0 {
        unsafe { bpf_xdp_adjust_tail(ctx.ctx, delta as i32) };
    }
    event
}

/// The TCP checksum of a bare 20-byte header, pseudo-header included, in memory order.
#[inline(always)]
fn tcp_checksum(src: &[u8; 4], dst: &[u8; 4], header: &[u8; TCP_HLEN]) -> u16 {
    let word = |b: &[u8], i: usize| u32::from(u16::from_ne_bytes([b[i], b[i + 1]]));
    let mut sum = word(src, 0) + word(src, 2) + word(dst, 0) + word(dst, 2);
    sum += u32::from(u16::from_ne_bytes([0, PROTO_TCP]));
    sum += u32::from(u16::from_ne_bytes((TCP_HLEN as u16).to_be_bytes()));
    let mut i = 0;
    while i < TCP_HLEN {
        sum += word(header, i);
        i += 2;
    }
    !csum::fold(sum)
}
