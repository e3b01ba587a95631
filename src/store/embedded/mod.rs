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

use crate::domain::change::{AuditRecord, Change};
use crate::domain::image::{Image, ImageId, Provider};
use crate::store::queue::{Place, WriteQueue};
use crate::store::{
    Applied, Author, Page, Record, StoreError, rules, trail_overlaps, trail_repeats,
};

mod flush;
pub mod mark;
mod open;
mod visible;

use flush::{Answers, Flusher};
use visible::Visible;

pub use mark::MARK_FILE;
pub use open::RESTORE_ADVICE;

impl From<sled::Error> for StoreError {
    fn from(e: sled::Error) -> Self {
        match e {
            sled::Error::Io(io) => StoreError::Io(io),
            other => StoreError::Engine(other.to_string()),
        }
    }
}

/// Written into every store; a store of an older version is upgraded in place at
/// open, one of an unknown (newer) version is refused, not guessed at.
///
/// 2: the meta tree keeps the audit trail's record count, size and next seq, so that
/// pruning old records never lets a seq be given twice.
pub const FORMAT_VERSION: &str = "2";
const FORMAT_KEY: &[u8] = b"format_version";
const IMAGES_TREE: &[u8] = b"images";
const AUDIT_TREE: &[u8] = b"audit";
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
        let Opened {
            db,
            images,
            audit,
            meta,
            tally,
            fresh,
        } = crate::store::embedded::open::contain(dir, || open_engine(dir, cache_mb))?;
        log::info!(
            "store at {} read through: {} images, {} audit records, {} changes in {:.0} ms",
            dir.display(),
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
        flush::sync_dir(dir)?;
        if fresh && let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            flush::sync_dir(parent)?;
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
            .map_err(StoreError::Io)?;
        Ok(SledStore {
            db,
            images,
            audit,
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

/// What `open_engine` hands back: sled opened, upgraded if need be, and read through
/// once.
struct Opened {
    db: sled::Db,
    images: Tree,
    audit: Tree,
    meta: Tree,
    tally: Tally,
    /// Empty and without a format version: new, or emptied by damage. Nothing is
    /// written to it before the mark is checked, so a damaged store is left as found.
    fresh: bool,
}

/// How long an open waits for sled's own lock, which its threads may hold for a
/// moment after this process let go of a store (the data dir's lock is ours already).
const SLED_LOCK_WAIT: Duration = Duration::from_secs(2);

/// Opens sled in `dir` (locked already) and reads every entry once, so that damage
/// shows now (an error, or a panic `store_open::contain` catches) rather than on a
/// request. Any engine error here means the store cannot be trusted as it is.
fn open_engine(dir: &Path, cache_mb: u64) -> Result<Opened, StoreError> {
    let started = Instant::now();
    let db = loop {
        let opened = sled::Config::new()
            .path(dir)
            .cache_capacity(cache_mb.saturating_mul(1024 * 1024))
            // Every change is flushed before it is acknowledged; sled's own periodic
            // flusher would only add a thread that holds the data dir's lock for a
            // while after the store is dropped.
            .flush_every_ms(None)
            .open();
        match opened {
            Ok(db) => break db,
            Err(sled::Error::Io(io)) if io.to_string().contains("could not acquire lock") => {
                // Ours is held, so this is a lingering thread of ours, or an older
                // image-catalog that did not know the lock file.
                if started.elapsed() > SLED_LOCK_WAIT {
                    return Err(StoreError::InUse(dir.to_owned()));
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(engine_error(dir, e.into())),
        }
    };
    open_and_verify(dir, db).map_err(|e| engine_error(dir, e))
}

/// A failure while opening, said as what an operator faces: the folder, or damage.
fn engine_error(dir: &Path, err: StoreError) -> StoreError {
    match err {
        StoreError::Io(io)
            if matches!(
                io.kind(),
                std::io::ErrorKind::PermissionDenied
                    | std::io::ErrorKind::ReadOnlyFilesystem
                    | std::io::ErrorKind::NotADirectory
                    | std::io::ErrorKind::StorageFull
            ) =>
        {
            crate::store::embedded::open::io_error(dir, &io)
        }
        StoreError::Io(other) => crate::store::embedded::open::damaged(dir, other),
        StoreError::Engine(other) => crate::store::embedded::open::damaged(dir, other),
        StoreError::Corrupt(detail) => crate::store::embedded::open::damaged(dir, detail),
        other => other,
    }
}

fn open_and_verify(dir: &Path, db: sled::Db) -> Result<Opened, StoreError> {
    let images = db.open_tree(IMAGES_TREE)?;
    let audit = db.open_tree(AUDIT_TREE)?;
    let meta = db.open_tree(META_TREE)?;
    let mut fresh = false;
    match db.get(FORMAT_KEY)? {
        Some(found) if found.as_ref() == FORMAT_VERSION.as_bytes() => {}
        Some(found) if found.as_ref() == b"1" => {
            upgrade_from_1(&images, &audit, &meta)?;
            db.insert(FORMAT_KEY, FORMAT_VERSION)?;
            db.flush()?;
            log::info!(
                "the store at {} was upgraded in place from format 1 to {FORMAT_VERSION}",
                dir.display()
            );
        }
        Some(found) => {
            return Err(StoreError::UnknownFormat {
                dir: dir.to_owned(),
                found: String::from_utf8_lossy(&found).into_owned(),
            });
        }
        // A new store: set up once its mark is checked (see `Opened::fresh`).
        None if images.is_empty() && audit.is_empty() => fresh = true,
        None => {
            return Err(StoreError::UnknownFormat {
                dir: dir.to_owned(),
                found: "none".into(),
            });
        }
    }
    if let Some(removed) = undo_interrupted_import(&images, &audit, &meta)? {
        db.flush()?;
        log::warn!(
            "an import into {} was interrupted; undone: {removed} images it had created \
             were removed, so that the import is all or nothing",
            dir.display()
        );
    }
    let tally = Tally::load(&meta)?;
    // The first full read: every key and value of every tree, checked against the
    // tally kept in step with them.
    let default: &Tree = &db;
    for tree in [default, &meta] {
        for item in tree.iter() {
            item?;
        }
    }
    let mut stored_images = 0u64;
    for item in images.iter() {
        let (key, value) = item?;
        // JSON, not the API's rules of the day: ids stored under older rules stay.
        serde_json::from_slice::<serde::de::IgnoredAny>(&value).map_err(|e| {
            let key = String::from_utf8_lossy(&key);
            StoreError::Corrupt(format!("the record of image '{key}' is not JSON: {e}"))
        })?;
        stored_images += 1;
    }
    let mut stored_records = 0u64;
    for item in audit.iter() {
        let (key, _) = item?;
        if u64_from_bytes(&key)? >= tally.next_seq {
            return Err(StoreError::Corrupt(format!(
                "an audit record has seq {} but the next seq is {}",
                u64_from_bytes(&key)?,
                tally.next_seq
            )));
        }
        stored_records += 1;
    }
    if (stored_images, stored_records) != (tally.images, tally.audit_records) {
        return Err(StoreError::Corrupt(format!(
            "it holds {stored_images} images and {stored_records} audit records but counted \
             {} and {}",
            tally.images, tally.audit_records
        )));
    }
    Ok(Opened {
        db,
        images,
        audit,
        meta,
        tally,
        fresh,
    })
}

impl SledStore {
    /// Moves in `trail` (seqs kept) and creates all `images` with their audit records,
    /// in one atomic step (see `Store::import`); resolves once all of it is on disk.
    pub async fn import(
        &self,
        images: Vec<Image>,
        trail: Vec<AuditRecord>,
        author: impl Into<Author>,
    ) -> Result<u64, StoreError> {
        match self
            .submit(Work::Import { images, trail }, author.into())
            .await?
        {
            Applied::Imported(count) => Ok(count),
            _ => Err(StoreError::Corrupt(
                "the writer answered an import oddly".into(),
            )),
        }
    }

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
            let (sender, _) = writer.as_ref().ok_or(StoreError::Closed)?;
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
            None => StoreError::Closed,
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

    /// A read from sled, vouched for: a store that has failed serves nothing, and an
    /// engine error on a read (a damaged file, an I/O error) fails the store.
    fn read<T>(&self, read: impl FnOnce() -> sled::Result<T>) -> Result<T, StoreError> {
        self.health.check()?;
        let value = read().map_err(|e| self.engine_failed(e))?;
        // A failure flagged while reading may concern what was just read.
        self.health.check()?;
        Ok(value)
    }

    fn engine_failed(&self, e: sled::Error) -> StoreError {
        self.health.fail(format!("reading the store failed: {e}"));
        StoreError::from(e)
    }

    pub fn get(&self, id: &ImageId) -> Result<Option<Record>, StoreError> {
        let key = id.as_str().as_bytes();
        let read = self.read(|| self.images.get(key))?;
        Ok(self
            .visible
            .get(key, read)
            .map(|value| Record::from_slice(&value)))
    }

    /// Up to `limit` images after `after` (exclusive), in id order. A page of one
    /// provider may scan much of the catalog to fill: it runs on a blocking thread.
    pub async fn list_page(
        &self,
        after: Option<&ImageId>,
        provider: Option<&Provider>,
        limit: usize,
    ) -> Result<Page, StoreError> {
        let items = self.list_from(after, provider.cloned());
        if provider.is_none() {
            // At most `limit + 1` reads in key order: cheaper than a thread hop.
            return take_page(items, limit);
        }
        tokio::task::spawn_blocking(move || take_page(items, limit))
            .await
            .map_err(|e| StoreError::Corrupt(format!("a listing thread failed: {e}")))?
    }

    /// Every image after `after`, in id order, read lazily: memory does not grow with
    /// the catalog. Blocking: a long scan belongs on a blocking thread.
    pub fn list_from(
        &self,
        after: Option<&ImageId>,
        provider: Option<Provider>,
    ) -> impl Iterator<Item = Result<Bytes, StoreError>> + Send + 'static {
        let start = match after {
            Some(id) => Bound::Excluded(IVec::from(id.as_str())),
            None => Bound::Unbounded,
        };
        let items = self
            .images
            .range::<IVec, _>((start.clone(), Bound::Unbounded));
        let items = self.visible.clone().merge(start, items);
        self.vouched(items).filter_map(move |item| {
            let value = match item {
                Ok(value) => value,
                Err(e) => return Some(Err(e)),
            };
            let Some(provider) = &provider else {
                return Some(Ok(value));
            };
            match Record::from(value.clone()).image() {
                Ok(image) if &image.provider == provider => Some(Ok(value)),
                Ok(_) => None,
                Err(e) => Some(Err(e)),
            }
        })
    }

    /// Items read from sled, each vouched for as [`SledStore::read`] does; the listing
    /// ends at the first failure.
    fn vouched(
        &self,
        items: impl Iterator<Item = sled::Result<IVec>> + Send + 'static,
    ) -> impl Iterator<Item = Result<Bytes, StoreError>> + Send + 'static {
        let health = self.health.clone();
        let mut ended = false;
        items.map_while(move |item| {
            if ended {
                return None;
            }
            let checked = health.check().and_then(|()| {
                item.map(|value| Bytes::copy_from_slice(&value))
                    .map_err(|e| {
                        health.fail(format!("reading the store failed: {e}"));
                        StoreError::from(e)
                    })
            });
            ended = checked.is_err();
            Some(checked)
        })
    }

    /// Up to `limit` audit records older than `before`, newest first.
    pub fn audit_page(&self, before: Option<u64>, limit: usize) -> Result<Page, StoreError> {
        take_page(self.audit_from(before), limit)
    }

    /// Every audit record older than `before`, newest first, read lazily.
    pub fn audit_from(
        &self,
        before: Option<u64>,
    ) -> impl Iterator<Item = Result<Bytes, StoreError>> + Send + 'static {
        // Nothing above the durable seq: its change may still be in flight.
        let durable = self.visible.durable_seq().saturating_add(1);
        let before = Some(before.map_or(durable, |b| b.min(durable)));
        let items = self
            .audit
            .range::<IVec, _>((Bound::Unbounded, seq_bound(before)))
            .rev()
            .map(|item| item.map(|(_, value)| value));
        self.vouched(items)
    }

    /// Every audit record after `after`, oldest first, read lazily.
    pub fn audit_after(
        &self,
        after: Option<u64>,
    ) -> impl Iterator<Item = Result<Bytes, StoreError>> + Send + 'static {
        let durable = self.visible.durable_seq();
        let items = self
            .audit
            .range::<IVec, _>((seq_bound(after), Bound::Included(seq_key(durable))))
            .map(|item| item.map(|(_, value)| value));
        self.vouched(items)
    }

    /// A number that changes whenever the catalog may have changed, so that what was
    /// derived from it can be reused while it stays the same.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    pub fn image_count(&self) -> u64 {
        self.gauges.images.load(Ordering::Relaxed)
    }

    /// Records in the audit trail, and the bytes of their JSON.
    pub fn audit_size(&self) -> (u64, u64) {
        (
            self.gauges.audit_records.load(Ordering::Relaxed),
            self.gauges.audit_bytes.load(Ordering::Relaxed),
        )
    }

    /// Keeps audit records for `keep` (`None`: for ever). Older ones are removed by the
    /// writer, a chunk at a time, when it is idle and at least once a minute.
    pub fn keep_audit_for(&self, keep: Option<Duration>) {
        let seconds = keep.map_or(0, |d| d.as_secs().max(1));
        self.retention.store(seconds, Ordering::Relaxed);
    }

    pub fn size_on_disk(&self) -> Result<u64, StoreError> {
        Ok(self.db.size_on_disk()?)
    }

    /// Whether the store still answers reads.
    pub fn is_healthy(&self) -> bool {
        self.health().is_ok()
    }

    /// Why the store does not answer reads, if it does not.
    pub fn health(&self) -> Result<(), StoreError> {
        match self.read(|| self.db.get(FORMAT_KEY))? {
            Some(_) => Ok(()),
            None => Err(StoreError::Corrupt(
                "the store has lost its format version".into(),
            )),
        }
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
        let writer = self.writer.lock().take();
        if let Some((sender, handle)) = writer {
            drop(sender);
            let _ = handle.join();
        }
        self.health.check()?;
        let (_, flushed) = self.flusher.flush("the final flush", Vec::new());
        flushed.map_err(StoreError::Engine)?;
        self.flusher.close();
        self.mark.close();
        Ok(())
    }

    /// The highest audit seq whose change is durable: what readers are shown up to.
    pub fn durable_seq(&self) -> u64 {
        self.visible.durable_seq()
    }
}

