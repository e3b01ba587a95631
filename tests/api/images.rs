//! The five seed routes: exact JSON, field rules, create/update/delete semantics.

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{assert_error, encode, spawn_app, status_json};

fn image(id: &str) -> Value {
    json!({"id": id, "provider": "ec2", "remote_user": "ubuntu", "name": "Ubuntu 22.04"})
}

#[tokio::test]
async fn create_then_show_gives_the_exact_shapes() {
    let app = spawn_app().await;
    let (status, body) = app.create(image("ami-0abc")).await;
    assert_eq!(status, 200);
    assert_eq!(body, json!({"id": "ami-0abc", "message": "Created"}));

    let response = app.get_image_response("ami-0abc").await;
    assert!(response.headers().get("etag").is_some());
    let (status, body) = status_json(response).await;
    assert_eq!(status, 200);
    assert_eq!(body, image("ami-0abc"));
}

#[tokio::test]
async fn create_without_name_stores_an_empty_name() {
    let app = spawn_app().await;
    let body = json!({"id": "tmpl-1", "provider": "static", "remote_user": "root"});
    assert_eq!(app.create(body).await.0, 200);
    let (_, shown) = app.get_image("tmpl-1").await;
    assert_eq!(
        shown,
        json!({"id": "tmpl-1", "provider": "static", "remote_user": "root", "name": ""})
    );
}

#[tokio::test]
async fn create_of_an_existing_id_is_409_and_changes_nothing() {
    let app = spawn_app().await;
    app.seed("ami-1", "ec2").await;
    let mut other = image("ami-1");
    other["remote_user"] = json!("centos");
    assert_error(app.create(other).await, 409, "'ami-1' already exists");
    let (_, shown) = app.get_image("ami-1").await;
    assert_eq!(shown["remote_user"], "ubuntu");
}

#[tokio::test]
async fn concurrent_creates_of_one_id_let_exactly_one_win() {
    let app = spawn_app().await;
    let attempts = (0..50).map(|i| {
        let mut body = image("contested");
        body["name"] = json!(format!("attempt {i}"));
        app.create(body)
    });
    let statuses: Vec<u16> = futures_util::future::join_all(attempts)
        .await
        .iter()
        .map(|(status, _)| *status)
        .collect();
    assert_eq!(
        statuses.iter().filter(|&&s| s == 200).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|&&s| s == 409).count(),
        49,
        "{statuses:?}"
    );
}

#[tokio::test]
async fn update_changes_remote_user_and_name_only() {
    let app = spawn_app().await;
    app.seed("ami-1", "ec2").await;

    let response = app
        .admin()
        .request(Method::PUT, "/v3/image/ami-1")
        .json(&json!({"name": "renamed"}))
        .send()
        .await
        .unwrap();
    assert!(response.headers().get("etag").is_some());
    let (status, body) = status_json(response).await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({
            "image": {"id": "ami-1", "provider": "ec2", "remote_user": "ubuntu", "name": "renamed"},
            "message": "Updated"
        })
    );

    // A client sending the whole image back, with id and provider unchanged.
    let whole =
        json!({"id": "ami-1", "provider": "ec2", "remote_user": "ec2-user", "name": "renamed"});
    let response = app.admin().put("/v3/image/ami-1", &whole).await;
    let (status, body) = response;
    assert_eq!((status, &body["image"]), (200, &whole));
    let (_, shown) = app.get_image("ami-1").await;
    assert_eq!(shown, whole);
}

#[tokio::test]
async fn update_refuses_to_change_id_or_provider() {
    let app = spawn_app().await;
    app.seed("ami-1", "ec2").await;
    for (body, words) in [
        (
            json!({"provider": "openstack", "name": "x"}),
            "'provider' cannot be changed",
        ),
        (
            json!({"id": "ami-2", "name": "x"}),
            "'id' cannot be changed",
        ),
        (json!({}), "remote_user and/or name"),
        (
            json!({"id": "ami-1", "provider": "ec2"}),
            "remote_user and/or name",
        ),
        (json!({"remote_user": ""}), "remote_user must be 1 to 64"),
    ] {
        let response = app.admin().put("/v3/image/ami-1", &body).await;
        assert_error(response, 400, words);
    }
    let (_, shown) = app.get_image("ami-1").await;
    assert_eq!(shown["name"], "image ami-1", "nothing changed");
    assert_eq!(shown["provider"], "ec2");
}

#[tokio::test]
async fn update_and_delete_of_an_unknown_id_are_404() {
    let app = spawn_app().await;
    let response = app
        .admin()
        .put("/v3/image/nope", &json!({"name": "x"}))
        .await;
    assert_error(response, 404, "no image with id 'nope'");
    let response = app.admin().delete("/v3/image/nope").await;
    assert_error(response, 404, "no image with id 'nope'");
    assert_error(app.get_image("nope").await, 404, "'nope'");
}

#[tokio::test]
async fn delete_removes_and_a_second_delete_is_404() {
    let app = spawn_app().await;
    app.seed("ami-1", "ec2").await;
    let delete = || {
        app.admin()
            .request(Method::DELETE, "/v3/image/ami-1")
            .send()
    };
    let (status, body) = status_json(delete().await.unwrap()).await;
    assert_eq!(
        (status, body),
        (200, json!({"id": "ami-1", "message": "Deleted"}))
    );
    assert_error(status_json(delete().await.unwrap()).await, 404, "'ami-1'");
    assert_error(app.get_image("ami-1").await, 404, "'ami-1'");
}

