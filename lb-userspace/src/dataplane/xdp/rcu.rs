//! Waiting for in-flight XDP program runs to finish.
//!
//! The controller never rewrites data a running XDP program may be reading: it writes a
//! spare copy and flips one word. Before it reuses the copy that just went out of service
//! it waits here. XDP programs run inside RCU read-side critical sections, and
//! `membarrier(MEMBARRIER_CMD_GLOBAL)` makes the kernel wait for an RCU grace period, so
//! when it returns every run that could have seen the old copy has ended.

use std::time::Duration;

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
