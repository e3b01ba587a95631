//! Changes as they happen: the requests that wait for one, and the dispatcher that
//! tells them.
//!
//! The store says how far the durable trail reaches (`Store::durable_seqs`). The
//! dispatcher ([`Feed::follow`]) reads each record that lands once, in seq order,
//! keeps the recent ones in memory for the streams, and wakes the requests waiting on
//! its image, and only those. A waiting request is a future parked on a `watch` or a
//! `Notify`: it holds no worker thread and no database connection.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use crate::store::{AuditRange, Store};

/// Records kept in memory for the streams, at most; a follower further behind reads
/// the store instead.
const RECENT_RECORDS: usize = 4096;
/// Records the dispatcher reads at once.
const READ_BATCH: usize = 1000;
/// How long the dispatcher waits before reading again after the store failed.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// One durable audit record, as the store keeps it.
#[derive(Debug)]
pub struct Landed {
    pub seq: u64,
    /// Its image's id.
    pub id: String,
    /// The stored record's JSON.
    pub json: Bytes,
    /// The record as a stream sends it, made by the first stream that sends it.
    event: OnceLock<Bytes>,
}

impl Landed {
    pub fn new(seq: u64, id: String, json: Bytes) -> Landed {
        Landed {
            seq,
            id,
            json,
            event: OnceLock::new(),
        }
    }

    /// The record as a stream's event: `make` turns the JSON into one, once for all
    /// the streams that send it (a write reaches every follower).
    pub fn event<E>(&self, make: impl FnOnce(&[u8]) -> Result<Bytes, E>) -> Result<Bytes, E> {
        if let Some(event) = self.event.get() {
            return Ok(event.clone());
        }
        let made = make(&self.json)?;
        Ok(self.event.get_or_init(|| made).clone())
    }
}

/// Why a wait ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// What it waited for landed.
    Landed,
    /// Its time ran out.
    TimedOut,
    /// The server is stopping: answer as if the time had run out.
    Closing,
    /// The config was reloaded: the waiter may have lost its policy.
    Reloaded,
}

/// Too many requests are waiting already (`[server] max_waiters`).
#[derive(Debug, Clone, Copy)]
pub struct Full {
    pub max_waiters: usize,
}

pub struct Feed {
    /// The highest seq dispatched: its record is in `recent` and its image's waiters
    /// were woken.
    delivered: watch::Sender<u64>,
    recent: RwLock<Recent>,
    /// The requests waiting on one image, by id.
    images: Mutex<HashMap<String, ImageWaiters>>,
    closing: watch::Sender<bool>,
    /// Moves at each config reload.
    reloads: watch::Sender<u64>,
    waiting: AtomicUsize,
    max_waiters: usize,
}

/// The records after `after`, in seq order.
struct Recent {
    after: u64,
    records: VecDeque<Arc<Landed>>,
}

struct ImageWaiters {
    notify: Arc<Notify>,
    count: usize,
}

impl Feed {
    /// A feed whose dispatcher starts after `seq` (what is durable now).
    pub fn new(seq: u64, max_waiters: usize) -> Feed {
        Feed {
            delivered: watch::Sender::new(seq),
            recent: RwLock::new(Recent {
                after: seq,
                records: VecDeque::new(),
            }),
            images: Mutex::new(HashMap::new()),
            closing: watch::Sender::new(false),
            reloads: watch::Sender::new(0),
            waiting: AtomicUsize::new(0),
            max_waiters,
        }
    }

    /// The highest seq dispatched.
    pub fn delivered(&self) -> u64 {
        *self.delivered.borrow()
    }

    /// Requests waiting now.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// Up to `limit` records after `after` from memory; `None` when memory does not
    /// reach back that far (read the store).
    pub fn recent_after(&self, after: u64, limit: usize) -> Option<Vec<Arc<Landed>>> {
        let recent = self.recent.read();
        if after < recent.after {
            return None;
        }
        let start = recent.records.partition_point(|r| r.seq <= after);
        Some(recent.records.range(start..).take(limit).cloned().collect())
    }

    /// A place among the waiters, or `Full`. Dropping it gives the place back.
    pub fn admit(self: &Arc<Self>) -> Result<Waiter, Full> {
        let taken = self.waiting.fetch_add(1, Ordering::AcqRel);
        if taken >= self.max_waiters {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            return Err(Full {
                max_waiters: self.max_waiters,
            });
        }
        Ok(Waiter {
            feed: self.clone(),
            delivered: self.delivered.subscribe(),
            closing: self.closing.subscribe(),
            reloads: self.reloads.subscribe(),
        })
    }

    /// Wakes on changes to image `id` until dropped.
    pub fn watch_image(self: &Arc<Self>, id: &str) -> ImageWatch {
        let notify = {
            let mut images = self.images.lock();
            let waiters = images.entry(id.to_owned()).or_insert_with(|| ImageWaiters {
                notify: Arc::new(Notify::new()),
                count: 0,
            });
            waiters.count += 1;
            waiters.notify.clone()
        };
        ImageWatch {
            feed: self.clone(),
            id: id.to_owned(),
            notify,
        }
    }

