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
mod tls;

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;
use std::time::Duration;

use bytes::Bytes;
use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod};
use futures_util::Stream;
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::error::SqlState;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::domain::image::{Image, ImageId, Provider, ValidationError};
use crate::store::queue::{Place, WriteQueue};
use crate::store::{
    Applied, AuditRecord, Author, Change, Record, StoreError, rules, trail_overlaps, trail_repeats,
};
use coalesce::Coalescer;

pub use tls::Verify;

/// The schema this build writes. A database of another major is refused; a higher
/// minor of the same major (a newer release, during a rolling upgrade) is used as it
/// is, since minors only add.
pub const SCHEMA_MAJOR: i32 = 1;
pub const SCHEMA_MINOR: i32 = 0;

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
const IMPORT_METHOD: &str = "IMPORT";

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

/// A page's query: up to `limit` images after `after`, of `provider` if given.
struct PageAsk {
    after: String,
    provider: Option<String>,
    limit: i64,
}

/// A value and the generation it was read at.
type Generational<T> = (u64, T);

/// Seqs are assigned, the audit JSON built (field for field as serde writes an
/// `AuditRecord`) and inserted, and the counters moved, in one statement, while the
/// counter row is locked: its lock is held to COMMIT, so seqs are given in commit order.
/// $1 records, $2 image count change, $3 bytes of the records less their seq digits,
/// $4 users (JSON strings), $5 methods, $6 ids (JSON strings).
const AUDIT_SQL: &str = r#"
WITH c AS (
    UPDATE counters SET
        next_seq = next_seq + $1,
        generation = generation + 1,
        images = images + $2,
        audit_records = audit_records + $1,
        audit_bytes = audit_bytes + $3
            + (SELECT coalesce(sum(length((next_seq + g)::text)), 0)
               FROM generate_series(0::bigint, $1 - 1) AS g)
    WHERE id = 1
    RETURNING next_seq - $1 AS first,
        to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') AS t
)
INSERT INTO audit (seq, time, json)
SELECT c.first + u.ord - 1, c.t,
    convert_to('{"seq":' || (c.first + u.ord - 1) || ',"time":"' || c.t || '","user":'
        || u.user_json || ',"method":"' || u.method || '","id":' || u.id_json
        || ',"status":200}', 'UTF8')
