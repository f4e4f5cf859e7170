//! Allocation of service and backend ids, the indexes of the XDP program's arrays.
//!
//! A released id is quarantined, not reused at once: an XDP program that read an old ring
//! a moment ago may still look that id up. Quarantined ids become free again only after
//! [`super::rcu::wait_for_readers`].

use std::collections::BTreeSet;

use anyhow::{Result, bail};

use super::rcu;

#[derive(Debug)]
pub struct IdPool {
    what: &'static str,
    /// Never used, or released before the last grace period.
    free: BTreeSet<u32>,
    quarantined: Vec<u32>,
}

impl IdPool {
    pub fn new(what: &'static str, capacity: u32) -> Self {
        Self {
            what,
            free: (0..capacity).collect(),
            quarantined: Vec::new(),
        }
    }

    /// The lowest free id.
    pub fn allocate(&mut self) -> Result<u32> {
        if self.free.is_empty() && !self.quarantined.is_empty() {
            rcu::wait_for_readers();
            self.free.extend(self.quarantined.drain(..));
        }
        match self.free.pop_first() {
            Some(id) => Ok(id),
            None => bail!("no free {} id: the data path's limit is reached", self.what),
        }
    }

    pub fn release(&mut self, id: u32) {
        self.quarantined.push(id);
    }

    /// Marks `id` as taken (by state a previous run left in the maps).
    pub fn claim(&mut self, id: u32) {
        self.free.remove(&id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn released_ids_come_back_only_when_nothing_else_is_free() {
        let mut pool = IdPool::new("test", 2);
        assert_eq!(pool.allocate().unwrap(), 0);
        pool.release(0);
        assert_eq!(pool.allocate().unwrap(), 1);
        assert_eq!(pool.allocate().unwrap(), 0);
        assert!(pool.allocate().is_err());
    }
}
