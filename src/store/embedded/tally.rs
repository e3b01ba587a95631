//! The counters kept in step with the data (in the meta tree), and what `/metrics`
//! shows of them.

use super::*;

/// The counters kept in the meta tree, changed in the same transaction as what they
/// count: nothing has to scan the catalog or the trail to know them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Tally {
    pub(super) images: u64,
    pub(super) audit_records: u64,
    pub(super) audit_bytes: u64,
    /// Never goes back, even when old records are pruned or an import is undone.
    pub(super) next_seq: u64,
}

impl Tally {
    const KEYS: [&'static [u8]; 4] = [
        IMAGE_COUNT_KEY,
        AUDIT_RECORDS_KEY,
        AUDIT_BYTES_KEY,
        NEXT_SEQ_KEY,
    ];

    pub(super) fn from_values(values: [u64; 4]) -> Tally {
        let [images, audit_records, audit_bytes, next_seq] = values;
        Tally {
            images,
            audit_records,
            audit_bytes,
            next_seq: next_seq.max(1),
        }
    }

    pub(super) fn values(&self) -> [u64; 4] {
        [
            self.images,
            self.audit_records,
            self.audit_bytes,
            self.next_seq,
        ]
    }

    pub(super) fn load(meta: &Tree) -> Result<Tally, Fault> {
        let mut values = [0u64; 4];
        for (value, key) in values.iter_mut().zip(Self::KEYS) {
            if let Some(bytes) = meta.get(key)? {
                *value = u64_from_bytes(&bytes)?;
            }
        }
        Ok(Tally::from_values(values))
    }

    pub(super) fn store(&self, meta: &Tree) -> Result<(), Fault> {
        for (value, key) in self.values().into_iter().zip(Self::KEYS) {
            meta.insert(key, &value.to_be_bytes())?;
        }
        Ok(())
    }

    pub(super) fn read(
        meta: &sled::transaction::TransactionalTree,
    ) -> Result<Tally, ConflictableTransactionError<StoreError>> {
        let mut values = [0u64; 4];
        for (value, key) in values.iter_mut().zip(Self::KEYS) {
            if let Some(bytes) = meta.get(key)? {
                *value = u64_from_bytes(&bytes).map_err(ConflictableTransactionError::Abort)?;
            }
        }
        Ok(Tally::from_values(values))
    }

    pub(super) fn write(
        &self,
        meta: &sled::transaction::TransactionalTree,
    ) -> Result<(), sled::transaction::UnabortableTransactionError> {
        for (value, key) in self.values().into_iter().zip(Self::KEYS) {
            meta.insert(key, &value.to_be_bytes())?;
        }
        Ok(())
    }

    /// Changes ever applied: every one took a seq, and a seq is never given twice nor
    /// taken back once durable (pruning leaves `next_seq` alone; an undone import gives
    /// back the seqs no client saw). This is what the high-water mark counts.
    pub(super) fn changes(&self) -> u64 {
        self.next_seq.saturating_sub(1)
    }

    /// One more audit record of `bytes` bytes.
    pub(super) fn audited(&mut self, bytes: usize) {
        self.audit_records += 1;
        self.audit_bytes += bytes as u64;
        self.next_seq += 1;
    }
}

/// What `/metrics` shows of the tally, readable without the writer.
#[derive(Default)]
pub(super) struct Gauges {
    pub(super) images: AtomicU64,
    pub(super) audit_records: AtomicU64,
    pub(super) audit_bytes: AtomicU64,
}

impl Gauges {
    pub(super) fn show(&self, tally: &Tally) {
        self.images.store(tally.images, Ordering::Relaxed);
        self.audit_records
            .store(tally.audit_records, Ordering::Relaxed);
        self.audit_bytes.store(tally.audit_bytes, Ordering::Relaxed);
    }
}

/// Format 1 kept only the image count: count the trail once.
pub(super) fn upgrade_from_1(images: &Tree, audit: &Tree, meta: &Tree) -> Result<(), Fault> {
    let mut tally = Tally::load(meta)?;
    if meta.get(IMAGE_COUNT_KEY)?.is_none() {
        tally.images = images.len() as u64;
    }
    tally.audit_records = 0;
    tally.audit_bytes = 0;
    for item in audit.iter() {
        let (_, value) = item?;
        tally.audit_records += 1;
        tally.audit_bytes += value.len() as u64;
    }
    tally.next_seq = match audit.last()? {
        Some((key, _)) => u64_from_bytes(&key)? + 1,
        None => 1,
    };
    tally.store(meta)
}

pub(super) fn u64_from_bytes(bytes: &[u8]) -> Result<u64, StoreError> {
    let bytes: [u8; 8] = bytes
        .try_into()
        .map_err(|_| StoreError::unreadable("a counter or audit key is not 8 bytes"))?;
    Ok(u64::from_be_bytes(bytes))
}
