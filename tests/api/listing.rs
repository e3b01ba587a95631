//! The list: order, provider filter, and paging through `Link` headers.

use reqwest::Method;
use serde_json::Value;

use crate::helpers::{TestApp, assert_error, spawn_app, status_json};

/// Seeds `count` images, a third of them openstack, concurrently in small batches.
async fn seed_many(app: &TestApp, count: usize) -> Vec<String> {
    let ids: Vec<String> = (0..count)
        .map(|i| format!("img-{:04}", (i * 7919) % count))
        .collect();
    for batch in ids.chunks(25) {
        let creates = batch.iter().map(|id| {
            let provider = if id.ends_with(['0', '3', '6']) {
                "openstack"
            } else {
                "ec2"
            };
            app.seed(id, provider)
        });
        futures_util::future::join_all(creates).await;
    }
    let mut sorted = ids;
    sorted.sort();
    sorted
}

fn ids_of(body: &Value) -> Vec<String> {
    body.as_array()
        .expect("a plain array")
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_owned())
        .collect()
}

/// The target of a `Link: <...>; rel="next"` header.
fn next_link(response: &reqwest::Response) -> Option<String> {
    let link = response.headers().get("link")?.to_str().unwrap();
    let target = link
        .strip_prefix('<')?
        .split_once(">; rel=\"next\"")
        .map(|(t, _)| t.to_owned());
    assert!(target.is_some(), "malformed Link: {link}");
    target
}

/// Follows `Link` from `first` to the end; returns the ids seen and the page count.
async fn walk(app: &TestApp, first: &str) -> (Vec<String>, usize) {
    let mut seen = Vec::new();
    let mut pages = 0;
    let mut next = Some(first.to_owned());
    while let Some(path) = next {
        let response = app
            .reader()
            .request(Method::GET, &path)
            .send()
            .await
            .unwrap();
        next = next_link(&response);
        let (status, body) = status_json(response).await;
        assert_eq!(status, 200, "{path}");
        seen.extend(ids_of(&body));
        pages += 1;
        assert!(pages < 1000, "paging does not end");
    }
    (seen, pages)
}

#[tokio::test]
async fn paging_walks_the_catalog_exactly_once() {
    let app = spawn_app().await;
    let all = seed_many(&app, 300).await;

    let (seen, pages) = walk(&app, "/v3/images?limit=7").await;
    assert_eq!(seen, all, "every image once, in id order");
    assert_eq!(pages, 300_usize.div_ceil(7));

    // The whole catalog without limit, streamed, is the same list.
    let (_, body) = app.reader().get("/v3/images").await;
    assert_eq!(ids_of(&body), all);

    // A page size that divides the catalog: the last full page has no Link.
    let (seen, pages) = walk(&app, "/v3/images?limit=100").await;
    assert_eq!((seen.len(), pages), (300, 3));
}

#[tokio::test]
async fn paging_keeps_the_provider_filter() {
    let app = spawn_app().await;
    let all = seed_many(&app, 120).await;
    let expected: Vec<String> = all
        .iter()
        .filter(|id| id.ends_with(['0', '3', '6']))
        .cloned()
        .collect();
    let (seen, _) = walk(&app, "/v3/images?provider=openstack&limit=5").await;
    assert_eq!(seen, expected);
    let (_, body) = app.reader().get("/v3/images?provider=openstack").await;
    assert_eq!(ids_of(&body), expected);
    for item in body.as_array().unwrap() {
        assert_eq!(item["provider"], "openstack");
    }
}

#[tokio::test]
async fn marker_starts_after_the_given_id() {
    let app = spawn_app().await;
    for id in ["a", "b", "c", "d"] {
        app.seed(id, "ec2").await;
    }
    let get = |q: &str| {
        app.reader()
            .request(Method::GET, &format!("/v3/images?{q}"))
            .send()
    };
    let (_, body) = status_json(get("marker=b").await.unwrap()).await;
    assert_eq!(ids_of(&body), ["c", "d"]);
    // A marker need not exist: it is a position.
    let (_, body) = status_json(get("marker=bb&limit=1").await.unwrap()).await;
    assert_eq!(ids_of(&body), ["c"]);
    let response = get("limit=2").await.unwrap();
    assert_eq!(
        next_link(&response).as_deref(),
        Some("/v3/images?limit=2&marker=b")
    );
    let response = get("marker=d&limit=2").await.unwrap();
    assert_eq!(next_link(&response), None);
    let (_, body) = status_json(response).await;
    assert_eq!(body, serde_json::json!([]));
}

#[tokio::test]
async fn the_list_is_sorted_by_id_bytes() {
    let app = spawn_app().await;
    for id in ["b", "B", "a", "é", "Z", "10", "9"] {
        app.seed(id, "static").await;
    }
    let (_, body) = app.reader().get("/v3/images").await;
    assert_eq!(ids_of(&body), ["10", "9", "B", "Z", "a", "b", "é"]);
}

