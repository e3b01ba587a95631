//! The catalog in PostgreSQL, keeping every promise of the sled store (see
//! docs/postgres.md for the schema, the transactions and how errors map).
//!
//! All database I/O runs on a small tokio runtime owned by the store, so that callers
//! on any runtime (actix runs one current-thread runtime per worker) can await it,
//! and the pool's connection tasks live as long as the store. Every await on the
//! database is bounded: a database that does not answer is `Unavailable` (nothing
//! was changed) or, once a COMMIT was sent, `OutcomeUnknown`; never a hang.
//!
//! Writes go through one writer task that takes every change queued meanwhile and
//! commits them in one transaction (group commit, as the sled writer does), or, with
//! `PgOptions::batch_writes` off, each change in its own transaction.

mod coalesce;
mod import;
mod listen;
mod pool;
mod prune;
mod reads;
mod schema;
#[cfg(test)]
mod tests;
mod tls;
mod writer;

use reads::*;
use writer::*;

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;
use std::time::Duration;

use bytes::Bytes;
use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod};
use futures_util::Stream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_postgres::error::SqlState;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::domain::change::IMPORT_METHOD;
use crate::domain::change::Transition;
use crate::domain::filter::Filter;
use crate::domain::image::{Image, ImageId, ValidationError};
use crate::store::queue::{Place, WriteQueue};
use crate::store::{
    Applied, AuditRange, AuditRecord, Author, Change, Page, Record, Snapshot, StoreError,
    TrailSpan, rules, trail_repeats,
};
use coalesce::Coalescer;

pub use tls::Verify;

/// The schema this build writes. A database of another major is refused; a higher
/// minor of the same major (a newer release, during a rolling upgrade) is used as it
/// is, since minors only add.
pub const SCHEMA_MAJOR: i32 = 1;
/// 1: `audit.image_id` and its index, for one image's history (`?id=`).
pub const SCHEMA_MINOR: i32 = 1;

/// Serializes schema creation among nodes that start at once.
const SCHEMA_LOCK: i64 = 0x696d_6763_6174_0001;

const SCHEMA: &str = r#"
CREATE TABLE schema_version (
    major integer NOT NULL,
    minor integer NOT NULL
);
CREATE TABLE counters (
    id integer PRIMARY KEY CHECK (id = 1),
    next_seq bigint NOT NULL,
    generation bigint NOT NULL,
    images bigint NOT NULL,
    audit_records bigint NOT NULL,
    audit_bytes bigint NOT NULL
);
INSERT INTO counters VALUES (1, 1, 0, 0, 0, 0);
CREATE TABLE images (
    id text COLLATE "C" PRIMARY KEY,
    provider text COLLATE "C" NOT NULL,
    json bytea NOT NULL
);
CREATE INDEX images_provider_id ON images (provider, id);
CREATE TABLE audit (
    seq bigint PRIMARY KEY,
    time text COLLATE "C" NOT NULL,
    json bytea NOT NULL
);
"#;

/// Schema 1.0 to 1.1: the audit trail by image, and a notification at each commit
/// that took seqs. The first trigger fills `image_id` where an insert leaves it out (a
/// node of release 1.0 still writing during a rolling upgrade; a generated column
/// cannot be had: reading bytea as UTF-8 is not immutable); the second tells every
/// listening node the highest seq the transaction took (`listen`), whichever release
/// wrote it.
const SCHEMA_1_1: &str = r#"
ALTER TABLE audit ADD COLUMN image_id text COLLATE "C";
UPDATE audit SET image_id = convert_from(json, 'UTF8')::json->>'id';
CREATE INDEX audit_image_id_seq ON audit (image_id, seq);
CREATE FUNCTION audit_image_id() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.image_id IS NULL THEN
        NEW.image_id := convert_from(NEW.json, 'UTF8')::json->>'id';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER audit_image_id BEFORE INSERT ON audit
    FOR EACH ROW EXECUTE FUNCTION audit_image_id();
CREATE FUNCTION counters_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.next_seq <> OLD.next_seq THEN
        PERFORM pg_notify('image_catalog_changes', (NEW.next_seq - 1)::text);
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER counters_notify AFTER UPDATE ON counters
    FOR EACH ROW EXECUTE FUNCTION counters_notify();
"#;

/// Rows per round trip of a streamed listing.
const STREAM_BATCH: i64 = 500;
/// Images per statement of an import.
const IMPORT_CHUNK: usize = 1000;
/// Changes committed together by the writer at most.
const MAX_BATCH: usize = 256;
/// How long `is_healthy` waits at most.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);
/// How often old audit records are looked for, when a retention is set.
const PRUNE_EVERY: Duration = Duration::from_secs(60);
const PRUNE_CHUNK: i64 = 10_000;

/// Numbers the stores of a process, for the per-thread read pools.
static STORE_IDS: AtomicU64 = AtomicU64::new(1);

