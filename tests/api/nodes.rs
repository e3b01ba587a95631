//! Several nodes on one PostgreSQL (docs/guide/06-several-nodes.md): two or
//! three real `image-catalog serve` processes, each with its own config.toml and port,
//! on one private database, must answer as one service would. One test per promise:
//! read-your-writes across nodes (the list-page cache included), races over nodes,
//! the audit under writers on every node, `kill -9` of a writing node, PostgreSQL
//! stopped and started under the nodes, and the honest answer to a write whose
//! connection broke.
//!
//! The fault tests print one line of figures each (acknowledged, lost, time to 503,
//! time to recover) to stderr; `cargo test nodes -- --nocapture` shows them. Times
//! are reported, never asserted; the deadlines only catch a hang.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use reqwest::Method;
use serde_json::{Value, json};
use tempfile::TempDir;

use crate::helpers::{
    Caller, DEFAULT_POLICIES, cheap_hash, config_text, default_users, edit, image_path, seqs,
    status_json, within_a_minute,
};
use crate::pg::{self as postgres, Cut, CutProxy};
use crate::process::{ChildServer, binary, write_config};

/// Longer than any answer may take: a request still unanswered then is a hang.
const HANG: Duration = Duration::from_secs(60);

/// A node's config: the default test users and policies, the catalog in PostgreSQL
/// (its URL comes from `IMAGE_CATALOG_DATABASE_URL`, as the guide advises).
fn node_config(store: &str) -> String {
    let text = config_text(DEFAULT_POLICIES, &default_users());
    let text = edit(&text, "data_dir = \"data\"\n", "");
    edit(
        &text,
        "[store]\ncache_mb = 8\n",
        &format!("[store]\nbackend = \"postgres\"\n{store}\n"),
    )
}

/// One node: the built binary serving on a config of its own, on a port of its own.
struct Node {
    server: ChildServer,
    client: reqwest::Client,
    config: std::path::PathBuf,
    _dir: TempDir,
}

impl Node {
    async fn start(url: &str) -> Node {
        Node::start_with(url, "").await
    }

    /// A node with `store` (more `[store]` keys) in its config.
    async fn start_with(url: &str, store: &str) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let path = write_config(dir.path(), &node_config(store));
        let mut command = binary();
        command
            .arg("--config")
            .arg(&path)
            .arg("serve")
            .env(image_catalog::config::DATABASE_URL_VAR, url);
        let server = ChildServer::start_command(command, "info").await;
        Node {
            server,
            client: reqwest::Client::builder().timeout(HANG).build().unwrap(),
            config: path,
            _dir: dir,
        }
    }

    fn address(&self) -> &str {
        &self.server.address
    }

    fn admin(&self) -> Caller<'_> {
        Caller::at(self.address()).via(&self.client).admin()
    }

    fn reader(&self) -> Caller<'_> {
        Caller::at(self.address()).via(&self.client).reader()
    }

    /// Whether the process still runs.
    fn running(&mut self) -> bool {
        self.server.child.try_wait().unwrap().is_none()
    }

    /// The image's status, body and ETag, as the reader sees it.
    async fn image(&self, id: &str) -> (u16, Value, Option<String>) {
        let response = self
            .reader()
            .request(Method::GET, &image_path(id))
            .send()
            .await
            .unwrap();
        let etag = response
            .headers()
            .get("etag")
            .map(|v| v.to_str().unwrap().to_owned());
        let (status, body) = status_json(response).await;
        (status, body, etag)
    }

    /// A page of the list and its `Link` header.
    async fn page(&self, query: &str) -> (Value, Option<String>) {
        let response = self
            .reader()
            .request(Method::GET, &format!("/v3/images?{query}"))
            .send()
            .await
            .unwrap();
        let link = response
            .headers()
            .get("link")
            .map(|v| v.to_str().unwrap().to_owned());
        let (status, body) = status_json(response).await;
        assert_eq!(status, 200, "{body}");
        (body, link)
    }

    /// The whole catalog, streamed.
    async fn all_images(&self) -> Vec<Value> {
        let (status, body) = self.reader().get("/v3/images").await;
        assert_eq!(status, 200, "{body}");
        body.as_array().unwrap().clone()
    }

    /// The whole audit trail, streamed, newest first.
    async fn audit(&self) -> Vec<Value> {
        let (status, body) = self.admin().get("/v3/audit").await;
        assert_eq!(status, 200, "{body}");
        body.as_array().unwrap().clone()
    }

    /// The value of a metric of this node.
    async fn metric(&self, prefix: &str) -> Option<f64> {
        let response = self
            .client
            .get(format!("{}/metrics", self.address()))
            .send()
            .await
            .unwrap();
        crate::helpers::metric(&response.text().await.unwrap(), prefix)
    }
}

/// Nodes on `url`, started together.
async fn nodes(url: &str, count: usize) -> Vec<Node> {
    futures_util::future::join_all((0..count).map(|_| Node::start(url))).await
}

fn new_image(id: &str, name: &str) -> Value {
    json!({"id": id, "provider": "ec2", "remote_user": "ubuntu", "name": name})
}

fn ids_of(images: &[Value]) -> Vec<String> {
    images
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_owned())
        .collect()
}

