//! `export` and `import`: JSON lines, all-or-nothing, exact round trip, and refusal of
//! a data dir that a running server holds; the audit trail moved with `--with-audit`,
//! from sled to sled and from sled to PostgreSQL.

use std::path::Path;

use serde_json::{Value, json};

use crate::helpers::{Caller, DEFAULT_POLICIES, config_text, default_users};
use crate::process::{ChildServer, run, stderr, write_config};

const LINES: &str = r#"{"id":"ami-2","provider":"ec2","remote_user":"ubuntu","name":"Ubuntu"}
{"id":"イメージ","provider":"openstack","remote_user":"centos","name":"名前 \"quoted\" \\ back"}
{"id":"ami-1","provider":"ec2","remote_user":"ec2-user"}

{"id":"tmpl:base","provider":"static","remote_user":"root","name":""}
{"id":"cafe\u0301","provider":"static","remote_user":"root","name":"decomposed, as older versions let it be created"}
"#;

#[test]
fn export_import_round_trip_is_exact() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &config_text(DEFAULT_POLICIES, &default_users()));
    let source = dir.path().join("images.jsonl");
    std::fs::write(&source, LINES).unwrap();

    let output = run(&config, &["import", source.to_str().unwrap()]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(stderr(&output).contains("imported 5 images"));

    let first = run(&config, &["export"]);
    assert!(first.status.success(), "{}", stderr(&first));
    let exported = String::from_utf8(first.stdout).unwrap();
    let ids: Vec<String> = exported
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(
        ids,
        ["ami-1", "ami-2", "cafe\u{301}", "tmpl:base", "イメージ"],
        "sorted by id bytes"
    );
    assert!(
        exported.contains(r#"{"id":"ami-1","provider":"ec2","remote_user":"ec2-user","name":""}"#)
    );

    // Into a second data dir and out again: byte for byte the same.
    let copy = dir.path().join("exported.jsonl");
    std::fs::write(&copy, &exported).unwrap();
    let other = dir.path().join("other-data");
    let other = other.to_str().unwrap();
    let output = run(
        &config,
        &["import", copy.to_str().unwrap(), "--data-dir", other],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    let second = run(&config, &["export", "--data-dir", other]);
    assert_eq!(String::from_utf8(second.stdout).unwrap(), exported);
}

#[test]
fn import_names_every_bad_line_and_imports_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &config_text(DEFAULT_POLICIES, &default_users()));
    let file = dir.path().join("bad.jsonl");
    std::fs::write(
        &file,
        concat!(
            r#"{"id":"good-1","provider":"ec2","remote_user":"u"}"#,
            "\n",
            r#"{"id":"bad provider","provider":"gce","remote_user":"u"}"#,
            "\n",
            r#"{"id":"good-2","provider":"ec2","remote_user":"u"}"#,
            "\n",
            "not json\n",
            r#"{"id":"good-1","provider":"ec2","remote_user":"v"}"#,
            "\n",
            r#"{"id":"good-3","provider":"ec2","remote_user":"u","extra":1}"#,
            "\n",
        ),
    )
    .unwrap();
    let output = run(&config, &["import", file.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1));
    let message = stderr(&output);
    for expected in [
        "line 2: id must not contain whitespace",
        "line 4: the body is not valid JSON",
        "line 5: id 'good-1' repeats line 1",
        "line 6: unknown field 'extra'",
        "4 bad line(s)",
        "nothing was imported",
    ] {
        assert!(
            message.contains(expected),
            "{expected:?} missing in {message}"
        );
    }
    assert!(
        !message.contains("line 1:") && !message.contains("line 3:"),
        "{message}"
    );
    let export = run(&config, &["export"]);
    assert!(export.status.success());
    assert!(export.stdout.is_empty(), "nothing imported");

    // An id the store already holds is a bad line too.
    let good = dir.path().join("good.jsonl");
    std::fs::write(
        &good,
        concat!(r#"{"id":"x","provider":"ec2","remote_user":"u"}"#, "\n"),
    )
    .unwrap();
    assert!(
        run(&config, &["import", good.to_str().unwrap()])
            .status
            .success()
    );
    let again = run(&config, &["import", good.to_str().unwrap()]);
    assert_eq!(again.status.code(), Some(1));
    assert!(stderr(&again).contains("line 1: an image with id 'x' is already in the store"));
}

#[tokio::test]
async fn export_and_import_refuse_a_data_dir_a_server_holds() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &config_text(DEFAULT_POLICIES, &default_users()));
    let file = dir.path().join("one.jsonl");
    std::fs::write(&file, r#"{"id":"x","provider":"ec2","remote_user":"u"}"#).unwrap();
    let _server = ChildServer::start(&config).await;
    for args in [vec!["export"], vec!["import", file.to_str().unwrap()]] {
        let output = run(&config, &args);
        assert_eq!(output.status.code(), Some(1), "{args:?}");
        let message = stderr(&output);
        assert!(
            message.contains("in use by another image-catalog process"),
            "{message}"
        );
        assert!(
            message.contains("GET /v3/images"),
            "points to the online backup: {message}"
        );
    }
}

