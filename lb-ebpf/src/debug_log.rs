//! Debug logs through aya-log, off unless the controller asks for them
//! (`dataplane.xdp_log_rate`), and rate-limited per CPU when on.
//!
//! The rate is a read-only global the controller sets at load time. The verifier knows the
//! value of a frozen read-only global, so with the default of 0 it removes the logging code
//! altogether: a program that does not log pays nothing for being able to.

use aya_ebpf::{helpers::bpf_ktime_get_ns, macros::map, maps::PerCpuArray, programs::XdpContext};
use aya_log_ebpf::info;
use lb_common::Event;

use crate::packet;

/// Log lines each CPU may emit per second; 0 turns logging off. Set by the controller.
#[unsafe(no_mangle)]
static XDP_LOG_RATE: u32 = 0;

const NS_PER_SECOND: u64 = 1_000_000_000;

/// One CPU's budget: lines sent in the current one-second window, and lines held back.
#[derive(Clone, Copy)]
#[repr(C)]
pub struct LogBudget {
    window_start_ns: u64,
    sent: u32,
    suppressed: u32,
}

#[map(name = "LOG_BUDGET")]
static LOG_BUDGET: PerCpuArray<LogBudget> = PerCpuArray::with_max_entries(1, 0);

/// Logs the packet's event and addresses (as they are after any rewrite), within budget.
/// Traffic that is not gerbang's (not IPv4, not to one of its addresses) is never logged.
#[inline(always)]
pub fn log_event(ctx: &XdpContext, event: Event) {
    let rate = unsafe { core::ptr::read_volatile(&XDP_LOG_RATE) };
    if rate == 0 {
        return;
    }
    if matches!(
        event,
        Event::PassShortFrame | Event::PassNotIpv4 | Event::PassTruncatedIpv4 | Event::PassNotLocal
    ) {
        return;
    }
    let Some(budget) = LOG_BUDGET.get_ptr_mut(0) else {
        return;
    };
    let budget = unsafe { &mut *budget };
    let now = unsafe { bpf_ktime_get_ns() };
    let mut held_back = 0;
    if now.wrapping_sub(budget.window_start_ns) >= NS_PER_SECOND {
        held_back = budget.suppressed;
        budget.window_start_ns = now;
        budget.sent = 0;
        budget.suppressed = 0;
    }
    if budget.sent >= rate {
        budget.suppressed = budget.suppressed.saturating_add(1);
        return;
    }
    budget.sent += 1;
    let Ok(frame) = packet::ipv4_header(ctx) else {
        return;
    };
    let ip = unsafe { &*frame.ip };
    let src = u32::from_be_bytes(ip.src_addr);
    let dst = u32::from_be_bytes(ip.dst_addr);
    info!(
        ctx,
        "{} {:i} -> {:i} proto {} ({} lines held back before this one)",
        event.name(),
        src,
        dst,
        ip.proto,
        held_back
    );
}
