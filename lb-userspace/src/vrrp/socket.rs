//! The raw IP sockets (protocol 112) one instance sends and receives advertisements on.
//!
//! Two sockets, as keepalived has: a raw socket bound to an address only receives packets
//! sent to that address, so the sending socket (bound to the primary address, which makes
//! it the source) cannot also receive from the multicast group. Both are bound to the
//! interface (`SO_BINDTODEVICE`): only advertisements that arrived on it are seen, and
//! multicast leaves through it. The receiving socket delivers the IP header too, which
//! carries the TTL, source and destination the checks need.

use std::{
    io::{self, Read as _},
    net::{Ipv4Addr, SocketAddrV4},
};

use anyhow::{Context as _, Result};
use socket2::{Domain, InterfaceIndexOrAddress, Protocol, SockAddr, Socket, Type};
use tokio::io::{Interest, unix::AsyncFd};

use super::packet::{PROTOCOL, TTL};
use crate::config::VrrpConfig;

/// keepalived's TOS for advertisements: precedence "internetwork control".
const TOS_INTERNETWORK_CONTROL: u32 = 0xc0;

pub struct VrrpSocket {
    receive: AsyncFd<Socket>,
    send: Socket,
    source: Ipv4Addr,
    /// The multicast group, or the unicast peers.
    destinations: Vec<Ipv4Addr>,
}

impl VrrpSocket {
    /// Opens both sockets on `interface` (index `ifindex`), sending from `source` to
    /// `peers`, or to the multicast group when there are none.
    ///
    /// Must run in the network namespace of the interface.
    pub fn open(
        interface: &str,
        ifindex: u32,
        source: Ipv4Addr,
        peers: &[Ipv4Addr],
    ) -> Result<VrrpSocket> {
        let receive = raw_socket(interface)?;
        let destinations = if peers.is_empty() {
            receive
                .join_multicast_v4_n(
                    &VrrpConfig::MULTICAST_GROUP,
                    &InterfaceIndexOrAddress::Index(ifindex),
                )
                .with_context(|| {
                    format!("joining {} on {interface}", VrrpConfig::MULTICAST_GROUP)
                })?;
            vec![VrrpConfig::MULTICAST_GROUP]
        } else {
            peers.to_vec()
        };
        let send = raw_socket(interface)?;
        send.bind(&SockAddr::from(SocketAddrV4::new(source, 0)))
            .with_context(|| format!("binding the VRRP socket to {source}"))?;
        // Our own multicast advertisements are of no interest to the receiving socket.
        send.set_multicast_loop_v4(false)?;
        send.set_multicast_ttl_v4(u32::from(TTL))?;
        send.set_ttl_v4(u32::from(TTL))?;
        send.set_tos_v4(TOS_INTERNETWORK_CONTROL)?;
        // SAFETY: a `Socket` owns its descriptor and always returns that one.
        let receive = unsafe { AsyncFd::register_with_interest(receive, Interest::READABLE) }
            .map_err(|error| error.into_parts().1)
            .context("registering the VRRP socket")?;
        Ok(VrrpSocket {
            receive,
            send,
            source,
            destinations,
        })
    }

    /// The address advertisements are sent from.
    pub fn source(&self) -> Ipv4Addr {
        self.source
    }

    /// Waits for the next packet and copies it, IP header included, into `buffer`.
    pub async fn receive(&self, buffer: &mut [u8]) -> io::Result<usize> {
        loop {
            let mut ready = self.receive.readable().await?;
            match ready.try_io(|socket| socket.get_ref().read(buffer)) {
                Ok(result) => return result,
                Err(_would_block) => continue,
            }
        }
    }

    /// Sends one advertisement to every destination; `message` builds it for a
    /// destination (the v3 checksum covers it). Returns how many were sent, and the
    /// first error.
    pub fn send(&self, message: impl Fn(Ipv4Addr) -> Vec<u8>) -> (u64, Option<io::Error>) {
        let mut sent = 0;
        let mut first_error = None;
        for &destination in &self.destinations {
            let address = SockAddr::from(SocketAddrV4::new(destination, 0));
            match self.send.send_to(&message(destination), &address) {
                Ok(_) => sent += 1,
                Err(error) => {
                    first_error.get_or_insert(error);
                }
            }
        }
        (sent, first_error)
    }
}

fn raw_socket(interface: &str) -> Result<Socket> {
    let socket = Socket::new(
        Domain::IPV4,
        Type::RAW,
        Some(Protocol::from(i32::from(PROTOCOL))),
    )
    .context("opening a raw VRRP socket (needs root or CAP_NET_RAW)")?;
    socket
        .bind_device(Some(interface.as_bytes()))
        .with_context(|| format!("binding the VRRP socket to interface {interface}"))?;
    socket.set_nonblocking(true)?;
    Ok(socket)
}
