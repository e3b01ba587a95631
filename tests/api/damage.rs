//! A damaged or rolled-back store, and a data dir the server cannot use: never a panic,
//! never an older catalog served as if nothing happened; a message naming the folder
//! and the OS user, and exit code 3 when only an operator can help.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};
use tokio::io::AsyncBufReadExt;

use crate::helpers::{ADMIN, config_in};
use crate::process::{ChildServer, binary, write_config};

/// How long one start on a damaged copy may take before it counts as a hang.
const START_DEADLINE: Duration = Duration::from_secs(30);

fn config_for(dir: &Path, data_dir: &Path) -> PathBuf {
    let text = config_in(data_dir);
    write_config(dir, &text)
}

/// What a client was told: the whole catalog and the whole audit trail.
#[derive(Debug, PartialEq)]
struct Acknowledged {
    images: Value,
    audit: Value,
}

async fn read_all(client: &reqwest::Client, base: &str) -> Acknowledged {
    let mut both = Vec::new();
    for path in ["/v3/images", "/v3/audit"] {
        let response = client
            .get(format!("{base}{path}"))
            .basic_auth(ADMIN.0, Some(ADMIN.1))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{path}");
        both.push(response.json::<Value>().await.unwrap());
    }
    let audit = both.pop().unwrap();
    let images = both.pop().unwrap();
    Acknowledged { images, audit }
}

async fn admin(client: &reqwest::Client, method: Method, url: String, body: Option<Value>) {
    let mut request = client
        .request(method.clone(), &url)
        .basic_auth(ADMIN.0, Some(ADMIN.1));
    if let Some(body) = body {
        request = request.json(&body);
    }
    let status = request.send().await.unwrap().status();
    assert_eq!(status, 200, "{method} {url}");
}

