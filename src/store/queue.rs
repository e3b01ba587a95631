//! The bound on changes waiting for an engine's writer, once for both engines: past
//! it, a write waits a moment for a place, then is refused as `Busy` (503 with
//! `Retry-After`) rather than letting the queue, and the memory, grow without end.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError};

use crate::store::StoreError;

/// Changes that may wait for a writer.
pub const QUEUE_LIMIT: usize = 4096;
/// How long a write waits for a place once the queue is full.
pub const QUEUE_WAIT: Duration = Duration::from_secs(1);

/// The places in one writer's queue.
#[derive(Clone)]
pub struct WriteQueue(Arc<Semaphore>);

/// A change's place in the queue, given back when dropped (with the change's job).
pub type Place = OwnedSemaphorePermit;

impl Default for WriteQueue {
    fn default() -> Self {
        WriteQueue::with_limit(QUEUE_LIMIT)
    }
}

impl WriteQueue {
    /// A queue of `limit` places (tests take a small one).
    pub fn with_limit(limit: usize) -> WriteQueue {
        WriteQueue(Arc::new(Semaphore::new(limit)))
    }

    /// A place, at once or within `QUEUE_WAIT`; else `Busy`.
    pub async fn place(&self) -> Result<Place, StoreError> {
        match self.0.clone().try_acquire_owned() {
            Ok(place) => Ok(place),
            Err(TryAcquireError::Closed) => {
                Err(StoreError::Unavailable("the store is shut down".into()))
            }
            Err(TryAcquireError::NoPermits) => {
                tokio::time::timeout(QUEUE_WAIT, self.0.clone().acquire_owned())
                    .await
                    .map_err(|_| StoreError::Busy)?
                    .map_err(|_| StoreError::Unavailable("the store is shut down".into()))
            }
        }
    }

    /// Places free now.
    #[cfg(test)]
    pub fn free(&self) -> usize {
        self.0.available_permits()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_queue_is_busy_after_the_wait() {
        let queue = WriteQueue::with_limit(2);
        let mut places = vec![queue.place().await.unwrap(), queue.place().await.unwrap()];
        assert_eq!(queue.free(), 0);
        assert!(matches!(queue.place().await, Err(StoreError::Busy)));
        places.pop();
        assert!(
            queue.place().await.is_ok(),
            "a place given back is taken again"
        );
    }
}
