//! Running gerbang for a test: in-process inside a namespace (to read its counters), or as
//! the real binary under `ip netns exec`.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU32, Ordering},
        mpsc as std_mpsc,
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};
use gerbang::{
    config::Config,
    controller::{Controller, Status, StopMode},
    dataplane::{AdminState, BackendState, ServicePlan, xdp::TrafficReport},
};
use gerbang_testbed::{Backend, Netns, NsThread};
use tokio::sync::{mpsc, oneshot};

enum Request {
    Traffic(oneshot::Sender<Result<TrafficReport>>),
    Status(oneshot::Sender<Result<Status>>),
    Reload(oneshot::Sender<Result<String>>),
    SetAdmin(String, String, AdminState, oneshot::Sender<Result<String>>),
    Stop(StopMode),
}

/// A [`Controller`] running on a thread inside a namespace, with its own runtime.
pub struct InProcess {
    requests: mpsc::UnboundedSender<Request>,
    thread: Option<NsThread<Result<()>>>,
    /// Where its status page and metrics listen, in its namespace.
    http: Option<SocketAddr>,
}

impl InProcess {
    /// Parses `config` and starts a controller in `ns`; returns once its services are live.
    /// The test gets its own pin directory and control socket (see [`isolate`]).
    pub fn start(ns: &Netns, config: &str) -> Result<InProcess> {
        let text = isolate(config);
        let config = Config::parse(&text, "<test config>")?;
        Self::start_parsed(ns, config, None)
    }

    /// Starts from a file, which reloads read again; the file should come from [`isolate`].
    pub fn start_file(ns: &Netns, path: &Path) -> Result<InProcess> {
        let config = Config::load(path)?;
        Self::start_parsed(ns, config, Some(path.to_path_buf()))
    }

    fn start_parsed(ns: &Netns, config: Config, path: Option<PathBuf>) -> Result<InProcess> {
        let (requests, mut inbox) = mpsc::unbounded_channel();
        let (ready_tx, ready_rx) = std_mpsc::sync_channel(1);
        let thread = ns.spawn_thread("gerbang", move || -> Result<()> {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async move {
                let controller = match Controller::start(config, path.as_deref()).await {
                    Ok(controller) => {
                        let _ = ready_tx.send(Ok(controller.http_address()));
                        controller
                    }
                    Err(err) => {
                        let _ = ready_tx.send(Err(err));
                        return Ok(());
                    }
                };
                let mut mode = StopMode::Detach;
                while let Some(request) = inbox.recv().await {
                    match request {
                        Request::Traffic(reply) => {
                            let _ = reply.send(controller.traffic().await);
                        }
                        Request::Status(reply) => {
                            let _ = reply.send(controller.status().await);
                        }
                        Request::Reload(reply) => {
                            let _ = reply.send(controller.reload().await);
                        }
                        Request::SetAdmin(service, backend, state, reply) => {
                            let _ =
                                reply.send(controller.set_admin(&service, &backend, state).await);
                        }
                        Request::Stop(how) => {
                            mode = how;
                            break;
                        }
                    }
                }
                controller.stop(mode).await
            })
        })?;
        let http = ready_rx
            .recv_timeout(Duration::from_secs(20))
            .context("gerbang did not start within 20 s")??;
        Ok(InProcess {
            requests,
            thread: Some(thread),
            http,
        })
    }

    fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Request) -> T {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(make(reply))
            .expect("controller thread alive");
        answer.blocking_recv().expect("controller answered")
    }

    /// Where the status page and metrics listen (inside the namespace), unless disabled.
    pub fn http_address(&self) -> Option<SocketAddr> {
        self.http
    }

    pub fn traffic(&self) -> TrafficReport {
        self.ask(Request::Traffic).unwrap()
    }

    pub fn status(&self) -> Status {
        self.ask(Request::Status).unwrap()
    }

    /// The applied plan of `service`.
    pub fn service_plan(&self, service: &str) -> ServicePlan {
        self.status()
            .plan
            .services
            .into_iter()
            .find(|s| s.name == service)
            .unwrap_or_else(|| panic!("no service {service} in the plan"))
    }

    /// `service/backend`'s state in the applied plan.
    pub fn backend_state(&self, service: &str, backend: &str) -> BackendState {
        self.service_plan(service)
            .backends
            .iter()
            .find(|b| b.name == backend)
            .unwrap_or_else(|| panic!("no backend {service}/{backend}"))
            .state
    }

    /// Waits until the applied plan shows `service/backend` in `state`; when it was seen.
    pub fn wait_for_backend_state(
        &self,
        service: &str,
        backend: &str,
        state: BackendState,
    ) -> Instant {
        wait_until(Duration::from_secs(20), || {
            let now = self.backend_state(service, backend);
            if now == state {
                Ok(Instant::now())
            } else {
                Err(anyhow!(
                    "{service}/{backend} is {now:?}, waiting for {state:?}"
                ))
            }
        })
        .unwrap()
    }

    pub fn reload(&self) -> Result<String> {
        self.ask(Request::Reload)
    }

    pub fn set_admin(&self, service: &str, backend: &str, state: AdminState) -> Result<String> {
        self.ask(|reply| Request::SetAdmin(service.into(), backend.into(), state, reply))
    }

    /// Stops the controller (detaching the program) and waits for it.
    pub fn stop(mut self) -> Result<()> {
        self.shutdown(StopMode::Detach)
    }

    /// Stops the controller but leaves the program forwarding, as SIGUSR2 does.
    pub fn stop_keep_forwarding(mut self) -> Result<()> {
        self.shutdown(StopMode::KeepForwarding)
    }

    fn shutdown(&mut self, mode: StopMode) -> Result<()> {
        let Some(thread) = self.thread.take() else {
            return Ok(());
        };
        let _ = self.requests.send(Request::Stop(mode));
        thread.join_timeout(Duration::from_secs(10))?
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        let _ = self.shutdown(StopMode::Detach);
    }
}

