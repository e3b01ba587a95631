//! What operators and tools use: the OpenAPI document, /metrics, and an access log
//! that never shows a secret.

use std::process::Stdio;

use image_catalog::logging::QUEUE_BYTES;
use reqwest::Method;

use crate::helpers::{
    ADMIN, BOT_TOKEN, DEFAULT_POLICIES, READER, config_text, default_users, metric, on_postgres,
    spawn_app, within_a_minute,
};
use crate::process::{ChildServer, binary, write_config};

#[tokio::test]
async fn the_document_covers_every_route_with_its_policy() {
    let app = spawn_app().await;
    let response = app.get("/v3/openapi.json").await;
    let (status, doc) = response;
    assert_eq!(status, 200, "open to anyone");
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    assert_eq!(
        doc["components"]["securitySchemes"]["basic"]["scheme"],
        "basic"
    );
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    assert_eq!(
        doc["components"]["schemas"]["Provider"]["enum"],
        serde_json::json!(["ec2", "openstack", "static"])
    );

    let mut documented = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            documented += 1;
            let route = image_catalog::routes::TABLE
                .iter()
                .find(|r| r.path == path && r.method.eq_ignore_ascii_case(method))
                .unwrap_or_else(|| panic!("{method} {path} is documented but not routed"));
            let responses = operation["responses"].as_object().unwrap();
            assert!(responses.contains_key("200"), "{method} {path}");
            match route.policy {
                Some(policy) => {
                    assert_eq!(operation["x-policy"], policy, "{method} {path}");
                    let description = operation["description"].as_str().unwrap();
                    assert!(description.contains(policy), "{method} {path}");
                    for status in ["401", "403", "406"] {
                        assert!(responses.contains_key(status), "{method} {path} {status}");
                    }
                }
                None => assert_eq!(operation["security"], serde_json::json!([])),
            }
        }
    }
    assert_eq!(
        documented,
        image_catalog::routes::TABLE.len(),
        "every route is documented"
    );
}

#[tokio::test]
async fn metrics_count_requests_failures_and_images() {
    let app = spawn_app().await;
    app.seed("a", "ec2").await;
    app.seed("b", "ec2").await;
    for _ in 0..3 {
        let response = app.reader().get("/v3/image/a").await;
        assert_eq!(response.0, 200);
    }
    let wrong = app
        .request(Method::GET, "/v3/images")
        .basic_auth(READER.0, Some("wrong"))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    app.request(Method::GET, "/no/such/path/123")
        .send()
        .await
        .unwrap();

    let response = app.request(Method::GET, "/metrics").send().await.unwrap();
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    let text = response.text().await.unwrap();
    assert_eq!(
        metric(
            &text,
            r#"image_catalog_http_requests_total{method="GET",route="/v3/image/{id}",status="200"}"#
        ),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            r#"image_catalog_http_requests_total{method="POST",route="/v3/image",status="200"}"#
        ),
        Some(2.0)
    );
    assert_eq!(
        metric(
            &text,
            r#"image_catalog_http_requests_total{method="GET",route="unmatched",status="404"}"#
        ),
        Some(1.0),
        "unknown paths share one series"
    );
    assert_eq!(
        metric(&text, "image_catalog_auth_failures_total"),
        Some(1.0)
    );
    assert_eq!(metric(&text, "image_catalog_images "), Some(2.0));
    assert_eq!(metric(&text, "image_catalog_store_up "), Some(1.0));
    if on_postgres() {
        let open = metric(&text, r#"image_catalog_database_connections{state="open"}"#);
        assert!(open.is_some_and(|n| n >= 1.0), "{text}");
    } else {
        // The embedded store's files; a database's size is its own to report.
        assert!(metric(&text, "image_catalog_store_size_bytes").unwrap() > 0.0);
    }
    assert_eq!(
        metric(
            &text,
            r#"image_catalog_http_request_duration_seconds_count{method="GET",route="/v3/image/{id}"}"#
        ),
        Some(3.0)
    );
}

