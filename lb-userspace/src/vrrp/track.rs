//! Tracking: what moves an instance's priority or puts it in FAULT.
//!
//! Three kinds of track, with keepalived's weights: a negative weight is added to the
//! priority while the track fails, a positive one while it succeeds, and a weight of 0
//! puts the instance in FAULT while it fails. The instance's own interface is tracked
//! with weight 0, as keepalived does.
//!
//! - a service fails while none of its backends is up (from the controller's health
//!   map; a service absent from the map counts as having none);
//! - an interface fails while it is not up and running (link state over rtnetlink, by
//!   notification, not polling);
//! - a script fails on a non-zero exit or a timeout; it runs every `interval` and changes
//!   state after `fall` failures or `rise` successes in a row. Its first result decides
//!   at once; until then it moves nothing.
//!
//! An adjusted priority stays within 1..=254: tracking never makes an owner.

use std::{collections::BTreeMap, process::Stdio, sync::Arc};

use anyhow::{Context as _, Result};
use futures::{StreamExt as _, TryStreamExt as _};
use netlink_packet_route::{
    RouteNetlinkMessage,
    link::{LinkAttribute, LinkFlags, LinkMessage},
};
use rtnetlink::{MulticastGroup, packet_core::NetlinkPayload};
use tokio::{
    process::Command,
    sync::watch,
    task::JoinHandle,
    time::{MissedTickBehavior, interval, timeout},
};
use tracing::{debug, info, warn};

use crate::config::{TrackScript, VrrpConfig};

/// Interface name to "up and running", for every interface of the namespace.
pub type Links = watch::Receiver<BTreeMap<String, bool>>;
/// Service name to the number of its backends that are up.
pub type ServiceHealth = watch::Receiver<BTreeMap<String, usize>>;
/// One slot per script of an instance: `None` until its first result.
pub type ScriptResults = watch::Receiver<Vec<Option<bool>>>;

/// Starts following link state; returns the map and the tasks that keep it current.
pub async fn watch_links() -> Result<(Links, Vec<JoinHandle<()>>)> {
    let (connection, netlink, mut messages) =
        rtnetlink::new_multicast_connection(&[MulticastGroup::Link])
            .context("opening a netlink socket for link state")?;
    let connection = tokio::spawn(connection);
    // Notifications queue up in `messages` while the dump runs and are applied after it,
    // in order, so the map ends up with the newest state.
    let mut links = BTreeMap::new();
    let mut dump = netlink.link().get().execute();
    while let Some(link) = dump.try_next().await.context("listing interfaces")? {
        update(&mut links, &link, true);
    }
    let (sender, receiver) = watch::channel(links);
    let monitor = tokio::spawn(async move {
        while let Some((message, _)) = messages.next().await {
            let NetlinkPayload::InnerMessage(message) = message.payload else {
                continue;
            };
            sender.send_if_modified(|links| match &message {
                RouteNetlinkMessage::NewLink(link) => update(links, link, true),
                RouteNetlinkMessage::DelLink(link) => update(links, link, false),
                _ => false,
            });
        }
        warn!("the link state monitor ended: tracked interfaces keep their last state");
    });
    Ok((receiver, vec![connection, monitor]))
}

/// Records `link`'s state (`exists` false: it was deleted); whether anything changed.
fn update(links: &mut BTreeMap<String, bool>, link: &LinkMessage, exists: bool) -> bool {
    let Some(name) = link
        .attributes
        .iter()
        .find_map(|attribute| match attribute {
            LinkAttribute::IfName(name) => Some(name.clone()),
            _ => None,
        })
    else {
        return false;
    };
    if !exists {
        return links.remove(&name).is_some();
    }
    let up = link
        .header
        .flags
        .contains(LinkFlags::Up | LinkFlags::Running);
    links.insert(name, up) != Some(up)
}

/// Starts `scripts` for `instance`; returns their results and their tasks.
pub fn spawn_scripts(
    instance: &str,
    scripts: &[TrackScript],
) -> (ScriptResults, Vec<JoinHandle<()>>) {
    let (sender, receiver) = watch::channel(vec![None; scripts.len()]);
    let sender = Arc::new(sender);
    let tasks = scripts
        .iter()
        .enumerate()
        .map(|(slot, script)| {
            tokio::spawn(run_script(
                instance.to_owned(),
                script.clone(),
                slot,
                Arc::clone(&sender),
            ))
        })
        .collect();
    (receiver, tasks)
}

async fn run_script(
    instance: String,
    script: TrackScript,
    slot: usize,
    results: Arc<watch::Sender<Vec<Option<bool>>>>,
) {
    let mut state = ScriptState::new(script.fall, script.rise);
    let mut ticks = interval(script.interval);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let success = run_once(&instance, &script).await;
        if let Some(ok) = state.record(success) {
            results.send_modify(|results| results[slot] = Some(ok));
        }
    }
}

