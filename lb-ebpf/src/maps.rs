//! The maps, as defined by `lb_common` (names in `lb_common::map_names`).

use aya_ebpf::{
    macros::map,
    maps::{Array, DevMapHash, HashMap, LruHashMap, PerCpuArray},
};
use lb_common::{
    Backend, BackendRing, EVENT_COUNT, Flow, FlowKey, NextHop, Service, ServiceKey, Timeouts,
    TrafficCounters,
    flow::DEFAULT_FLOW_TABLE_SIZE,
    service::{MAX_BACKENDS, MAX_SERVICES},
};

/// Interfaces gerbang may redirect to; more than a host will have.
const MAX_DEVICES: u32 = 64;

#[map(name = "SERVICES")]
pub static SERVICES: HashMap<ServiceKey, Service> = HashMap::with_max_entries(MAX_SERVICES, 0);

#[map(name = "LOCAL_ADDRS")]
pub static LOCAL_ADDRS: HashMap<u32, u32> = HashMap::with_max_entries(MAX_SERVICES * 2, 0);

#[map(name = "RING_SELECT")]
pub static RING_SELECT: Array<u32> = Array::with_max_entries(MAX_SERVICES, 0);

#[map(name = "RINGS")]
pub static RINGS: Array<BackendRing> = Array::with_max_entries(MAX_SERVICES * 2, 0);

#[map(name = "RR_CURSORS")]
pub static RR_CURSORS: Array<u64> = Array::with_max_entries(MAX_SERVICES, 0);

#[map(name = "BACKENDS")]
pub static BACKENDS: Array<Backend> = Array::with_max_entries(MAX_BACKENDS, 0);

/// Resized by the controller from the config before loading.
#[map(name = "FLOWS")]
pub static FLOWS: LruHashMap<FlowKey, Flow> =
    LruHashMap::with_max_entries(DEFAULT_FLOW_TABLE_SIZE, 0);

/// Same size as `FLOWS`: one entry per flow.
#[map(name = "NAT_RETURN")]
pub static NAT_RETURN: LruHashMap<FlowKey, FlowKey> =
    LruHashMap::with_max_entries(DEFAULT_FLOW_TABLE_SIZE, 0);

#[map(name = "NEXT_HOPS")]
pub static NEXT_HOPS: HashMap<u32, NextHop> = HashMap::with_max_entries(MAX_BACKENDS, 0);

#[map(name = "DEVICES")]
pub static DEVICES: DevMapHash = DevMapHash::with_max_entries(MAX_DEVICES, 0);

#[map(name = "TIMEOUTS")]
pub static TIMEOUTS: Array<Timeouts> = Array::with_max_entries(1, 0);

#[map(name = "SNAT_CURSOR")]
pub static SNAT_CURSOR: Array<u64> = Array::with_max_entries(1, 0);

#[map(name = "SERVICE_STATS")]
pub static SERVICE_STATS: PerCpuArray<TrafficCounters> =
    PerCpuArray::with_max_entries(MAX_SERVICES, 0);

#[map(name = "BACKEND_STATS")]
pub static BACKEND_STATS: PerCpuArray<TrafficCounters> =
    PerCpuArray::with_max_entries(MAX_BACKENDS, 0);

#[map(name = "EVENTS")]
pub static EVENTS: PerCpuArray<u64> = PerCpuArray::with_max_entries(EVENT_COUNT, 0);