#[tokio::test]
async fn what_get_v3_images_returns_is_a_backup_that_imports_back() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &config_text(DEFAULT_POLICIES, &default_users()));
    let source = dir.path().join("images.jsonl");
    std::fs::write(&source, LINES).unwrap();
    assert!(
        run(&config, &["import", source.to_str().unwrap()])
            .status
            .success()
    );
    let before = run(&config, &["export"]).stdout;

    // The online backup: the whole list from a running server.
    let server = ChildServer::start(&config).await;
    let backup = reqwest::Client::new()
        .get(format!("{}/v3/images", server.address))
        .basic_auth(crate::helpers::ADMIN.0, Some(crate::helpers::ADMIN.1))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    server.kill();
    let file = dir.path().join("backup.json");
    std::fs::write(&file, &backup).unwrap();

    let restored = tempfile::tempdir().unwrap();
    let config = write_config(
        restored.path(),
        &config_text(DEFAULT_POLICIES, &default_users()),
    );
    let output = run(&config, &["import", file.to_str().unwrap()]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(stderr(&output).contains("imported 5 images"));
    assert_eq!(run(&config, &["export"]).stdout, before, "the same catalog");

    // A bad image in an array is named by its place; nothing is imported.
    let bad = dir.path().join("bad.json");
    std::fs::write(
        &bad,
        r#"[{"id":"ok","provider":"ec2","remote_user":"u"}, {"id":"no","provider":"gce","remote_user":"u"}]"#,
    )
    .unwrap();
    let fresh = tempfile::tempdir().unwrap();
    let config = write_config(
        fresh.path(),
        &config_text(DEFAULT_POLICIES, &default_users()),
    );
    let output = run(&config, &["import", bad.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("image 2 of the array: provider 'gce'"),
        "{}",
        stderr(&output)
    );
    assert!(
        stderr(&output).contains("1 bad image(s)"),
        "{}",
        stderr(&output)
    );
    assert!(run(&config, &["export"]).stdout.is_empty());
}

/// Creates, updates and deletes over the API of a server on `config`, then stops it
/// (SIGTERM). Returns what it then served: GET /v3/images and GET /v3/audit.
async fn serve_a_history(config: &Path) -> (Value, Vec<Value>) {
    let mut server = ChildServer::start(config).await;
    let shown = {
        let admin = server.caller().admin();
        for id in ["ami-1", "ami-2", "イメージ", "gone"] {
            let body = json!({"id": id, "provider": "ec2", "remote_user": "u", "name": id});
            assert_eq!(admin.post("/v3/image", &body).await.0, 200, "{id}");
        }
        let renamed = admin
            .put("/v3/image/ami-1", &json!({"name": "renamed"}))
            .await;
        assert_eq!(renamed.0, 200);
        assert_eq!(admin.delete("/v3/image/gone").await.0, 200);
        shown_by(&server.address).await
    };
    server.signal("TERM");
    assert!(server.wait().success());
    (shown.0, shown.1)
}

/// GET /v3/images and GET /v3/audit (newest first) of the server at `address`.
async fn shown_by(address: &str) -> (Value, Vec<Value>) {
    let admin = Caller::at(address).admin();
    let (status, images) = admin.get("/v3/images").await;
    assert_eq!(status, 200);
    let (status, audit) = admin.get("/v3/audit").await;
    assert_eq!(status, 200);
    (images, audit.as_array().unwrap().clone())
}

/// `serve` on `config` with `--data-dir dir`.
async fn serve_in(config: &Path, dir: &Path) -> ChildServer {
    let mut command = crate::process::binary();
    command
        .arg("--config")
        .arg(config)
        .args(["serve", "--data-dir"])
        .arg(dir);
    ChildServer::start_command(command, "info").await
}

/// What a store that moved in `old` (newest first) through `import FILE` shows: its
/// images' IMPORT records, seqs after the trail's, newest first, then `old` as it was.
fn assert_moved_in(audit: &[Value], old: &[Value], ids: &[&str], file: &Path) {
    let high = old[0]["seq"].as_u64().unwrap();
    let (added, kept) = audit.split_at(ids.len());
    assert_eq!(kept, old, "the trail moved in as it was, seqs kept");
    for record in added {
        assert_eq!(
            record["after"]["id"], record["id"],
            "an import's record: {record}"
        );
        assert!(record["before"].is_null(), "{record}");
    }
    let added: Vec<(u64, &str, &str, &str)> = added
        .iter()
        .map(|r| {
            (
                r["seq"].as_u64().unwrap(),
                r["method"].as_str().unwrap(),
                r["id"].as_str().unwrap(),
                r["user"].as_str().unwrap(),
            )
        })
        .collect();
    let user = format!("import:{}", file.display());
    let expected: Vec<(u64, &str, &str, &str)> = ids
        .iter()
        .rev()
        .zip(
            (high + 1..)
                .take(ids.len())
                .collect::<Vec<_>>()
                .into_iter()
                .rev(),
        )
        .map(|(id, seq)| (seq, "IMPORT", *id, user.as_str()))
        .collect();
    assert_eq!(added, expected, "the images' records follow the trail");
}

#[tokio::test]
async fn an_export_with_audit_moves_the_trail_with_its_seqs() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &config_text(DEFAULT_POLICIES, &default_users()));
    let (images, audit) = serve_a_history(&config).await;
    assert_eq!(audit.len(), 6);

    // Without the flag, the export is what it was: images only.
    let plain = run(&config, &["export"]);
    assert!(plain.status.success(), "{}", stderr(&plain));
    let plain = String::from_utf8(plain.stdout).unwrap();
    assert_eq!(plain.lines().count(), 3);
    assert!(!plain.contains("\"seq\""), "{plain}");

    let full = run(&config, &["export", "--with-audit"]);
    assert!(full.status.success(), "{}", stderr(&full));
    let full = String::from_utf8(full.stdout).unwrap();
    let trail = full.strip_prefix(plain.as_str()).expect("images first");
    let trail: Vec<Value> = trail
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let oldest_first: Vec<Value> = audit.iter().rev().cloned().collect();
    assert_eq!(trail, oldest_first, "as /v3/audit shows it, oldest first");

    // Into an empty data dir: the same images, the same trail, then the IMPORT records.
    let file = dir.path().join("catalog.jsonl");
    std::fs::write(&file, &full).unwrap();
    let moved = dir.path().join("moved");
    let output = run(
        &config,
        &[
            "import",
            file.to_str().unwrap(),
            "--data-dir",
            moved.to_str().unwrap(),
        ],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("imported 3 images and 6 audit records (seqs 1 to 6)"),
        "{}",
        stderr(&output)
    );
    let server = serve_in(&config, &moved).await;
    let (images_after, audit_after) = shown_by(&server.address).await;
    assert_eq!(images_after, images);
    assert_moved_in(&audit_after, &audit, &["ami-1", "ami-2", "イメージ"], &file);
}

