//! The catalog on disk: sled behind a narrow interface.
//!
//! Reads go straight to sled. Every change goes through one writer thread, which
//! applies each change together with its audit record in one sled transaction, then
//! flushes once for the whole batch queued meanwhile (group commit) before answering:
//! a reply of success means the change is on disk, and concurrent writers share the
//! cost of a flush. Keeping the writer off the request workers also keeps every disk
//! flush off them.

use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;

use serde::{Deserialize, Serialize};
use sled::transaction::{ConflictableTransactionError, TransactionError, Transactional};
use sled::{IVec, Tree};
use tokio::sync::oneshot;

use crate::image::{Image, ImageId, ImagePatch, Provider, ValidationError};

/// Written into every store; a store with another version is refused, not guessed at.
pub const FORMAT_VERSION: &str = "1";
const FORMAT_KEY: &[u8] = b"format_version";
const IMAGES_TREE: &[u8] = b"images";
const AUDIT_TREE: &[u8] = b"audit";
/// Counters kept in step with the data, so that nothing has to scan the catalog.
const META_TREE: &[u8] = b"meta";
const IMAGE_COUNT_KEY: &[u8] = b"image_count";
/// Upper bound on changes applied between two flushes, so replies are not held back
/// for long under a flood of writes.
const MAX_BATCH: usize = 1024;
/// Images per transaction of an import.
const IMPORT_CHUNK: usize = 1000;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("no image with id '{0}'")]
    NotFound(String),
    #[error("an image with id '{0}' already exists")]
    Conflict(String),
    #[error("the precondition on image '{0}' failed")]
    PreconditionFailed(String),
    #[error(transparent)]
    Invalid(ValidationError),
    #[error(
        "the data dir {0} is in use by another image-catalog process (a server, export or import); stop it first"
    )]
    InUse(PathBuf),
    #[error(
        "the data dir {dir} holds store format version '{found}', but this build reads version {FORMAT_VERSION} only"
    )]
    UnknownFormat { dir: PathBuf, found: String },
    #[error("a stored record is unreadable: {0}")]
    Corrupt(String),
    #[error("flushing to disk failed: {0}")]
    Flush(String),
    #[error("a batch of changes failed: {0}")]
    Failed(String),
    #[error("the store is shut down")]
    Closed,
    #[error("storage engine: {0}")]
    Engine(#[from] sled::Error),
    #[error("cannot open the store at {dir} as user {user}: {reason}")]
    DataDir {
        dir: PathBuf,
        user: String,
        reason: String,
    },
    #[error(
        "cannot open the store at {dir} as user {user}: it is damaged ({detail}); {}",
        crate::store_open::RESTORE_ADVICE
    )]
    Damaged {
        dir: PathBuf,
        user: String,
        detail: String,
    },
    #[error(
        "cannot open the store at {dir} as user {user}: it holds {store} changes but its \
         high-water mark ({dir}/{}) says {mark} were made durable, so {} acknowledged changes \
         are missing (its files were damaged or an older copy was put back); {}; or, to \
         serve what is left and lose those changes, start once with \
         `serve --accept-data-loss`",
        crate::store_mark::MARK_FILE,
        mark - store,
        crate::store_open::RESTORE_ADVICE
    )]
    BehindMark {
        dir: PathBuf,
        user: String,
        store: u64,
        mark: u64,
    },
}

impl StoreError {
    /// Whether a restart cannot help: the data dir or the store needs an operator.
    pub fn needs_operator(&self) -> bool {
        matches!(
            self,
            StoreError::DataDir { .. }
                | StoreError::Damaged { .. }
                | StoreError::BehindMark { .. }
                | StoreError::UnknownFormat { .. }
        )
    }
}

/// The condition of a compare-and-swap (`If-Match`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Precondition {
    /// `*`: the image must exist.
    Exists,
    /// The image's current ETag must be one of these (strong comparison).
    EtagIn(Vec<String>),
}

/// One image as stored: its JSON exactly as the API shows it.
#[derive(Debug, Clone)]
pub struct Record(IVec);

impl From<IVec> for Record {
    fn from(bytes: IVec) -> Self {
        Record(bytes)
    }
}

