//! The controller: starts the data plane from a configuration, keeps it in line with
//! health checks, the operator's commands and reloads, and stops it.
//!
//! One task owns all state ([`core::Core`]); everything else (signals, the control socket,
//! tests) talks to it through [`Controller`], a handle that sends it commands. The
//! background tasks in [`tasks`] own the maps they maintain.

mod admin_store;
mod core;
mod dataplane;
mod tasks;

use std::{collections::BTreeMap, net::SocketAddr, path::Path, time::Duration, time::SystemTime};

use anyhow::{Context as _, Result, anyhow};
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::{mpsc, oneshot},
    task::JoinHandle,
};
use tracing::{error, info, warn};

use crate::{
    config::Config,
    control::{self, ControlServer},
    dataplane::{
        AdminState, BackendKey,
        xdp::{SweepReport, TrafficReport},
    },
    health::BackendHealth,
    observe::{self, HttpServer},
    privileges,
};

use self::core::Core;

/// How the controller stops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopMode {
    /// Detach the program everywhere and remove its pins (SIGTERM, SIGINT).
    Detach,
    /// Leave the program attached and forwarding from its pinned maps, for the next
    /// controller (a restart or an upgrade) to take over without losing a flow (SIGUSR2).
    KeepForwarding,
}

/// What the controller knows, for the status page, metrics, `gerbang status` and tests.
/// Built on demand: nothing is counted per packet in userspace.
#[derive(Clone, Debug)]
pub struct Status {
    /// gerbang's version.
    pub version: &'static str,
    pub started: SystemTime,
    /// `"xdp"` (the userspace proxy will say `"userspace"`).
    pub dataplane: &'static str,
    /// (interface, attach mode: "native", "generic" or "taken over").
    pub attachments: Vec<(String, &'static str)>,
    pub plan: crate::dataplane::Plan,
    /// Backends an operator drained or put in maintenance; the rest are ready.
    pub admin: BTreeMap<BackendKey, AdminState>,
    pub health: Vec<BackendHealth>,
    pub traffic: TrafficReport,
    /// What the last sweep of the connection table found (live flows).
    pub flows: SweepReport,
    pub flow_table_size: u32,
    /// How long applying a plan to the data path took.
    pub updates: UpdateLatency,
    /// Every VRRP instance, in configuration order.
    pub vrrp: Vec<crate::vrrp::VrrpStatus>,
    /// The running configuration: services not live here (a VRRP peer holds their VIP),
    /// backup flags, virtual addresses. It holds secrets (`auth_password`): show only
    /// chosen fields of it, as `observe::StatusView` does.
    pub config: Config,
}

/// Durations of data-path updates (plan applies), for a histogram.
#[derive(Clone, Debug, Default)]
pub struct UpdateLatency {
    pub count: u64,
    pub sum: Duration,
    pub max: Duration,
    /// Cumulative counts of updates that took at most each bound in [`UPDATE_BUCKETS`].
    pub buckets: Vec<u64>,
}

/// Upper bounds of the update-latency histogram, in seconds.
pub const UPDATE_BUCKETS: [f64; 8] = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.01, 0.05, 0.25];

impl UpdateLatency {
    pub fn record(&mut self, took: Duration) {
        if self.buckets.len() != UPDATE_BUCKETS.len() {
            self.buckets = vec![0; UPDATE_BUCKETS.len()];
        }
        self.count += 1;
        self.sum += took;
        self.max = self.max.max(took);
        for (bucket, bound) in self.buckets.iter_mut().zip(UPDATE_BUCKETS) {
            if took.as_secs_f64() <= bound {
                *bucket += 1;
            }
        }
    }
}

enum Command {
    Traffic(oneshot::Sender<Result<TrafficReport>>),
    Status(oneshot::Sender<Result<Status>>),
    Reload(oneshot::Sender<Result<String>>),
    SetAdmin {
        service: String,
        backend: String,
        state: AdminState,
        reply: oneshot::Sender<Result<String>>,
    },
    Stop(StopMode, oneshot::Sender<Result<()>>),
}

