//! Running gerbang's userspace proxy for a test: in-process on a thread inside the
//! balancer's namespace (current-thread runtime, to read its counters and push plans), or
//! in a child process of its own (multi-thread runtime, as the binary runs it) whose
//! memory can be measured apart from the test's.

use std::{
    collections::BTreeMap,
    io::Read as _,
    net::{SocketAddrV4, TcpListener, TcpStream},
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc as std_mpsc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};
use gerbang::{
    config::Config,
    dataplane::{
        AdminState, BackendStatus, Dataplane as _, Plan,
        proxy::{ActiveFlows, ProxyDataplane, ProxyOptions, RelayMode},
        xdp::TrafficReport,
    },
};
use gerbang_testbed::{ChildGuard, Cmd, Netns, NsThread};
use nix::sys::socket::{setsockopt, sockopt};
use tokio::sync::{mpsc, oneshot};

enum Request {
    Apply(Plan, oneshot::Sender<Result<()>>),
    Traffic(oneshot::Sender<TrafficReport>),
    Active(oneshot::Sender<Vec<ActiveFlows>>),
    Stop,
}

/// A [`ProxyDataplane`] on a thread inside a namespace, with its own runtime.
pub struct Proxy {
    config: Config,
    requests: mpsc::UnboundedSender<Request>,
    thread: Option<NsThread<()>>,
}

