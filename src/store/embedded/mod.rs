//! The embedded store: the catalog in sled, on this machine's disk.
//!
//! Every change goes through one writer thread, which applies each change together
//! with its audit record in one sled transaction, then flushes and fdatasyncs once
//! for the whole batch queued meanwhile (group commit) before answering: a reply of
//! success means the change survives a power cut, and concurrent writers share the
//! cost of a flush. Keeping the writer off the request workers also keeps every disk
//! flush off them. Reads go to sled, through [`visible`]: they show the catalog as of
//! the last flush that succeeded, never a change in flight.

use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, mpsc};

use parking_lot::Mutex;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sled::transaction::{ConflictableTransactionError, TransactionError, Transactional};
use sled::{IVec, Tree};
use tokio::sync::{oneshot, watch};

use crate::domain::change::{AuditRecord, Change, IMPORT_METHOD, Transition};
use crate::domain::filter::Filter;
use crate::domain::image::{Image, ImageId};
use crate::store::queue::{Place, WriteQueue};
use crate::store::{Applied, AuditRange, Author, Page, Record, StoreError, rules, trail_repeats};

mod by_id;
mod clean;
mod engine;
mod fault;
mod flush;
mod import;
pub mod mark;
mod open;
mod prune;
mod reads;
mod tally;
#[cfg(test)]
mod tests;
mod verify;
mod visible;
mod writer;

use by_id::*;
use fault::*;
use import::*;
use open::{in_use, unknown_format};
use tally::*;
use verify::*;
use writer::*;

use flush::{Answers, Flusher};
use visible::Visible;

pub use mark::MARK_FILE;
pub use open::RESTORE_ADVICE;

/// Written into every store; a store of an older version is upgraded in place at
/// open, one of an unknown (newer) version is refused, not guessed at.
///
/// 2: the meta tree keeps the audit trail's record count, size and next seq, so that
/// pruning old records never lets a seq be given twice.
/// 3: the trail is indexed by image (`by_id`), for one image's history.
pub const FORMAT_VERSION: &str = "3";
const FORMAT_KEY: &[u8] = b"format_version";
const IMAGES_TREE: &[u8] = b"images";
const AUDIT_TREE: &[u8] = b"audit";
/// The audit trail's index by image: see `by_id`.
const AUDIT_BY_ID_TREE: &[u8] = b"audit_by_id";
/// Counters kept in step with the data, so that nothing has to scan the catalog.
const META_TREE: &[u8] = b"meta";
const IMAGE_COUNT_KEY: &[u8] = b"image_count";
const AUDIT_RECORDS_KEY: &[u8] = b"audit_records";
const AUDIT_BYTES_KEY: &[u8] = b"audit_bytes";
const NEXT_SEQ_KEY: &[u8] = b"next_seq";
/// How often the writer looks for audit records past their retention, when idle.
const PRUNE_EVERY: Duration = Duration::from_secs(60);
/// Audit records removed per transaction, so that pruning a long trail does not
/// hold writes back for long.
const PRUNE_CHUNK: usize = 10_000;
/// Upper bound on changes applied between two flushes, so replies are not held back
/// for long under a flood of writes.
const MAX_BATCH: usize = 1024;
/// Images per transaction of an import.
const IMPORT_CHUNK: usize = 1000;

/// What the writer thread is asked to do.
enum Work {
    Change(Change),
    /// An audit trail moved in with its seqs, then many creates, in one atomic step:
    /// all land, or none.
    Import {
        images: Vec<Image>,
        trail: Vec<AuditRecord>,
    },
    /// Answered once every job queued before it has been answered.
    Barrier,
    /// Audit retention, now rather than when the writer is next idle.
    Prune,
    /// Makes the writer panic, to test that its death is watched.
    #[cfg(test)]
    Crash,
}

struct Job {
    work: Work,
    author: Author,
    reply: Reply,
    /// The job's place in the bounded queue, given back when the job is dropped.
    _place: Place,
}

/// Where a job's outcome goes.
struct Reply {
    sender: Option<oneshot::Sender<Result<Applied, StoreError>>>,
    health: Health,
}

impl Reply {
    /// The requester may have gone; the outcome stands all the same.
    fn send(mut self, outcome: Result<Applied, StoreError>) {
        if let Some(sender) = self.sender.take() {
            let _ = sender.send(outcome);
        }
    }
}