impl Drop for SledStore {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

/// The audit key of `seq` as an exclusive bound; none, unbounded.
fn seq_bound(seq: Option<u64>) -> Bound<IVec> {
    match seq {
        Some(seq) => Bound::Excluded(seq_key(seq)),
        None => Bound::Unbounded,
    }
}

fn seq_key(seq: u64) -> IVec {
    IVec::from(&seq.to_be_bytes())
}

fn take_page(
    items: impl Iterator<Item = Result<Bytes, StoreError>>,
    limit: usize,
) -> Result<Page, StoreError> {
    let mut records = Vec::with_capacity(limit.min(1024));
    for item in items {
        if records.len() == limit {
            return Ok(Page {
                records,
                more: true,
            });
        }
        records.push(item?);
    }
    Ok(Page {
        records,
        more: false,
    })
}

/// The counters kept in the meta tree, changed in the same transaction as what they
/// count: nothing has to scan the catalog or the trail to know them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Tally {
    images: u64,
    audit_records: u64,
    audit_bytes: u64,
    /// Never goes back, even when old records are pruned or an import is undone.
    next_seq: u64,
}

impl Tally {
    const KEYS: [&'static [u8]; 4] = [
        IMAGE_COUNT_KEY,
        AUDIT_RECORDS_KEY,
        AUDIT_BYTES_KEY,
        NEXT_SEQ_KEY,
    ];

    fn from_values(values: [u64; 4]) -> Tally {
        let [images, audit_records, audit_bytes, next_seq] = values;
        Tally {
            images,
            audit_records,
            audit_bytes,
            next_seq: next_seq.max(1),
        }
    }

    fn values(&self) -> [u64; 4] {
        [
            self.images,
            self.audit_records,
            self.audit_bytes,
            self.next_seq,
        ]
    }

