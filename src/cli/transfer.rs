//! `export` and `import`: the catalog as JSON lines, one image per line, exactly as the
//! API shows it, so an export imports back to the same catalog. With `--with-audit`,
//! the audit trail follows the images, one record per line as `/v3/audit` shows it,
//! oldest first; `import` tells a record by its `"seq"` (an image has none) and moves
//! it in with its seq, in the same atomic step as the images. So moving a catalog from
//! one store to another (sled to PostgreSQL) is `export --with-audit`, then `import`.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, BufWriter, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};

use futures_util::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};

use super::CliError;
use crate::config::Config;
use crate::domain::change::AuditRecord;
use crate::domain::filter::Filter;
use crate::domain::image::{Image, ImageId};
use crate::store::{Store, StoreError};

/// Ids asked for at once when looking for ones the store holds already.
const EXISTING_CHUNK: usize = 1000;

/// How many bad lines are listed before the rest are only counted.
const MAX_LISTED_ERRORS: usize = 50;

/// A runtime for the store's async interface: the CLI's own work is one thread.
fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Runtime(e.to_string()))
}

fn open_store(
    runtime: &tokio::runtime::Runtime,
    config_path: &Path,
    data_dir: Option<PathBuf>,
) -> Result<(Config, Store), CliError> {
    let config = Config::load(config_path)?;
    if config.store.postgres.is_some() && data_dir.is_some() {
        return Err(CliError::Usage(
            "--data-dir is the embedded store's (sled), but [store] backend is \"postgres\": \
             leave it out, or use a config whose backend is \"sled\""
                .into(),
        ));
    }
    let dir = data_dir.unwrap_or_else(|| config.server.data_dir.clone());
    let opened = runtime.block_on(Store::open(&config.store, &dir));
    let store = opened.map_err(|e| match e {
        StoreError::InUse(_) => CliError::Runtime(format!(
            "{e}; export and import need it stopped. To back up a running server, save \
             what GET /v3/images returns (curl -u USER {}/v3/images > backup.json): \
             `import backup.json` reads it back",
            base_url(&config.server.bind)
        )),
        other => CliError::from(other),
    })?;
    Ok((config, store))
}

/// How a client on this machine reaches a server bound to `bind`.
fn base_url(bind: &str) -> String {
    let local = bind
        .replace("0.0.0.0", "127.0.0.1")
        .replace("[::]", "[::1]");
    format!("http://{local}")
}

/// A progress bar on stderr when it is a terminal; hidden otherwise.
fn progress(length: u64, what: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(length);
    let template = format!("{what} {{wide_bar}} {{pos}}/{{len}} ({{eta}} left)");
    if let Ok(style) = ProgressStyle::with_template(&template) {
        bar.set_style(style);
    }
    bar
}

pub fn export(
    config_path: &Path,
    data_dir: Option<PathBuf>,
    with_audit: bool,
) -> Result<(), CliError> {
    let runtime = runtime()?;
    let (_, store) = open_store(&runtime, config_path, data_dir)?;
    let stats = runtime
        .block_on(store.figures())
        .map_err(|e| CliError::Runtime(e.to_string()))?;
    let total = stats.images + if with_audit { stats.audit_records } else { 0 };
    let bar = progress(total, "exporting");
    let stdout = std::io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    let failed = |e: std::io::Error| CliError::Runtime(format!("cannot write the export: {e}"));
    let mut count = 0u64;
    // The embedded store reads on a blocking thread of this runtime.
    let _context = runtime.enter();
    let mut records = store.list_stream(None, &Filter::all());
    while let Some(record) = runtime.block_on(records.next()) {
        let record = record.map_err(|e| CliError::Runtime(e.to_string()))?;
        out.write_all(&record).map_err(failed)?;
        out.write_all(b"\n").map_err(failed)?;
        count += 1;
        bar.inc(1);
    }
    let mut audited = 0u64;
    if with_audit {
        // Oldest first, after the images: the trail reads as it was written.
        let mut records = store.audit_ascending(None);
        while let Some(record) = runtime.block_on(records.next()) {
            let record = record.map_err(|e| CliError::Runtime(e.to_string()))?;
            out.write_all(&record).map_err(failed)?;
            out.write_all(b"\n").map_err(failed)?;
            audited += 1;
            bar.inc(1);
        }
    }
    out.flush().map_err(failed)?;
    bar.finish_and_clear();
    if with_audit {
        log::info!("exported {count} images and {audited} audit records");
    } else {
        log::info!("exported {count} images");
    }
    Ok(())
}

