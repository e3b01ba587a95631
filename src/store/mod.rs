//! The catalog's store: one interface, two backends.
//!
//! [`Store`] is what the routes, the CLI and the tests talk to. Behind it sits either
//! the embedded store ([`embedded`]: sled in the data dir, the default) or PostgreSQL
//! ([`postgres`], which several nodes may share). Both keep the same promises
//! (docs/contract.md): a success means durable, each change commits with its audit
//! record, seqs grow in commit order. What is particular to one backend (sled's
//! types and its synchronous reads, SQL) stays in its module; everything here is
//! async, and long work runs off the request workers.

use std::path::Path;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;

use crate::config::StoreConfig;
use crate::domain::change::AuditRecord;
use crate::domain::filter::Filter;
use crate::domain::image::{Image, ImageId, ValidationError};
use crate::metrics::StoreFigures;

pub mod embedded;
pub mod postgres;
mod queue;
mod rules;

pub use crate::domain::access::{Author, Permit, Revoked};
pub use crate::domain::change::{Change, Precondition};
use embedded::{EmbeddedOptions, SledStore};
use postgres::{PgOptions, PgStore};

/// What a caller of the store acts on. Each engine keeps its own detail (sled's and
/// the file system's errors, SQL states) and says it here in one of these, in a
/// sentence an operator can act on. `Clone`: the jobs of a batch share one error.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The author lost the policy (a reload) before the change was applied.
    #[error(transparent)]
    Revoked(#[from] Revoked),
    #[error("no image with id '{0}'")]
    NotFound(String),
    #[error("an image with id '{0}' already exists")]
    Conflict(String),
    #[error("the precondition on image '{0}' failed")]
    PreconditionFailed(String),
    #[error(transparent)]
    Invalid(ValidationError),
    /// Too many changes are queued for the writer: nothing changed, retry shortly.
    #[error("too many changes are waiting to be written")]
    Busy,
    /// Nothing was changed: the store cannot be reached now, or is shut down.
    #[error("the store is unavailable, nothing was changed: {0}")]
    Unavailable(String),
    /// The store stopped after a failure (fail-stop) and applies nothing more.
    #[error("the store has stopped after a failure ({0})")]
    Stopped(String),
    /// The change may or may not be on disk: the store failed while making it durable.
    #[error(
        "the store failed while this change was being made durable ({0}); its outcome is unknown"
    )]
    OutcomeUnknown(String),
    /// Stored data is unreadable, or missing: the engine's whole sentence.
    #[error("{0}")]
    Damaged(String),
    /// Another process holds the store.
    #[error("{0}")]
    InUse(String),
    /// The data dir or database cannot be used as it is (no permission, a format or
    /// schema this build does not read): the engine's whole sentence.
    #[error("{0}")]
    Unusable(String),
    /// Any other failure, in the engine's words (say, an import it could not undo).
    #[error("{0}")]
    Failed(String),
}

impl StoreError {
    /// A stored record (or counter) that cannot be read as what it should be.
    pub fn unreadable(detail: impl std::fmt::Display) -> Self {
        StoreError::Damaged(format!("a stored record is unreadable: {detail}"))
    }

    /// Whether a restart cannot help: the data dir or the store needs an operator.
    /// A database of another schema major counts: restarting every few seconds
    /// against it (systemd's `Restart=on-failure`) would only fill the log.
    pub fn needs_operator(&self) -> bool {
        matches!(self, StoreError::Damaged(_) | StoreError::Unusable(_))
    }
}

/// One image as stored: its JSON exactly as the API shows it.
#[derive(Debug, Clone)]
pub struct Record(Bytes);

impl From<Bytes> for Record {
    fn from(bytes: Bytes) -> Self {
        Record(bytes)
    }
}

impl Record {
    pub(crate) fn from_slice(json: &[u8]) -> Record {
        Record(Bytes::copy_from_slice(json))
    }

    pub fn json(&self) -> &Bytes {
        &self.0
    }

    /// A strong validator: equal bytes, equal tag.
    pub fn etag(&self) -> String {
        crate::domain::change::etag_of(&self.0)
    }

    pub fn image(&self) -> Result<Image, StoreError> {
        serde_json::from_slice(&self.0).map_err(StoreError::unreadable)
    }
}

#[derive(Debug)]
pub enum Applied {
    Created,
    Updated(Record),
    Deleted,
    Imported(u64),
    /// Audit records removed by retention.
    Pruned(u64),
}