/// A real server's store with `count` images created, a fifth of them deleted and
/// another fifth renamed four times; returns what the server acknowledged, once
/// stopped. Long names make the log span several of sled's segments: damage in one
/// of many is what made sled panic.
async fn build_store(dir: &Path, data: &Path, count: usize) -> Acknowledged {
    let config = config_for(dir, data);
    let mut server = ChildServer::start(&config).await;
    let base = server.address.clone();
    let client = reqwest::Client::new();
    let mut tasks = Vec::new();
    for writer in 0..8 {
        let (client, base) = (client.clone(), base.clone());
        tasks.push(tokio::spawn(async move {
            for k in (writer..count).step_by(8) {
                let id = format!("img-{k:04}");
                let body = json!({"id": id, "provider": "ec2", "remote_user": "u",
                                  "name": "x".repeat(250)});
                admin(
                    &client,
                    Method::POST,
                    format!("{base}/v3/image"),
                    Some(body),
                )
                .await;
                if k % 5 == 1 {
                    let url = format!("{base}/v3/image/{id}");
                    admin(&client, Method::DELETE, url, None).await;
                } else if k % 5 == 2 {
                    let url = format!("{base}/v3/image/{id}");
                    for round in 0..4 {
                        let name = format!("renamed-{round}-{}", "y".repeat(200));
                        let body = json!({ "name": name });
                        admin(&client, Method::PUT, url.clone(), Some(body)).await;
                    }
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let acknowledged = read_all(&client, &base).await;
    server.signal("TERM");
    assert!(server.wait().success());
    acknowledged
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// How one start ended.
enum Outcome {
    /// Exited before listening: its code and everything it printed.
    Exited(i32, String),
    /// Listening: the child, its address, and what it printed until then.
    Serving(Box<tokio::process::Child>, String, String),
}

async fn start(config: &Path, extra: &[&str]) -> Outcome {
    let mut command = binary();
    command.arg("--config").arg(config).arg("serve").args(extra);
    start_command(command).await
}

async fn start_command(command: std::process::Command) -> Outcome {
    let mut child = tokio::process::Command::from(command)
        .env("RUST_LOG", "info")
        .env("RUST_BACKTRACE", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let mut printed = String::new();
    let read = async {
        while let Some(line) = lines.next_line().await.unwrap() {
            printed.push_str(&line);
            printed.push('\n');
            if let Some(rest) = line.split("listening on ").nth(1) {
                return Some(rest.split_whitespace().next().unwrap().to_owned());
            }
        }
        None
    };
    let address = tokio::time::timeout(START_DEADLINE, read)
        .await
        .unwrap_or_else(|_| panic!("no answer within {START_DEADLINE:?}: a hang"));
    match address {
        Some(address) => Outcome::Serving(Box::new(child), address, printed),
        None => {
            let status = tokio::time::timeout(START_DEADLINE, child.wait())
                .await
                .expect("exits after closing stderr")
                .unwrap();
            Outcome::Exited(status.code().unwrap_or(-1), printed)
        }
    }
}

fn flip(path: &Path, offset: u64) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[offset as usize] ^= 0xff;
    std::fs::write(path, bytes).unwrap();
}

/// One start on a damaged copy: a clear refusal (exit 3, naming the folder and the
/// user), or the acknowledged catalog exactly. Returns the refusal, if it refused.
async fn start_damaged(
    config: &Path,
    data: &Path,
    acknowledged: &Acknowledged,
    what: &str,
) -> Option<String> {
    match start(config, &[]).await {
        Outcome::Exited(code, printed) => {
            assert!(!printed.contains("panicked"), "{what}: a panic\n{printed}");
            assert_eq!(code, 3, "{what}: exit code\n{printed}");
            let names = format!(
                "cannot open the store at {} as user {}: ",
                data.display(),
                whoami()
            );
            assert!(
                printed.contains(&names),
                "{what}: the message names the folder and the user\n{printed}"
            );
            Some(printed)
        }
        Outcome::Serving(mut child, address, printed) => {
            let client = reqwest::Client::new();
            let served = read_all(&client, &address).await;
            child.kill().await.unwrap();
            assert!(!printed.contains("panicked"), "{what}: a panic\n{printed}");
            assert!(
                served == *acknowledged,
                "{what}: started, but does not serve the acknowledged catalog \
                 (a silent rollback): {} images and {} audit records, acknowledged {} and {}",
                served.images.as_array().map_or(0, Vec::len),
                served.audit.as_array().map_or(0, Vec::len),
                acknowledged.images.as_array().map_or(0, Vec::len),
                acknowledged.audit.as_array().map_or(0, Vec::len),
            );
            None
        }
    }
}

/// `export` and `import` on a store that `serve` refused: the same refusal, exit 3.
fn transfer_refused(config: &Path, what: &str) {
    for command in [&["export"][..], &["import", "-"][..]] {
        let output = binary()
            .arg("--config")
            .arg(config)
            .args(command)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            !stderr.contains("panicked"),
            "{what}, {command:?}: {stderr}"
        );
        assert_eq!(
            output.status.code(),
            Some(3),
            "{what}, {command:?}: {stderr}"
        );
        assert!(
            stderr.contains("it is damaged"),
            "{what}, {command:?}: {stderr}"
        );
    }
}

/// One flipped byte at 40 offsets across sled's `db` file (and a few in `conf` and any
/// snapshot), each on a fresh copy: never a panic, never an older catalog.
#[tokio::test]
async fn a_flipped_byte_never_panics_nor_rolls_back_silently() {
    let dir = tempfile::tempdir().unwrap();
    let pristine = dir.path().join("pristine");
    let acknowledged = build_store(dir.path(), &pristine, 600).await;
    assert_eq!(acknowledged.images.as_array().unwrap().len(), 480);
    assert_eq!(
        acknowledged.audit.as_array().unwrap().len(),
        600 + 120 + 480
    );

    let mut targets = Vec::new();
    let db_len = std::fs::metadata(pristine.join("db")).unwrap().len();
    for k in 0..40u64 {
        // Spread over the file, each a little off a round position.
        targets.push(("db".to_owned(), (db_len * k / 40 + k * 7) % db_len));
    }
    for entry in std::fs::read_dir(&pristine).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        let len = std::fs::metadata(pristine.join(&name)).unwrap().len();
        if (name == "conf" || name.starts_with("snap.")) && len > 0 {
            targets.extend([(name.clone(), 0), (name.clone(), len / 2), (name, len - 1)]);
        }
    }
    let mut refused = 0;
    let mut transfers_checked = false;
    for (n, (file, offset)) in targets.iter().enumerate() {
        let data = dir.path().join(format!("copy-{n}"));
        copy_dir(&pristine, &data);
        flip(&data.join(file), *offset);
        let config = config_for(dir.path(), &data);
        let what = format!("a byte flipped at {offset} of {file}");
        if let Some(refusal) = start_damaged(&config, &data, &acknowledged, &what).await {
            if refusal.contains("it is damaged") && !transfers_checked {
                transfer_refused(&config, &what);
                transfers_checked = true;
            }
            refused += 1;
        }
        std::fs::remove_dir_all(&data).unwrap();
    }
    println!(
        "{refused} of {} damaged copies refused, the rest served intact",
        targets.len()
    );
    assert!(
        transfers_checked,
        "no copy was refused as damaged: export was not tried"
    );
}

async fn create_images(base: &str, ids: std::ops::Range<usize>) {
    let client = reqwest::Client::new();
    for k in ids {
        let body = json!({"id": format!("img-{k}"), "provider": "ec2", "remote_user": "u"});
        admin(
            &client,
            Method::POST,
            format!("{base}/v3/image"),
            Some(body),
        )
        .await;
    }
}

async fn stop(mut server: ChildServer) {
    server.signal("TERM");
    assert!(server.wait().success());
}

/// Puts `old`'s files in place of `data`'s, all but the high-water mark: what a
/// backup restored over a live folder, or sled cutting its log short, looks like.
fn roll_back(old: &Path, data: &Path) {
    let mark = std::fs::read(data.join("high-water-mark")).unwrap();
    std::fs::remove_dir_all(data).unwrap();
    copy_dir(old, data);
    std::fs::write(data.join("high-water-mark"), mark).unwrap();
}

#[tokio::test]
async fn a_store_behind_its_mark_is_refused_until_the_loss_is_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let old = dir.path().join("old");
    let config = config_for(dir.path(), &data);

    let server = ChildServer::start(&config).await;
    create_images(&server.address, 0..5).await;
    stop(server).await;
    copy_dir(&data, &old);
    let server = ChildServer::start(&config).await;
    create_images(&server.address, 5..12).await;
    let client = reqwest::Client::new();
    let url = format!("{}/v3/image/img-0", server.address);
    admin(&client, Method::DELETE, url, None).await;
    stop(server).await;
    roll_back(&old, &data);

    let Outcome::Exited(code, printed) = start(&config, &[]).await else {
        panic!("a store 8 changes behind its mark started");
    };
    assert_eq!(code, 3, "{printed}");
    let expected = format!(
        "cannot open the store at {} as user {}: it holds 5 changes but its high-water mark",
        data.display(),
        whoami()
    );
    assert!(printed.contains(&expected), "{printed}");
    assert!(
        printed.contains("8 acknowledged changes are missing"),
        "{printed}"
    );
    assert!(printed.contains("--accept-data-loss"), "{printed}");
    assert!(!printed.contains("panicked"), "{printed}");

    // export and import open the store the same way.
    for command in [&["export"][..], &["import", "-"][..]] {
        let output = binary()
            .arg("--config")
            .arg(&config)
            .args(command)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(3), "{command:?}: {stderr}");
        assert!(
            stderr.contains("8 acknowledged changes are missing"),
            "{stderr}"
        );
    }

    let Outcome::Serving(mut child, address, printed) =
        start(&config, &["--accept-data-loss"]).await
    else {
        panic!("--accept-data-loss did not start");
    };
    assert!(
        printed.contains("5 changes but its high-water mark says 13")
            && printed.contains("8 acknowledged changes are lost"),
        "a warning with the numbers: {printed}"
    );
    let served = read_all(&client, &address).await;
    assert_eq!(served.images.as_array().unwrap().len(), 5);
    child.kill().await.unwrap();
    child.wait().await.unwrap();
    assert_eq!(
        std::fs::read_to_string(data.join("high-water-mark")).unwrap(),
        "5\n",
        "the mark is reset to the store"
    );
    let Outcome::Serving(mut child, ..) = start(&config, &[]).await else {
        panic!("the accepted store does not start again");
    };
    child.kill().await.unwrap();
}

#[tokio::test]
async fn the_mark_counts_every_change_and_a_store_without_one_gets_one() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = config_for(dir.path(), &data);
    let server = ChildServer::start(&config).await;
    let created = created_mark(&server);
    assert!(created.contains("created one at 0 changes"), "{created}");
    create_images(&server.address, 0..3).await;
    let client = reqwest::Client::new();
    let url = format!("{}/v3/image/img-1", server.address);
    admin(&client, Method::PUT, url, Some(json!({"name": "n"}))).await;
    stop(server).await;
    assert_eq!(
        std::fs::read_to_string(data.join("high-water-mark")).unwrap(),
        "4\n"
    );

    // An import counts each image.
    let file = dir.path().join("more.jsonl");
    std::fs::write(
        &file,
        "{\"id\":\"i-1\",\"provider\":\"ec2\",\"remote_user\":\"u\"}\n\
         {\"id\":\"i-2\",\"provider\":\"ec2\",\"remote_user\":\"u\"}\n",
    )
    .unwrap();
    let output = binary()
        .arg("--config")
        .arg(&config)
        .arg("import")
        .arg(&file)
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    assert_eq!(
        std::fs::read_to_string(data.join("high-water-mark")).unwrap(),
        "6\n"
    );

    // A store that had a mark and lost it cannot tell what it lost: refused, as a
    // store behind its mark is, until the loss is accepted. (A store from before
    // marks gets one at its count: the unit tests of the store.)
    std::fs::remove_file(data.join("high-water-mark")).unwrap();
    let Outcome::Exited(code, printed) = start(&config, &[]).await else {
        panic!("a store that lost its mark started");
    };
    assert_eq!(code, 3, "{printed}");
    assert!(
        printed.contains("its high-water mark") && printed.contains("is gone"),
        "{printed}"
    );
    assert!(printed.contains("--accept-data-loss"), "{printed}");
    let Outcome::Serving(mut child, ..) = start(&config, &["--accept-data-loss"]).await else {
        panic!("--accept-data-loss did not start on a lost mark");
    };
    child.kill().await.unwrap();
    child.wait().await.unwrap();
    assert_eq!(
        std::fs::read_to_string(data.join("high-water-mark")).unwrap(),
        "6\n"
    );
    let Outcome::Serving(mut child, ..) = start(&config, &[]).await else {
        panic!("the store with its new mark does not start again");
    };
    child.kill().await.unwrap();
}

/// The start-up log line that says a mark was created.
fn created_mark(server: &ChildServer) -> String {
    let line = server
        .startup_log
        .iter()
        .find(|line| line.contains("no high-water mark in"));
    line.cloned()
        .unwrap_or_else(|| panic!("no mark created: {:#?}", server.startup_log))
}

/// The OS user the tests run as, as the server names it.
fn whoami() -> String {
    let output = std::process::Command::new("id")
        .arg("-un")
        .output()
        .unwrap();
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// Starts `serve` on a data dir it cannot use; returns its exit code and stderr.
async fn refused(config: &Path, as_nobody: bool) -> (i32, String) {
    use std::os::unix::process::CommandExt;
    let mut command = binary();
    if as_nobody {
        command.uid(65534).gid(65534);
    }
    command.arg("--config").arg(config).arg("serve");
    match start_command(command).await {
        Outcome::Exited(code, printed) => (code, printed),
        Outcome::Serving(..) => panic!("started on a data dir it cannot use"),
    }
}

fn assert_names_folder_and_user(printed: &str, data: &Path, user: &str, reason: &str) {
    let expected = format!(
        "cannot open the store at {} as user {user}: {reason}",
        data.display()
    );
    assert!(
        printed.contains(&expected),
        "wanted {expected:?} in {printed}"
    );
}

#[tokio::test]
async fn a_data_dir_it_cannot_use_is_named_with_the_user() {
    let dir = tempfile::tempdir().unwrap();
    let me = whoami();

    // Not a directory: a file in its place, or in its path.
    let file = dir.path().join("a-file");
    std::fs::write(&file, "").unwrap();
    for data in [file.clone(), file.join("data")] {
        let config = config_for(dir.path(), &data);
        let (code, printed) = refused(&config, false).await;
        assert_eq!(code, 3, "{printed}");
        assert_names_folder_and_user(&printed, &data, &me, "not a directory");
    }

    // Not writable: as root, run as nobody; otherwise take away the write bit.
    use std::os::unix::fs::PermissionsExt;
    let open = std::fs::Permissions::from_mode(0o755);
    std::fs::set_permissions(dir.path(), open.clone()).unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let config = config_for(dir.path(), &data);
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
    let as_root = me == "root";
    if !as_root {
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o555)).unwrap();
    }
    let (code, printed) = refused(&config, as_root).await;
    assert_eq!(code, 3, "{printed}");
    let user = if as_root { "nobody" } else { me.as_str() };
    assert_names_folder_and_user(&printed, &data, user, "permission denied");
    std::fs::set_permissions(&data, open).unwrap();

    // Read-only: a read-only mount.
    let mount = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "ro,size=1m", "tmpfs"])
        .arg(&data)
        .output();
    match mount {
        Ok(output) if output.status.success() => {
            let _unmount = Unmount(data.clone());
            let (code, printed) = refused(&config, false).await;
            assert_eq!(code, 3, "{printed}");
            assert_names_folder_and_user(&printed, &data, &me, "read-only file system");
        }
        other => println!("skipped the read-only case: cannot mount a tmpfs ({other:?})"),
    }
}

struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

/// A lock on the data dir's `lock` file, from any process, keeps a server out: the
/// store's own lock is taken before sled opens anything.
#[tokio::test]
async fn the_data_dir_lock_keeps_a_second_process_out() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let config = config_for(dir.path(), &data);
    let held = std::fs::File::create(data.join("lock")).unwrap();
    let flock = |operation| {
        use std::os::fd::AsRawFd;
        // SAFETY: `held` is open for the whole test.
        unsafe { libc::flock(held.as_raw_fd(), operation) }
    };
    assert_eq!(flock(libc::LOCK_EX | libc::LOCK_NB), 0);
    let (code, printed) = refused(&config, false).await;
    assert_eq!(code, 1, "another process may let go: a restart can help");
    assert!(
        printed.contains("is in use by another image-catalog process"),
        "{printed}"
    );
    assert_eq!(flock(libc::LOCK_UN), 0);
    let Outcome::Serving(mut child, ..) = start(&config, &[]).await else {
        panic!("does not start once the lock is free");
    };
    // And now the server holds it.
    assert_ne!(flock(libc::LOCK_EX | libc::LOCK_NB), 0);
    child.kill().await.unwrap();
}

/// After a clean stop the store opens without reading it through (its files are
/// checked against the record of that stop); after a kill it is read through.
#[tokio::test]
async fn a_clean_stop_spares_the_next_start_its_read_through() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = config_for(dir.path(), &data);
    let server = ChildServer::start(&config).await;
    create_images(&server.address, 0..3).await;
    stop(server).await;
    assert!(
        data.join("clean-stop").exists(),
        "the clean stop is recorded"
    );

    let server = ChildServer::start(&config).await;
    let opened = opening_line(&server);
    assert!(opened.contains("left at a clean stop"), "{opened}");
    assert!(!data.join("clean-stop").exists(), "taken away at the open");
    create_images(&server.address, 3..5).await;
    server.kill();

    let server = ChildServer::start(&config).await;
    let opened = opening_line(&server);
    assert!(opened.contains("read through: 5 images"), "{opened}");
    stop(server).await;
}

/// The start-up line that says how the store was opened.
fn opening_line(server: &ChildServer) -> String {
    server
        .startup_log
        .iter()
        .find(|line| line.contains("store at"))
        .cloned()
        .unwrap_or_default()
}