/// A bpffs mounted outside /sys, so that pins made by a gerbang under `ip netns exec`
/// (which remounts /sys privately) outlive it, as a restart test needs.
const TEST_BPFFS: &str = "/run/gerbang-test-bpf";

static NEXT_ISOLATION: AtomicU32 = AtomicU32::new(0);

/// `config` with a pin directory, a control socket and an HTTP port of its own, so tests
/// running at the same time never share them. Both paths go under directories that are
/// removed with the namespace-free state of the test (pins are removed by a detaching
/// stop); the HTTP port is any free one ([`InProcess::http_address`]), unless `config` has
/// its own `[http]`.
pub fn isolate(config: &str) -> String {
    let dir = test_dir();
    let pin = Path::new(TEST_BPFFS).join(dir.file_name().unwrap());
    let socket = dir.join("control.sock");
    let config = config.replacen(
        "[dataplane]\n",
        &format!("[dataplane]\npin_path = \"{}\"\n", pin.display()),
        1,
    );
    let http = if config.contains("[http]") {
        ""
    } else {
        "\n[http]\nlisten = \"127.0.0.1:0\"\n"
    };
    format!(
        "{config}\n[control]\nsocket = \"{}\"\n{http}",
        socket.display()
    )
}

/// `[[service.backend]]` entries for `backends` at `port`, each named after its backend
/// (`b0`, `b1`, ...), to follow a `[[service]]` table.
pub fn backend_entries(backends: &[Backend], port: u16) -> String {
    backends
        .iter()
        .map(|b| {
            format!(
                "  [[service.backend]]\n  name = \"{}\"\n  address = \"{}:{port}\"\n",
                b.name(),
                b.addr
            )
        })
        .collect()
}

/// A directory unique to this call under /run.
fn test_dir() -> PathBuf {
    mount_test_bpffs();
    let n = NEXT_ISOLATION.fetch_add(1, Ordering::Relaxed);
    let dir = PathBuf::from(format!("/run/gerbang-test/{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("creating a test directory");
    dir
}

fn mount_test_bpffs() {
    static MOUNTED: std::sync::Once = std::sync::Once::new();
    MOUNTED.call_once(|| {
        std::fs::create_dir_all(TEST_BPFFS).expect("creating the test bpffs mount point");
        let mounted = std::fs::read_to_string("/proc/self/mounts")
            .unwrap_or_default()
            .lines()
            .any(|line| line.split_whitespace().nth(1) == Some(TEST_BPFFS));
        if !mounted {
            let status = std::process::Command::new("mount")
                .args(["-t", "bpf", "bpf", TEST_BPFFS])
                .status()
                .expect("running mount");
            assert!(status.success(), "mounting bpffs on {TEST_BPFFS}");
        }
    });
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
