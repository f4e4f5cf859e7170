//! The XDP program's debug logs (`dataplane.xdp_log_rate`), read from its aya-log ring
//! buffer into gerbang's own log.

use anyhow::{Context as _, Result};
use aya::Ebpf;
use aya_log::EbpfLogger;
use tokio::io::{Interest, unix::AsyncFd};
use tracing::{info, warn};

/// The program's global that caps its log lines per second per CPU (0: off).
pub const RATE_GLOBAL: &str = "XDP_LOG_RATE";

/// Reads the program's log records for as long as it lives; stops when dropped.
pub struct LogReader(tokio::task::JoinHandle<()>);

impl LogReader {
    /// Starts forwarding the program's log lines, each through the `log` facade that
    /// gerbang's tracing subscriber receives.
    pub fn start(ebpf: &mut Ebpf, rate: u32) -> Result<Self> {
        let runtime = tokio::runtime::Handle::try_current()
            .context("XDP debug logs are read by a task of gerbang's runtime")?;
        let logger = EbpfLogger::init(ebpf).context("opening the XDP program's log buffer")?;
        let mut logger = {
            let _guard = runtime.enter();
            // SAFETY: the logger owns the ring buffer's descriptor and keeps it open, the same
            // one, for as long as the AsyncFd owns the logger.
            unsafe { AsyncFd::register_with_interest(logger, Interest::READABLE) }
                .map_err(|err| err.into_parts().1)
                .context("watching the XDP program's log buffer")?
        };
        let task = runtime.spawn(async move {
            loop {
                match logger.readable_mut().await {
                    Ok(mut guard) => {
                        guard.get_inner_mut().flush();
                        guard.clear_ready();
                    }
                    Err(err) => {
                        warn!("stopped reading the XDP program's debug logs: {err}");
                        return;
                    }
                }
            }
        });
        info!(
            rate,
            "XDP debug logs on: at most {rate} lines per second per CPU (dataplane.xdp_log_rate)"
        );
        Ok(Self(task))
    }
}

impl Drop for LogReader {
    fn drop(&mut self) {
        self.0.abort();
    }
}