FROM c, unnest($4::text[], $5::text[], $6::text[]) WITH ORDINALITY AS u(user_json, method, id_json, ord)
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
            Err(_) => Err(StoreError::Closed),
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

    /// Applies a change with its audit record in one transaction; resolves once the
    /// COMMIT is acknowledged (`synchronous_commit` on).
    pub async fn apply(
        &self,
        change: Change,
        author: impl Into<Author>,
    ) -> Result<Applied, StoreError> {
        let author = author.into();
        let inner = self.inner.clone();
        let Some(writer) = &inner.writer else {
            return self
                .run(async move { inner.apply_alone(change, author).await })
                .await;
        };
        let place = inner.queue.place().await?;
        let (reply, answer) = oneshot::channel();
        let job = Job {
            change,
            author,
            reply,
            _place: Some(place),
        };
        writer.send(job).map_err(|_| StoreError::Closed)?;
        answer.await.unwrap_or_else(|_| {
            Err(StoreError::OutcomeUnknown(
                "the database writer ended with this change in hand".into(),
            ))
        })
    }

    /// Resolves once every batch that was being decided has been answered.
    pub async fn settle(&self) -> Result<(), StoreError> {
        drop(self.inner.decisions.write().await);
        Ok(())
    }

    /// Moves in `trail` (audit records from another store, seqs kept) and creates all
    /// `images` with their audit records (method `IMPORT`, seqs after the highest of
    /// the trail and of the database), in one transaction: all of it, or nothing if an
    /// id exists already (`Conflict`) or the trail overlaps the one here (a seq
    /// already present, or a record between its lowest and highest seq).
    pub async fn import(
        &self,
        images: Vec<Image>,
        trail: Vec<AuditRecord>,
        user: &str,
    ) -> Result<u64, StoreError> {
        let inner = self.inner.clone();
        let user = user.to_owned();
        self.run(async move { inner.import(images, trail, user).await })
            .await
    }

    /// The image's JSON, exactly as stored. On a request worker, GETs that arrive
    /// while one is on its way go together in one statement (`coalesce`).
    pub async fn get(&self, id: &ImageId) -> Result<Option<Bytes>, StoreError> {
        let by_ids = |inner: Arc<Inner>, ids| async move { inner.images_by_id(ids).await };
        self.coalesced(|local| &local.gets, id.as_str().to_owned(), by_ids)
            .await
    }

    /// `query`'s answer from `run`: on a request worker through the coalescer `pick`
    /// chooses, together with the queries of its kind that come meanwhile; elsewhere
    /// alone, on the store's runtime.
    async fn coalesced<Q, A, R, F>(
        &self,
        pick: fn(&Local) -> &Arc<Coalescer<Q, A>>,
        query: Q,
        run: R,
    ) -> Result<A, StoreError>
    where
        Q: Send + 'static,
        A: Send + 'static,
        R: Fn(Arc<Inner>, Vec<Q>) -> F + Copy + Send + 'static,
        F: Future<Output = Result<Vec<A>, StoreError>> + Send + 'static,
    {
        let inner = self.inner.clone();
        match self.inner.local() {
            Some(local) => {
                pick(&local)
                    .ask(query, move |queries| run(inner.clone(), queries))
                    .await
            }
            None => {
                let mut answers = self.run(run(inner, vec![query])).await?;
                match (answers.pop(), answers.is_empty()) {
                    (Some(answer), true) => Ok(answer),
                    _ => Err(StoreError::Corrupt(
                        "one read did not give one answer".into(),
                    )),
                }
            }
        }
    }

    /// Which of `ids` the catalog holds, in one round trip.
    pub async fn existing(&self, ids: &[ImageId]) -> Result<Vec<ImageId>, StoreError> {
        let inner = self.inner.clone();
        let wanted: Vec<String> = ids.iter().map(|id| id.as_str().to_owned()).collect();
        let rows = self
            .run(async move {
                inner
                    .read(
                        "SELECT id FROM images WHERE id = ANY($1::text[])",
                        vec![Box::new(wanted)],
                    )
                    .await
            })
            .await?;
        rows.into_iter()
            .map(|row| {
                ImageId::parse_existing(row.get::<_, &str>(0))
                    .map_err(|e| StoreError::Corrupt(e.to_string()))
            })
            .collect()
    }

    /// Up to `limit` images after `after` (exclusive), in id byte order; `more` says
    /// whether any follow.
    pub async fn list_page(
        &self,
        after: Option<&ImageId>,
        provider: Option<&Provider>,
        limit: usize,
    ) -> Result<(Vec<Bytes>, bool), StoreError> {
        let inner = self.inner.clone();
        let after = after.map(|id| id.as_str().to_owned()).unwrap_or_default();
        let provider = provider.map(|p| p.as_str().to_owned());
        let limit = i64::try_from(limit).unwrap_or(i64::MAX - 1);
        self.reading(async move {
            let mut rows = inner.images_after(after, provider, limit + 1).await?;
            let more = rows.len() as i64 > limit;
            rows.truncate(limit as usize);
            Ok((rows.into_iter().map(|(_, json)| json).collect(), more))
        })
        .await
    }

    /// As [`PgStore::list_page`], with the generation the page was read at: both come
    /// from one statement, so from one snapshot, in one round trip. On a request
    /// worker, pages asked for while one is on its way go together in one statement.
    pub async fn list_page_at(
        &self,
        after: Option<&ImageId>,
        provider: Option<&Provider>,
        limit: usize,
    ) -> Result<(u64, Vec<Bytes>, bool), StoreError> {
        let ask = PageAsk {
            after: after.map(|id| id.as_str().to_owned()).unwrap_or_default(),
            provider: provider.map(|p| p.as_str().to_owned()),
            limit: i64::try_from(limit).unwrap_or(i64::MAX - 1) + 1,
        };
        let pick: fn(&Local) -> &Arc<Coalescer<PageAsk, _>> = match ask.provider {
            None => |local| &local.pages,
            Some(_) => |local| &local.provider_pages,
        };
        let pages = |inner: Arc<Inner>, asks| async move { inner.pages_at(asks).await };
        let (generation, mut rows) = self.coalesced(pick, ask, pages).await?;
        let more = rows.len() > limit;
        rows.truncate(limit);
        Ok((generation, rows, more))
    }

    /// Every image after `after`, in id byte order, fetched in keyset batches of
    /// `STREAM_BATCH` rows: memory does not grow with the catalog.
    pub fn list_stream(
        &self,
        after: Option<&ImageId>,
        provider: Option<&Provider>,
    ) -> impl Stream<Item = Result<Bytes, StoreError>> + Send + 'static {
        let inner = self.inner.clone();
        let handle = self.handle.clone();
        let after = after.map(|id| id.as_str().to_owned()).unwrap_or_default();
        let provider = provider.map(|p| p.as_str().to_owned());
        batched(after, move |after: String| {
            let inner = inner.clone();
            let provider = provider.clone();
            let fetch = handle
                .spawn(async move { inner.images_after(after, provider, STREAM_BATCH).await });
            async move {
                let rows = fetch.await.map_err(|_| StoreError::Closed)??;
                let last = rows.last().map(|(id, _)| id.clone());
                let full = rows.len() as i64 == STREAM_BATCH;
                Ok((
                    rows.into_iter().map(|(_, json)| json).collect(),
                    last.filter(|_| full),
                ))
            }
        })
    }

    /// Up to `limit` audit records older than `before`, newest first.
    pub async fn audit_page(
        &self,
        before: Option<u64>,
        limit: usize,
    ) -> Result<(Vec<Bytes>, bool), StoreError> {
        let inner = self.inner.clone();
        let before = seq_bound(before);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX - 1);
        self.reading(async move {
            let mut rows = inner.audit_before(before, limit + 1).await?;
            let more = rows.len() as i64 > limit;
            rows.truncate(limit as usize);
            Ok((rows.into_iter().map(|(_, json)| json).collect(), more))
        })
        .await
    }

    /// Every audit record older than `before`, newest first, in keyset batches.
    pub fn audit_stream(
        &self,
        before: Option<u64>,
    ) -> impl Stream<Item = Result<Bytes, StoreError>> + Send + 'static {
        self.audit_batches(seq_bound(before), true)
    }

    /// Every audit record after `after`, oldest first, in keyset batches.
    pub fn audit_ascending(
        &self,
        after: Option<u64>,
    ) -> impl Stream<Item = Result<Bytes, StoreError>> + Send + 'static {
        let start = after.map_or(0, |seq| i64::try_from(seq).unwrap_or(i64::MAX));
        self.audit_batches(start, false)
    }

    /// Audit records from the seq `start` (exclusive) on, newest or oldest first,
    /// `STREAM_BATCH` at a time.
    fn audit_batches(
        &self,
        start: i64,
        newest_first: bool,
    ) -> impl Stream<Item = Result<Bytes, StoreError>> + Send + 'static {
        let inner = self.inner.clone();
        let handle = self.handle.clone();
        batched(start, move |from: i64| {
            let inner = inner.clone();
            let fetch = handle.spawn(async move {
                if newest_first {
                    inner.audit_before(from, STREAM_BATCH).await
                } else {
                    inner.audit_after(from, STREAM_BATCH).await
                }
            });
            async move {
                let rows = fetch.await.map_err(|_| StoreError::Closed)??;
                let last = rows.last().map(|(seq, _)| *seq);
                let full = rows.len() as i64 == STREAM_BATCH;
                Ok((
                    rows.into_iter().map(|(_, json)| json).collect(),
                    last.filter(|_| full),
                ))
            }
        })
    }

    /// The counters, read in one cheap query; on a request worker, asks that come
    /// while one is on its way share the next.
    pub async fn counters(&self) -> Result<Counters, StoreError> {
        let counters = |inner: Arc<Inner>, asks: Vec<()>| async move {
            Ok(vec![inner.counters().await?; asks.len()])
        };
        self.coalesced(|local| &local.counters, (), counters).await
    }

    pub async fn image_count(&self) -> Result<u64, StoreError> {
        Ok(self.counters().await?.images)
    }

    /// Records in the audit trail, and the bytes of their JSON.
    pub async fn audit_size(&self) -> Result<(u64, u64), StoreError> {
        let counters = self.counters().await?;
        Ok((counters.audit_records, counters.audit_bytes))
    }

    /// A number that moves with every committed write of any node on this database:
    /// what was derived from the catalog (a cached list page) may be reused while it
    /// stays the same.
    pub async fn generation(&self) -> Result<u64, StoreError> {
        Ok(self.counters().await?.generation)
    }

    /// Whether the database answers a trivial query within two seconds.
    pub async fn is_healthy(&self) -> bool {
        self.health().await.is_ok()
    }

    /// Why the database is not healthy, if it is not.
    pub async fn health(&self) -> Result<(), StoreError> {
        let inner = self.inner.clone();
        self.run(async move { inner.health().await }).await
    }

    /// Connections open in the pool, and how many of them are idle.
    pub fn pool_status(&self) -> (usize, usize) {
        let status = self.inner.pool.status();
        (status.size, status.available)
    }

    /// Keeps audit records for `keep` (`None`: for ever); older ones are removed in
    /// the background at least once a minute.
    pub fn keep_audit_for(&self, keep: Option<Duration>) {
        let seconds = keep.map_or(0, |d| d.as_secs().max(1));
        self.inner.retention.store(seconds, Ordering::Relaxed);
    }

    /// Removes audit records older than the retention now; returns how many.
    pub async fn prune_audit(&self) -> Result<u64, StoreError> {
        let inner = self.inner.clone();
        self.run(async move { inner.prune().await }).await
    }

    /// Closes the pool and stops the store's runtime; what is in flight fails.
    pub fn shutdown(&self) {
        self.inner.pool.close();
        for pool in self.inner.local_pools.lock().drain(..) {
            pool.close();
        }
        let runtime = self.runtime.lock().take();
        if let Some(runtime) = runtime {
            runtime.shutdown_background();
        }
    }

    /// Sets the recorded schema version: lets tests build a database from another
    /// release.
    #[doc(hidden)]
    pub async fn set_schema_version_for_tests(
        &self,
        major: i32,
        minor: i32,
    ) -> Result<(), StoreError> {
        let inner = self.inner.clone();
        self.run(async move {
            let client = inner.client().await.map_err(Broken::into_error)?;
            inner
                .bounded(client.execute(
                    "UPDATE schema_version SET major = $1, minor = $2",
                    &[&major, &minor],
                ))
                .await
                .map_err(Broken::into_error)?;
            Ok(())
        })
        .await
    }
}

impl Drop for PgStore {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// A stream of rows fetched `fetch(from)` at a time: each fetch gives its rows and,
/// when more may follow, the key to continue from.
fn batched<K, F, Fut>(
    start: K,
    fetch: F,
) -> impl Stream<Item = Result<Bytes, StoreError>> + Send + 'static
where
    K: Send + 'static,
    F: FnMut(K) -> Fut + Send + 'static,
    Fut: Future<Output = Result<(Vec<Bytes>, Option<K>), StoreError>> + Send + 'static,
{
    use futures_util::StreamExt;
    let state = (Some(start), fetch);
    futures_util::stream::unfold(state, |(next, mut fetch)| async move {
        let from = next?;
        match fetch(from).await {
            Ok((rows, next)) => {
                let items: Vec<Result<Bytes, StoreError>> = rows.into_iter().map(Ok).collect();
                Some((futures_util::stream::iter(items), (next, fetch)))
            }
            Err(e) => Some((futures_util::stream::iter(vec![Err(e)]), (None, fetch))),
        }
    })
    .flatten()
}

fn seq_bound(before: Option<u64>) -> i64 {
    before.map_or(i64::MAX, |seq| i64::try_from(seq).unwrap_or(i64::MAX))
}

fn record_of(json: Vec<u8>) -> Record {
    Record::from(Bytes::from(json))
}

const INSERT_SQL: &str =
    "INSERT INTO images (id, provider, json) VALUES ($1, $2, $3) ON CONFLICT (id) DO NOTHING";
const DELETE_SQL: &str = "DELETE FROM images WHERE id = $1";

/// Whether `change` is one statement whose row count alone says its outcome.
fn one_statement(change: &Change) -> bool {
    matches!(
        change,
        Change::Create(_)
            | Change::Delete {
                precondition: None,
                ..
            }
    )
}

/// The audit records of one transaction, as `AUDIT_SQL` takes them.
#[derive(Default)]
struct AuditBatch {
    users: Vec<String>,
    methods: Vec<String>,
    ids: Vec<String>,
    /// Bytes of the records' JSON less the digits of their seqs.
    bytes: i64,
}

impl AuditBatch {
    fn push(&mut self, user: &str, method: &str, id: &str) {
        let record = AuditRecord {
            seq: 0,
            time: "0000-00-00T00:00:00.000000Z".into(),
            user: user.to_owned(),
            method: method.to_owned(),
            id: id.to_owned(),
            status: 200,
        };
        let len = serde_json::to_vec(&record).map_or(0, |v| v.len()) - 1;
        self.bytes += len as i64;
        self.users
            .push(serde_json::to_string(user).unwrap_or_default());
        self.methods.push(method.to_owned());
        self.ids.push(serde_json::to_string(id).unwrap_or_default());
    }