impl Proxy {
    /// Starts the proxy for `config` in `ns`; returns once it listens. No backend is
    /// active until [`Proxy::apply`].
    pub fn start(ns: &Netns, config: &str, options: ProxyOptions) -> Result<Proxy> {
        let config = Config::parse(config, "<test config>")?;
        let (requests, mut inbox) = mpsc::unbounded_channel();
        let (ready_tx, ready_rx) = std_mpsc::sync_channel(1);
        let proxy_config = config.clone();
        let thread = ns.spawn_thread("proxy", move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(err) => {
                    let _ = ready_tx.send(Err(err.into()));
                    return;
                }
            };
            runtime.block_on(async move {
                let mut proxy = match ProxyDataplane::start_with(&proxy_config, &options).await {
                    Ok(proxy) => {
                        let _ = ready_tx.send(Ok(()));
                        proxy
                    }
                    Err(err) => {
                        let _ = ready_tx.send(Err(err));
                        return;
                    }
                };
                while let Some(request) = inbox.recv().await {
                    match request {
                        Request::Apply(plan, reply) => {
                            let _ = reply.send(proxy.apply(&plan));
                        }
                        Request::Traffic(reply) => {
                            let _ = reply.send(proxy.traffic());
                        }
                        Request::Active(reply) => {
                            let _ = reply.send(proxy.active());
                        }
                        Request::Stop => break,
                    }
                }
                proxy.stop().await;
            });
        })?;
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .context("the proxy did not start within 10 s")??;
        Ok(Proxy {
            config,
            requests,
            thread: Some(thread),
        })
    }

    /// Starts the proxy and applies the plan with every backend healthy.
    pub fn start_healthy(ns: &Netns, config: &str, options: ProxyOptions) -> Result<Proxy> {
        let proxy = Self::start(ns, config, options)?;
        proxy.apply(&proxy.plan(&[]))?;
        Ok(proxy)
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The plan for the proxy's configuration where the listed backends
    /// (service, backend, status) have that status and all others are healthy and ready.
    pub fn plan(&self, statuses: &[(&str, &str, BackendStatus)]) -> Plan {
        let status: BTreeMap<_, _> = statuses
            .iter()
            .map(|(service, backend, status)| ((service.to_string(), backend.to_string()), *status))
            .collect();
        Plan::compute(&self.config, &status)
    }

    pub fn apply(&self, plan: &Plan) -> Result<()> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(Request::Apply(plan.clone(), reply))
            .map_err(|_| anyhow!("the proxy thread is gone"))?;
        answer.blocking_recv()?
    }

    pub fn traffic(&self) -> TrafficReport {
        let (reply, answer) = oneshot::channel();
        self.requests.send(Request::Traffic(reply)).unwrap();
        answer.blocking_recv().unwrap()
    }

    /// Open connections or sessions of `service`: total and per backend.
    pub fn active(&self, service: &str) -> ActiveFlows {
        let (reply, answer) = oneshot::channel();
        self.requests.send(Request::Active(reply)).unwrap();
        answer
            .blocking_recv()
            .unwrap()
            .into_iter()
            .find(|a| a.service == service)
            .unwrap_or_else(|| panic!("no service {service}"))
    }

    /// Waits until `service` has `total` open connections or sessions.
    pub fn wait_active(&self, service: &str, total: u64, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let now = self.active(service).total;
            if now == total {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("{service} has {now} open flows after {timeout:?}, expected {total}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the proxy and waits for it.
    pub fn stop(mut self) -> Result<()> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<()> {
        let Some(thread) = self.thread.take() else {
            return Ok(());
        };
        let _ = self.requests.send(Request::Stop);
        thread.join_timeout(Duration::from_secs(10))
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

/// A backend's status: failed health checks.
pub const DOWN: BackendStatus = BackendStatus {
    healthy: false,
    admin: AdminState::Ready,
};

/// A backend's status: healthy, drained by the operator.
pub const DRAINED: BackendStatus = BackendStatus {
    healthy: true,
    admin: AdminState::Drain,
};

/// Environment variable that makes a test binary run [`child_main`] instead of tests.
pub const CHILD_CONFIG_ENV: &str = "GERBANG_PROXY_CHILD_CONFIG";

/// Environment variable choosing the child's relay mode: `copy`, `splice`, else auto.
pub const CHILD_RELAY_ENV: &str = "GERBANG_PROXY_CHILD_RELAY";

/// Environment variable that makes the child run on a current-thread runtime with one
/// relay thread (`1`) rather than as the binary runs (a multi-thread runtime, a relay
/// thread per CPU).
pub const CHILD_SINGLE_THREAD_ENV: &str = "GERBANG_PROXY_CHILD_SINGLE_THREAD";

/// The proxy in a process of its own: this test binary re-run with [`CHILD_CONFIG_ENV`]
/// set, so its resident memory is the proxy's (plus the test harness's).
pub struct ProxyProcess {
    child: ChildGuard,
}

impl ProxyProcess {
    /// Starts this test binary as a proxy for `config` in `ns`, running only the test
    /// named `child_test` (which must call [`child_main`]), with one relay thread or as the
    /// binary runs it (see [`CHILD_SINGLE_THREAD_ENV`]).
    pub fn start(
        ns: &Netns,
        config_path: &Path,
        child_test: &str,
        relay: RelayMode,
        single_thread: bool,
    ) -> Result<Self> {
        let exe = std::env::current_exe()?;
        let relay = match relay {
            RelayMode::Auto => "auto",
            RelayMode::Splice => "splice",
            RelayMode::Copy => "copy",
        };
        let cmd = Cmd::new(exe)
            .args([
                child_test,
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_CONFIG_ENV, config_path)
            .env(CHILD_RELAY_ENV, relay)
            .env(
                CHILD_SINGLE_THREAD_ENV,
                if single_thread { "1" } else { "0" },
            );
        Ok(Self {
            child: ns.spawn(&cmd)?,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// Resident memory of the proxy process, in KiB (`VmRSS`).
    pub fn rss_kib(&self) -> Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.pid()))?;
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .context("no VmRSS in /proc/PID/status")
    }

    /// Open file descriptors of the proxy process.
    pub fn open_fds(&self) -> Result<usize> {
        Ok(std::fs::read_dir(format!("/proc/{}/fd", self.child.pid()))?.count())
    }
}

/// The body of the child test: when [`CHILD_CONFIG_ENV`] is set, runs the proxy for that
/// config with every backend healthy until killed.
pub fn child_main() {
    let Some(path) = std::env::var_os(CHILD_CONFIG_ENV) else {
        return;
    };
    let mut config = Config::load(Path::new(&path)).expect("child proxy config");
    let single_thread = std::env::var(CHILD_SINGLE_THREAD_ENV).as_deref() == Ok("1");
    let relay = match std::env::var(CHILD_RELAY_ENV).as_deref() {
        Ok("copy") => RelayMode::Copy,
        Ok("splice") => RelayMode::Splice,
        _ => RelayMode::Auto,
    };
    let options = ProxyOptions {
        relay,
        ..ProxyOptions::default()
    };
    let runtime = if single_thread {
        config.dataplane.proxy_threads = 1;
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    }
    .enable_all()
    .build()
    .expect("runtime");
    runtime.block_on(async move {
        let mut proxy = ProxyDataplane::start_with(&config, &options)
            .await
            .expect("starting the proxy");
        proxy
            .apply(&Plan::compute(&config, &BTreeMap::new()))
            .expect("applying the plan");
        std::future::pending::<()>().await;
    });
}

/// A TCP server for the proxy's tests, on one thread: every accepted connection goes to
/// `on_accept` (long work belongs on a thread of its own). Stops accepting when dropped;
/// what the handlers keep is dropped with it.
pub struct TestServer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl TestServer {
    pub fn start(
        ns: &Netns,
        addr: SocketAddrV4,
        mut on_accept: impl FnMut(TcpStream) + Send + 'static,
    ) -> Result<TestServer> {
        Self::serve(ns, addr, move |stream| {
            if let Some(stream) = stream {
                on_accept(stream);
            }
        })
    }

    /// Accepts and holds every connection, never reading: a backend that stalls.
    pub fn sink(ns: &Netns, addr: SocketAddrV4) -> Result<TestServer> {
        let mut held = Vec::new();
        Self::start(ns, addr, move |stream| held.push(stream))
    }

    /// Accepts and holds every connection, says nothing, and closes it once the client has
    /// (checked every few milliseconds, so a thousand connections cost no threads).
    pub fn quiet(ns: &Netns, addr: SocketAddrV4) -> Result<TestServer> {
        let mut held: Vec<TcpStream> = Vec::new();
        Self::serve(ns, addr, move |stream| match stream {
            Some(stream) => {
                if stream.set_nonblocking(true).is_ok() {
                    held.push(stream);
                }
            }
            None => held.retain(|mut stream| {
                let mut buf = [0u8; 1024];
                match stream.read(&mut buf) {
                    Ok(0) => false,
                    Ok(_) => true,
                    Err(err) => err.kind() == std::io::ErrorKind::WouldBlock,
                }
            }),
        })
    }

    /// Accepts every connection and resets it at once.
    pub fn resetter(ns: &Netns, addr: SocketAddrV4) -> Result<TestServer> {
        Self::start(ns, addr, |stream| {
            let _ = setsockopt(
                &stream,
                sockopt::Linger,
                &libc::linger {
                    l_onoff: 1,
                    l_linger: 0,
                },
            );
        })
    }

    /// Calls `event` with each accepted connection, and with `None` whenever none is
    /// waiting (every few milliseconds).
    fn serve(
        ns: &Netns,
        addr: SocketAddrV4,
        mut event: impl FnMut(Option<TcpStream>) + Send + 'static,
    ) -> Result<TestServer> {
        let listener = ns
            .run(|| TcpListener::bind(addr))?
            .with_context(|| format!("binding {addr}"))?;
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            while !stopping.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        if stream.set_nonblocking(false).is_ok() {
                            event(Some(stream));
                        }
                    }
                    Err(_) => {
                        event(None);
                        std::thread::sleep(Duration::from_millis(5));
                    }
                }
            }
        });
        Ok(TestServer {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