pub fn import(config_path: &Path, file: &Path, data_dir: Option<PathBuf>) -> Result<(), CliError> {
    let runtime = runtime()?;
    let (config, store) = open_store(&runtime, config_path, data_dir)?;
    let (reader, size): (Box<dyn Read>, u64) = if file == Path::new("-") {
        (Box::new(std::io::stdin()), 0)
    } else {
        let opened = std::fs::File::open(file)
            .map_err(|e| CliError::Runtime(format!("cannot open {}: {e}", file.display())))?;
        let size = opened.metadata().map(|m| m.len()).unwrap_or(0);
        (Box::new(opened), size)
    };
    let bar = progress(size, "checking");
    let mut images = Vec::new();
    let mut trail = Vec::new();
    let mut seen: HashMap<ImageId, String> = HashMap::new();
    let mut seen_seqs: HashMap<u64, String> = HashMap::new();
    let mut errors = Vec::new();
    let mut check = |label: String, record: &[u8], may_be_audit: bool| {
        if may_be_audit && is_audit_record(record) {
            match check_audit_line(record, &seen_seqs) {
                Ok(record) => {
                    seen_seqs.insert(record.seq, label);
                    trail.push(record);
                }
                Err(why) => errors.push(format!("{label}: {why}")),
            }
            return;
        }
        match check_line(record, &config.providers, &seen) {
            Ok(image) => {
                seen.insert(image.id.clone(), label);
                images.push(image);
            }
            Err(why) => errors.push(format!("{label}: {why}")),
        }
    };
    let cannot_read =
        |e: std::io::Error| CliError::Runtime(format!("cannot read {}: {e}", file.display()));
    let mut input = BufReader::new(bar.wrap_read(reader));
    let first = input
        .fill_buf()
        .map_err(cannot_read)?
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .copied();
    let is_array = first == Some(b'[');
    if is_array {
        // What `GET /v3/images` returns: an online backup.
        let array: Vec<Box<serde_json::value::RawValue>> =
            serde_json::from_reader(input).map_err(|e| {
                CliError::Runtime(format!(
                    "{} starts like a JSON array (as GET /v3/images gives) but is not one: {e}; \
                     nothing was imported",
                    file.display()
                ))
            })?;
        for (index, record) in array.iter().enumerate() {
            // An online backup holds images only.
            check(
                format!("image {} of the array", index + 1),
                record.get().as_bytes(),
                false,
            );
        }
    } else {
        for (index, line) in input.split(b'\n').enumerate() {
            let line = line.map_err(cannot_read)?;
            let line = line.strip_suffix(b"\r").unwrap_or(&line);
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            check(format!("line {}", index + 1), line, true);
        }
    }
    bar.finish_and_clear();
    // Ids the store holds already, asked a chunk at a time: one round trip per
    // chunk rather than per image.
    let ids: Vec<ImageId> = images.iter().map(|image| image.id.clone()).collect();
    for chunk in ids.chunks(EXISTING_CHUNK) {
        let present = runtime
            .block_on(store.existing(chunk))
            .map_err(|e| CliError::Runtime(format!("{e}; nothing was imported")))?;
        for id in present {
            let label = seen.get(&id).cloned().unwrap_or_default();
            errors.push(format!(
                "{label}: an image with id '{id}' is already in the store"
            ));
        }
    }
    if !errors.is_empty() {
        let mut report = errors
            .iter()
            .take(MAX_LISTED_ERRORS)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n");
        if errors.len() > MAX_LISTED_ERRORS {
            report.push_str(&format!(
                "\n... and {} more",
                errors.len() - MAX_LISTED_ERRORS
            ));
        }
        return Err(CliError::Runtime(format!(
            "{report}\n{} bad {}(s) in {}; nothing was imported",
            errors.len(),
            if is_array { "image" } else { "line" },
            file.display()
        )));
    }
    let count = images.len();
    let span = trail
        .iter()
        .map(|r| r.seq)
        .min()
        .zip(trail.iter().map(|r| r.seq).max());
    let audited = trail.len();
    let user = format!("import:{}", file.display());
    runtime
        .block_on(store.import(images, trail, user.as_str()))
        .map_err(|e| match e {
            // Its message says what remains and what undoes it.
            StoreError::Failed(_) => CliError::Runtime(e.to_string()),
            StoreError::OutcomeUnknown(_) => CliError::Runtime(format!(
                "{e}: the import is all or nothing, so either all of {} is in the store or \
                 none of it; `export` shows which",
                file.display()
            )),
            e => CliError::Runtime(format!("{e}; nothing was imported")),
        })?;
    store
        .shutdown()
        .map_err(|e| CliError::Runtime(e.to_string()))?;
    match span {
        Some((low, high)) => eprintln!(
            "imported {count} images and {audited} audit records (seqs {low} to {high}) from {}",
            file.display()
        ),
        None => eprintln!("imported {count} images from {}", file.display()),
    }
    Ok(())
}

