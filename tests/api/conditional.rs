//! ETags and conditional requests, and concurrent updates of one image.

use reqwest::Method;
use serde_json::json;

use crate::helpers::{TestApp, assert_error, spawn_app, status_json};

async fn etag_of(app: &TestApp, id: &str) -> String {
    let response = app.get_image_response(id).await;
    assert_eq!(response.status(), 200);
    response.headers()["etag"].to_str().unwrap().to_owned()
}

#[tokio::test]
async fn etag_is_strong_and_changes_with_the_record() {
    let app = spawn_app().await;
    app.seed("a", "ec2").await;
    let first = etag_of(&app, "a").await;
    assert!(
        first.starts_with('"') && first.ends_with('"'),
        "strong: {first}"
    );
    assert_eq!(etag_of(&app, "a").await, first, "stable while unchanged");

    let response = app
        .admin()
        .request(Method::PUT, "/v3/image/a")
        .json(&json!({"name": "changed"}))
        .send()
        .await
        .unwrap();
    let from_put = response.headers()["etag"].to_str().unwrap().to_owned();
    assert_ne!(from_put, first);
    assert_eq!(
        etag_of(&app, "a").await,
        from_put,
        "PUT gives the new record's tag"
    );
}

#[tokio::test]
async fn if_none_match_gives_304() {
    let app = spawn_app().await;
    app.seed("a", "ec2").await;
    let etag = etag_of(&app, "a").await;
    for value in [
        etag.clone(),
        format!("W/{etag}"),
        "\"other\", ".to_string() + &etag,
        "*".into(),
    ] {
        let response = app
            .reader()
            .request(Method::GET, "/v3/image/a")
            .header("if-none-match", &value)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 304, "{value}");
        assert_eq!(response.headers()["etag"], etag.as_str());
        assert!(response.bytes().await.unwrap().is_empty());
    }
    let response = app
        .reader()
        .request(Method::GET, "/v3/image/a")
        .header("if-none-match", "\"stale\"")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn if_match_on_put_is_a_compare_and_swap() {
    let app = spawn_app().await;
    app.seed("a", "ec2").await;
    let etag = etag_of(&app, "a").await;
    let put = |if_match: String, name: &'static str| {
        app.admin()
            .request(Method::PUT, "/v3/image/a")
            .header("if-match", if_match)
            .json(&json!({ "name": name }))
            .send()
    };
    assert_error(
        status_json(put("\"stale\"".into(), "lost").await.unwrap()).await,
        412,
        "If-Match",
    );
    // A weak tag never matches under the strong comparison If-Match uses.
    assert_error(
        status_json(put(format!("W/{etag}"), "lost").await.unwrap()).await,
        412,
        "If-Match",
    );
    let (_, shown) = app.get_image("a").await;
    assert_eq!(shown["name"], "image a", "nothing changed");

    let response = put(etag.clone(), "won").await.unwrap();
    assert_eq!(response.status(), 200);
    // The same tag again is now stale: a second writer that read the old version loses.
    assert_error(
        status_json(put(etag, "late").await.unwrap()).await,
        412,
        "If-Match",
    );
    assert_eq!(put("*".into(), "any").await.unwrap().status(), 200);
    let (_, shown) = app.get_image("a").await;
    assert_eq!(shown["name"], "any");
}

#[tokio::test]
async fn if_match_on_delete_is_a_compare_and_swap() {
    let app = spawn_app().await;
    app.seed("a", "ec2").await;
    let response = app
        .admin()
        .request(Method::DELETE, "/v3/image/a")
        .header("if-match", "\"stale\"")
        .send()
        .await
        .unwrap();
    assert_error(status_json(response).await, 412, "If-Match");
    assert_eq!(app.get_image("a").await.0, 200, "still there");
    let etag = etag_of(&app, "a").await;
    let response = app
        .admin()
        .request(Method::DELETE, "/v3/image/a")
        .header("if-match", etag)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn concurrent_updates_never_mix_fields() {
    let app = spawn_app().await;
    app.seed("a", "ec2").await;
    let updates = (0..40).map(|i| {
        app.admin()
            .request(Method::PUT, "/v3/image/a")
            .json(&json!({"remote_user": format!("user{i}"), "name": format!("name{i}")}))
            .send()
    });
    let responses = futures_util::future::join_all(updates).await;
    let mut echoed = Vec::new();
    for response in responses {
        let (status, body) = status_json(response.unwrap()).await;
        assert_eq!(status, 200);
        echoed.push(body["image"].clone());
    }
    // Each response shows one write whole.
    for image in &echoed {
        let user = image["remote_user"].as_str().unwrap();
        assert_eq!(image["name"], user.replace("user", "name"));
    }
    let (_, last) = app.get_image("a").await;
    let user = last["remote_user"].as_str().unwrap();
    assert_eq!(last["name"], user.replace("user", "name"), "{last}");
}

#[tokio::test]
async fn an_unquoted_if_match_is_a_400_saying_to_quote_it() {
    let app = spawn_app().await;
    app.seed("q", "ec2").await;
    let etag = etag_of(&app, "q").await;
    let bare = etag.trim_matches('"');
    for method in [Method::PUT, Method::DELETE] {
        let response = app
            .admin()
            .request(method.clone(), "/v3/image/q")
            .header("If-Match", bare)
            .json(&json!({"name": "renamed"}))
            .send()
            .await
            .unwrap();
        assert_error(
            status_json(response).await,
            400,
            &format!("If-Match: \"{bare}\""),
        );
    }
    assert_eq!(etag_of(&app, "q").await, etag, "nothing changed");
}
