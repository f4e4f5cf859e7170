//! Crafting and checking Ethernet/IPv4/TCP/UDP frames for BPF_PROG_TEST_RUN tests.
//!
//! Checksums are computed here from scratch (RFC 1071), independently of the XDP program's
//! incremental updates, so a wrong update shows up as a checksum that does not verify.

use std::net::{Ipv4Addr, SocketAddrV4};

pub const ETH_HLEN: usize = 14;
pub const TCP: u8 = 6;
pub const UDP: u8 = 17;
pub const SYN: u8 = 0x02;
pub const ACK: u8 = 0x10;
pub const FIN: u8 = 0x01;
pub const RST: u8 = 0x04;

/// The parts of a frame a test asserts on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decoded {
    pub eth_dst: [u8; 6],
    pub eth_src: [u8; 6],
    pub src: SocketAddrV4,
    pub dst: SocketAddrV4,
    pub proto: u8,
    pub ttl: u8,
    pub tcp_flags: u8,
    pub payload: Vec<u8>,
}

/// Builds a frame. `ip_options` must be a multiple of 4 bytes long.
#[derive(Clone, Debug)]
pub struct FrameSpec {
    pub eth_src: [u8; 6],
    pub eth_dst: [u8; 6],
    pub src: SocketAddrV4,
    pub dst: SocketAddrV4,
    pub proto: u8,
    pub tcp_flags: u8,
    pub payload: Vec<u8>,
    pub ip_options: Vec<u8>,
    /// Leave the UDP checksum at 0 ("no checksum").
    pub udp_no_checksum: bool,
}

impl FrameSpec {
    pub fn tcp(src: SocketAddrV4, dst: SocketAddrV4, flags: u8) -> Self {
        Self {
            eth_src: [0x02, 0, 0, 0, 0, 0x01],
            eth_dst: [0x02, 0, 0, 0, 0, 0x02],
            src,
            dst,
            proto: TCP,
            tcp_flags: flags,
            payload: Vec::new(),
            ip_options: Vec::new(),
            udp_no_checksum: false,
        }
    }

    pub fn udp(src: SocketAddrV4, dst: SocketAddrV4, payload: &[u8]) -> Self {
        Self {
            proto: UDP,
            tcp_flags: 0,
            payload: payload.to_vec(),
            ..Self::tcp(src, dst, 0)
        }
    }

    pub fn macs(mut self, src: [u8; 6], dst: [u8; 6]) -> Self {
        self.eth_src = src;
        self.eth_dst = dst;
        self
    }

    pub fn payload(mut self, payload: &[u8]) -> Self {
        self.payload = payload.to_vec();
        self
    }

    pub fn build(&self) -> Vec<u8> {
        let ihl = 20 + self.ip_options.len();
        let l4_header = if self.proto == TCP { 20 } else { 8 };
        let total = ihl + l4_header + self.payload.len();
        let mut f = Vec::with_capacity(ETH_HLEN + total);
        f.extend_from_slice(&self.eth_dst);
        f.extend_from_slice(&self.eth_src);
        f.extend_from_slice(&[0x08, 0x00]);

        let ip = f.len();
        f.push(0x40 | (ihl / 4) as u8);
        f.push(0);
        f.extend_from_slice(&(total as u16).to_be_bytes());
        f.extend_from_slice(&0x1234u16.to_be_bytes());
        f.extend_from_slice(&0x4000u16.to_be_bytes()); // DF
        f.push(64);
        f.push(self.proto);
        f.extend_from_slice(&[0, 0]);
        f.extend_from_slice(&self.src.ip().octets());
        f.extend_from_slice(&self.dst.ip().octets());
        f.extend_from_slice(&self.ip_options);
        let check = checksum(&f[ip..ip + ihl]);
        f[ip + 10..ip + 12].copy_from_slice(&check.to_be_bytes());

        let l4 = f.len();
        f.extend_from_slice(&self.src.port().to_be_bytes());
        f.extend_from_slice(&self.dst.port().to_be_bytes());
        if self.proto == TCP {
            f.extend_from_slice(&0x0102_0304u32.to_be_bytes()); // seq
            f.extend_from_slice(&0u32.to_be_bytes()); // ack
            f.push(5 << 4);
            f.push(self.tcp_flags);
            f.extend_from_slice(&64240u16.to_be_bytes());
            f.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent
        } else {
            f.extend_from_slice(&((8 + self.payload.len()) as u16).to_be_bytes());
            f.extend_from_slice(&[0, 0]);
        }
        f.extend_from_slice(&self.payload);
        if !(self.proto == UDP && self.udp_no_checksum) {
            let check_at = l4 + if self.proto == TCP { 16 } else { 6 };
            let mut check = l4_checksum(&f, ip, l4);
            if self.proto == UDP && check == 0 {
                check = 0xffff;
            }
            f[check_at..check_at + 2].copy_from_slice(&check.to_be_bytes());
        }
        f
    }
}