impl Drop for Reply {
    /// A reply dropped while its writer unwinds is of unknown outcome; failing the
    /// store here, before the sender goes, lets the requester tell that apart from a
    /// writer that stopped in order.
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.health.fail(WRITER_PANICKED.into());
        }
    }
}

/// Whether the store still vouches for what it serves. Once a flush or a commit has
/// failed, what sled holds in memory may differ from what is on disk, so the store
/// stops for good (fail-stop, as PostgreSQL does on a failed fsync): the process is
/// meant to exit and start again on what is durably on disk.
#[derive(Clone)]
struct Health {
    reason: Arc<watch::Sender<Option<String>>>,
    /// Mirrors `reason.is_some()` for the checks on every item of a listing.
    failed: Arc<AtomicBool>,
}

impl Health {
    fn new() -> Health {
        Health {
            reason: Arc::new(watch::Sender::new(None)),
            failed: Arc::new(AtomicBool::new(false)),
        }
    }

    fn is_failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    /// Marks the store as failed; the first reason is the one kept.
    fn fail(&self, reason: String) {
        self.failed.store(true, Ordering::Release);
        self.reason.send_if_modified(|current| {
            if current.is_some() {
                return false;
            }
            log::error!(
                "the store has stopped after a failure: {reason}; it serves nothing more, and \
                 the process exits so that a restart reopens it on what is durably on disk"
            );
            *current = Some(reason);
            true
        });
    }

    fn failure(&self) -> Option<String> {
        if !self.is_failed() {
            return None;
        }
        self.reason.borrow().clone()
    }

    fn check(&self) -> Result<(), StoreError> {
        match self.failure() {
            None => Ok(()),
            Some(reason) => Err(StoreError::Stopped(reason)),
        }
    }
}

const WRITER_PANICKED: &str = "the store's writer thread panicked";

#[cfg(test)]
type BeforeFlush = Arc<Mutex<Option<Box<dyn FnMut() + Send>>>>;

pub struct SledStore {
    db: sled::Db,
    images: Tree,
    audit: Tree,
    by_id: Tree,
    visible: Arc<Visible>,
    flusher: Arc<Flusher>,
    gauges: Arc<Gauges>,
    generation: Arc<AtomicU64>,
    /// Seconds an audit record is kept; 0 keeps every record.
    retention: Arc<AtomicU64>,
    writer: Mutex<Option<(mpsc::Sender<Job>, JoinHandle<()>)>>,
    queue: WriteQueue,
    health: Health,
    /// Held by tests to hold the writer back between batches.
    #[cfg(test)]
    pause: Arc<Mutex<()>>,
    /// Run by the writer after applying a batch, before flushing it: lets tests
    /// look at a batch in flight.
    #[cfg(test)]
    before_flush: BeforeFlush,
    mark: Arc<crate::store::embedded::mark::MarkKeeper>,
    dir: PathBuf,
    /// Set by the first shutdown: the second (at drop) has nothing left to do.
    closed: AtomicBool,
    /// The data dir's lock: declared last, so it is let go after sled's files.
    _lock: std::fs::File,
}

impl SledStore {
    pub fn open(dir: &Path, cache_mb: u64) -> Result<SledStore, StoreError> {
        SledStore::open_with(
            dir,
            &EmbeddedOptions {
                cache_mb,
                ..EmbeddedOptions::default()
            },
        )
    }

