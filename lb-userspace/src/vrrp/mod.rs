//! VRRP: the virtual addresses follow the healthiest gerbang (or keepalived) of a pair.
//!
//! Version 3 (RFC 5798 as updated by RFC 9568) and version 2 (RFC 3768, with keepalived's
//! simple password), multicast to 224.0.0.18 or unicast to configured peers. A master
//! adds the virtual addresses to its interface and announces them with gratuitous ARP; a
//! backup, a faulty or a stopping instance removes them. Tracked services, interfaces and
//! scripts move the priority or put an instance in FAULT. Interoperable with keepalived
//! (`vrrp_version 2` or `3`, `auth_type PASS`, `unicast_peer`).
//!
//! - `packet`: the wire format and the checks a received advertisement must pass;
//! - `state`: the RFC state machine, pure;
//! - `instance`: one instance's task, which ties them to the sockets and the kernel;
//! - `socket`, `vip`, `garp`, `track`, `notify`: one concern each.
//!
//! [`VrrpRunner::start`] runs every configured instance on the current tokio runtime;
//! [`VrrpRunner::subscribe`] reports each instance's state, which the controller follows
//! to serve a VIP's services only where the VIP is. Dropping the runner without
//! [`VrrpRunner::stop`] is a crash: the virtual addresses stay where they are.

mod garp;
mod instance;
mod notify;
/// Public for the fuzz targets (`fuzz/`), which feed it arbitrary packets.
pub mod packet;
mod socket;
mod state;
mod track;
mod vip;

use std::{collections::BTreeMap, net::Ipv4Addr, sync::Arc, time::SystemTime};

use anyhow::{Context as _, Result};
use tokio::{sync::watch, task::JoinHandle};
use tracing::error;

pub use packet::DropReason;
pub use state::VrrpState;

use crate::config::VrrpConfig;
use instance::Instance;

/// One instance as it is now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VrrpStatus {
    pub name: String,
    pub interface: String,
    pub virtual_router_id: u8,
    pub state: VrrpState,
    /// As configured.
    pub priority: u8,
    /// As advertised: moved by tracking.
    pub effective_priority: u8,
    /// The master's address, when known: ours while master, the advertising master's while
    /// backup.
    pub master: Option<Ipv4Addr>,
    /// State changes since start.
    pub transitions: u64,
    /// When the current state was entered.
    pub since: SystemTime,
    pub counters: VrrpCounters,
}

impl VrrpStatus {
    fn initial(config: &VrrpConfig) -> VrrpStatus {
        VrrpStatus {
            name: config.name.clone(),
            interface: config.interface.clone(),
            virtual_router_id: config.virtual_router_id,
            state: VrrpState::Init,
            priority: config.priority,
            effective_priority: config.priority,
            master: None,
            transitions: 0,
            since: SystemTime::now(),
            counters: VrrpCounters::default(),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VrrpCounters {
    /// Advertisements accepted (priority 0 included).
    pub adverts_received: u64,
    pub adverts_sent: u64,
    pub priority_zero_received: u64,
    pub priority_zero_sent: u64,
    /// Advertisements the kernel refused to send.
    pub send_errors: u64,
    /// Packets dropped, by reason; never acted upon.
    pub drops: Drops,
}

/// Dropped packets per [`DropReason`].
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Drops([u64; DropReason::ALL.len()]);

impl Drops {
    pub fn get(&self, reason: DropReason) -> u64 {
        self.0[reason as usize]
    }

    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }

    /// Every reason with its count, zeros included.
    pub fn iter(&self) -> impl Iterator<Item = (DropReason, u64)> + '_ {
        DropReason::ALL
            .into_iter()
            .map(|reason| (reason, self.get(reason)))
    }

    fn count(&mut self, reason: DropReason) {
        self.0[reason as usize] += 1;
    }
}

impl std::fmt::Debug for Drops {
    /// The reasons that counted anything, by name.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let counted = self.iter().filter(|&(_, count)| count > 0);
        f.debug_map()
            .entries(counted.map(|(reason, count)| (reason.as_str(), count)))
            .finish()
    }
}

/// Every configured VRRP instance, running.
pub struct VrrpRunner {
    status: watch::Receiver<Vec<VrrpStatus>>,
    stop: watch::Sender<bool>,
    instances: Tasks,
    /// Netlink connections, the link monitor and track scripts: ended after the instances.
    background: Tasks,
}

impl VrrpRunner {
    /// Starts every instance on the current tokio runtime. `service_health` maps a service
    /// name to its number of backends up, for `track_services`.
    ///
    /// Opens every socket from the calling task, so it must run in the network namespace
    /// of the instances' interfaces. Fails, having started nothing, if an interface is
    /// missing, has no IPv4 address, or a virtual address is not on its subnet.
    pub async fn start(
        instances: &[VrrpConfig],
        service_health: watch::Receiver<BTreeMap<String, usize>>,
    ) -> Result<VrrpRunner> {
        let mut background = Tasks::default();
        let (connection, netlink, _) =
            rtnetlink::new_connection().context("opening a netlink socket")?;
        background.0.push(tokio::spawn(connection));
        let (links, link_tasks) = track::watch_links().await?;
        background.0.extend(link_tasks);

        let (status_sender, status) =
            watch::channel(instances.iter().map(VrrpStatus::initial).collect());
        let status_sender = Arc::new(status_sender);
        let mut prepared = Vec::with_capacity(instances.len());
        for (slot, config) in instances.iter().enumerate() {
            let siblings = instances
                .iter()
                .enumerate()
                .filter(|&(other, c)| other != slot && c.interface == config.interface)
                .map(|(_, c)| c.virtual_router_id)
                .collect();
            let status = Arc::clone(&status_sender);
            let instance = Instance::prepare(config, slot, siblings, &netlink, status)
                .await
                .with_context(|| format!("VRRP instance {}", config.name))?;
            prepared.push(instance);
        }

        let (stop, stopped) = watch::channel(false);
        let mut running = Tasks::default();
        for (instance, config) in prepared.into_iter().zip(instances) {
            let (scripts, script_tasks) = track::spawn_scripts(&config.name, &config.track_scripts);
            background.0.extend(script_tasks);
            let tracker =
                track::Tracker::new(config, service_health.clone(), links.clone(), scripts);
            running
                .0
                .push(tokio::spawn(instance.run(tracker, stopped.clone())));
        }
        Ok(VrrpRunner {
            status,
            stop,
            instances: running,
            background,
        })
    }

    /// Every instance's status, in configuration order.
    pub fn status(&self) -> Vec<VrrpStatus> {
        self.status.borrow().clone()
    }

    /// Follows every change of [`VrrpRunner::status`].
    pub fn subscribe(&self) -> watch::Receiver<Vec<VrrpStatus>> {
        self.status.clone()
    }

    /// Stops gracefully: a master sends a priority-0 advertisement so its backup takes
    /// over at once; every instance removes the addresses it added and runs its stop
    /// command.
    pub async fn stop(self) {
        let VrrpRunner {
            stop,
            mut instances,
            background,
            ..
        } = self;
        let _ = stop.send(true);
        for task in instances.0.drain(..) {
            if let Err(error) = task.await {
                error!("a VRRP instance ended abnormally: {error}");
            }
        }
        drop(background);
    }
}

/// Tasks aborted when dropped.
#[derive(Default)]
struct Tasks(Vec<JoinHandle<()>>);

impl Drop for Tasks {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}