    fn load(meta: &Tree) -> Result<Tally, StoreError> {
        let mut values = [0u64; 4];
        for (value, key) in values.iter_mut().zip(Self::KEYS) {
            if let Some(bytes) = meta.get(key)? {
                *value = u64_from_bytes(&bytes)?;
            }
        }
        Ok(Tally::from_values(values))
    }

    fn store(&self, meta: &Tree) -> Result<(), StoreError> {
        for (value, key) in self.values().into_iter().zip(Self::KEYS) {
            meta.insert(key, &value.to_be_bytes())?;
        }
        Ok(())
    }

    fn read(
        meta: &sled::transaction::TransactionalTree,
    ) -> Result<Tally, ConflictableTransactionError<StoreError>> {
        let mut values = [0u64; 4];
        for (value, key) in values.iter_mut().zip(Self::KEYS) {
            if let Some(bytes) = meta.get(key)? {
                *value = u64_from_bytes(&bytes).map_err(ConflictableTransactionError::Abort)?;
            }
        }
        Ok(Tally::from_values(values))
    }

    fn write(
        &self,
        meta: &sled::transaction::TransactionalTree,
    ) -> Result<(), sled::transaction::UnabortableTransactionError> {
        for (value, key) in self.values().into_iter().zip(Self::KEYS) {
            meta.insert(key, &value.to_be_bytes())?;
        }
        Ok(())
    }

    /// Changes ever applied: every one took a seq, and a seq is never given twice nor
    /// taken back (pruning and an undone import leave `next_seq` alone). This is what
    /// the high-water mark counts.
    fn changes(&self) -> u64 {
        self.next_seq.saturating_sub(1)
    }

    /// One more audit record of `bytes` bytes.
    fn audited(&mut self, bytes: usize) {
        self.audit_records += 1;
        self.audit_bytes += bytes as u64;
        self.next_seq += 1;
    }
}

/// What `/metrics` shows of the tally, readable without the writer.
#[derive(Default)]
struct Gauges {
    images: AtomicU64,
    audit_records: AtomicU64,
    audit_bytes: AtomicU64,
}

impl Gauges {
    fn show(&self, tally: &Tally) {
        self.images.store(tally.images, Ordering::Relaxed);
        self.audit_records
            .store(tally.audit_records, Ordering::Relaxed);
        self.audit_bytes.store(tally.audit_bytes, Ordering::Relaxed);
    }
}

/// Format 1 kept only the image count: count the trail once.
fn upgrade_from_1(images: &Tree, audit: &Tree, meta: &Tree) -> Result<(), StoreError> {
    let mut tally = Tally::load(meta)?;
    if meta.get(IMAGE_COUNT_KEY)?.is_none() {
        tally.images = images.len() as u64;
    }
    tally.audit_records = 0;
    tally.audit_bytes = 0;
    for item in audit.iter() {
        let (_, value) = item?;
        tally.audit_records += 1;
        tally.audit_bytes += value.len() as u64;
    }
    tally.next_seq = match audit.last()? {
        Some((key, _)) => u64_from_bytes(&key)? + 1,
        None => 1,
    };
    tally.store(meta)
}

fn u64_from_bytes(bytes: &[u8]) -> Result<u64, StoreError> {
    let bytes: [u8; 8] = bytes
        .try_into()
        .map_err(|_| StoreError::Corrupt("a counter or audit key is not 8 bytes".into()))?;
    Ok(u64::from_be_bytes(bytes))
}

/// The one thread that changes the store.
struct Writer {
    images: Tree,
    audit: Tree,
    meta: Tree,
    gauges: Arc<Gauges>,
    generation: Arc<AtomicU64>,
    /// The meta tree's counters as of the last commit.
    tally: Tally,
    retention: Arc<AtomicU64>,
    last_prune: Option<Instant>,
    health: Health,
    #[cfg(test)]
    pause: Arc<Mutex<()>>,
    #[cfg(test)]
    before_flush: BeforeFlush,
    mark: Arc<crate::store::embedded::mark::MarkKeeper>,
    visible: Arc<Visible>,
    flusher: Arc<Flusher>,
}

impl Writer {
    fn run(mut self, jobs: mpsc::Receiver<Job>) {
        loop {
            let first = match jobs.recv_timeout(self.until_prune()) {
                Ok(job) => job,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if let Err(reason) = self.prune() {
                        self.health.fail(reason);
                        break;
                    }
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            };
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match jobs.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
            #[cfg(test)]
            let pause = Arc::clone(&self.pause);
            #[cfg(test)]
            let _paused = pause.lock();
            if let Err(reason) = self.write_batch(batch) {
                self.health.fail(reason);
                break;
            }
        }
        if self.health.failure().is_some() {
            // Whatever is still queued was never applied: say so, truthfully.
            let reason = self.health.failure().unwrap_or_default();
            for job in jobs.try_iter() {
                job.reply.send(Err(StoreError::Stopped(reason.clone())));
            }
            return;
        }
        let (_, flushed) = self
            .flusher
            .flush("the last flush of the writer", Vec::new());
        if let Err(e) = flushed {
            log::error!("final flush of the store failed: {e}");
        }
    }

    /// A flush of the writer's own, with no replies waiting on it.
    fn flush(&self, what: &str) -> Result<(), String> {
        self.flusher.flush(what, Vec::new()).1
    }

    fn set_tally(&mut self, tally: Tally) {
        self.tally = tally;
        self.gauges.show(&tally);
    }

    /// How long the writer may wait for work before pruning is due.
    fn until_prune(&self) -> Duration {
        if self.retention.load(Ordering::Relaxed) == 0 {
            return PRUNE_EVERY;
        }
        match self.last_prune {
            None => Duration::ZERO,
            Some(at) => PRUNE_EVERY.saturating_sub(at.elapsed()),
        }
    }

    /// Removes audit records older than the retention, a chunk per transaction; when a
    /// chunk was full, the next one is due at once (after any queued writes).
    fn prune(&mut self) -> Result<(), String> {
        let keep = self.retention.load(Ordering::Relaxed);
        if keep == 0 {
            return Ok(());
        }
        let cutoff = time::OffsetDateTime::now_utc() - Duration::from_secs(keep);
        let cutoff = rfc3339(cutoff);
        let mut expired = Vec::new();
        let mut bytes = 0u64;
        for item in self.audit.iter() {
            let (key, value) = item.map_err(|e| format!("reading the audit trail failed: {e}"))?;
            let record: AuditRecord = serde_json::from_slice(&value)
                .map_err(|e| format!("an audit record is unreadable: {e}"))?;
            // Records are in seq order, which is time order: the first one within
            // the retention ends the expired run.
            if record.time >= cutoff || expired.len() == PRUNE_CHUNK {
                break;
            }
            bytes += value.len() as u64;
            expired.push(key);
        }
        let full = expired.len() == PRUNE_CHUNK;
        self.last_prune = (!full).then(Instant::now);
        if expired.is_empty() {
            return Ok(());
        }
        let mut removals = sled::Batch::default();
        for key in &expired {
            removals.remove(key.clone());
        }
        let count = expired.len() as u64;
        let tally = (&self.audit, &self.meta)
            .transaction(|(audit, meta)| {
                audit.apply_batch(&removals)?;
                let mut tally = Tally::read(meta)?;
                tally.audit_records = tally.audit_records.saturating_sub(count);
                tally.audit_bytes = tally.audit_bytes.saturating_sub(bytes);
                tally.write(meta)?;
                Ok(tally)
            })
            .map_err(|e: TransactionError<StoreError>| {
                format!("pruning the audit trail failed: {e:?}")
            })?;
        self.set_tally(tally);
        log::info!("audit retention: removed {count} records older than {cutoff}");
        Ok(())
    }