    /// Opens the store in `dir`: takes the folder's lock, opens sled and reads every
    /// entry once with sled's panics contained (a damaged store is
    /// [`StoreError::Damaged`], not a panic), then compares the store's count of
    /// changes with the high-water mark: a store behind it is refused unless
    /// `accept_data_loss`.
    pub fn open_with(dir: &Path, options: &EmbeddedOptions) -> Result<SledStore, StoreError> {
        let EmbeddedOptions {
            cache_mb,
            accept_data_loss,
            flush_timeout,
        } = *options;
        let lock = crate::store::embedded::open::prepare(dir)?;
        let started = Instant::now();
        let trusted = clean::take(dir);
        let Opened {
            db,
            images,
            audit,
            by_id,
            meta,
            tally,
            fresh,
        } = crate::store::embedded::open::contain(dir, || open_engine(dir, cache_mb, trusted))?;
        log::info!(
            "store at {} {}: {} images, {} audit records, {} changes in {:.0} ms",
            dir.display(),
            if trusted {
                "opened as it was left at a clean stop (files unchanged, read-through skipped)"
            } else {
                "read through"
            },
            tally.images,
            tally.audit_records,
            tally.changes(),
            started.elapsed().as_secs_f64() * 1000.0
        );
        let had_mark = fresh || meta.get(HAS_MARK_KEY)?.is_some();
        let marked = crate::store::embedded::mark::check(
            dir,
            tally.changes(),
            had_mark && !fresh,
            accept_data_loss,
        )?;
        if fresh {
            Tally::default().store(&meta)?;
            db.insert(FORMAT_KEY, FORMAT_VERSION)?;
        }
        if meta.get(HAS_MARK_KEY)?.is_none() {
            meta.insert(HAS_MARK_KEY, &[1u8])?;
        }
        db.flush()?;
        // The store's files were just made (or found): their names must survive a
        // power cut as much as their data.
        flush::sync_dir(dir).map_err(io_failed)?;
        if fresh && let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            flush::sync_dir(parent).map_err(io_failed)?;
        }
        let mark = Arc::new(crate::store::embedded::mark::MarkKeeper::start(
            dir,
            tally.changes(),
            marked,
        )?);
        let gauges = Arc::new(Gauges::default());
        gauges.show(&tally);
        let generation = Arc::new(AtomicU64::new(0));
        let (sender, receiver) = mpsc::channel();
        let retention = Arc::new(AtomicU64::new(0));
        let health = Health::new();
        let visible = Arc::new(Visible::new(tally.changes()));
        let flusher = Arc::new(Flusher::open(
            dir,
            db.clone(),
            flush_timeout,
            health.clone(),
        )?);
        #[cfg(test)]
        let pause = Arc::new(Mutex::new(()));
        #[cfg(test)]
        let before_flush = BeforeFlush::default();
        let writer = Writer {
            images: images.clone(),
            audit: audit.clone(),
            by_id: by_id.clone(),
            meta,
            gauges: gauges.clone(),
            generation: generation.clone(),
            tally,
            retention: retention.clone(),
            last_prune: None,
            health: health.clone(),
            #[cfg(test)]
            pause: pause.clone(),
            #[cfg(test)]
            before_flush: before_flush.clone(),
            mark: mark.clone(),
            visible: visible.clone(),
            flusher: flusher.clone(),
        };
        let watched = health.clone();
        let handle = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || {
                // The writer is watched: its death is a failure like a failed flush,
                // not a silent end of all writes.
                let run =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| writer.run(receiver)));
                if run.is_err() {
                    watched.fail(WRITER_PANICKED.into());
                }
            })
            .map_err(io_failed)?;
        Ok(SledStore {
            db,
            images,
            audit,
            by_id,
            visible,
            flusher,
            gauges,
            generation,
            retention,
            writer: Mutex::new(Some((sender, handle))),
            queue: WriteQueue::default(),
            health,
            #[cfg(test)]
            pause,
            #[cfg(test)]
            before_flush,
            mark,
            dir: dir.to_owned(),
            closed: AtomicBool::new(false),
            _lock: lock,
        })
    }

    /// Applies a change with its audit record; resolves once both are on disk.
    pub async fn apply(
        &self,
        change: Change,
        author: impl Into<Author>,
    ) -> Result<Applied, StoreError> {
        self.submit(Work::Change(change), author.into()).await
    }

    /// Resolves once every change queued before it has been answered.
    pub async fn settle(&self) -> Result<(), StoreError> {
        self.submit(Work::Barrier, Author::tool("image-catalog"))
            .await
            .map(|_| ())
    }
}

/// How to open the embedded store.
#[derive(Debug, Clone, Copy)]
pub struct EmbeddedOptions {
    /// sled's page cache.
    pub cache_mb: u64,
    /// Start on a store behind its high-water mark (or that lost it).
    pub accept_data_loss: bool,
    /// A flush that takes longer is a failure (fail-stop).
    pub flush_timeout: Duration,
}