/// RFC 1071 checksum of `data` (with its checksum field zeroed, it yields the field's value;
/// over data that includes a correct checksum, it yields 0).
pub fn checksum(data: &[u8]) -> u16 {
    !fold(sum(data, 0))
}

fn sum(data: &[u8], mut acc: u32) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for pair in &mut chunks {
        acc += u32::from(u16::from_be_bytes([pair[0], pair[1]]));
    }
    if let [last] = chunks.remainder() {
        acc += u32::from(*last) << 8;
    }
    acc
}

fn fold(mut acc: u32) -> u16 {
    while acc >> 16 != 0 {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// The TCP/UDP checksum over the pseudo-header and the segment starting at `l4`.
fn l4_checksum(frame: &[u8], ip: usize, l4: usize) -> u16 {
    let total = u16::from_be_bytes([frame[ip + 2], frame[ip + 3]]) as usize;
    let ihl = usize::from(frame[ip] & 0x0f) * 4;
    let segment = &frame[l4..ip + total];
    let mut pseudo = Vec::with_capacity(12);
    pseudo.extend_from_slice(&frame[ip + 12..ip + 20]);
    pseudo.push(0);
    pseudo.push(frame[ip + 9]);
    pseudo.extend_from_slice(&((total - ihl) as u16).to_be_bytes());
    !fold(sum(segment, sum(&pseudo, 0)))
}

/// Whether the IPv4 header checksum verifies.
pub fn ipv4_checksum_ok(frame: &[u8]) -> bool {
    let ihl = usize::from(frame[ETH_HLEN] & 0x0f) * 4;
    checksum(&frame[ETH_HLEN..ETH_HLEN + ihl]) == 0
}

/// Whether the TCP/UDP checksum verifies (a UDP checksum of 0 means none and verifies).
pub fn l4_checksum_ok(frame: &[u8]) -> bool {
    let ip = ETH_HLEN;
    let ihl = usize::from(frame[ip] & 0x0f) * 4;
    let l4 = ip + ihl;
    if frame[ip + 9] == UDP && frame[l4 + 6..l4 + 8] == [0, 0] {
        return true;
    }
    l4_checksum(frame, ip, l4) == 0
}

pub fn decode(frame: &[u8]) -> Decoded {
    let ip = ETH_HLEN;
    let ihl = usize::from(frame[ip] & 0x0f) * 4;
    let total = u16::from_be_bytes([frame[ip + 2], frame[ip + 3]]) as usize;
    let l4 = ip + ihl;
    let proto = frame[ip + 9];
    let addr = |at: usize| Ipv4Addr::new(frame[at], frame[at + 1], frame[at + 2], frame[at + 3]);
    let port = |at: usize| u16::from_be_bytes([frame[at], frame[at + 1]]);
    let (tcp_flags, payload_at) = if proto == TCP {
        (frame[l4 + 13], l4 + usize::from(frame[l4 + 12] >> 4) * 4)
    } else {
        (0, l4 + 8)
    };
    Decoded {
        eth_dst: frame[0..6].try_into().unwrap(),
        eth_src: frame[6..12].try_into().unwrap(),
        src: SocketAddrV4::new(addr(ip + 12), port(l4)),
        dst: SocketAddrV4::new(addr(ip + 16), port(l4 + 2)),
        proto,
        ttl: frame[ip + 8],
        tcp_flags,
        payload: frame[payload_at..ip + total].to_vec(),
    }
}

#[test]
fn a_built_frame_verifies() {
    let a = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 1), 1000);
    let b = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 2), 80);
    for frame in [
        FrameSpec::tcp(a, b, SYN).payload(b"odd").build(),
        FrameSpec::udp(a, b, b"hello").build(),
    ] {
        assert!(ipv4_checksum_ok(&frame));
        assert!(l4_checksum_ok(&frame));
        let mut broken = frame.clone();
        *broken.last_mut().unwrap() ^= 0x40;
        assert!(
            !l4_checksum_ok(&broken),
            "a flipped bit must fail the check"
        );
    }
}
