//! The XDP data plane: loads the `lb-ebpf` program, attaches it to the configured
//! interfaces and keeps its maps in line with the controller's [`Plan`].
//!
//! Ownership of the maps is split by who writes them: [`XdpDataplane`] owns the service
//! tables and counters, [`FlowSweeper`] the connection table and [`NextHopResolver`] the
//! next hops, so each can run on its own schedule without locks.

mod attach;
mod counters;
mod debug_log;
mod ids;
mod nexthop;
mod pin;
mod rcu;
mod ring;
mod sweeper;
mod tables;

use std::{io, net::SocketAddrV4};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, DevMapHash, HashMap, Map, MapData},
    programs::{ProgramError, TestRun as _, TestRunOptions, Xdp},
};
use lb_common::{Event, Flow, FlowKey, NextHop, Timeouts, TrafficCounters, XDP_PROGRAM, map_names};
use tracing::{info, warn};

pub use self::{
    attach::{Attachment, interface_index, mode_name},
    nexthop::NextHopResolver,
    pin::PinDir,
    sweeper::{FlowSweeper, Sessions, SweepReport},
};
use self::{counters::CounterMaps, pin::PINNED_MAPS, sweeper::SharedSessions, tables::Tables};
use crate::{
    config::{AttachMode, DataplaneConfig, FlowTimeouts},
    dataplane::{Dataplane, Plan},
};

/// The compiled XDP program, built by `build.rs`. Empty when built with GERBANG_SKIP_EBPF=1.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-ebpf"));

/// The loaded and attached XDP program and the maps the controller writes.
///
/// Dropping it detaches the program from every interface.
pub struct XdpDataplane {
    tables: Tables,
    timeouts: Array<MapData, Timeouts>,
    devices: DevMapHash<MapData>,
    attachments: Vec<Attachment>,
    pins: Option<PinDir>,
    /// Open flows per service and backend at the [`FlowSweeper`]'s last sweep.
    sessions: SharedSessions,
    /// Forwards the program's debug logs while `dataplane.xdp_log_rate` asks for them.
    _log_reader: Option<debug_log::LogReader>,
    /// Owns the program and its links; declared last so it is dropped last.
    ebpf: Ebpf,
}

/// Maps handed to the tasks that maintain them on their own schedule.
pub struct BackgroundMaps {
    pub sweeper: FlowSweeper,
    pub next_hops: HashMap<MapData, u32, NextHop>,
}

/// Traffic counters as the XDP program counted them.
#[derive(Clone, Debug)]
pub struct TrafficReport {
    /// Packets per event, in `Event::ALL` order; they add up to every packet seen.
    pub events: Vec<(Event, u64)>,
    pub services: Vec<ServiceTraffic>,
}

#[derive(Clone, Debug)]
pub struct ServiceTraffic {
    pub name: String,
    pub counters: TrafficCounters,
    /// HAProxy's current sessions: open flows of the service in the XDP connection table
    /// at its last sweep (see [`Sessions`]); open connections and UDP sessions in the
    /// proxy, now.
    pub current_sessions: u64,
    pub backends: Vec<BackendTraffic>,
}

#[derive(Clone, Debug)]
pub struct BackendTraffic {
    pub name: String,
    pub address: SocketAddrV4,
    pub counters: TrafficCounters,
    /// As [`ServiceTraffic::current_sessions`], for flows pinned to this backend (in the
    /// proxy: established with it).
    pub current_sessions: u64,
}

impl TrafficReport {
    pub fn event(&self, event: Event) -> u64 {
        self.events
            .iter()
            .find(|(e, _)| *e == event)
            .map_or(0, |(_, count)| *count)
    }

    pub fn service(&self, name: &str) -> Option<&ServiceTraffic> {
        self.services.iter().find(|s| s.name == name)
    }
}

impl ServiceTraffic {
    pub fn backend(&self, name: &str) -> Option<&BackendTraffic> {
        self.backends.iter().find(|b| b.name == name)
    }
}

