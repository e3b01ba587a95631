//! Reads: images, pages and the audit trail, as of the last flush that succeeded
//! (see [`super::visible`]), each vouched for by the store's health.

use super::*;

use std::borrow::Cow;

impl SledStore {
    /// A read from sled, vouched for: a store that has failed serves nothing, and an
    /// engine error on a read (a damaged file, an I/O error) fails the store.
    pub(super) fn read<T>(&self, read: impl FnOnce() -> sled::Result<T>) -> Result<T, StoreError> {
        self.health.check()?;
        let value = read().map_err(|e| self.engine_failed(e))?;
        // A failure flagged while reading may concern what was just read.
        self.health.check()?;
        Ok(value)
    }

    pub(super) fn engine_failed(&self, e: sled::Error) -> StoreError {
        self.health.fail(format!("reading the store failed: {e}"));
        StoreError::from(e)
    }

    pub fn read_image(&self, id: &ImageId) -> Result<Option<Record>, StoreError> {
        let key = id.as_str().as_bytes();
        let read = self.read(|| self.images.get(key))?;
        Ok(self
            .visible
            .get(key, read)
            .map(|value| Record::from_slice(&value)))
    }

    /// Up to `limit` images after `after` (exclusive), in id order. A filtered page
    /// may scan much of the catalog to fill: it runs on a blocking thread.
    pub async fn list_page(
        &self,
        after: Option<&ImageId>,
        filter: &Filter,
        limit: usize,
    ) -> Result<Page, StoreError> {
        let items = self.list_from(after, filter.clone());
        if filter.is_all() {
            // At most `limit + 1` reads in key order: cheaper than a thread hop.
            return take_page(items, limit);
        }
        tokio::task::spawn_blocking(move || take_page(items, limit))
            .await
            .map_err(|e| StoreError::unreadable(format!("a listing thread failed: {e}")))?
    }

