//! The per-CPU counters of the XDP program, summed.

use anyhow::{Context as _, Result};
use aya::maps::{MapData, PerCpuArray, PerCpuValues};
use lb_common::{Event, TrafficCounters};

pub struct CounterMaps {
    events: PerCpuArray<MapData, u64>,
    services: PerCpuArray<MapData, TrafficCounters>,
    backends: PerCpuArray<MapData, TrafficCounters>,
}

impl CounterMaps {
    pub fn new(
        events: PerCpuArray<MapData, u64>,
        services: PerCpuArray<MapData, TrafficCounters>,
        backends: PerCpuArray<MapData, TrafficCounters>,
    ) -> Self {
        Self {
            events,
            services,
            backends,
        }
    }

    /// Packets seen per event, in `Event::ALL` order.
    pub fn events(&self) -> Result<Vec<(Event, u64)>> {
        Event::ALL
            .iter()
            .map(|&event| {
                let per_cpu = self
                    .events
                    .get(&(event as u32), 0)
                    .with_context(|| format!("reading EVENTS[{}]", event.name()))?;
                Ok((event, per_cpu.iter().sum()))
            })
            .collect()
    }

    pub fn service(&self, id: u32) -> Result<TrafficCounters> {
        sum(&self.services, id).with_context(|| format!("reading SERVICE_STATS[{id}]"))
    }

    pub fn backend(&self, id: u32) -> Result<TrafficCounters> {
        sum(&self.backends, id).with_context(|| format!("reading BACKEND_STATS[{id}]"))
    }

    /// Zeroes a service's counters before its id is handed to a new service.
    pub fn reset_service(&mut self, id: u32) -> Result<()> {
        reset(&mut self.services, id)
    }

    /// Zeroes a backend's counters before its id is handed to a new backend.
    pub fn reset_backend(&mut self, id: u32) -> Result<()> {
        reset(&mut self.backends, id)
    }
}

fn sum(map: &PerCpuArray<MapData, TrafficCounters>, id: u32) -> Result<TrafficCounters> {
    let mut total = TrafficCounters::default();
    for per_cpu in map.get(&id, 0)?.iter() {
        total.add(per_cpu);
    }
    Ok(total)
}

fn reset(map: &mut PerCpuArray<MapData, TrafficCounters>, id: u32) -> Result<()> {
    let cpus = aya::util::nr_cpus().map_err(|(_, err)| err)?;
    let zeros = PerCpuValues::try_from(vec![TrafficCounters::default(); cpus])?;
    map.set(id, zeros, 0)?;
    Ok(())
}
