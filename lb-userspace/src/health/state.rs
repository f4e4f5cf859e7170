//! One backend's health verdict from its probe results, and when to probe it next.
//!
//! The model is HAProxy's, so that `fall`, `rise`, `inter`, `fastinter` and `downinter`
//! mean what operators coming from it expect: a health counter runs from 0 to
//! `rise + fall - 1`; the backend is UP while it is at least `rise`. A failure takes one
//! off, and once below `rise` the counter drops to 0 (DOWN); a success adds one, and once
//! at `rise` the counter jumps to the top (UP). So a fully UP backend goes DOWN after `fall`
//! failures in a row, and a DOWN one comes back after `rise` successes in a row. Unlike
//! HAProxy, which starts a server UP, the first probe decides the first verdict.

use std::{
    collections::hash_map::RandomState,
    hash::{BuildHasher, Hash, Hasher},
    time::{Duration, SystemTime},
};

use crate::{config::CheckConfig, dataplane::plan::BackendKey};

/// The verdict of one backend and the counters behind it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthState {
    rise: u32,
    fall: u32,
    /// 0..=rise+fall-1; UP while >= rise.
    health: u32,
    /// `None` until the first probe.
    up: Option<bool>,
    consecutive_successes: u32,
    consecutive_failures: u32,
}

impl HealthState {
    /// A backend not probed yet. `rise` and `fall` below 1 are taken as 1.
    pub fn new(rise: u32, fall: u32) -> Self {
        Self {
            rise: rise.max(1),
            fall: fall.max(1),
            health: 0,
            up: None,
            consecutive_successes: 0,
            consecutive_failures: 0,
        }
    }

    /// The verdict: `None` before the first probe.
    pub fn up(&self) -> Option<bool> {
        self.up
    }

    pub fn consecutive_successes(&self) -> u32 {
        self.consecutive_successes
    }

    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures
    }

    /// The top of the health counter: fully UP.
    fn top(&self) -> u32 {
        self.rise.saturating_add(self.fall - 1)
    }

    /// Takes a probe's outcome; returns the new verdict when it changed, which the first
    /// verdict always does.
    pub fn record(&mut self, success: bool) -> Option<bool> {
        if success {
            self.consecutive_successes = self.consecutive_successes.saturating_add(1);
            self.consecutive_failures = 0;
        } else {
            self.consecutive_failures = self.consecutive_failures.saturating_add(1);
            self.consecutive_successes = 0;
        }
        self.health = match (self.up, success) {
            (None, true) => self.top(),
            (None, false) => 0,
            (Some(_), true) if self.health.saturating_add(1) >= self.rise => self.top(),
            (Some(_), true) => self.health + 1,
            (Some(_), false) if self.health.saturating_sub(1) < self.rise => 0,
            (Some(_), false) => self.health - 1,
        };
        let up = self.health >= self.rise;
        let changed = self.up != Some(up);
        self.up = Some(up);
        changed.then_some(up)
    }

    /// The pause before the next probe, before jitter: `interval` while fully UP,
    /// `down_interval` while fully DOWN, `fast_interval` while on the way between.
    pub fn next_interval(&self, check: &CheckConfig) -> Duration {
        match self.up {
            Some(true) if self.health == self.top() => check.interval,
            Some(false) if self.health == 0 => check.down_interval,
            _ => check.fast_interval,
        }
    }
}

/// Spreads probes: each pause is its interval ±10%, so that backends checked with the same
/// interval do not all fire together (HAProxy's `spread-checks`). A tiny PRNG seeded from
/// the backend's key and the clock is plenty for that.
#[derive(Debug, Clone)]
pub struct Jitter(u64);

impl Jitter {
    pub fn new(key: &BackendKey) -> Self {
        // RandomState is keyed randomly per process, so equal keys in two processes differ.
        let mut hasher = RandomState::new().build_hasher();
        key.hash(&mut hasher);
        SystemTime::now().hash(&mut hasher);
        Self(hasher.finish())
    }

