//! Opening the data dir safely, before and around sled: the folder is checked and
//! locked first, so that every failure names the folder and the OS user; and sled's
//! own panics on a damaged file are contained, so that a damaged store is a message
//! and exit code 3, never a backtrace.

use std::cell::{Cell, RefCell};
use std::fs::{File, OpenOptions};
use std::io::ErrorKind;
use std::os::unix::ffi::OsStrExt;
use std::panic::{AssertUnwindSafe, PanicHookInfo};
use std::path::Path;
use std::sync::Once;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::store::StoreError;
use crate::store::embedded::{FORMAT_VERSION, MARK_FILE};

/// Beside sled's files; held (flock) for as long as a process has the store open.
pub const LOCK_FILE: &str = "lock";

/// Creates `dir` if needed, checks that this process may write in it, and takes its
/// lock. The returned file holds the lock until dropped.
pub fn prepare(dir: &Path) -> Result<File, StoreError> {
    match std::fs::metadata(dir) {
        Ok(meta) if !meta.is_dir() => {
            return Err(data_dir_error(
                dir,
                "not a directory (a file is in its place); point [server] data_dir or \
                 --data-dir at a folder"
                    .into(),
            ));
        }
        Ok(_) => {}
        Err(e) if e.kind() == ErrorKind::NotFound => {
            std::fs::create_dir_all(dir).map_err(|e| io_error(dir, &e))?;
        }
        Err(e) => return Err(io_error(dir, &e)),
    }
    writable(dir)?;
    let lock = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(dir.join(LOCK_FILE))
        .map_err(|e| io_error(dir, &e))?;
    // flock(2), exclusive, non-blocking. Called by path: std's own `File::try_lock` is
    // newer than the crate's rust-version.
    match fs4::FileExt::try_lock(&lock) {
        Ok(()) => Ok(lock),
        Err(fs4::TryLockError::WouldBlock) => Err(in_use(dir)),
        Err(fs4::TryLockError::Error(err)) => Err(io_error(dir, &err)),
    }
}

/// Whether the effective user may create files in `dir`, as the kernel decides it
/// (root passes a mode check, not a read-only mount).
fn writable(dir: &Path) -> Result<(), StoreError> {
    let Ok(path) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
        return Err(data_dir_error(dir, "the path holds a NUL byte".into()));
    };
    // SAFETY: `path` is a valid NUL-terminated string that outlives the call.
    let result = unsafe {
        libc::faccessat(
            libc::AT_FDCWD,
            path.as_ptr(),
            libc::W_OK | libc::X_OK,
            libc::AT_EACCESS,
        )
    };
    if result == 0 {
        Ok(())
    } else {
        Err(io_error(dir, &std::io::Error::last_os_error()))
    }
}

/// An I/O failure on the data dir, said in words an operator can act on.
pub fn io_error(dir: &Path, err: &std::io::Error) -> StoreError {
    let reason = match err.kind() {
        ErrorKind::PermissionDenied => format!(
            "permission denied; give that user write access to the folder (chown {} {})",
            user_name(),
            dir.display()
        ),
        ErrorKind::NotADirectory => {
            "not a directory (a file is in the way); point [server] data_dir or --data-dir \
             at a folder"
                .into()
        }
        ErrorKind::ReadOnlyFilesystem => {
            "read-only file system; mount it read-write or choose a data dir on a writable one"
                .into()
        }
        _ => err.to_string(),
    };
    data_dir_error(dir, reason)
}

pub fn data_dir_error(dir: &Path, reason: String) -> StoreError {
    StoreError::Unusable(format!(
        "cannot open the store at {} as user {}: {reason}",
        dir.display(),
        user_name()
    ))
}

pub fn in_use(dir: &Path) -> StoreError {
    StoreError::InUse(format!(
        "the data dir {} is in use by another image-catalog process (a server, export or \
         import); stop it first",
        dir.display()
    ))
}

pub fn unknown_format(dir: &Path, found: &str) -> StoreError {
    StoreError::Unusable(format!(
        "the data dir {} holds store format version '{found}', but this build reads version \
         {FORMAT_VERSION} only",
        dir.display()
    ))
}

/// What an operator does about a store that cannot be trusted.
pub const RESTORE_ADVICE: &str = "stop here: restore this folder from a backup taken while \
    the server was stopped, or move it aside and `import` your latest export (or a saved \
    `GET /v3/images`) into a fresh data dir";

pub fn damaged(dir: &Path, detail: impl std::fmt::Display) -> StoreError {
    StoreError::Damaged(format!(
        "cannot open the store at {} as user {}: it is damaged ({detail}); {RESTORE_ADVICE}",
        dir.display(),
        user_name()
    ))
}

/// The store holds fewer changes than its high-water mark says were made durable.
pub fn behind_mark(dir: &Path, store: u64, mark: u64) -> StoreError {
    let dir = dir.display();
    StoreError::Damaged(format!(
        "cannot open the store at {dir} as user {}: it holds {store} changes but its \
         high-water mark ({dir}/{MARK_FILE}) says {mark} were made durable, so {} acknowledged \
         changes are missing (its files were damaged or an older copy was put back); \
         {RESTORE_ADVICE}; or, to serve what is left and lose those changes, start once with \
         `serve --accept-data-loss`",
        user_name(),
        mark - store,
    ))
}

