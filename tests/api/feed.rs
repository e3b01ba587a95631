//! The audit trail as a feed: records that say what changed (`before`, `after`),
//! one image's history (`?id=`), records after a seq oldest first (`?after=`), the
//! `X-Audit-Seq` of every listing, and 410 when the feed cannot go on.

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{
    TestApp, assert_error, config_text, config_with, default_users, policies_without_read_images,
    seqs, spawn_app, spawn_app_in, spawn_app_with, status_json,
};
use crate::process::run;

/// `path` as `caller` sees it: status, `X-Audit-Seq`, `Link` and the JSON body.
async fn fetch(request: reqwest::RequestBuilder) -> (u16, Option<u64>, Option<String>, Value) {
    let response = request.send().await.unwrap();
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    };
    let seq = header("x-audit-seq").map(|s| s.parse().unwrap());
    let link = header("link");
    let (status, body) = status_json(response).await;
    (status, seq, link, body)
}

/// The path a `Link: <path>; rel="next"` names.
fn next_path(link: &str) -> String {
    link.strip_prefix('<')
        .and_then(|l| l.strip_suffix(">; rel=\"next\""))
        .unwrap_or_else(|| panic!("not a next link: {link}"))
        .to_owned()
}

async fn admin_get(app: &TestApp, path: &str) -> (u16, Option<u64>, Option<String>, Value) {
    fetch(app.admin().request(Method::GET, path)).await
}

#[tokio::test]
async fn records_say_what_the_image_was_and_became() {
    let app = spawn_app().await;
    let first = json!({"id": "a", "provider": "ec2", "remote_user": "ubuntu", "name": "one"});
    assert_eq!(app.create(first.clone()).await.0, 200);
    let (status, _) = app.admin().put("/v3/image/a", json!({"name": "two"})).await;
    assert_eq!(status, 200);
    let second = json!({"id": "a", "provider": "ec2", "remote_user": "ubuntu", "name": "two"});
    assert_eq!(app.admin().delete("/v3/image/a").await.0, 200);

    let (status, body) = app.admin().get("/v3/audit").await;
    assert_eq!(status, 200);
    let shown: Vec<(&str, &Value, &Value)> = body
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["method"].as_str().unwrap(), &r["before"], &r["after"]))
        .collect();
    assert_eq!(
        shown,
        [
            ("DELETE", &second, &Value::Null),
            ("PUT", &first, &second),
            ("POST", &Value::Null, &first),
        ]
    );
}

#[tokio::test]
async fn read_audit_alone_reveals_no_image() {
    // The reader may read the trail but not the images.
    let policies = policies_without_read_images();
    let app = spawn_app_with(&config_text(&policies, &default_users())).await;
    app.seed("a", "ec2").await;
    app.seed("b", "ec2").await;
    for path in [
        "/v3/audit",
        "/v3/audit?limit=1",
        "/v3/audit?after=0",
        "/v3/audit?id=a",
    ] {
        let (status, _, _, body) = fetch(app.reader().request(Method::GET, path)).await;
        assert_eq!(status, 200, "{path}: {body}");
        for record in body.as_array().unwrap() {
            let keys: Vec<&String> = record.as_object().unwrap().keys().collect();
            assert_eq!(keys.len(), 6, "{path}: {record}");
            assert!(record.get("before").is_none() && record.get("after").is_none());
            assert!(record["seq"].is_u64() && record["id"].is_string());
        }
        let (_, _, _, full) = admin_get(&app, path).await;
        assert!(
            full[0]["after"]["id"].is_string(),
            "the admin sees it: {full}"
        );
    }
}

#[tokio::test]
async fn one_images_history_through_id() {
    let app = spawn_app().await;
    app.seed("a", "ec2").await; // 1
    app.seed("ab", "ec2").await; // 2
    app.seed("b", "ec2").await; // 3
    assert_eq!(
        app.admin().put("/v3/image/a", json!({"name": "x"})).await.0,
        200
    ); // 4
    assert_eq!(app.admin().delete("/v3/image/b").await.0, 200); // 5

    let (status, seq, _, body) = admin_get(&app, "/v3/audit?id=a").await;
    assert_eq!((status, seq), (200, Some(5)));
    assert_eq!(seqs(&body), [4, 1], "newest first, and not 'ab'");
    let (_, _, _, body) = admin_get(&app, "/v3/audit?id=a&after=0").await;
    assert_eq!(seqs(&body), [1, 4], "oldest first");
    let (_, _, _, body) = admin_get(&app, "/v3/audit?id=b&after=3").await;
    assert_eq!(seqs(&body), [5]);
    let (_, _, link, body) = admin_get(&app, "/v3/audit?id=a&limit=1").await;
    assert_eq!(seqs(&body), [4]);
    let next = next_path(&link.unwrap());
    assert_eq!(next, "/v3/audit?id=a&limit=1&marker=4");
    let (_, _, link, body) = admin_get(&app, &next).await;
    assert_eq!((seqs(&body), link), (vec![1], None));
    let (status, _, _, body) = admin_get(&app, "/v3/audit?id=never").await;
    assert_eq!((status, body), (200, json!([])));
    let too_long = format!("/v3/audit?id={}", "x".repeat(256));
    assert_error(app.admin().get(&too_long).await, 400, "id");
}