/// Runs the script once: whether it exited 0 within its timeout.
async fn run_once(instance: &str, script: &TrackScript) -> bool {
    let spawned = Command::new("sh")
        .arg("-c")
        .arg(&script.command)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        // Its own process group, so a timeout kills whatever it started too.
        .process_group(0)
        .kill_on_drop(true)
        .spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(error) => {
            warn!(instance, script = %script.name, "cannot run track script: {error}");
            return false;
        }
    };
    match timeout(script.timeout, child.wait()).await {
        Ok(Ok(status)) => {
            debug!(instance, script = %script.name, %status, "track script ran");
            status.success()
        }
        Ok(Err(error)) => {
            warn!(instance, script = %script.name, "waiting for track script: {error}");
            false
        }
        Err(_) => {
            if let Some(pid) = child.id() {
                let group = nix::unistd::Pid::from_raw(pid as i32);
                let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
            }
            let _ = child.wait().await;
            let timeout = script.timeout;
            debug!(instance, script = %script.name, ?timeout, "track script timed out");
            false
        }
    }
}

/// keepalived's fall and rise: a script changes state only after that many results in a
/// row say so.
#[derive(Debug)]
struct ScriptState {
    ok: Option<bool>,
    /// Consecutive results that disagree with `ok`.
    streak: u32,
    fall: u32,
    rise: u32,
}

impl ScriptState {
    fn new(fall: u32, rise: u32) -> ScriptState {
        ScriptState {
            ok: None,
            streak: 0,
            fall: fall.max(1),
            rise: rise.max(1),
        }
    }

    /// Records one result; returns the new state when it changes.
    fn record(&mut self, success: bool) -> Option<bool> {
        match self.ok {
            None => {}
            Some(ok) if ok == success => {
                self.streak = 0;
                return None;
            }
            Some(_) => {
                self.streak += 1;
                let needed = if success { self.rise } else { self.fall };
                if self.streak < needed {
                    return None;
                }
            }
        }
        self.ok = Some(success);
        self.streak = 0;
        Some(success)
    }
}

/// The instance's effective priority and whether it is in fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    pub priority: u8,
    pub fault: bool,
}

/// Everything one instance tracks.
pub struct Tracker {
    instance: String,
    priority: u8,
    /// The tracks: what they watch and their weight; the instance's interface first.
    tracks: Vec<(Track, i32)>,
    services: ServiceHealth,
    links: Links,
    scripts: ScriptResults,
    /// Each track's last result, to log changes once.
    last: Vec<Option<bool>>,
    /// Cleared when a sender is gone, so `changed` does not spin on it.
    open: [bool; 3],
}

#[derive(Debug, Clone)]
enum Track {
    Service(String),
    Interface(String),
    Script { name: String, slot: usize },
}

impl std::fmt::Display for Track {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Service(name) => write!(f, "service {name}"),
            Self::Interface(name) => write!(f, "interface {name}"),
            Self::Script { name, .. } => write!(f, "script {name}"),
        }
    }
}

impl Tracker {
    pub fn new(
        config: &VrrpConfig,
        services: ServiceHealth,
        links: Links,
        scripts: ScriptResults,
    ) -> Tracker {
        let mut tracks = vec![(Track::Interface(config.interface.clone()), 0)];
        tracks.extend(
            config
                .track_services
                .iter()
                .map(|t| (Track::Service(t.service.clone()), t.weight)),
        );
        tracks.extend(
            config
                .track_interfaces
                .iter()
                .map(|t| (Track::Interface(t.interface.clone()), t.weight)),
        );
        tracks.extend(config.track_scripts.iter().enumerate().map(|(slot, t)| {
            let name = t.name.clone();
            (Track::Script { name, slot }, t.weight)
        }));
        let last = vec![None; tracks.len()];
        Tracker {
            instance: config.name.clone(),
            priority: config.priority,
            tracks,
            services,
            links,
            scripts,
            last,
            open: [true; 3],
        }
    }

    /// Waits until something tracked may have changed.
    pub async fn changed(&mut self) {
        let [services, links, scripts] = &mut self.open;
        tokio::select! {
            result = self.services.changed(), if *services => *services = result.is_ok(),
            result = self.links.changed(), if *links => *links = result.is_ok(),
            result = self.scripts.changed(), if *scripts => *scripts = result.is_ok(),
            else => std::future::pending().await,
        }
    }

    /// The current verdict; logs every track whose result changed.
    pub fn evaluate(&mut self) -> Verdict {
        let services = self.services.borrow_and_update().clone();
        let links = self.links.borrow_and_update().clone();
        let scripts = self.scripts.borrow_and_update().clone();
        let mut adjust = 0;
        let mut fault = false;
        for (index, (track, weight)) in self.tracks.iter().enumerate() {
            let ok = match track {
                Track::Service(name) => Some(services.get(name).is_some_and(|&up| up > 0)),
                Track::Interface(name) => Some(links.get(name).copied().unwrap_or(false)),
                Track::Script { slot, .. } => scripts.get(*slot).copied().flatten(),
            };
            if ok != self.last[index] {
                log_change(&self.instance, track, *weight, ok, self.last[index]);
                self.last[index] = ok;
            }
            match (ok, *weight) {
                (Some(false), 0) => fault = true,
                (Some(false), w) if w < 0 => adjust += w,
                (Some(true), w) if w > 0 => adjust += w,
                _ => {}
            }
        }
        let priority = if adjust == 0 {
            self.priority
        } else {
            // Within 1..=254, so the cast cannot truncate.
            (i32::from(self.priority) + adjust).clamp(1, 254) as u8
        };
        Verdict { priority, fault }
    }
}

