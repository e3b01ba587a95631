//! A 200 survives a power cut, and nothing is shown before it is durable: the built
//! binary under strace's fault injection (a failing or stalled fdatasync, a full disk
//! under sled's writes) and on a small ext4 image whose copy after `kill -9` is what a
//! power cut leaves. Each test says "skipped" by name where it cannot run (not root,
//! no strace, no loop device).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::json;

use crate::helpers::{ADMIN, config_in, edit};
use crate::process::{ChildServer, write_config};

/// A fail-stop must end the process within this (the flush timeout of these configs
/// is 2 s); a generous bound that still tells a hang.
const EXIT_BOUND: Duration = Duration::from_secs(30);

fn skipped(test: &str, why: &str) {
    eprintln!("skipped: {test}: {why}");
}

fn have_strace() -> bool {
    Command::new("strace").arg("-V").output().is_ok()
}

/// The test config on `data`, with a 2 s flush timeout.
fn config(dir: &Path, data: &Path) -> PathBuf {
    let text = edit(
        &config_in(data),
        "[store]\n",
        "[store]\nflush_timeout_ms = 2000\n",
    );
    write_config(dir, &text)
}

/// `serve` on `config` under strace with `extra` arguments (an injection).
async fn under_strace(config: &Path, extra: &[&str]) -> ChildServer {
    traced_into("/dev/null", config, extra).await
}

/// [`under_strace`] with strace's trace written to `trace`.
async fn traced_into(trace: &str, config: &Path, extra: &[&str]) -> ChildServer {
    let mut command = Command::new("strace");
    command
        .args(["-f", "-qq", "-o", trace])
        .args(extra)
        .arg(env!("CARGO_BIN_EXE_image-catalog"))
        .arg("--config")
        .arg(config)
        .arg("serve");
    ChildServer::start_command(command, "info").await
}

fn image(id: &str) -> serde_json::Value {
    json!({"id": id, "provider": "ec2", "remote_user": "u", "name": id})
}

async fn post(client: &reqwest::Client, base: &str, id: &str) -> Option<u16> {
    let response = client
        .request(Method::POST, format!("{base}/v3/image"))
        .basic_auth(ADMIN.0, Some(ADMIN.1))
        .json(&image(id))
        .send()
        .await
        .ok()?;
    Some(response.status().as_u16())
}

async fn get_status(client: &reqwest::Client, base: &str, id: &str) -> Option<u16> {
    let response = client
        .get(format!("{base}/v3/image/{id}"))
        .basic_auth(ADMIN.0, Some(ADMIN.1))
        .send()
        .await
        .ok()?;
    Some(response.status().as_u16())
}

/// Waits for the server to end on its own; its exit code.
async fn exits(mut server: ChildServer) -> Option<i32> {
    let started = Instant::now();
    let waited = tokio::task::spawn_blocking(move || {
        let status = server.wait();
        (status.code(), server)
    });
    let (code, _server) = tokio::time::timeout(EXIT_BOUND, waited)
        .await
        .unwrap_or_else(|_| panic!("the server did not exit within {EXIT_BOUND:?}: a hang"))
        .unwrap();
    eprintln!("exited with {code:?} after {:?}", started.elapsed());
    code
}

/// The ids of the catalog, read by a fresh server (no strace) on `config`.
async fn catalog_after_restart(config: &Path) -> BTreeSet<String> {
    let server = ChildServer::start(config).await;
    let response = reqwest::Client::new()
        .get(format!("{}/v3/images", server.address))
        .basic_auth(ADMIN.0, Some(ADMIN.1))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let images: Vec<serde_json::Value> = response.json().await.unwrap();
    server.kill();
    images
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_owned())
        .collect()
}

/// Every data sync fails: no write may be acknowledged, since none is durable, and the
/// store fail-stops. (Before fdatasync followed sled's flush, these got 200.)
#[tokio::test]
async fn no_write_is_acknowledged_without_its_fdatasync() {
    if !have_strace() {
        return skipped(
            "no_write_is_acknowledged_without_its_fdatasync",
            "no strace",
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), &dir.path().join("data"));
    let server = under_strace(&config, &["-e", "inject=fdatasync:error=EIO"]).await;
    let client = reqwest::Client::new();
    let status = post(&client, &server.address, "never-durable").await;
    assert_eq!(status, Some(503), "a write whose fdatasync failed");
    let after = post(&client, &server.address, "after").await;
    assert_ne!(after, Some(200), "a write after the fail-stop");
    assert_eq!(exits(server).await, Some(1));
}