impl Record {
    pub fn json(&self) -> &[u8] {
        &self.0
    }

    /// A strong validator: equal bytes, equal tag.
    pub fn etag(&self) -> String {
        etag_of(&self.0)
    }

    pub fn image(&self) -> Result<Image, StoreError> {
        serde_json::from_slice(&self.0).map_err(|e| StoreError::Corrupt(e.to_string()))
    }
}

fn etag_of(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digest = crate::auth::sha256(bytes);
    // Written by hand: `format!` with `hex::encode` was 2% of a cached GET.
    let mut tag = String::with_capacity(34);
    tag.push('"');
    for byte in &digest[..16] {
        tag.push(HEX[usize::from(byte >> 4)] as char);
        tag.push(HEX[usize::from(byte & 0xf)] as char);
    }
    tag.push('"');
    tag
}

/// A change to the catalog.
#[derive(Debug, Clone)]
pub enum Change {
    Create(Image),
    Update {
        id: ImageId,
        patch: ImagePatch,
        precondition: Option<Precondition>,
    },
    Delete {
        id: ImageId,
        precondition: Option<Precondition>,
    },
}

impl Change {
    fn method(&self) -> &'static str {
        match self {
            Change::Create(_) => "POST",
            Change::Update { .. } => "PUT",
            Change::Delete { .. } => "DELETE",
        }
    }

    fn id(&self) -> &ImageId {
        match self {
            Change::Create(image) => &image.id,
            Change::Update { id, .. } | Change::Delete { id, .. } => id,
        }
    }
}

#[derive(Debug)]
pub enum Applied {
    Created,
    Updated(Record),
    Deleted,
    Imported(u64),
}

/// What the writer thread is asked to do.
enum Work {
    Change(Change),
    /// Many creates in one atomic step: all land, or none.
    Import(Vec<Image>),
}

/// One line of the audit trail.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct AuditRecord {
    pub seq: u64,
    pub time: String,
    pub user: String,
    pub method: String,
    pub id: String,
    pub status: u16,
}

/// A page of a listing; `more` says whether anything follows it.
pub struct Page {
    pub records: Vec<IVec>,
    pub more: bool,
}

struct Job {
    work: Work,
    user: String,
    reply: oneshot::Sender<Result<Applied, StoreError>>,
}

pub struct Store {
    db: sled::Db,
    images: Tree,
    audit: Tree,
    image_count: Arc<AtomicU64>,
    generation: Arc<AtomicU64>,
    writer: Mutex<Option<(mpsc::Sender<Job>, JoinHandle<()>)>>,
    mark: Arc<crate::store_mark::MarkKeeper>,
    /// The data dir's lock: declared last, so it is let go after sled's files.
    _lock: std::fs::File,
}

impl Store {
    pub fn open(dir: &Path, cache_mb: u64) -> Result<Store, StoreError> {
        Store::open_with(dir, cache_mb, false)
    }

