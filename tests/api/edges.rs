//! The edges of HTTP: oversize request headers (431), HEAD, a JSON body with a
//! duplicated key, a content coding the server does not decode, query values that are
//! not UTF-8, and invisible characters in ids and text fields.

use image_catalog::domain::change::Change;
use image_catalog::domain::image::Image;
use image_catalog::routes::TABLE;
use image_catalog::store::Store;
use reqwest::{Method, Response};
use serde_json::{Value, json};

use crate::helpers::{
    DEFAULT_POLICIES, TestApp, assert_error, config_text, config_with, default_users, encode,
    spawn_app, spawn_app_in, spawn_app_with, status_json,
};

/// Asserts a 431: the JSON message naming the limit, and the connection closed.
async fn assert_431(response: Response, limit: usize) {
    let connection = response.headers().get("connection").cloned();
    assert_error(
        status_json(response).await,
        431,
        &format!("more than the {limit} bytes of request headers"),
    );
    assert_eq!(connection.unwrap(), "close");
}

#[tokio::test]
async fn request_headers_over_the_limit_get_431_json_and_a_close() {
    let app = spawn_app().await;
    // Just under the default 16384 bytes of names and values: served.
    let response = app
        .request(Method::GET, "/healthz")
        .header("x-pad", "a".repeat(16_000))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    // One 100 KB header, and 17 KB spread over many headers.
    let response = app
        .request(Method::GET, "/healthz")
        .header("x-big", "a".repeat(100_000))
        .send()
        .await
        .unwrap();
    assert_431(response, 16384).await;
    let mut request = app.request(Method::GET, "/healthz");
    for i in 0..17 {
        request = request.header(format!("x-h{i}"), "b".repeat(1000));
    }
    assert_431(request.send().await.unwrap(), 16384).await;
    // Refused before authentication: with credentials or without, no other answer.
    for request in [
        app.admin().request(Method::GET, "/v3/images"),
        app.request(Method::GET, "/v3/images"),
    ] {
        let response = request
            .header("x-big", "a".repeat(20_000))
            .send()
            .await
            .unwrap();
        assert_431(response, 16384).await;
    }

    let app = spawn_app_with(&config_with("max_header_bytes = 2048", "")).await;
    let sized = |n: usize| {
        app.reader()
            .request(Method::GET, "/v3/images")
            .header("x-pad", "a".repeat(n))
            .send()
    };
    assert_eq!(sized(1500).await.unwrap().status(), 200);
    assert_431(sized(2100).await.unwrap(), 2048).await;
}

/// The headers a HEAD must share with its GET.
const SHARED_HEADERS: [&str; 5] = [
    "content-type",
    "etag",
    "link",
    "content-length",
    "transfer-encoding",
];

#[tokio::test]
async fn head_answers_every_get_route_as_get_without_a_body() {
    let app = spawn_app().await;
    app.seed("a", "ec2").await;
    app.seed("b", "ec2").await;
    // The event stream's GET has no end: its HEAD is tested with it (api/changes.rs).
    let mut paths: Vec<String> = TABLE
        .iter()
        .filter(|route| route.method == "GET" && route.path != "/v3/changes")
        .map(|route| route.path.replace("{id}", "a"))
        .collect();
    assert_eq!(paths.len(), 6, "{paths:?}");
    paths.extend(
        [
            "/v3/images?limit=1",
            "/v3/images?provider=ec2&limit=1&marker=a",
            "/v3/audit?limit=1",
            "/v3/image/missing",
            "/v3/images?limit=0",
        ]
        .map(String::from),
    );
    for path in &paths {
        let get = app.admin().request(Method::GET, path).send().await.unwrap();
        let head = app
            .admin()
            .request(Method::HEAD, path)
            .send()
            .await
            .unwrap();
        assert_eq!(head.status(), get.status(), "HEAD {path}");
        for name in SHARED_HEADERS {
            if path == "/metrics" && name == "content-length" {
                // The counters have moved on between the two requests.
                continue;
            }
            assert_eq!(
                head.headers().get(name),
                get.headers().get(name),
                "{name} of HEAD {path}"
            );
        }
        assert!(head.headers().contains_key("x-request-id"), "HEAD {path}");
        let body = head.bytes().await.unwrap();
        assert!(body.is_empty(), "HEAD {path} has a body: {body:?}");
    }
    // A conditional HEAD is a conditional GET.
    let etag = app.get_image_response("a").await.headers()["etag"].clone();
    let response = app
        .reader()
        .request(Method::HEAD, "/v3/image/a")
        .header("if-none-match", etag)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 304);
}

