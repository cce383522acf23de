//! The ids of the events this node delivered from other nodes lately, so
//! that one event heard twice (live, and again from a backfill) reaches its
//! subscribers once. Bounded: the oldest id is forgotten first.

use std::collections::{HashSet, VecDeque};

/// A first-in, first-out set of event ids.
#[derive(Debug)]
pub struct RecentIds {
    ids: HashSet<[u8; 32]>,
    order: VecDeque<[u8; 32]>,
    capacity: usize,
}

impl RecentIds {
    /// A set remembering the last `capacity` ids.
    pub fn new(capacity: usize) -> RecentIds {
        let capacity = capacity.max(1);
        RecentIds {
            ids: HashSet::with_capacity(capacity),
            order: VecDeque::with_capacity(capacity),
            capacity,
        }
    }

    /// Remembers `id`; false when it was already remembered.
    pub fn insert(&mut self, id: [u8; 32]) -> bool {
        if !self.ids.insert(id) {
            return false;
        }
        if self.order.len() == self.capacity
            && let Some(oldest) = self.order.pop_front()
        {
            self.ids.remove(&oldest);
        }
        self.order.push_back(id);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_the_last_ids_only() {
        let mut recent = RecentIds::new(2);
        assert!(recent.insert([1; 32]));
        assert!(!recent.insert([1; 32]));
        assert!(recent.insert([2; 32]));
        assert!(recent.insert([3; 32]));
        assert!(recent.insert([1; 32]), "the oldest was forgotten");
        assert!(!recent.insert([3; 32]));
        assert_eq!(recent.ids.len(), 2);
        assert_eq!(recent.order.len(), 2);
    }
}
