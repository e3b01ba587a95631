//! Making a batch durable, within a bound.
//!
//! sled's flush ends with `sync_file_range` on Linux, which persists neither a grown
//! file's size nor the drive's write cache: after it, the data file is `fdatasync`ed,
//! once per batch, so that the batch's writers share it. A flush or fdatasync that
//! does not return within `flush_timeout` is a failure like one that returned an error
//! (a disk that stopped answering, or a sled thread stuck after a write error): the
//! watchdog answers the batch as of unknown outcome, fails the store, and ends the
//! process at once (`_exit`: a clean shutdown would wait on the stuck threads).

use std::fs::File;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use super::{Health, Reply, io_failed};
use crate::store::{Applied, StoreError};

/// sled's log, where every change lands.
const DATA_FILE: &str = "db";

/// How long the process stays up after the watchdog fired, so that the batch's 503s
/// can be written, before it ends regardless.
const EXIT_GRACE: Duration = Duration::from_millis(500);

/// The replies of a batch being flushed, with the outcome each gets once durable.
pub(super) type Answers = Vec<(Reply, Result<Applied, StoreError>)>;

pub(super) struct Flusher {
    db: sled::Db,
    data: File,
    watchdog: Arc<Watchdog>,
}

impl Flusher {
    pub(super) fn open(
        dir: &Path,
        db: sled::Db,
        timeout: Duration,
        health: Health,
    ) -> Result<Flusher, StoreError> {
        let data = File::open(dir.join(DATA_FILE)).map_err(io_failed)?;
        Ok(Flusher {
            db,
            data,
            watchdog: Watchdog::start(timeout, health, Box::new(exit_now))?,
        })
    }

    /// Flushes sled and fdatasyncs its data file, watched: if it has not returned
    /// within the timeout, `answers` are answered by the watchdog (and come back
    /// empty). `what` names the work in the log.
    pub(super) fn flush(&self, what: &str, answers: Answers) -> (Answers, Result<(), String>) {
        self.watchdog.watch(what, answers);
        let result = self.flush_unwatched();
        (self.watchdog.done(), result)
    }

    fn flush_unwatched(&self) -> Result<(), String> {
        self.db
            .flush()
            .map_err(|e| format!("flushing to disk failed: {e}"))?;
        self.data
            .sync_data()
            .map_err(|e| format!("syncing the store's data file to disk failed: {e}"))
    }

    pub(super) fn close(&self) {
        self.watchdog.close();
    }
}

/// Syncs `dir` itself, so that a file just created or renamed in it survives a power
/// cut.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

struct Watch {
    /// When the flush under watch must have returned by; `None` while idle.
    deadline: Option<Instant>,
    what: String,
    answers: Answers,
    closed: bool,
}

pub(super) struct Watchdog {
    watch: Mutex<Watch>,
    wake: Condvar,
    timeout: Duration,
    health: Health,
    /// What ends the process once the watchdog fired; tests observe it instead.
    stuck: Box<dyn Fn() + Send + Sync>,
}

impl Watchdog {
    fn start(
        timeout: Duration,
        health: Health,
        stuck: Box<dyn Fn() + Send + Sync>,
    ) -> Result<Arc<Watchdog>, StoreError> {
        let watchdog = Arc::new(Watchdog {
            watch: Mutex::new(Watch {
                deadline: None,
                what: String::new(),
                answers: Vec::new(),
                closed: false,
            }),
            wake: Condvar::new(),
            timeout,
            health,
            stuck,
        });
        let watching = watchdog.clone();
        std::thread::Builder::new()
            .name("store-watchdog".into())
            .spawn(move || watching.run())
            .map_err(io_failed)?;
        Ok(watchdog)
    }

    fn watch(&self, what: &str, answers: Answers) {
        let mut watch = self.watch.lock();
        watch.deadline = Some(Instant::now() + self.timeout);
        what.clone_into(&mut watch.what);
        watch.answers = answers;
        self.wake.notify_one();
    }

    /// The answers back, unless the watchdog took them.
    fn done(&self) -> Answers {
        let mut watch = self.watch.lock();
        watch.deadline = None;
        std::mem::take(&mut watch.answers)
    }

    fn close(&self) {
        self.watch.lock().closed = true;
        self.wake.notify_one();
    }

    fn run(&self) {
        let mut watch = self.watch.lock();
        loop {
            if watch.closed {
                return;
            }
            match watch.deadline {
                None => self.wake.wait(&mut watch),
                Some(deadline) if Instant::now() < deadline => {
                    self.wake.wait_until(&mut watch, deadline);
                }
                Some(_) => break,
            }
        }
        let reason = format!(
            "{} did not finish within {} ms ([store] flush_timeout_ms)",
            watch.what,
            self.timeout.as_millis()
        );
        let answers = std::mem::take(&mut watch.answers);
        drop(watch);
        self.health.fail(reason.clone());
        for (reply, result) in answers {
            reply.send(match result {
                Ok(_) => Err(StoreError::OutcomeUnknown(reason.clone())),
                refused => refused,
            });
        }
        (self.stuck)();
    }
}

/// The end of a process whose store is stuck: its threads may never return, so
/// nothing waits for them.
fn exit_now() {
    std::thread::sleep(EXIT_GRACE);
    log::error!("the store is stuck in a flush; exiting now (exit 1) without waiting for it");
    crate::logging::exit_now(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flush_past_its_deadline_answers_its_batch_and_fails_the_store() {
        let health = Health::new();
        let (fired, ended) = std::sync::mpsc::channel();
        let fired = Mutex::new(fired);
        let watchdog = Watchdog::start(
            Duration::from_millis(50),
            health.clone(),
            Box::new(move || fired.lock().send(()).unwrap()),
        )
        .unwrap();
        // A flush that returns in time changes nothing.
        watchdog.watch("a quick flush", Vec::new());
        assert!(watchdog.done().is_empty());
        assert!(health.failure().is_none());

        let (sender, answer) = tokio::sync::oneshot::channel();
        let reply = Reply {
            sender: Some(sender),
            health: health.clone(),
        };
        watchdog.watch("a stuck flush", vec![(reply, Ok(Applied::Created))]);
        let outcome = answer.blocking_recv().unwrap();
        assert!(
            matches!(&outcome, Err(StoreError::OutcomeUnknown(why)) if why.contains("a stuck flush")),
            "{outcome:?}"
        );
        assert!(health.failure().unwrap().contains("flush_timeout_ms"));
        // The stuck flush returns at last: its answers were given already.
        assert!(watchdog.done().is_empty());
        ended
            .recv_timeout(Duration::from_secs(10))
            .expect("the watchdog never ended the process");
    }
}