    fn len(&self) -> i64 {
        self.users.len() as i64
    }
}

type Param = Box<dyn tokio_postgres::types::ToSql + Sync + Send>;

/// `$images` (rows of page number, id, json) after a row with the generation alone:
/// one statement, so one snapshot, and no column more on each image row (a scalar
/// subquery on each made a page statement 15% dearer for the server).
macro_rules! with_generation {
    ($images:literal) => {
        concat!(
            "SELECT generation, NULL::bigint, NULL::text, NULL::bytea \
             FROM counters WHERE id = 1 UNION ALL ",
            $images
        )
    };
}

impl Inner {
    /// A pool on `url`; with `create`, the schema is made (or checked) and the
    /// writer started.
    async fn connect(
        url: &str,
        options: PgOptions,
        create: bool,
    ) -> Result<Arc<Inner>, StoreError> {
        let split = tls::split_url(url).map_err(StoreError::Unavailable)?;
        let mut config: tokio_postgres::Config = split
            .url
            .parse()
            .map_err(|e| StoreError::Unavailable(format!("the database URL is not usable: {e}")))?;
        let mut secrets = Vec::new();
        if let Some(password) = config.get_password() {
            let password = String::from_utf8_lossy(password).into_owned();
            if !password.is_empty() {
                let encoded = percent_encoding::utf8_percent_encode(
                    &password,
                    percent_encoding::NON_ALPHANUMERIC,
                )
                .to_string();
                secrets.push(password);
                secrets.push(encoded);
            }
        }
        let scrub = |message: String| scrub(message, &secrets);
        let tls_config = tls::client_config(split.verify, split.root_cert.as_ref())
            .map_err(|e| StoreError::Unavailable(scrub(e)))?;
        let statement_ms = options.statement_timeout.as_millis().max(1);
        // A generic plan: the statements are key lookups whose plan does not depend
        // on their values, and with a custom plan the server would plan a batched
        // read (`= ANY($1)`, a new array length each time) anew at every execution.
        let session = format!(
            "-c synchronous_commit=on -c statement_timeout={statement_ms} \
             -c plan_cache_mode=force_generic_plan \
             -c idle_in_transaction_session_timeout={}",
            statement_ms.saturating_mul(2).max(10_000)
        );
        let options_line = match config.get_options() {
            Some(given) if !given.is_empty() => format!("{given} {session}"),
            _ => session,
        };
        config.options(options_line);
        config.connect_timeout(options.connect_timeout);
        if config.get_application_name().is_none() {
            config.application_name("image-catalog");
        }
        config.keepalives_idle(Duration::from_secs(30));
        let manager = (config, MakeRustlsConnect::new(tls_config));
        // Half of `pool_size` for writes, listings and health checks; the other half is
        // shared by the request workers' read pools (`local`).
        let pool = new_pool(&manager, &options, (options.pool_size / 2).max(2))?;
        let (writer, jobs) = if options.batch_writes {
            let (sender, receiver) = mpsc::unbounded_channel();
            (Some(sender), Some(receiver))
        } else {
            (None, None)
        };
        let inner = Arc::new(Inner {
            pool,
            manager,
            id: STORE_IDS.fetch_add(1, Ordering::Relaxed),
            local_pools: Mutex::new(Vec::new()),
            options,
            secrets,
            writer,
            queue: WriteQueue::default(),
            decisions: tokio::sync::RwLock::new(()),
            retention: AtomicU64::new(0),
        });
        if !create {
            return Ok(inner);
        }
        inner.create_schema().await?;
        if let Some(jobs) = jobs {
            tokio::spawn(Inner::writer_loop(Arc::downgrade(&inner), jobs));
        }
        Ok(inner)
    }

    fn scrub(&self, message: String) -> String {
        scrub(message, &self.secrets)
    }

    /// A statement's failure: a refusal of the database (its SQLSTATE says which) or
    /// a lost connection, both before any COMMIT.
    fn failed(&self, e: &tokio_postgres::Error) -> Broken {
        Broken::Before(self.scrub(describe(e)))
    }

    /// `future`, bounded by the statement timeout and a second more.
    async fn bounded<T>(
        &self,
        future: impl Future<Output = Result<T, tokio_postgres::Error>>,
    ) -> Result<T, Broken> {
        let limit = self.options.statement_timeout + Duration::from_secs(1);
        match tokio::time::timeout(limit, future).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(self.failed(&e)),
            Err(_) => Err(Broken::Before(format!(
                "the database did not answer within {} ms",
                limit.as_millis()
            ))),
        }
    }

    /// Sends COMMIT: a refusal by the server rolled the transaction back (nothing
    /// was changed); a lost connection or no answer leaves its outcome unknown.
    async fn commit(&self, tx: deadpool_postgres::Transaction<'_>) -> Result<(), Broken> {
        self.commit_with(tx.commit()).await
    }