/// Which audit records a read wants, in which order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditRange {
    /// Older than this seq (every record, with `None`), newest first.
    Before(Option<u64>),
    /// Newer than this seq, oldest first: a feed.
    After(u64),
}

/// Where the catalog stands at one moment, on any node: `generation` moves with every
/// change (what was derived from the catalog may be reused while it stays), and `seq`
/// is the highest audit seq durable then (`X-Audit-Seq`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Snapshot {
    pub generation: u64,
    pub seq: u64,
}

/// The seqs the audit trail holds: its lowest (`None`: no record is held) and the
/// highest durable seq given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrailSpan {
    pub lowest: Option<u64>,
    pub highest: u64,
}

/// A page of a listing; `more` says whether anything follows it.
pub struct Page {
    pub records: Vec<Bytes>,
    pub more: bool,
}

/// Items of a listing, read as the client takes them.
pub type Listing = Pin<Box<dyn Stream<Item = Result<Bytes, StoreError>> + Send + 'static>>;

/// Each engine has the same methods, with the same signatures (the engine interface):
/// [`Store`] only forwards each call to the engine in use, and a method whose
/// signature differed between the two would not compile here.
macro_rules! engine {
    ($store:expr, $e:ident => $call:expr) => {
        match $store {
            Store::Embedded($e) => $call,
            Store::Postgres($e) => $call,
        }
    };
}

/// The catalog's store. Each method keeps the promise docs/contract.md states for it,
/// on either backend.
pub enum Store {
    Embedded(SledStore),
    Postgres(PgStore),
}

impl Store {
    /// Opens the store `config` names: the embedded one in `data_dir`, or connects to
    /// PostgreSQL (creating the schema on a database that has none).
    pub async fn open(config: &StoreConfig, data_dir: &Path) -> Result<Store, StoreError> {
        match &config.postgres {
            None => {
                let dir = data_dir.to_owned();
                let options = EmbeddedOptions {
                    cache_mb: config.cache_mb,
                    accept_data_loss: config.accept_data_loss,
                    flush_timeout: config.flush_timeout,
                };
                // Opening reads the whole store through: not on an async worker.
                tokio::task::spawn_blocking(move || SledStore::open_with(&dir, &options))
                    .await
                    .map_err(|e| StoreError::Failed(format!("opening the store failed: {e}")))?
                    .map(Store::Embedded)
            }
            Some(pg) => PgStore::connect(pg.url.expose(), pg_options(pg))
                .await
                .map(Store::Postgres),
        }
    }

    /// Opens the embedded store in `dir` (for tools and tests that build one directly).
    pub fn open_embedded(dir: &Path, cache_mb: u64) -> Result<Store, StoreError> {
        SledStore::open(dir, cache_mb).map(Store::Embedded)
    }

