//! Running gerbang for a test: in-process inside a namespace (to read its counters), or as
//! the real binary under `ip netns exec`.

use std::{
    path::PathBuf,
    sync::mpsc as std_mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};
use gerbang::{
    config::Config,
    controller::Controller,
    dataplane::xdp::{SweepReport, TrafficReport},
};
use gerbang_testbed::{Netns, NsThread};
use tokio::sync::{mpsc, oneshot};

enum Request {
    Traffic(oneshot::Sender<Result<TrafficReport>>),
    Sweep(oneshot::Sender<SweepReport>),
    Stop,
}

/// A [`Controller`] running on a thread inside a namespace, with its own runtime.
pub struct InProcess {
    requests: mpsc::UnboundedSender<Request>,
    thread: Option<NsThread<Result<()>>>,
}

impl InProcess {
    /// Parses `config` and starts a controller in `ns`; returns once its services are live.
    pub fn start(ns: &Netns, config: &str) -> Result<InProcess> {
        let config = Config::parse(config, "<test config>")?;
        let (requests, mut inbox) = mpsc::unbounded_channel();
        let (ready_tx, ready_rx) = std_mpsc::sync_channel(1);
        let thread = ns.spawn_thread("gerbang", move || -> Result<()> {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async move {
                let controller = match Controller::start(&config).await {
                    Ok(controller) => {
                        let _ = ready_tx.send(Ok(()));
                        controller
                    }
                    Err(err) => {
                        let _ = ready_tx.send(Err(err));
                        return Ok(());
                    }
                };
                while let Some(request) = inbox.recv().await {
                    match request {
                        Request::Traffic(reply) => {
                            let _ = reply.send(controller.traffic());
                        }
                        Request::Sweep(reply) => {
                            let _ = reply.send(controller.last_sweep());
                        }
                        Request::Stop => break,
                    }
                }
                controller.stop().await
            })
        })?;
        ready_rx
            .recv_timeout(Duration::from_secs(20))
            .context("gerbang did not start within 20 s")??;
        Ok(InProcess {
            requests,
            thread: Some(thread),
        })
    }

    pub fn traffic(&self) -> TrafficReport {
        let (reply, answer) = oneshot::channel();
        self.requests.send(Request::Traffic(reply)).unwrap();
        answer.blocking_recv().unwrap().unwrap()
    }

    pub fn last_sweep(&self) -> SweepReport {
        let (reply, answer) = oneshot::channel();
        self.requests.send(Request::Sweep(reply)).unwrap();
        answer.blocking_recv().unwrap()
    }

    /// Stops the controller (detaching the program) and waits for it.
    pub fn stop(mut self) -> Result<()> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<()> {
        let Some(thread) = self.thread.take() else {
            return Ok(());
        };
        let _ = self.requests.send(Request::Stop);
        thread.join_timeout(Duration::from_secs(10))?
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

/// The `gerbang` binary under test: `$GERBANG_BIN` (set by `cargo xtask test`), else the
/// one next to this test executable.
pub fn binary() -> PathBuf {
    if let Some(path) = std::env::var_os("GERBANG_BIN") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> -> target/<profile>/gerbang
    exe.parent()
        .and_then(|deps| deps.parent())
        .map(|profile| profile.join("gerbang"))
        .expect("target directory layout")
}

/// Polls `probe` until it succeeds or `timeout` passes.
pub fn wait_until<T>(timeout: Duration, mut probe: impl FnMut() -> Result<T>) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        match probe() {
            Ok(value) => return Ok(value),
            Err(err) if Instant::now() >= deadline => {
                return Err(anyhow!("still failing after {timeout:?}: {err:#}"));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// TCP segments the kernel of `ns` has received (`Tcp: InSegs` in /proc/net/snmp).
pub fn tcp_segments_received(ns: &Netns) -> Result<u64> {
    snmp_counter(ns, "Tcp:", "InSegs")
}

fn snmp_counter(ns: &Netns, group: &str, name: &str) -> Result<u64> {
    let snmp = ns.exec("cat", ["/proc/net/snmp"])?;
    let mut lines = snmp.lines().filter(|line| line.starts_with(group));
    let (names, values) = match (lines.next(), lines.next()) {
        (Some(names), Some(values)) => (names, values),
        _ => bail!("no {group} lines in /proc/net/snmp"),
    };
    let column = names
        .split_whitespace()
        .position(|n| n == name)
        .ok_or_else(|| anyhow!("no {group} {name} column"))?;
    values
        .split_whitespace()
        .nth(column)
        .ok_or_else(|| anyhow!("short {group} line"))?
        .parse()
        .with_context(|| format!("parsing {group} {name}"))
}