    /// Applies a batch, makes it durable, then answers each job. `Err` is a failure of
    /// the store itself (a commit or a flush): the jobs are answered as of unknown
    /// outcome where they may have been applied, and the writer must stop.
    fn write_batch(&mut self, batch: Vec<Job>) -> Result<(), String> {
        let mut answers: Answers = Vec::with_capacity(batch.len());
        let mut failure = None;
        #[cfg(test)]
        if batch.iter().any(|job| matches!(job.work, Work::Crash)) {
            panic!("crash asked for by a test");
        }
        let mut changes = Vec::new();
        let mut imports = Vec::new();
        let mut barriers = Vec::new();
        for job in batch {
            match &job.work {
                // A reload may have taken the policy away since the request was let
                // in: checked here, where the change is applied.
                Work::Change(_) => match job.author.still_allowed().map_err(StoreError::from) {
                    Ok(()) => changes.push(job),
                    Err(refused) => answers.push((job.reply, Err(refused))),
                },
                Work::Import { .. } => imports.push(job),
                _ => barriers.push(job),
            }
        }
        if !changes.is_empty() {
            let work: Vec<(&Change, &str)> = changes
                .iter()
                .filter_map(|job| match &job.work {
                    Work::Change(change) => Some((change, job.author.name())),
                    _ => None,
                })
                .collect();
            match self.hide(&work).and_then(|()| self.apply_all(&work)) {
                Ok((results, tally)) => {
                    self.tally = tally;
                    for (job, result) in changes.into_iter().zip(results) {
                        answers.push((job.reply, result));
                    }
                }
                Err(e) => {
                    // A commit that failed in the engine may have reached the log.
                    let reason =
                        format!("committing a batch of {} changes failed: {e}", work.len());
                    for job in changes {
                        answers.push((job.reply, Err(StoreError::OutcomeUnknown(reason.clone()))));
                    }
                    failure = Some(reason);
                }
            }
        }
        for job in imports {
            let Work::Import { images, trail } = &job.work else {
                continue;
            };
            let result = if failure.is_some() {
                Err(StoreError::Stopped("an earlier commit failed".into()))
            } else {
                match self.import(images, trail, job.author.name()) {
                    Err(ImportFailed::Undone(e)) => Err(e),
                    Err(ImportFailed::Stuck(e)) => {
                        failure = Some(e.to_string());
                        Err(e)
                    }
                    Ok(applied) => Ok(applied),
                }
            };
            answers.push((job.reply, result));
        }
        let changed = answers.iter().any(|(_, r)| r.is_ok());
        #[cfg(test)]
        if let Some(hook) = self.before_flush.lock().as_mut() {
            hook();
        }
        if failure.is_none() && changed {
            let (back, flushed) = self.flusher.flush("flushing a batch", answers);
            answers = back;
            match flushed {
                Ok(()) => {
                    // Shown only now, and before any reply: a client that saw its 200
                    // never reads an older catalog or page.
                    self.visible.reveal(self.tally.changes());
                    self.gauges.show(&self.tally);
                    self.generation.fetch_add(1, Ordering::Release);
                    self.mark.made_durable(self.tally.changes());
                }
                Err(reason) => failure = Some(reason),
            }
        }
        for (reply, result) in answers {
            let result = match (&failure, result) {
                // Applied in memory, not known to be on disk.
                (Some(reason), Ok(_)) => Err(StoreError::OutcomeUnknown(reason.clone())),
                (_, result) => result,
            };
            reply.send(result);
        }
        // Every job before a barrier has been answered now.
        for job in barriers {
            job.reply.send(Ok(Applied::Imported(0)));
        }
        match failure {
            Some(reason) => Err(reason),
            None => Ok(()),
        }
    }

    /// Files the durable value of each image `changes` touch, so that readers keep
    /// seeing it until the batch is flushed (see [`visible`]).
    fn hide(&self, changes: &[(&Change, &str)]) -> Result<(), StoreError> {
        for (change, _) in changes {
            let key = change.id().as_str().as_bytes();
            self.visible.hide(key, self.images.get(key)?);
        }
        Ok(())
    }

    /// Creates `batch` in transactions of `IMPORT_CHUNK` images, each with its audit
    /// records: one transaction for a million images would hold gigabytes in memory.
    /// All or nothing all the same: a durable marker names the import while it runs,
    /// and an import that fails part way is undone, here or, if the store cannot
    /// write any more, at the next open (see [`undo_interrupted_import`]).
    ///
    /// The trail goes in first (its own chunks, seqs kept), so that the images' records
    /// take seqs after its highest. It must not overlap the trail here (see
    /// [`Writer::check_trail`]): then the marker's seq range names exactly what the
    /// trail added, and an undo removes that and nothing else.
    fn import(
        &mut self,
        batch: &[Image],
        trail: &[AuditRecord],
        user: &str,
    ) -> Result<Applied, ImportFailed> {
        let stuck = |e: StoreError| ImportFailed::Stuck(e);
        let span = self.check_trail(trail).map_err(ImportFailed::Undone)?;
        let first_seq = match span {
            Some((_, high)) => self.tally.next_seq.max(high + 1),
            None => self.tally.next_seq,
        };
        let marker = serde_json::to_vec(&ImportMarker {
            first_seq,
            user: user.to_owned(),
            trail: span,
        })
        .unwrap_or_default();
        self.meta
            .insert(IMPORT_KEY, marker)
            .map_err(|e| stuck(e.into()))?;
        self.flush("flushing an import's marker")
            .map_err(|e| stuck(StoreError::Engine(e)))?;
        let imported = self
            .import_trail(trail)
            .and_then(|()| self.import_chunks(batch, user));
        match imported {
            Ok(()) => {
                let interrupted = |e: String| {
                    ImportFailed::Stuck(StoreError::ImportInterrupted {
                        cause: e,
                        undo: "the store cannot write".into(),
                    })
                };
                self.flush("flushing an import").map_err(interrupted)?;
                self.meta
                    .remove(IMPORT_KEY)
                    .map_err(|e| interrupted(e.to_string()))?;
                Ok(Applied::Imported(batch.len() as u64))
            }
            Err(e) => {
                let undone = undo_interrupted_import(&self.images, &self.audit, &self.meta)
                    .and_then(|_| {
                        self.flush("flushing an undone import")
                            .map_err(StoreError::Engine)
                    });
                if let Ok(tally) = Tally::load(&self.meta) {
                    self.set_tally(tally);
                }
                match undone {
                    Ok(_) => Err(ImportFailed::Undone(e)),
                    Err(undo) => Err(ImportFailed::Stuck(StoreError::ImportInterrupted {
                        cause: e.to_string(),
                        undo: undo.to_string(),
                    })),
                }
            }
        }
    }

    /// The lowest and highest seq of `trail` (`None` when it is empty), once it is
    /// known to fit: no seq 0, none twice, and no record here between its lowest and
    /// highest seq (a seq already present would be given twice; one between would
    /// interleave two trails, and an undo could not tell them apart).
    fn check_trail(&self, trail: &[AuditRecord]) -> Result<Option<(u64, u64)>, StoreError> {
        let mut seqs: Vec<u64> = trail.iter().map(|r| r.seq).collect();
        seqs.sort_unstable();
        let (Some(&low), Some(&high)) = (seqs.first(), seqs.last()) else {
            return Ok(None);
        };
        if low == 0 || high >= i64::MAX as u64 {
            let seq = if low == 0 { low } else { high };
            return Err(StoreError::Invalid(crate::domain::image::ValidationError(
                format!("audit seq {seq} is out of range"),
            )));
        }
        if let Some(pair) = seqs.windows(2).find(|pair| pair[0] == pair[1]) {
            return Err(trail_repeats(pair[0]));
        }
        if let Some(item) = self
            .audit
            .range(low.to_be_bytes()..=high.to_be_bytes())
            .next()
        {
            let (key, _) = item?;
            return Err(trail_overlaps(u64_from_bytes(&key)?, low, high));
        }
        Ok(Some((low, high)))
    }

    /// Inserts `trail` as it is, seqs kept, in transactions of `IMPORT_CHUNK` records;
    /// the next seq moves past its highest.
    fn import_trail(&mut self, trail: &[AuditRecord]) -> Result<(), StoreError> {
        for chunk in trail.chunks(IMPORT_CHUNK) {
            let records: Vec<(u64, Vec<u8>)> = chunk
                .iter()
                .map(|r| (r.seq, serde_json::to_vec(r).unwrap_or_default()))
                .collect();
            let result = (&self.audit, &self.meta).transaction(|(audit, meta)| {
                let mut tally = Tally::read(meta)?;
                for (seq, json) in &records {
                    if audit.insert(&seq.to_be_bytes(), json.as_slice())?.is_some() {
                        return abort(trail_repeats(*seq));
                    }
                    tally.audit_records += 1;
                    tally.audit_bytes += json.len() as u64;
                    tally.next_seq = tally.next_seq.max(seq + 1);
                }
                tally.write(meta)?;
                Ok(tally)
            });
            let tally = result.map_err(from_transaction)?;
            self.set_tally(tally);
        }
        Ok(())
    }

