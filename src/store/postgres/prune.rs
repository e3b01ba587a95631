//! Audit retention: records past `[audit] keep_days` removed a chunk at a time.

use super::*;

impl PgStore {
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
}

impl Inner {
    /// Removes audit records past the retention, a chunk per transaction.
    pub(super) async fn prune(&self) -> Result<u64, StoreError> {
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

    pub(super) async fn prune_chunk(&self, client: &mut Object, keep: u64) -> Result<u64, Broken> {
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

    pub(super) async fn prune_loop(inner: std::sync::Weak<Inner>) {
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
