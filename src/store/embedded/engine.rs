//! The engine interface of the embedded store: the methods [`crate::store::Store`]
//! forwards to, with the same signatures as the PostgreSQL engine's. Reads from sled's
//! cache answer at once (cheaper than a thread hop); long scans run on blocking
//! threads.

use std::path::Path;

use futures_util::StreamExt;

use super::*;
use crate::metrics::StoreFigures;
use crate::store::{Listing, Snapshot, TrailSpan};

impl SledStore {
    pub async fn get(&self, id: &ImageId) -> Result<Option<Record>, StoreError> {
        self.read_image(id)
    }

    pub async fn existing(&self, ids: &[ImageId]) -> Result<Vec<ImageId>, StoreError> {
        let mut found = Vec::new();
        for id in ids {
            if self.read_image(id)?.is_some() {
                found.push(id.clone());
            }
        }
        Ok(found)
    }

    pub async fn list_page_at(
        &self,
        after: Option<&ImageId>,
        filter: &Filter,
        limit: usize,
    ) -> Result<(Snapshot, Page), StoreError> {
        // Read first: a page built while a write lands is then filed under the older
        // generation, and never served after it; and its seq is one the page shows.
        let snapshot = self.snapshot_now();
        Ok((snapshot, self.list_page(after, filter, limit).await?))
    }

    pub fn list_stream(&self, after: Option<&ImageId>, filter: &Filter) -> Listing {
        off_the_workers(self.list_from(after, filter.clone()))
    }

    pub async fn audit_page(
        &self,
        range: AuditRange,
        id: Option<&ImageId>,
        limit: usize,
    ) -> Result<Page, StoreError> {
        self.audit_page_now(range, id, limit)
    }

    pub fn audit_stream(&self, before: Option<u64>, id: Option<&ImageId>) -> Listing {
        match id {
            None => off_the_workers(self.audit_from(before)),
            Some(id) => off_the_workers(self.audit_of(id, AuditRange::Before(before))),
        }
    }

    pub async fn trail_span(&self) -> Result<TrailSpan, StoreError> {
        // The highest first: a record pruned meanwhile only raises the lowest.
        let highest = self.durable_seq();
        let lowest = self
            .read(|| self.audit.first())?
            .map(|(key, _)| u64_from_bytes(&key))
            .transpose()?
            .filter(|&lowest| lowest <= highest);
        Ok(TrailSpan { lowest, highest })
    }

    pub fn audit_ascending(&self, after: Option<u64>) -> Listing {
        off_the_workers(self.audit_after(after))
    }

    pub fn durable_seqs(&self) -> tokio::sync::watch::Receiver<u64> {
        self.visible.landed()
    }

    pub async fn snapshot(&self) -> Result<Snapshot, StoreError> {
        Ok(self.snapshot_now())
    }

    pub async fn figures(&self) -> Result<StoreFigures, StoreError> {
        let (audit_records, audit_bytes) = self.audit_size();
        Ok(StoreFigures {
            images: self.image_count(),
            audit_records,
            audit_bytes,
            size_on_disk: self
                .size_on_disk()
                .inspect_err(|e| log::warn!("cannot read the store's size: {e}"))
                .ok(),
            connections: None,
        })
    }

    pub async fn health(&self) -> Result<(), StoreError> {
        self.check_health()
    }

    pub fn data_dir(&self) -> Option<&Path> {
        Some(self.dir())
    }
}

/// Items of a blocking iterator, read on a blocking thread a few batches ahead of
/// the client: a long scan never holds an async worker.
fn off_the_workers<I>(items: I) -> Listing
where
    I: Iterator<Item = Result<Bytes, StoreError>> + Send + 'static,
{
    const BATCH: usize = 256;
    let (sender, receiver) = tokio::sync::mpsc::channel::<Vec<Result<Bytes, StoreError>>>(2);
    tokio::task::spawn_blocking(move || {
        let mut items = items.peekable();
        while items.peek().is_some() {
            let batch: Vec<_> = items.by_ref().take(BATCH).collect();
            // The client has gone: stop reading.
            if sender.blocking_send(batch).is_err() {
                break;
            }
        }
    });
    futures_util::stream::unfold(receiver, |mut receiver| async move {
        let batch = receiver.recv().await?;
        Some((futures_util::stream::iter(batch), receiver))
    })
    .flatten()
    .boxed()
}