/// A fail-stop answers every wait at once, as SIGTERM does (as if its time had run
/// out: the failed write never became durable, so nothing landed), and ends the
/// streams, before the process exits 1.
#[tokio::test]
async fn a_fail_stop_answers_every_wait_and_ends_the_streams() {
    if !have_strace() {
        return skipped("a_fail_stop_answers_every_wait", "no strace");
    }
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), &dir.path().join("data"));
    let server = under_strace(&config, &["-e", "inject=fdatasync:error=EIO"]).await;
    let waits = crate::waits::OpenWaits::open(&server.address).await;
    let client = reqwest::Client::new();
    let failed = Instant::now();
    assert_eq!(
        post(&client, &server.address, "never-durable").await,
        Some(503)
    );
    waits.answered_as_if_timed_out().await;
    // Long before the 5 min the waits asked for.
    assert!(
        failed.elapsed() < Duration::from_secs(30),
        "{:?}",
        failed.elapsed()
    );
    assert_eq!(exits(server).await, Some(1));
}

/// A flush that stalls past `flush_timeout_ms`: the write gets 503 (outcome unknown),
/// the process exits 1 even though the stalled thread never returns in time, and the
/// change in flight was never shown.
#[tokio::test]
async fn a_stalled_flush_fail_stops_within_its_bound_and_shows_nothing() {
    if !have_strace() {
        return skipped("a_stalled_flush_fail_stops_within_its_bound", "no strace");
    }
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), &dir.path().join("data"));
    {
        // A first, durable image, made before any stall.
        let server = ChildServer::start(&config).await;
        let client = reqwest::Client::new();
        assert_eq!(post(&client, &server.address, "before").await, Some(200));
        server.signal("TERM");
        let mut server = server;
        assert!(server.wait().success());
    }
    let server = under_strace(&config, &["-e", "inject=fdatasync:delay_enter=15s"]).await;
    let base = server.address.clone();
    let client = reqwest::Client::new();
    let started = Instant::now();
    let writing = {
        let (client, base) = (client.clone(), base.clone());
        tokio::spawn(async move { post(&client, &base, "stalled").await })
    };
    // While the write is stuck in its flush: applied in sled, never shown.
    let mut seen = Vec::new();
    while !writing.is_finished() {
        match get_status(&client, &base, "stalled").await {
            Some(status) => seen.push(status),
            None => break,
        }
        tokio::task::yield_now().await;
    }
    let status = writing.await.unwrap();
    assert_eq!(status, Some(503), "the stalled write");
    // Answered by the watchdog, long before the stalled fdatasync returns (15 s).
    let answered = started.elapsed();
    assert!(
        answered < Duration::from_secs(10),
        "answered after {answered:?}"
    );
    assert!(
        !seen.contains(&200),
        "a GET showed a change in flight: {seen:?}"
    );
    assert!(!seen.is_empty(), "the reads ran while the write was stuck");
    // (strace itself ends only once its delay is over.)
    assert_eq!(exits(server).await, Some(1));
    let after = catalog_after_restart(&config).await;
    assert!(after.contains("before"), "{after:?}");
}