impl XdpDataplane {
    /// Loads the program and prepares its maps, attached nowhere yet. No new service is
    /// live until [`Dataplane::apply`].
    ///
    /// With `pins`, the maps are pinned there, or taken over if a previous run pinned them:
    /// its flows, counters and services carry on (see [`PinDir`]).
    pub fn load(
        config: &DataplaneConfig,
        timeouts: &FlowTimeouts,
        pins: Option<PinDir>,
    ) -> Result<(Self, BackgroundMaps)> {
        if OBJECT.is_empty() {
            bail!(
                "this gerbang binary was built without its XDP program (GERBANG_SKIP_EBPF=1); \
                 build it with `cargo xtask build` on a machine with the eBPF toolchain"
            );
        }
        let adopting = pins.as_ref().is_some_and(PinDir::has_maps);
        let pin_paths: Vec<(&str, std::path::PathBuf)> = pins
            .iter()
            .flat_map(|pins| PINNED_MAPS.iter().map(move |name| (*name, pins.map(name))))
            .collect();
        let mut loader = EbpfLoader::new();
        loader
            .map_max_entries(map_names::FLOWS, config.flow_table_size)
            .map_max_entries(map_names::NAT_RETURN, config.flow_table_size)
            .override_global(debug_log::RATE_GLOBAL, &config.xdp_log_rate, true);
        for (name, path) in &pin_paths {
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = loader.load(OBJECT).map_err(|err| kernel_refused(&err))?;

        let timeouts = kernel_timeouts(timeouts);
        let mut timeouts_map: Array<MapData, Timeouts> = take_map(&mut ebpf, map_names::TIMEOUTS)?;
        timeouts_map.set(0, timeouts, 0)?;

        program_mut(&mut ebpf)?
            .load()
            .map_err(|err| kernel_refused(&err))?;
        let log_reader = match config.xdp_log_rate {
            0 => None,
            rate => Some(debug_log::LogReader::start(&mut ebpf, rate)?),
        };

        let counters = CounterMaps::new(
            take_map(&mut ebpf, map_names::EVENTS)?,
            take_map(&mut ebpf, map_names::SERVICE_STATS)?,
            take_map(&mut ebpf, map_names::BACKEND_STATS)?,
        );
        let mut tables = Tables::new(
            counters,
            take_map(&mut ebpf, map_names::SERVICES)?,
            take_map(&mut ebpf, map_names::LOCAL_ADDRS)?,
            take_map(&mut ebpf, map_names::RING_SELECT)?,
            take_map(&mut ebpf, map_names::RINGS)?,
            take_map(&mut ebpf, map_names::BACKENDS)?,
        );
        let flows: HashMap<MapData, FlowKey, Flow> = take_map(&mut ebpf, map_names::FLOWS)?;
        if adopting {
            warn_on_resize(&flows, config.flow_table_size);
            let services = tables.adopt()?;
            info!(
                services,
                "took over the maps of the previous run: flows carry on"
            );
        }
        let sessions = SharedSessions::default();
        let background = BackgroundMaps {
            sweeper: FlowSweeper::new(
                flows,
                take_map(&mut ebpf, map_names::NAT_RETURN)?,
                sessions.clone(),
            ),
            next_hops: take_map(&mut ebpf, map_names::NEXT_HOPS)?,
        };
        let dataplane = Self {
            tables,
            timeouts: timeouts_map,
            devices: take_map(&mut ebpf, map_names::DEVICES)?,
            attachments: Vec::new(),
            pins,
            sessions,
            _log_reader: log_reader,
            ebpf,
        };
        Ok((dataplane, background))
    }

    /// Makes the program attached to exactly `interfaces` and lets it redirect between
    /// them: attaches where it is missing, detaches where it is no longer wanted (also
    /// attachments a previous run pinned).
    pub fn attach(&mut self, interfaces: &[String], mode: AttachMode) -> Result<()> {
        let unwanted: Vec<String> = self
            .attachments
            .iter()
            .map(|a| a.interface.clone())
            .filter(|name| !interfaces.contains(name))
            .collect();
        for interface in unwanted {
            self.detach(&interface)?;
            info!(%interface, "detached: no longer in dataplane.interfaces");
        }
        if let Some(pins) = &self.pins {
            for stale in pins.pinned_links()? {
                if !interfaces.contains(&stale) {
                    std::fs::remove_file(pins.link(&stale))?;
                    info!(interface = %stale, "detached: no longer in dataplane.interfaces");
                }
            }
        }
        let program = program_mut(&mut self.ebpf)?;
        for interface in interfaces {
            if self.attachments.iter().any(|a| &a.interface == interface) {
                continue;
            }
            let attachment = attach::attach(program, interface, mode, self.pins.as_ref())?;
            self.devices
                .insert(attachment.ifindex, attachment.ifindex, None, 0)
                .with_context(|| format!("adding {interface} to the redirect map"))?;
            self.attachments.push(attachment);
        }
        Ok(())
    }

    /// Runs the program once on `frame` as if it arrived on `ingress_ifindex` (0: loopback)
    /// through BPF_PROG_TEST_RUN, for tests and fuzzing. Returns the XDP action and the
    /// frame as the program left it.
    pub fn test_run(&self, frame: &[u8], ingress_ifindex: u32) -> Result<(u32, Vec<u8>)> {
        let program: &Xdp = self
            .ebpf
            .program(XDP_PROGRAM)
            .ok_or_else(|| anyhow!("the XDP object has no program {XDP_PROGRAM}"))?
            .try_into()?;
        // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index,
        // egress_ifindex. The kernel wants data_end equal to the frame length.
        let mut context = [0u32; 6];
        context[1] = u32::try_from(frame.len())?;
        context[3] = ingress_ifindex;
        let context: Vec<u8> = context.iter().flat_map(|w| w.to_ne_bytes()).collect();
        // Room for the program to grow the frame, as BPF_PROG_TEST_RUN allows.
        let mut out = vec![0u8; frame.len() + 256];
        let result = program.test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ctx_in: Some(&context),
            ..TestRunOptions::new()
        })?;
        out.truncate(result.data_size_out as usize);
        Ok((result.return_value, out))
    }

    /// Makes the program (and callers of [`FlowSweeper::sweep`] with the result) age flows
    /// by `timeouts`.
    pub fn set_timeouts(&mut self, timeouts: &FlowTimeouts) -> Result<Timeouts> {
        let timeouts = kernel_timeouts(timeouts);
        self.timeouts.set(0, timeouts, 0)?;
        Ok(timeouts)
    }

    /// Detaches the program from `interface` (removed from the configuration by a reload).
    pub fn detach(&mut self, interface: &str) -> Result<()> {
        if let Some(index) = self
            .attachments
            .iter()
            .position(|a| a.interface == interface)
        {
            let attachment = self.attachments.remove(index);
            let _ = self.devices.remove(attachment.ifindex);
            attachment.release(true)?;
        }
        Ok(())
    }

    pub fn attachments(&self) -> &[Attachment] {
        &self.attachments
    }

    /// Stops: with `detach`, detaches the program everywhere and removes every pin (the next
    /// start is a cold one); without, leaves it attached and forwarding from the pinned
    /// maps for the next controller to take over.
    pub fn close(self, detach: bool) -> Result<()> {
        let Self {
            tables,
            timeouts,
            devices,
            attachments,
            pins,
            sessions: _,
            _log_reader,
            ebpf,
        } = self;
        for attachment in attachments {
            attachment.release(detach)?;
        }
        if detach && let Some(pins) = &pins {
            pins.remove_all()?;
        }
        drop((tables, timeouts, devices, ebpf));
        Ok(())
    }

    /// The counters of every installed service and backend, summed over CPUs, and their
    /// current sessions as of the last sweep.
    pub fn traffic(&self) -> Result<TrafficReport> {
        let counters = self.tables.counters();
        let sessions = self
            .sessions
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        let services = self
            .tables
            .installed()
            .into_iter()
            .map(|service| {
                let backends = service
                    .backends
                    .iter()
                    .map(|(name, address, id)| {
                        Ok(BackendTraffic {
                            name: name.clone(),
                            address: *address,
                            counters: counters.backend(*id)?,
                            current_sessions: sessions.backend(*id),
                        })
                    })
                    .collect::<Result<_>>()?;
                Ok(ServiceTraffic {
                    counters: counters.service(service.id)?,
                    current_sessions: sessions.service(service.id),
                    name: service.name,
                    backends,
                })
            })
            .collect::<Result<_>>()?;
        Ok(TrafficReport {
            events: counters.events()?,
            services,
        })
    }
}

