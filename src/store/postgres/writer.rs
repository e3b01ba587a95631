//! Writes: one writer task commits the changes queued meanwhile in one transaction
//! (group commit); creates and unconditional deletes are pipelined.

use super::*;

impl PgStore {
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
        writer
            .send(job)
            .map_err(|_| StoreError::Unavailable("the store is shut down".into()))?;
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
}

impl Inner {
    /// One change in its own transaction.
    pub(super) async fn apply_alone(
        &self,
        change: Change,
        author: Author,
    ) -> Result<Applied, StoreError> {
        let (reply, answer) = oneshot::channel();
        let job = Job {
            change,
            author,
            reply,
            _place: None,
        };
        self.write_batch(vec![job]).await;
        answer.await.unwrap_or(Err(StoreError::Unavailable(
            "the store is shut down".into(),
        )))
    }

    /// The writer: takes every change queued meanwhile and commits them together.
    pub(super) async fn writer_loop(
        inner: std::sync::Weak<Inner>,
        mut jobs: mpsc::UnboundedReceiver<Job>,
    ) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        while jobs.recv_many(&mut batch, MAX_BATCH).await > 0 {
            let Some(inner) = inner.upgrade() else {
                break;
            };
            if let Some(error) = inner.write_batch(std::mem::take(&mut batch)).await {
                // No connection could be had: what queued meanwhile would wait as
                // long again for the same answer. It gets it now.
                while let Ok(job) = jobs.try_recv() {
                    let _ = job.reply.send(Err(error.clone()));
                }
            }
        }
    }

    /// Applies `jobs` in one transaction and answers each. A refused change writes
    /// nothing and does not stop the others. Returns the error when no connection
    /// could be had.
    pub(super) async fn write_batch(&self, jobs: Vec<Job>) -> Option<StoreError> {
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
                    let _ = job.reply.send(Err(error.clone()));
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
                    let _ = job.reply.send(Err(error.clone()));
                }
            }
        }
        None
    }

    /// Applies `jobs` in one transaction on `client`: each change's outcome, or the
    /// failure of the database that ended the transaction.
    pub(super) async fn write_on(
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
                    Ok((applied, delta, transition)) => {
                        images_delta += delta;
                        audit.push(
                            job.author.name(),
                            job.change.method(),
                            job.change.id().as_str(),
                            transition,
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
        let last = self.audit_in(&tx, &audit, images_delta).await?;
        self.commit(tx).await?;
        self.landed_up_to(last);
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
    pub(super) async fn write_at_once(
        &self,
        client: &mut Object,
        jobs: &[Job],
    ) -> Result<Option<Vec<Result<Applied, StoreError>>>, Broken> {
        let insert = self.bounded(client.prepare_cached(INSERT_SQL)).await?;
        let delete = self.bounded(client.prepare_cached(DELETE_SQL)).await?;
        let seqs_sql = self.bounded(client.prepare_cached(SEQS_SQL)).await?;
        let audit_sql = self.bounded(client.prepare_cached(AUDIT_SQL)).await?;
        let mut images_delta = 0i64;
        let mut jsons = Vec::with_capacity(jobs.len());
        for job in jobs {
            match &job.change {
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
        let records = jobs.len() as i64;
        let client: &tokio_postgres::Client = client;
        let statements = jobs.iter().zip(&jsons).map(|(job, json)| {
            let (insert, delete) = (&insert, &delete);
            async move { one_statement_sent(client, insert, delete, &job.change, json).await }
        });
        let seqs_params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] =
            [&records, &images_delta];
        // Futures send their request when first polled, and these are polled in
        // order: BEGIN, the changes, the seqs taken (the counter row locked last).
        let sent = futures_util::future::try_join3(
            client.batch_execute("BEGIN"),
            futures_util::future::try_join_all(statements),
            client.query_one(&seqs_sql, &seqs_params),
        );
        let (_, outcomes, taken) = self.bounded(sent).await?;
        let mut audit = AuditBatch::default();
        for (job, outcome) in jobs.iter().zip(outcomes) {
            let Some(transition) = outcome else {
                self.bounded(client.batch_execute("ROLLBACK")).await?;
                return Ok(None);
            };
            let change = &job.change;
            audit.push(
                job.author.name(),
                change.method(),
                change.id().as_str(),
                transition,
            );
        }
        // The records and COMMIT at once: a record refused (a database error) turns
        // the COMMIT into a rollback, and is what comes back.
        let rows = audit.rows(taken.get(0), taken.get(1));
        let params = rows.params();
        let stored_then_committed = async {
            let (stored, committed) = futures_util::future::join(
                client.execute(&audit_sql, &params),
                client.batch_execute("COMMIT"),
            )
            .await;
            stored.and(committed)
        };
        self.commit_with(stored_then_committed).await?;
        self.landed_up_to(rows.seqs.last().copied().unwrap_or(0));
        Ok(Some(
            jobs.iter()
                .map(|job| match job.change {
                    Change::Create(_) => Ok(Applied::Created),
                    _ => Ok(Applied::Deleted),
                })
                .collect(),
        ))
    }

    /// Assigns seqs to `audit` and inserts it, moving the counters, in `tx`; gives the
    /// last seq taken.
    pub(super) async fn audit_in(
        &self,
        tx: &deadpool_postgres::Transaction<'_>,
        audit: &AuditBatch,
        images_delta: i64,
    ) -> Result<i64, Broken> {
        let seqs = self.bounded(tx.prepare_cached(SEQS_SQL)).await?;
        let store = self.bounded(tx.prepare_cached(AUDIT_SQL)).await?;
        let taken = self
            .bounded(tx.query_one(&seqs, &[&audit.len(), &images_delta]))
            .await?;
        let rows = audit.rows(taken.get(0), taken.get(1));
        self.bounded(tx.execute(&store, &rows.params())).await?;
        Ok(rows.seqs.last().copied().unwrap_or(0))
    }

    /// One change inside `tx`: the outer `Err` is the database failing, the inner one
    /// the change refused with nothing written. Also gives the change in image count.
    pub(super) async fn change_in(
        &self,
        tx: &deadpool_postgres::Transaction<'_>,
        change: &Change,
    ) -> Result<Result<(Applied, i64, Transition), StoreError>, Broken> {
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
                Ok(Ok((
                    Applied::Created,
                    1,
                    Transition::created(image.clone()),
                )))
            }
            Change::Update {
                id,
                patch,
                precondition,
            } => {
                let stored = self.locked(tx, id).await?;
                let (next, current) =
                    match rules::precondition_met(id, stored.as_deref(), precondition).and_then(
                        |current| Ok((rules::updated(&current, patch)?, current.image()?)),
                    ) {
                        Ok(found) => found,
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
                let transition = Transition::updated(current, next);
                Ok(Ok((Applied::Updated(record_of(json)), 0, transition)))
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
                let deleted = self.bounded(tx.query(&statement, &[&id.as_str()])).await?;
                match deleted.first().map(deleted_image).transpose() {
                    Ok(Some(image)) => Ok(Ok((Applied::Deleted, -1, Transition::deleted(image)))),
                    Ok(None) => Ok(Err(StoreError::NotFound(id.to_string()))),
                    Err(unreadable) => Ok(Err(unreadable)),
                }
            }
        }
    }

    /// Creates and unconditional deletes, sent together; each has its own outcome.
    pub(super) async fn pipelined_in(
        &self,
        tx: &deadpool_postgres::Transaction<'_>,
        jobs: &[Job],
    ) -> Result<Vec<Result<(Applied, i64, Transition), StoreError>>, Broken> {
        let insert = self.bounded(tx.prepare_cached(INSERT_SQL)).await?;
        let delete = self.bounded(tx.prepare_cached(DELETE_SQL)).await?;
        let jsons: Vec<Vec<u8>> = jobs
            .iter()
            .map(|job| match &job.change {
                Change::Create(image) => image.to_json(),
                _ => Vec::new(),
            })
            .collect();
        let client: &tokio_postgres::Client = tx.client();
        let sent = jobs.iter().zip(&jsons).map(|(job, json)| {
            let (insert, delete) = (&insert, &delete);
            async move { one_statement_sent(client, insert, delete, &job.change, json).await }
        });
        let outcomes = self
            .bounded(futures_util::future::try_join_all(sent))
            .await?;
        Ok(jobs
            .iter()
            .zip(outcomes)
            .map(|(job, outcome)| match (&job.change, outcome) {
                (Change::Create(image), None) => Err(StoreError::Conflict(image.id.to_string())),
                (change, None) => Err(StoreError::NotFound(change.id().to_string())),
                (Change::Create(_), Some(transition)) => Ok((Applied::Created, 1, transition)),
                (_, Some(transition)) => Ok((Applied::Deleted, -1, transition)),
            })
            .collect())
    }

    /// The image's JSON, its row locked to the end of `tx` (compare-and-swap).
    pub(super) async fn locked(
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
}

pub(super) const INSERT_SQL: &str =
    "INSERT INTO images (id, provider, json) VALUES ($1, $2, $3) ON CONFLICT (id) DO NOTHING";
pub(super) const DELETE_SQL: &str = "DELETE FROM images WHERE id = $1 RETURNING json";

/// A create or an unconditional delete, sent on `client` (in a transaction begun
/// there): what it did to its image, or `None` when its row was not there to change
/// (the id taken, or gone). A deleted image that cannot be read is `None` too: the
/// batch then goes statement by statement, where it is refused alone.
async fn one_statement_sent(
    client: &tokio_postgres::Client,
    insert: &tokio_postgres::Statement,
    delete: &tokio_postgres::Statement,
    change: &Change,
    json: &Vec<u8>,
) -> Result<Option<Transition>, tokio_postgres::Error> {
    match change {
        Change::Create(image) => {
            let (id, provider) = (image.id.as_str(), image.provider.as_str());
            let inserted = client.execute(insert, &[&id, &provider, json]).await?;
            Ok((inserted == 1).then(|| Transition::created(image.clone())))
        }
        change => {
            let rows = client.query(delete, &[&change.id().as_str()]).await?;
            Ok(rows
                .first()
                .and_then(|row| deleted_image(row).ok())
                .map(Transition::deleted))
        }
    }
}

/// The image a `DELETE ... RETURNING json` removed.
fn deleted_image(row: &tokio_postgres::Row) -> Result<Image, StoreError> {
    Record::from(Bytes::from(row.get::<_, Vec<u8>>(0))).image()
}

/// Whether `change` is one statement whose row count alone says its outcome.
pub(super) fn one_statement(change: &Change) -> bool {
    matches!(
        change,
        Change::Create(_)
            | Change::Delete {
                precondition: None,
                ..
            }
    )
}

/// The audit records of one transaction, before they have seqs and a time.
#[derive(Default)]
pub(super) struct AuditBatch {
    /// User, method, id and transition of each.
    changes: Vec<(String, &'static str, String, Transition)>,
}

/// `AuditBatch`'s records as `AUDIT_SQL` takes them.
pub(super) struct AuditRows {
    pub(super) seqs: Vec<i64>,
    pub(super) time: String,
    pub(super) jsons: Vec<Vec<u8>>,
    pub(super) bytes: i64,
    pub(super) ids: Vec<String>,
}

impl AuditBatch {
    pub(super) fn push(
        &mut self,
        user: &str,
        method: &'static str,
        id: &str,
        transition: Transition,
    ) {
        self.changes
            .push((user.to_owned(), method, id.to_owned(), transition));
    }

    pub(super) fn len(&self) -> i64 {
        self.changes.len() as i64
    }

    /// The records, seqs from `first`, at `time`.
    pub(super) fn rows(&self, first: i64, time: String) -> AuditRows {
        let seqs: Vec<i64> = (first..).take(self.changes.len()).collect();
        let jsons: Vec<Vec<u8>> = self
            .changes
            .iter()
            .zip(&seqs)
            .map(|((user, method, id, transition), &seq)| {
                AuditRecord::applied(seq as u64, &time, user, method, id, transition.clone())
                    .to_json()
            })
            .collect();
        let bytes = jsons.iter().map(|json| json.len() as i64).sum();
        let ids = self
            .changes
            .iter()
            .map(|(_, _, id, _)| id.clone())
            .collect();
        AuditRows {
            seqs,
            time,
            jsons,
            bytes,
            ids,
        }
    }
}

impl AuditRows {
    pub(super) fn params(&self) -> [&(dyn tokio_postgres::types::ToSql + Sync); 5] {
        [&self.seqs, &self.time, &self.jsons, &self.bytes, &self.ids]
    }
}