#[tokio::test]
async fn the_access_log_names_requests_but_never_a_secret() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &config_text(DEFAULT_POLICIES, &default_users()));
    let mut server = ChildServer::start(&config).await;
    let client = reqwest::Client::new();
    let url = format!("{}/v3/images", server.address);
    let wrong_password = "wrong-Pa55word-never-logged";
    let wrong_token = "wrong-t0ken-never-logged";
    for request in [
        client.get(&url).basic_auth(ADMIN.0, Some(ADMIN.1)),
        client.get(&url).basic_auth(ADMIN.0, Some(wrong_password)),
        client.get(&url).bearer_auth(BOT_TOKEN),
        client.get(&url).bearer_auth(wrong_token),
        client
            .get(&url)
            .header("x-request-id", "trace-me-42")
            .basic_auth(READER.0, Some(READER.1)),
    ] {
        request.send().await.unwrap();
    }
    server.signal("TERM");
    let log = server.rest_of_log().await.join("\n");
    for secret in [ADMIN.1, READER.1, wrong_password, BOT_TOKEN, wrong_token] {
        assert!(!log.contains(secret), "the log shows {secret:?}:\n{log}");
    }
    let line = log
        .lines()
        .find(|l| l.contains("request_id=trace-me-42"))
        .expect("an access line per request, with the request id");
    for part in [
        "GET",
        "/v3/images",
        " 200 ",
        "client=127.0.0.1",
        "user=reader",
        "ms",
    ] {
        assert!(line.contains(part), "{part:?} missing in {line}");
    }
    let access_lines = log.lines().filter(|l| l.contains("request_id=")).count();
    assert_eq!(access_lines, 5, "{log}");
}

#[tokio::test]
async fn metrics_show_the_audit_trail_size_and_retention_is_a_setting() {
    let config = crate::helpers::config_with("", "[audit]\nkeep_days = 30\n");
    assert!(config.contains("keep_days = 30"));
    let app = crate::helpers::spawn_app_with(&config).await;
    app.seed("a", "ec2").await;
    app.seed("b", "ec2").await;
    let text = app
        .request(Method::GET, "/metrics")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(metric(&text, "image_catalog_audit_records "), Some(2.0));
    let bytes = metric(&text, "image_catalog_audit_bytes ").unwrap();
    assert!(bytes > 100.0 && bytes < 1000.0, "{bytes}");
}

/// Kills the server when the test ends, passed or not.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn a_log_nobody_reads_drops_lines_counts_them_and_says_so_once_read() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &config_text(DEFAULT_POLICIES, &default_users()));
    let mut server = Killed(
        binary()
            .arg("--config")
            .arg(&config)
            .arg("serve")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    // Read the log until the address, then stop reading it: the pipe fills up.
    let mut log = std::io::BufReader::new(server.0.stderr.take().unwrap());
    let address = loop {
        let mut line = String::new();
        assert!(log.read_line(&mut line).unwrap() > 0, "the server exited");
        if let Some(rest) = line.split("listening on ").nth(1) {
            break rest.split_whitespace().next().unwrap().to_owned();
        }
    };

    // A 404's access line holds its path: 4 KB lines, three times what the queue holds.
    let client = reqwest::Client::new();
    let url = format!("{address}/{}", "x".repeat(4000));
    for _ in 0..3 * QUEUE_BYTES / 4000 {
        let response = client.get(&url).send().await.unwrap();
        assert_eq!(response.status(), 404, "requests are answered, log or not");
    }
    let text = client
        .get(format!("{address}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let dropped = metric(&text, "image_catalog_log_lines_dropped_total")
        .unwrap_or_else(|| panic!("no dropped-lines counter in {text}"));
    assert!(dropped > 0.0, "{dropped}");

    // Reading again, the log says what it lost.
    let warning = tokio::task::spawn_blocking(move || {
        log.lines()
            .map_while(Result::ok)
            .find(|line| line.contains("log lines were dropped while the log was not being read"))
    });
    let warning = within_a_minute("the warning", warning)
        .await
        .unwrap()
        .expect("a warning about the dropped lines");
    assert!(warning.contains("WARN"), "{warning}");
}
