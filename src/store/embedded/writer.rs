//! The one thread that changes the store: batches of changes applied in one sled
//! transaction each, then made durable together (group commit).

use super::*;

/// The one thread that changes the store.
pub(super) struct Writer {
    pub(super) images: Tree,
    pub(super) audit: Tree,
    pub(super) by_id: Tree,
    pub(super) meta: Tree,
    pub(super) gauges: Arc<Gauges>,
    pub(super) generation: Arc<AtomicU64>,
    /// The meta tree's counters as of the last commit.
    pub(super) tally: Tally,
    pub(super) retention: Arc<AtomicU64>,
    pub(super) last_prune: Option<Instant>,
    pub(super) health: Health,
    #[cfg(test)]
    pub(super) pause: Arc<Mutex<()>>,
    #[cfg(test)]
    pub(super) before_flush: BeforeFlush,
    pub(super) mark: Arc<crate::store::embedded::mark::MarkKeeper>,
    pub(super) visible: Arc<Visible>,
    pub(super) flusher: Arc<Flusher>,
}

impl Writer {
    pub(super) fn run(mut self, jobs: mpsc::Receiver<Job>) {
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
    pub(super) fn flush(&self, what: &str) -> Result<(), String> {
        self.flusher.flush(what, Vec::new()).1
    }

    pub(super) fn set_tally(&mut self, tally: Tally) {
        self.tally = tally;
        self.gauges.show(&tally);
    }

    /// Applies a batch, makes it durable, then answers each job. `Err` is a failure of
    /// the store itself (a commit or a flush): the jobs are answered as of unknown
    /// outcome where they may have been applied, and the writer must stop.
    pub(super) fn write_batch(&mut self, batch: Vec<Job>) -> Result<(), String> {
        let mut answers: Answers = Vec::with_capacity(batch.len());
        let mut failure = None;
        #[cfg(test)]
        if batch.iter().any(|job| matches!(job.work, Work::Crash)) {
            panic!("crash asked for by a test");
        }
        let mut changes = Vec::new();
        let mut imports = Vec::new();
        let mut barriers = Vec::new();
        let mut prunes = Vec::new();
        for job in batch {
            match &job.work {
                // A reload may have taken the policy away since the request was let
                // in: checked here, where the change is applied.
                Work::Change(_) => match job.author.still_allowed().map_err(StoreError::from) {
                    Ok(()) => changes.push(job),
                    Err(refused) => answers.push((job.reply, Err(refused))),
                },
                Work::Import { .. } => imports.push(job),
                Work::Prune => prunes.push(job),
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
        for job in prunes {
            let result = match &failure {
                Some(_) => Err(StoreError::Stopped("an earlier commit failed".into())),
                None => self.prune_all().map(Applied::Pruned).map_err(|reason| {
                    failure = Some(reason.clone());
                    StoreError::Stopped(reason)
                }),
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
        // Failed before any answer goes out: a client that got its 503 must find the
        // store stopped (`/healthz` 503), not a window in which it still looks well.
        if let Some(reason) = &failure {
            self.health.fail(reason.clone());
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
    pub(super) fn hide(&self, changes: &[(&Change, &str)]) -> Result<(), StoreError> {
        for (change, _) in changes {
            let key = change.id().as_str().as_bytes();
            self.visible.hide(key, self.images.get(key)?);
        }
        Ok(())
    }

    /// Applies a batch of changes in one sled transaction. Each change gets its own
    /// outcome: a refused one (conflict, unknown id, failed precondition) writes
    /// nothing and does not stop the others. One transaction per batch matters: sled
    /// writes its log buffer out at every commit, which made a transaction per change
    /// cost as much as a flush (bench/RESULTS.md).
    #[allow(clippy::type_complexity)]
    pub(super) fn apply_all(
        &self,
        changes: &[(&Change, &str)],
    ) -> Result<(Vec<Result<Applied, StoreError>>, Tally), StoreError> {
        let time = now_rfc3339();
        let result = (&self.images, &self.audit, &self.by_id, &self.meta).transaction(
            |(images, audit, by_id, meta)| {
                let mut tally = Tally::read(meta)?;
                let mut outcomes = Vec::with_capacity(changes.len());
                for (change, user) in changes {
                    let outcome = match apply_one(images, change)? {
                        Ok((applied, transition)) => {
                            match applied {
                                Applied::Created => tally.images += 1,
                                Applied::Deleted => tally.images = tally.images.saturating_sub(1),
                                _ => {}
                            }
                            let record = AuditRecord::applied(
                                tally.next_seq,
                                &time,
                                user,
                                change.method(),
                                change.id().as_str(),
                                transition,
                            );
                            let json = record.to_json();
                            tally.audited(json.len());
                            audit.insert(&record.seq.to_be_bytes(), json)?;
                            by_id.insert(by_id_key(change.id().as_str(), record.seq), &[])?;
                            Ok(applied)
                        }
                        Err(refused) => Err(refused),
                    };
                    outcomes.push(outcome);
                }
                tally.write(meta)?;
                Ok((outcomes, tally))
            },
        );
        result.map_err(from_transaction)
    }
}

/// One change inside the batch's transaction: `Err` outside is the engine failing
/// (the whole batch is retried or fails); `Err` inside is this change refused, with
/// nothing written. Applied, it says what the image was and became, for its record.
pub(super) fn apply_one(
    images: &sled::transaction::TransactionalTree,
    change: &Change,
) -> Result<Result<(Applied, Transition), StoreError>, sled::transaction::UnabortableTransactionError>
{
    let key = change.id().as_str().as_bytes();
    Ok(match change {
        Change::Create(image) => {
            if images.get(key)?.is_some() {
                return Ok(Err(StoreError::Conflict(image.id.to_string())));
            }
            images.insert(key, image.to_json())?;
            Ok((Applied::Created, Transition::created(image.clone())))
        }
        Change::Update {
            id,
            patch,
            precondition,
        } => {
            let stored = images.get(key)?;
            let next = rules::precondition_met(id, stored.as_deref(), precondition)
                .and_then(|current| Ok((rules::updated(&current, patch)?, current.image()?)));
            match next {
                Ok((next, current)) => {
                    let bytes = IVec::from(next.to_json());
                    images.insert(key, bytes.clone())?;
                    Ok((
                        Applied::Updated(Record::from_slice(&bytes)),
                        Transition::updated(current, next),
                    ))
                }
                Err(refused) => Err(refused),
            }
        }
        Change::Delete { id, precondition } => {
            let stored = images.get(key)?;
            let current = rules::precondition_met(id, stored.as_deref(), precondition)
                .and_then(|current| current.image());
            match current {
                Ok(current) => {
                    images.remove(key)?;
                    Ok((Applied::Deleted, Transition::deleted(current)))
                }
                Err(refused) => Err(refused),
            }
        }
    })
}

/// A transaction's failure as the store's: a change refused inside it, or the engine.
pub(super) fn from_transaction(e: TransactionError<StoreError>) -> StoreError {
    fault_of(e).into()
}

/// As `from_transaction`, keeping an I/O error's kind (see `Fault`).
pub(super) fn fault_of(e: TransactionError<StoreError>) -> Fault {
    match e {
        TransactionError::Abort(e) => Fault::Store(e),
        TransactionError::Storage(e) => e.into(),
    }
}

pub(super) fn abort<T>(err: StoreError) -> Result<T, ConflictableTransactionError<StoreError>> {
    Err(ConflictableTransactionError::Abort(err))
}

/// RFC 3339 in UTC with a fixed width (microseconds), so records line up and sort as
/// text.
pub(super) fn now_rfc3339() -> String {
    rfc3339(time::OffsetDateTime::now_utc())
}

pub(super) fn rfc3339(t: time::OffsetDateTime) -> String {
    const AUDIT_TIME: &[time::format_description::BorrowedFormatItem<'_>] = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z"
    );
    t.to_offset(time::UtcOffset::UTC)
        .format(AUDIT_TIME)
        .expect("a date-time has every component the format names")
}