impl Default for EmbeddedOptions {
    fn default() -> Self {
        EmbeddedOptions {
            cache_mb: 32,
            accept_data_loss: false,
            flush_timeout: Duration::from_secs(30),
        }
    }
}

impl SledStore {
    async fn submit(&self, work: Work, author: Author) -> Result<Applied, StoreError> {
        self.health.check()?;
        let place = self.queue.place().await?;
        let (reply, answer) = oneshot::channel();
        let job = Job {
            work,
            author,
            reply: Reply {
                sender: Some(reply),
                health: self.health.clone(),
            },
            _place: place,
        };
        {
            let writer = self.writer.lock();
            let (sender, _) = writer
                .as_ref()
                .ok_or_else(|| StoreError::Unavailable("the store is shut down".into()))?;
            // Not sent: the writer is gone, and the change was never applied.
            sender.send(job).map_err(|_| self.stopped())?;
        }
        // Sent but never answered: the writer died with the job in hand, and whether
        // the change reached the disk cannot be known from here.
        answer.await.map_err(|_| match self.health.failure() {
            // A writer that stopped on a failure answered every job it had applied.
            Some(reason) if reason != WRITER_PANICKED => StoreError::Stopped(reason),
            _ => StoreError::OutcomeUnknown(WRITER_PANICKED.into()),
        })?
    }

    /// Why the writer is gone: a failure, or a shutdown.
    fn stopped(&self) -> StoreError {
        match self.health.failure() {
            Some(reason) => StoreError::Stopped(reason),
            None => StoreError::Unavailable("the store is shut down".into()),
        }
    }

    /// The reason the store stopped, once it has failed.
    pub fn failure(&self) -> Option<String> {
        self.health.failure()
    }

    /// Resolves once the store has failed and stopped (never, if it does not).
    pub async fn failed(&self) -> String {
        let mut changes = self.health.reason.subscribe();
        let reason = changes
            .wait_for(Option::is_some)
            .await
            .map(|reason| reason.clone().unwrap_or_default());
        match reason {
            Ok(reason) => reason,
            // The sender lives as long as `self`; this cannot end otherwise.
            Err(_) => std::future::pending().await,
        }
    }

    /// Keeps audit records for `keep` (`None`: for ever). Older ones are removed by the
    /// writer, a chunk at a time, when it is idle and at least once a minute.
    pub fn keep_audit_for(&self, keep: Option<Duration>) {
        let seconds = keep.map_or(0, |d| d.as_secs().max(1));
        self.retention.store(seconds, Ordering::Relaxed);
    }

    /// The data dir.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The marker of an import under way, if any.
    #[cfg(test)]
    fn meta_import_marker(&self) -> Option<IVec> {
        self.db
            .open_tree(META_TREE)
            .and_then(|meta| meta.get(IMPORT_KEY))
            .unwrap()
    }

    /// Overwrites the recorded format version: lets tests build a store from another
    /// version of the program.
    #[doc(hidden)]
    pub fn set_format_version_for_tests(&self, version: &str) -> Result<(), StoreError> {
        self.db.insert(FORMAT_KEY, version)?;
        self.db.flush()?;
        Ok(())
    }

    /// Stops the writer after the changes already queued, and flushes.
    pub fn shutdown(&self) -> Result<(), StoreError> {
        // After a failure, what is in memory is not to be written out (the next start
        // reopens the store on what was durable), and the writer may be stuck in a
        // flush that never returns: it is not waited for.
        self.health.check()?;
        if self.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let writer = self.writer.lock().take();
        if let Some((sender, handle)) = writer {
            drop(sender);
            let _ = handle.join();
        }
        self.health.check()?;
        let (_, flushed) = self.flusher.flush("the final flush", Vec::new());
        flushed.map_err(StoreError::Failed)?;
        self.flusher.close();
        self.mark.close();
        // Only what sled flushed is recorded; a record that cannot be written only
        // costs the next start its shortcut.
        if let Err(e) = clean::record(&self.dir) {
            log::warn!(
                "cannot record the clean stop in {}: {e}; the next start reads the store through",
                self.dir.display()
            );
        }
        Ok(())
    }
}

impl Drop for SledStore {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

/// Set once the store has had a high-water mark: from then on a missing mark file is
/// a loss, not a store from before marks.
const HAS_MARK_KEY: &[u8] = b"has_mark";