    /// Opens the store in `dir`: takes the folder's lock, opens sled and reads every
    /// entry once with sled's panics contained (a damaged store is
    /// [`StoreError::Damaged`], not a panic), then compares the store's count of
    /// changes with the high-water mark: a store behind it is refused unless
    /// `accept_data_loss`.
    pub fn open_with(
        dir: &Path,
        cache_mb: u64,
        accept_data_loss: bool,
    ) -> Result<Store, StoreError> {
        let lock = crate::store_open::prepare(dir)?;
        let opened = crate::store_open::contain(dir, || open_engine(dir, cache_mb))?;
        let Opened {
            db,
            images,
            audit,
            meta,
            image_count,
            next_seq,
            changes,
        } = opened;
        crate::store_mark::check(dir, changes, accept_data_loss)?;
        let mark = Arc::new(crate::store_mark::MarkKeeper::start(
            dir,
            meta.clone(),
            changes,
        )?);
        let image_count = Arc::new(AtomicU64::new(image_count));
        let generation = Arc::new(AtomicU64::new(0));
        let (sender, receiver) = mpsc::channel();
        let writer = Writer {
            db: db.clone(),
            images: images.clone(),
            audit: audit.clone(),
            meta,
            image_count: image_count.clone(),
            generation: generation.clone(),
            next_seq,
            mark: mark.clone(),
        };
        let handle = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || writer.run(receiver))
            .map_err(|e| StoreError::Engine(e.into()))?;
        Ok(Store {
            db,
            images,
            audit,
            image_count,
            generation,
            writer: Mutex::new(Some((sender, handle))),
            mark,
            _lock: lock,
        })
    }

    /// Applies a change with its audit record; resolves once both are on disk.
    pub async fn apply(&self, change: Change, user: &str) -> Result<Applied, StoreError> {
        self.submit(Work::Change(change), user).await
    }

    /// Creates all `images` with their audit records in one atomic step, or none of
    /// them if any id exists already (`Conflict`); resolves once they are on disk.
    pub async fn import(&self, images: Vec<Image>, user: &str) -> Result<u64, StoreError> {
        match self.submit(Work::Import(images), user).await? {
            Applied::Imported(count) => Ok(count),
            _ => Err(StoreError::Corrupt(
                "the writer answered an import oddly".into(),
            )),
        }
    }

    async fn submit(&self, work: Work, user: &str) -> Result<Applied, StoreError> {
        let (reply, answer) = oneshot::channel();
        let job = Job {
            work,
            user: user.to_owned(),
            reply,
        };
        {
            let writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
            let (sender, _) = writer.as_ref().ok_or(StoreError::Closed)?;
            sender.send(job).map_err(|_| StoreError::Closed)?;
        }
        answer.await.map_err(|_| StoreError::Closed)?
    }

    pub fn get(&self, id: &ImageId) -> Result<Option<Record>, StoreError> {
        Ok(self.images.get(id.as_str())?.map(Record))
    }

    /// Up to `limit` images after `after` (exclusive), in id order.
    pub fn list_page(
        &self,
        after: Option<&ImageId>,
        provider: Option<&Provider>,
        limit: usize,
    ) -> Result<Page, StoreError> {
        take_page(self.list_from(after, provider.cloned()), limit)
    }

    /// Every image after `after`, in id order, read lazily: memory does not grow with
    /// the catalog.
    pub fn list_from(
        &self,
        after: Option<&ImageId>,
        provider: Option<Provider>,
    ) -> impl Iterator<Item = Result<IVec, StoreError>> + Send + 'static {
        let start = match after {
            Some(id) => Bound::Excluded(IVec::from(id.as_str())),
            None => Bound::Unbounded,
        };
        self.images
            .range::<IVec, _>((start, Bound::Unbounded))
            .filter_map(move |item| {
                let value = match item {
                    Ok((_, value)) => value,
                    Err(e) => return Some(Err(e.into())),
                };
                let Some(provider) = &provider else {
                    return Some(Ok(value));
                };
                match Record(value.clone()).image() {
                    Ok(image) if &image.provider == provider => Some(Ok(value)),
                    Ok(_) => None,
                    Err(e) => Some(Err(e)),
                }
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
    ) -> impl Iterator<Item = Result<IVec, StoreError>> + Send + 'static {
        let end = match before {
            Some(seq) => Bound::Excluded(IVec::from(&seq.to_be_bytes())),
            None => Bound::Unbounded,
        };
        self.audit
            .range::<IVec, _>((Bound::Unbounded, end))
            .rev()
            .map(|item| Ok(item?.1))
    }

    /// A number that changes whenever the catalog may have changed, so that what was
    /// derived from it can be reused while it stays the same.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    pub fn image_count(&self) -> u64 {
        self.image_count.load(Ordering::Relaxed)
    }

    pub fn size_on_disk(&self) -> Result<u64, StoreError> {
        Ok(self.db.size_on_disk()?)
    }

    /// Reads every page of the catalog and the audit trail once, so that sled holds
    /// their index in memory from the start instead of growing it during the first
    /// whole-catalog listing. Returns the number of entries read.
    pub fn warm(&self) -> Result<u64, StoreError> {
        let mut entries = 0;
        for tree in [&self.images, &self.audit] {
            for item in tree.iter().keys() {
                item?;
                entries += 1;
            }
        }
        Ok(entries)
    }

    /// Whether the store still answers reads.
    pub fn is_healthy(&self) -> bool {
        self.db.get(FORMAT_KEY).is_ok_and(|v| v.is_some())
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
        let writer = self.writer.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some((sender, handle)) = writer {
            drop(sender);
            let _ = handle.join();
        }
        self.db.flush()?;
        self.mark.made_durable();
        self.mark.close();
        Ok(())
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

/// What `open_engine` hands back: sled opened and read through once.
struct Opened {
    db: sled::Db,
    images: Tree,
    audit: Tree,
    meta: Tree,
    image_count: u64,
    next_seq: u64,
    /// The store's own count of changes applied (see `store_mark`).
    changes: u64,
}

/// Opens sled in `dir` (locked already) and reads every entry once, so that damage
/// shows now (an error, or a panic `store_open::contain` catches) rather than on a
/// request. Any engine error here means the store cannot be trusted as it is.
fn open_engine(dir: &Path, cache_mb: u64) -> Result<Opened, StoreError> {
    open_and_verify(dir, cache_mb).map_err(|e| match e {
        StoreError::Engine(sled::Error::Io(io))
            if matches!(
                io.kind(),
                std::io::ErrorKind::PermissionDenied
                    | std::io::ErrorKind::ReadOnlyFilesystem
                    | std::io::ErrorKind::NotADirectory
                    | std::io::ErrorKind::StorageFull
            ) =>
        {
            crate::store_open::io_error(dir, &io)
        }
        StoreError::Engine(other) => crate::store_open::damaged(dir, other),
        StoreError::Corrupt(detail) => crate::store_open::damaged(dir, detail),
        other => other,
    })
}

fn open_and_verify(dir: &Path, cache_mb: u64) -> Result<Opened, StoreError> {
    let db = sled::Config::new()
        .path(dir)
        .cache_capacity(cache_mb.saturating_mul(1024 * 1024))
        // Every change is flushed before it is acknowledged; sled's own periodic
        // flusher would only add a thread that holds the data dir's lock for a
        // while after the store is dropped.
        .flush_every_ms(None)
        .open()?;
    let images = db.open_tree(IMAGES_TREE)?;
    let audit = db.open_tree(AUDIT_TREE)?;
    match db.get(FORMAT_KEY)? {
        Some(found) if found.as_ref() == FORMAT_VERSION.as_bytes() => {}
        Some(found) => {
            return Err(StoreError::UnknownFormat {
                dir: dir.to_owned(),
                found: String::from_utf8_lossy(&found).into_owned(),
            });
        }
        None if images.is_empty() && audit.is_empty() => {
            db.insert(FORMAT_KEY, FORMAT_VERSION)?;
            db.flush()?;
        }
        None => {
            return Err(StoreError::UnknownFormat {
                dir: dir.to_owned(),
                found: "none".into(),
            });
        }
    }
    let meta = db.open_tree(META_TREE)?;
    let image_count = match meta.get(IMAGE_COUNT_KEY)? {
        Some(bytes) => u64_from_bytes(&bytes)?,
        None => {
            let count = images.len() as u64;
            meta.insert(IMAGE_COUNT_KEY, &count.to_be_bytes())?;
            count
        }
    };
    // The first full read: every key and value of every tree.
    let default: &Tree = &db;
    for tree in [default, &meta] {
        for item in tree.iter() {
            item?;
        }
    }
    let mut stored_images = 0u64;
    for item in images.iter() {
        let (_, value) = item?;
        Record(value).image()?;
        stored_images += 1;
    }
    if stored_images != image_count {
        return Err(StoreError::Corrupt(format!(
            "it holds {stored_images} images but counted {image_count}"
        )));
    }
    let mut last_seq = 0;
    for item in audit.iter() {
        let (key, _) = item?;
        last_seq = u64_from_bytes(&key)?;
    }
    let changes = match crate::store_mark::stored_changes(dir, &meta)? {
        Some(changes) => changes,
        None => {
            // A store made before the count was kept: every change it holds has its
            // audit record, numbered from 1.
            meta.insert(crate::store_mark::CHANGES_KEY, &last_seq.to_be_bytes())?;
            db.flush()?;
            last_seq
        }
    };
    Ok(Opened {
        db,
        images,
        audit,
        meta,
        image_count,
        next_seq: last_seq + 1,
        changes,
    })
}

fn take_page(
    items: impl Iterator<Item = Result<IVec, StoreError>>,
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

fn u64_from_bytes(bytes: &[u8]) -> Result<u64, StoreError> {
    let bytes: [u8; 8] = bytes
        .try_into()
        .map_err(|_| StoreError::Corrupt("a counter or audit key is not 8 bytes".into()))?;
    Ok(u64::from_be_bytes(bytes))
}

/// The one thread that changes the store.
struct Writer {
    db: sled::Db,
    images: Tree,
    audit: Tree,
    meta: Tree,
    image_count: Arc<AtomicU64>,
    generation: Arc<AtomicU64>,
    next_seq: u64,
    mark: Arc<crate::store_mark::MarkKeeper>,
}

impl Writer {
    fn run(mut self, jobs: mpsc::Receiver<Job>) {
        while let Ok(first) = jobs.recv() {
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match jobs.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
            let mut answers = Vec::with_capacity(batch.len());
            let (changes, imports): (Vec<Job>, Vec<Job>) = batch
                .into_iter()
                .partition(|job| matches!(job.work, Work::Change(_)));
            if !changes.is_empty() {
                let work: Vec<(&Change, &str)> = changes
                    .iter()
                    .filter_map(|job| match &job.work {
                        Work::Change(change) => Some((change, job.user.as_str())),
                        Work::Import(_) => None,
                    })
                    .collect();
                match self.apply_all(&work) {
                    Ok(results) => {
                        for (job, result) in changes.into_iter().zip(results) {
                            self.count(&result);
                            answers.push((job.reply, result));
                        }
                    }
                    Err(e) => {
                        log::error!("a batch of {} changes failed: {e}", changes.len());
                        for job in changes {
                            answers.push((job.reply, Err(StoreError::Failed(e.to_string()))));
                        }
                    }
                }
            }
            for job in imports {
                let Work::Import(images) = &job.work else {
                    continue;
                };
                let result = self.import(images, &job.user);
                // An import that failed part way may have committed chunks.
                let result = self.refresh_counters().and(result);
                self.generation.fetch_add(1, Ordering::Release);
                answers.push((job.reply, result));
            }
            // Before any reply: a client that saw its 200 never reads an older page.
            if answers.iter().any(|(_, r)| r.is_ok()) {
                self.generation.fetch_add(1, Ordering::Release);
            }
            let changed = answers.iter().any(|(_, r)| r.is_ok());
            let flushed = if changed {
                self.db.flush().map(drop)
            } else {
                Ok(())
            };
            if let Err(e) = &flushed {
                log::error!("flushing the store failed: {e}");
            } else if changed {
                self.mark.made_durable();
            }
            for (reply, result) in answers {
                let result = match (&flushed, result) {
                    (Err(e), Ok(_)) => Err(StoreError::Flush(e.to_string())),
                    (_, result) => result,
                };
                // The requester may have gone; the change stands all the same.
                let _ = reply.send(result);
            }
        }
        if let Err(e) = self.db.flush() {
            log::error!("final flush of the store failed: {e}");
        }
    }

    /// Creates `batch` in transactions of `IMPORT_CHUNK` images, each with its audit
    /// records: one transaction for a million images would hold gigabytes in memory.
    /// The caller checks the ids beforehand; a conflict found here still aborts its
    /// chunk whole.
    fn import(&self, batch: &[Image], user: &str) -> Result<Applied, StoreError> {
        let time = now_rfc3339();
        let mut seq = self.next_seq;
        for chunk in batch.chunks(IMPORT_CHUNK) {
            let records: Vec<Vec<u8>> = chunk
                .iter()
                .zip(seq..)
                .map(|(image, seq)| {
                    let record = AuditRecord {
                        seq,
                        time: time.clone(),
                        user: user.to_owned(),
                        method: "IMPORT".into(),
                        id: image.id.to_string(),
                        status: 200,
                    };
                    serde_json::to_vec(&record).unwrap_or_default()
                })
                .collect();
            let result =
                (&self.images, &self.audit, &self.meta).transaction(|(images, audit, meta)| {
                    let count = match meta.get(IMAGE_COUNT_KEY)? {
                        Some(bytes) => {
                            u64_from_bytes(&bytes).map_err(ConflictableTransactionError::Abort)?
                        }
                        None => 0,
                    };
                    for ((image, record), seq) in chunk.iter().zip(&records).zip(seq..) {
                        let key = image.id.as_str().as_bytes();
                        if images.insert(key, image.to_json())?.is_some() {
                            return abort(StoreError::Conflict(image.id.to_string()));
                        }
                        audit.insert(&seq.to_be_bytes(), record.as_slice())?;
                    }
                    meta.insert(IMAGE_COUNT_KEY, &(count + chunk.len() as u64).to_be_bytes())?;
                    crate::store_mark::count_changes(meta, chunk.len() as u64)?;
                    Ok(())
                });
            result.map_err(|e| match e {
                TransactionError::Abort(e) => e,
                TransactionError::Storage(e) => StoreError::Engine(e),
            })?;
            seq += chunk.len() as u64;
        }
        Ok(Applied::Imported(batch.len() as u64))
    }

    /// Re-reads the counters from disk: after an import that stopped part way, the
    /// chunks it committed stand.
    fn refresh_counters(&mut self) -> Result<(), StoreError> {
        self.next_seq = match self.audit.last()? {
            Some((key, _)) => u64_from_bytes(&key)? + 1,
            None => 1,
        };
        let count = match self.meta.get(IMAGE_COUNT_KEY)? {
            Some(bytes) => u64_from_bytes(&bytes)?,
            None => 0,
        };
        self.image_count.store(count, Ordering::Relaxed);
        Ok(())
    }

    /// Keeps the in-memory counters in step with an applied change.
    fn count(&mut self, result: &Result<Applied, StoreError>) {
        match result {
            Ok(Applied::Created) => {
                self.image_count.fetch_add(1, Ordering::Relaxed);
                self.next_seq += 1;
            }
            Ok(Applied::Deleted) => {
                self.image_count.fetch_sub(1, Ordering::Relaxed);
                self.next_seq += 1;
            }
            Ok(Applied::Updated(_)) => self.next_seq += 1,
            Ok(Applied::Imported(_)) | Err(_) => {}
        }
    }

    /// Applies a batch of changes in one sled transaction. Each change gets its own
    /// outcome: a refused one (conflict, unknown id, failed precondition) writes
    /// nothing and does not stop the others. One transaction per batch matters: sled
    /// writes its log buffer out at every commit, which made a transaction per change
    /// cost as much as a flush (bench/RESULTS.md).
    fn apply_all(
        &self,
        changes: &[(&Change, &str)],
    ) -> Result<Vec<Result<Applied, StoreError>>, StoreError> {
        let time = now_rfc3339();
        let result =
            (&self.images, &self.audit, &self.meta).transaction(|(images, audit, meta)| {
                let mut count = match meta.get(IMAGE_COUNT_KEY)? {
                    Some(bytes) => {
                        u64_from_bytes(&bytes).map_err(ConflictableTransactionError::Abort)?
                    }
                    None => 0,
                };
                let mut seq = self.next_seq;
                let mut outcomes = Vec::with_capacity(changes.len());
                for (change, user) in changes {
                    let outcome = apply_one(images, change)?;
                    match &outcome {
                        Ok(Applied::Created) => count += 1,
                        Ok(Applied::Deleted) => count = count.saturating_sub(1),
                        _ => {}
                    }
                    if outcome.is_ok() {
                        let record = AuditRecord {
                            seq,
                            time: time.clone(),
                            user: (*user).to_owned(),
                            method: change.method().to_owned(),
                            id: change.id().as_str().to_owned(),
                            status: 200,
                        };
                        let json = serde_json::to_vec(&record).unwrap_or_default();
                        audit.insert(&seq.to_be_bytes(), json)?;
                        seq += 1;
                    }
                    outcomes.push(outcome);
                }
                meta.insert(IMAGE_COUNT_KEY, &count.to_be_bytes())?;
                crate::store_mark::count_changes(meta, seq - self.next_seq)?;
                Ok(outcomes)
            });
        result.map_err(|e| match e {
            TransactionError::Abort(e) => e,
            TransactionError::Storage(e) => StoreError::Engine(e),
        })
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
            let current = match current_record(images.get(key)?, id, precondition) {
                Ok(current) => current,
                Err(refused) => return Ok(Err(refused)),
            };
            let next = match current.image() {
                Ok(image) => patch.apply(&image).map_err(StoreError::Invalid),
                Err(e) => Err(e),
            };
            match next {
                Ok(next) => {
                    let bytes = IVec::from(next.to_json());
                    images.insert(key, bytes.clone())?;
                    Ok(Applied::Updated(Record(bytes)))
                }
                Err(refused) => Err(refused),
            }
        }
        Change::Delete { id, precondition } => {
            if let Err(refused) = current_record(images.get(key)?, id, precondition) {
                return Ok(Err(refused));
            }
            images.remove(key)?;
            Ok(Applied::Deleted)
        }
    })
}