/// The running controller: stop it through this.
pub struct Controller {
    handle: ControllerHandle,
    main: JoinHandle<()>,
    /// The status page and metrics, unless `[http]` disables them.
    http: Option<observe::Serving>,
}

/// A cloneable way to ask the running controller things (the status page, metrics and the
/// signal handler each hold one).
#[derive(Clone)]
pub struct ControllerHandle {
    commands: mpsc::Sender<Command>,
}

impl Controller {
    /// Loads (or takes over) the data plane, runs the first health checks and makes the
    /// configured services live. `config_path` is what reloads read again.
    ///
    /// Must run in the network namespace of the configured interfaces (netlink sockets and
    /// interface names belong to the namespace of the thread that opens them).
    pub async fn start(config: Config, config_path: Option<&Path>) -> Result<Controller> {
        let http = config
            .http
            .enabled
            .then(|| HttpServer::bind(config.http.listen))
            .transpose()?;
        let (control, control_requests) = ControlServer::start(&config.control.socket)?;
        let core = match Core::start(config, config_path.map(Path::to_path_buf)).await {
            Ok(core) => core,
            Err(err) => {
                control.stop();
                return Err(err);
            }
        };
        let (commands, inbox) = mpsc::channel(32);
        let main = tokio::spawn(core.run(inbox, control_requests, control));
        let handle = ControllerHandle { commands };
        let http = http.map(|server| server.serve(handle.clone()));
        Ok(Controller { handle, main, http })
    }

    pub fn handle(&self) -> ControllerHandle {
        self.handle.clone()
    }

    /// Where the status page and metrics listen (the port chosen, if configured as 0).
    pub fn http_address(&self) -> Option<SocketAddr> {
        self.http.as_ref().map(observe::Serving::address)
    }

    pub async fn traffic(&self) -> Result<TrafficReport> {
        self.handle.traffic().await
    }

    pub async fn status(&self) -> Result<Status> {
        self.handle.status().await
    }

    pub async fn reload(&self) -> Result<String> {
        self.handle.reload().await
    }

    pub async fn set_admin(
        &self,
        service: &str,
        backend: &str,
        state: AdminState,
    ) -> Result<String> {
        self.handle.set_admin(service, backend, state).await
    }

    pub async fn stop(self, mode: StopMode) -> Result<()> {
        drop(self.http);
        let result = self.handle.ask(|reply| Command::Stop(mode, reply)).await;
        let _ = self.main.await;
        result?
    }
}

impl ControllerHandle {
    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(make(reply))
            .await
            .map_err(|_| anyhow!("the controller has stopped"))?;
        answer
            .await
            .map_err(|_| anyhow!("the controller has stopped"))
    }

    /// The XDP program's counters.
    pub async fn traffic(&self) -> Result<TrafficReport> {
        self.ask(Command::Traffic).await?
    }

    pub async fn status(&self) -> Result<Status> {
        self.ask(Command::Status).await?
    }

    /// Reads the configuration file again and applies what changed; on an invalid file the
    /// running configuration stays and the error is returned.
    pub async fn reload(&self) -> Result<String> {
        self.ask(Command::Reload).await?
    }

    pub async fn set_admin(
        &self,
        service: &str,
        backend: &str,
        state: AdminState,
    ) -> Result<String> {
        self.ask(|reply| Command::SetAdmin {
            service: service.to_string(),
            backend: backend.to_string(),
            state,
            reply,
        })
        .await?
    }
}

