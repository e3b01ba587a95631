//! The auth matrix and the policy table: who gets 401, who gets 403, and that every
//! route refuses a user lacking its policy.

use image_catalog::routes::TABLE;
use reqwest::{Method, Response};
use serde_json::json;

use crate::helpers::{
    ADMIN, BOT_TOKEN, DEFAULT_POLICIES, TestApp, assert_error, cheap_hash, config_text,
    default_users, edit, spawn_app, spawn_app_with, status_json,
};

async fn assert_401(response: Response, words: &str) {
    assert_eq!(
        response.headers()["www-authenticate"],
        "Basic realm=\"image-catalog\""
    );
    assert_error(status_json(response).await, 401, words);
}

#[tokio::test]
async fn missing_wrong_and_unknown_credentials_are_401() {
    let app = spawn_app().await;
    let get = || app.request(Method::GET, "/v3/images");
    assert_401(get().send().await.unwrap(), "needs credentials").await;
    assert_401(
        get()
            .basic_auth(ADMIN.0, Some("wrong"))
            .send()
            .await
            .unwrap(),
        "wrong user name, password or token",
    )
    .await;
    // An unknown user reads exactly like a wrong password.
    assert_401(
        get()
            .basic_auth("mallory", Some(ADMIN.1))
            .send()
            .await
            .unwrap(),
        "wrong user name, password or token",
    )
    .await;
    assert_401(
        get().bearer_auth("not-a-token").send().await.unwrap(),
        "wrong user name",
    )
    .await;
    // A token user has no password.
    assert_401(
        get()
            .basic_auth("bot", Some(BOT_TOKEN))
            .send()
            .await
            .unwrap(),
        "wrong user name",
    )
    .await;
    for malformed in ["Basic", "Basic !!!", "Basic YWRtaW4=", "Digest x", "Bearer"] {
        let response = get()
            .header("authorization", malformed)
            .send()
            .await
            .unwrap();
        assert_401(response, "").await;
    }
}

#[tokio::test]
async fn bearer_token_authenticates_with_its_roles() {
    let app = spawn_app().await;
    app.seed("a", "ec2").await;
    assert_eq!(app.bearer(BOT_TOKEN).get("/v3/image/a").await.0, 200);
    let response = app.bearer(BOT_TOKEN).delete("/v3/image/a").await;
    assert_error(response, 403, "'delete_image'");
}

#[tokio::test]
async fn a_user_lacking_the_policy_gets_403_naming_it() {
    let app = spawn_app().await;
    let response = app
        .reader()
        .post(
            "/v3/image",
            &json!({"id": "a", "provider": "ec2", "remote_user": "u"}),
        )
        .await;
    assert_error(
        response,
        403,
        "user 'reader' does not hold the policy 'create_image'",
    );
    assert_error(app.get_image("a").await, 404, "'a'");
}

/// What each route needs, written out independently of the code's table.
const EXPECTED: &[(&str, &str, Option<&str>)] = &[
    ("GET", "/v3/images", Some("read_images")),
    ("POST", "/v3/image", Some("create_image")),
    ("GET", "/v3/image/{id}", Some("read_images")),
    ("PUT", "/v3/image/{id}", Some("create_image")),
    ("DELETE", "/v3/image/{id}", Some("delete_image")),
    ("GET", "/v3/audit", Some("read_audit")),
    ("GET", "/v3/changes", Some("read_images")),
    ("GET", "/healthz", None),
    ("GET", "/metrics", None),
    ("GET", "/v3/openapi.json", None),
];

#[test]
fn the_route_table_is_the_documented_one() {
    let table: Vec<_> = TABLE.iter().map(|r| (r.method, r.path, r.policy)).collect();
    assert_eq!(table, EXPECTED);
}