thread_local! {
    /// True on the threads of a store's own runtime.
    static ON_STORE_RUNTIME: Cell<bool> = const { Cell::new(false) };
    /// This thread's read pools and coalescers, by store id: their connections are
    /// driven by this thread's runtime (see `Inner::local`).
    static LOCALS: RefCell<Vec<(u64, Arc<Local>)>> = const { RefCell::new(Vec::new()) };
}

/// Statements of one kind a request worker has on their way at once, at most: the
/// reads that come meanwhile wait and go together in the next (see `coalesce`). Two
/// made GETs and pages at 8 connections 7-10% slower: smaller batches, more statements.
const READS_IN_FLIGHT: usize = 1;

/// What a request worker's thread keeps for a store.
struct Local {
    pool: Pool,
    gets: Arc<Coalescer<String, Option<Bytes>>>,
    /// Pages of all images, and pages of one provider's.
    pages: Arc<Coalescer<PageAsk, Generational<Vec<Bytes>>>>,
    provider_pages: Arc<Coalescer<PageAsk, Generational<Vec<Bytes>>>>,
    counters: Arc<Coalescer<(), Counters>>,
}

/// Takes seqs for $1 audit records and moves the counters ($2: the change in image
/// count), giving the first seq and the records' time (the database's clock, shared by
/// every node). The counter row stays locked to COMMIT, so seqs are given in commit
/// order; the records themselves are made by `AuditRecord` and stored by `AUDIT_SQL`.
const SEQS_SQL: &str = r#"
UPDATE counters SET
    next_seq = next_seq + $1,
    generation = generation + 1,
    images = images + $2,
    audit_records = audit_records + $1
WHERE id = 1
RETURNING next_seq - $1,
    to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
"#;

/// Stores audit records: $1 seqs, $2 time, $3 JSONs, $4 their bytes in all, $5 the
/// ids of their images.
const AUDIT_SQL: &str = r#"
WITH counted AS (UPDATE counters SET audit_bytes = audit_bytes + $4 WHERE id = 1)
INSERT INTO audit (seq, time, json, image_id)
SELECT seq, $2, json, image_id FROM unnest($1::bigint[], $3::bytea[], $5::text[]) AS u(seq, json, image_id)
"#;

/// How the store connects; the defaults suit a database on the same network.
#[derive(Debug, Clone)]
pub struct PgOptions {
    /// To open a connection (TCP, TLS and login), and to wait for one from the pool.
    pub connect_timeout: Duration,
    /// Each statement, enforced by the server (`statement_timeout`) and, a second
    /// later, by the client, for a server that does not answer at all.
    pub statement_timeout: Duration,
    /// Connections at most.
    pub pool_size: usize,
    /// Commit the changes queued meanwhile in one transaction (one writer task);
    /// off: a transaction per change, straight from the caller.
    pub batch_writes: bool,
}

impl Default for PgOptions {
    fn default() -> Self {
        PgOptions {
            connect_timeout: Duration::from_secs(5),
            statement_timeout: Duration::from_secs(5),
            pool_size: 16,
            batch_writes: true,
        }
    }
}

/// The counters kept in step with the data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counters {
    pub images: u64,
    pub audit_records: u64,
    pub audit_bytes: u64,
    pub next_seq: u64,
    /// Moves with every write transaction of any node.
    pub generation: u64,
}

pub struct PgStore {
    inner: Arc<Inner>,
    handle: tokio::runtime::Handle,
    runtime: Mutex<Option<tokio::runtime::Runtime>>,
}

struct Inner {
    pool: Pool,
    /// Makes the per-thread read pools.
    manager: (tokio_postgres::Config, MakeRustlsConnect),
    id: u64,
    /// Every per-thread read pool made, to close them with the store.
    local_pools: Mutex<Vec<Pool>>,
    options: PgOptions,
    /// What must never appear in a message: the password, as given and as encoded.
    secrets: Vec<String>,
    writer: Option<mpsc::UnboundedSender<Job>>,
    queue: WriteQueue,
    /// Held (shared) by each batch from the policy check to its replies; taken alone
    /// by [`PgStore::settle`].
    decisions: tokio::sync::RwLock<()>,
    /// Seconds an audit record is kept; 0 keeps every record.
    retention: AtomicU64,
    /// The highest seq known to be committed, of this node's or another's.
    landed: Arc<watch::Sender<u64>>,
}

impl Inner {
    /// Seqs up to `seq` are committed.
    fn landed_up_to(&self, seq: i64) {
        landed_up_to(&self.landed, seq);
    }
}

/// Seqs up to `seq` are committed: `landed` moves up to it, never back.
fn landed_up_to(landed: &watch::Sender<u64>, seq: i64) {
    let seq = u64::try_from(seq).unwrap_or(0);
    landed.send_if_modified(|known| {
        let moved = seq > *known;
        *known = (*known).max(seq);
        moved
    });
}

struct Job {
    change: Change,
    author: Author,
    reply: oneshot::Sender<Result<Applied, StoreError>>,
    /// The job's place in the bounded queue, given back when the job is dropped;
    /// `None` for a change applied alone.
    _place: Option<Place>,
}