    /// The server is stopping: every wait ends now, and streams end.
    pub fn close(&self) {
        self.closing.send_replace(true);
    }

    /// The config was reloaded: every waiter checks its policy again.
    pub fn reloaded(&self) {
        self.reloads.send_modify(|epoch| *epoch += 1);
    }

    /// The dispatcher: follows the store's durable seq until the feed closes, reading
    /// each record that lands once, in seq order.
    pub async fn follow(&self, store: &Store) {
        let mut durable = store.durable_seqs();
        let mut closing = self.closing.subscribe();
        let mut failing = false;
        loop {
            let target = *durable.borrow_and_update();
            if target > self.delivered() {
                match self.dispatch_up_to(store, target).await {
                    Ok(()) => {
                        if failing {
                            log::info!("the change feed reads the store again");
                        }
                        failing = false;
                    }
                    Err(e) => {
                        if !failing {
                            log::warn!(
                                "the change feed cannot read the store ({e}); waiting requests \
                                 keep waiting, and it tries again every {} s",
                                RETRY_AFTER.as_secs()
                            );
                        }
                        failing = true;
                        tokio::select! {
                            _ = tokio::time::sleep(RETRY_AFTER) => continue,
                            _ = closing.wait_for(|closing| *closing) => return,
                        }
                    }
                }
            }
            tokio::select! {
                changed = durable.changed() => if changed.is_err() { return },
                _ = closing.wait_for(|closing| *closing) => return,
            }
        }
    }

    /// Reads the records after what was delivered, up to `target`, and hands them out.
    async fn dispatch_up_to(
        &self,
        store: &Store,
        target: u64,
    ) -> Result<(), crate::store::StoreError> {
        loop {
            let after = self.delivered();
            let page = store
                .audit_page(AuditRange::After(after), None, READ_BATCH)
                .await?;
            let mut landed = Vec::with_capacity(page.records.len());
            for json in page.records {
                let named: Named =
                    serde_json::from_slice(&json).map_err(crate::store::StoreError::unreadable)?;
                landed.push(Arc::new(Landed::new(named.seq, named.id, json)));
            }
            // Seqs without a record (pruned, or given back) are passed over.
            let reached = match landed.last() {
                Some(last) if page.more => last.seq,
                Some(last) => last.seq.max(target),
                None => target,
            };
            self.hand_out(landed, reached);
            if reached >= target {
                return Ok(());
            }
        }
    }

    /// Files `landed` in memory, wakes the waiters of their images, then says that
    /// everything up to `reached` was delivered.
    fn hand_out(&self, landed: Vec<Arc<Landed>>, reached: u64) {
        {
            let mut recent = self.recent.write();
            for record in &landed {
                recent.records.push_back(record.clone());
            }
            while recent.records.len() > RECENT_RECORDS {
                if let Some(first) = recent.records.pop_front() {
                    recent.after = first.seq;
                }
            }
        }
        {
            let images = self.images.lock();
            if !images.is_empty() {
                for record in &landed {
                    if let Some(waiters) = images.get(&record.id) {
                        waiters.notify.notify_waiters();
                    }
                }
            }
        }
        self.delivered.send_if_modified(|delivered| {
            let moved = reached > *delivered;
            *delivered = (*delivered).max(reached);
            moved
        });
    }
}

/// The two fields of a record the dispatcher needs.
#[derive(serde::Deserialize)]
struct Named {
    seq: u64,
    id: String,
}

/// A request's place among the waiters.
pub struct Waiter {
    feed: Arc<Feed>,
    delivered: watch::Receiver<u64>,
    closing: watch::Receiver<bool>,
    reloads: watch::Receiver<u64>,
}

impl Waiter {
    /// Waits until a seq above `after` is delivered, or `until`.
    pub async fn for_seq_after(&mut self, after: u64, until: Instant) -> Ended {
        let Waiter {
            delivered,
            closing,
            reloads,
            ..
        } = self;
        tokio::select! {
            biased;
            _ = closing.wait_for(|closing| *closing) => Ended::Closing,
            _ = reloads.changed() => Ended::Reloaded,
            landed = delivered.wait_for(|&seq| seq > after) => match landed {
                Ok(_) => Ended::Landed,
                Err(_) => Ended::Closing,
            },
            _ = tokio::time::sleep_until(until) => Ended::TimedOut,
        }
    }

    /// Waits until `notified` (armed before the image was read) fires, or `until`.
    pub async fn for_image(
        &mut self,
        notified: std::pin::Pin<&mut tokio::sync::futures::Notified<'_>>,
        until: Instant,
    ) -> Ended {
        let Waiter {
            closing, reloads, ..
        } = self;
        tokio::select! {
            biased;
            _ = closing.wait_for(|closing| *closing) => Ended::Closing,
            _ = reloads.changed() => Ended::Reloaded,
            () = notified => Ended::Landed,
            _ = tokio::time::sleep_until(until) => Ended::TimedOut,
        }
    }

