//! The threads TCP connections are relayed on: one per CPU unless
//! `dataplane.proxy_threads` says otherwise, each with a single-threaded
//! runtime of its own (its own `epoll`, timers and copy buffer) and its own `SO_REUSEPORT`
//! listener per TCP service, as HAProxy's threads and nginx's workers do. The kernel
//! spreads new connections over the listeners; a connection then lives and dies on the
//! thread that accepted it.
//!
//! Why not the controller's work-stealing runtime: there a connection's task moves to
//! whichever worker is free, and handing it over costs a futex wakeup and often a
//! migration. Measured with wrk (3 threads, 48 keep-alive connections, 2 cores, the
//! backends on the same machine): the same system calls per request as HAProxy, but
//! about 190 migrations per 5 s against HAProxy's 20 and 0.92x its requests/s; with a
//! runtime per thread, 20 migrations and the same requests/s as HAProxy.
//!
//! `SO_REUSEPORT` also lets another process of the same user bind the same address, as
//! HAProxy's listeners do by default: two gerbangs started on one host share the clients.

use std::{num::NonZeroUsize, sync::mpsc, thread};

use anyhow::{Context as _, Result};
use tokio::{runtime, sync::oneshot};

/// A relay thread: a handle to spawn on its runtime, and what ends it.
pub(super) struct Shard {
    pub(super) runtime: runtime::Handle,
    /// Dropping it (or sending) ends the thread's runtime, closing what still runs on it.
    stop: Option<oneshot::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Shard {
    /// Starts relay thread `index`. It is spawned from the calling thread, so it shares
    /// that thread's network namespace.
    fn start(index: usize) -> Result<Self> {
        let (ready, handle) = mpsc::sync_channel(1);
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = thread::Builder::new()
            .name(format!("gerbang-relay-{index}"))
            .spawn(move || {
                let runtime = match runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(runtime) => runtime,
                    Err(err) => {
                        let _ = ready.send(Err(err));
                        return;
                    }
                };
                let _ = ready.send(Ok(runtime.handle().clone()));
                // Err when the sender is dropped: that stops the thread too.
                let _ = runtime.block_on(stopped);
            })
            .context("starting a relay thread")?;
        let runtime = handle
            .recv()
            .context("a relay thread ended at start")?
            .context("building a relay thread's runtime")?;
        Ok(Self {
            runtime,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Ends the thread's runtime and waits for the thread.
    pub(super) async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}

/// `threads` relay threads, or with 0 one per CPU the process may run on.
pub(super) fn start_all(threads: u32) -> Result<Vec<Shard>> {
    let count = match usize::try_from(threads) {
        Ok(0) | Err(_) => thread::available_parallelism().map_or(1, NonZeroUsize::get),
        Ok(count) => count,
    };
    (0..count).map(Shard::start).collect()
}
