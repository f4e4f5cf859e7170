//! Backend rings: a service's schedule as the XDP program reads it.

use anyhow::{Result, bail};
use lb_common::{BackendRing, service::RING_SLOTS};

/// The ring for a round-robin over `backend_ids` in order.
///
/// Every slot is filled by repeating the schedule, so whatever index a reader computes it
/// finds a backend of this schedule (see `BackendRing`).
pub fn round_robin(backend_ids: &[u32]) -> Result<BackendRing> {
    if backend_ids.len() > RING_SLOTS {
        bail!(
            "{} backends in one service; the data path schedules at most {RING_SLOTS}",
            backend_ids.len()
        );
    }
    let mut ring = BackendRing::EMPTY;
    ring.len = backend_ids.len() as u32;
    for (slot, id) in ring.slots.iter_mut().zip(backend_ids.iter().cycle()) {
        *slot = *id;
    }
    Ok(ring)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeats_the_schedule_across_every_slot() {
        let ring = round_robin(&[7, 8, 9]).unwrap();
        assert_eq!(ring.len, 3);
        assert_eq!(&ring.slots[..6], &[7, 8, 9, 7, 8, 9]);
        assert_eq!(ring.slots[RING_SLOTS - 1], [7, 8, 9][(RING_SLOTS - 1) % 3]);
    }

    #[test]
    fn no_backends_is_an_empty_ring() {
        let ring = round_robin(&[]).unwrap();
        assert_eq!(ring.len, 0);
    }

    #[test]
    fn too_many_backends_is_an_error() {
        let ids: Vec<u32> = (0..=RING_SLOTS as u32).collect();
        assert!(round_robin(&ids).is_err());
    }
}
