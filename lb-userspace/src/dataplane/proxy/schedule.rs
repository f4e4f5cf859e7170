//! Smooth weighted round-robin, nginx's algorithm (`ngx_http_upstream_get_peer`).
//!
//! Every pick adds each candidate's weight to its running score, takes the highest score
//! and subtracts the total weight from it. Over any window of `sum(weights)` picks each
//! backend gets exactly its weight, and picks of a heavy backend are spread out
//! (`a a b a` for 3:1, not `a a a b`), so a burst of new flows does not land on one
//! backend.

/// A schedule over items of type `T` with their weights.
#[derive(Debug)]
pub(super) struct SmoothWeighted<T> {
    entries: Vec<Entry<T>>,
}

#[derive(Debug)]
struct Entry<T> {
    item: T,
    weight: i64,
    current: i64,
}

impl<T> SmoothWeighted<T> {
    /// A schedule over `items`; items of weight 0 are never picked and left out.
    pub(super) fn new(items: impl IntoIterator<Item = (T, u32)>) -> Self {
        let entries = items
            .into_iter()
            .filter(|(_, weight)| *weight > 0)
            .map(|(item, weight)| Entry {
                item,
                weight: i64::from(weight),
                current: 0,
            })
            .collect();
        Self { entries }
    }

    /// The items with their weights, in the order given to [`SmoothWeighted::new`].
    pub(super) fn items(&self) -> impl Iterator<Item = (&T, u32)> {
        self.entries
            .iter()
            .map(|e| (&e.item, u32::try_from(e.weight).unwrap_or(u32::MAX)))
    }

    /// The next item, or `None` if there is none.
    pub(super) fn pick(&mut self) -> Option<&T> {
        self.pick_except(|_| false)
    }

    /// The next item among those `skip` does not reject (a retry after a failed connect
    /// must not land on the backend that just failed).
    pub(super) fn pick_except(&mut self, skip: impl Fn(&T) -> bool) -> Option<&T> {
        let mut total = 0;
        let mut best: Option<(usize, i64)> = None;
        for (index, entry) in self.entries.iter_mut().enumerate() {
            if skip(&entry.item) {
                continue;
            }
            entry.current += entry.weight;
            total += entry.weight;
            if best.is_none_or(|(_, current)| entry.current > current) {
                best = Some((index, entry.current));
            }
        }
        let (index, _) = best?;
        let entry = &mut self.entries[index];
        entry.current -= total;
        Some(&entry.item)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sequence(weights: &[(char, u32)], n: usize) -> String {
        let mut schedule = SmoothWeighted::new(weights.iter().copied());
        (0..n).map(|_| *schedule.pick().unwrap()).collect()
    }

    #[test]
    fn equal_weights_are_plain_round_robin() {
        assert_eq!(sequence(&[('a', 1), ('b', 1), ('c', 1)], 9), "abcabcabc");
        assert_eq!(sequence(&[('a', 5), ('b', 5)], 6), "ababab");
    }

    #[test]
    fn three_to_one_is_exact_and_spread() {
        assert_eq!(sequence(&[('a', 3), ('b', 1)], 8), "aabaaaba");
    }

    #[test]
    fn nginx_reference_sequence() {
        // The example in nginx's commit introducing smooth weighted round-robin.
        assert_eq!(sequence(&[('a', 5), ('b', 1), ('c', 1)], 7), "aabacaa");
    }

    #[test]
    fn every_window_of_total_weight_is_exact_and_smooth() {
        let weights = [('a', 4), ('b', 2), ('c', 1), ('d', 3)];
        let total: u32 = weights.iter().map(|(_, w)| w).sum();
        let picks: Vec<char> = sequence(&weights, total as usize * 20).chars().collect();
        for window in picks.chunks(total as usize) {
            for (item, weight) in weights {
                let got = window.iter().filter(|&&c| c == item).count();
                assert_eq!(got, weight as usize, "{item} in {window:?}");
            }
        }
        // Smooth: the heaviest backend never gets more than two picks in a row here
        // (plain weighted round-robin would give it four).
        let longest_run = picks
            .chunk_by(|a, b| a == b)
            .map(<[char]>::len)
            .max()
            .unwrap();
        assert!(longest_run <= 2, "{picks:?}");
    }

    #[test]
    fn zero_weight_and_empty() {
        assert_eq!(sequence(&[('a', 0), ('b', 2)], 3), "bbb");
        let mut none = SmoothWeighted::<char>::new([('a', 0)]);
        assert_eq!(none.pick(), None);
        assert_eq!(none.items().count(), 0);
    }

    #[test]
    fn pick_except_skips_without_disturbing_others() {
        let mut schedule = SmoothWeighted::new([('a', 1), ('b', 1), ('c', 1)]);
        assert_eq!(schedule.pick(), Some(&'a'));
        assert_eq!(schedule.pick_except(|&c| c == 'b'), Some(&'c'));
        assert_eq!(schedule.pick_except(|_| true), None);
        let mut single = SmoothWeighted::new([('a', 1)]);
        assert_eq!(single.pick_except(|&c| c == 'a'), None);
    }
}
