//! Audit retention: the writer removes records past `[audit] keep_days`, a chunk at
//! a time, when idle and at least once a minute.

use super::*;

impl SledStore {
    /// Removes audit records older than the retention now; returns how many.
    pub async fn prune_audit(&self) -> Result<u64, StoreError> {
        match self
            .submit(Work::Prune, Author::tool("image-catalog"))
            .await?
        {
            Applied::Pruned(count) => Ok(count),
            _ => Err(StoreError::Failed(
                "the writer answered a prune oddly".into(),
            )),
        }
    }
}

impl Writer {
    /// How long the writer may wait for work before pruning is due.
    pub(super) fn until_prune(&self) -> Duration {
        if self.retention.load(Ordering::Relaxed) == 0 {
            return PRUNE_EVERY;
        }
        match self.last_prune {
            None => Duration::ZERO,
            Some(at) => PRUNE_EVERY.saturating_sub(at.elapsed()),
        }
    }

    /// Removes every audit record older than the retention; returns how many.
    pub(super) fn prune_all(&mut self) -> Result<u64, String> {
        let mut removed = 0;
        loop {
            let chunk = self.prune()?;
            removed += chunk;
            if chunk < PRUNE_CHUNK as u64 {
                return Ok(removed);
            }
        }
    }

    /// Removes audit records older than the retention, a chunk per transaction; when a
    /// chunk was full, the next one is due at once (after any queued writes). Returns
    /// how many it removed.
    pub(super) fn prune(&mut self) -> Result<u64, String> {
        let keep = self.retention.load(Ordering::Relaxed);
        if keep == 0 {
            return Ok(0);
        }
        let cutoff = time::OffsetDateTime::now_utc() - Duration::from_secs(keep);
        let cutoff = rfc3339(cutoff);
        let mut expired = Vec::new();
        let mut index_keys = sled::Batch::default();
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
            index_keys.remove(by_id_key(&record.id, record.seq));
            expired.push(key);
        }
        let full = expired.len() == PRUNE_CHUNK;
        self.last_prune = (!full).then(Instant::now);
        if expired.is_empty() {
            return Ok(0);
        }
        let mut removals = sled::Batch::default();
        for key in &expired {
            removals.remove(key.clone());
        }
        let count = expired.len() as u64;
        let tally = (&self.audit, &self.by_id, &self.meta)
            .transaction(|(audit, by_id, meta)| {
                audit.apply_batch(&removals)?;
                by_id.apply_batch(&index_keys)?;
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
        Ok(count)
    }
}
