//! ETags and conditional requests, and concurrent updates of one image.

use reqwest::Method;
use serde_json::{Value, json};

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
    // On each image, one writer sets only `remote_user` and another only `name`, each
    // in order, at the same time. An update that wrote back a stale copy of the other
    // field (a lost update) would leave that field behind its writer's last value, or
    // show it going back in a later answer.
    const IMAGES: usize = 4;
    const WRITES: usize = 25;
    let app = spawn_app().await;
    for i in 0..IMAGES {
        app.seed(&format!("mix{i}"), "ec2").await;
    }
    let writer = |image: usize, field: &'static str| {
        let app = &app;
        async move {
            let mut echoed = Vec::new();
            for k in 1..=WRITES {
                let (status, body) = app
                    .admin()
                    .put(
                        &format!("/v3/image/mix{image}"),
                        json!({ field: format!("{field}-{k:02}") }),
                    )
                    .await;
                assert_eq!(status, 200, "{body}");
                echoed.push(body["image"].clone());
            }
            echoed
        }
    };
    let writers = (0..IMAGES).flat_map(|i| [writer(i, "remote_user"), writer(i, "name")]);
    let echoed = futures_util::future::join_all(writers).await;
    // The other field, as each writer saw it after each of its writes.
    let number = |value: &Value, field: &str| -> usize {
        value[field]
            .as_str()
            .and_then(|v| v.strip_prefix(&format!("{field}-")))
            .map_or(0, |n| n.parse().unwrap())
    };
    for (i, pair) in echoed.chunks(2).enumerate() {
        for (answers, (own, other)) in pair
            .iter()
            .zip([("remote_user", "name"), ("name", "remote_user")])
        {
            for (k, image) in answers.iter().enumerate() {
                assert_eq!(
                    number(image, own),
                    k + 1,
                    "mix{i}: its own write, whole: {image}"
                );
            }
            let seen: Vec<usize> = answers.iter().map(|image| number(image, other)).collect();
            assert!(
                seen.windows(2).all(|w| w[0] <= w[1]),
                "mix{i}: {other} went back while {own} was written: {seen:?}"
            );
        }
        // In one serial order: when `name` k committed after `remote_user` j (the
        // latter's answer shows a name before k), the former's answer shows a
        // remote_user no older than j; and the same the other way round.
        let states = |answers: &Vec<Value>| -> Vec<(usize, usize)> {
            answers
                .iter()
                .map(|image| (number(image, "remote_user"), number(image, "name")))
                .collect()
        };
        let (by_user, by_name) = (states(&pair[0]), states(&pair[1]));
        for &(user, name_then) in &by_user {
            for &(user_then, name) in &by_name {
                if name > name_then {
                    assert!(
                        user_then >= user,
                        "mix{i}: name {name} wrote back a stale remote_user: {by_user:?} {by_name:?}"
                    );
                }
                if user > user_then {
                    assert!(
                        name_then >= name,
                        "mix{i}: remote_user {user} wrote back a stale name: {by_user:?} {by_name:?}"
                    );
                }
            }
        }
        let (_, last) = app.get_image(&format!("mix{i}")).await;
        assert_eq!(
            (number(&last, "remote_user"), number(&last, "name")),
            (WRITES, WRITES),
            "mix{i}: a write was lost: {last}"
        );
    }
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