/// Prints one line of figures so that it shows with `--nocapture` (and in CI's log).
fn report(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// Polls `probe` until it gives `Some`, failing the test after `limit`; how long it
/// took, and what it gave.
async fn poll<T, F, Fut>(what: &str, limit: Duration, mut probe: F) -> (Duration, T)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(value) = probe().await {
            return (start.elapsed(), value);
        }
        assert!(
            start.elapsed() < limit,
            "gave up after {} s waiting for: {what}",
            limit.as_secs()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn millis(d: Duration) -> u128 {
    d.as_millis()
}

#[tokio::test]
async fn a_change_on_one_node_is_seen_at_once_on_the_others() {
    let Some(db) = postgres::database() else {
        return;
    };
    let nodes = nodes(&db.url, 2).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    for id in ["img-0", "img-2", "img-4"] {
        assert_eq!(
            a.admin().post("/v3/image", new_image(id, "first")).await.0,
            200
        );
    }
    for round in 0..5 {
        // B serves (and caches) its pages and its view of img-3 first ...
        let before = b.page("limit=2").await;
        let (page, _) = b.page("limit=2&marker=img-2").await;
        assert_eq!(ids_of(page.as_array().unwrap()), ["img-4"]);
        let id = "img-3";
        let (status, _, _) = b.image(id).await;
        assert_eq!(status, 404);

        // ... then A creates: B sees it at once, in every form.
        let name = format!("round {round}");
        let (status, body) = a.admin().post("/v3/image", new_image(id, &name)).await;
        assert_eq!(status, 200, "{body}");
        let (status, seen, etag_b) = b.image(id).await;
        assert_eq!((status, seen["name"].as_str()), (200, Some(name.as_str())));
        let (_, _, etag_a) = a.image(id).await;
        assert_eq!(etag_b, etag_a, "equal records, equal ETags on both nodes");
        let (page, _) = b.page("limit=2&marker=img-2").await;
        assert_eq!(ids_of(page.as_array().unwrap()), ["img-3", "img-4"]);
        assert_eq!(
            b.page("limit=2").await,
            before,
            "the first page did not change"
        );
        assert_eq!(
            ids_of(&b.all_images().await),
            ["img-0", "img-2", "img-3", "img-4"]
        );

        // An update on A: B's cached page and B's GET show it; B's old ETag is stale.
        let (status, body) = a
            .admin()
            .put(&image_path(id), json!({"name": format!("{name}, renamed")}))
            .await;
        assert_eq!(status, 200, "{body}");
        let (_, seen, etag_renamed) = b.image(id).await;
        assert_eq!(seen["name"], format!("{name}, renamed"));
        assert_ne!(etag_renamed, etag_b);
        let stale = b
            .reader()
            .request(Method::GET, &image_path(id))
            .header("If-None-Match", etag_b.clone().unwrap())
            .send()
            .await
            .unwrap();
        assert_eq!(
            stale.status(),
            200,
            "a tag another node made stale is no 304"
        );
        let (page, _) = b.page("limit=2&marker=img-2").await;
        assert_eq!(page[0]["name"], format!("{name}, renamed"));
        assert_eq!(ids_of(page.as_array().unwrap()), ["img-3", "img-4"]);
        let (page, link) = b.page("limit=1&marker=img-0").await;
        assert_eq!(ids_of(page.as_array().unwrap()), ["img-2"]);
        assert!(link.is_some(), "img-3 follows, on B too");
        let listed = b.all_images().await;
        assert_eq!(listed[2]["name"], format!("{name}, renamed"));
        // A PUT on B with the ETag A's update made: B compares against what A wrote.
        let response = b
            .admin()
            .request(Method::PUT, &image_path(id))
            .header("If-Match", etag_b.unwrap())
            .json(&json!({"name": "lost update"}))
            .send()
            .await
            .unwrap();
        let (status, body) = status_json(response).await;
        assert_eq!(
            status, 412,
            "B must refuse the tag A's update replaced: {body}"
        );

        // A delete on A: gone on B, from the GET, the pages and the full list.
        assert_eq!(a.admin().delete(&image_path(id)).await.0, 200);
        assert_eq!(b.image(id).await.0, 404);
        let (page, _) = b.page("limit=2&marker=img-2").await;
        assert_eq!(ids_of(page.as_array().unwrap()), ["img-4"]);
        assert_eq!(ids_of(&b.all_images().await), ["img-0", "img-2", "img-4"]);
    }
}

#[tokio::test]
async fn concurrent_creates_of_one_id_over_the_nodes_give_one_200_and_409s() {
    let Some(db) = postgres::database() else {
        return;
    };
    let nodes = nodes(&db.url, 3).await;
    for round in 0..10 {
        let id = format!("race-{round}");
        let attempts = (0..12).map(|i| {
            let node = &nodes[i % nodes.len()];
            let body = new_image(&id, &format!("attempt {i}"));
            async move { (i, node.admin().post("/v3/image", body).await) }
        });
        let answers = futures_util::future::join_all(attempts).await;
        let winners: Vec<usize> = answers
            .iter()
            .filter(|(_, (status, _))| *status == 200)
            .map(|(i, _)| *i)
            .collect();
        assert_eq!(winners.len(), 1, "exactly one create wins: {answers:?}");
        for (i, (status, body)) in &answers {
            assert!(
                *status == 200 || *status == 409,
                "attempt {i}: {status} {body}"
            );
        }
        // What is stored is the winner's, on every node.
        for node in &nodes {
            let (_, seen, _) = node.image(&id).await;
            assert_eq!(seen["name"], format!("attempt {}", winners[0]));
        }
    }
    let creates = nodes[2]
        .audit()
        .await
        .iter()
        .filter(|r| r["method"] == "POST")
        .count();
    assert_eq!(creates, 10, "one audit record per image created");
}

#[tokio::test]
async fn concurrent_puts_with_one_if_match_over_the_nodes_give_one_200_and_412s() {
    let Some(db) = postgres::database() else {
        return;
    };
    let nodes = nodes(&db.url, 3).await;
    let id = "contended";
    assert_eq!(
        nodes[0]
            .admin()
            .post("/v3/image", new_image(id, "start"))
            .await
            .0,
        200
    );
    for round in 0..10 {
        let (_, _, etag) = nodes[round % 3].image(id).await;
        let etag = etag.unwrap();
        let attempts = (0..12).map(|i| {
            let node = &nodes[i % nodes.len()];
            let etag = etag.clone();
            async move {
                let response = node
                    .admin()
                    .request(Method::PUT, &image_path(id))
                    .header("If-Match", etag)
                    .json(&json!({"name": format!("round {round} attempt {i}")}))
                    .send()
                    .await
                    .unwrap();
                (i, status_json(response).await)
            }
        });
        let answers = futures_util::future::join_all(attempts).await;
        let winners: Vec<usize> = answers
            .iter()
            .filter(|(_, (status, _))| *status == 200)
            .map(|(i, _)| *i)
            .collect();
        assert_eq!(winners.len(), 1, "exactly one PUT wins: {answers:?}");
        for (i, (status, body)) in &answers {
            assert!(
                *status == 200 || *status == 412,
                "attempt {i}: {status} {body}"
            );
        }
        for node in &nodes {
            let (_, seen, _) = node.image(id).await;
            assert_eq!(
                seen["name"],
                format!("round {round} attempt {}", winners[0])
            );
        }
    }
    let updates = nodes[1]
        .audit()
        .await
        .iter()
        .filter(|r| r["method"] == "PUT")
        .count();
    assert_eq!(updates, 10, "one audit record per update that won");
}

#[tokio::test]
async fn writers_on_every_node_leave_one_audit_record_per_change_and_paging_skips_none() {
    let Some(db) = postgres::database() else {
        return;
    };
    let nodes = Arc::new(nodes(&db.url, 3).await);
    let done = Arc::new(AtomicBool::new(false));
    // Each writer on each node creates, renames and deletes images of its own.
    let writers: Vec<_> = (0..6)
        .map(|w| {
            let nodes = nodes.clone();
            tokio::spawn(async move {
                let node = &nodes[w % nodes.len()];
                let mut acknowledged = Vec::new();
                for i in 0..15 {
                    let id = format!("w{w}-{i}");
                    let (status, body) = node.admin().post("/v3/image", new_image(&id, "a")).await;
                    assert_eq!(status, 200, "{body}");
                    acknowledged.push(("POST", id.clone()));
                    let (status, body) = node
                        .admin()
                        .put(&image_path(&id), json!({"name": "b"}))
                        .await;
                    assert_eq!(status, 200, "{body}");
                    acknowledged.push(("PUT", id.clone()));
                    if i % 3 == 0 {
                        assert_eq!(node.admin().delete(&image_path(&id)).await.0, 200);
                        acknowledged.push(("DELETE", id));
                    }
                }
                acknowledged
            })
        })
        .collect();
    // Meanwhile, readers page the audit newest first, each on its own node: every
    // pass must see, below its first record, every seq down to 1 (seqs are given in
    // commit order, so a record that commits later is always above the marker).
    let pagers: Vec<_> = (0..3)
        .map(|p| {
            let nodes = nodes.clone();
            let done = done.clone();
            tokio::spawn(async move {
                let node = &nodes[p];
                let mut passes = 0;
                while !done.load(Ordering::Relaxed) || passes == 0 {
                    let mut seen = Vec::new();
                    let mut marker: Option<u64> = None;
                    loop {
                        let path = match marker {
                            Some(m) => format!("/v3/audit?limit=7&marker={m}"),
                            None => "/v3/audit?limit=7".to_string(),
                        };
                        let (status, page) = node.admin().get(&path).await;
                        assert_eq!(status, 200, "{page}");
                        let page = seqs(&page);
                        let Some(last) = page.last() else { break };
                        marker = Some(*last);
                        seen.extend(page);
                    }
                    if let Some(top) = seen.first() {
                        let expected: Vec<u64> = (1..=*top).rev().collect();
                        assert_eq!(seen, expected, "a pass of the audit skipped or repeated");
                    }
                    passes += 1;
                }
                passes
            })
        })
        .collect();
    let mut acknowledged = Vec::new();
    for writer in writers {
        acknowledged.extend(writer.await.unwrap());
    }
    done.store(true, Ordering::Relaxed);
    for pager in pagers {
        assert!(pager.await.unwrap() > 0);
    }
    let trail = nodes[0].audit().await;
    let trail_seqs: Vec<u64> = trail.iter().map(|r| r["seq"].as_u64().unwrap()).collect();
    let expected: Vec<u64> = (1..=acknowledged.len() as u64).rev().collect();
    assert_eq!(
        trail_seqs, expected,
        "seqs unique, without a gap, newest first"
    );
    let mut recorded: Vec<(String, String)> = trail
        .iter()
        .map(|r| {
            (
                r["method"].as_str().unwrap().to_owned(),
                r["id"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let mut acknowledged: Vec<(String, String)> = acknowledged
        .into_iter()
        .map(|(m, id)| (m.to_owned(), id))
        .collect();
    recorded.sort();
    acknowledged.sort();
    assert_eq!(recorded, acknowledged, "one record per acknowledged change");
    // Each image's records are in the order its writer made them.
    let mut order: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for record in trail.iter().rev() {
        order
            .entry(record["id"].as_str().unwrap().to_owned())
            .or_default()
            .push(record["method"].as_str().unwrap().to_owned());
    }
    for (id, methods) in order {
        assert_eq!(methods[..2], ["POST", "PUT"], "{id}");
    }
}

/// What the writes of a fault test got.
#[derive(Default)]
struct Outcomes {
    /// 200: these must be there afterwards.
    acknowledged: Vec<String>,
    /// 503 "nothing was changed": these must not be there.
    unchanged: Vec<String>,
    /// 503 "outcome unknown", or no answer at all (the node died): either.
    unknown: Vec<String>,
}

/// Creates images `{prefix}-0`, `-1`, ... on `node` until `stop` is set or the node
/// stops answering; a 503 must say whether anything was changed, and a client
/// backs off a little after one.
async fn write_until(
    address: String,
    prefix: String,
    stop: Arc<AtomicBool>,
    outcomes: Arc<Mutex<Outcomes>>,
) {
    let client = reqwest::Client::builder().timeout(HANG).build().unwrap();
    let admin = Caller::at(&address).via(&client).admin();
    for i in 0.. {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let id = format!("{prefix}-{i}");
        let started = Instant::now();
        let answer = admin
            .request(Method::POST, "/v3/image")
            .json(&new_image(&id, "written under faults"))
            .send()
            .await;
        let response = match answer {
            Ok(response) => response,
            Err(e) => {
                assert!(
                    !e.is_timeout(),
                    "a write hung for {} s: {e}",
                    started.elapsed().as_secs()
                );
                // The node is gone: this write may or may not have committed.
                outcomes.lock().unknown.push(id);
                return;
            }
        };
        let status = response.status().as_u16();
        let body: Value = match response.text().await {
            Ok(text) => serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}")),
            // Cut off after the status line: a 200 was given all the same.
            Err(_) if status == 200 => Value::Null,
            Err(_) => {
                outcomes.lock().unknown.push(id);
                return;
            }
        };
        let message = body["message"].as_str().unwrap_or_default().to_owned();
        match status {
            200 => outcomes.lock().acknowledged.push(id),
            503 if message.contains("nothing was changed") => {
                assert!(!message.contains("unknown"), "{message}");
                outcomes.lock().unchanged.push(id);
            }
            503 if message.contains("unknown") && message.contains("GET") => {
                outcomes.lock().unknown.push(id)
            }
            _ => panic!("a write got {status} {body}"),
        }
        if status == 503 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Checks, through `node`, what `outcomes` promise about the images named by
/// `prefixes`: every acknowledged one is there, none answered "nothing was changed"
/// is, and each one there has exactly one audit record (nothing half-written).
/// Returns how many of unknown outcome were committed.
async fn check_outcomes(node: &Node, outcomes: &Outcomes) -> usize {
    let listed: BTreeSet<String> = ids_of(&node.all_images().await).into_iter().collect();
    let lost: Vec<&String> = outcomes
        .acknowledged
        .iter()
        .filter(|id| !listed.contains(*id))
        .collect();
    assert!(lost.is_empty(), "acknowledged but missing: {lost:?}");
    let appeared: Vec<&String> = outcomes
        .unchanged
        .iter()
        .filter(|id| listed.contains(*id))
        .collect();
    assert!(
        appeared.is_empty(),
        "answered 'nothing was changed' but there: {appeared:?}"
    );
    let trail = node.audit().await;
    let mut created: BTreeMap<String, usize> = BTreeMap::new();
    for record in &trail {
        if record["method"] == "POST" {
            *created
                .entry(record["id"].as_str().unwrap().to_owned())
                .or_default() += 1;
        }
    }
    for id in &listed {
        assert_eq!(
            created.get(id),
            Some(&1),
            "image {id} without its one record"
        );
    }
    for id in created.keys() {
        assert!(listed.contains(id), "a record of {id}, which is not there");
    }
    // The counters every node reads agree with the rows.
    assert_eq!(
        node.metric("image_catalog_images ").await,
        Some(listed.len() as f64)
    );
    assert_eq!(
        node.metric("image_catalog_audit_records ").await,
        Some(trail.len() as f64)
    );
    outcomes
        .unknown
        .iter()
        .filter(|id| listed.contains(*id))
        .count()
}

#[tokio::test]
async fn kill_9_of_a_writing_node_loses_nothing_it_acknowledged() {
    let Some(db) = postgres::database() else {
        return;
    };
    let survivor = Node::start(&db.url).await;
    let outcomes = Arc::new(Mutex::new(Outcomes::default()));
    let stop_survivor = Arc::new(AtomicBool::new(false));
    // The survivor writes all along, so the victim dies among other nodes' writes.
    let survivor_writer = tokio::spawn(write_until(
        survivor.address().to_owned(),
        "survivor".into(),
        stop_survivor.clone(),
        outcomes.clone(),
    ));
    const ROUNDS: usize = 5;
    let mut unanswered = 0;
    for round in 0..ROUNDS {
        let victim = Node::start(&db.url).await;
        let stop = Arc::new(AtomicBool::new(false));
        let writers: Vec<_> = (0..4)
            .map(|w| {
                tokio::spawn(write_until(
                    victim.address().to_owned(),
                    format!("victim{round}-{w}"),
                    stop.clone(),
                    outcomes.clone(),
                ))
            })
            .collect();
        let prefix = format!("victim{round}-");
        let (outcomes_ref, prefix_ref) = (&outcomes, &prefix);
        poll(
            "the victim to acknowledge writes",
            HANG,
            move || async move {
                let acknowledged = outcomes_ref
                    .lock()
                    .acknowledged
                    .iter()
                    .filter(|id| id.starts_with(prefix_ref))
                    .count();
                (acknowledged >= 40).then_some(())
            },
        )
        .await;
        victim.server.kill();
        for writer in writers {
            writer.await.unwrap();
        }
        unanswered += outcomes
            .lock()
            .unknown
            .iter()
            .filter(|id| id.starts_with(&prefix))
            .count();
    }
    stop_survivor.store(true, Ordering::Relaxed);
    survivor_writer.await.unwrap();
    let outcomes = std::mem::take(&mut *outcomes.lock());
    let committed = check_outcomes(&survivor, &outcomes).await;
    let troubled: Vec<&String> = outcomes
        .unchanged
        .iter()
        .chain(&outcomes.unknown)
        .filter(|id| id.starts_with("survivor"))
        .collect();
    assert!(
        troubled.is_empty(),
        "the survivor's writes failed as the victim died: {troubled:?}"
    );
    report(&format!(
        "nodes kill -9: {ROUNDS} rounds, acknowledged {}, lost 0, cut off in flight {unanswered} \
         (committed {committed}), nothing half-written, every write of the surviving node a 200",
        outcomes.acknowledged.len()
    ));
}

#[tokio::test]
async fn postgres_stopped_under_the_nodes_is_503_and_they_recover_without_a_restart() {
    let Some(cluster) = postgres::Cluster::start() else {
        return;
    };
    let db = cluster.database();
    let mut nodes = nodes(&db.url, 2).await;
    let known = "known-before-the-outages";
    assert_eq!(
        nodes[0]
            .admin()
            .post("/v3/image", new_image(known, "x"))
            .await
            .0,
        200
    );
    let outcomes = Arc::new(Mutex::new(Outcomes::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..4)
        .map(|w| {
            tokio::spawn(write_until(
                nodes[w % 2].address().to_owned(),
                format!("outage-{w}"),
                stop.clone(),
                outcomes.clone(),
            ))
        })
        .collect();
    const ROUNDS: usize = 5;
    let (mut to_503, mut to_recover) = (Vec::new(), Vec::new());
    let landed = |more: usize| {
        let outcomes = outcomes.clone();
        let enough = outcomes.lock().acknowledged.len() + more;
        move || {
            let outcomes = outcomes.clone();
            async move { (outcomes.lock().acknowledged.len() >= enough).then_some(()) }
        }
    };
    for round in 0..ROUNDS {
        poll("writes to land before the outage", HANG, landed(20)).await;
        cluster.stop_immediate();
        let stopped = Instant::now();
        for node in &mut nodes {
            let shared: &Node = node;
            let (_, body) = poll("a node to answer 503", HANG, move || async move {
                let (status, body, _) = shared.image(known).await;
                (status == 503).then_some(body)
            })
            .await;
            let message = body["message"].as_str().expect("a JSON message");
            assert!(message.contains("unavailable"), "{message}");
            let (status, body) = Caller::at(node.address())
                .via(&node.client)
                .get("/healthz")
                .await;
            assert_eq!(status, 503, "/healthz during the outage: {body}");
            assert!(body["message"].is_string());
            assert!(node.running(), "round {round}: the node exited");
        }
        to_503.push(stopped.elapsed());
        cluster.restart();
        let restarted = Instant::now();
        for node in &nodes {
            poll("a node to serve again", HANG, move || async move {
                (node.image(known).await.0 == 200).then_some(())
            })
            .await;
            let (status, _) = Caller::at(node.address())
                .via(&node.client)
                .get("/healthz")
                .await;
            assert_eq!(status, 200);
            // No connection the outage broke is handed out again: a burst as wide
            // as the pool is served whole.
            let burst = (0..32).map(|_| node.image(known));
            for (status, body, _) in futures_util::future::join_all(burst).await {
                assert_eq!(status, 200, "round {round}, after recovery: {body}");
            }
        }
        to_recover.push(restarted.elapsed());
    }
    // Writes land again after the last outage, on both nodes.
    poll("writes to land after the outages", HANG, landed(20)).await;
    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        writer.await.unwrap();
    }
    for node in &mut nodes {
        assert!(node.running());
    }
    let outcomes = std::mem::take(&mut *outcomes.lock());
    let committed = check_outcomes(&nodes[1], &outcomes).await;
    let max = |times: &[Duration]| times.iter().max().copied().map_or(0, millis);
    report(&format!(
        "nodes outage (pg_ctl stop -m immediate): {ROUNDS} rounds, 2 nodes, acknowledged {}, \
         lost 0, 503 'nothing was changed' {} (all absent), 503 'outcome unknown' {} \
         (committed {committed}), time to 503 max {} ms, time to recover max {} ms",
        outcomes.acknowledged.len(),
        outcomes.unchanged.len(),
        outcomes.unknown.len(),
        max(&to_503),
        max(&to_recover),
    ));
}

#[tokio::test]
async fn a_write_whose_connection_broke_is_answered_honestly() {
    let Some(db) = postgres::database() else {
        return;
    };
    let proxy = CutProxy::to(db.port).unwrap();
    let via_proxy = edit(
        &db.url,
        &format!(":{}/", db.port),
        &format!(":{}/", proxy.port),
    );
    let cut = Node::start(&via_proxy).await;
    let other = Node::start(&db.url).await;
    let post = |id: &'static str| {
        let cut = &cut;
        async move { cut.admin().post("/v3/image", new_image(id, "cut")).await }
    };

    // Cut before the server saw the change: nothing was changed, and the message
    // says so truthfully.
    proxy.arm(b"cut-before-insert", Cut::Before);
    let (status, body) = post("cut-before-insert").await;
    assert_eq!(status, 503, "{body}");
    let message = body["message"].as_str().unwrap();
    assert!(message.contains("nothing was changed"), "{message}");
    assert_eq!(other.image("cut-before-insert").await.0, 404);

    // COMMIT reached the server, its answer never came back: committed, and the
    // node must not say "nothing was changed".
    proxy.arm(b"COMMIT", Cut::After);
    let (status, body) = post("cut-after-commit").await;
    assert_eq!(status, 503, "{body}");
    let message = body["message"].as_str().unwrap();
    assert!(!message.contains("nothing was changed"), "{message}");
    assert!(
        message.contains("unknown") && message.contains("GET the image"),
        "{message}"
    );
    // A node on PostgreSQL does not restart after a broken connection: the message
    // must not promise what only the sled store does.
    assert!(!message.contains("restart"), "{message}");
    // The server may still be committing when the node answers: the image turns up.
    let other_ref = &other;
    poll("the cut COMMIT to show", HANG, move || async move {
        (other_ref.image("cut-after-commit").await.0 == 200).then_some(())
    })
    .await;

    // COMMIT lost on the way: not committed, but the node cannot know that.
    proxy.arm(b"COMMIT", Cut::Before);
    let (status, body) = post("cut-commit-lost").await;
    assert_eq!(status, 503, "{body}");
    let message = body["message"].as_str().unwrap();
    assert!(message.contains("unknown"), "{message}");
    assert_eq!(other.image("cut-commit-lost").await.0, 404);

    // The node goes on with a fresh connection.
    let (status, body) = post("after-the-cuts").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(other.image("after-the-cuts").await.0, 200);
}

#[tokio::test]
async fn a_write_waiting_for_a_synchronous_standby_is_no_200_until_the_standby_has_it() {
    let Some(cluster) = postgres::Cluster::start() else {
        return;
    };
    let db = cluster.database();
    let node = Node::start_with(&db.url, "statement_timeout_ms = 3000").await;
    let other = Node::start(&db.url).await;
    // Synchronous replication to a standby that is not there: every COMMIT waits.
    cluster.psql("ALTER SYSTEM SET synchronous_standby_names = 'standby_not_there'");
    cluster.restart();
    let (status, body) = node
        .admin()
        .post("/v3/image", new_image("waits-for-standby", "x"))
        .await;
    // The COMMIT is committed locally but waits for the standby (statement_timeout
    // does not cut that wait): a 200 would promise what the operator's synchronous
    // replication does not hold yet, "nothing was changed" would be false.
    assert_eq!(status, 503, "{body}");
    let message = body["message"].as_str().unwrap();
    assert!(message.contains("unknown"), "{message}");
    // The standby requirement lifted, the waiting COMMIT completes.
    cluster.psql("ALTER SYSTEM RESET synchronous_standby_names");
    cluster.psql("SELECT pg_reload_conf()");
    let other = &other;
    poll("the waiting COMMIT to complete", HANG, move || async move {
        (other.image("waits-for-standby").await.0 == 200).then_some(())
    })
    .await;
    let (status, body) = node
        .admin()
        .post("/v3/image", new_image("after-the-standby", "x"))
        .await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn a_node_facing_another_schema_major_exits_3_for_an_operator() {
    let Some(cluster) = postgres::shared() else {
        return;
    };
    let db = cluster.database();
    // The schema made by a first node, then "upgraded" by a release of another major.
    let first = Node::start(&db.url).await;
    first.server.kill();
    cluster.psql_in(&db.name, "UPDATE schema_version SET major = 2, minor = 0");
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), &node_config(""));
    let mut child = binary()
        .arg("--config")
        .arg(&path)
        .arg("serve")
        .env(image_catalog::config::DATABASE_URL_VAR, &db.url)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (_, status) = poll("the node to refuse the database", HANG, || {
        let exited = child.try_wait().unwrap();
        async move { exited }
    })
    .await;
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(stderr.contains("schema 2.0"), "{stderr}");
    // 3: a restart cannot help (the unit's RestartPreventExitStatus), unlike 1.
    assert_eq!(status.code(), Some(3), "{stderr}");
}

#[tokio::test]
async fn a_node_given_several_hosts_uses_the_one_that_answers() {
    let Some(db) = postgres::database() else {
        return;
    };
    // A failover-ready URL as the guide shows it: the first host is down.
    let down = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = edit(
        &db.url,
        &format!("127.0.0.1:{}/", db.port),
        &format!("127.0.0.1:{down},127.0.0.1:{}/", db.port),
    );
    let node = Node::start(&format!("{url}&target_session_attrs=read-write")).await;
    let (status, body) = node
        .admin()
        .post("/v3/image", new_image("via-the-second-host", "x"))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        Node::start(&db.url)
            .await
            .image("via-the-second-host")
            .await
            .0,
        200
    );
    let leaked = node
        .server
        .startup_log
        .iter()
        .any(|l| l.contains(&db.password));
    assert!(
        !leaked,
        "the password in the log: {:#?}",
        node.server.startup_log
    );
}

#[tokio::test]
async fn config_reloads_and_request_metrics_stay_per_node_while_the_catalog_is_shared() {
    let Some(db) = postgres::database() else {
        return;
    };
    let mut a = Node::start(&db.url).await;
    let b = Node::start(&db.url).await;
    // carol is added to A's config, and A alone is reloaded.
    let carol = format!(
        "\n[[users]]\nname = \"carol\"\npassword_hash = \"{}\"\nroles = [\"reader\"]\n",
        cheap_hash("carol-secret")
    );
    std::fs::write(&a.config, format!("{}{carol}", node_config(""))).unwrap();
    a.server.signal("HUP");
    within_a_minute("A's reload", a.server.wait_for_log("config reloaded")).await;
    async fn as_carol(node: &Node) -> u16 {
        let caller = Caller::at(node.address()).via(&node.client);
        let caller = caller.user("carol", "carol-secret");
        caller.get("/v3/images?limit=1").await.0
    }
    assert_eq!(as_carol(&a).await, 200);
    assert_eq!(
        as_carol(&b).await,
        401,
        "B was not reloaded: carol is unknown there"
    );
    // Counters of requests are the node's own; the catalog's figures are shared.
    let failures = "image_catalog_auth_failures_total ";
    assert_eq!(a.metric(failures).await, Some(0.0));
    assert_eq!(b.metric(failures).await, Some(1.0));
    let (status, body) = a.admin().post("/v3/image", new_image("shared", "x")).await;
    assert_eq!(status, 200, "{body}");
    for node in [&a, &b] {
        assert_eq!(node.metric("image_catalog_images ").await, Some(1.0));
        assert_eq!(node.metric("image_catalog_audit_records ").await, Some(1.0));
    }
}

#[tokio::test]
async fn a_connection_that_stopped_answering_does_not_keep_a_node_unhealthy() {
    let Some(db) = postgres::database() else {
        return;
    };
    let proxy = CutProxy::to(db.port).unwrap();
    let via_proxy = edit(
        &db.url,
        &format!(":{}/", db.port),
        &format!(":{}/", proxy.port),
    );
    let node = Node::start(&via_proxy).await;
    let healthz = || async {
        Caller::at(node.address())
            .via(&node.client)
            .get("/healthz")
            .await
            .0
    };
    assert_eq!(healthz().await, 200);
    // The node's pooled connection goes silent, as one to a primary whose machine
    // vanished does: the next statement (its Sync message) is never answered.
    proxy.arm(b"S\x00\x00\x00\x04", Cut::Stall);
    assert_eq!(
        healthz().await,
        503,
        "the silent connection fails the check"
    );
    // A balancer that took the node out sends it nothing but health checks: they
    // must not meet the silent connection again, or the node stays out for good.
    for check in 0..5 {
        assert_eq!(healthz().await, 200, "check {check} after the silent one");
    }
}

/// A follower of `node`'s change stream, after `last_event_id` if given, else from the
/// next change.
async fn follow(node: &Node, last_event_id: Option<u64>) -> crate::changes::Events {
    let mut request = node
        .reader()
        .request(Method::GET, "/v3/changes")
        .header("accept", "text/event-stream");
    if let Some(id) = last_event_id {
        request = request.header("last-event-id", id.to_string());
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), 200);
    crate::changes::Events::of(response)
}

/// Resolves once `n` requests wait on `node`.
async fn until_waiting(node: &Node, n: f64) {
    poll("requests to wait", HANG, || async {
        (node.metric("image_catalog_waiting_requests ").await == Some(n)).then_some(())
    })
    .await;
}

/// The trail's seqs, oldest first.
async fn trail_seqs(node: &Node) -> Vec<u64> {
    let mut trail = seqs(&Value::Array(node.audit().await));
    trail.reverse();
    trail
}

/// Creates `count` images named `prefix-N` on the node at `address`, one at a time.
async fn create_many(address: String, prefix: &'static str, count: usize) {
    let caller = Caller::at(&address).admin();
    for i in 0..count {
        let (status, body) = caller
            .post("/v3/image", new_image(&format!("{prefix}-{i}"), "x"))
            .await;
        assert_eq!(status, 200, "{body}");
    }
}

#[tokio::test]
async fn a_change_on_one_node_ends_a_wait_on_another_within_a_second() {
    let Some(db) = postgres::database() else {
        return;
    };
    let nodes = nodes(&db.url, 2).await;
    let read = {
        let caller = nodes[1].reader();
        let request = caller
            .request(Method::GET, "/v3/image/x")
            .header("prefer", "wait=60");
        tokio::spawn(request.send())
    };
    let poll_feed = {
        let caller = nodes[1].admin();
        tokio::spawn(
            caller
                .request(Method::GET, "/v3/audit?after=0&wait=60")
                .send(),
        )
    };
    until_waiting(&nodes[1], 2.0).await;
    let (status, _) = nodes[0]
        .admin()
        .post("/v3/image", new_image("x", "x"))
        .await;
    assert_eq!(status, 200);
    let created = Instant::now();
    let read = within_a_minute("the blocking read", read)
        .await
        .unwrap()
        .unwrap();
    let woken = created.elapsed();
    assert_eq!(read.status(), 200);
    let (status, body) = status_json(
        within_a_minute("the long poll", poll_feed)
            .await
            .unwrap()
            .unwrap(),
    )
    .await;
    assert_eq!((status, seqs(&body)), (200, vec![1]));
    report(&format!(
        "nodes: a write on one node ended a wait on another after {} ms",
        millis(woken)
    ));
    assert!(
        woken < Duration::from_secs(1),
        "the issue's bound: {woken:?}"
    );
}

#[tokio::test]
async fn a_third_node_follows_two_writing_nodes_and_sees_every_seq_once_in_order() {
    let Some(db) = postgres::database() else {
        return;
    };
    let nodes = nodes(&db.url, 3).await;
    let mut events = follow(&nodes[2], None).await;
    until_waiting(&nodes[2], 1.0).await;
    let writers = [
        tokio::spawn(create_many(nodes[0].address().to_owned(), "left", 60)),
        tokio::spawn(create_many(nodes[1].address().to_owned(), "right", 60)),
    ];
    for writer in writers {
        writer.await.unwrap();
    }
    let trail = trail_seqs(&nodes[0]).await;
    assert_eq!(trail.len(), 120);
    let followed: Vec<u64> = events
        .changes(trail.len())
        .await
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(followed, trail, "every seq once, in order");
}

#[tokio::test]
async fn a_follower_whose_node_is_killed_resumes_on_another_and_misses_nothing() {
    let Some(db) = postgres::database() else {
        return;
    };
    let mut nodes = nodes(&db.url, 2).await;
    let mut events = follow(&nodes[0], None).await;
    until_waiting(&nodes[0], 1.0).await;
    let writer = tokio::spawn(create_many(nodes[1].address().to_owned(), "w", 80));
    let mut followed: Vec<u64> = events
        .changes(20)
        .await
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    let victim = nodes.remove(0);
    victim.server.kill();
    writer.await.unwrap();
    let last = *followed.last().unwrap();
    let mut events = follow(&nodes[0], Some(last)).await;
    let trail = trail_seqs(&nodes[0]).await;
    let rest = events.changes(trail.len() - followed.len()).await;
    followed.extend(rest.into_iter().map(|(id, _)| id));
    assert_eq!(
        followed, trail,
        "resumed with Last-Event-ID: nothing missed or repeated"
    );
}

#[tokio::test]
async fn postgres_stopped_and_started_under_a_follower_loses_it_nothing() {
    let Some(cluster) = postgres::Cluster::start() else {
        return;
    };
    let db = cluster.database();
    let nodes = nodes(&db.url, 2).await;
    let mut events = follow(&nodes[0], None).await;
    until_waiting(&nodes[0], 1.0).await;
    create_many(nodes[1].address().to_owned(), "before", 10).await;
    let mut followed: Vec<u64> = events
        .changes(10)
        .await
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    cluster.stop_immediate();
    poll("the writing node to answer 503", HANG, || async {
        (nodes[1].image("before-0").await.0 == 503).then_some(())
    })
    .await;
    cluster.restart();
    poll("the writing node to serve again", HANG, || async {
        (nodes[1].image("before-0").await.0 == 200).then_some(())
    })
    .await;
    create_many(nodes[1].address().to_owned(), "after", 10).await;
    let trail = trail_seqs(&nodes[1]).await;
    while followed.len() < trail.len() {
        match events.next().await {
            Some(crate::changes::Event::Change { id, .. }) => followed.push(id),
            Some(crate::changes::Event::Comment(_)) => {}
            // The stream may end in the outage: a client reconnects, as browsers do.
            None => events = follow(&nodes[0], followed.last().copied()).await,
        }
    }
    assert_eq!(
        followed, trail,
        "nothing missed or repeated across the outage"
    );
}