#[tokio::test]
async fn an_unlisted_provider_is_400_naming_the_allowed_ones() {
    let app = spawn_app().await;
    let response = app.reader().get("/v3/images?provider=azure").await;
    assert_error(response, 400, "ec2, openstack, static");
}

#[tokio::test]
async fn empty_catalog_lists_as_an_empty_array() {
    let app = spawn_app().await;
    for path in ["/v3/images", "/v3/images?limit=10"] {
        let (status, body) = app.reader().get(path).await;
        assert_eq!((status, body), (200, serde_json::json!([])));
    }
}

#[tokio::test]
async fn a_repeated_page_reflects_every_acknowledged_change() {
    let app = spawn_app().await;
    for id in ["a", "c", "e"] {
        app.seed(id, "ec2").await;
    }
    let page = || async {
        let response = app
            .reader()
            .request(Method::GET, "/v3/images?limit=2")
            .send()
            .await
            .unwrap();
        let link = next_link(&response);
        let (_, body) = status_json(response).await;
        (ids_of(&body), link)
    };
    assert_eq!(
        page().await,
        (
            vec!["a".into(), "c".into()],
            Some("/v3/images?limit=2&marker=c".into())
        )
    );
    assert_eq!(page().await.0, ["a", "c"], "served again");
    app.seed("b", "ec2").await;
    assert_eq!(
        page().await,
        (
            vec!["a".into(), "b".into()],
            Some("/v3/images?limit=2&marker=b".into())
        )
    );
    let response = app.admin().delete("/v3/image/a").await;
    assert_eq!(response.0, 200);
    assert_eq!(page().await.0, ["b", "c"]);
    let response = app
        .admin()
        .put("/v3/image/b", &serde_json::json!({"name": "renamed"}))
        .await;
    assert_eq!(response.0, 200);
    let response = app.reader().get("/v3/images?limit=2").await;
    let (_, body) = response;
    assert_eq!(body[0]["name"], "renamed");
}

/// `?q=`: a substring of id or name, ASCII letters in any case; kept by `Link` with
/// `provider`, `limit` and `marker`; `%` and `_` literal; empty filters nothing; over
/// 255 bytes a 400. (The engines' agreement on every case is in tests/engines.)
#[tokio::test]
async fn q_searches_ids_and_names_and_pages_keep_it() {
    let app = spawn_app().await;
    let images = [
        ("ami-ubuntu-1", "ec2", "Ubuntu 24.04"),
        ("ami-2", "ec2", "UBUNTU minimal"),
        ("os-3", "openstack", "ubuntu for openstack"),
        ("ami-4", "ec2", "Debian 12"),
        ("ami-5", "ec2", "100% done_ok"),
        ("ami-6", "ec2", "Ubuntu <b>bold</b>"),
    ];
    for (id, provider, name) in images {
        let (status, body) = app
            .create(serde_json::json!({"id": id, "provider": provider, "remote_user": "u", "name": name}))
            .await;
        assert_eq!(status, 200, "{body}");
    }
    let found = |query: &'static str| {
        let app = &app;
        async move {
            let (status, body) = app.reader().get(&format!("/v3/images?{query}")).await;
            assert_eq!(status, 200, "{query}: {body}");
            ids_of(&body)
        }
    };
    assert_eq!(
        found("q=uBuNtU").await,
        ["ami-2", "ami-6", "ami-ubuntu-1", "os-3"]
    );
    assert_eq!(found("q=ubuntu&provider=openstack").await, ["os-3"]);
    assert_eq!(found("q=AMI-").await.len(), 5);
    assert_eq!(found("q=%25").await, ["ami-5"], "a literal %");
    assert_eq!(found("q=_").await, ["ami-5"], "a literal _");
    assert_eq!(found("q=%3Cb%3E").await, ["ami-6"]);
    assert_eq!(found("q=").await.len(), 6, "an empty q filters nothing");
    assert_eq!(found("q=nowhere").await, Vec::<String>::new());
    assert_eq!(
        found("q=ubuntu&marker=ami-6").await,
        ["ami-ubuntu-1", "os-3"]
    );
    let (seen, pages) = walk(&app, "/v3/images?q=ubuntu&limit=1").await;
    assert_eq!(seen, ["ami-2", "ami-6", "ami-ubuntu-1", "os-3"]);
    assert_eq!(pages, 4);
    // Byte 256 is one too many.
    let longest = "a".repeat(255);
    assert_eq!(
        app.reader()
            .get(&format!("/v3/images?q={longest}&limit=5"))
            .await
            .0,
        200
    );
    let (status, body) = app.reader().get(&format!("/v3/images?q={longest}a")).await;
    assert_error((status, body), 400, "at most 255 bytes");
    // No id or name holds a control character (and PostgreSQL's text no NUL).
    for control in ["%00", "a%0Ab", "%7F"] {
        let (status, body) = app.reader().get(&format!("/v3/images?q={control}")).await;
        assert_error((status, body), 400, "control characters");
    }
}
