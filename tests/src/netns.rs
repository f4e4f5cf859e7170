//! Network namespaces owned by one test, demo or benchmark.
//!
//! A [`Netns`] is created with `ip netns add` under a name unique to this process and call
//! (`gb{pid}x{counter}{role}`), gets its loopback brought up, and is deleted again when the
//! value is dropped: every process still inside it is killed first (`ip netns pids`, SIGKILL),
//! then `ip netns del` removes it, which also destroys the veth devices living in it. Drop
//! never panics and runs during unwinding, so a failing test leaves nothing behind.
//!
//! Code runs inside a namespace in three ways:
//! - [`Netns::run`] / [`Netns::spawn_thread`]: a new thread of this process that has
//!   `setns(CLONE_NEWNET)` into the namespace. Sockets are bound to the namespace they were
//!   created in, so a socket made there can afterwards be used from any thread.
//! - [`Netns::exec`] / [`Netns::spawn`]: another program under `ip netns exec`.
//! - [`Netns::ip`]: `ip -n NAME ...`, for link, address and route configuration.

use std::ffi::OsStr;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use nix::sched::{CloneFlags, setns};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::process::{ChildGuard, Cmd};

/// Per-process counter that makes namespace names unique across calls.
static NEXT_ID: AtomicU32 = AtomicU32::new(0);

/// Where `ip netns` keeps its namespace handles.
const NETNS_RUN_DIR: &str = "/run/netns";

/// How long [`Netns`]'s drop waits for killed processes to leave the namespace.
const KILL_WAIT: Duration = Duration::from_secs(2);

/// A network namespace created by this process and deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
    /// `/run/netns/NAME`, kept open for `setns`.
    handle: File,
    /// Created by this value, so deleted with it; false for [`Netns::existing`].
    owned: bool,
}

impl Netns {
    /// Creates a fresh namespace named `gb{pid}x{counter}{role}` with `lo` up.
    ///
    /// `role` is a short tag that makes the name readable in `ip netns list`
    /// (`c`, `lb`, `sw`, `b0`, ...): at most 8 ASCII letters, digits or `-`.
    pub fn new(role: &str) -> Result<Netns> {
        ensure!(
            role.len() <= 8 && role.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'),
            "namespace role {role:?} must be at most 8 ASCII letters, digits or '-'"
        );
        let pid = std::process::id();
        // A name can only be taken already if a process with our pid died without cleaning
        // up; skip such leftovers instead of touching them.
        let mut attempts = 0;
        let name = loop {
            let name = format!("gb{pid}x{}{role}", NEXT_ID.fetch_add(1, Ordering::Relaxed));
            let out = Command::new("ip")
                .args(["netns", "add", &name])
                .stdin(Stdio::null())
                .output()
                .context("running `ip netns add` (is iproute2 installed?)")?;
            if out.status.success() {
                break name;
            }
            let stderr = String::from_utf8_lossy(&out.stderr);
            attempts += 1;
            if stderr.contains("File exists") && attempts < 16 {
                continue;
            }
            bail!(
                "`ip netns add {name}` failed ({}): {}",
                out.status,
                stderr.trim()
            );
        };
        let handle = match File::open(Self::path_of(&name)) {
            Ok(handle) => handle,
            Err(err) => {
                let _ = Command::new("ip").args(["netns", "del", &name]).output();
                return Err(err).with_context(|| format!("opening namespace handle of {name}"));
            }
        };
        // From here on, dropping `ns` deletes the namespace.
        let ns = Netns {
            name,
            handle,
            owned: true,
        };
        ns.ip(["link", "set", "dev", "lo", "up"])?;
        tracing::debug!(netns = %ns.name, "created network namespace");
        Ok(ns)
    }

    /// A handle on a namespace somebody else created and will delete (for a helper process
    /// started inside one of a test's namespaces).
    pub fn existing(name: &str) -> Result<Netns> {
        let handle = File::open(Self::path_of(name))
            .with_context(|| format!("opening network namespace {name}"))?;
        Ok(Netns {
            name: name.to_owned(),
            handle,
            owned: false,
        })
    }

    /// The namespace's name, as `ip netns` knows it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace's handle under `/run/netns`.
    pub fn path(&self) -> PathBuf {
        Self::path_of(&self.name)
    }