fn abort<T>(err: StoreError) -> Result<T, ConflictableTransactionError<StoreError>> {
    Err(ConflictableTransactionError::Abort(err))
}

/// The stored record, if it exists and meets the precondition.
fn current_record(
    value: Option<IVec>,
    id: &ImageId,
    precondition: &Option<Precondition>,
) -> Result<Record, StoreError> {
    let Some(value) = value else {
        return Err(StoreError::NotFound(id.to_string()));
    };
    let record = Record(value);
    if let Some(Precondition::EtagIn(tags)) = precondition
        && !tags.contains(&record.etag())
    {
        return Err(StoreError::PreconditionFailed(id.to_string()));
    }
    Ok(record)
}

/// RFC 3339 in UTC with a fixed width (microseconds), so records line up and sort as
/// text.
fn now_rfc3339() -> String {
    let t = time::OffsetDateTime::now_utc();
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.microsecond()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let store = Store::open(dir.path(), 8).unwrap();
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
            let store = Store::open(dir.path(), 8).unwrap();
            block_on(store.apply(Change::Create(image("x")), "a")).unwrap();
        }
        {
            let store = Store::open(dir.path(), 8).unwrap();
            assert!(store.get(&ImageId::parse("x").unwrap()).unwrap().is_some());
            assert_eq!(store.image_count(), 1, "the count is kept on disk");
            store.set_format_version_for_tests("99").unwrap();
        }
        let err = Store::open(dir.path(), 8)
            .err()
            .expect("version 99 is refused");
        assert!(err.to_string().contains("format version '99'"), "{err}");
    }

    #[test]
    fn a_store_made_before_the_change_count_counts_its_audit_trail() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path(), 8).unwrap();
            block_on(async {
                for id in ["a", "b", "c"] {
                    store.apply(Change::Create(image(id)), "u").await.unwrap();
                }
            });
            // As a store written before the count was kept: no counter, no mark.
            let meta = store.db.open_tree(META_TREE).unwrap();
            meta.remove(crate::store_mark::CHANGES_KEY).unwrap();
        }
        std::fs::remove_file(dir.path().join(crate::store_mark::MARK_FILE)).unwrap();
        let store = Store::open(dir.path(), 8).unwrap();
        let meta = store.db.open_tree(META_TREE).unwrap();
        assert_eq!(
            crate::store_mark::stored_changes(dir.path(), &meta).unwrap(),
            Some(3)
        );
        assert_eq!(crate::store_mark::read(dir.path()).unwrap(), Some(3));
    }

    #[test]
    fn a_miscounted_store_is_damaged() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path(), 8).unwrap();
            block_on(store.apply(Change::Create(image("a")), "u")).unwrap();
            store.images.remove("a").unwrap();
        }
        let err = Store::open(dir.path(), 8).err().expect("refused");
        assert!(matches!(err, StoreError::Damaged { .. }), "{err}");
        assert!(err.needs_operator());
    }

    #[test]
    fn second_open_says_in_use() {
        let dir = tempfile::tempdir().unwrap();
        let _first = Store::open(dir.path(), 8).unwrap();
        let err = Store::open(dir.path(), 8)
            .err()
            .expect("second open refused");
        assert!(matches!(err, StoreError::InUse(_)), "{err}");
    }
}
