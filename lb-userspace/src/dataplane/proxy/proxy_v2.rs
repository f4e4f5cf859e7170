//! The PROXY protocol version 2 header (HAProxy's `send-proxy-v2`), sent first on a
//! connection to a backend so that it learns the client's address despite the SNAT.
//!
//! Only what gerbang forwards is encoded: a `PROXY` command for TCP over IPv4, without
//! TLVs. Specification: <https://www.haproxy.org/download/2.6/doc/proxy-protocol.txt>.

use std::net::SocketAddrV4;

/// The 12 bytes every version 2 header starts with.
pub(super) const SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// Version 2 (high nibble), command PROXY (low nibble).
const VERSION_2_PROXY: u8 = 0x21;
/// Address family AF_INET (high nibble), transport STREAM (low nibble).
const TCP_OVER_IPV4: u8 = 0x11;
/// Length of the IPv4 address block: source and destination address, then ports.
const IPV4_BLOCK_LEN: u16 = 12;

/// Length of the header [`header`] builds.
pub(super) const HEADER_LEN: usize = 16 + IPV4_BLOCK_LEN as usize;

/// The header for a TCP connection from `client` to `destination` (the address the client
/// connected to: the VIP and port of the service).
pub(super) fn header(client: SocketAddrV4, destination: SocketAddrV4) -> [u8; HEADER_LEN] {
    let mut out = [0u8; HEADER_LEN];
    out[..12].copy_from_slice(&SIGNATURE);
    out[12] = VERSION_2_PROXY;
    out[13] = TCP_OVER_IPV4;
    out[14..16].copy_from_slice(&IPV4_BLOCK_LEN.to_be_bytes());
    out[16..20].copy_from_slice(&client.ip().octets());
    out[20..24].copy_from_slice(&destination.ip().octets());
    out[24..26].copy_from_slice(&client.port().to_be_bytes());
    out[26..28].copy_from_slice(&destination.port().to_be_bytes());
    out
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    #[test]
    fn encodes_tcp4_header_byte_for_byte() {
        let client = SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 7), 51234);
        let vip = SocketAddrV4::new(Ipv4Addr::new(203, 0, 113, 10), 443);
        let expected: [u8; 28] = [
            0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54,
            0x0a, // signature
            0x21, // version 2, PROXY
            0x11, // AF_INET, STREAM
            0x00, 0x0c, // 12 bytes follow
            192, 0, 2, 7, // source address
            203, 0, 113, 10, // destination address
            0xc8, 0x22, // source port 51234
            0x01, 0xbb, // destination port 443
        ];
        assert_eq!(header(client, vip), expected);
    }

    #[test]
    fn length_field_covers_the_rest() {
        let h = header(
            SocketAddrV4::new(Ipv4Addr::LOCALHOST, 1),
            SocketAddrV4::new(Ipv4Addr::LOCALHOST, 2),
        );
        let len = u16::from_be_bytes([h[14], h[15]]) as usize;
        assert_eq!(16 + len, h.len());
    }
}