#[tokio::test]
async fn head_needs_the_policy_of_get() {
    let app = spawn_app().await;
    app.seed("a", "ec2").await;
    for path in ["/v3/images", "/v3/image/a", "/v3/audit"] {
        let response = app.request(Method::HEAD, path).send().await.unwrap();
        assert_eq!(response.status(), 401, "HEAD {path}");
        assert!(response.headers().contains_key("www-authenticate"));
    }
    let response = app
        .reader()
        .request(Method::HEAD, "/v3/audit")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403, "a reader does not hold read_audit");
    for path in ["/v3/images", "/v3/image/a"] {
        let response = app
            .reader()
            .request(Method::HEAD, path)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "HEAD {path}");
    }
    // HEAD is not allowed where GET is not.
    let response = app
        .admin()
        .request(Method::HEAD, "/v3/image")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 405);
    assert_eq!(response.headers()["allow"], "POST");
}

/// Sends `body` as JSON text, exactly as written.
async fn send_json(app: &TestApp, method: Method, path: &str, body: &str) -> (u16, Value) {
    let request = app.admin().request(method, path);
    let request = request.header("content-type", "application/json");
    status_json(request.body(body.to_owned()).send().await.unwrap()).await
}

#[tokio::test]
async fn a_duplicated_json_key_is_a_400_naming_it() {
    let app = spawn_app().await;
    let response = send_json(
        &app,
        Method::POST,
        "/v3/image",
        r#"{"id":"first","provider":"ec2","remote_user":"u","id":"second"}"#,
    )
    .await;
    assert_error(response, 400, "field 'id' is given more than once");
    for id in ["first", "second"] {
        assert_eq!(app.get_image(id).await.0, 404, "{id}");
    }

    app.seed("a", "ec2").await;
    let response = send_json(
        &app,
        Method::PUT,
        "/v3/image/a",
        r#"{"name":"x","remote_user":"root","name":"y"}"#,
    )
    .await;
    assert_error(response, 400, "field 'name' is given more than once");
    let (_, image) = app.get_image("a").await;
    assert_eq!(image["name"], "image a", "unchanged");
    assert_eq!(image["remote_user"], "ubuntu", "unchanged");
}

