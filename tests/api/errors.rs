//! Every error status of docs/contract.md §1 in its one JSON shape, actix's own errors included.

use reqwest::Method;
use serde_json::json;

use crate::helpers::{MAX_BODY, assert_error, spawn_app, status_json};

#[tokio::test]
async fn unknown_route_is_404_json() {
    let app = spawn_app().await;
    // (`/` leads to the page for people: tests/api/ui.rs.)
    for path in ["/v3", "/v3/imagez", "/v2/images", "/v3/image/a/b", "/uix"] {
        let response = app.admin().get(path).await;
        assert_error(response, 404, "no route GET");
    }
}

#[tokio::test]
async fn wrong_method_is_405_with_allow() {
    let app = spawn_app().await;
    for (method, path, allow) in [
        (Method::POST, "/v3/images", "GET, HEAD"),
        (Method::GET, "/v3/image", "POST"),
        (Method::PATCH, "/v3/image/x", "GET, HEAD, PUT, DELETE"),
        (Method::POST, "/v3/image/x", "GET, HEAD, PUT, DELETE"),
        (Method::DELETE, "/v3/audit", "GET, HEAD"),
        (Method::POST, "/healthz", "GET, HEAD"),
        (Method::PUT, "/metrics", "GET, HEAD"),
        (Method::DELETE, "/v3/openapi.json", "GET, HEAD"),
    ] {
        let response = app
            .admin()
            .request(method.clone(), path)
            .send()
            .await
            .unwrap();
        assert_eq!(response.headers()["allow"], allow, "{method} {path}");
        assert_error(
            status_json(response).await,
            405,
            &format!("method {method} is not allowed"),
        );
    }
    // The plural path is the list; creating is the singular one.
    let response = app
        .admin()
        .request(Method::POST, "/v3/images")
        .send()
        .await
        .unwrap();
    let response = status_json(response).await;
    assert_error(response, 405, "to create an image, POST to /v3/image");
}

#[tokio::test]
async fn accept_must_admit_json() {
    let app = spawn_app().await;
    app.seed("a", "ec2").await;
    for accept in [
        "application/json",
        "application/*",
        "*/*",
        "text/html;q=0.9, application/json;q=0.8",
        "APPLICATION/JSON; charset=utf-8",
    ] {
        let response = app
            .reader()
            .request(Method::GET, "/v3/image/a")
            .header("accept", accept)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{accept}");
    }
    for accept in [
        "text/html",
        "application/xml",
        "application/json;q=0",
        "text/*",
    ] {
        let response = app
            .reader()
            .request(Method::GET, "/v3/image/a")
            .header("accept", accept)
            .send()
            .await
            .unwrap();
        assert_error(status_json(response).await, 406, accept);
    }
}

#[tokio::test]
async fn writes_need_a_json_content_type() {
    let app = spawn_app().await;
    let body = r#"{"id":"a","provider":"ec2","remote_user":"u"}"#;
    let post = |content_type: Option<&str>| {
        let mut request = app.admin().request(Method::POST, "/v3/image").body(body);
        if let Some(ct) = content_type {
            request = request.header("content-type", ct);
        }
        request.send()
    };
    assert_error(
        status_json(post(None).await.unwrap()).await,
        415,
        "no Content-Type",
    );
    assert_error(
        status_json(post(Some("text/plain")).await.unwrap()).await,
        415,
        "'text/plain'",
    );
    assert_error(
        status_json(
            post(Some("application/x-www-form-urlencoded"))
                .await
                .unwrap(),
        )
        .await,
        415,
        "application/json",
    );
    let response = post(Some("application/json; charset=utf-8")).await.unwrap();
    assert_eq!(response.status(), 200);

    let response = app
        .admin()
        .request(Method::PUT, "/v3/image/a")
        .header("content-type", "text/plain")
        .body(r#"{"name":"x"}"#)
        .send()
        .await
        .unwrap();
    assert_error(
        status_json(response).await,
        415,
        "Content-Type must be application/json",
    );
}

#[tokio::test]
async fn bodies_over_the_limit_are_413() {
    let app = spawn_app().await;
    let name = "n".repeat(MAX_BODY);
    let response = app
        .create(json!({"id": "big", "provider": "ec2", "remote_user": "u", "name": name}))
        .await;
    assert_error(response, 413, &format!("{MAX_BODY} bytes"));

    // Without a Content-Length the limit still holds while reading.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        vec![Ok(vec![b' '; MAX_BODY]), Ok(b"{}".to_vec())];
    let response = app
        .admin()
        .request(Method::POST, "/v3/image")
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap();
    assert_error(status_json(response).await, 413, "larger than");
    assert_error(app.get_image("big").await, 404, "big");
}

#[tokio::test]
async fn malformed_bodies_are_400_naming_the_problem() {
    let app = spawn_app().await;
    for (body, words) in [
        ("", "not valid JSON"),
        ("{", "not valid JSON"),
        ("nonsense", "not valid JSON"),
        ("\"a string\"", "must be a JSON object, got a string"),
        ("null", "must be a JSON object, got null"),
        (
            "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[",
            "not valid JSON",
        ),
    ] {
        let response = app
            .admin()
            .request(Method::POST, "/v3/image")
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_error(status_json(response).await, 400, words);
    }
    let invalid_utf8 = app
        .admin()
        .request(Method::POST, "/v3/image")
        .header("content-type", "application/json")
        .body(vec![b'"', 0xff, b'"'])
        .send()
        .await
        .unwrap();
    assert_error(status_json(invalid_utf8).await, 400, "not valid JSON");
}

#[tokio::test]
async fn bad_path_and_query_values_are_400() {
    let app = spawn_app().await;
    for (path, words) in [
        ("/v3/image/%20space", "id must not contain whitespace"),
        ("/v3/image/a%25b", "id must not contain"),
        ("/v3/image/%FF", "not valid UTF-8"),
        ("/v3/image/%C3", "not valid UTF-8"),
    ] {
        let response = app.reader().get(path).await;
        assert_error(response, 400, words);
    }
    for query in [
        "limit=abc",
        "limit=0",
        "limit=1001",
        "limit=-5",
        "provider=gce",
        "marker=a%20b",
        "limt=5",
        "limit=1&limit=2",
    ] {
        let response = app.reader().get(&format!("/v3/images?{query}")).await;
        assert_error(response, 400, "");
    }
}

#[tokio::test]
async fn request_ids_are_echoed_when_sane_and_made_otherwise() {
    let app = spawn_app().await;
    let response = app
        .request(Method::GET, "/healthz")
        .header("x-request-id", "deploy-42.a")
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-request-id"], "deploy-42.a");
    let response = app
        .request(Method::GET, "/healthz")
        .header("x-request-id", "has spaces and <html>")
        .send()
        .await
        .unwrap();
    let made = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(!made.is_empty() && !made.contains(' '), "{made}");
    let response = app.request(Method::GET, "/nope").send().await.unwrap();
    assert!(
        response.headers().get("x-request-id").is_some(),
        "errors carry one too"
    );
}

#[tokio::test]
async fn healthz_answers_without_credentials() {
    let app = spawn_app().await;
    let (status, body) = app.get("/healthz").await;
    assert_eq!((status, body), (200, json!({"status": "ok"})));
}