/// Why a transaction stopped: the database failed (`Broken`), before or after its
/// COMMIT was sent.
#[derive(Debug)]
enum Broken {
    /// Nothing of the transaction was committed.
    Before(String),
    /// The COMMIT was sent; its outcome is unknown.
    InCommit(String),
}

impl Broken {
    fn into_error(self) -> StoreError {
        match self {
            Broken::Before(why) => StoreError::Unavailable(why),
            Broken::InCommit(why) => StoreError::OutcomeUnknown(why),
        }
    }
}

impl PgStore {
    /// Connects, creates the schema if the database has none, refuses one of another
    /// major version. The URL is a libpq URL or key=value string; `sslmode` may be
    /// `disable`, `prefer` (the default), `require`, `verify-ca` or `verify-full`, with
    /// `sslrootcert=PATH` (without it, verification trusts the Mozilla roots).
    pub async fn connect(url: &str, options: PgOptions) -> Result<PgStore, StoreError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("pg-store")
            .on_thread_start(|| ON_STORE_RUNTIME.set(true))
            .enable_all()
            .build()
            .map_err(|e| StoreError::Unavailable(format!("starting the database runtime: {e}")))?;
        let handle = runtime.handle().clone();
        let url = url.to_owned();
        let started = handle.spawn(async move { Inner::connect(&url, options, true).await });
        let inner = match started.await {
            Ok(Ok(inner)) => inner,
            Ok(Err(e)) => {
                runtime.shutdown_background();
                return Err(e);
            }
            Err(e) => {
                runtime.shutdown_background();
                return Err(StoreError::Unavailable(format!("connecting failed: {e}")));
            }
        };
        let store = PgStore {
            inner,
            handle,
            runtime: Mutex::new(Some(runtime)),
        };
        store
            .handle
            .spawn(Inner::prune_loop(Arc::downgrade(&store.inner)));
        store
            .handle
            .spawn(Inner::listen_loop(Arc::downgrade(&store.inner)));
        Ok(store)
    }

    /// Checks that the database can be reached and holds a schema this build reads,
    /// changing nothing (for `check-config`): `Some((major, minor))` of the schema
    /// found, `None` when it has none yet (the first start makes it).
    pub async fn probe(url: &str, options: PgOptions) -> Result<Option<(i32, i32)>, StoreError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("pg-probe")
            .on_thread_start(|| ON_STORE_RUNTIME.set(true))
            .enable_all()
            .build()
            .map_err(|e| StoreError::Unavailable(format!("starting the database runtime: {e}")))?;
        let url = url.to_owned();
        let options = PgOptions {
            batch_writes: false,
            pool_size: 2,
            ..options
        };
        let probe = runtime.spawn(async move {
            let inner = Inner::connect(&url, options, false).await?;
            let found = inner.schema_found().await;
            inner.pool.close();
            found
        });
        let found = probe
            .await
            .unwrap_or_else(|e| Err(StoreError::Unavailable(format!("probing failed: {e}"))));
        runtime.shutdown_background();
        found
    }

    /// Runs `work` on the store's runtime.
    async fn run<T: Send + 'static>(
        &self,
        work: impl Future<Output = Result<T, StoreError>> + Send + 'static,
    ) -> Result<T, StoreError> {
        match self.handle.spawn(work).await {
            Ok(result) => result,
            Err(e) if e.is_panic() => Err(StoreError::OutcomeUnknown(
                "a database task panicked".into(),
            )),
            Err(_) => Err(StoreError::Unavailable("the store is shut down".into())),
        }
    }

    /// Runs a read: right here when the caller is on a runtime of its own (a request
    /// worker), with that thread's own connections, so that no thread hands the
    /// request to another and back; else on the store's runtime.
    async fn reading<T: Send + 'static>(
        &self,
        work: impl Future<Output = Result<T, StoreError>> + Send + 'static,
    ) -> Result<T, StoreError> {
        if self.inner.local().is_some() {
            work.await
        } else {
            self.run(work).await
        }
    }

    /// Closes the pool and stops the store's runtime; what is in flight fails.
    pub fn shutdown(&self) -> Result<(), StoreError> {
        self.close();
        Ok(())
    }

    /// Never resolves: a database's failures pass, and its nodes reconnect (the
    /// embedded store's fail-stop has no counterpart here).
    pub async fn failed(&self) -> String {
        std::future::pending().await
    }

    /// `None`: the catalog is in the database, not in a data dir.
    pub fn data_dir(&self) -> Option<&std::path::Path> {
        None
    }

    fn close(&self) {
        self.inner.pool.close();
        for pool in self.inner.local_pools.lock().drain(..) {
            pool.close();
        }
        let runtime = self.runtime.lock().take();
        if let Some(runtime) = runtime {
            runtime.shutdown_background();
        }
    }
}

impl Drop for PgStore {
    fn drop(&mut self) {
        self.close();
    }
}
