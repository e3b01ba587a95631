//! Opening sled and reading the store through once, so that damage shows at start
//! (an error, or a contained panic) rather than on a request.

use super::*;

/// What `open_engine` hands back: sled opened, upgraded if need be, and read through
/// once.
pub(super) struct Opened {
    pub(super) db: sled::Db,
    pub(super) images: Tree,
    pub(super) audit: Tree,
    pub(super) by_id: Tree,
    pub(super) meta: Tree,
    pub(super) tally: Tally,
    /// Empty and without a format version: new, or emptied by damage. Nothing is
    /// written to it before the mark is checked, so a damaged store is left as found.
    pub(super) fresh: bool,
}

/// How long an open waits for sled's own lock, which its threads may hold for a
/// moment after this process let go of a store (the data dir's lock is ours already).
pub(super) const SLED_LOCK_WAIT: Duration = Duration::from_secs(2);

/// Opens sled in `dir` (locked already) and reads every entry once, so that damage
/// shows now (an error, or a panic `store_open::contain` catches) rather than on a
/// request. Any engine error here means the store cannot be trusted as it is.
pub(super) fn open_engine(dir: &Path, cache_mb: u64, trusted: bool) -> Result<Opened, StoreError> {
    let started = Instant::now();
    let db = loop {
        let opened = sled::Config::new()
            .path(dir)
            .cache_capacity(cache_mb.saturating_mul(1024 * 1024))
            // Every change is flushed before it is acknowledged; sled's own periodic
            // flusher would only add a thread that holds the data dir's lock for a
            // while after the store is dropped.
            .flush_every_ms(None)
            .open();
        match opened {
            Ok(db) => break db,
            Err(sled::Error::Io(io)) if io.to_string().contains("could not acquire lock") => {
                // Ours is held, so this is a lingering thread of ours, or an older
                // image-catalog that did not know the lock file.
                if started.elapsed() > SLED_LOCK_WAIT {
                    return Err(in_use(dir));
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(engine_error(dir, e.into())),
        }
    };
    open_and_verify(dir, db, trusted).map_err(|e| engine_error(dir, e))
}

/// A failure while opening, said as what an operator faces: the folder, or damage.
pub(super) fn engine_error(dir: &Path, err: Fault) -> StoreError {
    match err {
        Fault::Io(io)
            if matches!(
                io.kind(),
                std::io::ErrorKind::PermissionDenied
                    | std::io::ErrorKind::ReadOnlyFilesystem
                    | std::io::ErrorKind::NotADirectory
                    | std::io::ErrorKind::StorageFull
            ) =>
        {
            crate::store::embedded::open::io_error(dir, &io)
        }
        Fault::Io(other) => crate::store::embedded::open::damaged(dir, other),
        Fault::Engine(other) => crate::store::embedded::open::damaged(dir, other),
        Fault::Store(StoreError::Damaged(detail)) => {
            crate::store::embedded::open::damaged(dir, detail)
        }
        Fault::Store(other) => other,
    }
}

/// `trusted`: the files are those of a clean stop (see `clean`), so the full read
/// is skipped.
pub(super) fn open_and_verify(dir: &Path, db: sled::Db, trusted: bool) -> Result<Opened, Fault> {
    let images = db.open_tree(IMAGES_TREE)?;
    let audit = db.open_tree(AUDIT_TREE)?;
    let by_id = db.open_tree(AUDIT_BY_ID_TREE)?;
    let meta = db.open_tree(META_TREE)?;
    let mut fresh = false;
    match db.get(FORMAT_KEY)? {
        Some(found) if found.as_ref() == FORMAT_VERSION.as_bytes() => {}
        Some(found) if matches!(found.as_ref(), b"1" | b"2") => {
            let from = String::from_utf8_lossy(&found).into_owned();
            if from == "1" {
                upgrade_from_1(&images, &audit, &meta)?;
            }
            // An index half built by an upgrade cut short is built again whole.
            by_id.clear()?;
            upgrade_from_2(&audit, &by_id)?;
            db.insert(FORMAT_KEY, FORMAT_VERSION)?;
            db.flush()?;
            log::info!(
                "the store at {} was upgraded in place from format {from} to {FORMAT_VERSION}",
                dir.display()
            );
        }
        Some(found) => {
            return Err(unknown_format(dir, &String::from_utf8_lossy(&found)).into());
        }
        // A new store: set up once its mark is checked (see `Opened::fresh`).
        None if images.is_empty() && audit.is_empty() => fresh = true,
        None => {
            return Err(unknown_format(dir, "none").into());
        }
    }
    if let Some(removed) = undo_interrupted_import(&images, &audit, &by_id, &meta)? {
        db.flush()?;
        log::warn!(
            "an import into {} was interrupted; undone: {removed} images it had created \
             were removed, so that the import is all or nothing",
            dir.display()
        );
    }
    let tally = Tally::load(&meta)?;
    if !trusted {
        read_through(&db, &images, &audit, &by_id, &meta, &tally)?;
    }
    Ok(Opened {
        db,
        images,
        audit,
        by_id,
        meta,
        tally,
        fresh,
    })
}

/// The first full read: every key and value of every tree, checked against the tally
/// kept in step with them.
fn read_through(
    db: &sled::Db,
    images: &Tree,
    audit: &Tree,
    by_id: &Tree,
    meta: &Tree,
    tally: &Tally,
) -> Result<(), Fault> {
    let default: &Tree = db;
    for tree in [default, meta] {
        for item in tree.iter() {
            item?;
        }
    }
    let mut stored_images = 0u64;
    for item in images.iter() {
        let (key, value) = item?;
        // JSON, not the API's rules of the day: ids stored under older rules stay.
        serde_json::from_slice::<serde::de::IgnoredAny>(&value).map_err(|e| {
            let key = String::from_utf8_lossy(&key);
            StoreError::unreadable(format!("the record of image '{key}' is not JSON: {e}"))
        })?;
        stored_images += 1;
    }
    let mut stored_records = 0u64;
    for item in audit.iter() {
        let (key, _) = item?;
        if u64_from_bytes(&key)? >= tally.next_seq {
            return Err(StoreError::Damaged(format!(
                "an audit record has seq {} but the next seq is {}",
                u64_from_bytes(&key)?,
                tally.next_seq
            ))
            .into());
        }
        stored_records += 1;
    }
    // One index key per record (their seqs are checked where they are read).
    let mut indexed = 0u64;
    for item in by_id.iter() {
        item?;
        indexed += 1;
    }
    if indexed != stored_records {
        return Err(StoreError::Damaged(format!(
            "its audit index holds {indexed} keys for {stored_records} audit records"
        ))
        .into());
    }
    if (stored_images, stored_records) != (tally.images, tally.audit_records) {
        return Err(StoreError::Damaged(format!(
            "it holds {stored_images} images and {stored_records} audit records but counted \
             {} and {}",
            tally.images, tally.audit_records
        ))
        .into());
    }
    Ok(())
}
