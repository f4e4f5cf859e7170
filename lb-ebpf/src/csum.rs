//! Incremental Internet checksum updates (RFC 1624, equation 3): HC' = ~(~HC + ~m + m').
//!
//! All words are used in memory order (as loaded from the packet, not byte-swapped); the
//! ones' complement sum is byte-order independent as long as every word is treated alike.

#[inline(always)]
pub fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// The checksum after one 16-bit word changed from `old` to `new`.
#[inline(always)]
pub fn replace16(check: u16, old: u16, new: u16) -> u16 {
    !fold(u32::from(!check) + u32::from(!old) + u32::from(new))
}

/// The checksum after one 32-bit field (two adjacent words) changed.
#[inline(always)]
pub fn replace32(check: u16, old: u32, new: u32) -> u16 {
    let check = replace16(check, old as u16, new as u16);
    replace16(check, (old >> 16) as u16, (new >> 16) as u16)
}