impl Dataplane for XdpDataplane {
    fn apply(&mut self, plan: &Plan) -> Result<()> {
        self.tables.apply(plan)
    }
}

/// The XDP program's form of the configured timeouts.
pub fn kernel_timeouts(timeouts: &FlowTimeouts) -> Timeouts {
    let ns = |d: std::time::Duration| d.as_nanos().min(u128::from(u64::MAX)) as u64;
    Timeouts {
        tcp_syn_ns: ns(timeouts.tcp_syn),
        tcp_established_ns: ns(timeouts.tcp_established),
        tcp_closing_ns: ns(timeouts.tcp_closing),
        udp_ns: ns(timeouts.udp),
    }
}

fn program_mut(ebpf: &mut Ebpf) -> Result<&mut Xdp> {
    Ok(ebpf
        .program_mut(XDP_PROGRAM)
        .ok_or_else(|| anyhow!("the XDP object has no program {XDP_PROGRAM}"))?
        .try_into()?)
}

fn warn_on_resize(flows: &HashMap<MapData, FlowKey, Flow>, wanted: u32) {
    if let Ok(info) = aya::maps::IterableMap::map(flows).info()
        && info.max_entries() != wanted
    {
        {
            warn!(
                kept = info.max_entries(),
                configured = wanted,
                "dataplane.flow_table_size changed: the running table is kept so no flow is \
                 lost; stop gerbang (SIGTERM) and start it again to resize"
            );
        }
    }
}

