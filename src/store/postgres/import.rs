//! Import: an audit trail with its seqs and many creates, in one transaction.

use super::*;

impl PgStore {
    /// [`crate::store::Store::import`], in one transaction.
    pub async fn import(
        &self,
        images: Vec<Image>,
        trail: Vec<AuditRecord>,
        author: impl Into<Author>,
    ) -> Result<u64, StoreError> {
        let inner = self.inner.clone();
        let user = author.into().name().to_owned();
        self.run(async move { inner.import(images, trail, user).await })
            .await
    }
}

impl Inner {
    pub(super) async fn import(
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

    pub(super) async fn import_on(
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
        let mut last = seqs.iter().copied().max().unwrap_or(0);
        for chunk in images.chunks(IMPORT_CHUNK) {
            let mut audit = AuditBatch::default();
            for image in chunk {
                let transition = Transition::created(image.clone());
                audit.push(user, IMPORT_METHOD, image.id.as_str(), transition);
            }
            last = last.max(self.audit_in(&tx, &audit, chunk.len() as i64).await?);
        }
        self.commit(tx).await?;
        self.landed_up_to(last);
        Ok(Ok(images.len() as u64))
    }

    /// Inserts `trail` as it is, seqs kept, moving the counters, in `tx`; refused if it
    /// overlaps the trail here: a seq already present, or one between its lowest and
    /// highest seq (the two trails would interleave).
    pub(super) async fn trail_in(
        &self,
        tx: &deadpool_postgres::Transaction<'_>,
        trail: &[AuditRecord],
        seqs: &[i64],
    ) -> Result<Result<(), StoreError>, Broken> {
        let (Some(&low), Some(&high)) = (seqs.iter().min(), seqs.iter().max()) else {
            return Ok(Ok(()));
        };
        // The counter row first: no change may take a seq while the trail moves in.
        let highest: i64 = self
            .bounded(tx.query_one(
                "SELECT next_seq - 1 FROM counters WHERE id = 1 FOR UPDATE",
                &[],
            ))
            .await?
            .get(0);
        if let Err(refused) = rules::trail_fits(low as u64, high as u64, highest.max(0) as u64) {
            return Ok(Err(refused));
        }
        let insert = self
            .bounded(tx.prepare_cached(
                "INSERT INTO audit (seq, time, json, image_id) \
                 SELECT * FROM unnest($1::bigint[], $2::text[], $3::bytea[], $4::text[]) \
                 ON CONFLICT (seq) DO NOTHING RETURNING seq",
            ))
            .await?;
        let mut bytes = 0i64;
        for (chunk, seq_chunk) in trail.chunks(IMPORT_CHUNK).zip(seqs.chunks(IMPORT_CHUNK)) {
            let times: Vec<&str> = chunk.iter().map(|r| r.time.as_str()).collect();
            let ids: Vec<&str> = chunk.iter().map(|r| r.id.as_str()).collect();
            let jsons: Vec<Vec<u8>> = chunk
                .iter()
                .map(|r| serde_json::to_vec(r).unwrap_or_default())
                .collect();
            bytes += jsons.iter().map(|j| j.len() as i64).sum::<i64>();
            let rows = self
                .bounded(tx.query(&insert, &[&seq_chunk, &times, &jsons, &ids]))
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
}