#[tokio::test]
async fn the_feed_pages_oldest_first_after_a_seq() {
    let app = spawn_app().await;
    for i in 0..7 {
        app.seed(&format!("img{i}"), "ec2").await;
    }
    let (status, seq, link, body) = admin_get(&app, "/v3/audit?after=2&limit=3").await;
    assert_eq!((status, seq), (200, Some(7)));
    assert_eq!(seqs(&body), [3, 4, 5]);
    let next = next_path(&link.unwrap());
    assert_eq!(next, "/v3/audit?limit=3&after=5");
    let (_, _, link, body) = admin_get(&app, &next).await;
    assert_eq!((seqs(&body), link), (vec![6, 7], None), "not full: no next");
    // 100 a page by default.
    let (_, _, link, body) = admin_get(&app, "/v3/audit?after=0").await;
    assert_eq!((seqs(&body), link), ((1..=7).collect(), None));
    let (status, seq, _, body) = admin_get(&app, "/v3/audit?after=7").await;
    assert_eq!(
        (status, seq, body),
        (200, Some(7), json!([])),
        "nothing newer yet"
    );
    for i in 7..110 {
        app.seed(&format!("img{i}"), "ec2").await;
    }
    let (_, _, link, body) = admin_get(&app, "/v3/audit?after=0").await;
    assert_eq!(seqs(&body), (1..=100).collect::<Vec<_>>());
    assert_eq!(next_path(&link.unwrap()), "/v3/audit?after=100");
}

#[tokio::test]
async fn bad_feed_queries_are_400s() {
    let app = spawn_app().await;
    app.seed("a", "ec2").await;
    for (query, words) in [
        ("after=abc", "after must be"),
        ("after=-1", "after must be"),
        ("after=1.5", "after must be"),
        ("after=1&marker=2", "do not go together"),
        ("after=0&limit=1001", "limit"),
        ("after=0&limit=0", "limit"),
        ("after=0&since=1", "since"),
    ] {
        let response = app.admin().get(&format!("/v3/audit?{query}")).await;
        assert_error(response, 400, words);
    }
    // The policy before anything else.
    assert_error(
        app.reader().get("/v3/audit?after=abc").await,
        403,
        "read_audit",
    );
}

#[tokio::test]
async fn every_listing_says_the_highest_durable_seq() {
    let app = spawn_app().await;
    let seq_of = |path: &'static str| {
        let app = &app;
        async move { fetch(app.reader().request(Method::GET, path)).await.1 }
    };
    assert_eq!(seq_of("/v3/images").await, Some(0), "nothing yet");
    app.seed("a", "ec2").await;
    app.seed("b", "openstack").await;
    assert_eq!(seq_of("/v3/images").await, Some(2));
    assert_eq!(seq_of("/v3/images?limit=1").await, Some(2));
    assert_eq!(
        seq_of("/v3/images?limit=1").await,
        Some(2),
        "a cached page too"
    );
    assert_eq!(seq_of("/v3/images?provider=ec2&limit=5").await, Some(2));
    app.seed("c", "ec2").await;
    assert_eq!(
        seq_of("/v3/images?limit=1").await,
        Some(3),
        "not the cached page's"
    );
    let head = app
        .reader()
        .request(Method::HEAD, "/v3/images")
        .send()
        .await
        .unwrap();
    assert_eq!(head.headers()["x-audit-seq"], "3");
    let (_, seq, _, _) = admin_get(&app, "/v3/audit").await;
    assert_eq!(seq, Some(3));
    let (_, seq, _, _) = admin_get(&app, "/v3/audit?limit=1").await;
    assert_eq!(seq, Some(3));
}

#[tokio::test]
async fn a_feed_that_cannot_go_on_is_a_410() {
    // An old trail moved in (seqs 1 to 3, from 2020), then one image (seq 4, now),
    // with a retention of a day: the old records are pruned.
    let dir = tempfile::tempdir().unwrap();
    let config = config_with("", "[audit]\nkeep_days = 1\n");
    let path = crate::process::write_config(dir.path(), &config);
    let file = dir.path().join("old.jsonl");
    let mut lines = String::from(r#"{"id":"fresh","provider":"ec2","remote_user":"u"}"#);
    for seq in 1..=3 {
        lines.push_str(&format!(
            "\n{{\"seq\":{seq},\"time\":\"2020-01-01T00:00:00.000000Z\",\"user\":\"old\",\
             \"method\":\"POST\",\"id\":\"o{seq}\",\"status\":200}}"
        ));
    }
    std::fs::write(&file, lines).unwrap();
    let imported = run(&path, &["import", file.to_str().unwrap()]);
    assert!(imported.status.success(), "{imported:?}");
    let app = spawn_app_in(dir, &config).await;
    app.prune_audit().await;
    let (status, seq, _, body) = admin_get(&app, "/v3/audit?after=0").await;
    assert_eq!((status, seq), (410, None), "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("pruned"),
        "{body}"
    );
    assert_error(app.admin().get("/v3/audit?after=2").await, 410, "keep_days");
    let (status, _, _, body) = admin_get(&app, "/v3/audit?after=3").await;
    assert_eq!(
        (status, seqs(&body)),
        (200, vec![4]),
        "nothing missing after 3"
    );
    let (status, _, _, body) = admin_get(&app, "/v3/audit?after=4").await;
    assert_eq!((status, body), (200, json!([])));
    assert_error(
        app.admin().get("/v3/audit?after=5").await,
        410,
        "above the highest seq this catalog has given (4)",
    );
}