    /// Which backend this is, as `[store] backend` names it.
    pub fn backend(&self) -> &'static str {
        match self {
            Store::Embedded(_) => "sled",
            Store::Postgres(_) => "postgres",
        }
    }

    /// Applies a change with its audit record; resolves once both are durable.
    pub async fn apply(
        &self,
        change: Change,
        author: impl Into<Author>,
    ) -> Result<Applied, StoreError> {
        engine!(self, e => e.apply(change, author).await)
    }

    /// Resolves once every change handed to the store before it has been answered:
    /// a reload waits for it, so that no change let in under the old policies is
    /// answered after the reload says it is done.
    pub async fn settle(&self) -> Result<(), StoreError> {
        engine!(self, e => e.settle().await)
    }

    /// Moves in `trail` (audit records from another store, seqs kept) and creates all
    /// `images`, each with an audit record (method `IMPORT`) whose seq follows the
    /// highest of the trail and of the store, in one atomic step: all of it lands, or
    /// none of it if an id exists already (`Conflict`) or the trail overlaps the one
    /// here (a seq already present, or a record between its lowest and highest seq).
    /// Resolves with the number of images, once all of it is durable.
    pub async fn import(
        &self,
        images: Vec<Image>,
        trail: Vec<AuditRecord>,
        author: impl Into<Author>,
    ) -> Result<u64, StoreError> {
        engine!(self, e => e.import(images, trail, author).await)
    }

    pub async fn get(&self, id: &ImageId) -> Result<Option<Record>, StoreError> {
        engine!(self, e => e.get(id).await)
    }

    /// Which of `ids` the catalog holds (an import names each clash before it starts).
    pub async fn existing(&self, ids: &[ImageId]) -> Result<Vec<ImageId>, StoreError> {
        engine!(self, e => e.existing(ids).await)
    }

    /// Up to `limit` images after `after` (exclusive) that `filter` keeps, in id byte
    /// order.
    pub async fn list_page(
        &self,
        after: Option<&ImageId>,
        filter: &Filter,
        limit: usize,
    ) -> Result<Page, StoreError> {
        engine!(self, e => e.list_page(after, filter, limit).await)
    }

    /// A page as [`Store::list_page`] gives it, with a snapshot no later than the
    /// page (see [`Store::snapshot`]): what a cache may file the page under, and the
    /// seq a feed may resume from without missing what the page does not show.
    pub async fn list_page_at(
        &self,
        after: Option<&ImageId>,
        filter: &Filter,
        limit: usize,
    ) -> Result<(Snapshot, Page), StoreError> {
        engine!(self, e => e.list_page_at(after, filter, limit).await)
    }

    /// Every image after `after`, in id byte order, with flat memory.
    pub fn list_stream(&self, after: Option<&ImageId>, filter: &Filter) -> Listing {
        engine!(self, e => e.list_stream(after, filter))
    }

    /// Up to `limit` audit records of `range`, only image `id`'s if given (through
    /// an index).
    pub async fn audit_page(
        &self,
        range: AuditRange,
        id: Option<&ImageId>,
        limit: usize,
    ) -> Result<Page, StoreError> {
        engine!(self, e => e.audit_page(range, id, limit).await)
    }

    /// Every audit record older than `before`, newest first, only image `id`'s if
    /// given, with flat memory.
    pub fn audit_stream(&self, before: Option<u64>, id: Option<&ImageId>) -> Listing {
        engine!(self, e => e.audit_stream(before, id))
    }

    /// The lowest seq held and the highest durable one: a feed that asks for records
    /// after a seq outside them has missed some (pruned), or is from another history.
    pub async fn trail_span(&self) -> Result<TrailSpan, StoreError> {
        engine!(self, e => e.trail_span().await)
    }

    /// Every audit record after `after`, oldest first, with flat memory.
    pub fn audit_ascending(&self, after: Option<u64>) -> Listing {
        engine!(self, e => e.audit_ascending(after))
    }

    /// The highest durable audit seq known here, as it moves: on the embedded store
    /// after each batch is durable; on PostgreSQL after each commit of this node and
    /// as the database tells of other nodes' (never ahead of what a read shows).
    pub fn durable_seqs(&self) -> tokio::sync::watch::Receiver<u64> {
        engine!(self, e => e.durable_seqs())
    }

    /// Where the catalog stands now (see [`Snapshot`]), as one read.
    pub async fn snapshot(&self) -> Result<Snapshot, StoreError> {
        engine!(self, e => e.snapshot().await)
    }

    /// The figures `/metrics` shows about the store.
    pub async fn figures(&self) -> Result<StoreFigures, StoreError> {
        engine!(self, e => e.figures().await)
    }

    /// Whether the store answers now; why not, if it does not.
    pub async fn health(&self) -> Result<(), StoreError> {
        engine!(self, e => e.health().await)
    }

    /// Resolves once the store has failed for good, and the process is to exit and
    /// start again on what is durable (sled's fail-stop); never for PostgreSQL, whose
    /// failures pass, and whose nodes reconnect.
    pub async fn failed(&self) -> String {
        engine!(self, e => e.failed().await)
    }

    /// Keeps audit records for `keep` (`None`: for ever).
    /// Removes audit records older than the retention now (rather than in the
    /// background, at least once a minute); returns how many.
    pub async fn prune_audit(&self) -> Result<u64, StoreError> {
        engine!(self, e => e.prune_audit().await)
    }

    pub fn keep_audit_for(&self, keep: Option<Duration>) {
        engine!(self, e => e.keep_audit_for(keep))
    }

    /// Finishes what is queued and closes the store.
    pub fn shutdown(&self) -> Result<(), StoreError> {
        engine!(self, e => e.shutdown())
    }

    /// The embedded store's data dir, or `None` for a database.
    pub fn data_dir(&self) -> Option<&Path> {
        engine!(self, e => e.data_dir())
    }
}

/// An imported trail refused: it gives `seq` twice.
pub(crate) fn trail_repeats(seq: u64) -> StoreError {
    StoreError::Invalid(ValidationError(format!(
        "the imported audit trail holds seq {seq} twice"
    )))
}

fn pg_options(config: &crate::config::PostgresConfig) -> PgOptions {
    PgOptions {
        connect_timeout: config.connect_timeout,
        statement_timeout: config.statement_timeout,
        pool_size: config.pool_size,
        ..PgOptions::default()
    }
}
