//! VRRP advertisements on the wire: encoding, decoding and every check a received one
//! must pass before the state machine sees it.
//!
//! Version 3 is RFC 5798 / RFC 9568 for IPv4; version 2 is RFC 3768 with keepalived's
//! simple-password authentication (auth type 1, eight bytes, zero padded).
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! |Version| Type  | Virtual Rtr ID|   Priority    | Count IPv4    |
//! v3: |(rsvd)|  Max Adver Int (centiseconds)  |     Checksum      |
//! v2: |  Auth Type    | Adver Int (s) |          Checksum         |
//! |                  IPv4 address (1 .. Count IPv4)               |
//! v2: |                Authentication Data (8 bytes)              |
//! ```
//!
//! Checksums: v2 covers the VRRP message. v3 senders disagree: keepalived (and RFC 5798
//! as implementations read it) adds an IPv4 pseudo-header, RFC 9568 §5.2.8 says the
//! message alone. We send the pseudo-header form, which keepalived checks, and accept
//! either on receipt.

use std::net::Ipv4Addr;

use crate::config::VrrpVersion;

/// IP protocol number of VRRP.
pub const PROTOCOL: u8 = 112;
/// The only TTL a multicast advertisement may arrive with (it never crossed a router).
pub const TTL: u8 = 255;
/// Priority of an advertisement that says "I am leaving, take over now".
pub const PRIORITY_STOP: u8 = 0;

const IPV4_HEADER_MIN: usize = 20;
const VRRP_HEADER_LEN: usize = 8;
const AUTH_DATA_LEN: usize = 8;
const TYPE_ADVERTISEMENT: u8 = 1;
const AUTH_NONE: u8 = 0;
const AUTH_PASSWORD: u8 = 1;
/// The 12-bit Max Adver Int field of v3.
const V3_MAX_INTERVAL_CS: u16 = 0x0fff;

/// Why a received packet was dropped. Every dropped packet is counted under one reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DropReason {
    /// Shorter than its IP header, its VRRP header or the addresses it announces.
    Truncated,
    /// Inconsistent IP header, or longer than the VRRP message it carries.
    Malformed,
    /// A virtual router ID this instance does not run.
    ForeignVrid,
    /// A multicast advertisement whose TTL is not 255: it came from off the link.
    Ttl,
    /// Not the VRRP version this instance speaks.
    Version,
    /// Not an advertisement (the only VRRP packet type).
    Type,
    Checksum,
    /// v2: another authentication type, or the wrong password.
    Auth,
    /// v2: another advertisement interval (RFC 3768 §7.1 requires dropping it); v3: zero.
    Interval,
    /// Not exactly this instance's virtual addresses.
    Addresses,
    /// Unicast mode: the sender is not a configured peer, or the advertisement was sent
    /// to the multicast group; multicast mode: it was sent unicast.
    Peer,
}

impl DropReason {
    pub const ALL: [Self; 11] = [
        Self::Truncated,
        Self::Malformed,
        Self::ForeignVrid,
        Self::Ttl,
        Self::Version,
        Self::Type,
        Self::Checksum,
        Self::Auth,
        Self::Interval,
        Self::Addresses,
        Self::Peer,
    ];

    /// A stable name for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Truncated => "truncated",
            Self::Malformed => "malformed",
            Self::ForeignVrid => "foreign_vrid",
            Self::Ttl => "ttl",
            Self::Version => "version",
            Self::Type => "type",
            Self::Checksum => "checksum",
            Self::Auth => "auth",
            Self::Interval => "interval",
            Self::Addresses => "addresses",
            Self::Peer => "peer",
        }
    }
}

impl std::fmt::Display for DropReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What one instance puts in its advertisements and expects in its peers'.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    pub version: VrrpVersion,
    pub vrid: u8,
    /// Advertisement interval in centiseconds (v2: whole seconds, times 100).
    pub interval_cs: u16,
    /// The virtual addresses, in configuration order.
    pub addresses: Vec<Ipv4Addr>,
    /// v2 `auth_type PASS` data: the password's first 8 bytes, zero padded.
    pub password: Option<[u8; AUTH_DATA_LEN]>,
    /// Unicast peers; empty means multicast.
    pub peers: Vec<Ipv4Addr>,
}

