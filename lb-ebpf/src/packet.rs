//! Header parsing with the bounds checks the verifier demands. Parsing never writes.

use aya_ebpf::programs::XdpContext;
use lb_common::{Event, FlowKey, PROTO_TCP, PROTO_UDP};
use network_types::{eth::EthHdr, ip::Ipv4Hdr};

pub const ETH_HLEN: usize = EthHdr::LEN;
const ETH_P_IP: u16 = 0x0800;
const IPV4_MIN_HLEN: usize = Ipv4Hdr::LEN;
const TCP_MIN_HLEN: usize = 20;
const UDP_HLEN: usize = 8;
/// Offsets of the checksum fields inside the L4 headers.
const TCP_CHECK_OFFSET: usize = 16;
const UDP_CHECK_OFFSET: usize = 6;
const TCP_FLAGS_OFFSET: usize = 13;
/// The "more fragments" bit and the fragment offset of `frag_off`, in host order.
const IP_MF_AND_OFFSET: u16 = 0x3fff;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// Why a packet to one of our addresses could not be handled.
#[derive(Clone, Copy)]
pub enum ParseError {
    /// Wrong version, IHL below 5 or past the end, total length inconsistent.
    MalformedIpv4,
    /// More-fragments set or a non-zero fragment offset.
    Fragment,
    /// TCP/UDP header truncated, TCP data offset below 5 or past the end, bad UDP length.
    MalformedL4,
    /// Neither TCP nor UDP.
    NotTcpOrUdp,
}

/// A well-formed IPv4 TCP or UDP packet. Addresses and ports in network order.
pub struct Parsed {
    /// See [`Ipv4Frame`] for why these are kept.
    pub eth: *mut EthHdr,
    pub ip: *mut Ipv4Hdr,
    /// Start of the TCP or UDP header.
    pub l4: usize,
    pub proto: u8,
    pub src_addr: u32,
    pub dst_addr: u32,
    pub src_port: u16,
    pub dst_port: u16,
    /// TCP flags byte; 0 for UDP.
    pub tcp_flags: u8,
    /// IPv4 total length, host order.
    pub ip_len: u16,
    /// Frame length, for byte counters.
    pub frame_len: u64,
}

impl Parsed {
    /// The packet's own 5-tuple.
    #[inline(always)]
    pub fn key(&self) -> FlowKey {
        FlowKey::new(
            self.src_addr,
            self.src_port,
            self.dst_addr,
            self.dst_port,
            self.proto,
        )
    }

    /// Address of the L4 checksum field. In bounds: `parse` checked the whole L4 header.
    #[inline(always)]
    pub fn l4_check(&self) -> *mut [u8; 2] {
        let offset = if self.proto == PROTO_TCP {
            TCP_CHECK_OFFSET
        } else {
            UDP_CHECK_OFFSET
        };
        (self.l4 + offset) as *mut [u8; 2]
    }

    #[inline(always)]
    pub fn has_tcp_flag(&self, flag: u8) -> bool {
        self.tcp_flags & flag != 0
    }
}

/// The headers of a frame that carries at least a fixed-size IPv4 header.
///
/// These pointers are the only ones used later: the verifier ties the bounds it proved to
/// them, while a fresh `ctx.data()` starts with no proven bounds.
pub struct Ipv4Frame {
    pub eth: *mut EthHdr,
    pub ip: *mut Ipv4Hdr,
}

/// The IPv4 header of an Ethernet frame, if it has one in full.
#[inline(always)]
pub fn ipv4_header(ctx: &XdpContext) -> Result<Ipv4Frame, Event> {
    let data = ctx.data();
    let end = ctx.data_end();
    if data + ETH_HLEN > end {
        return Err(Event::PassShortFrame);
    }
    let eth = data as *const EthHdr;
    if unsafe { (*eth).ether_type } != ETH_P_IP.to_be() {
        return Err(Event::PassNotIpv4);
    }
    if data + ETH_HLEN + IPV4_MIN_HLEN > end {
        return Err(Event::PassTruncatedIpv4);
    }
    Ok(Ipv4Frame {
        eth: data as *mut EthHdr,
        ip: (data + ETH_HLEN) as *mut Ipv4Hdr,
    })
}

#[inline(always)]
pub fn dst_addr(ip: *const Ipv4Hdr) -> u32 {
    u32::from_ne_bytes(unsafe { (*ip).dst_addr })
}

/// Validates the IPv4 header and the TCP/UDP header behind it.
#[inline(always)]
pub fn parse(ctx: &XdpContext, frame: &Ipv4Frame) -> Result<Parsed, ParseError> {
    let data = frame.eth as usize;
    let ip = frame.ip;
    let end = ctx.data_end();
    let hdr = unsafe { &*ip };

    let ihl = (hdr.vihl & 0x0f) as usize;
    if hdr.vihl >> 4 != 4 || ihl < 5 {
        return Err(ParseError::MalformedIpv4);
    }
    let ip_hlen = ihl * 4;
    let ip_len = u16::from_be_bytes(hdr.tot_len);
    let ip_start = data + ETH_HLEN;
    // The header and the whole datagram must be inside the frame (Ethernet may pad after it).
    if (ip_len as usize) < ip_hlen || ip_start + ip_len as usize > end {
        return Err(ParseError::MalformedIpv4);
    }
    if u16::from_be_bytes(hdr.frags) & IP_MF_AND_OFFSET != 0 {
        return Err(ParseError::Fragment);
    }

    let l4 = ip_start + ip_hlen;
    let l4_len = ip_len as usize - ip_hlen;
    let proto = hdr.proto;
    let (min_hlen, check_len) = match proto {
        PROTO_TCP => (TCP_MIN_HLEN, TCP_MIN_HLEN),
        PROTO_UDP => (UDP_HLEN, UDP_HLEN),
        _ => return Err(ParseError::NotTcpOrUdp),
    };
    if l4_len < min_hlen || l4 + check_len > end {
        return Err(ParseError::MalformedL4);
    }

    let ports = unsafe { *(l4 as *const [u8; 4]) };
    let mut tcp_flags = 0;
    if proto == PROTO_TCP {
        let data_offset = (unsafe { *((l4 + 12) as *const u8) } >> 4) as usize;
        if data_offset < 5 || data_offset * 4 > l4_len {
            return Err(ParseError::MalformedL4);
        }
        tcp_flags = unsafe { *((l4 + TCP_FLAGS_OFFSET) as *const u8) };
    } else {
        let udp_len = u16::from_be_bytes(unsafe { *((l4 + 4) as *const [u8; 2]) }) as usize;
        if udp_len < UDP_HLEN || udp_len > l4_len {
            return Err(ParseError::MalformedL4);
        }
    }

    Ok(Parsed {
        eth: frame.eth,
        ip,
        l4,
        proto,
        src_addr: u32::from_ne_bytes(hdr.src_addr),
        dst_addr: u32::from_ne_bytes(hdr.dst_addr),
        src_port: u16::from_ne_bytes([ports[0], ports[1]]),
        dst_port: u16::from_ne_bytes([ports[2], ports[3]]),
        tcp_flags,
        ip_len,
        frame_len: (end - data) as u64,
    })
}