/// Takes a map out of the object, typed.
fn take_map<T>(ebpf: &mut Ebpf, name: &str) -> Result<T>
where
    T: TryFrom<Map, Error = aya::maps::MapError>,
{
    let map = ebpf
        .take_map(name)
        .ok_or_else(|| anyhow!("the XDP object has no map {name}"))?;
    T::try_from(map).with_context(|| format!("map {name} has an unexpected type"))
}

/// One paragraph for an operator whose kernel would not load the program.
fn kernel_refused(err: &(dyn std::error::Error + 'static)) -> anyhow::Error {
    let permission = error_chain_errno(err) == Some(libc::EPERM);
    if permission {
        return anyhow!(
            "the kernel refused to load gerbang's XDP program: permission denied ({err}). \
             Run gerbang as root, or give it CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON"
        );
    }
    anyhow!(
        "this kernel could not load gerbang's XDP program: {err}. The XDP data plane needs \
         Linux 5.16 or newer built with BPF and XDP support (CONFIG_BPF_SYSCALL, \
         CONFIG_BPF_JIT; see `zcat /proc/config.gz | grep BPF`). On kernels without XDP, such \
         as 32-bit Raspberry Pi kernels, set dataplane.mode = \"userspace\" (or \"auto\") \
         and gerbang runs as a userspace proxy"
    )
}

fn error_chain_errno(err: &(dyn std::error::Error + 'static)) -> Option<i32> {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = current {
        if let Some(io) = e.downcast_ref::<io::Error>() {
            return io.raw_os_error();
        }
        if let Some(ProgramError::SyscallError(syscall)) = e.downcast_ref::<ProgramError>() {
            return syscall.io_error.raw_os_error();
        }
        current = e.source();
    }
    None
}