#[tokio::test]
async fn a_content_coding_the_server_does_not_decode_is_a_415() {
    let app = spawn_app().await;
    app.seed("a", "ec2").await;
    let create = json!({"id": "b", "provider": "ec2", "remote_user": "u"}).to_string();
    for encoding in ["gzip", "br", "deflate, gzip", "x-custom"] {
        let response = app
            .admin()
            .request(Method::POST, "/v3/image")
            .header("content-type", "application/json")
            .header("content-encoding", encoding)
            .body(create.clone())
            .send()
            .await
            .unwrap();
        assert_error(
            status_json(response).await,
            415,
            &format!("Content-Encoding '{encoding}' is not supported"),
        );
        let response = app
            .admin()
            .request(Method::PUT, "/v3/image/a")
            .header("content-type", "application/json")
            .header("content-encoding", encoding)
            .body(r#"{"name":"x"}"#)
            .send()
            .await
            .unwrap();
        assert_error(
            status_json(response).await,
            415,
            "send the body uncompressed",
        );
    }
    assert_eq!(app.get_image("b").await.0, 404);
    for encoding in ["identity", "IDENTITY"] {
        let response = app
            .admin()
            .request(Method::PUT, "/v3/image/a")
            .header("content-type", "application/json")
            .header("content-encoding", encoding)
            .body(r#"{"name":"x"}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{encoding}");
    }
}

#[tokio::test]
async fn query_values_that_are_not_utf8_are_a_400() {
    let app = spawn_app().await;
    app.seed("a", "ec2").await;
    for (path, name) in [
        ("/v3/images?marker=%FF", "marker"),
        ("/v3/images?limit=1&marker=a%C3", "marker"),
        ("/v3/images?provider=ec%FF2", "provider"),
        ("/v3/images?limit=%FF", "limit"),
        ("/v3/audit?marker=%FF", "marker"),
        ("/v3/audit?limit=1&marker=%80", "marker"),
    ] {
        let response = app.admin().get(path).await;
        assert_error(
            response,
            400,
            &format!("query parameter '{name}' is not valid UTF-8"),
        );
    }
    let response = app.admin().get("/v3/images?%FF=1").await;
    assert_error(response, 400, "not valid UTF-8");
    // Valid UTF-8, percent-encoded, still works.
    for path in [
        "/v3/images?marker=%C3%A9",
        "/v3/images?limit=1&marker=%E3%82%A4",
    ] {
        let response = app.admin().get(path).await;
        assert_eq!(response.0, 200, "{path}");
    }
}

#[tokio::test]
async fn invisible_characters_are_refused_on_create_and_update() {
    let app = spawn_app().await;
    let base = json!({"id": "ami-1", "provider": "ec2", "remote_user": "ubuntu", "name": "n"});
    for (field, value, code_point) in [
        ("id", "ami-\u{200b}123", "U+200B"),
        ("id", "ami-\u{ad}1", "U+00AD"),
        ("id", "ami-\u{200d}1", "U+200D"),
        ("id", "ami-\u{e0041}1", "U+E0041"),
        ("remote_user", "ubu\u{202e}ntu", "U+202E"),
        ("remote_user", "ubuntu\u{feff}", "U+FEFF"),
        ("name", "a\u{2066}b", "U+2066"),
        ("name", "a\u{2060}b", "U+2060"),
    ] {
        let mut body = base.clone();
        body[field] = json!(value);
        let (status, error) = app.create(body).await;
        assert_eq!(status, 400, "{field} {value:?}: {error}");
        let message = error["message"].as_str().unwrap();
        assert!(
            message.starts_with(&format!("{field} ")) && message.contains(code_point),
            "{message}"
        );
    }
    assert_eq!(app.get_image("ami-1").await.0, 404);
    // The joiners that scripts and emoji need stay allowed in text.
    let mut body = base.clone();
    body["name"] = json!("\u{1f468}\u{200d}\u{1f4bb} \u{915}\u{94d}\u{200c}\u{937}");
    assert_eq!(app.create(body).await.0, 200);

    for (field, value, code_point) in [
        ("name", "x\u{200b}", "U+200B"),
        ("remote_user", "\u{2069}root", "U+2069"),
    ] {
        let response = app
            .admin()
            .put("/v3/image/ami-1", &json!({ field: value }))
            .await;
        assert_error(response, 400, code_point);
    }
}

#[tokio::test]
async fn ids_stored_before_the_rule_stay_readable_and_deletable() {
    let legacy = "ami-\u{200b}123";
    let dir = tempfile::tempdir().unwrap();
    {
        // As written by a version that did not refuse invisible characters, in the
        // store the test config names.
        let config = image_catalog::config::Config::parse(
            &config_text(DEFAULT_POLICIES, &default_users()),
            dir.path(),
        )
        .unwrap();
        let store = Store::open(&config.store, &config.server.data_dir)
            .await
            .unwrap();
        let image: Image = serde_json::from_value(json!({
            "id": legacy, "provider": "ec2", "remote_user": "u\u{200b}", "name": "n\u{202e}"
        }))
        .unwrap();
        store.apply(Change::Create(image), "old").await.unwrap();
        store.shutdown().unwrap();
    }
    let app = spawn_app_in(dir, &config_text(DEFAULT_POLICIES, &default_users())).await;
    let path = format!("/v3/image/{}", encode(legacy));

    let (status, image) = app.get_image(legacy).await;
    assert_eq!(status, 200);
    assert_eq!(image["id"], legacy);
    let response = app
        .admin()
        .get(&format!("/v3/images?limit=5&marker={}", encode("ami")))
        .await;
    let (_, list) = response;
    assert_eq!(list[0]["id"], legacy);
    let response = app
        .admin()
        .get(&format!("/v3/images?marker={}", encode(legacy)))
        .await;
    assert_eq!(response, (200, json!([])));

    // An update of another field keeps the stored values it does not change.
    let response = app.admin().put(&path, &json!({"name": "renamed"})).await;
    let (status, updated) = response;
    assert_eq!(status, 200, "{updated}");
    assert_eq!(updated["image"]["remote_user"], "u\u{200b}");

    let response = app.admin().delete(&path).await;
    assert_eq!(response.0, 200);
    assert_eq!(app.get_image(legacy).await.0, 404);
}