    fn path_of(name: &str) -> PathBuf {
        PathBuf::from(NETNS_RUN_DIR).join(name)
    }

    /// Runs `ip -n NAME ARGS...` and returns its stdout.
    pub fn ip<I, S>(&self, args: I) -> Result<String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = Command::new("ip");
        cmd.arg("-n").arg(&self.name).args(args);
        output_of(cmd)
    }

    /// Runs `PROGRAM ARGS...` inside the namespace (`ip netns exec`), waits for it and
    /// returns its stdout. A non-zero exit is an error carrying the status and stderr.
    pub fn exec<I, S>(&self, program: impl AsRef<OsStr>, args: I) -> Result<String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name])
            .arg(program)
            .args(args);
        output_of(cmd)
    }

    /// Starts a long-running program inside the namespace (`ip netns exec`).
    ///
    /// The returned guard stops it (SIGTERM, then SIGKILL after 3 s) when dropped.
    pub fn spawn(&self, cmd: &Cmd) -> Result<ChildGuard> {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name]);
        cmd.spawn_with(command)
            .with_context(|| format!("in network namespace {}", self.name))
    }

    /// Runs `f` on a new thread inside the namespace and returns its result.
    ///
    /// Sockets `f` creates belong to the namespace. A panic in `f` is resumed on the
    /// calling thread, so assertions inside `f` behave like assertions outside it.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        thread::scope(|scope| {
            let handle = thread::Builder::new()
                .name(format!("ns-{}", self.name))
                .spawn_scoped(scope, || -> Result<T> {
                    self.enter()?;
                    Ok(f())
                })
                .context("spawning a thread")?;
            match handle.join() {
                Ok(result) => result,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }

    /// Starts `f` on a new, detached thread inside the namespace (for servers).
    ///
    /// Returns once the thread has entered the namespace, so failing to enter is reported
    /// here rather than lost.
    pub fn spawn_thread<T: Send + 'static>(
        &self,
        thread_name: &str,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<NsThread<T>> {
        let handle = self
            .handle
            .try_clone()
            .context("duplicating netns handle")?;
        let name = self.name.clone();
        let (entered_tx, entered_rx) = mpsc::sync_channel(1);
        let thread = thread::Builder::new()
            .name(thread_name.to_owned())
            .spawn(move || {
                let entered = setns(&handle, CloneFlags::CLONE_NEWNET)
                    .with_context(|| format!("setns into network namespace {name}"));
                drop(handle);
                let ok = entered.is_ok();
                let _ = entered_tx.send(entered);
                ok.then(f)
            })
            .context("spawning a thread")?;
        match entered_rx.recv() {
            Ok(Ok(())) => Ok(NsThread {
                handle: thread,
                name: thread_name.to_owned(),
            }),
            Ok(Err(err)) => Err(err),
            Err(_) => Err(anyhow!(
                "thread {thread_name} died before entering the namespace"
            )),
        }
    }

    /// Sets a sysctl in this namespace, e.g. `("net.ipv4.ip_forward", "1")`.
    ///
    /// Writes `/proc/sys/...` from a thread inside the namespace: per-namespace sysctls
    /// (everything under `net.`) resolve against the writing thread's namespace.
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        let path = sysctl_path(key)?;
        self.run(|| std::fs::write(&path, value))?
            .with_context(|| format!("setting {key}={value} in {}", self.name))
    }

    /// Reads a sysctl in this namespace (trimmed).
    pub fn sysctl_get(&self, key: &str) -> Result<String> {
        let path = sysctl_path(key)?;
        let value = self
            .run(|| std::fs::read_to_string(&path))?
            .with_context(|| format!("reading {key} in {}", self.name))?;
        Ok(value.trim().to_owned())
    }

    /// Pids of the processes inside the namespace (`ip netns pids`), this process excluded.
    pub fn pids(&self) -> Result<Vec<i32>> {
        let out = output_of({
            let mut cmd = Command::new("ip");
            cmd.args(["netns", "pids", &self.name]);
            cmd
        })?;
        let me = std::process::id() as i32;
        Ok(out
            .split_whitespace()
            .filter_map(|pid| pid.parse().ok())
            .filter(|&pid| pid != me)
            .collect())
    }

    fn enter(&self) -> Result<()> {
        setns(&self.handle, CloneFlags::CLONE_NEWNET)
            .with_context(|| format!("setns into network namespace {}", self.name))
    }

    /// SIGKILLs everything inside and waits (bounded) until it is gone.
    fn kill_all(&self) -> Result<()> {
        let deadline = Instant::now() + KILL_WAIT;
        loop {
            let pids = self.pids()?;
            if pids.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("processes {pids:?} still inside after SIGKILL");
            }
            for pid in pids {
                // ESRCH: it died between listing and killing.
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
            thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Deletes namespaces left behind by testbed processes that died without cleaning up
/// (SIGKILL, a crash): every `gb{pid}x...` whose pid no longer runs. Returns how many.
pub fn remove_stale() -> Result<usize> {
    let entries = match std::fs::read_dir(NETNS_RUN_DIR) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(err) => return Err(err).context("listing /run/netns"),
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = owner_pid(&name) else {
            continue;
        };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let leftover = Netns {
            handle: File::open(entry.path())
                .with_context(|| format!("opening stale namespace {name}"))?,
            name,
            owned: true,
        };
        // Dropping it kills what still runs inside and deletes it.
        drop(leftover);
        removed += 1;
    }
    Ok(removed)
}

/// The pid in a testbed namespace name `gb{pid}x{counter}{role}`.
fn owner_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix("gb")?;
    let (pid, _) = rest.split_once('x')?;
    pid.parse().ok()
}