/// A received advertisement that passed every check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Advert {
    /// The sender's primary address (the IP source).
    pub source: Ipv4Addr,
    pub priority: u8,
    /// The sender's advertisement interval in centiseconds.
    pub interval_cs: u16,
}

/// keepalived's `auth_pass`: the first 8 bytes of the password, zero padded.
pub fn password_data(password: &str) -> [u8; AUTH_DATA_LEN] {
    let mut data = [0; AUTH_DATA_LEN];
    let bytes = password.as_bytes();
    let len = bytes.len().min(AUTH_DATA_LEN);
    data[..len].copy_from_slice(&bytes[..len]);
    data
}

impl Profile {
    /// The VRRP message (the IP payload) of an advertisement with `priority`, sent from
    /// `source` to `destination` (both enter the v3 checksum).
    pub fn encode(&self, priority: u8, source: Ipv4Addr, destination: Ipv4Addr) -> Vec<u8> {
        let mut message = Vec::with_capacity(self.message_len(self.addresses.len()));
        message.push(self.version.number() << 4 | TYPE_ADVERTISEMENT);
        message.push(self.vrid);
        message.push(priority);
        // At most 20 addresses (validated config), so the count fits.
        message.push(self.addresses.len() as u8);
        match self.version {
            VrrpVersion::V2 => {
                let auth = if self.password.is_some() {
                    AUTH_PASSWORD
                } else {
                    AUTH_NONE
                };
                message.push(auth);
                message.push((self.interval_cs / 100) as u8);
            }
            VrrpVersion::V3 => {
                message.extend_from_slice(&(self.interval_cs & V3_MAX_INTERVAL_CS).to_be_bytes())
            }
        }
        message.extend_from_slice(&[0, 0]);
        for address in &self.addresses {
            message.extend_from_slice(&address.octets());
        }
        if self.version == VrrpVersion::V2 {
            message.extend_from_slice(&self.password.unwrap_or_default());
        }
        let checksum = match self.version {
            VrrpVersion::V2 => checksum(&[&message]),
            VrrpVersion::V3 => checksum(&[&pseudo_header(source, destination, &message), &message]),
        };
        message[6..8].copy_from_slice(&checksum.to_be_bytes());
        message
    }