    /// Awaits `commit`, a COMMIT sent, as `commit` says.
    async fn commit_with(
        &self,
        commit: impl Future<Output = Result<(), tokio_postgres::Error>>,
    ) -> Result<(), Broken> {
        let limit = self.options.statement_timeout + Duration::from_secs(1);
        match tokio::time::timeout(limit, commit).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) if e.as_db_error().is_some() => Err(self.failed(&e)),
            Ok(Err(e)) => Err(Broken::InCommit(format!(
                "the COMMIT was sent, but {}",
                self.scrub(describe(&e))
            ))),
            Err(_) => Err(Broken::InCommit(format!(
                "the COMMIT was sent, but no answer came within {} ms",
                limit.as_millis()
            ))),
        }
    }

    /// A connection from the pool, opened if need be.
    async fn client(&self) -> Result<Object, Broken> {
        self.client_from(&self.pool).await
    }

    /// This thread's read pool and coalescers, made at its first read: `None` on the
    /// store's own runtime and off any runtime. The pool's connections are driven by
    /// the runtime of this thread (a request worker's), so a read on it never leaves
    /// the thread: the hop to the store's runtime and back costs a request more than
    /// the query on a busy machine (bench/RESULTS.md). Each pool holds up to half of
    /// `pool_size`.
    fn local(&self) -> Option<Arc<Local>> {
        if ON_STORE_RUNTIME.get() || tokio::runtime::Handle::try_current().is_err() {
            return None;
        }
        LOCALS.with(|locals| {
            let mut locals = locals.borrow_mut();
            if let Some((_, local)) = locals.iter().find(|(id, _)| *id == self.id) {
                return Some(local.clone());
            }
            let mut all = self.local_pools.lock();
            if self.pool.is_closed() {
                return None;
            }
            let size = read_pool_size(self.options.pool_size);
            let pool = new_pool(&self.manager, &self.options, size).ok()?;
            // What is kept for stores that were shut down since.
            locals.retain(|(_, local)| !local.pool.is_closed());
            let local = Arc::new(Local {
                pool: pool.clone(),
                gets: Coalescer::new(READS_IN_FLIGHT),
                pages: Coalescer::new(READS_IN_FLIGHT),
                provider_pages: Coalescer::new(READS_IN_FLIGHT),
                counters: Coalescer::new(READS_IN_FLIGHT),
            });
            locals.push((self.id, local.clone()));
            all.push(pool);
            Some(local)
        })
    }

    /// A connection from `pool`, opened if need be.
    async fn client_from(&self, pool: &Pool) -> Result<Object, Broken> {
        // The pool's own timeouts bound this; the outer one is for a pool that
        // waits for a connection that never comes back.
        let limit = self.options.connect_timeout * 2 + Duration::from_secs(1);
        match tokio::time::timeout(limit, pool.get()).await {
            Ok(Ok(client)) => Ok(client),
            Ok(Err(e)) => Err(Broken::Before(self.scrub(describe_pool(&e)))),
            Err(_) => Err(Broken::Before(format!(
                "no database connection within {} ms",
                limit.as_millis()
            ))),
        }
    }

    /// `SELECT 1` within `HEALTH_TIMEOUT`. A connection that failed or did not answer
    /// in time is dropped, not given back to the pool: a node that a balancer took out
    /// gets nothing but health checks, which must not meet the same silent connection
    /// again and again (one to a primary that vanished stays silent for minutes).
    async fn health(&self) -> Result<(), StoreError> {
        let late = || {
            StoreError::Unavailable(format!(
                "the database did not answer within {} s",
                HEALTH_TIMEOUT.as_secs()
            ))
        };
        let deadline = tokio::time::Instant::now() + HEALTH_TIMEOUT;
        let client = match tokio::time::timeout_at(deadline, self.client()).await {
            Ok(Ok(client)) => client,
            Ok(Err(broken)) => return Err(broken.into_error()),
            Err(_) => return Err(late()),
        };
        let check = async {
            let statement = client.prepare_cached("SELECT 1").await?;
            client.query(&statement, &[]).await
        };
        let failed = match tokio::time::timeout_at(deadline, check).await {
            Ok(Ok(_)) => return Ok(()),
            Ok(Err(e)) => self.failed(&e).into_error(),
            Err(_) => late(),
        };
        drop(Object::take(client));
        Err(failed)
    }

    /// The schema version the database holds, checked as at connect.
    async fn schema_found(&self) -> Result<Option<(i32, i32)>, StoreError> {
        let present = self
            .read(
                "SELECT to_regclass('schema_version') IS NOT NULL, \
                        to_regclass('images') IS NOT NULL",
                vec![],
            )
            .await?;
        let (versioned, has_images): (bool, bool) = (present[0].get(0), present[0].get(1));
        if !versioned {
            if has_images {
                return Err(foreign_tables());
            }
            return Ok(None);
        }
        let row = self
            .read("SELECT major, minor FROM schema_version", vec![])
            .await?;
        let (major, minor): (i32, i32) = (row[0].get(0), row[0].get(1));
        if major != SCHEMA_MAJOR {
            return Err(other_major(major, minor));
        }
        Ok(Some((major, minor)))
    }

    async fn create_schema(&self) -> Result<(), StoreError> {
        let mut client = self.client().await.map_err(Broken::into_error)?;
        let result = self.create_schema_on(&mut client).await;
        if result.is_err() {
            drop(Object::take(client));
        }
        result
    }

    async fn create_schema_on(&self, client: &mut Object) -> Result<(), StoreError> {
        let unavailable = Broken::into_error;
        let tx = self
            .bounded(client.transaction())
            .await
            .map_err(unavailable)?;
        self.bounded(tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK]))
            .await
            .map_err(unavailable)?;
        let encoding: String = self
            .bounded(tx.query_one("SHOW server_encoding", &[]))
            .await
            .map_err(unavailable)?
            .get(0);
        if encoding != "UTF8" {
            return Err(StoreError::IncompatibleSchema(format!(
                "the database's encoding is {encoding}; image-catalog needs UTF8 \
                 (CREATE DATABASE ... ENCODING 'UTF8')"
            )));
        }
        let present = self
            .bounded(tx.query_one(
                "SELECT to_regclass('schema_version') IS NOT NULL, \
                        to_regclass('images') IS NOT NULL",
                &[],
            ))
            .await
            .map_err(unavailable)?;
        let (versioned, has_images): (bool, bool) = (present.get(0), present.get(1));
        if !versioned {
            if has_images {
                return Err(foreign_tables());
            }
            self.bounded(tx.batch_execute(SCHEMA))
                .await
                .map_err(unavailable)?;
            self.bounded(tx.execute(
                "INSERT INTO schema_version VALUES ($1, $2)",
                &[&SCHEMA_MAJOR, &SCHEMA_MINOR],
            ))
            .await
            .map_err(unavailable)?;
            log::info!(
                "created the image-catalog schema {SCHEMA_MAJOR}.{SCHEMA_MINOR} in the database"
            );
        } else {
            let row = self
                .bounded(tx.query_one("SELECT major, minor FROM schema_version", &[]))
                .await
                .map_err(unavailable)?;
            let (major, minor): (i32, i32) = (row.get(0), row.get(1));
            if major != SCHEMA_MAJOR {
                return Err(other_major(major, minor));
            }
            // Minors add only: a newer one is read as it is, an older one would be
            // brought up here, additively. There is one minor so far.
        }
        self.bounded(tx.commit()).await.map_err(|b| match b {
            Broken::Before(why) | Broken::InCommit(why) => StoreError::Unavailable(why),
        })?;
        Ok(())
    }

    /// A read: `Unavailable` when the database fails.
    async fn read(
        &self,
        sql: &str,
        params: Vec<Param>,
    ) -> Result<Vec<tokio_postgres::Row>, StoreError> {
        let client = match self.local() {
            Some(local) => self.client_from(&local.pool).await,
            None => self.client().await,
        }
        .map_err(Broken::into_error)?;
        let refs: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
            params.iter().map(|p| p.as_ref() as _).collect();
        let statement = self.bounded(client.prepare_cached(sql)).await;
        let rows = match statement {
            Ok(statement) => self.bounded(client.query(&statement, &refs)).await,
            Err(e) => Err(e),
        };
        match rows {
            Ok(rows) => Ok(rows),
            Err(broken) => {
                drop(Object::take(client));
                Err(broken.into_error())
            }
        }
    }

    async fn images_after(
        &self,
        after: String,
        provider: Option<String>,
        limit: i64,
    ) -> Result<Vec<(String, Bytes)>, StoreError> {
        let rows = match provider {
            None => {
                self.read(
                    "SELECT id, json FROM images WHERE id > $1 ORDER BY id LIMIT $2",
                    vec![Box::new(after), Box::new(limit)],
                )
                .await?
            }
            Some(provider) => {
                self.read(
                    "SELECT id, json FROM images WHERE provider = $1 AND id > $2 \
                     ORDER BY id LIMIT $3",
                    vec![Box::new(provider), Box::new(after), Box::new(limit)],
                )
                .await?
            }
        };
        Ok(rows
            .into_iter()
            .map(|row| {
                (
                    row.get::<_, String>(0),
                    Bytes::from(row.get::<_, Vec<u8>>(1)),
                )
            })
            .collect())
    }

    /// The JSON of each of `ids`, in their order; one statement.
    async fn images_by_id(&self, ids: Vec<String>) -> Result<Vec<Option<Bytes>>, StoreError> {
        if let [id] = &ids[..] {
            let rows = self
                .read(
                    "SELECT json FROM images WHERE id = $1",
                    vec![Box::new(id.clone())],
                )
                .await?;
            return Ok(vec![
                rows.first()
                    .map(|row| Bytes::from(row.get::<_, Vec<u8>>(0))),
            ]);
        }
        let rows = self
            .read(
                "SELECT id, json FROM images WHERE id = ANY($1::text[])",
                vec![Box::new(ids.clone())],
            )
            .await?;
        let found: std::collections::HashMap<String, Bytes> = rows
            .into_iter()
            .map(|row| (row.get(0), Bytes::from(row.get::<_, Vec<u8>>(1))))
            .collect();
        Ok(ids.iter().map(|id| found.get(id).cloned()).collect())
    }

    /// Each page with the generation it was read at, all from one statement (so from
    /// one snapshot). The pages are all of one provider's, or all unfiltered.
    async fn pages_at(
        &self,
        asks: Vec<PageAsk>,
    ) -> Result<Vec<Generational<Vec<Bytes>>>, StoreError> {
        let filtered = asks.iter().any(|ask| ask.provider.is_some());
        let rows = match &asks[..] {
            [ask] => {
                let mut params: Vec<Param> = Vec::with_capacity(3);
                params.extend(ask.provider.clone().map(|p| Box::new(p) as Param));
                params.push(Box::new(ask.after.clone()));
                params.push(Box::new(ask.limit));
                let sql = if filtered {
                    const SQL: &str = with_generation!(
                        "(SELECT NULL, 1, id, json FROM images \
                          WHERE provider = $1 AND id > $2 ORDER BY id LIMIT $3)"
                    );
                    SQL
                } else {
                    const SQL: &str = with_generation!(
                        "(SELECT NULL, 1, id, json FROM images \
                          WHERE id > $1 ORDER BY id LIMIT $2)"
                    );
                    SQL
                };
                self.read(sql, params).await?
            }
            _ => {
                let afters: Vec<String> = asks.iter().map(|a| a.after.clone()).collect();
                let limits: Vec<i64> = asks.iter().map(|a| a.limit).collect();
                if filtered {
                    let providers: Vec<String> = asks
                        .iter()
                        .map(|a| a.provider.clone().unwrap_or_default())
                        .collect();
                    self.read(
                        with_generation!(
                            "SELECT NULL, p.n, i.id, i.json \
                             FROM unnest($1::text[], $2::text[], $3::bigint[]) \
                                 WITH ORDINALITY AS p(provider, after, lim, n) \
                             CROSS JOIN LATERAL (SELECT id, json FROM images \
                                 WHERE provider = p.provider AND id > p.after \
                                 ORDER BY id LIMIT p.lim) i"
                        ),
                        vec![Box::new(providers), Box::new(afters), Box::new(limits)],
                    )
                    .await?
                } else {
                    self.read(
                        with_generation!(
                            "SELECT NULL, p.n, i.id, i.json \
                             FROM unnest($1::text[], $2::bigint[]) \
                                 WITH ORDINALITY AS p(after, lim, n) \
                             CROSS JOIN LATERAL (SELECT id, json FROM images \
                                 WHERE id > p.after ORDER BY id LIMIT p.lim) i"
                        ),
                        vec![Box::new(afters), Box::new(limits)],
                    )
                    .await?
                }
            }
        };
        let mut generation = None;
        // The records of all pages go into one buffer, cut into `Bytes` that share
        // it: one allocation per batch, not one per record.
        let size = rows
            .iter()
            .filter_map(|row| row.get::<_, Option<&[u8]>>(3))
            .map(<[u8]>::len)
            .sum();
        let mut buffer = bytes::BytesMut::with_capacity(size);
        let mut spans: Vec<Vec<(&str, std::ops::Range<usize>)>> =
            asks.iter().map(|_| Vec::new()).collect();
        for row in &rows {
            let (Some(page), Some(id), Some(json)) = (
                row.get::<_, Option<i64>>(1),
                row.get::<_, Option<&str>>(2),
                row.get::<_, Option<&[u8]>>(3),
            ) else {
                generation = row.get::<_, Option<i64>>(0);
                continue;
            };
            let page = usize::try_from(page - 1)
                .ok()
                .and_then(|page| spans.get_mut(page))
                .ok_or_else(|| {
                    StoreError::Corrupt("a page of a batch that was not asked".into())
                })?;
            let start = buffer.len();
            buffer.extend_from_slice(json);
            page.push((id, start..buffer.len()));
        }
        let generation = generation
            .and_then(|g| u64::try_from(g).ok())
            .ok_or_else(|| StoreError::Corrupt("the counters row is missing".into()))?;
        let buffer = buffer.freeze();
        Ok(spans
            .into_iter()
            .map(|page| {
                let mut records: Vec<(&str, Bytes)> = page
                    .into_iter()
                    .map(|(id, span)| (id, buffer.slice(span)))
                    .collect();
                // A batch's rows come in page and index order as the plan reads them;
                // SQL does not promise it (ORDER BY would sort them all), so it is
                // checked here, which costs nothing when it holds.
                if !records.is_sorted_by(|a, b| a.0 < b.0) {
                    records.sort_by(|a, b| a.0.cmp(b.0));
                }
                (
                    generation,
                    records.into_iter().map(|(_, json)| json).collect(),
                )
            })
            .collect())
    }

    async fn audit_before(&self, before: i64, limit: i64) -> Result<Vec<(i64, Bytes)>, StoreError> {
        self.audit_rows(
            "SELECT seq, json FROM audit WHERE seq < $1 ORDER BY seq DESC LIMIT $2",
            before,
            limit,
        )
        .await
    }

    async fn audit_after(&self, after: i64, limit: i64) -> Result<Vec<(i64, Bytes)>, StoreError> {
        self.audit_rows(
            "SELECT seq, json FROM audit WHERE seq > $1 ORDER BY seq LIMIT $2",
            after,
            limit,
        )
        .await
    }

    /// Audit records `(seq, json)` as `sql` selects them from a seq and a limit.
    async fn audit_rows(
        &self,
        sql: &str,
        seq: i64,
        limit: i64,
    ) -> Result<Vec<(i64, Bytes)>, StoreError> {
        let rows = self.read(sql, vec![Box::new(seq), Box::new(limit)]).await?;
        Ok(rows
            .into_iter()
            .map(|row| (row.get::<_, i64>(0), Bytes::from(row.get::<_, Vec<u8>>(1))))
            .collect())
    }

    async fn counters(&self) -> Result<Counters, StoreError> {
        let rows = self
            .read(
                "SELECT images, audit_records, audit_bytes, next_seq, generation \
                 FROM counters WHERE id = 1",
                vec![],
            )
            .await?;
        let row = rows
            .first()
            .ok_or_else(|| StoreError::Corrupt("the counters row is missing".into()))?;
        let get = |i: usize| u64::try_from(row.get::<_, i64>(i)).unwrap_or(0);
        Ok(Counters {
            images: get(0),
            audit_records: get(1),
            audit_bytes: get(2),
            next_seq: get(3),
            generation: get(4),
        })
    }

    /// One change in its own transaction.
    async fn apply_alone(&self, change: Change, author: Author) -> Result<Applied, StoreError> {
        let (reply, answer) = oneshot::channel();
        let job = Job {
            change,
            author,
            reply,
            _place: None,
        };
        self.write_batch(vec![job]).await;
        answer.await.unwrap_or(Err(StoreError::Closed))
    }

    /// The writer: takes every change queued meanwhile and commits them together.
    async fn writer_loop(inner: std::sync::Weak<Inner>, mut jobs: mpsc::UnboundedReceiver<Job>) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        while jobs.recv_many(&mut batch, MAX_BATCH).await > 0 {
            let Some(inner) = inner.upgrade() else {
                break;
            };
            if let Some(error) = inner.write_batch(std::mem::take(&mut batch)).await {
                // No connection could be had: what queued meanwhile would wait as
                // long again for the same answer. It gets it now.
                while let Ok(job) = jobs.try_recv() {
                    let _ = job.reply.send(Err(copy_error(&error)));
                }
            }
        }
    }

    /// Applies `jobs` in one transaction and answers each. A refused change writes
    /// nothing and does not stop the others. Returns the error when no connection
    /// could be had.
    async fn write_batch(&self, jobs: Vec<Job>) -> Option<StoreError> {
        let _deciding = self.decisions.read().await;
        // A reload may have taken the policy away since the request was let in:
        // checked here, where the change is applied.
        let mut jobs: Vec<Job> = jobs
            .into_iter()
            .filter_map(
                |job| match job.author.still_allowed().map_err(StoreError::from) {
                    Ok(()) => Some(job),
                    Err(refused) => {
                        let _ = job.reply.send(Err(refused));
                        None
                    }
                },
            )
            .collect();
        if jobs.is_empty() {
            return None;
        }
        // Row locks are taken in id order, and the counter row's last: no two
        // transactions (of this node or another) wait for each other in a cycle.
        jobs.sort_by(|a, b| a.change.id().as_str().cmp(b.change.id().as_str()));
        let mut client = match self.client().await {
            Ok(client) => client,
            Err(broken) => {
                let error = broken.into_error();
                for job in jobs {
                    let _ = job.reply.send(Err(copy_error(&error)));
                }
                return Some(error);
            }
        };
        let outcome = self.write_on(&mut client, &jobs).await;
        match outcome {
            Ok(results) => {
                for (job, result) in jobs.into_iter().zip(results) {
                    let _ = job.reply.send(result);
                }
            }
            Err(broken) => {
                // A connection that failed is not given back to the pool.
                drop(Object::take(client));
                // Refusals too: one may rest on an earlier change of the batch (a
                // 409 after a create of the same id) that was not committed.
                let error = broken.into_error();
                for job in jobs {
                    let _ = job.reply.send(Err(copy_error(&error)));
                }
            }
        }
        None
    }

    /// Applies `jobs` in one transaction on `client`: each change's outcome, or the
    /// failure of the database that ended the transaction.
    async fn write_on(
        &self,
        client: &mut Object,
        jobs: &[Job],
    ) -> Result<Vec<Result<Applied, StoreError>>, Broken> {
        if jobs.iter().all(|job| one_statement(&job.change))
            && let Some(results) = self.write_at_once(client, jobs).await?
        {
            return Ok(results);
        }
        let tx = self.bounded(client.transaction()).await?;
        let mut results = Vec::with_capacity(jobs.len());
        let mut audit = AuditBatch::default();
        let mut images_delta = 0i64;
        let mut next = 0;
        while next < jobs.len() {
            // A run of changes of one statement each is sent at once (pipelined),
            // the server runs them in order: as if sent one by one, in one round trip.
            let run = jobs[next..]
                .iter()
                .take_while(|job| one_statement(&job.change))
                .count();
            let (done, outcomes) = if run >= 2 {
                (run, self.pipelined_in(&tx, &jobs[next..next + run]).await?)
            } else {
                (1, vec![self.change_in(&tx, &jobs[next].change).await?])
            };
            for (job, outcome) in jobs[next..next + done].iter().zip(outcomes) {
                match outcome {
                    Ok((applied, delta)) => {
                        images_delta += delta;
                        audit.push(
                            job.author.name(),
                            job.change.method(),
                            job.change.id().as_str(),
                        );
                        results.push(Ok(applied));
                    }
                    Err(refused) => results.push(Err(refused)),
                }
            }
            next += done;
        }
        if audit.len() == 0 {
            // Only refusals: nothing to commit.
            self.bounded(tx.rollback()).await?;
            return Ok(results);
        }
        self.audit_in(&tx, &audit, images_delta).await?;
        self.commit(tx).await?;
        Ok(results)
    }

    /// Creates and unconditional deletes, each expected to land (the common case):
    /// BEGIN, their statements and the audit statement are sent at once (the server
    /// runs them in order, as if sent one by one), then COMMIT once every statement
    /// touched its row: two round trips for the batch instead of four. When one would
    /// be refused (its id taken, or gone), the transaction is rolled back, nothing
    /// was written, and `None` says to run the batch statement by statement.
    ///
    /// This does not use a `Transaction` (which cannot be begun without waiting for
    /// BEGIN's answer): a failure returns `Broken`, whose connection the caller drops,
    /// and this future is only ever dropped half way when the store shuts down,
    /// whose closed pool drops the connection too (PostgreSQL then rolls back).
    async fn write_at_once(
        &self,
        client: &mut Object,
        jobs: &[Job],
    ) -> Result<Option<Vec<Result<Applied, StoreError>>>, Broken> {
        let insert = self.bounded(client.prepare_cached(INSERT_SQL)).await?;
        let delete = self.bounded(client.prepare_cached(DELETE_SQL)).await?;
        let audit_sql = self.bounded(client.prepare_cached(AUDIT_SQL)).await?;
        let mut audit = AuditBatch::default();
        let mut images_delta = 0i64;
        let mut jsons = Vec::with_capacity(jobs.len());
        for job in jobs {
            let change = &job.change;
            audit.push(job.author.name(), change.method(), change.id().as_str());
            match change {
                Change::Create(image) => {
                    images_delta += 1;
                    jsons.push(image.to_json());
                }
                _ => {
                    images_delta -= 1;
                    jsons.push(Vec::new());
                }
            }
        }
        let client: &tokio_postgres::Client = client;
        let statements = jobs.iter().zip(&jsons).map(|(job, json)| {
            let (insert, delete) = (&insert, &delete);
            async move {
                match &job.change {
                    Change::Create(image) => {
                        let (id, provider) = (image.id.as_str(), image.provider.as_str());
                        client.execute(insert, &[&id, &provider, json]).await
                    }
                    change => client.execute(delete, &[&change.id().as_str()]).await,
                }
            }
        });
        let records = audit.len();
        let audit_params: [&(dyn tokio_postgres::types::ToSql + Sync); 6] = [
            &records,
            &images_delta,
            &audit.bytes,
            &audit.users,
            &audit.methods,
            &audit.ids,
        ];
        // Futures send their request when first polled, and these are polled in
        // order: BEGIN, the changes, the audit statement (the counter row locked last).
        let sent = futures_util::future::try_join3(
            client.batch_execute("BEGIN"),
            futures_util::future::try_join_all(statements),
            client.execute(&audit_sql, &audit_params),
        );
        let (_, counts, _) = self.bounded(sent).await?;
        if counts.contains(&0) {
            self.bounded(client.batch_execute("ROLLBACK")).await?;
            return Ok(None);
        }
        self.commit_with(client.batch_execute("COMMIT")).await?;
        Ok(Some(
            jobs.iter()
                .map(|job| match job.change {
                    Change::Create(_) => Ok(Applied::Created),
                    _ => Ok(Applied::Deleted),
                })
                .collect(),
        ))
    }

    /// Assigns seqs to `audit` and inserts it, moving the counters, in `tx`.
    async fn audit_in(
        &self,
        tx: &deadpool_postgres::Transaction<'_>,
        audit: &AuditBatch,
        images_delta: i64,
    ) -> Result<(), Broken> {
        let statement = self.bounded(tx.prepare_cached(AUDIT_SQL)).await?;
        self.bounded(tx.execute(
            &statement,
            &[
                &audit.len(),
                &images_delta,
                &audit.bytes,
                &audit.users,
                &audit.methods,
                &audit.ids,
            ],
        ))
        .await?;
        Ok(())
    }

    /// One change inside `tx`: the outer `Err` is the database failing, the inner one
    /// the change refused with nothing written. Also gives the change in image count.
    async fn change_in(
        &self,
        tx: &deadpool_postgres::Transaction<'_>,
        change: &Change,
    ) -> Result<Result<(Applied, i64), StoreError>, Broken> {
        match change {
            Change::Create(image) => {
                let statement = self.bounded(tx.prepare_cached(INSERT_SQL)).await?;
                let inserted = self
                    .bounded(tx.execute(
                        &statement,
                        &[
                            &image.id.as_str(),
                            &image.provider.as_str(),
                            &image.to_json(),
                        ],
                    ))
                    .await?;
                if inserted == 0 {
                    return Ok(Err(StoreError::Conflict(image.id.to_string())));
                }
                Ok(Ok((Applied::Created, 1)))
            }
            Change::Update {
                id,
                patch,
                precondition,
            } => {
                let stored = self.locked(tx, id).await?;
                let next = match rules::precondition_met(id, stored.as_deref(), precondition)
                    .and_then(|current| rules::updated(&current, patch))
                {
                    Ok(next) => next,
                    Err(refused) => return Ok(Err(refused)),
                };
                let json = next.to_json();
                let statement =
                    self.bounded(tx.prepare_cached(
                        "UPDATE images SET provider = $2, json = $3 WHERE id = $1",
                    ))
                    .await?;
                self.bounded(
                    tx.execute(&statement, &[&id.as_str(), &next.provider.as_str(), &json]),
                )
                .await?;
                Ok(Ok((Applied::Updated(record_of(json)), 0)))
            }
            Change::Delete { id, precondition } => {
                if precondition.is_some() {
                    let stored = self.locked(tx, id).await?;
                    if let Err(refused) =
                        rules::precondition_met(id, stored.as_deref(), precondition)
                    {
                        return Ok(Err(refused));
                    }
                }
                let statement = self.bounded(tx.prepare_cached(DELETE_SQL)).await?;
                let deleted = self
                    .bounded(tx.execute(&statement, &[&id.as_str()]))
                    .await?;
                if deleted == 0 {
                    return Ok(Err(StoreError::NotFound(id.to_string())));
                }
                Ok(Ok((Applied::Deleted, -1)))
            }
        }
    }

    /// Creates and unconditional deletes, sent together; each has its own outcome.
    async fn pipelined_in(
        &self,
        tx: &deadpool_postgres::Transaction<'_>,
        jobs: &[Job],
    ) -> Result<Vec<Result<(Applied, i64), StoreError>>, Broken> {
        let insert = self.bounded(tx.prepare_cached(INSERT_SQL)).await?;
        let delete = self.bounded(tx.prepare_cached(DELETE_SQL)).await?;
        let jsons: Vec<Vec<u8>> = jobs
            .iter()
            .map(|job| match &job.change {
                Change::Create(image) => image.to_json(),
                _ => Vec::new(),
            })
            .collect();
        let sent = jobs.iter().zip(&jsons).map(|(job, json)| {
            let (insert, delete) = (&insert, &delete);
            async move {
                match &job.change {
                    Change::Create(image) => {
                        let (id, provider) = (image.id.as_str(), image.provider.as_str());
                        tx.execute(insert, &[&id, &provider, json]).await
                    }
                    change => tx.execute(delete, &[&change.id().as_str()]).await,
                }
            }
        });
        let counts = self
            .bounded(futures_util::future::try_join_all(sent))
            .await?;
        Ok(jobs
            .iter()
            .zip(counts)
            .map(|(job, count)| match (&job.change, count) {
                (Change::Create(image), 0) => Err(StoreError::Conflict(image.id.to_string())),
                (Change::Create(_), _) => Ok((Applied::Created, 1)),
                (change, 0) => Err(StoreError::NotFound(change.id().to_string())),
                (_, _) => Ok((Applied::Deleted, -1)),
            })
            .collect())
    }

    /// The image's JSON, its row locked to the end of `tx` (compare-and-swap).
    async fn locked(
        &self,
        tx: &deadpool_postgres::Transaction<'_>,
        id: &ImageId,
    ) -> Result<Option<Vec<u8>>, Broken> {
        let statement = self
            .bounded(tx.prepare_cached("SELECT json FROM images WHERE id = $1 FOR UPDATE"))
            .await?;
        let rows = self.bounded(tx.query(&statement, &[&id.as_str()])).await?;
        Ok(rows.into_iter().next().map(|row| row.get::<_, Vec<u8>>(0)))
    }

    async fn import(
        &self,
        images: Vec<Image>,
        trail: Vec<AuditRecord>,
        user: String,
    ) -> Result<u64, StoreError> {
        let mut seqs = Vec::with_capacity(trail.len());
        for record in &trail {
            match i64::try_from(record.seq) {
                Ok(seq) if seq > 0 => seqs.push(seq),
                _ => {
                    return Err(StoreError::Invalid(ValidationError(format!(
                        "audit seq {} is out of range",
                        record.seq
                    ))));
                }
            }
        }
        let mut client = self.client().await.map_err(Broken::into_error)?;
        match self
            .import_on(&mut client, &images, &trail, &seqs, &user)
            .await
        {
            Ok(Ok(count)) => Ok(count),
            Ok(Err(refused)) => Err(refused),
            Err(broken) => {
                drop(Object::take(client));
                Err(broken.into_error())
            }
        }
    }

    async fn import_on(
        &self,
        client: &mut Object,
        images: &[Image],
        trail: &[AuditRecord],
        seqs: &[i64],
        user: &str,
    ) -> Result<Result<u64, StoreError>, Broken> {
        let tx = self.bounded(client.transaction()).await?;
        // Every image first, then the audit: the counter row is locked last, as every
        // writer takes it.
        let insert = self
            .bounded(tx.prepare_cached(
                "INSERT INTO images (id, provider, json) \
                 SELECT * FROM unnest($1::text[], $2::text[], $3::bytea[]) \
                 ON CONFLICT (id) DO NOTHING RETURNING id",
            ))
            .await?;
        for chunk in images.chunks(IMPORT_CHUNK) {
            let ids: Vec<&str> = chunk.iter().map(|i| i.id.as_str()).collect();
            let providers: Vec<&str> = chunk.iter().map(|i| i.provider.as_str()).collect();
            let jsons: Vec<Vec<u8>> = chunk.iter().map(Image::to_json).collect();
            let rows = self
                .bounded(tx.query(&insert, &[&ids, &providers, &jsons]))
                .await?;
            if rows.len() != chunk.len() {
                let landed: std::collections::HashSet<String> =
                    rows.iter().map(|row| row.get::<_, String>(0)).collect();
                let mut seen = std::collections::HashSet::new();
                let taken = ids
                    .iter()
                    .find(|id| !landed.contains(**id) || !seen.insert(**id))
                    .map_or_else(String::new, |id| (*id).to_owned());
                let _ = self.bounded(tx.rollback()).await;
                return Ok(Err(StoreError::Conflict(taken)));
            }
        }
        // The trail before the images' records, so that those take seqs after it.
        if let Err(refused) = self.trail_in(&tx, trail, seqs).await? {
            let _ = self.bounded(tx.rollback()).await;
            return Ok(Err(refused));
        }
        for chunk in images.chunks(IMPORT_CHUNK) {
            let mut audit = AuditBatch::default();
            for image in chunk {
                audit.push(user, IMPORT_METHOD, image.id.as_str());
            }
            self.audit_in(&tx, &audit, chunk.len() as i64).await?;
        }
        self.commit(tx).await?;
        Ok(Ok(images.len() as u64))
    }

    /// Inserts `trail` as it is, seqs kept, moving the counters, in `tx`; refused if it
    /// overlaps the trail here: a seq already present, or one between its lowest and
    /// highest seq (the two trails would interleave).
    async fn trail_in(
        &self,
        tx: &deadpool_postgres::Transaction<'_>,
        trail: &[AuditRecord],
        seqs: &[i64],
    ) -> Result<Result<(), StoreError>, Broken> {
        let (Some(&low), Some(&high)) = (seqs.iter().min(), seqs.iter().max()) else {
            return Ok(Ok(()));
        };
        // The counter row first: no change may take a seq while the trail moves in.
        self.bounded(tx.execute("SELECT 1 FROM counters WHERE id = 1 FOR UPDATE", &[]))
            .await?;
        let present = self
            .bounded(tx.query(
                "SELECT seq FROM audit WHERE seq BETWEEN $1 AND $2 ORDER BY seq LIMIT 1",
                &[&low, &high],
            ))
            .await?;
        if let Some(row) = present.first() {
            return Ok(Err(trail_overlaps(
                row.get::<_, i64>(0) as u64,
                low as u64,
                high as u64,
            )));
        }
        let insert = self
            .bounded(tx.prepare_cached(
                "INSERT INTO audit (seq, time, json) \
                 SELECT * FROM unnest($1::bigint[], $2::text[], $3::bytea[]) \
                 ON CONFLICT (seq) DO NOTHING RETURNING seq",
            ))
            .await?;
        let mut bytes = 0i64;
        for (chunk, seq_chunk) in trail.chunks(IMPORT_CHUNK).zip(seqs.chunks(IMPORT_CHUNK)) {
            let times: Vec<&str> = chunk.iter().map(|r| r.time.as_str()).collect();
            let jsons: Vec<Vec<u8>> = chunk
                .iter()
                .map(|r| serde_json::to_vec(r).unwrap_or_default())
                .collect();
            bytes += jsons.iter().map(|j| j.len() as i64).sum::<i64>();
            let rows = self
                .bounded(tx.query(&insert, &[&seq_chunk, &times, &jsons]))
                .await?;
            if rows.len() != chunk.len() {
                // Only a seq given twice in the trail itself can land here.
                let landed: std::collections::HashSet<i64> =
                    rows.iter().map(|row| row.get::<_, i64>(0)).collect();
                let mut seen = std::collections::HashSet::new();
                let twice = seq_chunk
                    .iter()
                    .find(|seq| !landed.contains(*seq) || !seen.insert(**seq))
                    .copied()
                    .unwrap_or_default();
                return Ok(Err(trail_repeats(twice as u64)));
            }
        }
        self.bounded(tx.execute(
            "UPDATE counters SET next_seq = greatest(next_seq, $1::bigint + 1), \
             generation = generation + 1, audit_records = audit_records + $2, \
             audit_bytes = audit_bytes + $3 WHERE id = 1",
            &[&high, &(trail.len() as i64), &bytes],
        ))
        .await?;
        Ok(Ok(()))
    }

    /// Removes audit records past the retention, a chunk per transaction.
    async fn prune(&self) -> Result<u64, StoreError> {
        let keep = self.retention.load(Ordering::Relaxed);
        if keep == 0 {
            return Ok(0);
        }
        let mut removed = 0u64;
        loop {
            let mut client = self.client().await.map_err(Broken::into_error)?;
            match self.prune_chunk(&mut client, keep).await {
                Ok(0) => return Ok(removed),
                Ok(count) => removed += count,
                Err(broken) => {
                    drop(Object::take(client));
                    return Err(broken.into_error());
                }
            }
        }
    }

    async fn prune_chunk(&self, client: &mut Object, keep: u64) -> Result<u64, Broken> {
        let tx = self.bounded(client.transaction()).await?;
        // The counter row first, as every writer takes it: then the oldest records.
        // Seq order is time order (seqs and times are both taken under this lock).
        self.bounded(tx.execute("SELECT 1 FROM counters WHERE id = 1 FOR UPDATE", &[]))
            .await?;
        let seconds = keep as f64;
        let row = self
            .bounded(tx.query_one(
                "WITH oldest AS (SELECT seq, time FROM audit ORDER BY seq LIMIT $1), \
                 gone AS (DELETE FROM audit a USING oldest o WHERE a.seq = o.seq \
                   AND o.time < to_char(clock_timestamp() AT TIME ZONE 'UTC' \
                     - make_interval(secs => $2), 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') \
                   RETURNING octet_length(a.json) AS len) \
                 SELECT count(*), coalesce(sum(len), 0)::bigint FROM gone",
                &[&PRUNE_CHUNK, &seconds],
            ))
            .await?;
        let (count, bytes): (i64, i64) = (row.get(0), row.get(1));
        if count > 0 {
            self.bounded(tx.execute(
                "UPDATE counters SET audit_records = audit_records - $1, \
                 audit_bytes = audit_bytes - $2 WHERE id = 1",
                &[&count, &bytes],
            ))
            .await?;
            log::info!("audit retention: removed {count} records older than {keep} s");
        }
        self.commit(tx).await?;
        Ok(count as u64)
    }

    async fn prune_loop(inner: std::sync::Weak<Inner>) {
        loop {
            tokio::time::sleep(PRUNE_EVERY).await;
            let Some(inner) = inner.upgrade() else {
                return;
            };
            if let Err(e) = inner.prune().await {
                log::warn!("audit retention: pruning failed, retried in a minute: {e}");
            }
        }
    }
}