/// SIGTERM ends the process in time even while a flush is stuck and the watchdog is
/// still far from firing: the stop's deadline does not wait for the stuck thread.
#[tokio::test]
async fn sigterm_ends_the_process_while_a_flush_is_stuck() {
    let test = "sigterm_ends_the_process_while_a_flush_is_stuck";
    if !have_strace() {
        return skipped(test, "no strace");
    }
    let dir = tempfile::tempdir().unwrap();
    let text = edit(
        &config_in(&dir.path().join("data")),
        "[store]\n",
        "[store]\nflush_timeout_ms = 600000\n",
    );
    let config = write_config(dir.path(), &text);
    // strace's trace goes to a FIFO, read here: "fdatasync(" is written when the
    // stalled call is entered.
    let trace = dir.path().join("trace");
    let path = std::ffi::CString::new(trace.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(path.as_ptr(), 0o600) }, 0);
    let (entered, stuck) = tokio::sync::oneshot::channel();
    let reading = trace.clone();
    std::thread::spawn(move || {
        use std::io::Read;
        let mut file = std::fs::File::open(reading).unwrap();
        let (mut seen, mut chunk) = (Vec::new(), [0u8; 4096]);
        let mut entered = Some(entered);
        while let Ok(n) = file.read(&mut chunk) {
            if n == 0 {
                break;
            }
            seen.extend_from_slice(&chunk[..n]);
            if seen.windows(10).any(|w| w == b"fdatasync(")
                && let Some(entered) = entered.take()
            {
                let _ = entered.send(());
            }
        }
    });
    let mut server = traced_into(
        trace.to_str().unwrap(),
        &config,
        &[
            "-e",
            "trace=fdatasync",
            "-e",
            "inject=fdatasync:delay_enter=45s",
        ],
    )
    .await;
    let pid = server_pid(&server);
    let base = server.address.clone();
    let writing = tokio::spawn(async move {
        let client = reqwest::Client::new();
        post(&client, &base, "stuck").await
    });
    crate::helpers::within_a_minute("the stalled fdatasync", stuck)
        .await
        .unwrap();
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let signalled = Instant::now();
    // The process ends itself (strace, which holds the stuck thread, reaps it only
    // once its delay is over, so the end is read off the log).
    let line = crate::helpers::within_a_minute(
        "the stop's deadline",
        server.wait_for_log("exiting now (exit 1)"),
    )
    .await;
    let took = signalled.elapsed();
    assert!(
        took < Duration::from_secs(30),
        "SIGTERM took {took:?}: {line}"
    );
    assert_ne!(writing.await.unwrap(), Some(200), "the stuck write");
    assert_eq!(
        exits(server).await,
        Some(1),
        "a stop that had to cut a stuck flush"
    );
}

/// sled's writes fail with ENOSPC after a while, under concurrent writers and a
/// reader: the process fail-stops (no hang), every acknowledged create is there after
/// the restart, and no GET ever showed an image that is absent after it.
#[tokio::test]
async fn a_full_disk_under_sled_loses_no_acknowledged_write_and_shows_none_it_loses() {
    if !have_strace() {
        return skipped(
            "a_full_disk_under_sled_loses_no_acknowledged_write",
            "no strace",
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), &dir.path().join("data"));
    let server = under_strace(&config, &["-e", "inject=pwrite64:error=ENOSPC:when=40+"]).await;
    let base = server.address.clone();
    let mut writers = Vec::new();
    for w in 0..4 {
        let base = base.clone();
        writers.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut acknowledged = Vec::new();
            for k in 0..2000 {
                let id = format!("w{w}-{k:04}");
                match post(&client, &base, &id).await {
                    Some(200) => acknowledged.push(id),
                    Some(_) | None => break,
                }
            }
            acknowledged
        }));
    }
    let reader = {
        let base = base.clone();
        tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut shown = BTreeSet::new();
            'reading: for round in 0..4000 {
                for w in 0..4 {
                    let id = format!("w{w}-{:04}", round / 2);
                    match get_status(&client, &base, &id).await {
                        Some(200) => {
                            shown.insert(id);
                        }
                        Some(_) => {}
                        None => break 'reading,
                    }
                }
            }
            shown
        })
    };
    let mut acknowledged = Vec::new();
    for writer in writers {
        acknowledged.extend(writer.await.unwrap());
    }
    let shown = reader.await.unwrap();
    assert_eq!(exits(server).await, Some(1), "a write error is a fail-stop");
    let after = catalog_after_restart(&config).await;
    for id in &acknowledged {
        assert!(
            after.contains(id),
            "acknowledged {id} is gone after the restart"
        );
    }
    for id in &shown {
        assert!(
            after.contains(id),
            "a GET showed {id}, which is gone after the restart"
        );
    }
    eprintln!(
        "{} acknowledged, {} shown, {} after the restart",
        acknowledged.len(),
        shown.len(),
        after.len()
    );
}