    /// Checks a received IPv4 packet (header included, as a raw socket delivers it) and
    /// returns the advertisement it carries, or why it must be dropped.
    pub fn decode(&self, packet: &[u8]) -> Result<Advert, DropReason> {
        if packet.len() < IPV4_HEADER_MIN {
            return Err(DropReason::Truncated);
        }
        let header_len = usize::from(packet[0] & 0x0f) * 4;
        let total_len = usize::from(u16::from_be_bytes([packet[2], packet[3]]));
        if packet[0] >> 4 != 4 || header_len < IPV4_HEADER_MIN || packet[9] != PROTOCOL {
            return Err(DropReason::Malformed);
        }
        if packet.len() < total_len || total_len < header_len {
            return Err(DropReason::Truncated);
        }
        if packet.len() > total_len {
            return Err(DropReason::Malformed);
        }
        let ttl = packet[8];
        let source = ipv4_at(packet, 12);
        let destination = ipv4_at(packet, 16);
        let message = &packet[header_len..];
        if message.len() < VRRP_HEADER_LEN {
            return Err(DropReason::Truncated);
        }

        // The VRID first: another router's packets are no concern of this instance's
        // counters for TTL, version or authentication.
        if message[1] != self.vrid {
            return Err(DropReason::ForeignVrid);
        }
        let multicast = destination.is_multicast();
        // RFC 5798 §7.1; like keepalived, not for unicast peers, whose path may be routed.
        if self.peers.is_empty() && ttl != TTL {
            return Err(DropReason::Ttl);
        }
        if message[0] >> 4 != self.version.number() {
            return Err(DropReason::Version);
        }
        if message[0] & 0x0f != TYPE_ADVERTISEMENT {
            return Err(DropReason::Type);
        }
        let count = usize::from(message[3]);
        let expected_len = self.message_len(count);
        if message.len() < expected_len {
            return Err(DropReason::Truncated);
        }
        if message.len() > expected_len {
            return Err(DropReason::Malformed);
        }
        let valid = match self.version {
            VrrpVersion::V2 => checksum(&[message]) == 0,
            VrrpVersion::V3 => {
                checksum(&[&pseudo_header(source, destination, message), message]) == 0
                    || checksum(&[message]) == 0
            }
        };
        if !valid {
            return Err(DropReason::Checksum);
        }

        let priority = message[2];
        let interval_cs = match self.version {
            VrrpVersion::V2 => {
                let auth = if self.password.is_some() {
                    AUTH_PASSWORD
                } else {
                    AUTH_NONE
                };
                if message[4] != auth {
                    return Err(DropReason::Auth);
                }
                if let Some(password) = &self.password
                    && message[expected_len - AUTH_DATA_LEN..] != password[..]
                {
                    return Err(DropReason::Auth);
                }
                let interval_cs = u16::from(message[5]) * 100;
                if interval_cs != self.interval_cs {
                    return Err(DropReason::Interval);
                }
                interval_cs
            }
            VrrpVersion::V3 => {
                let interval_cs = u16::from_be_bytes([message[4], message[5]]) & V3_MAX_INTERVAL_CS;
                // Would make a backup's down timer nothing but skew.
                if interval_cs == 0 {
                    return Err(DropReason::Interval);
                }
                interval_cs
            }
        };

        let announced = message[VRRP_HEADER_LEN..VRRP_HEADER_LEN + 4 * count]
            .chunks_exact(4)
            .map(|octets| Ipv4Addr::new(octets[0], octets[1], octets[2], octets[3]));
        let mut announced: Vec<Ipv4Addr> = announced.collect();
        let mut ours = self.addresses.clone();
        announced.sort_unstable();
        ours.sort_unstable();
        if announced != ours {
            return Err(DropReason::Addresses);
        }

        let from_peer = if self.peers.is_empty() {
            multicast
        } else {
            !multicast && self.peers.contains(&source)
        };
        if !from_peer {
            return Err(DropReason::Peer);
        }
        Ok(Advert {
            source,
            priority,
            interval_cs,
        })
    }

    /// Length of a VRRP message announcing `count` addresses.
    fn message_len(&self, count: usize) -> usize {
        let auth = match self.version {
            VrrpVersion::V2 => AUTH_DATA_LEN,
            VrrpVersion::V3 => 0,
        };
        VRRP_HEADER_LEN + 4 * count + auth
    }
}

/// The VRID a received IPv4 packet carries, if it is long enough to carry one. Lets an
/// instance skip its siblings' advertisements before checking anything.
pub fn vrid(packet: &[u8]) -> Option<u8> {
    let header_len = usize::from(packet.first()? & 0x0f) * 4;
    if header_len < IPV4_HEADER_MIN {
        return None;
    }
    packet.get(header_len + 1).copied()
}

fn ipv4_at(packet: &[u8], offset: usize) -> Ipv4Addr {
    Ipv4Addr::new(
        packet[offset],
        packet[offset + 1],
        packet[offset + 2],
        packet[offset + 3],
    )
}

/// The IPv4 pseudo-header of a v3 checksum: source, destination, zero, protocol, length.
fn pseudo_header(source: Ipv4Addr, destination: Ipv4Addr, message: &[u8]) -> [u8; 12] {
    let mut header = [0; 12];
    header[..4].copy_from_slice(&source.octets());
    header[4..8].copy_from_slice(&destination.octets());
    header[9] = PROTOCOL;
    // A VRRP message is at most 8 + 4 * 255 + 8 bytes.
    header[10..12].copy_from_slice(&(message.len() as u16).to_be_bytes());
    header
}

