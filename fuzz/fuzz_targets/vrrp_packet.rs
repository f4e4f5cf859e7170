//! VRRP advertisements as a raw socket delivers them (IPv4 header included), checked by
//! an instance's `Profile`: anything a host on the VRRP segment can send. Decoding never
//! panics, and what it accepts is consistent with the profile; an advertisement the
//! profile encodes itself always decodes to what was sent.
//!
//! Input: a profile header, then the packet.
//!
//! ```text
//! byte 0      flags: bit 0 version 2 (else 3), bit 1 v2 password, bit 2 unicast peers
//! byte 1      virtual router ID
//! byte 2      priority (for the encode round trip)
//! bytes 3-4   advertisement interval: v3 centiseconds (big endian, 12 bits, 0 -> 100),
//!             v2 byte 3 in seconds (0 -> 1)
//! byte 5      number of virtual addresses (taken modulo 20, plus 1), then 4 bytes each
//! (v2 password) 8 bytes
//! (unicast)   number of peers (modulo 4, plus 1), then 4 bytes each
//! the rest    the packet
//! ```
//!
//! A short input reads as zeros past its end.

#![no_main]

use std::{net::Ipv4Addr, sync::OnceLock};

use gerbang::{
    config::VrrpVersion,
    vrrp::packet::{PROTOCOL, Profile, TTL, vrid},
};
use libfuzzer_sys::fuzz_target;

const MULTICAST_GROUP: Ipv4Addr = Ipv4Addr::new(224, 0, 0, 18);

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let flags = input.byte();
    let version = if flags & 1 != 0 {
        VrrpVersion::V2
    } else {
        VrrpVersion::V3
    };
    let vrid_wanted = input.byte();
    let priority = input.byte();
    let interval = [input.byte(), input.byte()];
    let interval_cs = match version {
        VrrpVersion::V2 => u16::from(interval[0].max(1)) * 100,
        VrrpVersion::V3 => match u16::from_be_bytes(interval) & 0x0fff {
            0 => 100,
            cs => cs,
        },
    };
    let count = usize::from(input.byte() % 20) + 1;
    let addresses = (0..count).map(|_| input.address()).collect();
    let password = (version == VrrpVersion::V2 && flags & 2 != 0).then(|| {
        let mut data = [0; 8];
        data.iter_mut().for_each(|b| *b = input.byte());
        data
    });
    let peers: Vec<Ipv4Addr> = if flags & 4 != 0 {
        let count = usize::from(input.byte() % 4) + 1;
        (0..count).map(|_| input.address()).collect()
    } else {
        Vec::new()
    };
    let profile = Profile {
        version,
        vrid: vrid_wanted,
        interval_cs,
        addresses,
        password,
        peers,
    };
    let packet = input.0;

    // Whatever arrives.
    let seen_vrid = vrid(packet);
    let verdict = profile.decode(packet);
    if show() {
        eprintln!("{profile:?}\n  -> {verdict:?}");
    }
    if let Ok(advert) = verdict {
        assert_eq!(seen_vrid, Some(profile.vrid));
        assert_ne!(advert.interval_cs, 0);
        if version == VrrpVersion::V2 {
            assert_eq!(advert.interval_cs, profile.interval_cs);
        }
        if !profile.peers.is_empty() {
            assert!(profile.peers.contains(&advert.source));
        }
    }

    // What a peer with the same profile sends.
    let (source, destination) = match profile.peers.first() {
        Some(&peer) => (peer, Ipv4Addr::new(192, 0, 2, 1)),
        None => (Ipv4Addr::new(192, 0, 2, 2), MULTICAST_GROUP),
    };
    let message = profile.encode(priority, source, destination);
    let sent = ipv4(source, destination, &message);
    let advert = profile
        .decode(&sent)
        .unwrap_or_else(|reason| panic!("our own advertisement dropped: {reason}"));
    assert_eq!(
        (advert.source, advert.priority, advert.interval_cs),
        (source, priority, interval_cs)
    );
});

/// `GERBANG_FUZZ_SHOW=1`: print each input's profile and verdict (to check new seeds).
fn show() -> bool {
    static SHOW: OnceLock<bool> = OnceLock::new();
    *SHOW.get_or_init(|| std::env::var_os("GERBANG_FUZZ_SHOW").is_some())
}

struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }

    fn address(&mut self) -> Ipv4Addr {
        Ipv4Addr::new(self.byte(), self.byte(), self.byte(), self.byte())
    }
}

/// `message` in an IPv4 header as the kernel delivers it on a raw socket.
fn ipv4(source: Ipv4Addr, destination: Ipv4Addr, message: &[u8]) -> Vec<u8> {
    let total = (20 + message.len()) as u16;
    let mut packet = vec![0x45, 0xc0];
    packet.extend_from_slice(&total.to_be_bytes());
    packet.extend_from_slice(&[0, 0, 0, 0, TTL, PROTOCOL, 0, 0]);
    packet.extend_from_slice(&source.octets());
    packet.extend_from_slice(&destination.octets());
    packet.extend_from_slice(message);
    packet
}