/// The store recorded having a high-water mark, and it is gone.
pub fn mark_lost(dir: &Path) -> StoreError {
    let dir = dir.display();
    StoreError::Damaged(format!(
        "cannot open the store at {dir} as user {}: its high-water mark ({dir}/{MARK_FILE}) is \
         gone, though the store recorded having one, so whether acknowledged changes are \
         missing cannot be told (the mark was deleted, or the store's files were put back \
         without it); {RESTORE_ADVICE}; or, to serve the store as it is, start once with \
         `serve --accept-data-loss`",
        user_name(),
    ))
}

/// The name of the effective OS user, or its uid when it has no name.
pub fn user_name() -> String {
    // SAFETY: geteuid cannot fail.
    let uid = unsafe { libc::geteuid() };
    let mut buffer = vec![0u8; 4096];
    // SAFETY: passwd is plain data; all-zero is a valid (empty) value.
    let mut entry: libc::passwd = unsafe { std::mem::zeroed() };
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call, and `buffer` for its length; the
    // strings in `entry` point into `buffer`, which outlives their use below.
    let status = unsafe {
        libc::getpwuid_r(
            uid,
            &mut entry,
            buffer.as_mut_ptr().cast(),
            buffer.len(),
            &mut found,
        )
    };
    if status != 0 || found.is_null() || entry.pw_name.is_null() {
        return format!("uid {uid}");
    }
    // SAFETY: getpwuid_r succeeded, so pw_name is a NUL-terminated string in `buffer`.
    let name = unsafe { std::ffi::CStr::from_ptr(entry.pw_name) };
    name.to_string_lossy().into_owned()
}

thread_local! {
    /// Set while this thread runs sled on a store not yet verified.
    static CONTAINING: Cell<bool> = const { Cell::new(false) };
    /// The message of the last panic contained on this thread.
    static CONTAINED: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// How many threads are opening a store; while any is, panics on sled's own I/O
/// threads (which sled catches itself) are not printed either.
static OPENING: AtomicUsize = AtomicUsize::new(0);

/// Runs `work` (sled's open and a first full read), turning a panic inside it into
/// [`StoreError::Damaged`] without printing a backtrace. The panic hook is installed
/// once and only stays quiet for threads inside `contain`, so a panic anywhere else
/// (another server starting in the same process, a test) is printed as usual.
pub fn contain<T>(
    dir: &Path,
    work: impl FnOnce() -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    install_quiet_hook();
    OPENING.fetch_add(1, Ordering::SeqCst);
    CONTAINING.with(|c| c.set(true));
    let result = std::panic::catch_unwind(AssertUnwindSafe(work));
    CONTAINING.with(|c| c.set(false));
    OPENING.fetch_sub(1, Ordering::SeqCst);
    match result {
        Ok(result) => result,
        Err(_) => {
            let message = CONTAINED
                .with(|m| m.borrow_mut().take())
                .unwrap_or_else(|| "the storage engine panicked".into());
            Err(damaged(
                dir,
                format!("the storage engine failed: {message}"),
            ))
        }
    }
}

fn install_quiet_hook() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if CONTAINING.with(Cell::get) {
                CONTAINED.with(|m| *m.borrow_mut() = Some(describe(info)));
                return;
            }
            let sled_thread = std::thread::current()
                .name()
                .is_some_and(|name| name.starts_with("sled-"));
            if sled_thread && OPENING.load(Ordering::SeqCst) > 0 {
                return;
            }
            previous(info);
        }));
    });
}

fn describe(info: &PanicHookInfo<'_>) -> String {
    let payload = info.payload();
    let message = payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic".into());
    match info.location() {
        Some(at) => format!("{message} (at {}:{})", at.file(), at.line()),
        None => message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_contained_panic_is_a_damaged_store() {
        let dir = Path::new("/srv/data");
        let err = contain::<()>(dir, || panic!("bad page")).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("/srv/data"), "{text}");
        assert!(text.contains("bad page"), "{text}");
        assert!(text.contains("restore"), "{text}");
    }

    #[test]
    fn the_user_has_a_name() {
        let name = user_name();
        assert!(!name.is_empty());
        if unsafe { libc::geteuid() } == 0 {
            assert_eq!(name, "root");
        }
    }

    #[test]
    fn a_file_in_place_of_the_folder_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("data");
        std::fs::write(&file, "").unwrap();
        let err = prepare(&file).unwrap_err().to_string();
        assert!(err.contains(&file.display().to_string()), "{err}");
        assert!(err.contains("not a directory"), "{err}");
        assert!(err.contains(&format!("as user {}", user_name())), "{err}");
        let below = file.join("deeper");
        let err = prepare(&below).unwrap_err().to_string();
        assert!(err.contains("not a directory"), "{err}");
    }

    #[test]
    fn the_lock_is_held_until_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let first = prepare(dir.path()).unwrap();
        assert!(matches!(prepare(dir.path()), Err(StoreError::InUse(_))));
        drop(first);
        prepare(dir.path()).unwrap();
    }
}