/// Connections of one request worker's read pool: the read half of `pool_size`,
/// shared by the workers (actix runs one per core), at least one each.
fn read_pool_size(pool_size: usize) -> usize {
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    (pool_size / 2 / workers).max(1)
}

/// A pool of up to `size` connections as `manager` makes them; each connection's task
/// runs on the runtime that opens it.
fn new_pool(
    manager: &(tokio_postgres::Config, MakeRustlsConnect),
    options: &PgOptions,
    size: usize,
) -> Result<Pool, StoreError> {
    let manager = Manager::from_config(
        manager.0.clone(),
        manager.1.clone(),
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(size)
        // The connection used last first: its server process is awake and warm.
        // First in, first out would take every idle connection in turn, each
        // request waking a server process that has slept the longest (GET at one
        // connection ran at a third of the speed after a burst had opened 8).
        .queue_mode(deadpool_postgres::QueueMode::Lifo)
        .wait_timeout(Some(options.connect_timeout))
        .create_timeout(Some(options.connect_timeout))
        .recycle_timeout(Some(options.connect_timeout))
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .build()
        .map_err(|e| StoreError::Unavailable(format!("the connection pool: {e}")))
}

fn foreign_tables() -> StoreError {
    StoreError::IncompatibleSchema(
        "the database has an 'images' table but no schema_version: it was not made by \
         image-catalog; give image-catalog a database of its own"
            .into(),
    )
}

fn other_major(major: i32, minor: i32) -> StoreError {
    StoreError::IncompatibleSchema(format!(
        "the database holds the image-catalog schema {major}.{minor}, but this build reads \
         schema {SCHEMA_MAJOR}.x only; run a release that matches it"
    ))
}

/// A copy of an error for each of several jobs that share it.
fn copy_error(error: &StoreError) -> StoreError {
    match error {
        StoreError::OutcomeUnknown(why) => StoreError::OutcomeUnknown(why.clone()),
        StoreError::Unavailable(why) => StoreError::Unavailable(why.clone()),
        StoreError::Closed => StoreError::Closed,
        other => StoreError::Unavailable(other.to_string()),
    }
}

/// What went wrong, in words for the log: the server's message and SQLSTATE when it
/// answered, the cause when the connection failed.
fn describe(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        let code = db.code();
        let what = if *code == SqlState::QUERY_CANCELED {
            "the statement timed out"
        } else if *code == SqlState::ADMIN_SHUTDOWN || *code == SqlState::CRASH_SHUTDOWN {
            "the database is shutting down"
        } else {
            "the database refused a statement"
        };
        return format!("{what}: {} ({})", db.message(), code.code());
    }
    let mut message = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    let io = {
        let mut source = std::error::Error::source(e);
        let mut found = false;
        while let Some(cause) = source {
            found |= cause.is::<std::io::Error>();
            source = cause.source();
        }
        found
    };
    if e.is_closed() {
        format!("the database connection is closed ({message})")
    } else if io || message.starts_with("error connecting") {
        format!("the database is unreachable ({message})")
    } else {
        format!("a database request failed ({message})")
    }
}

