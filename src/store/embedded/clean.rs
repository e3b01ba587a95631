//! A clean stop, recorded: at a clean shutdown (after the last flush) the store
//! writes the size and CRC-32 of each of sled's files into `clean-stop`; the next open
//! takes that file away first, and when every file still has its recorded size and
//! checksum, the full read-through of the store (seconds at a million images) is
//! skipped: those are the very bytes a store that was vouched for left behind. After
//! an unclean stop (no record), or when any byte changed (a mismatch), the store is
//! read through as always, so damage is never served silently.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use crate::store::embedded::flush::sync_dir;

/// Beside sled's files.
pub const CLEAN_FILE: &str = "clean-stop";

/// Files of the data dir that are not sled's, so not part of the record.
const NOT_SLEDS: &[&str] = &[
    CLEAN_FILE,
    "clean-stop.tmp",
    super::open::LOCK_FILE,
    super::mark::MARK_FILE,
    "high-water-mark.tmp",
];

/// One of sled's files as recorded: its path under the data dir, size and CRC-32.
#[derive(Debug, PartialEq, Eq)]
struct Sealed {
    name: String,
    size: u64,
    crc: u32,
}

/// sled's files under `dir`, each with its size and checksum, in name order.
fn seal(dir: &Path) -> std::io::Result<Vec<Sealed>> {
    let mut files = Vec::new();
    collect(dir, dir, &mut files)?;
    files.sort();
    let mut sealed = Vec::with_capacity(files.len());
    let mut buffer = vec![0u8; 1 << 20];
    for (name, path) in files {
        let mut file = File::open(&path)?;
        let mut hasher = crc32fast::Hasher::new();
        let mut size = 0u64;
        loop {
            let read = file.read(&mut buffer)?;
            if read == 0 {
                break;
            }
            hasher.update(&buffer[..read]);
            size += read as u64;
        }
        sealed.push(Sealed {
            name,
            size,
            crc: hasher.finalize(),
        });
    }
    Ok(sealed)
}

fn collect(root: &Path, dir: &Path, files: &mut Vec<(String, PathBuf)>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        let kind = entry.file_type()?;
        if kind.is_dir() {
            collect(root, &path, files)?;
        } else {
            let name = path
                .strip_prefix(root)
                .unwrap_or(&path)
                .to_string_lossy()
                .into_owned();
            if !NOT_SLEDS.contains(&name.as_str()) {
                files.push((name, path));
            }
        }
    }
    Ok(())
}

/// Records the clean stop of the store in `dir` (its files flushed, no writer left).
pub fn record(dir: &Path) -> std::io::Result<()> {
    let mut text = String::new();
    for file in seal(dir)? {
        text.push_str(&format!("{:08x} {} {}\n", file.crc, file.size, file.name));
    }
    let temporary = dir.join("clean-stop.tmp");
    let mut out = File::create(&temporary)?;
    out.write_all(text.as_bytes())?;
    out.sync_all()?;
    drop(out);
    std::fs::rename(&temporary, dir.join(CLEAN_FILE))?;
    sync_dir(dir)
}

/// Whether the store in `dir` stopped cleanly and is byte for byte as it was then.
/// The record is taken away first, durably: whatever happens from here on, the next
/// open finds none unless this run too stops cleanly.
pub fn take(dir: &Path) -> bool {
    let path = dir.join(CLEAN_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(_) => return false,
    };
    if std::fs::remove_file(&path).is_err() || sync_dir(dir).is_err() {
        return false;
    }
    let recorded: Option<Vec<Sealed>> = text
        .lines()
        .map(|line| {
            let mut parts = line.splitn(3, ' ');
            Some(Sealed {
                crc: u32::from_str_radix(parts.next()?, 16).ok()?,
                size: parts.next()?.parse().ok()?,
                name: parts.next()?.to_owned(),
            })
        })
        .collect();
    match (recorded, seal(dir)) {
        (Some(recorded), Ok(now)) => recorded == now,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_holds_only_for_the_same_bytes_and_only_once() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("db"), b"some sled bytes").unwrap();
        std::fs::create_dir(dir.path().join("blobs")).unwrap();
        std::fs::write(dir.path().join("blobs/1"), b"a blob").unwrap();
        std::fs::write(dir.path().join(super::super::mark::MARK_FILE), b"3\n").unwrap();
        record(dir.path()).unwrap();
        // The mark is not sled's: it may move without breaking the record.
        std::fs::write(dir.path().join(super::super::mark::MARK_FILE), b"4\n").unwrap();
        assert!(take(dir.path()), "the same bytes");
        assert!(!take(dir.path()), "a record holds for one open only");

        record(dir.path()).unwrap();
        std::fs::write(dir.path().join("db"), b"some sled bytez").unwrap();
        assert!(!take(dir.path()), "a changed byte");
        record(dir.path()).unwrap();
        std::fs::remove_file(dir.path().join("blobs/1")).unwrap();
        assert!(!take(dir.path()), "a file gone");
        record(dir.path()).unwrap();
        std::fs::write(dir.path().join(CLEAN_FILE), b"garbage\n").unwrap();
        assert!(!take(dir.path()), "a torn record");
    }
}