    fn import_chunks(&mut self, batch: &[Image], user: &str) -> Result<(), StoreError> {
        let time = now_rfc3339();
        for chunk in batch.chunks(IMPORT_CHUNK) {
            let records: Vec<Vec<u8>> = chunk
                .iter()
                .zip(self.tally.next_seq..)
                .map(|(image, seq)| {
                    let record = AuditRecord {
                        seq,
                        time: time.clone(),
                        user: user.to_owned(),
                        method: IMPORT_METHOD.into(),
                        id: image.id.to_string(),
                        status: 200,
                    };
                    serde_json::to_vec(&record).unwrap_or_default()
                })
                .collect();
            let result =
                (&self.images, &self.audit, &self.meta).transaction(|(images, audit, meta)| {
                    let mut tally = Tally::read(meta)?;
                    for (image, record) in chunk.iter().zip(&records) {
                        let key = image.id.as_str().as_bytes();
                        if images.insert(key, image.to_json())?.is_some() {
                            return abort(StoreError::Conflict(image.id.to_string()));
                        }
                        audit.insert(&tally.next_seq.to_be_bytes(), record.as_slice())?;
                        tally.images += 1;
                        tally.audited(record.len());
                    }
                    tally.write(meta)?;
                    Ok(tally)
                });
            let tally = result.map_err(from_transaction)?;
            self.set_tally(tally);
        }
        Ok(())
    }

    /// Applies a batch of changes in one sled transaction. Each change gets its own
    /// outcome: a refused one (conflict, unknown id, failed precondition) writes
    /// nothing and does not stop the others. One transaction per batch matters: sled
    /// writes its log buffer out at every commit, which made a transaction per change
    /// cost as much as a flush (bench/RESULTS.md).
    #[allow(clippy::type_complexity)]
    fn apply_all(
        &self,
        changes: &[(&Change, &str)],
    ) -> Result<(Vec<Result<Applied, StoreError>>, Tally), StoreError> {
        let time = now_rfc3339();
        let result =
            (&self.images, &self.audit, &self.meta).transaction(|(images, audit, meta)| {
                let mut tally = Tally::read(meta)?;
                let mut outcomes = Vec::with_capacity(changes.len());
                for (change, user) in changes {
                    let outcome = apply_one(images, change)?;
                    match &outcome {
                        Ok(Applied::Created) => tally.images += 1,
                        Ok(Applied::Deleted) => tally.images = tally.images.saturating_sub(1),
                        _ => {}
                    }
                    if outcome.is_ok() {
                        let record = AuditRecord {
                            seq: tally.next_seq,
                            time: time.clone(),
                            user: (*user).to_owned(),
                            method: change.method().to_owned(),
                            id: change.id().as_str().to_owned(),
                            status: 200,
                        };
                        let json = serde_json::to_vec(&record).unwrap_or_default();
                        tally.audited(json.len());
                        audit.insert(&record.seq.to_be_bytes(), json)?;
                    }
                    outcomes.push(outcome);
                }
                tally.write(meta)?;
                Ok((outcomes, tally))
            });
        result.map_err(from_transaction)
    }
}

/// One change inside the batch's transaction: `Err` outside is the engine failing
/// (the whole batch is retried or fails); `Err` inside is this change refused, with
/// nothing written.
fn apply_one(
    images: &sled::transaction::TransactionalTree,
    change: &Change,
) -> Result<Result<Applied, StoreError>, sled::transaction::UnabortableTransactionError> {
    let key = change.id().as_str().as_bytes();
    Ok(match change {
        Change::Create(image) => {
            if images.get(key)?.is_some() {
                return Ok(Err(StoreError::Conflict(image.id.to_string())));
            }
            images.insert(key, image.to_json())?;
            Ok(Applied::Created)
        }
        Change::Update {
            id,
            patch,
            precondition,
        } => {
            let stored = images.get(key)?;
            let next = rules::precondition_met(id, stored.as_deref(), precondition)
                .and_then(|current| rules::updated(&current, patch));
            match next {
                Ok(next) => {
                    let bytes = IVec::from(next.to_json());
                    images.insert(key, bytes.clone())?;
                    Ok(Applied::Updated(Record::from_slice(&bytes)))
                }
                Err(refused) => Err(refused),
            }
        }
        Change::Delete { id, precondition } => {
            let stored = images.get(key)?;
            if let Err(refused) = rules::precondition_met(id, stored.as_deref(), precondition) {
                return Ok(Err(refused));
            }
            images.remove(key)?;
            Ok(Applied::Deleted)
        }
    })
}

/// How an import failed: undone (nothing of it remains), or stuck part way because the
/// store itself failed (the next open undoes it).
enum ImportFailed {
    Undone(StoreError),
    Stuck(StoreError),
}

/// Kept in the meta tree, flushed, while an import runs.
#[derive(Serialize, Deserialize)]
struct ImportMarker {
    /// The seq of the first image's record.
    first_seq: u64,
    user: String,
    /// The lowest and highest seq of the trail it moves in, if any: every record in
    /// that range is the import's (it was refused if any was there before).
    #[serde(default)]
    trail: Option<(u64, u64)>,
}

const IMPORT_KEY: &[u8] = b"import_in_progress";
/// Set once the store has had a high-water mark: from then on a missing mark file is
/// a loss, not a store from before marks.
const HAS_MARK_KEY: &[u8] = b"has_mark";
const IMPORT_METHOD: &str = "IMPORT";

/// Removes what an interrupted import left: its audit records (from the marker's first
/// seq on, by that import's user) name exactly the images it created, in the same
/// transactions; the trail it moved in is every record in the marker's trail range.
/// Returns how many images were removed; `None` when no import was interrupted.
/// Imports run with the data dir locked against servers, so nothing else wrote after
/// the marker.
fn undo_interrupted_import(
    images: &Tree,
    audit: &Tree,
    meta: &Tree,
) -> Result<Option<u64>, StoreError> {
    let Some(marker) = meta.get(IMPORT_KEY)? else {
        return Ok(None);
    };
    let marker: ImportMarker =
        serde_json::from_slice(&marker).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let mut removed = 0u64;
    let mut bytes = 0u64;
    let mut batch_images = sled::Batch::default();
    let mut batch_audit = sled::Batch::default();
    let mut trail_removed = 0u64;
    if let Some((low, high)) = marker.trail {
        for item in audit.range(low.to_be_bytes()..=high.to_be_bytes()) {
            let (key, value) = item?;
            batch_audit.remove(key);
            trail_removed += 1;
            bytes += value.len() as u64;
        }
    }
    for item in audit.range(marker.first_seq.to_be_bytes()..) {
        let (key, value) = item?;
        let record: AuditRecord =
            serde_json::from_slice(&value).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        if record.method != IMPORT_METHOD || record.user != marker.user {
            continue;
        }
        batch_images.remove(record.id.as_bytes());
        batch_audit.remove(key);
        removed += 1;
        bytes += value.len() as u64;
    }
    (images, audit, meta)
        .transaction(|(images, audit, meta)| {
            images.apply_batch(&batch_images)?;
            audit.apply_batch(&batch_audit)?;
            // The seqs it took stay taken: a seq is never given twice.
            let mut tally = Tally::read(meta)?;
            tally.images = tally.images.saturating_sub(removed);
            tally.audit_records = tally.audit_records.saturating_sub(removed + trail_removed);
            tally.audit_bytes = tally.audit_bytes.saturating_sub(bytes);
            tally.write(meta)?;
            meta.remove(IMPORT_KEY)?;
            Ok::<_, ConflictableTransactionError<StoreError>>(())
        })
        .map_err(from_transaction)?;
    Ok(Some(removed))
}

/// A transaction's failure as the store's: a change refused inside it, or the engine.
fn from_transaction(e: TransactionError<StoreError>) -> StoreError {
    match e {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(e) => e.into(),
    }
}

fn abort<T>(err: StoreError) -> Result<T, ConflictableTransactionError<StoreError>> {
    Err(ConflictableTransactionError::Abort(err))
}