#[tokio::test]
async fn field_rules_hold_on_both_sides_of_each_limit() {
    let app = spawn_app().await;
    let with = |field: &str, value: Value| {
        let mut body = image("x");
        body[field] = value;
        body
    };
    // (body, accepted?, words of the refusal)
    let cases: Vec<(Value, bool, &str)> = vec![
        (with("id", json!("i".repeat(255))), true, ""),
        (
            with("id", json!("i".repeat(256))),
            false,
            "id must be 1 to 255 bytes",
        ),
        (with("id", json!("é".repeat(127))), true, ""),
        (
            with("id", json!("é".repeat(128))),
            false,
            "id must be 1 to 255 bytes",
        ),
        (with("id", json!("")), false, "id must be 1 to 255 bytes"),
        (with("id", json!("a b")), false, "id must not contain"),
        (with("id", json!("a/b")), false, "id must not contain"),
        (with("id", json!("a?b")), false, "id must not contain"),
        (with("id", json!("a#b")), false, "id must not contain"),
        (with("id", json!("a%b")), false, "id must not contain"),
        (with("id", json!("a\u{1}b")), false, "id must not contain"),
        (with("id", json!(".")), false, "id must not be '.'"),
        (with("id", json!("..")), false, "id must not be '..'"),
        (with("id", json!("ubuntu:22.04~é")), true, ""),
        (with("provider", json!("static")), true, ""),
        (
            with("provider", json!("gce")),
            false,
            "ec2, openstack, static",
        ),
        (with("remote_user", json!("u".repeat(64))), true, ""),
        (
            with("remote_user", json!("u".repeat(65))),
            false,
            "remote_user must be 1 to 64",
        ),
        (
            with("remote_user", json!("")),
            false,
            "remote_user must be 1 to 64",
        ),
        (
            with("remote_user", json!("a:b")),
            false,
            "remote_user must not contain",
        ),
        (
            with("remote_user", json!("a b")),
            false,
            "remote_user must not contain",
        ),
        (with("name", json!("n".repeat(255))), true, ""),
        (
            with("name", json!("n".repeat(256))),
            false,
            "name must be at most 255",
        ),
        (with("name", json!("")), true, ""),
        (
            with("name", json!("a\nb")),
            false,
            "name must not contain control",
        ),
        (
            with("name", Value::Null),
            false,
            "field 'name' must be a string, got null",
        ),
        (
            with("id", json!(42)),
            false,
            "field 'id' must be a string, got a number",
        ),
        (
            with("provider", json!(["ec2"])),
            false,
            "field 'provider' must be a string",
        ),
        (with("extra", json!("x")), false, "unknown field 'extra'"),
        (
            json!({"provider": "ec2", "remote_user": "u"}),
            false,
            "field 'id' is required",
        ),
        (
            json!({"id": "y", "remote_user": "u"}),
            false,
            "field 'provider' is required",
        ),
        (
            json!({"id": "y", "provider": "ec2"}),
            false,
            "field 'remote_user' is required",
        ),
        (
            json!(["not", "an", "object"]),
            false,
            "must be a JSON object",
        ),
    ];
    for (i, (mut body, accepted, words)) in cases.into_iter().enumerate() {
        if accepted {
            // Distinct ids so that accepted cases do not collide.
            if body["id"] == "x" {
                body["id"] = json!(format!("ok-{i}"));
            }
            assert_eq!(app.create(body.clone()).await.0, 200, "{body}");
            let id = body["id"].as_str().unwrap();
            let (_, shown) = app.get_image(id).await;
            assert_eq!(shown, body, "stored exactly as sent");
        } else {
            assert_error(app.create(body).await, 400, words);
        }
    }
}

#[tokio::test]
async fn odd_but_valid_ids_work_in_paths() {
    let app = spawn_app().await;
    for id in ["ubuntu:22.04", "イメージ-1", "a.b~c", "...", "x+y&z=1"] {
        app.seed(id, "openstack").await;
        let (status, body) = app.get_image(id).await;
        assert_eq!((status, body["id"].as_str()), (200, Some(id)));
        let response = app
            .admin()
            .delete(&format!("/v3/image/{}", encode(id)))
            .await;
        assert_eq!(response.0, 200, "{id}");
    }
}

/// A new id must be in Unicode normal form C: `café` typed decomposed is refused, so
/// it cannot sit beside the composed one. An id stored decomposed (imported from an
/// older export) stays readable, updatable and deletable.
#[tokio::test]
async fn new_ids_are_in_normal_form_c() {
    let app = spawn_app().await;
    let composed = "caf\u{e9}";
    let decomposed = "cafe\u{301}";
    let body = |id: &str| json!({"id": id, "provider": "ec2", "remote_user": "u"});
    assert_error(
        app.admin().post("/v3/image", body(decomposed)).await,
        400,
        "normal form C",
    );
    let (status, _) = app.admin().post("/v3/image", body(composed)).await;
    assert_eq!(status, 200);
    let (status, image) = app
        .admin()
        .get(&format!("/v3/image/{}", encode(composed)))
        .await;
    assert_eq!((status, image["id"].as_str()), (200, Some(composed)));
    let (status, _) = app
        .admin()
        .get(&format!("/v3/image/{}", encode(decomposed)))
        .await;
    assert_eq!(
        status, 404,
        "the decomposed form is another id, never created"
    );
}
