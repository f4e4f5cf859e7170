//! The VRRP state machine of RFC 5798 §6.4 as updated by RFC 9568, with keepalived's
//! preempt delay and FAULT state. Pure: events and the current time in, actions out; the
//! instance task owns the sockets, timers and addresses.
//!
//! Timers follow the RFC exactly:
//! - `Skew_Time = ((256 - Priority) * Master_Adver_Interval) / 256`
//! - `Master_Down_Interval = 3 * Master_Adver_Interval + Skew_Time`
//!
//! computed on durations, so nothing is rounded to centiseconds. In v2 (RFC 3768),
//! `Master_Adver_Interval` is always the configured interval (a different one is dropped
//! on receipt), which gives its `(256 - Priority) / 256` seconds of skew for 1 s adverts.

use std::{
    fmt,
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use super::packet::PRIORITY_STOP;

/// Priority of the router that owns the virtual addresses: it is master at once.
pub const PRIORITY_OWNER: u8 = 255;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VrrpState {
    /// Not started, or stopped.
    Init,
    Backup,
    Master,
    /// A track with weight 0 failed, or the instance's interface is down: no adverts, no
    /// addresses, until it recovers.
    Fault,
}

impl VrrpState {
    /// The name keepalived logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Init => "INIT",
            Self::Backup => "BACKUP",
            Self::Master => "MASTER",
            Self::Fault => "FAULT",
        }
    }
}

impl fmt::Display for VrrpState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a transition happened, for logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Startup,
    /// Started holding the addresses: a previous run was master (hand-over, crash).
    Resumed,
    /// Priority 255: the owner of the addresses is master without waiting.
    Owner,
    /// No advertisement from a master that outranks us for `Master_Down_Interval` (a
    /// silent master, or a lower-priority one being preempted).
    MasterDown,
    /// A master with a higher priority, or the same priority and a higher address.
    Preempted {
        by: Ipv4Addr,
        priority: u8,
    },
    Fault,
    FaultCleared,
    Shutdown,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Startup => f.write_str("started"),
            Self::Resumed => f.write_str("resumed as master: started holding the addresses"),
            Self::Owner => f.write_str("address owner (priority 255)"),
            Self::MasterDown => {
                f.write_str("master down timer expired (no master of equal or higher priority)")
            }
            Self::Preempted { by, priority } => {
                write!(f, "advertisement from {by} with priority {priority} wins")
            }
            Self::Fault => f.write_str("fault"),
            Self::FaultCleared => f.write_str("fault cleared"),
            Self::Shutdown => f.write_str("stopped"),
        }
    }
}

/// What the instance must do, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Send an advertisement with this priority.
    Send { priority: u8 },
    /// The state changed: add or remove addresses, announce, notify.
    Transition {
        from: VrrpState,
        to: VrrpState,
        reason: Reason,
    },
}

/// Fixed parameters of one virtual router.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Params {
    /// This router's `Advertisement_Interval`.
    pub advert_interval: Duration,
    pub preempt: bool,
    /// keepalived's `preempt_delay`: a backup preempts a lower-priority master only this
    /// long after it first heard it.
    pub preempt_delay: Duration,
    /// Whether `Master_Adver_Interval` is learnt from the master (v3) or fixed (v2).
    pub learn_interval: bool,
    /// The address this router sends from; ties between equal priorities go to the higher.
    pub primary: Ipv4Addr,
}

/// One virtual router's state and timers.
#[derive(Debug, Clone)]
pub struct Machine {
    params: Params,
    /// The effective priority (configured, moved by tracking).
    priority: u8,
    fault: bool,
    state: VrrpState,
    master_adver_interval: Duration,
    master_down_timer: Option<Instant>,
    adver_timer: Option<Instant>,
    /// When a backup may preempt the lower-priority master it hears (preempt delay).
    preempt_at: Option<Instant>,
    /// The master as far as this router knows.
    master: Option<Ipv4Addr>,
}

impl Machine {
    pub fn new(params: Params, priority: u8) -> Machine {
        Machine {
            params,
            priority,
            fault: false,
            state: VrrpState::Init,
            master_adver_interval: params.advert_interval,
            master_down_timer: None,
            adver_timer: None,
            preempt_at: None,
            master: None,
        }
    }

    pub fn state(&self) -> VrrpState {
        self.state
    }

    pub fn priority(&self) -> u8 {
        self.priority
    }