    /// Every image after `after`, in id order, read lazily: memory does not grow with
    /// the catalog. Blocking: a long scan belongs on a blocking thread.
    pub fn list_from(
        &self,
        after: Option<&ImageId>,
        filter: Filter,
    ) -> impl Iterator<Item = Result<Bytes, StoreError>> + Send + 'static {
        let start = match after {
            Some(id) => Bound::Excluded(IVec::from(id.as_str())),
            None => Bound::Unbounded,
        };
        let items = self
            .images
            .range::<IVec, _>((start.clone(), Bound::Unbounded));
        let items = self.visible.clone().merge(start, items);
        self.vouched(items).filter_map(move |item| {
            let value = match item {
                Ok(value) => value,
                Err(e) => return Some(Err(e)),
            };
            if filter.is_all() {
                return Some(Ok(value));
            }
            // Only the fields a filter reads, borrowed: a search scans the catalog.
            match serde_json::from_slice::<Filtered>(&value) {
                Ok(f) if filter.keeps_fields(&f.id, &f.provider, &f.name) => Some(Ok(value)),
                Ok(_) => None,
                Err(e) => Some(Err(StoreError::unreadable(e))),
            }
        })
    }

    /// Items read from sled, each vouched for as [`SledStore::read`] does; the listing
    /// ends at the first failure.
    pub(super) fn vouched(
        &self,
        items: impl Iterator<Item = sled::Result<IVec>> + Send + 'static,
    ) -> impl Iterator<Item = Result<Bytes, StoreError>> + Send + 'static {
        let health = self.health.clone();
        let mut ended = false;
        items.map_while(move |item| {
            if ended {
                return None;
            }
            let checked = health.check().and_then(|()| {
                item.map(|value| Bytes::copy_from_slice(&value))
                    .map_err(|e| {
                        health.fail(format!("reading the store failed: {e}"));
                        StoreError::from(e)
                    })
            });
            ended = checked.is_err();
            Some(checked)
        })
    }

    /// Up to `limit` audit records of `range`, of image `id` only if given.
    pub fn audit_page_now(
        &self,
        range: AuditRange,
        id: Option<&ImageId>,
        limit: usize,
    ) -> Result<Page, StoreError> {
        match (range, id) {
            (AuditRange::Before(before), None) => take_page(self.audit_from(before), limit),
            (AuditRange::After(after), None) => take_page(self.audit_after(Some(after)), limit),
            (range, Some(id)) => take_page(self.audit_of(id, range), limit),
        }
    }

    /// Image `id`'s audit records in `range`, through the index, read lazily.
    pub fn audit_of(
        &self,
        id: &ImageId,
        range: AuditRange,
    ) -> impl Iterator<Item = Result<Bytes, StoreError>> + Send + 'static {
        // Nothing above the durable seq: its change may still be in flight.
        let durable = self.visible.durable_seq();
        let (seqs, newest_first) = match range {
            AuditRange::Before(before) => {
                let below = before.map_or(durable, |b| b.saturating_sub(1).min(durable));
                ((Bound::Unbounded, Bound::Included(below)), true)
            }
            AuditRange::After(after) => ((Bound::Excluded(after), Bound::Included(durable)), false),
        };
        let keys = self.by_id.range(by_id_range(id.as_str(), seqs));
        let keys: Box<dyn Iterator<Item = sled::Result<(IVec, IVec)>> + Send> = if newest_first {
            Box::new(keys.rev())
        } else {
            Box::new(keys)
        };
        let audit = self.audit.clone();
        let records = keys.filter_map(move |item| {
            let (key, _) = match item {
                Ok(entry) => entry,
                Err(e) => return Some(Err(e)),
            };
            match seq_of_key(&key) {
                // None: pruned since its key was read.
                Ok(seq) => audit.get(seq.to_be_bytes()).transpose(),
                Err(e) => Some(Err(sled::Error::Unsupported(e.to_string()))),
            }
        });
        self.vouched(records)
    }

    /// Every audit record older than `before`, newest first, read lazily.
    pub fn audit_from(
        &self,
        before: Option<u64>,
    ) -> impl Iterator<Item = Result<Bytes, StoreError>> + Send + 'static {
        // Nothing above the durable seq: its change may still be in flight.
        let durable = self.visible.durable_seq().saturating_add(1);
        let before = Some(before.map_or(durable, |b| b.min(durable)));
        let items = self
            .audit
            .range::<IVec, _>((Bound::Unbounded, seq_bound(before)))
            .rev()
            .map(|item| item.map(|(_, value)| value));
        self.vouched(items)
    }

    /// Every audit record after `after`, oldest first, read lazily.
    pub fn audit_after(
        &self,
        after: Option<u64>,
    ) -> impl Iterator<Item = Result<Bytes, StoreError>> + Send + 'static {
        let durable = self.visible.durable_seq();
        let items = self
            .audit
            .range::<IVec, _>((seq_bound(after), Bound::Included(seq_key(durable))))
            .map(|item| item.map(|(_, value)| value));
        self.vouched(items)
    }

    /// A number that changes whenever the catalog may have changed, so that what was
    /// derived from it can be reused while it stays the same.
    pub fn generation_now(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The generation and the durable seq, the seq first: a batch revealed between the
    /// two reads is then at most shown without its seq (a feed repeats it), never
    /// counted without being shown.
    pub fn snapshot_now(&self) -> crate::store::Snapshot {
        let seq = self.durable_seq();
        crate::store::Snapshot {
            generation: self.generation_now(),
            seq,
        }
    }

    pub fn image_count(&self) -> u64 {
        self.gauges.images.load(Ordering::Relaxed)
    }

    /// Records in the audit trail, and the bytes of their JSON.
    pub fn audit_size(&self) -> (u64, u64) {
        (
            self.gauges.audit_records.load(Ordering::Relaxed),
            self.gauges.audit_bytes.load(Ordering::Relaxed),
        )
    }

    pub fn size_on_disk(&self) -> Result<u64, StoreError> {
        Ok(self.db.size_on_disk()?)
    }

    /// Whether the store still answers reads.
    pub fn is_healthy(&self) -> bool {
        self.check_health().is_ok()
    }

    /// Why the store does not answer reads, if it does not.
    pub fn check_health(&self) -> Result<(), StoreError> {
        match self.read(|| self.db.get(FORMAT_KEY))? {
            Some(_) => Ok(()),
            None => Err(StoreError::unreadable(
                "the store has lost its format version",
            )),
        }
    }

    /// The highest audit seq whose change is durable: what readers are shown up to.
    pub fn durable_seq(&self) -> u64 {
        self.visible.durable_seq()
    }
}

/// The audit key of `seq` as an exclusive bound; none, unbounded.
pub(super) fn seq_bound(seq: Option<u64>) -> Bound<IVec> {
    match seq {
        Some(seq) => Bound::Excluded(seq_key(seq)),
        None => Bound::Unbounded,
    }
}

pub(super) fn seq_key(seq: u64) -> IVec {
    IVec::from(&seq.to_be_bytes())
}

pub(super) fn take_page(
    items: impl Iterator<Item = Result<Bytes, StoreError>>,
    limit: usize,
) -> Result<Page, StoreError> {
    let mut records = Vec::with_capacity(limit.min(1024));
    for item in items {
        if records.len() == limit {
            return Ok(Page {
                records,
                more: true,
            });
        }
        records.push(item?);
    }
    Ok(Page {
        records,
        more: false,
    })
}

/// The fields of a stored image that a [`Filter`] reads. Each is borrowed from the
/// record unless its JSON escapes a character (an id or name may hold `"` or `\`),
/// which serde can only give as an owned string.
#[derive(Deserialize)]
struct Filtered<'a> {
    #[serde(borrow)]
    id: Cow<'a, str>,
    #[serde(borrow)]
    provider: Cow<'a, str>,
    #[serde(borrow, default)]
    name: Cow<'a, str>,
}
