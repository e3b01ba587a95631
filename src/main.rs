use std::process::ExitCode;

use clap::Parser;
use image_catalog::cli::{Cli, run};

fn main() -> ExitCode {
    tune_allocator();
    let cli = Cli::parse();
    image_catalog::logging::init();
    let result = run(cli);
    image_catalog::logging::flush();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("image-catalog: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// glibc's defaults let a server's memory creep: each worker thread gets its own arena
/// whose freed pages stay resident, and after one large free (argon2 allocates 19 MiB
/// per verification) the mmap threshold rises so later large blocks stay in the heap
/// too. One arena and fixed thresholds keep RSS flat (see bench/RESULTS.md).
fn tune_allocator() {
    // An operator's own MALLOC_ARENA_MAX wins.
    if std::env::var_os("MALLOC_ARENA_MAX").is_some() {
        return;
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; it runs before any other thread
    // exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 128 * 1024);
    }
}
