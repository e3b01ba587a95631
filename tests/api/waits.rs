//! Waiting for changes: long polls on the feed (`?after=&wait=`) and blocking reads
//! of one image (`Prefer: wait=N`): woken by what they wait for and nothing else, cut
//! at their time, counted (`max_waiters`), ended by a stop or a reload that takes
//! their policy away, and left out of the latency histogram.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::json;

use crate::helpers::{
    DEFAULT_POLICIES, TestApp, assert_error, config_text, config_with, default_users,
    policies_without_read_images, seqs, spawn_app, spawn_app_with, status_json, until_waiting,
    within_a_minute,
};
use crate::process::ChildServer;

#[tokio::test]
async fn a_long_poll_answers_when_a_record_lands() {
    let app = spawn_app().await;
    app.seed("a", "ec2").await;
    let poll = app
        .admin()
        .request(Method::GET, "/v3/audit?after=1&wait=5m")
        .send();
    let poll = tokio::spawn(poll);
    until_waiting(&app, 1.0).await;
    app.seed("b", "ec2").await;
    let landed = Instant::now();
    let response = within_a_minute("the long poll", poll)
        .await
        .unwrap()
        .unwrap();
    let answered = landed.elapsed();
    assert_eq!(response.headers()["x-audit-seq"], "2");
    let (status, body) = status_json(response).await;
    assert_eq!((status, seqs(&body)), (200, vec![2]));
    assert_eq!(body[0]["after"]["id"], "b");
    // The bound: within a second of the write's answer.
    assert!(answered < Duration::from_secs(1), "{answered:?}");
    assert_eq!(
        app.metric("image_catalog_waiting_requests ").await,
        Some(0.0)
    );
}