fn log_change(instance: &str, track: &Track, weight: i32, ok: Option<bool>, was: Option<bool>) {
    match ok {
        Some(false) => warn!(instance, %track, weight, "VRRP track failing"),
        // The first result of a healthy track is not news.
        Some(true) if was.is_some() => info!(instance, %track, weight, "VRRP track recovered"),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::{
        NotifyCommands, TrackInterface, TrackService, VirtualAddress, VrrpVersion,
    };

    #[test]
    fn script_fall_and_rise() {
        let mut state = ScriptState::new(3, 2);
        // The first result decides at once.
        assert_eq!(state.record(true), Some(true));
        assert_eq!(state.record(false), None);
        assert_eq!(state.record(false), None);
        // A success in between restarts the count.
        assert_eq!(state.record(true), None);
        assert_eq!(state.record(false), None);
        assert_eq!(state.record(false), None);
        assert_eq!(state.record(false), Some(false));
        assert_eq!(state.record(false), None);
        assert_eq!(state.record(true), None);
        assert_eq!(state.record(true), Some(true));
        let mut failing_first = ScriptState::new(3, 2);
        assert_eq!(failing_first.record(false), Some(false));
    }

    fn config() -> VrrpConfig {
        VrrpConfig {
            name: "vi".into(),
            interface: "eth0".into(),
            virtual_router_id: 1,
            priority: 100,
            version: VrrpVersion::V3,
            advert_interval: Duration::from_secs(1),
            preempt: true,
            preempt_delay: Duration::ZERO,
            virtual_addresses: vec![VirtualAddress {
                address: [10, 0, 0, 100].into(),
                prefix_len: 32,
            }],
            unicast_source: None,
            unicast_peers: vec![],
            auth_password: None,
            garp_count: 1,
            garp_interval: Duration::ZERO,
            track_services: vec![
                TrackService {
                    service: "web".into(),
                    weight: -20,
                },
                TrackService {
                    service: "db".into(),
                    weight: 0,
                },
            ],
            track_interfaces: vec![TrackInterface {
                interface: "uplink".into(),
                weight: 10,
            }],
            track_scripts: vec![TrackScript {
                name: "chk".into(),
                command: "true".into(),
                interval: Duration::from_secs(1),
                timeout: Duration::from_secs(1),
                fall: 1,
                rise: 1,
                weight: -50,
            }],
            notify: NotifyCommands::default(),
        }
    }

    #[test]
    fn weights_and_faults() {
        let healthy = BTreeMap::from([("web".to_owned(), 2), ("db".to_owned(), 1)]);
        let (services, services_rx) = watch::channel(healthy.clone());
        let up = BTreeMap::from([("eth0".to_owned(), true), ("uplink".to_owned(), true)]);
        let (links, links_rx) = watch::channel(up);
        let (scripts, scripts_rx) = watch::channel(vec![None]);
        let mut tracker = Tracker::new(&config(), services_rx, links_rx, scripts_rx);
        let verdict = |priority, fault| Verdict { priority, fault };

        // Positive weight added while the interface is up; the script has no result yet.
        assert_eq!(tracker.evaluate(), verdict(110, false));
        scripts.send_replace(vec![Some(false)]);
        assert_eq!(tracker.evaluate(), verdict(60, false));
        scripts.send_replace(vec![Some(true)]);
        links.send_modify(|l| {
            l.insert("uplink".into(), false);
        });
        assert_eq!(tracker.evaluate(), verdict(100, false));
        services.send_modify(|s| {
            s.insert("web".into(), 0);
        });
        assert_eq!(tracker.evaluate(), verdict(80, false));
        // A service missing from the map has no backend up; weight 0 means fault.
        services.send_modify(|s| {
            s.remove("db");
        });
        assert_eq!(tracker.evaluate(), verdict(80, true));
        services.send_replace(healthy);
        // The instance's own interface going down is a fault.
        links.send_modify(|l| {
            l.insert("eth0".into(), false);
        });
        assert!(tracker.evaluate().fault);
    }

    #[test]
    fn adjusted_priority_stays_in_range() {
        let mut low = config();
        low.priority = 10;
        low.track_interfaces.clear();
        low.track_scripts.clear();
        let (_s, services) = watch::channel(BTreeMap::new());
        let up = BTreeMap::from([("eth0".to_owned(), true)]);
        let (_l, links) = watch::channel(up);
        let (_r, scripts) = watch::channel(vec![]);
        let mut tracker = Tracker::new(&low, services, links, scripts);
        // web (-20) fails: 10 - 20 is clamped to 1; db (weight 0) fails too.
        assert_eq!(
            tracker.evaluate(),
            Verdict {
                priority: 1,
                fault: true
            }
        );
    }
}
