//! Import: an audit trail moved in with its seqs, then many creates, all or nothing
//! (undone here, or at the next open if the store cannot write any more).

use super::*;

impl SledStore {
    /// [`crate::store::Store::import`], through the writer; resolves once all of it
    /// is on disk.
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
            _ => Err(StoreError::Failed(
                "the writer answered an import oddly".into(),
            )),
        }
    }
}

impl Writer {
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
    pub(super) fn import(
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
            next_seq: Some(self.tally.next_seq),
        })
        .unwrap_or_default();
        self.meta
            .insert(IMPORT_KEY, marker)
            .map_err(|e| stuck(e.into()))?;
        self.flush("flushing an import's marker")
            .map_err(|e| stuck(StoreError::Failed(e)))?;
        let imported = self
            .import_trail(trail)
            .and_then(|()| self.import_chunks(batch, user));
        match imported {
            Ok(()) => {
                let interrupted = |e: String| {
                    ImportFailed::Stuck(interrupted_import(e, "the store cannot write"))
                };
                self.flush("flushing an import").map_err(interrupted)?;
                self.meta
                    .remove(IMPORT_KEY)
                    .map_err(|e| interrupted(e.to_string()))?;
                Ok(Applied::Imported(batch.len() as u64))
            }
            Err(e) => {
                let undone =
                    undo_interrupted_import(&self.images, &self.audit, &self.by_id, &self.meta)
                        .and_then(|_| {
                            self.flush("flushing an undone import")
                                .map_err(Fault::Engine)
                        });
                if let Ok(tally) = Tally::load(&self.meta) {
                    self.set_tally(tally);
                }
                match undone {
                    Ok(_) => Err(ImportFailed::Undone(e)),
                    Err(undo) => Err(ImportFailed::Stuck(interrupted_import(e, undo))),
                }
            }
        }
    }

    /// The lowest and highest seq of `trail` (`None` when it is empty), once it is
    /// known to fit: no seq 0, none twice, and no record here between its lowest and
    /// highest seq (a seq already present would be given twice; one between would
    /// interleave two trails, and an undo could not tell them apart).
    pub(super) fn check_trail(
        &self,
        trail: &[AuditRecord],
    ) -> Result<Option<(u64, u64)>, StoreError> {
        let mut seqs: Vec<u64> = trail.iter().map(|r| r.seq).collect();
        seqs.sort_unstable();
        let (Some(&low), Some(&high)) = (seqs.first(), seqs.last()) else {
            return Ok(None);
        };
        rules::trail_fits(low, high, self.tally.next_seq.saturating_sub(1))?;
        if let Some(pair) = seqs.windows(2).find(|pair| pair[0] == pair[1]) {
            return Err(trail_repeats(pair[0]));
        }
        Ok(Some((low, high)))
    }

    /// Inserts `trail` as it is, seqs kept, in transactions of `IMPORT_CHUNK` records;
    /// the next seq moves past its highest.
    pub(super) fn import_trail(&mut self, trail: &[AuditRecord]) -> Result<(), StoreError> {
        for chunk in trail.chunks(IMPORT_CHUNK) {
            let records: Vec<(u64, Vec<u8>)> = chunk
                .iter()
                .map(|r| (r.seq, serde_json::to_vec(r).unwrap_or_default()))
                .collect();
            let result =
                (&self.audit, &self.by_id, &self.meta).transaction(|(audit, by_id, meta)| {
                    let mut tally = Tally::read(meta)?;
                    for ((seq, json), record) in records.iter().zip(chunk) {
                        if audit.insert(&seq.to_be_bytes(), json.as_slice())?.is_some() {
                            return abort(trail_repeats(*seq));
                        }
                        by_id.insert(by_id_key(&record.id, *seq), &[])?;
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

    pub(super) fn import_chunks(&mut self, batch: &[Image], user: &str) -> Result<(), StoreError> {
        let time = now_rfc3339();
        for chunk in batch.chunks(IMPORT_CHUNK) {
            let records: Vec<Vec<u8>> = chunk
                .iter()
                .zip(self.tally.next_seq..)
                .map(|(image, seq)| {
                    let transition = Transition::created(image.clone());
                    let id = image.id.as_str();
                    AuditRecord::applied(seq, &time, user, IMPORT_METHOD, id, transition).to_json()
                })
                .collect();
            let trees = (&self.images, &self.audit, &self.by_id, &self.meta);
            let result = trees.transaction(|(images, audit, by_id, meta)| {
                let mut tally = Tally::read(meta)?;
                for (image, record) in chunk.iter().zip(&records) {
                    let key = image.id.as_str().as_bytes();
                    if images.insert(key, image.to_json())?.is_some() {
                        return abort(StoreError::Conflict(image.id.to_string()));
                    }
                    audit.insert(&tally.next_seq.to_be_bytes(), record.as_slice())?;
                    by_id.insert(by_id_key(image.id.as_str(), tally.next_seq), &[])?;
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
}

/// How an import failed: undone (nothing of it remains), or stuck part way because the
/// store itself failed (the next open undoes it).
/// An import that failed part way and could not be undone at once.
fn interrupted_import(cause: impl std::fmt::Display, undo: impl std::fmt::Display) -> StoreError {
    StoreError::Failed(format!(
        "the import failed part way ({cause}) and could not be undone now ({undo}); nothing \
         of it will remain: the next start of image-catalog (serve, export or import) undoes it"
    ))
}

pub(super) enum ImportFailed {
    Undone(StoreError),
    Stuck(StoreError),
}

/// Kept in the meta tree, flushed, while an import runs.
#[derive(Serialize, Deserialize)]
pub(super) struct ImportMarker {
    /// The seq of the first image's record.
    pub(super) first_seq: u64,
    pub(super) user: String,
    /// The lowest and highest seq of the trail it moves in, if any: every record in
    /// that range is the import's (it was refused if any was there before).
    #[serde(default)]
    pub(super) trail: Option<(u64, u64)>,
    /// The next seq before the import: an undone import gives back the seqs it took,
    /// as a rolled back transaction does on PostgreSQL. No client saw them (imports
    /// run with the data dir locked against servers), and a trail imported again must
    /// still lie above every seq given.
    #[serde(default)]
    pub(super) next_seq: Option<u64>,
}

pub(super) const IMPORT_KEY: &[u8] = b"import_in_progress";

/// Removes what an interrupted import left: its audit records (from the marker's first
/// seq on, by that import's user) name exactly the images it created, in the same
/// transactions; the trail it moved in is every record in the marker's trail range.
/// Returns how many images were removed; `None` when no import was interrupted.
/// Imports run with the data dir locked against servers, so nothing else wrote after
/// the marker.
pub(super) fn undo_interrupted_import(
    images: &Tree,
    audit: &Tree,
    by_id: &Tree,
    meta: &Tree,
) -> Result<Option<u64>, Fault> {
    let Some(marker) = meta.get(IMPORT_KEY)? else {
        return Ok(None);
    };
    let marker: ImportMarker =
        serde_json::from_slice(&marker).map_err(|e| Fault::from(StoreError::unreadable(e)))?;
    let mut removed = 0u64;
    let mut bytes = 0u64;
    let mut batch_images = sled::Batch::default();
    let mut batch_audit = sled::Batch::default();
    let mut batch_by_id = sled::Batch::default();
    let mut trail_removed = 0u64;
    if let Some((low, high)) = marker.trail {
        for item in audit.range(low.to_be_bytes()..=high.to_be_bytes()) {
            let (key, value) = item?;
            batch_by_id.remove(by_id_key(&id_of_record(&value)?, u64_from_bytes(&key)?));
            batch_audit.remove(key);
            trail_removed += 1;
            bytes += value.len() as u64;
        }
    }
    for item in audit.range(marker.first_seq.to_be_bytes()..) {
        let (key, value) = item?;
        let record: AuditRecord =
            serde_json::from_slice(&value).map_err(|e| Fault::from(StoreError::unreadable(e)))?;
        if record.method != IMPORT_METHOD || record.user != marker.user {
            continue;
        }
        batch_images.remove(record.id.as_bytes());
        batch_by_id.remove(by_id_key(&record.id, record.seq));
        batch_audit.remove(key);
        removed += 1;
        bytes += value.len() as u64;
    }
    (images, audit, by_id, meta)
        .transaction(|(images, audit, by_id, meta)| {
            images.apply_batch(&batch_images)?;
            audit.apply_batch(&batch_audit)?;
            by_id.apply_batch(&batch_by_id)?;
            let mut tally = Tally::read(meta)?;
            if let Some(next_seq) = marker.next_seq {
                tally.next_seq = next_seq;
            }
            tally.images = tally.images.saturating_sub(removed);
            tally.audit_records = tally.audit_records.saturating_sub(removed + trail_removed);
            tally.audit_bytes = tally.audit_bytes.saturating_sub(bytes);
            tally.write(meta)?;
            meta.remove(IMPORT_KEY)?;
            Ok::<_, ConflictableTransactionError<StoreError>>(())
        })
        .map_err(fault_of)?;
    Ok(Some(removed))
}