#[tokio::test]
async fn a_long_poll_with_nothing_new_ends_empty_and_is_not_latency() {
    let app = spawn_app().await;
    app.seed("a", "ec2").await;
    let started = Instant::now();
    let response = app
        .admin()
        .request(Method::GET, "/v3/audit?after=1&wait=1")
        .send()
        .await
        .unwrap();
    assert!(started.elapsed() >= Duration::from_millis(900), "it waited");
    assert_eq!(response.headers()["x-audit-seq"], "1");
    assert_eq!(status_json(response).await, (200, json!([])));
    // A HEAD answers its headers at once, and a wait of 0 does not wait.
    for request in [
        app.admin()
            .request(Method::HEAD, "/v3/audit?after=1&wait=5m"),
        app.admin().request(Method::GET, "/v3/audit?after=1&wait=0"),
    ] {
        let response = within_a_minute("an answer at once", request.send())
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    let sum = app
        .metric(
            "image_catalog_http_request_duration_seconds_sum{method=\"GET\",route=\"/v3/audit\"}",
        )
        .await
        .unwrap();
    assert!(
        sum < 0.5,
        "the second waited is not in the histogram: {sum}"
    );
}

#[tokio::test]
async fn a_long_poll_on_one_image_waits_past_other_images() {
    let app = spawn_app().await;
    app.seed("a", "ec2").await;
    let poll = tokio::spawn(
        app.admin()
            .request(Method::GET, "/v3/audit?after=1&id=b&wait=5m")
            .send(),
    );
    until_waiting(&app, 1.0).await;
    app.seed("c", "ec2").await;
    app.seed("b", "ec2").await;
    let (status, body) =
        status_json(within_a_minute("the poll", poll).await.unwrap().unwrap()).await;
    assert_eq!((status, seqs(&body)), (200, vec![3]), "b's record, not c's");
}

#[tokio::test]
async fn bad_waits_are_400s_and_the_policy_comes_before_any_wait() {
    let app = spawn_app().await;
    for (query, words) in [
        ("after=0&wait=abc", "wait must be"),
        ("after=0&wait=1h", "wait must be"),
        ("after=0&wait=-5", "wait must be"),
        ("wait=30", "wait needs after"),
    ] {
        assert_error(
            app.admin().get(&format!("/v3/audit?{query}")).await,
            400,
            words,
        );
    }
    let refused = within_a_minute(
        "a 403 without waiting",
        app.reader().get("/v3/audit?after=0&wait=5m"),
    )
    .await;
    assert_error(refused, 403, "read_audit");
    let response = within_a_minute(
        "a 401 without waiting",
        app.request(Method::GET, "/v3/audit?after=0&wait=5m").send(),
    )
    .await
    .unwrap();
    assert_eq!(response.status(), 401);
}

/// A blocking GET of `id` as the reader, with `Prefer: wait=secs` and `If-None-Match`.
async fn blocking_get(app: &TestApp, id: &str, secs: u64, tag: Option<&str>) -> reqwest::Response {
    blocking_read(app.address.clone(), id, secs, tag.map(str::to_owned)).await
}

fn etag(response: &reqwest::Response) -> String {
    response.headers()["etag"].to_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_blocking_read_wakes_for_its_image_only() {
    let app = spawn_app().await;
    app.seed("a", "ec2").await;
    app.seed("b", "ec2").await;
    let tag = etag(&app.get_image_response("a").await);
    let read = tokio::spawn(blocking_read(
        app.address.clone(),
        "a",
        300,
        Some(tag.clone()),
    ));
    until_waiting(&app, 1.0).await;
    assert_eq!(
        app.admin()
            .put("/v3/image/b", json!({"name": "other"}))
            .await
            .0,
        200
    );
    assert_eq!(
        app.admin()
            .put("/v3/image/a", json!({"name": "new"}))
            .await
            .0,
        200
    );
    let response = within_a_minute("the blocking read", read).await.unwrap();
    assert_eq!(response.headers()["preference-applied"], "wait=300");
    assert_ne!(etag(&response), tag);
    let (status, body) = status_json(response).await;
    assert_eq!(
        (status, body["name"].as_str()),
        (200, Some("new")),
        "a's change, not b's"
    );
}

#[tokio::test]
async fn a_blocking_read_ends_at_its_time_or_when_its_image_comes_or_goes() {
    let app = spawn_app().await;
    app.seed("a", "ec2").await;
    let tag = etag(&app.get_image_response("a").await);
    // Nothing changes: 304 when the time is up.
    let response = blocking_get(&app, "a", 1, Some(&tag)).await;
    assert_eq!(response.status(), 304);
    assert_eq!(response.headers()["preference-applied"], "wait=1");
    // An absent id: 404 when the time is up.
    let response = blocking_get(&app, "none", 1, None).await;
    assert_eq!(response.headers()["preference-applied"], "wait=1");
    assert_error(status_json(response).await, 404, "none");
    // Any other case answers at once, as without Prefer: no If-None-Match, one that
    // does not match, a HEAD.
    for response in [
        blocking_get(&app, "a", 300, None).await,
        blocking_get(&app, "a", 300, Some("\"other\"")).await,
        app.reader()
            .request(Method::HEAD, "/v3/image/a")
            .header("prefer", "wait=300")
            .header("if-none-match", &tag)
            .send()
            .await
            .unwrap(),
    ] {
        assert!(response.headers().get("preference-applied").is_none());
        assert!(response.status() == 200 || response.status() == 304);
    }
    // An absent id waits until it is created; a wait over 300 s is cut to 300.
    let created = tokio::spawn(blocking_read(app.address.clone(), "late", 1000, None));
    until_waiting(&app, 1.0).await;
    app.seed("late", "static").await;
    let response = within_a_minute("the read of a new image", created)
        .await
        .unwrap();
    assert_eq!(response.headers()["preference-applied"], "wait=300");
    assert_eq!(response.status(), 200);
    // A current copy whose image is deleted: 404.
    let deleted = tokio::spawn(blocking_read(
        app.address.clone(),
        "a",
        300,
        Some(tag.clone()),
    ));
    until_waiting(&app, 1.0).await;
    assert_eq!(app.admin().delete("/v3/image/a").await.0, 200);
    let response = within_a_minute("the read of a deleted image", deleted)
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
}

#[tokio::test]
async fn waiters_past_max_waiters_are_503s() {
    let app = spawn_app_with(&config_with("max_waiters = 1", "")).await;
    let first = tokio::spawn(
        app.admin()
            .request(Method::GET, "/v3/audit?after=0&wait=5m")
            .send(),
    );
    until_waiting(&app, 1.0).await;
    let response = app
        .admin()
        .request(Method::GET, "/v3/audit?after=0&wait=5m")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "1");
    let response = blocking_get(&app, "none", 300, None).await;
    assert_error(status_json(response).await, 503, "max_waiters");
    app.seed("a", "ec2").await;
    let (status, body) =
        status_json(within_a_minute("the first", first).await.unwrap().unwrap()).await;
    assert_eq!((status, seqs(&body)), (200, vec![1]));
}

#[tokio::test]
async fn a_reload_that_takes_the_policy_away_ends_the_wait_with_403() {
    let app = spawn_app().await;
    let poll = tokio::spawn(blocking_read(app.address.clone(), "none", 300, None));
    until_waiting(&app, 1.0).await;
    // A reload that keeps the policy: still waiting.
    app.reload(&config_text(DEFAULT_POLICIES, &default_users()))
        .await;
    // The role stays (it may read the trail), without read_images.
    let without = policies_without_read_images();
    assert_eq!(
        app.metric("image_catalog_waiting_requests ").await,
        Some(1.0)
    );
    app.reload(&config_text(&without, &default_users())).await;
    let response = within_a_minute("the 403", poll).await.unwrap();
    assert_error(status_json(response).await, 403, "read_images");
}

/// A blocking GET of `id` as the reader (`Prefer: wait=secs`, `If-None-Match: tag`),
/// owning what it needs, to run as a task of its own.
async fn blocking_read(
    address: String,
    id: &str,
    secs: u64,
    tag: Option<String>,
) -> reqwest::Response {
    let mut request = crate::helpers::Caller::at(&address)
        .reader()
        .request(Method::GET, &format!("/v3/image/{id}"))
        .header("prefer", format!("wait={secs}"));
    if let Some(tag) = tag {
        request = request.header("if-none-match", tag);
    }
    request.send().await.unwrap()
}

/// A long poll, a blocking read of an absent image and a stream of changes, all three
/// waiting on the server at an address; what any stop must answer at once.
pub(crate) struct OpenWaits {
    poll: tokio::task::JoinHandle<reqwest::Response>,
    read: tokio::task::JoinHandle<reqwest::Response>,
    stream: reqwest::Response,
}

impl OpenWaits {
    /// Opens the three, on a catalog with no change yet, and returns once the server
    /// counts them as waiting.
    pub(crate) async fn open(address: &str) -> OpenWaits {
        let poll = tokio::spawn({
            let address = address.to_owned();
            async move {
                crate::helpers::Caller::at(&address)
                    .admin()
                    .request(Method::GET, "/v3/audit?after=0&wait=5m")
                    .send()
                    .await
                    .unwrap()
            }
        });
        let read = tokio::spawn(blocking_read(address.to_owned(), "none", 300, None));
        let stream = crate::helpers::Caller::at(address)
            .reader()
            .request(Method::GET, "/v3/changes")
            .send()
            .await
            .unwrap();
        assert_eq!(stream.status(), 200);
        crate::helpers::until_waiting_at(address, 3.0).await;
        OpenWaits { poll, read, stream }
    }

    /// Each was answered as if its time had run out (the poll empty, the read 404), and
    /// the stream ended without an event.
    pub(crate) async fn answered_as_if_timed_out(self) {
        let response = within_a_minute("the poll", self.poll).await.unwrap();
        assert_eq!(
            status_json(response).await,
            (200, json!([])),
            "as if its time ran out"
        );
        let response = within_a_minute("the read", self.read).await.unwrap();
        assert_eq!(response.status(), 404);
        let body = within_a_minute("the stream to end", self.stream.bytes())
            .await
            .unwrap();
        assert!(body.is_empty(), "no change came: {body:?}");
    }
}

#[tokio::test]
async fn sigterm_answers_every_wait_at_once_and_exits_0() {
    let (mut server, _dir) =
        ChildServer::start_with(&config_text(DEFAULT_POLICIES, &default_users())).await;
    let waits = OpenWaits::open(&server.address).await;
    let stopped = Instant::now();
    server.signal("TERM");
    waits.answered_as_if_timed_out().await;
    assert!(server.wait().success());
    // Well before the 20 s a request in flight may take, and the 5 min of the waits.
    assert!(
        stopped.elapsed() < Duration::from_secs(10),
        "{:?}",
        stopped.elapsed()
    );
}
