//! `/v3/changes`: the changes as Server-Sent Events, from the next change, from
//! `after` or from `Last-Event-ID`; its headers, its policy and its Accept rule.

use std::time::Duration;

use futures_util::StreamExt;
use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{
    TestApp, assert_error, config_text, default_users, policies_without_read_images, spawn_app,
    spawn_app_with, status_json, until_waiting, within_a_minute,
};

/// One event of the stream, or a comment.
#[derive(Debug, PartialEq)]
pub(crate) enum Event {
    Change { id: u64, data: Value },
    Comment(String),
}

/// Reads a stream's events as they come.
pub(crate) struct Events {
    body: std::pin::Pin<Box<dyn futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    buffer: String,
}

impl Events {
    pub(crate) fn of(response: reqwest::Response) -> Events {
        Events {
            body: Box::pin(response.bytes_stream()),
            buffer: String::new(),
        }
    }

    /// The next event; `None` when the stream ended.
    pub(crate) async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                return Some(parse(block.trim_end()));
            }
            let chunk = within_a_minute("the next event", self.body.next()).await?;
            // A connection cut (its node killed) ends the stream too.
            let Ok(chunk) = chunk else { return None };
            self.buffer.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }

    /// The next `n` changes, skipping comments.
    pub(crate) async fn changes(&mut self, n: usize) -> Vec<(u64, Value)> {
        let mut changes = Vec::new();
        while changes.len() < n {
            match self.next().await.expect("the stream went on") {
                Event::Change { id, data } => changes.push((id, data)),
                Event::Comment(_) => {}
            }
        }
        changes
    }
}

fn parse(block: &str) -> Event {
    if let Some(comment) = block.strip_prefix(':') {
        return Event::Comment(comment.trim().to_owned());
    }
    let mut lines = block.lines();
    let id = lines.next().and_then(|l| l.strip_prefix("id: ")).unwrap();
    let data = lines.next().and_then(|l| l.strip_prefix("data: ")).unwrap();
    assert!(lines.next().is_none(), "one line of data: {block}");
    Event::Change {
        id: id.parse().unwrap(),
        data: serde_json::from_str(data).unwrap(),
    }
}

async fn open(app: &TestApp, path: &str, last_event_id: Option<&str>) -> reqwest::Response {
    let mut request = app
        .reader()
        .request(Method::GET, path)
        .header("accept", "text/event-stream");
    if let Some(id) = last_event_id {
        request = request.header("last-event-id", id);
    }
    request.send().await.unwrap()
}

#[tokio::test]
async fn the_stream_sends_each_change_from_the_next_on() {
    let app = spawn_app().await;
    app.seed("before", "ec2").await;
    let response = open(&app, "/v3/changes", None).await;
    assert_eq!(response.status(), 200);
    let headers = response.headers();
    assert_eq!(headers["content-type"], "text/event-stream");
    assert_eq!(headers["x-accel-buffering"], "no");
    assert_eq!(headers["x-audit-seq"], "1");
    let mut events = Events::of(response);
    until_waiting(&app, 1.0).await;
    let image = json!({"id": "a", "provider": "ec2", "remote_user": "u", "name": "one"});
    assert_eq!(app.create(image.clone()).await.0, 200);
    assert_eq!(
        app.admin()
            .put("/v3/image/a", json!({"name": "two"}))
            .await
            .0,
        200
    );
    assert_eq!(app.admin().delete("/v3/image/a").await.0, 200);
    let changes = events.changes(3).await;
    let summary: Vec<(u64, &str, &Value)> = changes
        .iter()
        .map(|(id, data)| (*id, data["method"].as_str().unwrap(), &data["image"]))
        .collect();
    let renamed = json!({"id": "a", "provider": "ec2", "remote_user": "u", "name": "two"});
    assert_eq!(
        summary,
        [
            (2, "POST", &image),
            (3, "PUT", &renamed),
            (4, "DELETE", &Value::Null)
        ]
    );
    for (id, data) in &changes {
        let mut keys: Vec<&String> = data.as_object().unwrap().keys().collect();
        keys.sort();
        assert_eq!(keys, ["id", "image", "method", "seq", "time"], "no user");
        assert_eq!(data["seq"].as_u64(), Some(*id));
    }
}

#[tokio::test]
async fn the_stream_starts_after_last_event_id_or_after() {
    let app = spawn_app().await;
    for id in ["a", "b", "c"] {
        app.seed(id, "ec2").await;
    }
    let mut events = Events::of(open(&app, "/v3/changes?after=1", None).await);
    let ids: Vec<u64> = events
        .changes(2)
        .await
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(ids, [2, 3]);
    // Last-Event-ID, as a browser sends it on reconnecting, wins over after.
    let mut events = Events::of(open(&app, "/v3/changes?after=0", Some("2")).await);
    assert_eq!(events.changes(1).await[0].0, 3);
    for (path, last, words) in [
        ("/v3/changes", Some("two"), "Last-Event-ID"),
        ("/v3/changes?after=x", None, "after must be"),
        ("/v3/changes?since=1", None, "since"),
    ] {
        assert_error(status_json(open(&app, path, last).await).await, 400, words);
    }
    let response = open(&app, "/v3/changes", Some("4")).await;
    assert_error(status_json(response).await, 410, "above the highest seq");
    // HEAD: the headers at once.
    let head = within_a_minute(
        "a HEAD",
        app.reader().request(Method::HEAD, "/v3/changes").send(),
    )
    .await
    .unwrap();
    assert_eq!(
        (head.status().as_u16(), &head.headers()["x-audit-seq"]),
        (200, &"3".parse().unwrap())
    );
}

#[tokio::test]
async fn the_stream_has_its_policy_and_its_accept_rule() {
    let app = spawn_app().await;
    let response = app
        .request(Method::GET, "/v3/changes")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let html = app
        .reader()
        .request(Method::GET, "/v3/changes")
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(html.status(), 406);
    let stream_on_json_route = app
        .reader()
        .request(Method::GET, "/v3/images")
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(
        stream_on_json_route.status(),
        406,
        "the Accept rule is per route"
    );
    // A user who may read the trail but not the images.
    let policies = policies_without_read_images();
    let app = spawn_app_with(&config_text(&policies, &default_users())).await;
    assert_error(
        status_json(open(&app, "/v3/changes", None).await).await,
        403,
        "read_images",
    );
}

#[tokio::test]
async fn a_reload_that_takes_read_images_away_ends_the_stream() {
    let app = spawn_app().await;
    let mut events = Events::of(open(&app, "/v3/changes", None).await);
    until_waiting(&app, 1.0).await;
    let policies = policies_without_read_images();
    app.reload(&config_text(&policies, &default_users())).await;
    assert_eq!(events.next().await, None, "the stream ended");
}

#[tokio::test]
async fn a_quiet_stream_says_it_is_alive_every_15_seconds() {
    let app = spawn_app().await;
    let mut events = Events::of(open(&app, "/v3/changes", None).await);
    let started = std::time::Instant::now();
    assert_eq!(
        events.next().await,
        Some(Event::Comment("keep-alive".into()))
    );
    let gap = started.elapsed();
    assert!(gap <= Duration::from_secs(16), "{gap:?}");
}
