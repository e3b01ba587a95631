//! What readers may see: the catalog as of the last flush that succeeded.
//!
//! The writer applies a batch to sled before flushing it, and sled shows what is
//! applied at once. So, before applying, the writer files here the durable value of
//! every image the batch touches, and takes the entries back out only once the flush
//! (and its fdatasync) succeeded; a reader reads sled first, then this, and shows the
//! value filed here where there is one. A change in flight stays invisible until its
//! 200 can be sent, and one whose flush failed is never shown (the store then stops).
//! Audit records are shown up to the last durable seq. No read waits for a flush.

use std::collections::{BTreeMap, VecDeque};
use std::ops::Bound;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::RwLock;
use sled::IVec;

/// An image's durable value: `None` where the image did not exist.
type Durable = Option<IVec>;

pub(super) struct Visible {
    /// Keyed by image id; empty between batches.
    unflushed: RwLock<BTreeMap<IVec, Durable>>,
    /// The highest audit seq whose change is durable.
    durable_seq: AtomicU64,
    /// The same, for those who wait for changes (the feed).
    landed: tokio::sync::watch::Sender<u64>,
}

impl Visible {
    pub(super) fn new(durable_seq: u64) -> Visible {
        Visible {
            unflushed: RwLock::new(BTreeMap::new()),
            durable_seq: AtomicU64::new(durable_seq),
            landed: tokio::sync::watch::Sender::new(durable_seq),
        }
    }

    /// Called by the writer before it applies a change to `key`, with the value sled
    /// holds now (durable: the batch before was flushed). The first value filed for a
    /// key in a batch is the durable one.
    pub(super) fn hide(&self, key: &[u8], durable: Durable) {
        self.unflushed
            .write()
            .entry(IVec::from(key))
            .or_insert(durable);
    }

    /// Called by the writer once its batch is durable, up to audit seq `durable_seq`.
    pub(super) fn reveal(&self, durable_seq: u64) {
        self.durable_seq.store(durable_seq, Ordering::Release);
        self.unflushed.write().clear();
        // After the reads show it: whoever wakes on this finds the batch.
        self.landed.send_if_modified(|seq| {
            let moved = durable_seq > *seq;
            *seq = (*seq).max(durable_seq);
            moved
        });
    }

    /// The durable seq as it moves.
    pub(super) fn landed(&self) -> tokio::sync::watch::Receiver<u64> {
        self.landed.subscribe()
    }

    pub(super) fn durable_seq(&self) -> u64 {
        self.durable_seq.load(Ordering::Acquire)
    }

    /// The durable value of `key`, given what sled returned for it (read before this).
    pub(super) fn get(&self, key: &[u8], read: Durable) -> Durable {
        let unflushed = self.unflushed.read();
        if unflushed.is_empty() {
            return read;
        }
        match unflushed.get(key) {
            Some(durable) => durable.clone(),
            None => read,
        }
    }

    /// The images of `items` (sled's, in key order, from `start` on) as durable: a
    /// change in flight is replaced by the value it hides, and an image deleted in
    /// flight shows in its place.
    pub(super) fn merge<I>(
        self: Arc<Self>,
        start: Bound<IVec>,
        items: I,
    ) -> impl Iterator<Item = sled::Result<IVec>> + Send + 'static
    where
        I: Iterator<Item = sled::Result<(IVec, IVec)>> + Send + 'static,
    {
        Merge {
            visible: self,
            items,
            after: start,
            ready: VecDeque::new(),
            done: false,
        }
    }
}

struct Merge<I> {
    visible: Arc<Visible>,
    items: I,
    /// Everything up to here has been taken from `items`.
    after: Bound<IVec>,
    ready: VecDeque<sled::Result<IVec>>,
    done: bool,
}