    /// The current master's address, if known (ours while master).
    pub fn master(&self) -> Option<Ipv4Addr> {
        self.master
    }

    /// `Skew_Time` for the current priority and `Master_Adver_Interval`.
    pub fn skew_time(&self) -> Duration {
        self.master_adver_interval * u32::from(256 - u16::from(self.priority)) / 256
    }

    /// `Master_Down_Interval`.
    pub fn master_down_interval(&self) -> Duration {
        3 * self.master_adver_interval + self.skew_time()
    }

    /// The earliest timer, if any runs.
    pub fn next_deadline(&self) -> Option<Instant> {
        match (self.master_down_timer, self.adver_timer) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The Startup event of the Initialize state. With `resume`, the node starts as master
    /// (it held the addresses when it started); a peer that outranks it takes over through
    /// the usual election, within an advertisement interval.
    pub fn start(&mut self, now: Instant, resume: bool) -> Vec<Action> {
        if self.state != VrrpState::Init {
            return Vec::new();
        }
        if self.fault {
            return vec![self.enter(VrrpState::Fault, Reason::Fault)];
        }
        if resume {
            return self.become_master(now, Reason::Resumed);
        }
        self.start_election(now, Reason::Startup)
    }

    /// The Shutdown event: a master says so with priority 0 so a backup takes over now.
    pub fn shutdown(&mut self) -> Vec<Action> {
        let mut actions = Vec::new();
        if self.state == VrrpState::Master {
            actions.push(Action::Send {
                priority: PRIORITY_STOP,
            });
        }
        if self.state != VrrpState::Init {
            actions.push(self.enter(VrrpState::Init, Reason::Shutdown));
        }
        actions
    }

    /// Fires the timers that are due.
    pub fn on_timer(&mut self, now: Instant) -> Vec<Action> {
        match self.state {
            VrrpState::Backup if self.master_down_timer.is_some_and(|t| t <= now) => {
                self.become_master(now, Reason::MasterDown)
            }
            VrrpState::Master if self.adver_timer.is_some_and(|t| t <= now) => {
                self.adver_timer = Some(now + self.params.advert_interval);
                vec![Action::Send {
                    priority: self.priority,
                }]
            }
            _ => Vec::new(),
        }
    }

    /// An advertisement that passed every check in [`super::packet`].
    pub fn on_advert(
        &mut self,
        now: Instant,
        from: Ipv4Addr,
        priority: u8,
        interval: Duration,
    ) -> Vec<Action> {
        match self.state {
            VrrpState::Backup => {
                self.backup_advert(now, from, priority, interval);
                Vec::new()
            }
            VrrpState::Master => self.master_advert(now, from, priority, interval),
            VrrpState::Init | VrrpState::Fault => Vec::new(),
        }
    }

    /// Tracking moved the effective priority. It takes effect in the next advertisement
    /// and the next skew computation, as in keepalived.
    pub fn set_priority(&mut self, priority: u8) {
        self.priority = priority;
    }

    /// Tracking entered or left a fault.
    pub fn set_fault(&mut self, now: Instant, fault: bool) -> Vec<Action> {
        if fault == self.fault {
            return Vec::new();
        }
        self.fault = fault;
        match (fault, self.state) {
            (_, VrrpState::Init) => Vec::new(),
            (true, VrrpState::Master) => vec![
                Action::Send {
                    priority: PRIORITY_STOP,
                },
                self.enter(VrrpState::Fault, Reason::Fault),
            ],
            (true, _) => vec![self.enter(VrrpState::Fault, Reason::Fault)],
            (false, _) => self.start_election(now, Reason::FaultCleared),
        }
    }

    /// Initialize's Startup: the owner is master at once, anyone else waits as backup.
    fn start_election(&mut self, now: Instant, reason: Reason) -> Vec<Action> {
        if self.priority == PRIORITY_OWNER {
            return self.become_master(now, Reason::Owner);
        }
        self.master_adver_interval = self.params.advert_interval;
        self.master_down_timer = Some(now + self.master_down_interval());
        self.master = None;
        vec![self.enter(VrrpState::Backup, reason)]
    }

    fn become_master(&mut self, now: Instant, reason: Reason) -> Vec<Action> {
        self.master_down_timer = None;
        self.master_adver_interval = self.params.advert_interval;
        self.adver_timer = Some(now + self.params.advert_interval);
        self.master = Some(self.params.primary);
        vec![
            Action::Send {
                priority: self.priority,
            },
            self.enter(VrrpState::Master, reason),
        ]
    }

    fn backup_advert(&mut self, now: Instant, from: Ipv4Addr, priority: u8, interval: Duration) {
        if priority == PRIORITY_STOP {
            // The master is leaving: take over after Skew_Time, the lowest priority last.
            self.master_down_timer = Some(now + self.skew_time());
            self.master = None;
            return;
        }
        let lower = priority < self.priority;
        let delaying =
            !self.params.preempt_delay.is_zero() && self.preempt_at.is_none_or(|at| now < at);
        if !self.params.preempt || !lower || delaying {
            if self.params.learn_interval {
                self.master_adver_interval = interval;
            }
            self.master_down_timer = Some(now + self.master_down_interval());
            self.master = Some(from);
            if !lower {
                self.preempt_at = None;
            } else if self.params.preempt && self.preempt_at.is_none() {
                self.preempt_at = Some(now + self.params.preempt_delay);
            }
        }
        // else: preempting a lower-priority master. Discard, so the down timer expires.
    }

    fn master_advert(
        &mut self,
        now: Instant,
        from: Ipv4Addr,
        priority: u8,
        interval: Duration,
    ) -> Vec<Action> {
        if priority == PRIORITY_STOP {
            self.adver_timer = Some(now + self.params.advert_interval);
            return vec![Action::Send {
                priority: self.priority,
            }];
        }
        let theirs = (priority, u32::from(from));
        let ours = (self.priority, u32::from(self.params.primary));
        if theirs > ours {
            self.adver_timer = None;
            if self.params.learn_interval {
                self.master_adver_interval = interval;
            }
            self.master_down_timer = Some(now + self.master_down_interval());
            self.master = Some(from);
            return vec![self.enter(VrrpState::Backup, Reason::Preempted { by: from, priority })];
        }
        if theirs < ours {
            // RFC 9568: assert mastership at once, which ends a split brain within one
            // advertisement of the other side. Not on a tie with our own address, which
            // would bounce advertisements between two misconfigured routers forever.
            return vec![Action::Send {
                priority: self.priority,
            }];
        }
        Vec::new()
    }

    fn enter(&mut self, to: VrrpState, reason: Reason) -> Action {
        let from = self.state;
        self.state = to;
        if to != VrrpState::Master {
            self.adver_timer = None;
        }
        if to != VrrpState::Backup {
            self.master_down_timer = None;
            self.preempt_at = None;
        }
        if matches!(to, VrrpState::Init | VrrpState::Fault) {
            self.master = None;
        }
        Action::Transition { from, to, reason }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 1);
    const LOWER_IP: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 0);
    const HIGHER_IP: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 2);
    const SECOND: Duration = Duration::from_secs(1);
    const MS: Duration = Duration::from_millis(1);

    fn params() -> Params {
        Params {
            advert_interval: SECOND,
            preempt: true,
            preempt_delay: Duration::ZERO,
            learn_interval: true,
            primary: ME,
        }
    }

    fn machine(priority: u8) -> Machine {
        Machine::new(params(), priority)
    }

    fn send(priority: u8) -> Action {
        Action::Send { priority }
    }

    fn transition(from: VrrpState, to: VrrpState, reason: Reason) -> Action {
        Action::Transition { from, to, reason }
    }

    /// A machine that reached master through the down timer.
    fn master(priority: u8, t0: Instant) -> (Machine, Instant) {
        let mut m = machine(priority);
        m.start(t0, false);
        let t = m.next_deadline().unwrap();
        m.on_timer(t);
        assert_eq!(m.state(), VrrpState::Master);
        (m, t)
    }

    #[test]
    fn skew_and_master_down_follow_the_rfc() {
        let mut m = machine(100);
        // (256 - 100) * 1 s / 256 = 609.375 ms
        assert_eq!(m.skew_time(), Duration::from_micros(609_375));
        assert_eq!(m.master_down_interval(), Duration::from_micros(3_609_375));
        m.set_priority(254);
        assert_eq!(m.skew_time(), Duration::from_nanos(7_812_500));
        m.set_priority(1);
        assert_eq!(m.skew_time(), Duration::from_nanos(996_093_750));
        // v3 with 100 ms adverts, priority 200: 3 * 100 ms + 56 * 100 ms / 256.
        let mut fast = Machine::new(
            Params {
                advert_interval: 100 * MS,
                ..params()
            },
            200,
        );
        assert_eq!(fast.master_down_interval(), Duration::from_micros(321_875));
        // Learning a master's interval changes the skew.
        let t = Instant::now();
        fast.start(t, false);
        fast.on_advert(t, HIGHER_IP, 250, 2 * SECOND);
        assert_eq!(fast.skew_time(), 2 * SECOND * 56 / 256);
        assert_eq!(
            fast.next_deadline(),
            Some(t + 6 * SECOND + 2 * SECOND * 56 / 256)
        );
    }

    #[test]
    fn starting_with_the_addresses_resumes_as_master_and_yields_to_a_higher_master() {
        let t = Instant::now();
        let mut m = machine(100);
        assert_eq!(
            m.start(t, true),
            vec![
                send(100),
                transition(VrrpState::Init, VrrpState::Master, Reason::Resumed)
            ]
        );
        // A peer that outranks it still wins the election.
        m.on_advert(t + MS, HIGHER_IP, 150, SECOND);
        assert_eq!(m.state(), VrrpState::Backup);
    }

    #[test]
    fn startup_is_backup_then_master_after_the_down_interval() {
        let t = Instant::now();
        let mut m = machine(100);
        assert_eq!(
            m.start(t, false),
            vec![transition(
                VrrpState::Init,
                VrrpState::Backup,
                Reason::Startup
            )]
        );
        assert_eq!(m.next_deadline(), Some(t + m.master_down_interval()));
        let just_before = t + m.master_down_interval() - MS;
        assert!(m.on_timer(just_before).is_empty());
        let due = t + m.master_down_interval();
        assert_eq!(
            m.on_timer(due),
            vec![
                send(100),
                transition(VrrpState::Backup, VrrpState::Master, Reason::MasterDown)
            ]
        );
        assert_eq!(m.master(), Some(ME));
        // Then an advertisement every interval.
        assert_eq!(m.next_deadline(), Some(due + SECOND));
        assert_eq!(m.on_timer(due + SECOND), vec![send(100)]);
        assert_eq!(m.next_deadline(), Some(due + 2 * SECOND));
    }

    #[test]
    fn the_owner_is_master_at_once() {
        let t = Instant::now();
        let mut m = machine(PRIORITY_OWNER);
        assert_eq!(
            m.start(t, false),
            vec![
                send(255),
                transition(VrrpState::Init, VrrpState::Master, Reason::Owner)
            ]
        );
        assert_eq!(m.next_deadline(), Some(t + SECOND));
    }

    #[test]
    fn backup_follows_a_higher_master_and_learns_its_interval() {
        let t = Instant::now();
        let mut m = machine(100);
        m.start(t, false);
        let later = t + 2 * SECOND;
        assert!(m.on_advert(later, HIGHER_IP, 200, 3 * SECOND).is_empty());
        assert_eq!(m.master(), Some(HIGHER_IP));
        assert_eq!(
            m.next_deadline(),
            Some(later + 9 * SECOND + 3 * SECOND * 156 / 256)
        );
        // Equal priority also holds a backup back.
        assert!(m.on_advert(later, LOWER_IP, 100, SECOND).is_empty());
        assert_eq!(m.next_deadline(), Some(later + m.master_down_interval()));
    }

    #[test]
    fn v2_keeps_its_configured_interval() {
        let t = Instant::now();
        let mut m = Machine::new(
            Params {
                learn_interval: false,
                ..params()
            },
            100,
        );
        m.start(t, false);
        m.on_advert(t, HIGHER_IP, 200, 3 * SECOND);
        assert_eq!(m.master_down_interval(), 3 * SECOND + SECOND * 156 / 256);
    }

    #[test]
    fn preempt_ignores_a_lower_master_so_the_backup_takes_over() {
        let t = Instant::now();
        let mut m = machine(200);
        m.start(t, false);
        let deadline = m.next_deadline().unwrap();
        // Lower-priority adverts do not reset the down timer.
        assert!(m.on_advert(t + SECOND, HIGHER_IP, 100, SECOND).is_empty());
        assert_eq!(m.next_deadline(), Some(deadline));
        assert_eq!(
            m.on_timer(deadline)[1],
            transition(VrrpState::Backup, VrrpState::Master, Reason::MasterDown)
        );
    }

    #[test]
    fn without_preempt_a_lower_master_is_followed() {
        let t = Instant::now();
        let mut m = Machine::new(
            Params {
                preempt: false,
                ..params()
            },
            200,
        );
        m.start(t, false);
        m.on_advert(t + SECOND, HIGHER_IP, 100, SECOND);
        assert_eq!(
            m.next_deadline(),
            Some(t + SECOND + m.master_down_interval())
        );
        assert_eq!(m.master(), Some(HIGHER_IP));
    }

    #[test]
    fn preempt_delay_follows_a_lower_master_until_it_elapses() {
        let t = Instant::now();
        let mut m = Machine::new(
            Params {
                preempt_delay: 5 * SECOND,
                ..params()
            },
            200,
        );
        m.start(t, false);
        // First lower advert starts the delay and is followed.
        m.on_advert(t, HIGHER_IP, 100, SECOND);
        assert_eq!(m.next_deadline(), Some(t + m.master_down_interval()));
        let before = t + 4 * SECOND;
        m.on_advert(before, HIGHER_IP, 100, SECOND);
        assert_eq!(m.next_deadline(), Some(before + m.master_down_interval()));
        // Once it elapsed, lower adverts are ignored and the down timer runs out.
        let after = t + 5 * SECOND;
        m.on_advert(after, HIGHER_IP, 100, SECOND);
        let deadline = before + m.master_down_interval();
        assert_eq!(m.next_deadline(), Some(deadline));
        assert_eq!(m.on_timer(deadline)[0], send(200));
        assert_eq!(m.state(), VrrpState::Master);
    }

    #[test]
    fn preempt_delay_restarts_after_a_higher_master() {
        let t = Instant::now();
        let mut m = Machine::new(
            Params {
                preempt_delay: 5 * SECOND,
                ..params()
            },
            200,
        );
        m.start(t, false);
        m.on_advert(t, HIGHER_IP, 100, SECOND);
        m.on_advert(t + SECOND, HIGHER_IP, 250, SECOND);
        // The delay counts again from the next lower-priority master.
        let again = t + 6 * SECOND;
        m.on_advert(again, HIGHER_IP, 100, SECOND);
        assert_eq!(m.next_deadline(), Some(again + m.master_down_interval()));
    }

    #[test]
    fn backup_takes_over_after_skew_on_priority_zero() {
        let t = Instant::now();
        let mut m = machine(100);
        m.start(t, false);
        m.on_advert(t, HIGHER_IP, 200, SECOND);
        let stop = t + SECOND / 2;
        assert!(m.on_advert(stop, HIGHER_IP, 0, SECOND).is_empty());
        assert_eq!(m.next_deadline(), Some(stop + m.skew_time()));
        assert_eq!(m.master(), None);
        assert_eq!(m.on_timer(stop + m.skew_time())[0], send(100));
    }

    #[test]
    fn master_answers_priority_zero_with_an_advert() {
        let (mut m, t) = master(100, Instant::now());
        let now = t + SECOND / 3;
        assert_eq!(m.on_advert(now, HIGHER_IP, 0, SECOND), vec![send(100)]);
        assert_eq!(m.next_deadline(), Some(now + SECOND));
        assert_eq!(m.state(), VrrpState::Master);
    }

    #[test]
    fn master_yields_to_higher_priority() {
        let (mut m, t) = master(100, Instant::now());
        let now = t + MS;
        assert_eq!(
            m.on_advert(now, LOWER_IP, 101, 2 * SECOND),
            vec![transition(
                VrrpState::Master,
                VrrpState::Backup,
                Reason::Preempted {
                    by: LOWER_IP,
                    priority: 101
                }
            )]
        );
        assert_eq!(m.master(), Some(LOWER_IP));
        assert_eq!(
            m.next_deadline(),
            Some(now + 6 * SECOND + 2 * SECOND * 156 / 256)
        );
    }

    #[test]
    fn ties_go_to_the_higher_primary_address() {
        let (mut m, t) = master(100, Instant::now());
        // Same priority, lower address: we stay and assert at once.
        assert_eq!(m.on_advert(t, LOWER_IP, 100, SECOND), vec![send(100)]);
        assert_eq!(m.state(), VrrpState::Master);
        // Same priority, higher address: we yield.
        assert_eq!(m.on_advert(t, HIGHER_IP, 100, SECOND).len(), 1);
        assert_eq!(m.state(), VrrpState::Backup);
        // Addresses compare as unsigned integers, not per octet text.
        let (mut m, t) = master(100, Instant::now());
        assert!(m.on_advert(t, Ipv4Addr::new(9, 255, 255, 255), 100, SECOND) == vec![send(100)]);
    }

    #[test]
    fn a_tie_with_our_own_address_changes_nothing() {
        let (mut m, t) = master(100, Instant::now());
        assert!(m.on_advert(t, ME, 100, SECOND).is_empty());
        assert_eq!(m.state(), VrrpState::Master);
    }

    #[test]
    fn split_brain_converges_on_the_first_advert_exchange() {
        // Both sides became master during a partition; each hears the other once.
        let t = Instant::now();
        let mut high = Machine::new(
            Params {
                primary: HIGHER_IP,
                ..params()
            },
            150,
        );
        let mut low = machine(150);
        let (t_high, t_low) = (t, t + 3 * SECOND);
        high.start(t_high, false);
        low.start(t_low, false);
        high.on_timer(high.next_deadline().unwrap());
        low.on_timer(low.next_deadline().unwrap());
        let now = t + 10 * SECOND;
        // The lower one yields on the first advert it hears, whichever arrives first...
        assert_eq!(high.on_advert(now, ME, 150, SECOND), vec![send(150)]);
        assert_eq!(low.on_advert(now, HIGHER_IP, 150, SECOND).len(), 1);
        assert_eq!(
            (high.state(), low.state()),
            (VrrpState::Master, VrrpState::Backup)
        );
        // ...and stays backup while the winner keeps advertising: no flapping.
        for i in 1..10 {
            let at = now + i * SECOND;
            assert!(low.on_advert(at, HIGHER_IP, 150, SECOND).is_empty());
            assert!(low.on_timer(at).is_empty());
        }
        assert_eq!(low.state(), VrrpState::Backup);
    }

    #[test]
    fn shutdown_sends_priority_zero_only_as_master() {
        let (mut m, _) = master(100, Instant::now());
        assert_eq!(
            m.shutdown(),
            vec![
                send(0),
                transition(VrrpState::Master, VrrpState::Init, Reason::Shutdown)
            ]
        );
        assert_eq!(m.next_deadline(), None);
        let mut b = machine(100);
        b.start(Instant::now(), false);
        assert_eq!(
            b.shutdown(),
            vec![transition(
                VrrpState::Backup,
                VrrpState::Init,
                Reason::Shutdown
            )]
        );
        assert!(b.shutdown().is_empty());
    }

    #[test]
    fn fault_releases_mastership_and_recovers_through_backup() {
        let (mut m, t) = master(100, Instant::now());
        assert_eq!(
            m.set_fault(t, true),
            vec![
                send(0),
                transition(VrrpState::Master, VrrpState::Fault, Reason::Fault)
            ]
        );
        assert_eq!(m.next_deadline(), None);
        assert!(m.on_advert(t, HIGHER_IP, 50, SECOND).is_empty());
        assert!(m.set_fault(t, true).is_empty());
        let later = t + SECOND;
        assert_eq!(
            m.set_fault(later, false),
            vec![transition(
                VrrpState::Fault,
                VrrpState::Backup,
                Reason::FaultCleared
            )]
        );
        assert_eq!(m.next_deadline(), Some(later + m.master_down_interval()));
    }

    #[test]
    fn fault_before_start_starts_in_fault() {
        let t = Instant::now();
        let mut m = machine(100);
        assert!(m.set_fault(t, true).is_empty());
        assert_eq!(
            m.start(t, false),
            vec![transition(VrrpState::Init, VrrpState::Fault, Reason::Fault)]
        );
        let mut b = machine(100);
        b.start(t, false);
        assert_eq!(
            b.set_fault(t, true),
            vec![transition(
                VrrpState::Backup,
                VrrpState::Fault,
                Reason::Fault
            )]
        );
    }

    #[test]
    fn a_lowered_priority_is_advertised_and_used_for_skew() {
        let (mut m, t) = master(200, Instant::now());
        m.set_priority(150);
        assert_eq!(m.on_timer(t + SECOND), vec![send(150)]);
        assert_eq!(m.skew_time(), SECOND * 106 / 256);
    }

    #[test]
    fn init_ignores_adverts_and_timers() {
        let t = Instant::now();
        let mut m = machine(100);
        assert!(m.on_advert(t, HIGHER_IP, 200, SECOND).is_empty());
        assert!(m.on_timer(t + 100 * SECOND).is_empty());
        assert_eq!(m.state(), VrrpState::Init);
    }
}
