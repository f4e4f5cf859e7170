//! Backend rings: a service's schedule as the XDP program reads it.

use anyhow::{Result, bail};
use lb_common::{BackendRing, service::RING_SLOTS};

/// The ring for a smooth weighted round-robin over `(backend id, weight)` (nginx's
/// algorithm: weights 3:1 give a, a, b, a; no backend's turns are bunched together).
///
/// Weights are divided by their greatest common divisor; if one round still does not fit in
/// [`RING_SLOTS`] they are scaled down proportionally (each active backend keeps at least one
/// slot). Every slot is filled by repeating the round, so whatever index a reader computes
/// it finds a backend of this schedule (see `BackendRing`).
pub fn weighted(backends: &[(u32, u32)]) -> Result<BackendRing> {
    let backends: Vec<(u32, u32)> = backends.iter().copied().filter(|(_, w)| *w > 0).collect();
    if backends.len() > RING_SLOTS {
        bail!(
            "{} active backends in one service; the data path schedules at most {RING_SLOTS}",
            backends.len()
        );
    }
    let mut ring = BackendRing::EMPTY;
    if backends.is_empty() {
        return Ok(ring);
    }
    let weights = fit(&backends.iter().map(|(_, w)| *w).collect::<Vec<_>>());
    let total: u32 = weights.iter().sum();

    let mut current = vec![0i64; backends.len()];
    let mut round = Vec::with_capacity(total as usize);
    for _ in 0..total {
        for (c, w) in current.iter_mut().zip(&weights) {
            *c += i64::from(*w);
        }
        let (pick, _) = current
            .iter()
            .enumerate()
            .max_by(|(i, a), (j, b)| a.cmp(b).then(j.cmp(i)))
            .expect("at least one backend");
        current[pick] -= i64::from(total);
        round.push(backends[pick].0);
    }

    ring.len = total;
    for (slot, id) in ring.slots.iter_mut().zip(round.iter().cycle()) {
        *slot = *id;
    }
    Ok(ring)
}

/// Weights reduced by their GCD and, if their sum exceeds the ring, scaled to fit.
fn fit(weights: &[u32]) -> Vec<u32> {
    let divisor = weights.iter().copied().fold(0, gcd);
    let mut reduced: Vec<u32> = weights.iter().map(|w| w / divisor).collect();
    let sum: u64 = reduced.iter().map(|&w| u64::from(w)).sum();
    if sum > RING_SLOTS as u64 {
        for w in &mut reduced {
            *w = ((u64::from(*w) * RING_SLOTS as u64 / sum) as u32).max(1);
        }
        // Rounding up to one slot each can overshoot: take from the largest.
        while reduced.iter().sum::<u32>() > RING_SLOTS as u32 {
            let largest = reduced.iter_mut().max().expect("at least one backend");
            *largest -= 1;
        }
    }
    reduced
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_weights_are_plain_round_robin_repeated_across_every_slot() {
        let ring = weighted(&[(7, 1), (8, 1), (9, 1)]).unwrap();
        assert_eq!(ring.len, 3);
        assert_eq!(&ring.slots[..6], &[7, 8, 9, 7, 8, 9]);
        assert_eq!(ring.slots[RING_SLOTS - 1], [7, 8, 9][(RING_SLOTS - 1) % 3]);
    }

    #[test]
    fn weights_three_to_one_interleave_smoothly() {
        let ring = weighted(&[(1, 3), (2, 1)]).unwrap();
        assert_eq!(ring.len, 4);
        assert_eq!(&ring.slots[..4], &[1, 1, 2, 1]);
        let ring = weighted(&[(1, 6), (2, 2)]).unwrap();
        assert_eq!(ring.len, 4, "reduced by the common divisor");
    }

    #[test]
    fn zero_weights_and_no_backends_give_an_empty_ring() {
        assert_eq!(weighted(&[]).unwrap().len, 0);
        assert_eq!(weighted(&[(1, 0)]).unwrap().len, 0);
        assert_eq!(weighted(&[(1, 0), (2, 5)]).unwrap().slots[..3], [2, 2, 2]);
    }

    #[test]
    fn large_weights_are_scaled_into_the_ring_keeping_every_backend() {
        let backends: Vec<(u32, u32)> = (0..200).map(|i| (i, 1 + i % 7 * 37)).collect();
        let ring = weighted(&backends).unwrap();
        assert!(ring.len as usize <= RING_SLOTS);
        let round = &ring.slots[..ring.len as usize];
        for (id, _) in &backends {
            assert!(round.contains(id), "backend {id} kept a slot");
        }
    }

    #[test]
    fn too_many_backends_is_an_error() {
        let ids: Vec<(u32, u32)> = (0..=RING_SLOTS as u32).map(|i| (i, 1)).collect();
        assert!(weighted(&ids).is_err());
    }
}