/// The Internet checksum (RFC 1071) over `parts` in sequence; every part but the last
/// has an even length. Over data that includes a correct checksum it is 0.
fn checksum(parts: &[&[u8]]) -> u16 {
    let mut sum: u32 = 0;
    for part in parts {
        let mut words = part.chunks_exact(2);
        for word in words.by_ref() {
            sum += u32::from(u16::from_be_bytes([word[0], word[1]]));
        }
        if let [last] = words.remainder() {
            sum += u32::from(*last) << 8;
        }
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SOURCE: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 1);
    const GROUP: Ipv4Addr = Ipv4Addr::new(224, 0, 0, 18);
    const VIP: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 100);
    const VIP2: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 101);

    fn v3() -> Profile {
        Profile {
            version: VrrpVersion::V3,
            vrid: 51,
            interval_cs: 100,
            addresses: vec![VIP, VIP2],
            password: None,
            peers: vec![],
        }
    }

    fn v2() -> Profile {
        Profile {
            version: VrrpVersion::V2,
            password: Some(password_data("secret")),
            ..v3()
        }
    }

    /// An IPv4 packet around `message`, as a raw socket delivers it.
    fn ip(source: Ipv4Addr, destination: Ipv4Addr, ttl: u8, message: &[u8]) -> Vec<u8> {
        let mut packet = vec![0x45, 0xc0];
        packet.extend_from_slice(&((20 + message.len()) as u16).to_be_bytes());
        packet.extend_from_slice(&[0, 0, 0, 0, ttl, PROTOCOL, 0, 0]);
        packet.extend_from_slice(&source.octets());
        packet.extend_from_slice(&destination.octets());
        packet.extend_from_slice(message);
        packet
    }

    fn advert(profile: &Profile, priority: u8) -> Vec<u8> {
        ip(SOURCE, GROUP, TTL, &profile.encode(priority, SOURCE, GROUP))
    }

    /// Rewrites a message's checksum after a test changed it (v2: message only).
    fn fix_checksum(profile: &Profile, packet: &mut [u8]) {
        let message = &mut packet[20..];
        message[6..8].copy_from_slice(&[0, 0]);
        let sum = match profile.version {
            VrrpVersion::V2 => checksum(&[message]),
            VrrpVersion::V3 => checksum(&[&pseudo_header(SOURCE, GROUP, message), message]),
        };
        message[6..8].copy_from_slice(&sum.to_be_bytes());
    }

    #[test]
    fn v3_round_trip_and_known_bytes() {
        let profile = v3();
        let message = profile.encode(200, SOURCE, GROUP);
        assert_eq!(message.len(), 16);
        assert_eq!(&message[..6], &[0x31, 51, 200, 2, 0x00, 100]);
        assert_eq!(&message[8..], &[10, 200, 0, 100, 10, 200, 0, 101]);
        // The pseudo-header form verifies, the message-only form does not.
        assert_eq!(
            checksum(&[&pseudo_header(SOURCE, GROUP, &message), &message]),
            0
        );
        assert_ne!(checksum(&[&message]), 0);
        let decoded = profile.decode(&ip(SOURCE, GROUP, TTL, &message)).unwrap();
        assert_eq!(
            decoded,
            Advert {
                source: SOURCE,
                priority: 200,
                interval_cs: 100
            }
        );
    }

    #[test]
    fn v3_checksum_matches_an_independent_computation() {
        // Sum of 16-bit words written out by hand for priority 100, interval 100 cs, VIP only.
        let profile = Profile {
            addresses: vec![VIP],
            ..v3()
        };
        let message = profile.encode(100, SOURCE, GROUP);
        let words: [u32; 12] = [
            0x0ac8, 0x0001, 0xe000, 0x0012, 0x0070, 12, // pseudo-header
            0x3133, 0x6401, 0x0064, 0x0ac8, 0x0064, 0x0000, // message, VIP 10.200.0.100
        ];
        let mut sum: u32 = words.iter().sum();
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        assert_eq!(u16::from_be_bytes([message[6], message[7]]), !(sum as u16));
    }

    #[test]
    fn v3_accepts_the_rfc_9568_message_only_checksum() {
        let profile = v3();
        let mut message = profile.encode(100, SOURCE, GROUP);
        message[6..8].copy_from_slice(&[0, 0]);
        let sum = checksum(&[&message]);
        message[6..8].copy_from_slice(&sum.to_be_bytes());
        assert!(profile.decode(&ip(SOURCE, GROUP, TTL, &message)).is_ok());
    }

    #[test]
    fn v3_interval_uses_12_bits() {
        let profile = Profile {
            interval_cs: 4095,
            ..v3()
        };
        let message = profile.encode(1, SOURCE, GROUP);
        assert_eq!(&message[4..6], &[0x0f, 0xff]);
        // Reserved bits set by a sender are ignored.
        let mut packet = ip(SOURCE, GROUP, TTL, &message);
        packet[24] |= 0xf0;
        fix_checksum(&profile, &mut packet);
        assert_eq!(profile.decode(&packet).unwrap().interval_cs, 4095);
    }

    #[test]
    fn v2_layout_with_password() {
        let profile = v2();
        let message = profile.encode(150, SOURCE, GROUP);
        assert_eq!(message.len(), 8 + 8 + 8);
        assert_eq!(&message[..6], &[0x21, 51, 150, 2, AUTH_PASSWORD, 1]);
        assert_eq!(&message[16..], b"secret\0\0");
        assert_eq!(checksum(&[&message]), 0);
        assert_eq!(
            profile.decode(&advert(&profile, 150)).unwrap().priority,
            150
        );
    }

    #[test]
    fn v2_without_password_sends_auth_none_and_zeros() {
        let profile = Profile {
            password: None,
            ..v2()
        };
        let message = profile.encode(100, SOURCE, GROUP);
        assert_eq!(message[4], AUTH_NONE);
        assert_eq!(&message[16..], &[0; 8]);
        assert!(profile.decode(&advert(&profile, 100)).is_ok());
    }

    #[test]
    fn password_is_truncated_to_8_bytes() {
        assert_eq!(&password_data("0123456789"), b"01234567");
        assert_eq!(&password_data(""), &[0; 8]);
    }

    #[test]
    fn addresses_in_another_order_are_accepted() {
        let sender = Profile {
            addresses: vec![VIP2, VIP],
            ..v3()
        };
        assert!(v3().decode(&advert(&sender, 100)).is_ok());
    }

    fn reason(profile: &Profile, packet: &[u8]) -> DropReason {
        profile.decode(packet).unwrap_err()
    }

    #[test]
    fn every_drop_reason() {
        let profile = v3();
        let good = advert(&profile, 100);

        assert_eq!(reason(&profile, &good[..19]), DropReason::Truncated);
        assert_eq!(reason(&profile, &good[..27]), DropReason::Truncated);
        // The IP header claims more than arrived.
        let mut short = good.clone();
        short.truncate(good.len() - 4);
        assert_eq!(reason(&profile, &short), DropReason::Truncated);
        // Fewer addresses than the count announces.
        let mut lying = good.clone();
        lying[23] = 3;
        assert_eq!(reason(&profile, &lying), DropReason::Truncated);
        let mut long = good.clone();
        long.extend_from_slice(&[0; 4]);
        long[2..4].copy_from_slice(&((good.len() + 4) as u16).to_be_bytes());
        assert_eq!(reason(&profile, &long), DropReason::Malformed);
        let mut bad_ihl = good.clone();
        bad_ihl[0] = 0x44;
        assert_eq!(reason(&profile, &bad_ihl), DropReason::Malformed);

        let mut ttl = good.clone();
        ttl[8] = 254;
        assert_eq!(reason(&profile, &ttl), DropReason::Ttl);

        let foreign = Profile { vrid: 52, ..v3() };
        assert_eq!(
            reason(&profile, &advert(&foreign, 100)),
            DropReason::ForeignVrid
        );

        assert_eq!(reason(&profile, &advert(&v2(), 100)), DropReason::Version);

        let mut kind = good.clone();
        kind[20] = 0x32;
        fix_checksum(&profile, &mut kind);
        assert_eq!(reason(&profile, &kind), DropReason::Type);

        let mut corrupt = good.clone();
        corrupt[22] ^= 1;
        assert_eq!(reason(&profile, &corrupt), DropReason::Checksum);

        let other_vips = Profile {
            addresses: vec![VIP],
            ..v3()
        };
        assert_eq!(
            reason(&profile, &advert(&other_vips, 100)),
            DropReason::Addresses
        );
        let other_vip = Profile {
            addresses: vec![VIP, Ipv4Addr::new(10, 200, 0, 102)],
            ..v3()
        };
        assert_eq!(
            reason(&profile, &advert(&other_vip, 100)),
            DropReason::Addresses
        );

        let unicast = ip(
            SOURCE,
            Ipv4Addr::new(10, 200, 0, 2),
            TTL,
            &profile.encode(100, SOURCE, Ipv4Addr::new(10, 200, 0, 2)),
        );
        assert_eq!(reason(&profile, &unicast), DropReason::Peer);
    }

    #[test]
    fn v3_zero_interval_is_dropped() {
        let profile = v3();
        let zero = Profile {
            interval_cs: 0,
            ..v3()
        };
        assert_eq!(reason(&profile, &advert(&zero, 100)), DropReason::Interval);
    }

    #[test]
    fn vrid_is_read_before_any_check() {
        let packet = advert(&v3(), 100);
        assert_eq!(vrid(&packet), Some(51));
        assert_eq!(vrid(&packet[..21]), None);
        assert_eq!(vrid(&[0x44; 30]), None);
        assert_eq!(vrid(&[]), None);
    }

    #[test]
    fn v2_drop_reasons() {
        let profile = v2();
        let wrong_password = Profile {
            password: Some(password_data("guess")),
            ..v2()
        };
        assert_eq!(
            reason(&profile, &advert(&wrong_password, 100)),
            DropReason::Auth
        );
        let no_password = Profile {
            password: None,
            ..v2()
        };
        assert_eq!(
            reason(&profile, &advert(&no_password, 100)),
            DropReason::Auth
        );
        assert_eq!(
            reason(&no_password, &advert(&profile, 100)),
            DropReason::Auth
        );
        let slower = Profile {
            interval_cs: 200,
            ..v2()
        };
        assert_eq!(
            reason(&profile, &advert(&slower, 100)),
            DropReason::Interval
        );
        // A checksum wrong only by the auth data it covers.
        let mut packet = advert(&profile, 100);
        let last = packet.len() - 1;
        packet[last] ^= 1;
        assert_eq!(reason(&profile, &packet), DropReason::Checksum);
    }

    #[test]
    fn unicast_checks_the_peer_and_not_the_ttl() {
        let me = Ipv4Addr::new(10, 200, 0, 2);
        let profile = Profile {
            peers: vec![SOURCE],
            ..v3()
        };
        let message = profile.encode(100, SOURCE, me);
        // Routed on the way: TTL below 255 is fine for a unicast peer.
        let advert = profile.decode(&ip(SOURCE, me, 62, &message)).unwrap();
        assert_eq!(advert.source, SOURCE);

        let stranger = Ipv4Addr::new(10, 200, 0, 9);
        let message = profile.encode(100, stranger, me);
        assert_eq!(
            reason(&profile, &ip(stranger, me, TTL, &message)),
            DropReason::Peer
        );
        let multicast = profile.encode(100, SOURCE, GROUP);
        assert_eq!(
            reason(&profile, &ip(SOURCE, GROUP, TTL, &multicast)),
            DropReason::Peer
        );
    }

    #[test]
    fn reasons_are_listed_in_declaration_order() {
        // Counters are indexed by discriminant.
        for (index, reason) in DropReason::ALL.into_iter().enumerate() {
            assert_eq!(reason as usize, index, "{reason}");
        }
    }

    #[test]
    fn random_bytes_never_panic() {
        // xorshift: deterministic, no extra crate.
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let profiles = [v2(), v3()];
        let template = advert(&v3(), 100);
        for round in 0..200_000 {
            let len = (next() % 80) as usize;
            let mut packet: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if round % 2 == 0 {
                // Mostly valid headers, so the deeper checks get exercised too.
                let keep = len.min(template.len());
                packet[..keep].copy_from_slice(&template[..keep]);
                let flip = (next() % 8) as usize;
                for _ in 0..flip {
                    if len > 0 {
                        let at = (next() as usize) % len;
                        packet[at] = next() as u8;
                    }
                }
            }
            let _ = vrid(&packet);
            for profile in &profiles {
                let _ = profile.decode(&packet);
            }
        }
    }
}