/// A small ext4 image on a loop device, mounted with a long journal commit interval
/// so that only the server's own syncs put its data on the "disk".
struct Ext4 {
    image: PathBuf,
    mount: PathBuf,
}

impl Ext4 {
    fn make(dir: &Path, name: &str) -> Result<Ext4, String> {
        let image = dir.join(format!("{name}.img"));
        let mount = dir.join(name);
        std::fs::create_dir_all(&mount).map_err(|e| e.to_string())?;
        run(Command::new("truncate").args(["-s", "64M"]).arg(&image))?;
        run(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&image))?;
        Ext4::mount_at(image, mount)
    }

    fn mount_at(image: PathBuf, mount: PathBuf) -> Result<Ext4, String> {
        std::fs::create_dir_all(&mount).map_err(|e| e.to_string())?;
        run(Command::new("mount")
            .args(["-o", "loop,commit=600"])
            .arg(&image)
            .arg(&mount))?;
        Ok(Ext4 { image, mount })
    }
}

impl Drop for Ext4 {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.mount).status();
    }
}

fn run(command: &mut Command) -> Result<(), String> {
    let output = command.output().map_err(|e| e.to_string())?;
    if output.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).trim().to_owned())
    }
}

/// A power cut: 50 creates acknowledged, the server killed, and the disk image copied
/// as it is (what the page cache had not written is lost); the high-water mark's
/// fsync is held back, so that its journal commit cannot carry the data along.
/// Mounting the copy finds every acknowledged create.
#[tokio::test]
async fn every_acknowledged_write_survives_a_power_cut() {
    let test = "every_acknowledged_write_survives_a_power_cut";
    if !have_strace() {
        return skipped(test, "no strace");
    }
    let dir = tempfile::tempdir().unwrap();
    let disk = match Ext4::make(dir.path(), "disk") {
        Ok(disk) => disk,
        Err(why) => return skipped(test, &format!("cannot mount an ext4 image ({why})")),
    };
    let data = disk.mount.join("data");
    let config_dir = dir.path().join("config");
    std::fs::create_dir_all(&config_dir).unwrap();
    let config = config(&config_dir, &data);
    let mark = data.join("high-water-mark.tmp");
    let trace_path = mark.to_str().unwrap().to_owned();
    let server = under_strace(
        &config,
        &[
            "-P",
            &trace_path,
            "-e",
            "trace=fsync",
            "-e",
            "inject=fsync:delay_enter=5s",
        ],
    )
    .await;
    let client = reqwest::Client::new();
    let mut acknowledged = Vec::new();
    for k in 0..50 {
        let id = format!("cut-{k:02}");
        assert_eq!(post(&client, &server.address, &id).await, Some(200));
        acknowledged.push(id);
    }
    // The tracee, not strace: killing strace would only detach it.
    let pid = server_pid(&server);
    let _ = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status();
    let copy = dir.path().join("copy.img");
    std::fs::copy(&disk.image, &copy).unwrap();
    drop(server);
    let copied = Ext4::mount_at(copy, dir.path().join("copy")).unwrap();
    let copy_config_dir = dir.path().join("copy-config");
    std::fs::create_dir_all(&copy_config_dir).unwrap();
    let copy_config = config_in(&copied.mount.join("data"));
    let copy_config = write_config(&copy_config_dir, &copy_config);
    let after = catalog_after_restart(&copy_config).await;
    let lost: Vec<&String> = acknowledged
        .iter()
        .filter(|id| !after.contains(*id))
        .collect();
    assert!(lost.is_empty(), "lost in the power cut: {lost:?}");
    drop(copied);
    drop(disk);
}

/// The server's own pid, from its start line.
fn server_pid(server: &ChildServer) -> i32 {
    let line = &server.listening_line;
    line.split("(pid ")
        .nth(1)
        .and_then(|rest| rest.split(';').next())
        .and_then(|pid| pid.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {line:?}"))
}