fn describe_pool(e: &deadpool_postgres::PoolError) -> String {
    use deadpool_postgres::PoolError;
    match e {
        PoolError::Backend(e) => describe(e),
        PoolError::Timeout(_) => "no database connection could be had in time".into(),
        PoolError::Closed => "the store is shut down".into(),
        other => format!("the connection pool failed: {other}"),
    }
}

/// `message` with every secret replaced.
fn scrub(mut message: String, secrets: &[String]) -> String {
    for secret in secrets {
        if !secret.is_empty() && message.contains(secret.as_str()) {
            message = message.replace(secret.as_str(), "***");
        }
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The store and its futures can move between threads (a trait object, a
    /// spawned task).
    #[allow(dead_code)]
    fn store_and_futures_are_send(store: &PgStore) {
        fn send<T: Send + Sync>(_: &T) {}
        fn send_future<T: Send>(_: T) {}
        send(store);
        let id = ImageId::parse("x").unwrap();
        send_future(store.apply(
            Change::Delete {
                id: id.clone(),
                precondition: None,
            },
            Author::tool("u"),
        ));
        send_future(store.get(&id));
        send_future(store.list_page(None, None, 1));
        send_future(store.audit_page(None, 1));
        send_future(store.is_healthy());
        send_future(store.list_stream(None, None));
    }

    #[test]
    fn secrets_are_scrubbed() {
        let secrets = vec!["s3cr%t".to_string(), "s3cr%25t".to_string()];
        assert_eq!(
            scrub(
                "login as u:s3cr%t failed, url u:s3cr%25t@h".into(),
                &secrets
            ),
            "login as u:*** failed, url u:***@h"
        );
    }

    #[test]
    fn audit_bytes_less_seq_digits_match_serde() {
        let mut batch = AuditBatch::default();
        batch.push("bob \"the\" admin", "PUT", "ïd-ü");
        let record = AuditRecord {
            seq: 12345,
            time: "2026-11-28T04:00:00.123456Z".into(),
            user: "bob \"the\" admin".into(),
            method: "PUT".into(),
            id: "ïd-ü".into(),
            status: 200,
        };
        let full = serde_json::to_vec(&record).unwrap().len() as i64;
        assert_eq!(batch.bytes + 5, full);
    }
}
