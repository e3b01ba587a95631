//! A full disk under the data dir: the store stops (fail-stop), says which writes have
//! an unknown outcome, turns /healthz to 503, exits non-zero, and a restart once there
//! is room serves every acknowledged change.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use reqwest::Method;
use serde_json::json;

use crate::helpers::{ADMIN, config_in};
use crate::process::{ChildServer, write_config};

/// A small tmpfs, unmounted when dropped.
struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    /// `None` (with the reason printed) where mounting is not allowed.
    fn mount(at: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(at).unwrap();
        let output = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .output();
        match output {
            Ok(out) if out.status.success() => Some(Tmpfs {
                path: at.to_owned(),
            }),
            Ok(out) => {
                eprintln!(
                    "skipped: cannot mount a tmpfs to fill ({}); run the tests as root",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
                None
            }
            Err(e) => {
                eprintln!("skipped: cannot run mount ({e})");
                None
            }
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// Writes into `path` until the filesystem is full.
fn fill(path: &Path) {
    let mut file = std::fs::File::create(path).unwrap();
    let block = vec![0xa5u8; 64 * 1024];
    loop {
        if file.write_all(&block).is_err() {
            break;
        }
    }
    // Whatever a partial block left: a byte at a time until nothing fits.
    while file.write_all(&[0]).is_ok() {}
    let _ = file.sync_all();
}

fn image(id: &str) -> serde_json::Value {
    json!({"id": id, "provider": "ec2", "remote_user": "ubuntu", "name": format!("image {id}")})
}

async fn post(client: &reqwest::Client, address: &str, id: &str) -> (u16, String) {
    let response = client
        .request(Method::POST, format!("{address}/v3/image"))
        .basic_auth(ADMIN.0, Some(ADMIN.1))
        .json(&image(id))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

#[tokio::test]
async fn full_disk_is_fail_stop_and_a_restart_keeps_every_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let Some(tmpfs) = Tmpfs::mount(&dir.path().join("disk"), "24m") else {
        return;
    };
    let data = tmpfs.path.join("data");
    let config = config_in(&data);
    let config = write_config(dir.path(), &config);
    let client = reqwest::Client::new();

    let mut server = ChildServer::start(&config).await;
    let mut acknowledged = Vec::new();
    for i in 0..20 {
        let id = format!("before-{i}");
        assert_eq!(post(&client, &server.address, &id).await.0, 200);
        acknowledged.push(id);
    }

    fill(&tmpfs.path.join("filler"));
    let mut unknown = Vec::new();
    let mut first_refusal = None;
    for i in 0..2000 {
        let id = format!("during-{i}");
        let sent = client
            .request(Method::POST, format!("{}/v3/image", server.address))
            .basic_auth(ADMIN.0, Some(ADMIN.1))
            .json(&image(&id))
            .timeout(Duration::from_secs(30))
            .send()
            .await;
        let Ok(response) = sent else {
            break; // The server has stopped listening.
        };
        let status = response.status().as_u16();
        let body = response.text().await.unwrap();
        match status {
            200 => acknowledged.push(id),
            503 => {
                if body.contains("unknown") {
                    unknown.push(id);
                }
                first_refusal.get_or_insert(body);
                break;
            }
            other => panic!("write during a full disk: {other} {body}"),
        }
    }
    let first = first_refusal.expect("a write on a full disk is refused");
    assert!(
        first.contains("unknown") && !first.contains("nothing was changed"),
        "the first failed write's outcome is unknown, not 'not applied': {first}"
    );

    // Health is not 200 from now on: either 503 or the server has gone. Once it stops
    // listening, another test's server may take its port and answer: the request id
    // tells whether this server answered (its access log names it).
    const PROBE: &str = "disk-full-health-probe";
    let _ = client
        .get(format!("{}/healthz", server.address))
        .header("x-request-id", PROBE)
        .timeout(Duration::from_secs(30))
        .send()
        .await;
    let (status, mut server) = tokio::time::timeout(Duration::from_secs(60), async {
        tokio::task::spawn_blocking(move || (server.wait(), server))
            .await
            .unwrap()
    })
    .await
    .expect("the server exits after a failed flush");
    let log = server.rest_of_log().await;
    if let Some(line) = log.iter().find(|line| line.contains(PROBE)) {
        assert!(
            line.contains("/healthz 503 "),
            "healthz after a failed flush: {line}"
        );
    }
    assert_eq!(
        status.code(),
        Some(1),
        "fail-stop exits 1 (a restart may help)"
    );

    std::fs::remove_file(tmpfs.path.join("filler")).unwrap();
    let server = ChildServer::start(&config).await;
    for id in &acknowledged {
        let response = client
            .get(format!("{}/v3/image/{id}", server.address))
            .basic_auth(ADMIN.0, Some(ADMIN.1))
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            200,
            "acknowledged {id} after the restart"
        );
    }
    let listed: Vec<serde_json::Value> = client
        .get(format!("{}/v3/images", server.address))
        .basic_auth(ADMIN.0, Some(ADMIN.1))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        listed.len() >= acknowledged.len() && listed.len() <= acknowledged.len() + unknown.len(),
        "{} listed, {} acknowledged, {} unknown",
        listed.len(),
        acknowledged.len(),
        unknown.len()
    );
    assert_eq!(post(&client, &server.address, "after").await.0, 200);
    let health = client
        .get(format!("{}/healthz", server.address))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
}

#[tokio::test]
async fn an_import_that_fills_the_disk_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let Some(tmpfs) = Tmpfs::mount(&dir.path().join("disk"), "8m") else {
        return;
    };
    let data = tmpfs.path.join("data");
    let config = config_in(&data);
    let config = write_config(dir.path(), &config);
    let name = "n".repeat(250);
    let lines: String = (0..40_000)
        .map(|i| {
            format!(
                "{{\"id\":\"img-{i:06}\",\"provider\":\"ec2\",\"remote_user\":\"u\",\"name\":\"{name}\"}}\n"
            )
        })
        .collect();
    let file = dir.path().join("big.jsonl");
    std::fs::write(&file, lines).unwrap();

    let run = |args: &[&str]| {
        crate::process::binary()
            .arg("--config")
            .arg(&config)
            .args(args)
            .env("RUST_LOG", "warn")
            .output()
            .unwrap()
    };
    // Room that the operator frees once the import has failed: as much as the import
    // could fill, since undoing it writes too (how far it got varies with the load).
    let reserve = tmpfs.path.join("reserve");
    std::fs::write(&reserve, vec![0u8; 4 << 20]).unwrap();
    let import = run(&["import", file.to_str().unwrap()]);
    let said = String::from_utf8_lossy(&import.stderr).into_owned();
    assert_eq!(import.status.code(), Some(1), "the import fails: {said}");
    assert!(!said.contains("panicked"), "{said}");
    assert!(
        said.contains("nothing was imported") || said.contains("undoes it"),
        "the failure says what remains: {said}"
    );
    eprintln!("import on a full disk said: {said:?}");

    // With room again, whatever opens the store next finds none of the import.
    std::fs::remove_file(&reserve).unwrap();
    let export = run(&["export"]);
    let exported = String::from_utf8_lossy(&export.stdout).into_owned();
    assert!(
        export.status.success(),
        "{}",
        String::from_utf8_lossy(&export.stderr)
    );
    assert_eq!(
        exported.lines().count(),
        0,
        "an import reported as failed left images behind; it said: {said}"
    );
}
