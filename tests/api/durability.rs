//! Nothing lost: acknowledged changes survive SIGKILL, the store refuses a second
//! server, and SIGTERM/SIGINT stop cleanly.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use reqwest::Method;
use serde_json::{Value, json};
use tokio::sync::Notify;

use crate::helpers::{ADMIN, DEFAULT_POLICIES, config_text, default_users};
use crate::process::{ChildServer, serve_refused, write_config};

const ROUNDS: usize = 5;
const WRITERS: usize = 8;
/// Acknowledged changes per round before the kill.
const ACKS_BEFORE_KILL: usize = 150;

#[derive(Debug, Clone)]
enum Op {
    Create { id: String, name: String },
    Update { id: String, name: String },
    Delete { id: String },
}

impl Op {
    fn id(&self) -> &str {
        match self {
            Op::Create { id, .. } | Op::Update { id, .. } | Op::Delete { id } => id,
        }
    }

    /// The image's name after this op, if it applied (None: absent).
    fn after(&self) -> Option<String> {
        match self {
            Op::Create { name, .. } | Op::Update { name, .. } => Some(name.clone()),
            Op::Delete { .. } => None,
        }
    }

    async fn send(&self, client: &reqwest::Client, base: &str) -> reqwest::Result<u16> {
        let request = match self {
            Op::Create { id, name } => client
                .post(format!("{base}/v3/image"))
                .json(&json!({"id": id, "provider": "ec2", "remote_user": "u", "name": name})),
            Op::Update { id, name } => client
                .put(format!("{base}/v3/image/{id}"))
                .json(&json!({"name": name})),
            Op::Delete { id } => client.delete(format!("{base}/v3/image/{id}")),
        };
        let response = request.basic_auth(ADMIN.0, Some(ADMIN.1)).send().await?;
        Ok(response.status().as_u16())
    }
}

/// What one writer saw: ops with their status, and the op in flight at the kill.
struct WriterLog {
    done: Vec<(Op, u16)>,
    in_flight: Option<Op>,
}

async fn writer(
    base: String,
    prefix: String,
    acks: Arc<AtomicUsize>,
    enough: Arc<Notify>,
) -> WriterLog {
    let client = reqwest::Client::new();
    let mut log = WriterLog {
        done: Vec::new(),
        in_flight: None,
    };
    for k in 0.. {
        let id = format!("{prefix}-{k:05}");
        let mut ops = vec![
            Op::Create {
                id: id.clone(),
                name: "created".into(),
            },
            // Refused (409): must leave no trace.
            Op::Create {
                id: id.clone(),
                name: "duplicate".into(),
            },
            Op::Update {
                id: id.clone(),
                name: format!("updated-{k}"),
            },
        ];
        if k % 2 == 0 {
            ops.push(Op::Delete { id: id.clone() });
        }
        for op in ops {
            match op.send(&client, &base).await {
                Ok(status) => {
                    log.done.push((op, status));
                    if status == 200 && acks.fetch_add(1, Ordering::SeqCst) + 1 == ACKS_BEFORE_KILL
                    {
                        enough.notify_one();
                    }
                }
                Err(_) => {
                    log.in_flight = Some(op);
                    return log;
                }
            }
        }
    }
    unreachable!()
}

async fn list_all(base: &str, path: &str) -> Vec<Value> {
    let response = reqwest::Client::new()
        .request(Method::GET, format!("{base}{path}"))
        .basic_auth(ADMIN.0, Some(ADMIN.1))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.json::<Vec<Value>>().await.unwrap()
}

