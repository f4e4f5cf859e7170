//! One VRRP instance's task: received advertisements, timers and tracking go into the
//! state machine, and its actions come out as advertisements, virtual addresses,
//! gratuitous ARP, notify commands, logs and status.

use std::{
    collections::BTreeSet,
    net::Ipv4Addr,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Result, bail};
use rtnetlink::Handle;
use tokio::sync::watch;
use tracing::{debug, error, info, warn};

use super::{
    VrrpStatus,
    garp::Garp,
    notify,
    packet::{self, DropReason, PRIORITY_STOP, Profile, password_data},
    socket::VrrpSocket,
    state::{Action, Machine, Params, Reason, VrrpState},
    track::Tracker,
    vip::{Interface, Vips},
};
use crate::config::{VrrpConfig, VrrpVersion};

/// Enough for any IPv4 packet carrying a VRRP message: a header of at most 60 bytes and a
/// message of at most 1036.
const RECEIVE_BUFFER: usize = 2048;
/// Pause after a failed receive, so a persistent socket error does not spin.
const RECEIVE_RETRY: Duration = Duration::from_millis(100);

pub struct Instance {
    config: VrrpConfig,
    profile: Profile,
    machine: Machine,
    socket: VrrpSocket,
    vips: Vips,
    garp: Garp,
    /// Gratuitous ARP rounds still to send, and when the next is due.
    garp_left: u32,
    garp_next: Option<Instant>,
    status: Arc<watch::Sender<Vec<VrrpStatus>>>,
    slot: usize,
    current: VrrpStatus,
    /// VRIDs of the other instances on this interface: their packets are no drop of ours.
    siblings: BTreeSet<u8>,
    /// Drop reasons already logged at warning level: each is logged loudly once.
    warned: BTreeSet<DropReason>,
    sending_fails: bool,
}

impl Instance {
    /// Checks the instance against the kernel's view of its interface and opens its
    /// sockets. Nothing runs yet.
    pub async fn prepare(
        config: &VrrpConfig,
        slot: usize,
        siblings: BTreeSet<u8>,
        netlink: &Handle,
        status: Arc<watch::Sender<Vec<VrrpStatus>>>,
    ) -> Result<Instance> {
        let interval_cs = interval_centiseconds(config)?;
        let interface = Interface::lookup(netlink, &config.interface).await?;
        for vip in &config.virtual_addresses {
            interface.check_subnet(vip)?;
        }
        let source = match config.unicast_source {
            Some(source) => source,
            None => interface.primary_address(&config.virtual_addresses)?,
        };
        let socket = VrrpSocket::open(
            &interface.name,
            interface.index,
            source,
            &config.unicast_peers,
        )?;
        let garp = Garp::open(interface.index, interface.mac)?;
        let owner = config.priority == 255;
        let vips = Vips::new(
            netlink.clone(),
            &interface,
            &config.virtual_addresses,
            owner,
        );
        let profile = Profile {
            version: config.version,
            vrid: config.virtual_router_id,
            interval_cs,
            addresses: config.virtual_addresses.iter().map(|v| v.address).collect(),
            password: match config.version {
                VrrpVersion::V2 => config.auth_password.as_deref().map(password_data),
                VrrpVersion::V3 => None,
            },
            peers: config.unicast_peers.clone(),
        };
        let params = Params {
            advert_interval: config.advert_interval,
            preempt: config.preempt,
            preempt_delay: config.preempt_delay,
            learn_interval: config.version == VrrpVersion::V3,
            primary: source,
        };
        let current = status.borrow()[slot].clone();
        Ok(Instance {
            config: config.clone(),
            profile,
            machine: Machine::new(params, config.priority),
            socket,
            vips,
            garp,
            garp_left: 0,
            garp_next: None,
            status,
            slot,
            current,
            siblings,
            warned: BTreeSet::new(),
            sending_fails: false,
        })
    }

