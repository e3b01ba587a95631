//! The high-water mark: how many changes were made durable, kept in a small file
//! beside sled's files (so it travels with a copy of the folder) and, in step with the
//! data, inside the store. A store whose own count is behind the file lost changes it
//! had acknowledged (a damaged log that sled silently cut short, an old copy put back)
//! and is refused at start instead of serving an older catalog.
//!
//! The count is of changes (every applied create, update and delete is one, every
//! imported image one), kept in the store as its `next_seq` counter less one: audit
//! retention may prune the trail, but that counter only grows, in the same transaction
//! as the changes.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use parking_lot::{Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::store::StoreError;
use crate::store::embedded::fault::io_failed;
use crate::store::embedded::open::{behind_mark, damaged, data_dir_error, mark_lost};

/// Beside sled's files: the count as text, one line.
pub const MARK_FILE: &str = "high-water-mark";

/// The mark in `dir`, if there is one.
pub fn read(dir: &Path) -> Result<Option<u64>, StoreError> {
    let path = dir.join(MARK_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(crate::store::embedded::open::io_error(dir, &e)),
    };
    text.trim().parse().map(Some).map_err(|_| {
        damaged(
            dir,
            format!(
                "its high-water mark {} does not hold a number",
                path.display()
            ),
        )
    })
}

/// Replaces the mark durably: a crash leaves the old mark or the new one, never a
/// torn file.
pub fn write(dir: &Path, changes: u64) -> std::io::Result<()> {
    let path = dir.join(MARK_FILE);
    let temporary = dir.join(format!("{MARK_FILE}.tmp"));
    let mut file = std::fs::File::create(&temporary)?;
    file.write_all(format!("{changes}\n").as_bytes())?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&temporary, &path)?;
    std::fs::File::open(dir)?.sync_all()
}

/// Compares the store's count of changes with the mark at start. Returns the count
/// the mark holds afterwards: a mark that cannot be raised now (a full disk) only
/// lags, and [`MarkKeeper`] raises it later. `had_mark`: the store recorded having
/// had a mark, so a missing one was lost (deleted, or the store's files were put
/// back without it), not never made.
pub fn check(
    dir: &Path,
    store: u64,
    had_mark: bool,
    accept_data_loss: bool,
) -> Result<u64, StoreError> {
    let unwritable =
        |e: std::io::Error| data_dir_error(dir, format!("cannot write its high-water mark: {e}"));
    let lagging = |mark: u64, e: std::io::Error| {
        log::warn!(
            "cannot write the high-water mark in {}: {e}; it stays at {mark} for now",
            dir.display()
        );
        mark
    };
    match read(dir)? {
        None if had_mark && !accept_data_loss => Err(mark_lost(dir)),
        None if had_mark => {
            log::warn!(
                "--accept-data-loss: the store at {} lost its high-water mark; it is served as \
                 it is ({store} changes), and a new mark is made at that count",
                dir.display()
            );
            write(dir, store).map_err(unwritable)?;
            Ok(store)
        }
        None => match write(dir, store) {
            Ok(()) => {
                log::info!(
                    "no high-water mark in {}: created one at {store} changes",
                    dir.display()
                );
                Ok(store)
            }
            Err(e) => Ok(lagging(0, e)),
        },
        Some(mark) if store < mark => {
            if !accept_data_loss {
                return Err(behind_mark(dir, store, mark));
            }
            log::warn!(
                "--accept-data-loss: the store at {} holds {store} changes but its high-water \
                 mark says {mark}; {} acknowledged changes are lost, and the mark is reset to \
                 {store}",
                dir.display(),
                mark - store
            );
            write(dir, store).map_err(unwritable)?;
            Ok(store)
        }
        // A crash between a flush and the mark's write: the store is ahead, as it may be.
        Some(mark) if store > mark => match write(dir, store) {
            Ok(()) => Ok(store),
            Err(e) => Ok(lagging(mark, e)),
        },
        Some(_) => Ok(store),
    }
}

struct Progress {
    /// The count the store has made durable, as last told.
    durable: u64,
    written: u64,
    closed: bool,
}