/// `gerbang run`: start from the config file and run until a signal says otherwise.
///
/// SIGINT/SIGTERM stop and detach; SIGUSR2 stops and leaves the program forwarding for the
/// next gerbang to take over (restart, upgrade); SIGHUP reloads the file.
///
/// Once started, it keeps only the capabilities it still uses (see [`privileges`]), and
/// those in `keep` as well.
pub async fn run(config_path: &Path, keep: privileges::CapSet) -> Result<()> {
    let config = Config::load(config_path)?;
    privileges::check()?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let mut hangup = signal(SignalKind::hangup())?;
    let mut upgrade = signal(SignalKind::user_defined2())?;
    let vrrp = !config.vrrp.is_empty();
    let controller = Controller::start(config, Some(config_path)).await?;
    if let Err(err) = drop_privileges(&controller, vrrp, keep).await {
        let _ = controller.stop(StopMode::Detach).await;
        return Err(err);
    }
    info!(
        config = %config_path.display(),
        "gerbang running; SIGHUP reloads, SIGTERM stops, SIGUSR2 exits leaving traffic flowing"
    );
    let mode = loop {
        tokio::select! {
            _ = interrupt.recv() => { info!("SIGINT received, stopping"); break StopMode::Detach }
            _ = terminate.recv() => { info!("SIGTERM received, stopping"); break StopMode::Detach }
            _ = upgrade.recv() => {
                info!("SIGUSR2 received: exiting, the XDP program keeps forwarding");
                break StopMode::KeepForwarding;
            }
            _ = hangup.recv() => {
                info!("SIGHUP received, reloading");
                if let Err(err) = controller.reload().await {
                    error!("reload refused, the running configuration stays: {err:#}");
                }
            }
        }
    };
    controller.stop(mode).await
}

/// Keeps the capabilities the started controller still uses, and `extra`; logs them.
async fn drop_privileges(
    controller: &Controller,
    vrrp: bool,
    extra: privileges::CapSet,
) -> Result<()> {
    let xdp = controller.status().await?.dataplane == "xdp";
    let running = privileges::Running {
        xdp,
        vrrp,
        bpf_calls_need_cap_bpf: xdp && privileges::bpf_calls_need_cap_bpf(),
    };
    let needs = privileges::runtime_needs(running);
    let wanted = needs
        .keys()
        .fold(privileges::CapSet::EMPTY, |set, cap| {
            set.union(privileges::CapSet::of(&[*cap]))
        })
        .union(extra);
    let restricted = privileges::restrict(wanted).context("dropping capabilities")?;
    let why: Vec<String> = needs
        .iter()
        .map(|(cap, reasons)| format!("{cap}: {}", reasons.join(", ")))
        .chain(extra.iter().map(|cap| format!("{cap}: --keep-capability")))
        .collect();
    info!(
        kept = %restricted.kept,
        bounding = %restricted.bounding,
        threads = restricted.threads,
        no_new_privs = true,
        "capabilities dropped to what the running controller uses{}{}",
        if why.is_empty() { "" } else { ": " },
        why.join("; ")
    );
    if restricted.bounding != restricted.kept {
        warn!(
            bounding = %restricted.bounding,
            "the bounding set could not be narrowed (started without CAP_SETPCAP); \
             no_new_privs still keeps programs run by VRRP to the kept set"
        );
    }
    if !restricted.unreachable.is_empty() {
        warn!(
            threads = restricted.unreachable.join(", "),
            "threads that block signals kept their capabilities: not gerbang's own (an \
             emulator's, such as qemu-user's)"
        );
    }
    if !restricted.missing.is_empty() {
        warn!(
            missing = %restricted.missing,
            "started without capabilities the running controller uses: the operations \
             that need them will fail"
        );
    }
    Ok(())
}

/// `gerbang backend ...` and `gerbang reload`: one request to a running gerbang.
pub fn send_command(socket: &Path, request: &control::Request) -> Result<String> {
    control::send(socket, request).with_context(|| format!("via {}", socket.display()))
}

/// How long start-up waits for first health verdicts, beyond the slowest check's timeout.
const FIRST_VERDICT_SLACK: Duration = Duration::from_millis(500);