    /// Runs until `stop` changes, then stops gracefully.
    pub async fn run(mut self, mut tracker: Tracker, mut stop: watch::Receiver<bool>) {
        let peers: Vec<String> = self.profile.peers.iter().map(ToString::to_string).collect();
        info!(
            instance = %self.config.name,
            interface = %self.config.interface,
            vrid = self.config.virtual_router_id,
            version = %self.config.version,
            priority = self.config.priority,
            source = %self.socket.source(),
            to = if peers.is_empty() {
                VrrpConfig::MULTICAST_GROUP.to_string()
            } else {
                peers.join(",")
            },
            "VRRP instance starting"
        );
        self.on_tracking(&mut tracker).await;
        // Holding every address at start means this node was master a moment ago and
        // traffic still comes here: carry on as master rather than let the peer's timer
        // move the addresses away and (with preempt) back.
        let resume = self.vips.all_present();
        let actions = self.machine.start(Instant::now(), resume);
        self.apply(actions).await;
        self.publish();

        let mut buffer = vec![0; RECEIVE_BUFFER];
        loop {
            let deadline = [self.machine.next_deadline(), self.garp_next]
                .into_iter()
                .flatten()
                .min();
            let sleep = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now).into());
            tokio::select! {
                _ = stop.changed() => break,
                received = self.socket.receive(&mut buffer) => match received {
                    Ok(len) => self.on_packet(&buffer[..len]).await,
                    Err(error) => {
                        warn!(instance = %self.config.name, "receiving VRRP packets: {error}");
                        tokio::time::sleep(RECEIVE_RETRY).await;
                    }
                },
                () = tracker.changed() => self.on_tracking(&mut tracker).await,
                () = sleep, if deadline.is_some() => self.on_timer().await,
            }
            self.publish();
        }

        let actions = self.machine.shutdown();
        self.apply(actions).await;
        self.publish();
    }

    async fn on_packet(&mut self, packet: &[u8]) {
        if packet::vrid(packet).is_some_and(|vrid| self.siblings.contains(&vrid)) {
            return;
        }
        match self.profile.decode(packet) {
            Ok(advert) => {
                let counters = &mut self.current.counters;
                counters.adverts_received += 1;
                if advert.priority == PRIORITY_STOP {
                    counters.priority_zero_received += 1;
                }
                let interval = Duration::from_millis(u64::from(advert.interval_cs) * 10);
                let actions = self.machine.on_advert(
                    Instant::now(),
                    advert.source,
                    advert.priority,
                    interval,
                );
                self.apply(actions).await;
            }
            Err(reason) => {
                self.current.counters.drops.count(reason);
                let from = packet
                    .get(12..16)
                    .map(|octets| Ipv4Addr::new(octets[0], octets[1], octets[2], octets[3]));
                // Another virtual router on the link is normal, not a problem.
                if reason != DropReason::ForeignVrid && self.warned.insert(reason) {
                    warn!(
                        instance = %self.config.name,
                        ?from,
                        %reason,
                        "dropped an invalid VRRP packet (logged once per reason, all counted)"
                    );
                } else {
                    debug!(instance = %self.config.name, ?from, %reason, "dropped a VRRP packet");
                }
            }
        }
    }

    async fn on_tracking(&mut self, tracker: &mut Tracker) {
        let verdict = tracker.evaluate();
        if verdict.priority != self.machine.priority() {
            info!(
                instance = %self.config.name,
                from = self.machine.priority(),
                to = verdict.priority,
                "VRRP priority changed by tracking"
            );
            self.machine.set_priority(verdict.priority);
        }
        let actions = self.machine.set_fault(Instant::now(), verdict.fault);
        self.apply(actions).await;
    }

    async fn on_timer(&mut self) {
        let now = Instant::now();
        if self.garp_next.is_some_and(|at| at <= now) {
            self.announce(now);
        }
        let actions = self.machine.on_timer(now);
        self.apply(actions).await;
    }

    async fn apply(&mut self, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::Send { priority } => self.send(priority),
                Action::Transition { from, to, reason } => self.transition(from, to, reason).await,
            }
        }
    }

    fn send(&mut self, priority: u8) {
        let source = self.socket.source();
        let profile = &self.profile;
        let (sent, error) = self
            .socket
            .send(|destination| profile.encode(priority, source, destination));
        let counters = &mut self.current.counters;
        counters.adverts_sent += sent;
        if priority == PRIORITY_STOP {
            counters.priority_zero_sent += sent;
        }
        match error {
            Some(error) => {
                counters.send_errors += 1;
                if !self.sending_fails {
                    warn!(instance = %self.config.name, "sending a VRRP advertisement: {error}");
                }
                self.sending_fails = true;
            }
            None if self.sending_fails => {
                info!(instance = %self.config.name, "sending VRRP advertisements works again");
                self.sending_fails = false;
            }
            None => {}
        }
    }

    async fn transition(&mut self, from: VrrpState, to: VrrpState, reason: Reason) {
        info!(
            instance = %self.config.name,
            interface = %self.config.interface,
            vrid = self.config.virtual_router_id,
            priority = self.machine.priority(),
            %reason,
            "VRRP {from} -> {to}"
        );
        self.current.transitions += 1;
        self.current.since = SystemTime::now();
        if from == VrrpState::Master {
            self.garp_next = None;
            self.vips.remove_all().await;
        }
        let name = self.config.name.clone();
        let priority = self.machine.priority();
        let notify = self.config.notify.clone();
        match to {
            VrrpState::Master => {
                if let Err(error) = self.vips.add_all().await {
                    error!(instance = %name, "becoming master: {error:#}");
                }
                self.garp_left = self.config.garp_count;
                self.announce(Instant::now());
                if let Some(command) = &notify.master {
                    notify::spawn(command, &name, "MASTER", priority);
                }
            }
            VrrpState::Backup => {
                if let Some(command) = &notify.backup {
                    notify::spawn(command, &name, "BACKUP", priority);
                }
            }
            VrrpState::Fault => {
                if let Some(command) = &notify.fault {
                    notify::spawn(command, &name, "FAULT", priority);
                }
            }
            VrrpState::Init => {
                if let Some(command) = &notify.stop {
                    notify::run(command, &name, "STOP", priority).await;
                }
            }
        }
    }

    /// Sends one gratuitous ARP round (one per virtual address) if any is left.
    fn announce(&mut self, now: Instant) {
        if self.garp_left == 0 {
            self.garp_next = None;
            return;
        }
        for vip in &self.config.virtual_addresses {
            if let Err(error) = self.garp.announce(vip.address) {
                let instance = &self.config.name;
                debug!(%instance, address = %vip.address, "gratuitous ARP: {error}");
            }
        }
        self.garp_left -= 1;
        self.garp_next = (self.garp_left > 0).then(|| now + self.config.garp_interval);
    }

    /// Publishes the status if it changed.
    fn publish(&mut self) {
        self.current.state = self.machine.state();
        self.current.effective_priority = self.machine.priority();
        self.current.master = self.machine.master();
        let (slot, current) = (self.slot, &self.current);
        self.status.send_if_modified(|all| {
            let changed = all[slot] != *current;
            if changed {
                all[slot] = current.clone();
            }
            changed
        });
    }
}

/// The advertisement interval in centiseconds, as the wire carries it.
fn interval_centiseconds(config: &VrrpConfig) -> Result<u16> {
    let nanos = config.advert_interval.as_nanos();
    let (unit, range) = match config.version {
        VrrpVersion::V2 => (1_000_000_000, 1..=255),
        VrrpVersion::V3 => (10_000_000, 1..=4095),
    };
    let count = nanos / unit;
    if !nanos.is_multiple_of(unit) || !range.contains(&count) {
        bail!(
            "advert_interval {:?} cannot be sent in {}: it takes {}",
            config.advert_interval,
            config.version,
            match config.version {
                VrrpVersion::V2 => "whole seconds from 1s to 255s",
                VrrpVersion::V3 => "whole centiseconds from 10ms to 40.95s",
            }
        );
    }
    // At most 255 s or 4095 cs, so it fits.
    Ok((count * (unit / 10_000_000)) as u16)
}
