//! Gratuitous ARP: a new master tells the link that its virtual addresses now live at its
//! Ethernet address, so neighbours and switches update at once instead of when their
//! caches expire.
//!
//! The frame is the ARP request keepalived sends: sender and target protocol address are
//! the virtual address, sender hardware address the interface's, target hardware address
//! broadcast, to the Ethernet broadcast address.

use std::{io, mem, net::Ipv4Addr};

use anyhow::{Context as _, Result};
use socket2::{Domain, SockAddr, SockAddrStorage, Socket, Type};

const ETH_P_ARP: u16 = 0x0806;
const ETH_P_IP: u16 = 0x0800;
const ARPHRD_ETHER: u16 = 1;
const ARPOP_REQUEST: u16 = 1;
const BROADCAST: [u8; 6] = [0xff; 6];

pub struct Garp {
    /// `AF_PACKET`/`SOCK_DGRAM`: the kernel adds the Ethernet header.
    socket: Socket,
    destination: SockAddr,
    mac: [u8; 6],
}

impl Garp {
    /// Opens the socket for interface `ifindex` whose Ethernet address is `mac`.
    pub fn open(ifindex: u32, mac: [u8; 6]) -> Result<Garp> {
        // Protocol 0: this socket only sends, it receives nothing.
        let socket = Socket::new(Domain::PACKET, Type::DGRAM, None)
            .context("opening a packet socket for gratuitous ARP (needs CAP_NET_RAW)")?;
        socket.set_nonblocking(true)?;
        Ok(Garp {
            socket,
            destination: link_address(ifindex),
            mac,
        })
    }

    /// Announces `address` once.
    pub fn announce(&self, address: Ipv4Addr) -> io::Result<()> {
        self.socket
            .send_to(&arp_request(self.mac, address), &self.destination)
            .map(drop)
    }
}

/// The ARP payload of a gratuitous request for `address` from `mac`.
fn arp_request(mac: [u8; 6], address: Ipv4Addr) -> [u8; 28] {
    let mut frame = [0; 28];
    frame[0..2].copy_from_slice(&ARPHRD_ETHER.to_be_bytes());
    frame[2..4].copy_from_slice(&ETH_P_IP.to_be_bytes());
    frame[4] = 6;
    frame[5] = 4;
    frame[6..8].copy_from_slice(&ARPOP_REQUEST.to_be_bytes());
    frame[8..14].copy_from_slice(&mac);
    frame[14..18].copy_from_slice(&address.octets());
    frame[18..24].copy_from_slice(&BROADCAST);
    frame[24..28].copy_from_slice(&address.octets());
    frame
}

/// `sockaddr_ll` for ARP to the Ethernet broadcast address out of `ifindex`.
fn link_address(ifindex: u32) -> SockAddr {
    let mut storage = SockAddrStorage::zeroed();
    // SAFETY: sockaddr_ll is a sockaddr type of this platform and fits in the storage.
    let ll = unsafe { storage.view_as::<libc::sockaddr_ll>() };
    ll.sll_family = libc::AF_PACKET as u16;
    ll.sll_protocol = ETH_P_ARP.to_be();
    ll.sll_ifindex = ifindex as i32;
    ll.sll_halen = 6;
    ll.sll_addr[..6].copy_from_slice(&BROADCAST);
    // SAFETY: the storage holds an initialised sockaddr_ll of that length.
    unsafe {
        SockAddr::new(
            storage,
            mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_layout() {
        let frame = arp_request([2, 0, 0, 0, 0, 7], Ipv4Addr::new(10, 200, 0, 100));
        assert_eq!(
            frame,
            [
                0, 1, 8, 0, 6, 4, 0, 1, // Ethernet, IPv4, request
                2, 0, 0, 0, 0, 7, 10, 200, 0, 100, // sender: us, the VIP
                255, 255, 255, 255, 255, 255, 10, 200, 0, 100, // target: the VIP
            ]
        );
    }
}