impl<I> Merge<I>
where
    I: Iterator<Item = sled::Result<(IVec, IVec)>>,
{
    /// Queues the hidden durable images between `after` and `until` (sled no longer
    /// holds them: deleted in flight), then, for `at`, its durable value.
    fn fill(&mut self, until: Bound<IVec>, at: Option<(IVec, IVec)>) {
        let unflushed = self.visible.unflushed.read();
        if !unflushed.is_empty() {
            let range = (self.after.clone(), until);
            let valid = match &range {
                (Bound::Excluded(low), Bound::Excluded(high)) => low < high,
                (Bound::Included(low), Bound::Excluded(high)) => low < high,
                _ => true,
            };
            if valid {
                for (_, durable) in unflushed.range::<IVec, _>(range) {
                    if let Some(value) = durable {
                        self.ready.push_back(Ok(value.clone()));
                    }
                }
            }
        }
        if let Some((key, value)) = at {
            match unflushed.get(&key) {
                Some(Some(durable)) => self.ready.push_back(Ok(durable.clone())),
                Some(None) => {}
                None => self.ready.push_back(Ok(value)),
            }
            self.after = Bound::Excluded(key);
        }
    }
}

impl<I> Iterator for Merge<I>
where
    I: Iterator<Item = sled::Result<(IVec, IVec)>>,
{
    type Item = sled::Result<IVec>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(item) = self.ready.pop_front() {
                return Some(item);
            }
            if self.done {
                return None;
            }
            match self.items.next() {
                Some(Ok((key, value))) => {
                    self.fill(Bound::Excluded(key.clone()), Some((key, value)));
                }
                Some(Err(e)) => {
                    self.done = true;
                    return Some(Err(e));
                }
                None => {
                    self.done = true;
                    self.fill(Bound::Unbounded, None);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listed(visible: &Arc<Visible>, sled: &[(&str, &str)], start: Bound<IVec>) -> Vec<String> {
        let items: Vec<sled::Result<(IVec, IVec)>> = sled
            .iter()
            .map(|(k, v)| Ok((IVec::from(*k), IVec::from(*v))))
            .collect();
        visible
            .clone()
            .merge(start, items.into_iter())
            .map(|v| String::from_utf8(v.unwrap().to_vec()).unwrap())
            .collect()
    }

    #[test]
    fn changes_in_flight_show_as_they_were() {
        let visible = Arc::new(Visible::new(7));
        // Durable: a=A, c=C, e=E. In flight: b created, c updated to C2, d... e deleted.
        visible.hide(b"b", None);
        visible.hide(b"c", Some(IVec::from("C")));
        visible.hide(b"e", Some(IVec::from("E")));
        let sled = [("a", "A"), ("b", "B"), ("c", "C2")];
        assert_eq!(listed(&visible, &sled, Bound::Unbounded), ["A", "C", "E"]);
        assert_eq!(
            listed(&visible, &sled[2..], Bound::Excluded(IVec::from("b"))),
            ["C", "E"]
        );
        assert_eq!(visible.get(b"b", Some(IVec::from("B"))), None);
        assert_eq!(visible.get(b"e", None), Some(IVec::from("E")));
        assert_eq!(
            visible.get(b"a", Some(IVec::from("A"))),
            Some(IVec::from("A"))
        );
        // A second change to `c` in the same batch keeps the durable value.
        visible.hide(b"c", Some(IVec::from("C2")));
        assert_eq!(visible.get(b"c", None), Some(IVec::from("C")));

        visible.reveal(9);
        assert_eq!(visible.durable_seq(), 9);
        assert_eq!(listed(&visible, &sled, Bound::Unbounded), ["A", "B", "C2"]);
    }

    #[test]
    fn a_hidden_deletion_before_the_start_stays_out() {
        let visible = Arc::new(Visible::new(0));
        visible.hide(b"a", Some(IVec::from("A")));
        visible.hide(b"z", Some(IVec::from("Z")));
        let sled = [("m", "M")];
        assert_eq!(
            listed(&visible, &sled, Bound::Excluded(IVec::from("b"))),
            ["M", "Z"]
        );
        assert_eq!(
            listed(&visible, &[], Bound::Excluded(IVec::from("z"))),
            Vec::<String>::new()
        );
    }
}