impl Drop for Netns {
    fn drop(&mut self) {
        if !self.owned {
            return;
        }
        if let Err(err) = self.kill_all() {
            tracing::warn!(netns = %self.name, "cleaning up processes: {err:#}");
        }
        let deleted = output_of({
            let mut cmd = Command::new("ip");
            cmd.args(["netns", "del", &self.name]);
            cmd
        });
        match deleted {
            Ok(_) => tracing::debug!(netns = %self.name, "deleted network namespace"),
            Err(err) => tracing::warn!(netns = %self.name, "deleting: {err:#}"),
        }
    }
}

/// A thread started with [`Netns::spawn_thread`].
#[derive(Debug)]
pub struct NsThread<T> {
    /// `None` only if entering the namespace failed, which `spawn_thread` already reported.
    handle: JoinHandle<Option<T>>,
    name: String,
}

impl<T> NsThread<T> {
    /// Whether the thread has returned.
    pub fn is_finished(&self) -> bool {
        self.handle.is_finished()
    }

    /// Waits for the thread; a panic becomes an error.
    pub fn join(self) -> Result<T> {
        match self.handle.join() {
            Ok(Some(value)) => Ok(value),
            Ok(None) => Err(anyhow!("thread {} never entered its namespace", self.name)),
            Err(panic) => Err(anyhow!(
                "thread {} panicked: {}",
                self.name,
                panic_message(panic.as_ref())
            )),
        }
    }

    /// Waits at most `timeout` for the thread. On timeout the thread is left running
    /// (detached) and an error is returned.
    pub fn join_timeout(self, timeout: Duration) -> Result<T> {
        let deadline = Instant::now() + timeout;
        while !self.handle.is_finished() {
            if Instant::now() >= deadline {
                bail!("thread {} did not stop within {timeout:?}", self.name);
            }
            thread::sleep(Duration::from_millis(5));
        }
        self.join()
    }
}

/// Best-effort text of a panic payload.
pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}

/// `/proc/sys` path of a sysctl given as `a.b.c` or `a/b/c`.
fn sysctl_path(key: &str) -> Result<PathBuf> {
    let rel = if key.contains('/') {
        key.trim_start_matches('/').to_owned()
    } else {
        key.replace('.', "/")
    };
    ensure!(
        !rel.is_empty()
            && rel
                .split('/')
                .all(|c| !c.is_empty() && c != "." && c != ".."),
        "invalid sysctl key {key:?}"
    );
    Ok(PathBuf::from("/proc/sys").join(rel))
}

/// Runs `cmd` to completion; stdout on success, an error with status and stderr otherwise.
pub(crate) fn output_of(mut cmd: Command) -> Result<String> {
    let shown = format!("{cmd:?}");
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {shown}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "{shown} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            if stdout.trim().is_empty() {
                String::new()
            } else {
                format!(" (stdout: {})", stdout.trim())
            }
        );
    }
    Ok(stdout)
}
