//! The data plane the controller runs: the XDP program where it can, the userspace proxy
//! where it cannot (`dataplane.mode`). Both take the same [`Plan`]; what differs is how
//! they start, what runs beside them and how they stop.

use std::net::Ipv4Addr;

use anyhow::{Context as _, Result, bail};
use lb_common::Timeouts;
use tracing::{info, warn};

use super::StopMode;
use crate::{
    config::{AttachMode, Config, DataplaneMode, FlowTimeouts},
    dataplane::{
        Dataplane as _, Plan,
        proxy::{ProxyDataplane, ProxyOptions, ServiceOptions},
        xdp::{
            FlowSweeper, NextHopResolver, PinDir, TrafficReport, XdpDataplane, interface_index,
            mode_name,
        },
    },
};

/// The XDP side is boxed: it is much larger than the proxy's handle, and there is one.
pub enum ActiveDataplane {
    Xdp(Box<XdpDataplane>),
    Userspace(ProxyDataplane),
}

/// What the XDP data plane needs running beside it.
pub struct XdpCompanions {
    pub resolver: NextHopResolver,
    pub sweeper: FlowSweeper,
    pub netlink: tokio::task::JoinHandle<()>,
}

impl ActiveDataplane {
    /// Starts the data plane `config.dataplane.mode` asks for. `auto` tries XDP and falls
    /// back to the userspace proxy, saying why.
    pub async fn start(
        config: &Config,
        backends: &[Ipv4Addr],
    ) -> Result<(ActiveDataplane, Option<XdpCompanions>)> {
        match config.dataplane.mode {
            DataplaneMode::Xdp => {
                let (xdp, companions) = start_xdp(config, backends).await?;
                Ok((ActiveDataplane::Xdp(Box::new(xdp)), Some(companions)))
            }
            DataplaneMode::Userspace => Ok((start_userspace(config).await?, None)),
            DataplaneMode::Auto => {
                // A misspelt interface is a mistake in the config, not a kernel without XDP:
                // say so rather than quietly proxying on every address instead.
                for interface in &config.dataplane.interfaces {
                    interface_index(interface)?;
                }
                match start_xdp(config, backends).await {
                    Ok((xdp, companions)) => {
                        Ok((ActiveDataplane::Xdp(Box::new(xdp)), Some(companions)))
                    }
                    Err(err) => {
                        warn!(
                            "XDP is not available here ({err:#}); running the userspace proxy \
                         instead (dataplane.mode = \"auto\")"
                        );
                        Ok((start_userspace(config).await?, None))
                    }
                }
            }
        }
    }

    /// `"xdp"` or `"userspace"`, for status and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            ActiveDataplane::Xdp(_) => "xdp",
            ActiveDataplane::Userspace(_) => "userspace",
        }
    }

    pub fn apply(&mut self, plan: &Plan) -> Result<()> {
        match self {
            ActiveDataplane::Xdp(xdp) => xdp.apply(plan),
            ActiveDataplane::Userspace(proxy) => proxy.apply(plan),
        }
    }

    pub fn traffic(&self) -> Result<TrafficReport> {
        match self {
            ActiveDataplane::Xdp(xdp) => xdp.traffic(),
            ActiveDataplane::Userspace(proxy) => Ok(proxy.traffic()),
        }
    }

    /// (interface, attach mode) of every XDP attachment; none for the proxy.
    pub fn attachments(&self) -> Vec<(String, &'static str)> {
        match self {
            ActiveDataplane::Xdp(xdp) => xdp
                .attachments()
                .iter()
                .map(|a| (a.interface.clone(), a.mode.map_or("taken over", mode_name)))
                .collect(),
            ActiveDataplane::Userspace(_) => Vec::new(),
        }
    }

    /// Readies the data plane for a reload to `new`, before its plan is applied: the
    /// proxy binds the listeners of new or moved services and closes those of services
    /// that went (the XDP program needs nothing). On error nothing has changed.
    pub async fn reconfigure(&mut self, new: &Config) -> Result<()> {
        if let ActiveDataplane::Userspace(proxy) = self {
            proxy.reconfigure(new, &proxy_options(new)).await?;
        }
        Ok(())
    }

    pub fn set_interfaces(&mut self, interfaces: &[String], mode: AttachMode) -> Result<()> {
        match self {
            ActiveDataplane::Xdp(xdp) => xdp.attach(interfaces, mode),
            ActiveDataplane::Userspace(_) => Ok(()),
        }
    }

    /// New idle timeouts; the XDP program's form, for its sweeper, or `None` for the proxy,
    /// which applies them itself.
    pub fn set_timeouts(&mut self, timeouts: &FlowTimeouts) -> Result<Option<Timeouts>> {
        match self {
            ActiveDataplane::Xdp(xdp) => xdp.set_timeouts(timeouts).map(Some),
            ActiveDataplane::Userspace(proxy) => {
                proxy.set_timeouts(timeouts);
                Ok(None)
            }
        }
    }

    pub async fn close(self, mode: StopMode) -> Result<()> {
        match self {
            ActiveDataplane::Xdp(xdp) => xdp.close(mode == StopMode::Detach),
            ActiveDataplane::Userspace(proxy) => {
                if mode == StopMode::KeepForwarding {
                    warn!("the userspace proxy cannot keep forwarding without its process");
                }
                proxy.stop().await;
                Ok(())
            }
        }
    }
}

async fn start_xdp(
    config: &Config,
    backends: &[Ipv4Addr],
) -> Result<(XdpDataplane, XdpCompanions)> {
    if config.dataplane.interfaces.is_empty() {
        bail!("dataplane.interfaces is empty: the XDP program needs interfaces to attach to");
    }
    let pins = PinDir::prepare(&config.dataplane.pin_path)?;
    let fresh = !pins.has_maps();
    let (mut xdp, background) =
        XdpDataplane::load(&config.dataplane, &config.timeouts, Some(pins.clone()))?;
    if let Err(err) = xdp.attach(&config.dataplane.interfaces, config.dataplane.attach) {
        // A fresh start leaves nothing behind for the next start (or the proxy) to trip
        // on; a take-over keeps the previous run's pins, which still carry its traffic.
        if fresh {
            let _ = xdp.close(true);
        }
        return Err(err);
    }
    let (connection, netlink, _) =
        rtnetlink::new_connection().context("opening a netlink socket")?;
    let netlink_task = tokio::spawn(connection);
    let mut resolver = NextHopResolver::new(netlink, background.next_hops);
    super::tasks::resolve_before_going_live(&mut resolver, backends).await?;
    Ok((
        xdp,
        XdpCompanions {
            resolver,
            sweeper: background.sweeper,
            netlink: netlink_task,
        },
    ))
}

/// The proxy's per-service options, from the configuration.
fn proxy_options(config: &Config) -> ProxyOptions {
    ProxyOptions {
        services: config
            .services
            .iter()
            .map(|s| {
                let options = ServiceOptions {
                    max_connections: s.max_connections,
                    send_proxy_v2: s.send_proxy_v2,
                };
                (s.name.clone(), options)
            })
            .collect(),
        ..ProxyOptions::default()
    }
}

async fn start_userspace(config: &Config) -> Result<ActiveDataplane> {
    let proxy = ProxyDataplane::start_with(config, &proxy_options(config)).await?;
    info!("userspace proxy listening on every service");
    Ok(ActiveDataplane::Userspace(proxy))
}