/// A config with one role per policy plus, for each policy, a user holding every
/// policy but that one.
fn config_with_users_lacking_one_policy() -> String {
    let policies = image_catalog::domain::access::ALL;
    let mut text = String::from("[policies]\n");
    for p in policies {
        text.push_str(&format!("{p} = [\"role_{p}\"]\n"));
    }
    for lacking in policies {
        let roles: Vec<String> = policies
            .iter()
            .filter(|p| *p != lacking)
            .map(|p| format!("\"role_{p}\""))
            .collect();
        text.push_str(&format!(
            "[[users]]\nname = \"lacks_{lacking}\"\npassword_hash = \"{}\"\nroles = [{}]\n",
            cheap_hash("pw"),
            roles.join(", ")
        ));
    }
    config_text("", &text)
}

async fn call(app: &TestApp, method: &str, path: &str, user: &str) -> Response {
    let method = Method::from_bytes(method.as_bytes()).unwrap();
    let path = path.replace("{id}", "some-image");
    let mut request = app
        .request(method.clone(), &path)
        .basic_auth(user, Some("pw"));
    if method == Method::POST {
        request = request.json(&json!({"id": "some-image", "provider": "ec2", "remote_user": "u"}));
    } else if method == Method::PUT {
        request = request.json(&json!({"name": "n"}));
    }
    request.send().await.unwrap()
}

#[tokio::test]
async fn every_route_refuses_a_user_without_its_policy() {
    let app = spawn_app_with(&config_with_users_lacking_one_policy()).await;
    for route in TABLE {
        let Some(policy) = route.policy else {
            continue;
        };
        let lacking = format!("lacks_{policy}");
        let response = call(&app, route.method, route.path, &lacking).await;
        assert_error(status_json(response).await, 403, &format!("'{policy}'"));
        // Every other user holds the policy and gets past the check.
        for other in image_catalog::domain::access::ALL
            .iter()
            .filter(|p| *p != &policy)
        {
            let response = call(&app, route.method, route.path, &format!("lacks_{other}")).await;
            let status = response.status().as_u16();
            assert!(
                ![401, 403].contains(&status),
                "{} {} as lacks_{other}: {status}",
                route.method,
                route.path
            );
        }
    }
}

#[tokio::test]
async fn a_policy_missing_from_the_table_is_held_by_nobody() {
    let policies = r#"
[policies]
read_images  = ["admin", "reader"]
create_image = ["admin"]
"#;
    let app = spawn_app_with(&config_text(policies, &default_users())).await;
    app.seed("a", "ec2").await;
    let response = app.admin().delete("/v3/image/a").await;
    assert_error(response, 403, "'delete_image'");
    let response = app.admin().get("/v3/audit").await;
    assert_error(response, 403, "'read_audit'");
    assert_eq!(app.get_image("a").await.0, 200);
}

#[tokio::test]
async fn repeated_basic_requests_are_answered_from_the_cache() {
    // argon2 runs once per user and password; a wrong password is checked every time,
    // and a reload (here: the admin's password rotated) forgets what was proven.
    let app = spawn_app().await;
    let verifications = "image_catalog_password_verifications_total";
    assert_eq!(app.metric(verifications).await, Some(0.0));
    for _ in 0..20 {
        assert_eq!(app.admin().get("/v3/images").await.0, 200);
    }
    assert_eq!(
        app.metric(verifications).await,
        Some(1.0),
        "one argon2 check"
    );
    for _ in 0..2 {
        let (status, _) = app.user(ADMIN.0, "admin-secret ").get("/v3/images").await;
        assert_eq!(status, 401);
    }
    assert_eq!(
        app.metric(verifications).await,
        Some(3.0),
        "failures not cached"
    );

    let rotated = edit(
        &default_users(),
        &cheap_hash(ADMIN.1),
        &cheap_hash("rotated"),
    );
    app.reload(&config_text(DEFAULT_POLICIES, &rotated)).await;
    assert_eq!(
        app.admin().get("/v3/images").await.0,
        401,
        "old password gone"
    );
    assert_eq!(app.user(ADMIN.0, "rotated").get("/v3/images").await.0, 200);
    assert_eq!(app.user(ADMIN.0, "rotated").get("/v3/images").await.0, 200);
    assert_eq!(
        app.metric(verifications).await,
        Some(5.0),
        "checked again once"
    );
}