    /// `interval` scaled by a uniform factor in [0.9, 1.1).
    pub fn spread(&mut self, interval: Duration) -> Duration {
        // 53 random bits make a uniform f64 in [0, 1).
        let unit = (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        interval.mul_f64(0.9 + 0.2 * unit)
    }

    /// splitmix64.
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::CheckKind;

    fn run(state: &mut HealthState, outcomes: &str) -> Vec<Option<bool>> {
        outcomes.chars().map(|c| state.record(c == '+')).collect()
    }

    #[test]
    fn first_probe_decides() {
        let mut up = HealthState::new(2, 3);
        assert_eq!(up.record(true), Some(true));
        let mut down = HealthState::new(2, 3);
        assert_eq!(down.up(), None);
        assert_eq!(down.record(false), Some(false));
        assert_eq!(down.up(), Some(false));
    }

    #[test]
    fn fall_failures_in_a_row_take_it_down() {
        let mut state = HealthState::new(2, 3);
        // UP, two failures, a success restores full health, then three failures.
        let changes = run(&mut state, "+--+---");
        assert_eq!(
            changes,
            [Some(true), None, None, None, None, None, Some(false)]
        );
        assert_eq!(state.consecutive_failures(), 3);
    }

    #[test]
    fn rise_successes_in_a_row_bring_it_back() {
        let mut state = HealthState::new(2, 3);
        // DOWN; a success then a failure starts over; then two successes.
        let changes = run(&mut state, "-+-++");
        assert_eq!(changes, [Some(false), None, None, None, Some(true)]);
        assert_eq!(state.consecutive_successes(), 2);
        assert_eq!(state.up(), Some(true));
    }

    #[test]
    fn rise_and_fall_of_one_flip_on_every_change() {
        let mut state = HealthState::new(1, 1);
        let changes = run(&mut state, "+-+-");
        assert_eq!(changes, [Some(true), Some(false), Some(true), Some(false)]);
        let mut zero = HealthState::new(0, 0);
        assert_eq!(run(&mut zero, "+-"), [Some(true), Some(false)]);
    }

    #[test]
    fn interval_follows_the_counter() {
        let check = CheckConfig {
            kind: CheckKind::Tcp,
            interval: Duration::from_secs(2),
            fast_interval: Duration::from_millis(500),
            down_interval: Duration::from_secs(5),
            timeout: Duration::from_secs(1),
            fall: 3,
            rise: 2,
            port: None,
            address: None,
        };
        let mut state = HealthState::new(check.rise, check.fall);
        let mut intervals = vec![state.next_interval(&check)];
        for success in [true, false, false, false, true, true] {
            state.record(success);
            intervals.push(state.next_interval(&check));
        }
        let (inter, fast, down) = (check.interval, check.fast_interval, check.down_interval);
        assert_eq!(intervals, [fast, inter, fast, fast, down, fast, inter]);
    }

    #[test]
    fn jitter_stays_within_ten_percent_and_varies() {
        let key = ("web".to_owned(), "pi-1".to_owned());
        let mut jitter = Jitter::new(&key);
        let interval = Duration::from_secs(2);
        let waits: Vec<Duration> = (0..1000).map(|_| jitter.spread(interval)).collect();
        let (low, high) = (interval.mul_f64(0.9), interval.mul_f64(1.1));
        assert!(waits.iter().all(|w| (low..=high).contains(w)));
        // Both halves of the range are used.
        assert!(waits.iter().any(|w| *w < interval.mul_f64(0.95)));
        assert!(waits.iter().any(|w| *w > interval.mul_f64(1.05)));
        // Two backends do not share a sequence.
        let mut other = Jitter::new(&key);
        let other_waits: Vec<Duration> = (0..10).map(|_| other.spread(interval)).collect();
        assert_ne!(other_waits, waits[..10]);
    }
}