/// RFC 3339 in UTC with a fixed width (microseconds), so records line up and sort as
/// text.
fn now_rfc3339() -> String {
    rfc3339(time::OffsetDateTime::now_utc())
}

fn rfc3339(t: time::OffsetDateTime) -> String {
    const AUDIT_TIME: &[time::format_description::BorrowedFormatItem<'_>] = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z"
    );
    t.to_offset(time::UtcOffset::UTC)
        .format(AUDIT_TIME)
        .expect("a date-time has every component the format names")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audit_times_have_a_fixed_width_with_microseconds() {
        use time::macros::datetime;
        assert_eq!(
            rfc3339(datetime!(2026-01-02 03:04:05.000007 UTC)),
            "2026-01-02T03:04:05.000007Z"
        );
        assert_eq!(
            rfc3339(datetime!(2026-11-28 23:59:59 UTC)),
            "2026-11-28T23:59:59.000000Z"
        );
        // Another offset is written as the same instant in UTC.
        assert_eq!(
            rfc3339(datetime!(2026-01-01 01:30:00.5 +02:00)),
            "2025-12-31T23:30:00.500000Z"
        );
        assert_eq!(now_rfc3339().len(), "YYYY-MM-DDTHH:MM:SS.ffffffZ".len());
    }

    fn image(id: &str) -> Image {
        let body = format!(r#"{{"id":"{id}","provider":"ec2","remote_user":"u"}}"#);
        Image::from_json(body.as_bytes(), &["ec2".to_string()]).unwrap()
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn create_conflict_and_audit_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path(), 8).unwrap();
        block_on(async {
            store
                .apply(Change::Create(image("a")), "admin")
                .await
                .unwrap();
            let err = store.apply(Change::Create(image("a")), "admin").await;
            assert!(matches!(err, Err(StoreError::Conflict(_))));
            store
                .apply(
                    Change::Delete {
                        id: ImageId::parse("a").unwrap(),
                        precondition: None,
                    },
                    "bob",
                )
                .await
                .unwrap();
        });
        assert_eq!(store.image_count(), 0);
        let page = store.audit_page(None, 10).unwrap();
        let records: Vec<AuditRecord> = page
            .records
            .iter()
            .map(|r| serde_json::from_slice(r).unwrap())
            .collect();
        assert_eq!(records.len(), 2, "the refused create is not audited");
        assert_eq!((records[0].seq, records[0].method.as_str()), (2, "DELETE"));
        assert_eq!((records[1].seq, records[1].method.as_str()), (1, "POST"));
        assert_eq!(records[0].user, "bob");
    }

    #[test]
    fn reopen_keeps_data_and_refuses_other_versions() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = SledStore::open(dir.path(), 8).unwrap();
            block_on(store.apply(Change::Create(image("x")), "a")).unwrap();
        }
        {
            let store = SledStore::open(dir.path(), 8).unwrap();
            assert!(store.get(&ImageId::parse("x").unwrap()).unwrap().is_some());
            assert_eq!(store.image_count(), 1, "the count is kept on disk");
            store.set_format_version_for_tests("99").unwrap();
        }
        let err = SledStore::open(dir.path(), 8)
            .err()
            .expect("version 99 is refused");
        assert!(err.to_string().contains("format version '99'"), "{err}");
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap()
    }

    #[test]
    fn a_full_queue_refuses_writes_after_a_short_wait() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = SledStore::open(dir.path(), 8).unwrap();
        store.queue = WriteQueue::with_limit(2);
        let store = Arc::new(store);
        let held = store.pause.lock();
        runtime().block_on(async {
            let local = tokio::task::LocalSet::new();
            local
                .run_until(async {
                    // Two take the two places (the writer holds the first batch).
                    let waiting: Vec<_> = ["q1", "q2"]
                        .into_iter()
                        .map(|id| {
                            let store = store.clone();
                            tokio::task::spawn_local(async move {
                                store.apply(Change::Create(image(id)), "a").await
                            })
                        })
                        .collect();
                    tokio::task::yield_now().await;
                    let refused = store.apply(Change::Create(image("q3")), "a").await;
                    assert!(matches!(refused, Err(StoreError::Busy)), "{refused:?}");
                    drop(held);
                    for task in waiting {
                        task.await.unwrap().unwrap();
                    }
                })
                .await;
        });
        assert_eq!(store.image_count(), 2);
        assert!(store.get(&ImageId::parse("q3").unwrap()).unwrap().is_none());
    }

    #[test]
    fn a_change_in_flight_is_shown_only_once_durable() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SledStore::open(dir.path(), 8).unwrap());
        block_on(store.apply(Change::Create(image("old")), "a")).unwrap();
        let (applied, in_flight) = std::sync::mpsc::channel();
        let (release, released) = std::sync::mpsc::channel::<()>();
        let released = Mutex::new(released);
        *store.before_flush.lock() = Some(Box::new(move || {
            applied.send(()).unwrap();
            released.lock().recv().unwrap();
        }));
        let writing = store.clone();
        let write = std::thread::spawn(move || {
            block_on(writing.apply(Change::Create(image("new")), "a")).unwrap();
            block_on(writing.apply(
                Change::Delete {
                    id: ImageId::parse("old").unwrap(),
                    precondition: None,
                },
                "a",
            ))
            .unwrap();
        });
        let shown = |store: &SledStore| -> Vec<String> {
            store
                .list_from(None, None)
                .map(|r| Record::from(r.unwrap()).image().unwrap().id.to_string())
                .collect()
        };
        let new = ImageId::parse("new").unwrap();
        let old = ImageId::parse("old").unwrap();
        // The create is applied in sled, not yet flushed: nothing of it shows.
        in_flight.recv().unwrap();
        assert!(
            store.images.get("new").unwrap().is_some(),
            "applied in sled"
        );
        assert!(store.get(&new).unwrap().is_none());
        assert_eq!(shown(&store), ["old"]);
        assert_eq!(store.audit_after(None).count(), 1);
        let generation = store.generation();
        release.send(()).unwrap();
        // The delete in flight: the image still shows, in its place.
        in_flight.recv().unwrap();
        assert!(store.generation() > generation, "the create was revealed");
        assert!(
            store.images.get("old").unwrap().is_none(),
            "deleted in sled"
        );
        assert!(store.get(&old).unwrap().is_some());
        assert_eq!(shown(&store), ["new", "old"]);
        assert!(take_page(store.list_from(None, None), 1).unwrap().more);
        assert_eq!(store.audit_page(None, 10).unwrap().records.len(), 2);
        release.send(()).unwrap();
        write.join().unwrap();
        *store.before_flush.lock() = None;
        assert!(store.get(&old).unwrap().is_none());
        assert_eq!(shown(&store), ["new"]);
        assert_eq!(store.audit_after(None).count(), 3);
    }

    /// A permit that a test takes away.
    struct Switch(std::sync::atomic::AtomicBool);

    impl crate::store::Permit for Switch {
        fn still_held(&self) -> Result<(), &'static str> {
            if self.0.load(Ordering::SeqCst) {
                Ok(())
            } else {
                Err("create_image")
            }
        }
    }

    #[test]
    fn a_change_whose_author_lost_the_policy_while_queued_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SledStore::open(dir.path(), 8).unwrap());
        let (applied, in_flight) = std::sync::mpsc::channel();
        let (release, released) = std::sync::mpsc::channel::<()>();
        let released = Mutex::new(released);
        *store.before_flush.lock() = Some(Box::new(move || {
            let _ = applied.send(());
            let _ = released.lock().recv();
        }));
        let first = {
            let store = store.clone();
            std::thread::spawn(move || block_on(store.apply(Change::Create(image("first")), "a")))
        };
        in_flight.recv().unwrap();
        // Queued behind the batch in flight, let in while the policy was held.
        let permit = Arc::new(Switch(std::sync::atomic::AtomicBool::new(true)));
        let author = Author::new("bob", permit.clone());
        let queued = {
            let store = store.clone();
            std::thread::spawn(move || {
                block_on(store.apply(Change::Create(image("queued")), author))
            })
        };
        while store.queue.free() == crate::store::queue::QUEUE_LIMIT - 1 {
            std::thread::yield_now();
        }
        permit.0.store(false, Ordering::SeqCst);
        // One release for the batch in flight, one for the queued change's batch,
        // whose hook may run before the hook is taken away.
        release.send(()).unwrap();
        release.send(()).unwrap();
        *store.before_flush.lock() = None;
        assert!(first.join().unwrap().is_ok());
        let refused = queued.join().unwrap();
        assert!(
            matches!(&refused, Err(StoreError::Revoked(revoked)) if revoked.user == "bob" && revoked.policy == "create_image"),
            "{refused:?}"
        );
        assert!(
            store
                .get(&ImageId::parse("queued").unwrap())
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn a_dead_writer_is_fail_stop() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path(), 8).unwrap();
        block_on(store.apply(Change::Create(image("kept")), "a")).unwrap();
        assert!(store.is_healthy());
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        let crashed = block_on(store.submit(Work::Crash, "a".into()));
        std::panic::set_hook(previous);
        assert!(
            matches!(crashed, Err(StoreError::OutcomeUnknown(_))),
            "{crashed:?}"
        );
        assert!(!store.is_healthy());
        assert_eq!(block_on(store.failed()), WRITER_PANICKED);
        let after = block_on(store.apply(Change::Create(image("later")), "a"));
        assert!(matches!(after, Err(StoreError::Stopped(_))), "{after:?}");
        let read = store.get(&ImageId::parse("kept").unwrap());
        assert!(matches!(read, Err(StoreError::Stopped(_))), "{read:?}");
        assert!(store.list_from(None, None).next().unwrap().is_err());
        assert!(store.shutdown().is_err(), "a failed store is not flushed");
    }

    #[test]
    fn an_import_that_fails_part_way_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path(), 8).unwrap();
        block_on(store.apply(Change::Create(image("taken")), "a")).unwrap();
        // The conflict sits in the third chunk: two chunks commit before it.
        let mut batch: Vec<Image> = (0..2 * IMPORT_CHUNK + 10)
            .map(|i| image(&format!("new-{i:05}")))
            .collect();
        batch.push(image("taken"));
        let err = block_on(store.import(batch, Vec::new(), "import:file")).unwrap_err();
        assert!(matches!(err, StoreError::Conflict(_)), "{err}");
        assert_eq!(store.image_count(), 1);
        assert_eq!(store.list_from(None, None).count(), 1);
        assert_eq!(
            store.audit_from(None).count(),
            1,
            "its audit records went too"
        );
        // The next change takes the next seq after the surviving record.
        block_on(store.apply(Change::Create(image("next")), "a")).unwrap();
        // The seqs the undone chunks took are not given again.
        let page = store.audit_page(None, 1).unwrap();
        let newest: AuditRecord = serde_json::from_slice(&page.records[0]).unwrap();
        assert_eq!(newest.seq, 2 + 2 * IMPORT_CHUNK as u64);
    }

    #[test]
    fn an_interrupted_import_is_undone_at_the_next_open() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = SledStore::open(dir.path(), 8).unwrap();
            block_on(store.apply(Change::Create(image("kept")), "a")).unwrap();
            let mut writer = writer_of(&store);
            // As if the process died after the marker and one chunk reached the disk.
            let marker = serde_json::to_vec(&ImportMarker {
                first_seq: 2,
                user: "import:f".into(),
                trail: None,
            })
            .unwrap();
            writer.meta.insert(IMPORT_KEY, marker).unwrap();
            let batch: Vec<Image> = (0..5).map(|i| image(&format!("half-{i}"))).collect();
            writer.import_chunks(&batch, "import:f").unwrap();
            store.db.flush().unwrap();
            assert_eq!(store.list_from(None, None).count(), 6);
        }
        let store = reopen(dir.path());
        assert_eq!(store.list_from(None, None).count(), 1);
        assert_eq!(store.image_count(), 1);
        assert_eq!(store.audit_from(None).count(), 1);
    }

    fn trail(seqs: &[u64]) -> Vec<AuditRecord> {
        seqs.iter()
            .map(|&seq| AuditRecord {
                seq,
                time: "2025-01-01T00:00:00.000000Z".into(),
                user: "old".into(),
                method: "POST".into(),
                id: format!("i{seq}"),
                status: 200,
            })
            .collect()
    }

    /// The seqs in the audit tree, shown or not (a test's writer makes no batch).
    fn seqs_of(store: &SledStore) -> Vec<u64> {
        store
            .audit
            .iter()
            .map(|r| u64_from_bytes(&r.unwrap().0).unwrap())
            .collect()
    }

    #[test]
    fn a_trail_moves_in_with_its_seqs_before_the_images_records() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = SledStore::open(dir.path(), 8).unwrap();
            let moved = trail(&[3, 7, 9]);
            let images = vec![image("m-1"), image("m-2")];
            assert_eq!(
                block_on(store.import(images, moved.clone(), "import:f")).unwrap(),
                2
            );
            assert_eq!(seqs_of(&store), [3, 7, 9, 10, 11]);
            let kept: Vec<AuditRecord> = store
                .audit_after(None)
                .take(3)
                .map(|r| serde_json::from_slice(&r.unwrap()).unwrap())
                .collect();
            assert_eq!(kept, moved, "kept as they were");
            let newest: AuditRecord =
                serde_json::from_slice(&store.audit_page(None, 1).unwrap().records[0]).unwrap();
            assert_eq!(
                (newest.seq, newest.method.as_str(), newest.id.as_str()),
                (11, "IMPORT", "m-2")
            );
            let bytes: u64 = store
                .audit_from(None)
                .map(|r| r.unwrap().len() as u64)
                .sum();
            assert_eq!(store.audit_size(), (5, bytes));
            assert_eq!(store.image_count(), 2);
        }
        // The tally and the next seq are kept on disk, and the open's read-through
        // agrees with them.
        let store = reopen(dir.path());
        block_on(store.apply(Change::Create(image("after")), "u")).unwrap();
        assert_eq!(seqs_of(&store), [3, 7, 9, 10, 11, 12]);
        assert_eq!(store.audit_size().0, 6);
    }

    #[test]
    fn a_trail_that_overlaps_the_one_here_refuses_everything() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path(), 8).unwrap();
        for id in ["a", "b"] {
            block_on(store.apply(Change::Create(image(id)), "u")).unwrap();
        }
        block_on(store.import(Vec::new(), trail(&[10]), "import:f")).unwrap();
        assert_eq!(seqs_of(&store), [1, 2, 10]);
        let before = (store.audit_size(), seqs_of(&store));
        for (seqs, words) in [
            (vec![2u64, 5], "seq 2"),
            // Seq 10 lies between them: the two trails would interleave.
            (vec![4, 12], "seq 10"),
            (vec![8, 8], "seq 8 twice"),
            (vec![0, 8], "seq 0 is out of range"),
        ] {
            let err =
                block_on(store.import(vec![image("new")], trail(&seqs), "import:f")).unwrap_err();
            assert!(err.to_string().contains(words), "{seqs:?}: {err}");
            assert_eq!((store.audit_size(), seqs_of(&store)), before, "{seqs:?}");
            assert_eq!(store.image_count(), 2);
            assert!(store.meta_import_marker().is_none());
        }
        // After the seqs here: fine.
        block_on(store.import(vec![image("new")], trail(&[5, 6]), "import:f")).unwrap();
        assert_eq!(seqs_of(&store), [1, 2, 5, 6, 10, 11]);
    }

    #[test]
    fn an_import_refused_by_an_id_takes_its_trail_back_out() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path(), 8).unwrap();
        block_on(store.apply(Change::Create(image("taken")), "u")).unwrap();
        let long: Vec<u64> = (10..10 + 2 * IMPORT_CHUNK as u64 + 5).collect();
        let err = block_on(store.import(
            vec![image("fresh"), image("taken")],
            trail(&long),
            "import:f",
        ))
        .unwrap_err();
        assert!(matches!(err, StoreError::Conflict(_)), "{err}");
        assert_eq!(seqs_of(&store), [1]);
        let bytes: u64 = store
            .audit_from(None)
            .map(|r| r.unwrap().len() as u64)
            .sum();
        assert_eq!(store.audit_size(), (1, bytes));
        assert_eq!(store.image_count(), 1);
        // The same trail may be tried again: its seqs are free.
        block_on(store.import(vec![image("fresh")], trail(&long), "import:f")).unwrap();
        assert_eq!(store.audit_size().0, 1 + long.len() as u64 + 1);
    }

    #[test]
    fn an_interrupted_import_with_a_trail_is_undone_at_the_next_open() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = SledStore::open(dir.path(), 8).unwrap();
            block_on(store.apply(Change::Create(image("kept")), "a")).unwrap();
            let mut writer = writer_of(&store);
            // As if the process died after the marker, the trail and one chunk of
            // images reached the disk. The trail holds an IMPORT record of the same
            // user naming the kept image: only the range says it is the trail's.
            let mut moved = trail(&[5, 6]);
            moved[1].method = IMPORT_METHOD.into();
            moved[1].user = "import:f".into();
            moved[1].id = "kept".into();
            let marker = serde_json::to_vec(&ImportMarker {
                first_seq: 7,
                user: "import:f".into(),
                trail: Some((5, 6)),
            })
            .unwrap();
            writer.meta.insert(IMPORT_KEY, marker).unwrap();
            writer.import_trail(&moved).unwrap();
            let batch: Vec<Image> = (0..3).map(|i| image(&format!("half-{i}"))).collect();
            writer.import_chunks(&batch, "import:f").unwrap();
            store.db.flush().unwrap();
            assert_eq!(seqs_of(&store), [1, 5, 6, 7, 8, 9]);
        }
        let store = reopen(dir.path());
        assert_eq!(seqs_of(&store), [1]);
        assert_eq!(store.image_count(), 1);
        assert!(
            store
                .get(&ImageId::parse("kept").unwrap())
                .unwrap()
                .is_some()
        );
        let bytes: u64 = store
            .audit_from(None)
            .map(|r| r.unwrap().len() as u64)
            .sum();
        assert_eq!(store.audit_size(), (1, bytes));
    }

    /// A second writer on the store's trees, for driving the writer's steps directly.
    fn writer_of(store: &SledStore) -> Writer {
        let meta = store.db.open_tree(META_TREE).unwrap();
        Writer {
            images: store.images.clone(),
            audit: store.audit.clone(),
            tally: Tally::load(&meta).unwrap(),
            meta,
            gauges: store.gauges.clone(),
            generation: store.generation.clone(),
            retention: store.retention.clone(),
            last_prune: None,
            health: Health::new(),
            pause: Arc::new(Mutex::new(())),
            before_flush: BeforeFlush::default(),
            mark: store.mark.clone(),
            visible: store.visible.clone(),
            flusher: store.flusher.clone(),
        }
    }

    #[test]
    fn retention_prunes_old_audit_records_but_never_reuses_a_seq() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = SledStore::open(dir.path(), 8).unwrap();
            for id in ["a", "b", "c", "d"] {
                block_on(store.apply(Change::Create(image(id)), "u")).unwrap();
            }
            // The first three records are 40 days old.
            for seq in 1u64..=3 {
                let key = seq.to_be_bytes();
                let mut record: AuditRecord =
                    serde_json::from_slice(&store.audit.get(key).unwrap().unwrap()).unwrap();
                record.time = "2020-01-01T00:00:00.000000Z".into();
                store
                    .audit
                    .insert(key, serde_json::to_vec(&record).unwrap())
                    .unwrap();
            }
            let mut writer = writer_of(&store);
            writer.prune().unwrap();
            assert_eq!(store.audit_from(None).count(), 4, "no retention: all kept");
            store.keep_audit_for(Some(Duration::from_secs(30 * 86_400)));
            writer.prune().unwrap();
            let kept: Vec<u64> = store
                .audit_from(None)
                .map(|r| {
                    serde_json::from_slice::<AuditRecord>(&r.unwrap())
                        .unwrap()
                        .seq
                })
                .collect();
            assert_eq!(kept, [4]);
            let (records, bytes) = store.audit_size();
            assert_eq!(records, 1);
            assert_eq!(
                bytes,
                store.audit.get(4u64.to_be_bytes()).unwrap().unwrap().len() as u64
            );
            store.db.flush().unwrap();
        }
        let store = reopen(dir.path());
        assert_eq!(store.audit_size().0, 1, "the tally is kept on disk");
        block_on(store.apply(Change::Create(image("e")), "u")).unwrap();
        let page = store.audit_page(None, 1).unwrap();
        let newest: AuditRecord = serde_json::from_slice(&page.records[0]).unwrap();
        assert_eq!(newest.seq, 5);
    }

    #[test]
    fn a_format_1_store_is_upgraded_in_place() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = SledStore::open(dir.path(), 8).unwrap();
            for id in ["a", "b", "c"] {
                block_on(store.apply(Change::Create(image(id)), "u")).unwrap();
            }
            // What format 1 had: the version and the image count, nothing else.
            let meta = store.db.open_tree(META_TREE).unwrap();
            for key in [
                AUDIT_RECORDS_KEY,
                AUDIT_BYTES_KEY,
                NEXT_SEQ_KEY,
                HAS_MARK_KEY,
            ] {
                meta.remove(key).unwrap();
            }
            store.set_format_version_for_tests("1").unwrap();
        }
        let store = reopen(dir.path());
        assert_eq!(
            store.db.get(FORMAT_KEY).unwrap().unwrap(),
            FORMAT_VERSION.as_bytes()
        );
        assert_eq!(store.image_count(), 3);
        assert_eq!(store.audit_size().0, 3);
        block_on(store.apply(Change::Create(image("d")), "u")).unwrap();
        let page = store.audit_page(None, 1).unwrap();
        let newest: AuditRecord = serde_json::from_slice(&page.records[0]).unwrap();
        assert_eq!(newest.seq, 4);
    }

    /// Opens again (`open` itself waits out sled's threads of the last handle).
    fn reopen(dir: &Path) -> SledStore {
        SledStore::open(dir, 8).unwrap()
    }

    #[test]
    fn a_store_without_a_mark_gets_one_at_its_count_of_changes() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = SledStore::open(dir.path(), 8).unwrap();
            for id in ["a", "b", "c"] {
                block_on(store.apply(Change::Create(image(id)), "u")).unwrap();
            }
            block_on(store.apply(
                Change::Delete {
                    id: ImageId::parse("a").unwrap(),
                    precondition: None,
                },
                "u",
            ))
            .unwrap();
            // As a store written before the mark: format 1, no tally, no mark.
            let meta = store.db.open_tree(META_TREE).unwrap();
            for key in [
                AUDIT_RECORDS_KEY,
                AUDIT_BYTES_KEY,
                NEXT_SEQ_KEY,
                HAS_MARK_KEY,
            ] {
                meta.remove(key).unwrap();
            }
            store.set_format_version_for_tests("1").unwrap();
        }
        std::fs::remove_file(dir.path().join(crate::store::embedded::mark::MARK_FILE)).unwrap();
        let store = reopen(dir.path());
        assert_eq!(
            crate::store::embedded::mark::read(dir.path()).unwrap(),
            Some(4)
        );
        block_on(store.apply(Change::Create(image("d")), "u")).unwrap();
        store.shutdown().unwrap();
        assert_eq!(
            crate::store::embedded::mark::read(dir.path()).unwrap(),
            Some(5)
        );
    }

    #[test]
    fn a_miscounted_store_is_damaged() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = SledStore::open(dir.path(), 8).unwrap();
            block_on(store.apply(Change::Create(image("a")), "u")).unwrap();
            store.images.remove("a").unwrap();
        }
        let err = (|| loop {
            match SledStore::open(dir.path(), 8) {
                Err(StoreError::InUse(_)) => std::thread::yield_now(),
                other => return other,
            }
        })()
        .err()
        .expect("refused");
        assert!(matches!(err, StoreError::Damaged { .. }), "{err}");
        assert!(
            err.to_string()
                .contains("0 images and 1 audit records but counted 1 and 1"),
            "{err}"
        );
        assert!(err.needs_operator());
    }

    #[test]
    fn second_open_says_in_use() {
        let dir = tempfile::tempdir().unwrap();
        let _first = SledStore::open(dir.path(), 8).unwrap();
        let err = SledStore::open(dir.path(), 8)
            .err()
            .expect("second open refused");
        assert!(matches!(err, StoreError::InUse(_)), "{err}");
    }
}