#[tokio::test]
async fn acknowledged_changes_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &config_text(DEFAULT_POLICIES, &default_users()));

    // What must be on disk: id -> name, for every acknowledged change.
    let mut model: BTreeMap<String, Option<String>> = BTreeMap::new();
    let mut applied_changes = 0usize;

    for round in 0..ROUNDS {
        let server = ChildServer::start(&config).await;
        let acks = Arc::new(AtomicUsize::new(0));
        let enough = Arc::new(Notify::new());
        let writers: Vec<_> = (0..WRITERS)
            .map(|w| {
                tokio::spawn(writer(
                    server.address.clone(),
                    format!("r{round}-w{w}"),
                    acks.clone(),
                    enough.clone(),
                ))
            })
            .collect();
        enough.notified().await;
        server.kill();
        let mut uncertain = Vec::new();
        for handle in writers {
            let log = handle.await.unwrap();
            for (op, status) in log.done {
                match (&op, status) {
                    (_, 200) => {
                        model.insert(op.id().to_owned(), op.after());
                        applied_changes += 1;
                    }
                    (Op::Create { .. }, 409) => {}
                    (op, status) => panic!("{op:?} got {status}"),
                }
            }
            uncertain.extend(log.in_flight);
        }

        eprintln!(
            "round {round}: {} changes acknowledged so far, {} requests in flight at the kill",
            applied_changes,
            uncertain.len()
        );
        // Restart on the same data dir and compare.
        let server = ChildServer::start(&config).await;
        let listed = list_all(&server.address, "/v3/images").await;
        let mut actual: BTreeMap<String, Option<String>> = listed
            .iter()
            .map(|i| {
                (
                    i["id"].as_str().unwrap().to_owned(),
                    Some(i["name"].as_str().unwrap().to_owned()),
                )
            })
            .collect();
        // An op cut short by the kill may or may not have landed; settle each one by
        // what is stored, and count it as a change if it did.
        for op in &uncertain {
            let before = model.get(op.id()).cloned().flatten();
            let now = actual.get(op.id()).cloned().flatten();
            if now == op.after() && now != before {
                model.insert(op.id().to_owned(), op.after());
                applied_changes += 1;
            } else {
                assert_eq!(
                    now, before,
                    "{op:?} left a state that is neither before nor after"
                );
            }
        }
        let expected: BTreeMap<String, Option<String>> = model
            .iter()
            .filter(|(_, v)| v.is_some())
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        actual.retain(|_, v| v.is_some());
        assert_eq!(actual.len(), expected.len(), "round {round}: image count");
        assert_eq!(
            actual, expected,
            "round {round}: every acknowledged change, nothing else"
        );

        // Every change has its audit record, and no record lacks its change.
        let audit = list_all(&server.address, "/v3/audit").await;
        assert_eq!(audit.len(), applied_changes, "round {round}: audit records");
        let seqs: Vec<u64> = audit.iter().map(|r| r["seq"].as_u64().unwrap()).collect();
        assert!(seqs.windows(2).all(|w| w[0] > w[1]), "newest first, unique");
        server.kill();
    }
}

fn serve_config(dir: &std::path::Path) -> std::path::PathBuf {
    write_config(dir, &config_text(DEFAULT_POLICIES, &default_users()))
}

#[tokio::test]
async fn a_second_server_on_the_same_data_dir_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let config = serve_config(dir.path());
    let _first = ChildServer::start(&config).await;
    let (code, stderr) = serve_refused(&config);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("is in use by another image-catalog process"),
        "{stderr}"
    );
}

#[tokio::test]
async fn an_unknown_store_format_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let config = serve_config(dir.path());
    {
        let store =
            image_catalog::store::embedded::SledStore::open(&dir.path().join("data"), 8).unwrap();
        store.set_format_version_for_tests("7").unwrap();
    }
    let (code, stderr) = serve_refused(&config);
    assert_eq!(
        code, 3,
        "a restart cannot help: the store needs an operator"
    );
    assert!(stderr.contains("store format version '7'"), "{stderr}");
}

/// SIGTERM and SIGINT: a request already being received completes, then the server
/// exits 0 and its data is there on restart.
#[tokio::test]
async fn termination_signals_finish_in_flight_requests_and_exit_0() {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

    for signal in ["TERM", "INT"] {
        let dir = tempfile::tempdir().unwrap();
        let config = serve_config(dir.path());
        let mut server = ChildServer::start(&config).await;
        let host = server.address.trim_start_matches("http://").to_owned();

        let body = json!({"id": "in-flight", "provider": "ec2", "remote_user": "u"}).to_string();
        let auth = base64_basic();
        let stream = tokio::net::TcpStream::connect(&host).await.unwrap();
        let mut stream = BufReader::new(stream);
        let head = format!(
            "POST /v3/image HTTP/1.1\r\nHost: {host}\r\nAuthorization: Basic {auth}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\nExpect: 100-continue\r\n\r\n",
            body.len()
        );
        stream.get_mut().write_all(head.as_bytes()).await.unwrap();
        // The server has parsed the request once it says 100 Continue.
        let mut line = String::new();
        stream.read_line(&mut line).await.unwrap();
        assert!(line.starts_with("HTTP/1.1 100"), "{line}");
        stream.read_line(&mut line).await.unwrap();

        server.signal(signal);
        server.wait_for_log("shutdown").await;
        stream.get_mut().write_all(body.as_bytes()).await.unwrap();
        let mut status = String::new();
        stream.read_line(&mut status).await.unwrap();
        assert!(status.starts_with("HTTP/1.1 200"), "SIG{signal}: {status}");
        drop(stream);

        let log = server.rest_of_log().await;
        assert!(log.iter().any(|l| l.contains("stopped cleanly")), "{log:?}");
        assert_eq!(server.wait().code(), Some(0), "SIG{signal}");

        let server = ChildServer::start(&config).await;
        let listed = list_all(&server.address, "/v3/images").await;
        assert_eq!(listed.len(), 1, "SIG{signal}");
    }
}

fn base64_basic() -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", ADMIN.0, ADMIN.1))
}