#[tokio::test]
async fn an_import_that_overlaps_a_trail_or_an_image_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &config_text(DEFAULT_POLICIES, &default_users()));
    serve_a_history(&config).await;
    let export = run(&config, &["export", "--with-audit"]);
    assert!(export.status.success(), "{}", stderr(&export));
    let file = dir.path().join("catalog.jsonl");
    std::fs::write(&file, &export.stdout).unwrap();
    let file = file.to_str().unwrap();
    let target = dir.path().join("target");
    let target = target.to_str().unwrap();
    let state = || {
        let out = run(&config, &["export", "--with-audit", "--data-dir", target]);
        assert!(out.status.success(), "{}", stderr(&out));
        out.stdout
    };

    // A target that has given seq 1: the trail moved in would not lie above it.
    let own = dir.path().join("own.jsonl");
    std::fs::write(
        &own,
        concat!(r#"{"id":"other","provider":"ec2","remote_user":"u"}"#, "\n"),
    )
    .unwrap();
    assert!(
        run(
            &config,
            &["import", own.to_str().unwrap(), "--data-dir", target]
        )
        .status
        .success()
    );
    let before = state();
    let refused = run(&config, &["import", file, "--data-dir", target]);
    assert_eq!(refused.status.code(), Some(1));
    let message = stderr(&refused);
    assert!(
        message.contains("has given seqs up to 1") && message.contains("nothing was imported"),
        "{message}"
    );
    assert_eq!(state(), before, "nothing of it, images nor trail");

    // A target whose trail is far ahead but holds one of the ids.
    let target = dir.path().join("second");
    let target = target.to_str().unwrap();
    let ahead = dir.path().join("ahead.jsonl");
    std::fs::write(
        &ahead,
        concat!(
            r#"{"id":"ami-2","provider":"ec2","remote_user":"u"}"#,
            "\n",
            r#"{"seq":100,"time":"2026-01-01T00:00:00.000000Z","user":"x","method":"POST","id":"ami-2","status":200}"#,
            "\n",
        ),
    )
    .unwrap();
    let output = run(
        &config,
        &["import", ahead.to_str().unwrap(), "--data-dir", target],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    let before = run(&config, &["export", "--with-audit", "--data-dir", target]).stdout;
    let refused = run(&config, &["import", file, "--data-dir", target]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        stderr(&refused).contains("an image with id 'ami-2' is already in the store"),
        "{}",
        stderr(&refused)
    );
    let after = run(&config, &["export", "--with-audit", "--data-dir", target]).stdout;
    assert_eq!(after, before);

    // Bad audit lines are named like bad images.
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(
        &bad,
        concat!(
            r#"{"seq":1,"time":"2026-01-01T00:00:00.000000Z","user":"x","method":"POST","id":"a","status":200}"#,
            "\n",
            r#"{"seq":1,"time":"2026-01-01T00:00:00.000000Z","user":"x","method":"POST","id":"a","status":200}"#,
            "\n",
            r#"{"seq":2,"time":"yesterday","user":"x","method":"POST","id":"a","status":200}"#,
            "\n",
            r#"{"seq":3,"time":"2026-01-01T00:00:00.000000Z","user":"x","method":"POST","id":"a","status":200,"extra":1}"#,
            "\n",
        ),
    )
    .unwrap();
    let fresh = dir.path().join("fresh");
    let output = run(
        &config,
        &[
            "import",
            bad.to_str().unwrap(),
            "--data-dir",
            fresh.to_str().unwrap(),
        ],
    );
    assert_eq!(output.status.code(), Some(1));
    let message = stderr(&output);
    for expected in [
        "line 2: audit seq 1 repeats line 1",
        "line 3: audit time 'yesterday'",
        "line 4: not an audit record: unknown field `extra`",
        "3 bad line(s)",
    ] {
        assert!(message.contains(expected), "{expected:?} in {message}");
    }
}

#[tokio::test]
async fn a_catalog_moves_from_sled_to_postgres_with_its_trail() {
    // The test PostgreSQL (skipped without one, as in tests/pg_store.rs).
    let Some(db) = crate::pg::database() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &config_text(DEFAULT_POLICIES, &default_users()));
    let (images, audit) = serve_a_history(&config).await;
    let export = run(&config, &["export", "--with-audit"]);
    assert!(export.status.success(), "{}", stderr(&export));
    let file = dir.path().join("catalog.jsonl");
    std::fs::write(&file, &export.stdout).unwrap();

    let pg_dir = tempfile::tempdir().unwrap();
    let pg_config = write_config(
        pg_dir.path(),
        &crate::helpers::edit(
            &config_text(DEFAULT_POLICIES, &default_users()),
            "[store]\ncache_mb = 8\n",
            &format!("[store]\nbackend = \"postgres\"\nurl = \"{}\"\n", db.url),
        ),
    );
    // The data dir is sled's: with postgres configured, --data-dir is a mistake.
    let refused = run(&pg_config, &["export", "--data-dir", "x"]);
    assert_eq!(refused.status.code(), Some(2), "{}", stderr(&refused));
    assert!(stderr(&refused).contains("--data-dir"));

    let output = run(&pg_config, &["import", file.to_str().unwrap()]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("imported 3 images and 6 audit records"),
        "{}",
        stderr(&output)
    );
    let server = ChildServer::start(&pg_config).await;
    let (images_after, audit_after) = shown_by(&server.address).await;
    assert_eq!(images_after, images);
    assert_moved_in(&audit_after, &audit, &["ami-1", "ami-2", "イメージ"], &file);

    // Exported from postgres, while it serves: the sled export, then the IMPORT records.
    let again = run(&pg_config, &["export", "--with-audit"]);
    assert!(again.status.success(), "{}", stderr(&again));
    let again = String::from_utf8(again.stdout).unwrap();
    let sled = String::from_utf8(export.stdout).unwrap();
    let rest = again
        .strip_prefix(sled.as_str())
        .unwrap_or_else(|| panic!("the same lines, byte for byte, first:\n{sled}\n---\n{again}"));
    assert_eq!(rest.lines().count(), 3);
    assert!(rest.lines().all(|l| l.contains(r#""method":"IMPORT""#)));
}
