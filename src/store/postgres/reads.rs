//! Reads: one image, pages (coalesced on a request worker), the streamed listings
//! and the audit trail, and the counters behind the page cache and `/metrics`.

use std::sync::OnceLock;

use super::*;
use crate::metrics::StoreFigures;
use crate::store::Listing;
use futures_util::StreamExt;

pub(super) type Param = Box<dyn tokio_postgres::types::ToSql + Sync + Send>;

/// `$images` (rows of page number, id, json) after a row with the generation and the
/// highest seq alone: one statement, so one snapshot, and no column more on each image
/// row (a scalar subquery on each made a page statement 15% dearer for the server).
macro_rules! with_generation {
    ($images:literal) => {
        concat!(
            "SELECT generation, next_seq - 1, NULL::text, NULL::bytea \
             FROM counters WHERE id = 1 UNION ALL ",
            $images
        )
    };
}

impl PgStore {
    /// The image's JSON, exactly as stored. On a request worker, GETs that arrive
    /// while one is on its way go together in one statement (`coalesce`).
    pub async fn get(&self, id: &ImageId) -> Result<Option<Record>, StoreError> {
        let by_ids = |inner: Arc<Inner>, ids| async move { inner.images_by_id(ids).await };
        let found = self
            .coalesced(|local| &local.gets, id.as_str().to_owned(), by_ids)
            .await?;
        Ok(found.map(Record::from))
    }