    /// The feed this waiter waits on.
    pub fn feed(&self) -> &Arc<Feed> {
        &self.feed
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        self.feed.waiting.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Wakes on changes to one image while held.
pub struct ImageWatch {
    feed: Arc<Feed>,
    id: String,
    notify: Arc<Notify>,
}

impl ImageWatch {
    /// A wake-up to arm (`Notified::enable`) before reading the image, so that a
    /// change landing in between is not missed.
    pub fn notified(&self) -> tokio::sync::futures::Notified<'_> {
        self.notify.notified()
    }
}

impl Drop for ImageWatch {
    fn drop(&mut self) {
        let mut images = self.feed.images.lock();
        if let Some(waiters) = images.get_mut(&self.id) {
            waiters.count -= 1;
            if waiters.count == 0 {
                images.remove(&self.id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn landed(seq: u64, id: &str) -> Arc<Landed> {
        Arc::new(Landed::new(
            seq,
            id.into(),
            Bytes::from(format!("{{\"seq\":{seq}}}")),
        ))
    }

    #[tokio::test]
    async fn memory_keeps_the_recent_records_and_says_when_it_does_not_reach() {
        let feed = Arc::new(Feed::new(10, 8));
        assert_eq!(feed.recent_after(10, 5).unwrap().len(), 0);
        assert!(feed.recent_after(9, 5).is_none(), "before it started");
        feed.hand_out(vec![landed(11, "a"), landed(13, "b")], 13);
        let seqs = |records: Vec<Arc<Landed>>| records.iter().map(|r| r.seq).collect::<Vec<_>>();
        assert_eq!(seqs(feed.recent_after(10, 5).unwrap()), [11, 13]);
        assert_eq!(seqs(feed.recent_after(11, 5).unwrap()), [13]);
        assert_eq!(seqs(feed.recent_after(10, 1).unwrap()), [11]);
        assert_eq!(feed.delivered(), 13);
        let many: Vec<_> = (14..14 + RECENT_RECORDS as u64)
            .map(|s| landed(s, "c"))
            .collect();
        feed.hand_out(many, 13 + RECENT_RECORDS as u64);
        assert!(feed.recent_after(12, 1).is_none(), "fell out of memory");
        assert_eq!(seqs(feed.recent_after(13, 1).unwrap()), [14]);
    }

    #[test]
    fn a_record_becomes_an_event_once_for_every_stream() {
        let record = landed(7, "a");
        let made = std::cell::Cell::new(0);
        let make = |json: &[u8]| {
            made.set(made.get() + 1);
            Ok::<_, ()>(Bytes::from([b"data: ", json].concat()))
        };
        let first = record.event(make).unwrap();
        let second = record.event(make).unwrap();
        assert_eq!(first, &b"data: {\"seq\":7}"[..]);
        assert_eq!(first, second);
        assert_eq!(made.get(), 1);
        let failing = landed(8, "b");
        assert!(failing.event(|_| Err::<Bytes, _>("unreadable")).is_err());
        assert_eq!(failing.event(make).unwrap(), &b"data: {\"seq\":8}"[..]);
    }

    #[tokio::test]
    async fn a_waiter_wakes_for_its_image_only_and_places_are_counted() {
        let feed = Arc::new(Feed::new(0, 2));
        let first = feed.admit().unwrap();
        let mut second = feed.admit().unwrap();
        assert!(feed.admit().is_err(), "full at 2");
        drop(first);
        assert_eq!(feed.waiting(), 1);
        let later = Instant::now() + Duration::from_secs(60);
        {
            let watch = feed.watch_image("a");
            let notified = watch.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            feed.hand_out(vec![landed(1, "b")], 1);
            let soon = Instant::now() + Duration::from_millis(50);
            let other = second.for_image(notified.as_mut(), soon).await;
            assert_eq!(other, Ended::TimedOut, "b is not a");
            feed.hand_out(vec![landed(2, "a")], 2);
            let own = second.for_image(notified.as_mut(), later).await;
            assert_eq!(own, Ended::Landed);
            notified.set(watch.notified());
            notified.as_mut().enable();
            feed.reloaded();
            let reload = second.for_image(notified.as_mut(), later).await;
            assert_eq!(reload, Ended::Reloaded);
        }
        assert!(
            feed.images.lock().is_empty(),
            "the last watch takes the entry out"
        );
        assert_eq!(second.for_seq_after(1, later).await, Ended::Landed);
        feed.reloaded();
        assert_eq!(second.for_seq_after(2, later).await, Ended::Reloaded);
        let wait = second.for_seq_after(2, later);
        feed.close();
        assert_eq!(wait.await, Ended::Closing);
    }
}