/// Whether a line is an audit record rather than an image: it has a `"seq"` (an image
/// never has one). Anything else, unreadable lines too, is checked as an image.
fn is_audit_record(line: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct Probe {
        seq: Option<serde::de::IgnoredAny>,
    }
    serde_json::from_slice::<Probe>(line).is_ok_and(|probe| probe.seq.is_some())
}

/// One audit record as `/v3/audit` shows it, every field, nothing else.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditLine {
    seq: u64,
    time: String,
    user: String,
    method: String,
    id: String,
    status: u16,
    /// Absent on records exported before records carried images.
    #[serde(default)]
    before: Option<Image>,
    #[serde(default)]
    after: Option<Image>,
}

/// An audit line checked: its fields, its seq (unique in the file, and one that
/// PostgreSQL can hold), its time in the trail's fixed format (retention compares it).
fn check_audit_line(line: &[u8], seen: &HashMap<u64, String>) -> Result<AuditRecord, String> {
    let AuditLine {
        seq,
        time,
        user,
        method,
        id,
        status,
        before,
        after,
    } = serde_json::from_slice(line).map_err(|e| format!("not an audit record: {e}"))?;
    if seq == 0 || seq >= i64::MAX as u64 {
        return Err(format!("audit seq {seq} is out of range"));
    }
    if let Some(first) = seen.get(&seq) {
        return Err(format!("audit seq {seq} repeats {first}"));
    }
    if !is_audit_time(&time) {
        return Err(format!(
            "audit time '{time}' is not in the form 2026-01-02T03:04:05.000006Z"
        ));
    }
    Ok(AuditRecord {
        seq,
        time,
        user,
        method,
        id,
        status,
        before,
        after,
    })
}

/// `YYYY-MM-DDTHH:MM:SS.ffffffZ`, as the store writes it.
fn is_audit_time(time: &str) -> bool {
    const FORM: &[u8] = b"dddd-dd-ddTdd:dd:dd.ddddddZ";
    time.len() == FORM.len()
        && time.bytes().zip(FORM).all(|(b, &f)| match f {
            b'd' => b.is_ascii_digit(),
            other => b == other,
        })
}

/// One line checked as the API checks a create body, plus a repeated id (ids the
/// store holds already are asked for all at once, after).
fn check_line(
    line: &[u8],
    providers: &[String],
    seen: &HashMap<ImageId, String>,
) -> Result<Image, String> {
    let image = Image::from_import_json(line, providers).map_err(|e| e.to_string())?;
    if let Some(first) = seen.get(&image.id) {
        return Err(format!("id '{}' repeats {first}", image.id));
    }
    Ok(image)
}
