//! Per-CPU counters: one event per packet, traffic per service and per backend.

use aya_ebpf::maps::PerCpuArray;
use lb_common::{Event, TrafficCounters};

use crate::maps::{BACKEND_STATS, EVENTS, SERVICE_STATS};

#[inline(always)]
pub fn count_event(event: Event) {
    if let Some(count) = EVENTS.get_ptr_mut(event as u32) {
        unsafe { *count += 1 };
    }
}

#[inline(always)]
fn update(map: &PerCpuArray<TrafficCounters>, id: u32, f: impl FnOnce(&mut TrafficCounters)) {
    if let Some(counters) = map.get_ptr_mut(id) {
        f(unsafe { &mut *counters });
    }
}

/// Counts a packet of a service and its backend in the direction given.
#[inline(always)]
pub fn count_traffic(service_id: u32, backend_id: u32, to_client: bool, bytes: u64) {
    let add = |c: &mut TrafficCounters| {
        if to_client {
            c.packets_to_client += 1;
            c.bytes_to_client += bytes;
        } else {
            c.packets_to_backend += 1;
            c.bytes_to_backend += bytes;
        }
    };
    update(&SERVICE_STATS, service_id, add);
    update(&BACKEND_STATS, backend_id, add);
}

#[inline(always)]
pub fn count_new_flow(service_id: u32, backend_id: u32) {
    update(&SERVICE_STATS, service_id, |c| c.new_flows += 1);
    update(&BACKEND_STATS, backend_id, |c| c.new_flows += 1);
}

/// A dropped packet of a service; `backend_id` when it had one already.
#[inline(always)]
pub fn count_drop(service_id: u32, backend_id: Option<u32>) {
    update(&SERVICE_STATS, service_id, |c| c.drops += 1);
    if let Some(backend_id) = backend_id {
        update(&BACKEND_STATS, backend_id, |c| c.drops += 1);
    }
}
