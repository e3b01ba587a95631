//! The audit trail: one record per successful change, newest first, paged.

use reqwest::Method;
use serde_json::json;

use crate::helpers::{assert_error, spawn_app, status_json};

#[tokio::test]
async fn each_successful_change_is_audited_newest_first() {
    let app = spawn_app().await;
    app.seed("a", "ec2").await;
    // Refused requests leave no record.
    assert_eq!(
        app.create(json!({"id": "a", "provider": "ec2", "remote_user": "u"}))
            .await
            .0,
        409
    );
    assert_eq!(
        app.reader()
            .request(Method::DELETE, "/v3/image/a")
            .send()
            .await
            .unwrap()
            .status(),
        403
    );
    let response = app.admin().put("/v3/image/a", &json!({"name": "n"})).await;
    assert_eq!(response.0, 200);
    let response = app.admin().delete("/v3/image/a").await;
    assert_eq!(response.0, 200);

    let (status, body) = app.admin().get("/v3/audit").await;
    assert_eq!(status, 200);
    let records = body.as_array().unwrap();
    let summary: Vec<(&str, &str, &str, u64)> = records
        .iter()
        .map(|r| {
            (
                r["method"].as_str().unwrap(),
                r["id"].as_str().unwrap(),
                r["user"].as_str().unwrap(),
                r["status"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("DELETE", "a", "admin", 200),
            ("PUT", "a", "admin", 200),
            ("POST", "a", "admin", 200)
        ]
    );
    let seqs: Vec<u64> = records.iter().map(|r| r["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] > w[1]), "{seqs:?}");
    for record in records {
        let keys: Vec<&str> = record
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(
            sorted,
            [
                "after", "before", "id", "method", "seq", "status", "time", "user"
            ]
        );
        assert_rfc3339_utc(record["time"].as_str().unwrap());
    }
}

fn assert_rfc3339_utc(time: &str) {
    let parsed = time::OffsetDateTime::parse(time, &time::format_description::well_known::Rfc3339);
    assert!(parsed.is_ok(), "{time}");
    assert!(time.ends_with('Z'), "{time}");
}

#[tokio::test]
async fn the_audit_pages_with_limit_and_marker() {
    let app = spawn_app().await;
    for i in 0..7 {
        app.seed(&format!("img{i}"), "ec2").await;
    }
    let mut path = "/v3/audit?limit=3".to_string();
    let mut ids = Vec::new();
    loop {
        let response = app
            .admin()
            .request(Method::GET, &path)
            .send()
            .await
            .unwrap();
        let link = response
            .headers()
            .get("link")
            .map(|l| l.to_str().unwrap().to_owned());
        let (_, body) = status_json(response).await;
        ids.extend(
            body.as_array()
                .unwrap()
                .iter()
                .map(|r| r["id"].as_str().unwrap().to_owned()),
        );
        match link {
            Some(link) => {
                path = link
                    .strip_prefix('<')
                    .and_then(|l| l.strip_suffix(">; rel=\"next\""))
                    .unwrap()
                    .to_owned();
                assert!(path.starts_with("/v3/audit?limit=3&marker="), "{path}");
            }
            None => break,
        }
    }
    let expected: Vec<String> = (0..7).rev().map(|i| format!("img{i}")).collect();
    assert_eq!(ids, expected);

    for bad in ["marker=abc", "limit=0", "since=1"] {
        let response = app.admin().get(&format!("/v3/audit?{bad}")).await;
        assert_error(response, 400, "");
    }
}

#[tokio::test]
async fn reading_the_audit_needs_read_audit() {
    let app = spawn_app().await;
    let response = app.reader().get("/v3/audit").await;
    assert_error(response, 403, "'read_audit'");
}