    /// `query`'s answer from `run`: on a request worker through the coalescer `pick`
    /// chooses, together with the queries of its kind that come meanwhile; elsewhere
    /// alone, on the store's runtime.
    pub(super) async fn coalesced<Q, A, R, F>(
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
                    _ => Err(StoreError::unreadable("one read did not give one answer")),
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
                ImageId::parse_existing(row.get::<_, &str>(0)).map_err(StoreError::unreadable)
            })
            .collect()
    }

    /// Up to `limit` images after `after` (exclusive), in id byte order; `more` says
    /// whether any follow.
    pub async fn list_page(
        &self,
        after: Option<&ImageId>,
        filter: &Filter,
        limit: usize,
    ) -> Result<Page, StoreError> {
        let inner = self.inner.clone();
        let after = after.map(|id| id.as_str().to_owned()).unwrap_or_default();
        let filter = Wanted::from(filter);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX - 1);
        self.reading(async move {
            let mut rows = inner.images_after(after, &filter, limit + 1).await?;
            let more = rows.len() as i64 > limit;
            rows.truncate(limit as usize);
            let records = rows.into_iter().map(|(_, json)| json).collect();
            Ok(Page { records, more })
        })
        .await
    }

    /// As [`PgStore::list_page`], with the generation the page was read at: both come
    /// from one statement, so from one snapshot, in one round trip. On a request
    /// worker, pages asked for while one is on its way go together in one statement.
    pub async fn list_page_at(
        &self,
        after: Option<&ImageId>,
        filter: &Filter,
        limit: usize,
    ) -> Result<(Snapshot, Page), StoreError> {
        let ask = PageAsk {
            after: after.map(|id| id.as_str().to_owned()).unwrap_or_default(),
            filter: Wanted::from(filter),
            limit: i64::try_from(limit).unwrap_or(i64::MAX - 1) + 1,
        };
        let (generation, mut rows) =
            if ask.filter.search.is_some() {
                // A search scans: it goes alone, not in a batch of cheap pages.
                let inner = self.inner.clone();
                self.reading(async move {
                    inner.pages_at(vec![ask]).await?.pop().ok_or_else(|| {
                        StoreError::unreadable("a page that was asked for is missing")
                    })
                })
                .await?
            } else {
                let pick: fn(&Local) -> &Arc<Coalescer<PageAsk, _>> = match ask.filter.provider {
                    None => |local| &local.pages,
                    Some(_) => |local| &local.provider_pages,
                };
                let pages = |inner: Arc<Inner>, asks| async move { inner.pages_at(asks).await };
                self.coalesced(pick, ask, pages).await?
            };
        let more = rows.len() > limit;
        rows.truncate(limit);
        Ok((
            generation,
            Page {
                records: rows,
                more,
            },
        ))
    }

    /// Every image after `after`, in id byte order, fetched in keyset batches of
    /// `STREAM_BATCH` rows: memory does not grow with the catalog.
    pub fn list_stream(&self, after: Option<&ImageId>, filter: &Filter) -> Listing {
        let inner = self.inner.clone();
        let handle = self.handle.clone();
        let after = after.map(|id| id.as_str().to_owned()).unwrap_or_default();
        let filter = Wanted::from(filter);
        let items = batched(after, move |after: String| {
            let inner = inner.clone();
            let filter = filter.clone();
            let fetch =
                handle.spawn(async move { inner.images_after(after, &filter, STREAM_BATCH).await });
            async move {
                let rows = fetch
                    .await
                    .map_err(|_| StoreError::Unavailable("the store is shut down".into()))??;
                let last = rows.last().map(|(id, _)| id.clone());
                let full = rows.len() as i64 == STREAM_BATCH;
                Ok((
                    rows.into_iter().map(|(_, json)| json).collect(),
                    last.filter(|_| full),
                ))
            }
        });
        items.boxed()
    }

    /// Up to `limit` audit records older than `before`, newest first.
    pub async fn audit_page(
        &self,
        range: AuditRange,
        id: Option<&ImageId>,
        limit: usize,
    ) -> Result<Page, StoreError> {
        let inner = self.inner.clone();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX - 1);
        let id = id.map(|id| id.as_str().to_owned());
        self.reading(async move {
            let mut rows = match range {
                AuditRange::Before(before) => {
                    inner.audit_before(seq_bound(before), id, limit + 1).await?
                }
                AuditRange::After(after) => {
                    inner
                        .audit_after(seq_bound(Some(after)), id, limit + 1)
                        .await?
                }
            };
            let more = rows.len() as i64 > limit;
            rows.truncate(limit as usize);
            let records = rows.into_iter().map(|(_, json)| json).collect();
            Ok(Page { records, more })
        })
        .await
    }

    /// Every audit record older than `before`, newest first, only image `id`'s if
    /// given, in keyset batches.
    pub fn audit_stream(&self, before: Option<u64>, id: Option<&ImageId>) -> Listing {
        let id = id.map(|id| id.as_str().to_owned());
        self.audit_batches(seq_bound(before), id, true).boxed()
    }

    /// Every audit record after `after`, oldest first, in keyset batches.
    pub fn audit_ascending(&self, after: Option<u64>) -> Listing {
        let start = after.map_or(0, |seq| i64::try_from(seq).unwrap_or(i64::MAX));
        self.audit_batches(start, None, false).boxed()
    }

    /// The lowest seq held, and the highest given (committed), in one statement.
    pub async fn trail_span(&self) -> Result<TrailSpan, StoreError> {
        let inner = self.inner.clone();
        self.reading(async move {
            let rows = inner
                .read(
                    "SELECT (SELECT min(seq) FROM audit), next_seq - 1 FROM counters WHERE id = 1",
                    vec![],
                )
                .await?;
            let row = rows
                .first()
                .ok_or_else(|| StoreError::unreadable("the counters row is missing"))?;
            let seq = |value: i64| u64::try_from(value).unwrap_or(0);
            Ok(TrailSpan {
                lowest: row.get::<_, Option<i64>>(0).map(seq),
                highest: seq(row.get(1)),
            })
        })
        .await
    }

    /// Audit records from the seq `start` (exclusive) on, newest or oldest first,
    /// `STREAM_BATCH` at a time.
    pub(super) fn audit_batches(
        &self,
        start: i64,
        id: Option<String>,
        newest_first: bool,
    ) -> impl Stream<Item = Result<Bytes, StoreError>> + Send + 'static {
        let inner = self.inner.clone();
        let handle = self.handle.clone();
        batched(start, move |from: i64| {
            let (inner, id) = (inner.clone(), id.clone());
            let fetch = handle.spawn(async move {
                if newest_first {
                    inner.audit_before(from, id, STREAM_BATCH).await
                } else {
                    inner.audit_after(from, id, STREAM_BATCH).await
                }
            });
            async move {
                let rows = fetch
                    .await
                    .map_err(|_| StoreError::Unavailable("the store is shut down".into()))??;
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
    pub fn durable_seqs(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.landed.subscribe()
    }

    pub async fn snapshot(&self) -> Result<Snapshot, StoreError> {
        let counters = self.counters().await?;
        Ok(Snapshot {
            generation: counters.generation,
            seq: counters.next_seq.saturating_sub(1),
        })
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
    /// The figures `/metrics` shows: the counters, and this node's connections.
    pub async fn figures(&self) -> Result<StoreFigures, StoreError> {
        let counters = self.counters().await?;
        let (open, idle) = self.pool_status();
        Ok(StoreFigures {
            images: counters.images,
            audit_records: counters.audit_records,
            audit_bytes: counters.audit_bytes,
            size_on_disk: None,
            connections: Some((open as u64, idle as u64)),
        })
    }

    pub fn pool_status(&self) -> (usize, usize) {
        let status = self.inner.pool.status();
        (status.size, status.available)
    }
}

impl Inner {
    /// A read: `Unavailable` when the database fails.
    pub(super) async fn read(
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

    pub(super) async fn images_after(
        &self,
        after: String,
        filter: &Wanted,
        limit: i64,
    ) -> Result<Vec<(String, Bytes)>, StoreError> {
        static SQL: [OnceLock<String>; 4] = [const { OnceLock::new() }; 4];
        let (sql, mut params) = filter.statement(&SQL, |kept, n| {
            format!(
                "SELECT id, json FROM images WHERE {kept}id > ${} ORDER BY id LIMIT ${}",
                n + 1,
                n + 2
            )
        });
        params.push(Box::new(after));
        params.push(Box::new(limit));
        let rows = self.read(sql, params).await?;
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
    pub(super) async fn images_by_id(
        &self,
        ids: Vec<String>,
    ) -> Result<Vec<Option<Bytes>>, StoreError> {
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
    pub(super) async fn pages_at(
        &self,
        asks: Vec<PageAsk>,
    ) -> Result<Vec<Generational<Vec<Bytes>>>, StoreError> {
        let filtered = asks.iter().any(|ask| ask.filter.provider.is_some());
        let rows = match &asks[..] {
            [ask] => {
                static SQL: [OnceLock<String>; 4] = [const { OnceLock::new() }; 4];
                let (sql, mut params) = ask.filter.statement(&SQL, |kept, n| {
                    format!(
                        "{}(SELECT NULL, 1, id, json FROM images \
                          WHERE {kept}id > ${} ORDER BY id LIMIT ${})",
                        with_generation!(""),
                        n + 1,
                        n + 2
                    )
                });
                params.push(Box::new(ask.after.clone()));
                params.push(Box::new(ask.limit));
                self.read(sql, params).await?
            }
            _ => {
                let afters: Vec<String> = asks.iter().map(|a| a.after.clone()).collect();
                let limits: Vec<i64> = asks.iter().map(|a| a.limit).collect();
                if filtered {
                    let providers: Vec<String> = asks
                        .iter()
                        .map(|a| a.filter.provider.clone().unwrap_or_default())
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
        let mut snapshot = None;
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
                let seq = |column: usize| {
                    row.get::<_, Option<i64>>(column)
                        .and_then(|n| u64::try_from(n).ok())
                };
                snapshot = seq(0)
                    .zip(seq(1))
                    .map(|(generation, seq)| Snapshot { generation, seq });
                continue;
            };
            let page = usize::try_from(page - 1)
                .ok()
                .and_then(|page| spans.get_mut(page))
                .ok_or_else(|| StoreError::unreadable("a page of a batch that was not asked"))?;
            let start = buffer.len();
            buffer.extend_from_slice(json);
            page.push((id, start..buffer.len()));
        }
        let snapshot =
            snapshot.ok_or_else(|| StoreError::unreadable("the counters row is missing"))?;
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
                    snapshot,
                    records.into_iter().map(|(_, json)| json).collect(),
                )
            })
            .collect())
    }

    /// Records older than `before`, newest first; only image `id`'s, if given.
    pub(super) async fn audit_before(
        &self,
        before: i64,
        id: Option<String>,
        limit: i64,
    ) -> Result<Vec<(i64, Bytes)>, StoreError> {
        let sql = match id {
            None => "SELECT seq, json FROM audit WHERE seq < $1 ORDER BY seq DESC LIMIT $2",
            Some(_) => {
                "SELECT seq, json FROM audit WHERE image_id = $3 AND seq < $1 \
                 ORDER BY seq DESC LIMIT $2"
            }
        };
        self.audit_rows(sql, before, id, limit).await
    }

    /// Records newer than `after`, oldest first; only image `id`'s, if given.
    pub(super) async fn audit_after(
        &self,
        after: i64,
        id: Option<String>,
        limit: i64,
    ) -> Result<Vec<(i64, Bytes)>, StoreError> {
        let sql = match id {
            None => "SELECT seq, json FROM audit WHERE seq > $1 ORDER BY seq LIMIT $2",
            Some(_) => {
                "SELECT seq, json FROM audit WHERE image_id = $3 AND seq > $1 \
                 ORDER BY seq LIMIT $2"
            }
        };
        self.audit_rows(sql, after, id, limit).await
    }

    /// Audit records `(seq, json)` as `sql` selects them from a seq, a limit and, as
    /// `$3`, an image id.
    pub(super) async fn audit_rows(
        &self,
        sql: &str,
        seq: i64,
        id: Option<String>,
        limit: i64,
    ) -> Result<Vec<(i64, Bytes)>, StoreError> {
        let mut params: Vec<Param> = vec![Box::new(seq), Box::new(limit)];
        params.extend(id.map(|id| Box::new(id) as Param));
        let rows = self.read(sql, params).await?;
        Ok(rows
            .into_iter()
            .map(|row| (row.get::<_, i64>(0), Bytes::from(row.get::<_, Vec<u8>>(1))))
            .collect())
    }

    pub(super) async fn counters(&self) -> Result<Counters, StoreError> {
        let rows = self
            .read(
                "SELECT images, audit_records, audit_bytes, next_seq, generation \
                 FROM counters WHERE id = 1",
                vec![],
            )
            .await?;
        let row = rows
            .first()
            .ok_or_else(|| StoreError::unreadable("the counters row is missing"))?;
        let get = |i: usize| u64::try_from(row.get::<_, i64>(i)).unwrap_or(0);
        Ok(Counters {
            images: get(0),
            audit_records: get(1),
            audit_bytes: get(2),
            next_seq: get(3),
            generation: get(4),
        })
    }
}

/// A stream of rows fetched `fetch(from)` at a time: each fetch gives its rows and,
/// when more may follow, the key to continue from.
pub(super) fn batched<K, F, Fut>(
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

pub(super) fn seq_bound(before: Option<u64>) -> i64 {
    before.map_or(i64::MAX, |seq| i64::try_from(seq).unwrap_or(i64::MAX))
}

pub(super) fn record_of(json: Vec<u8>) -> Record {
    Record::from(Bytes::from(json))
}

/// A page's query: up to `limit` images after `after` that `filter` keeps.
pub(super) struct PageAsk {
    pub(super) after: String,
    pub(super) filter: Wanted,
    pub(super) limit: i64,
}

/// A [`Filter`] as SQL takes it.
#[derive(Clone)]
pub(super) struct Wanted {
    pub(super) provider: Option<String>,
    /// The search text, folded to lower case.
    pub(super) search: Option<String>,
}

impl From<&Filter> for Wanted {
    fn from(filter: &Filter) -> Wanted {
        Wanted {
            provider: filter.provider.as_ref().map(|p| p.as_str().to_owned()),
            search: filter.search.as_ref().map(|s| s.folded().to_owned()),
        }
    }
}

impl Wanted {
    /// `Filter::keeps` on a row of `images`: conditions each followed by ` AND `, on
    /// the parameters of [`Wanted::params`] as `$1`, `$2`. `strpos` takes the text
    /// literally, so `%` and `_` need no escaping. `lower` under the "C" collation
    /// folds ASCII letters only, as `Search` does, whatever the database's locale
    /// (under another, `É` would become `é`); `translate` would do the same at ten
    /// times the cost.
    fn conditions(&self) -> String {
        let mut sql = String::new();
        let mut n = 0;
        if self.provider.is_some() {
            n += 1;
            sql.push_str(&format!("provider = ${n} AND "));
        }
        if self.search.is_some() {
            n += 1;
            sql.push_str(&format!(
                "(strpos(lower(id COLLATE \"C\"), ${n}) > 0 OR \
                 strpos(lower((convert_from(json, 'UTF8')::json ->> 'name') COLLATE \"C\"), \
                 ${n}) > 0) AND "
            ));
        }
        sql
    }

    /// The values of [`Wanted::conditions`]' parameters, in order.
    fn params(&self) -> Vec<Param> {
        let values = [&self.provider, &self.search];
        values
            .into_iter()
            .flatten()
            .map(|v| Box::new(v.clone()) as Param)
            .collect()
    }

    /// The statement `make` builds from the conditions and the number of their
    /// parameters, made once per shape of filter (with or without a provider, a search)
    /// and kept, as pages are read often; and the parameters.
    fn statement(
        &self,
        cache: &'static [OnceLock<String>; 4],
        make: impl FnOnce(&str, usize) -> String,
    ) -> (&'static str, Vec<Param>) {
        let params = self.params();
        let shape = usize::from(self.provider.is_some()) | usize::from(self.search.is_some()) << 1;
        let sql = cache[shape].get_or_init(|| make(&self.conditions(), params.len()));
        (sql, params)
    }
}

/// A value and where the catalog stood when it was read.
pub(super) type Generational<T> = (Snapshot, T);