/// Raises the mark from a thread of its own, so that the writer's replies never wait
/// for the mark's two fsyncs. The mark may lag the store for a moment (a crash then
/// leaves the store ahead, which is normal); it is never ahead of it.
pub struct MarkKeeper {
    progress: Arc<(Mutex<Progress>, Condvar)>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl MarkKeeper {
    /// `durable`: the store's count now; `written`: what the mark holds.
    pub fn start(dir: &Path, durable: u64, written: u64) -> Result<MarkKeeper, StoreError> {
        let progress = Arc::new((
            Mutex::new(Progress {
                durable,
                written,
                closed: false,
            }),
            Condvar::new(),
        ));
        let shared = progress.clone();
        let folder = dir.to_owned();
        let thread = std::thread::Builder::new()
            .name("store-mark".into())
            .spawn(move || keep(&folder, &shared))
            .map_err(io_failed)?;
        Ok(MarkKeeper {
            progress,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Called after a flush succeeded: `changes` are durable in the store.
    pub fn made_durable(&self, changes: u64) {
        let (lock, wake) = &*self.progress;
        let mut progress = lock.lock();
        if changes > progress.durable {
            progress.durable = changes;
            wake.notify_one();
        }
    }

    /// Stops the thread once it has written the last count it was told.
    pub fn close(&self) {
        {
            let (lock, wake) = &*self.progress;
            lock.lock().closed = true;
            wake.notify_one();
        }
        let thread = self.thread.lock().take();
        if let Some(thread) = thread {
            let _ = thread.join();
        }
    }
}

impl Drop for MarkKeeper {
    fn drop(&mut self) {
        self.close();
    }
}

fn keep(dir: &Path, progress: &(Mutex<Progress>, Condvar)) {
    let (lock, wake) = progress;
    let mut failing = false;
    let mut state = lock.lock();
    loop {
        if state.durable > state.written {
            let target = state.durable;
            drop(state);
            let result = write(dir, target);
            state = lock.lock();
            match result {
                Ok(()) => {
                    state.written = target;
                    if failing {
                        log::info!("the high-water mark in {} is written again", dir.display());
                        failing = false;
                    }
                    continue;
                }
                Err(e) => {
                    if !failing {
                        log::error!(
                            "cannot write the high-water mark in {}: {e}; retrying",
                            dir.display()
                        );
                        failing = true;
                    }
                    if state.closed {
                        return;
                    }
                    wake.wait_for(&mut state, Duration::from_secs(1));
                    continue;
                }
            }
        }
        if state.closed {
            return;
        }
        wake.wait(&mut state);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn behind_is_refused_unless_accepted_and_ahead_raises() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(check(dir.path(), 5, false, false).unwrap(), 5);
        assert_eq!(read(dir.path()).unwrap(), Some(5));
        let err = check(dir.path(), 3, true, false).unwrap_err().to_string();
        assert!(err.contains("2 acknowledged changes are missing"), "{err}");
        assert_eq!(
            read(dir.path()).unwrap(),
            Some(5),
            "a refusal keeps the mark"
        );
        check(dir.path(), 3, true, true).unwrap();
        assert_eq!(read(dir.path()).unwrap(), Some(3));
        check(dir.path(), 9, true, false).unwrap();
        assert_eq!(read(dir.path()).unwrap(), Some(9));
    }

    #[test]
    fn a_lost_mark_is_refused_unless_accepted_but_a_store_from_before_marks_gets_one() {
        let dir = tempfile::tempdir().unwrap();
        let err = check(dir.path(), 4, true, false).unwrap_err();
        assert!(err.needs_operator());
        assert!(err.to_string().contains("high-water mark"), "{err}");
        assert_eq!(read(dir.path()).unwrap(), None, "a refusal writes nothing");
        assert_eq!(check(dir.path(), 4, true, true).unwrap(), 4);
        assert_eq!(read(dir.path()).unwrap(), Some(4));

        let older = tempfile::tempdir().unwrap();
        assert_eq!(check(older.path(), 7, false, false).unwrap(), 7);
        assert_eq!(read(older.path()).unwrap(), Some(7));
    }

    #[test]
    fn a_torn_mark_is_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(MARK_FILE), "12x").unwrap();
        let err = check(dir.path(), 0, true, false).unwrap_err().to_string();
        assert!(err.contains("high-water mark"), "{err}");
    }
}
