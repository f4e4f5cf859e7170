//! Waiting for in-flight XDP program runs to finish.
//!
//! The controller never rewrites data a running XDP program may be reading: it writes a
//! spare copy and flips one word. Before it reuses the copy that just went out of service
//! it waits here. XDP programs run inside RCU read-side critical sections, and
//! `membarrier(MEMBARRIER_CMD_GLOBAL)` makes the kernel wait for an RCU grace period, so
//! when it returns every run that could have seen the old copy has ended.
//!
//! A grace period takes milliseconds (8 to 20 ms measured on an idle 2-core VM), far
//! more than a whole backend-set update. [`GracePeriods`] lets them pass in the
//! background, so an update waits for one only when it comes before the last one ended.

use std::{
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

const MEMBARRIER_CMD_GLOBAL: libc::c_long = 1;

/// Blocks until every XDP program run that started before the call has finished.
pub fn wait_for_readers() {
    // SAFETY: membarrier takes no pointers.
    let rc = unsafe { libc::syscall(libc::SYS_membarrier, MEMBARRIER_CMD_GLOBAL, 0, 0) };
    if rc != 0 {
        // nohz_full kernels refuse this command. A program run takes microseconds.
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Numbered grace periods that pass in the background: one waiter at a time, on the
/// runtime's blocking pool, covers every period started before it began waiting.
#[derive(Debug, Default)]
pub struct GracePeriods {
    shared: Arc<Shared>,
}

#[derive(Debug, Default)]
struct Shared {
    started: Mutex<Started>,
    /// Every period up to this number has passed.
    passed: AtomicU64,
}

#[derive(Debug, Default)]
struct Started {
    /// The last number handed out.
    last: u64,
    waiter_running: bool,
}

impl Shared {
    /// Nothing panics while holding the lock, so a poisoned one still holds valid numbers.
    fn started(&self) -> MutexGuard<'_, Started> {
        self.started.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits out grace periods until none is left that started before the last wait.
    fn run_waiter(&self) {
        loop {
            let target = self.started().last;
            // Begins after every write of the periods up to `target`, so it covers them.
            wait_for_readers();
            self.passed.fetch_max(target, Ordering::AcqRel);
            let mut started = self.started();
            if started.last == target {
                started.waiter_running = false;
                return;
            }
        }
    }
}

impl GracePeriods {
    /// Starts a grace period covering every map write made so far and returns its
    /// number. Without a tokio runtime (unit tests) it passes before this returns.
    pub fn start(&mut self) -> u64 {
        let mut started = self.shared.started();
        started.last += 1;
        let number = started.last;
        if !started.waiter_running {
            started.waiter_running = true;
            drop(started);
            let shared = Arc::clone(&self.shared);
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => drop(runtime.spawn_blocking(move || shared.run_waiter())),
                Err(_) => shared.run_waiter(),
            }
        }
        number
    }

    /// Returns once grace period `number` has passed: at once if it already has,
    /// otherwise after a grace period of its own, which covers everything before it.
    pub fn wait_for(&self, number: u64) {
        if self.shared.passed.load(Ordering::Acquire) < number {
            wait_for_readers();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_runtime_a_period_has_passed_when_start_returns() {
        let mut periods = GracePeriods::default();
        let first = periods.start();
        let second = periods.start();
        assert!(second > first);
        assert_eq!(periods.shared.passed.load(Ordering::Acquire), second);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn periods_pass_in_the_background_and_the_waiter_stops() {
        let mut periods = GracePeriods::default();
        let numbers: Vec<u64> = (0..5).map(|_| periods.start()).collect();
        let last = *numbers.last().unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while periods.shared.passed.load(Ordering::Acquire) < last {
            assert!(
                std::time::Instant::now() < deadline,
                "no grace period passed"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert_eq!(periods.shared.passed.load(Ordering::Acquire), last);
        assert!(
            !periods.shared.started().waiter_running,
            "the waiter stopped"
        );
    }
}
