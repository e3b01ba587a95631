//! `export` and `import`: JSON lines, all-or-nothing, exact round trip, and refusal of
//! a data dir that a running server holds.

use crate::helpers::{DEFAULT_POLICIES, config_text, default_users};
use crate::process::{ChildServer, run, stderr, write_config};

const LINES: &str = r#"{"id":"ami-2","provider":"ec2","remote_user":"ubuntu","name":"Ubuntu"}
{"id":"イメージ","provider":"openstack","remote_user":"centos","name":"名前 \"quoted\" \\ back"}
{"id":"ami-1","provider":"ec2","remote_user":"ec2-user"}

{"id":"tmpl:base","provider":"static","remote_user":"root","name":""}
"#;

#[test]
fn export_import_round_trip_is_exact() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &config_text(DEFAULT_POLICIES, &default_users()));
    let source = dir.path().join("images.jsonl");
    std::fs::write(&source, LINES).unwrap();

    let output = run(&config, &["import", source.to_str().unwrap()]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(stderr(&output).contains("imported 4 images"));

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
        ["ami-1", "ami-2", "tmpl:base", "イメージ"],
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
    assert!(stderr(&output).contains("imported 4 images"));
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
