use std::borrow::Borrow;
use std::path::PathBuf;
use std::sync::OnceLock;

use actix_web::web;

use argon2::password_hash::{PasswordHasher, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use image_catalog::app::AppState;
use image_catalog::config::Config;
use image_catalog::startup::Application;
use reqwest::{Method, RequestBuilder, Response};
use serde_json::Value;
use tempfile::TempDir;

pub const ADMIN: (&str, &str) = ("admin", "admin-secret");
pub const READER: (&str, &str) = ("reader", "reader-secret");
/// A token-only user with the reader role.
pub const BOT_TOKEN: &str = "bot-token-0123456789";
pub const MAX_BODY: usize = 4096;

/// argon2id with the smallest parameters: the server reads them from the hash, and
/// tests should not spend seconds hashing.
pub fn cheap_hash(password: &str) -> String {
    let params = Params::new(8, 1, 1, None).unwrap();
    let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
    let salt = SaltString::encode_b64(b"test-salt-16byte").unwrap();
    argon
        .hash_password(password.as_bytes(), &salt)
        .unwrap()
        .to_string()
}

pub fn sha256_hex(s: &str) -> String {
    hex::encode(image_catalog::domain::change::sha256(s.as_bytes()))
}

/// The users every default test config has.
pub fn default_users() -> String {
    static USERS: OnceLock<String> = OnceLock::new();
    USERS
        .get_or_init(|| {
            format!(
                r#"
[[users]]
name = "{}"
password_hash = "{}"
roles = ["admin"]

[[users]]
name = "{}"
password_hash = "{}"
roles = ["reader"]

[[users]]
name = "bot"
token_sha256 = "{}"
roles = ["reader"]
"#,
                ADMIN.0,
                cheap_hash(ADMIN.1),
                READER.0,
                cheap_hash(READER.1),
                sha256_hex(BOT_TOKEN)
            )
        })
        .clone()
}

pub const DEFAULT_POLICIES: &str = r#"
[policies]
read_images  = ["admin", "reader"]
create_image = ["admin"]
delete_image = ["admin"]
read_audit   = ["admin"]
"#;

pub fn config_text(policies: &str, users: &str) -> String {
    let store = store_section();
    format!(
        r#"
providers = ["ec2", "openstack", "static"]

[server]
bind = "127.0.0.1:0"
data_dir = "data"
max_body_bytes = {MAX_BODY}

[store]
{store}
{policies}
{users}
"#
    )
}

/// Whether this run of the suite is on PostgreSQL: `tests/api/main.rs` runs the suite
/// on the embedded store, and `tests/api_postgres.rs` runs the same modules (less
/// those about sled itself) on a private PostgreSQL.
pub fn on_postgres() -> bool {
    crate::ON_POSTGRES && postgres_database().is_some()
}

/// The database of the running test: each test runs on a thread of its own, and
/// every config it writes (a restart, a reload) names the same database.
fn postgres_database() -> Option<String> {
    use std::cell::RefCell;
    thread_local! {
        static DATABASE: RefCell<Option<String>> = const { RefCell::new(None) };
    }
    if !crate::ON_POSTGRES {
        return None;
    }
    DATABASE.with(|db| {
        let mut db = db.borrow_mut();
        if db.is_none() {
            *db = crate::pg::database().map(|test_db| test_db.url);
        }
        db.clone()
    })
}

/// `[store]` of the test configs.
fn store_section() -> String {
    match postgres_database() {
        Some(url) => format!("backend = \"postgres\"\nurl = {url:?}"),
        None => "cache_mb = 8".into(),
    }
}

/// The default test config with its data in `data`.
pub fn config_in(data: &std::path::Path) -> String {
    edit(
        &config_text(DEFAULT_POLICIES, &default_users()),
        "data_dir = \"data\"",
        &format!("data_dir = {:?}", data.display().to_string()),
    )
}

/// The default test config with `server` added to its `[server]` table and `extra`
/// (more tables) at its end.
pub fn config_with(server: &str, extra: &str) -> String {
    let text = edit(
        &config_text(DEFAULT_POLICIES, &default_users()),
        &format!("max_body_bytes = {MAX_BODY}\n"),
        &format!("max_body_bytes = {MAX_BODY}\n{server}\n"),
    );
    format!("{text}\n{extra}\n")
}

/// The real server, started in-process on 127.0.0.1:0 in a temporary folder.
///
/// `app.get(path)` and friends ask without credentials; `app.admin()`, `app.reader()`,
/// `app.user(name, password)` and `app.bearer(token)` ask as someone. They answer
/// `(status, json)` and check the content type every JSON response must have;
/// `request(method, path)` gives the raw request for tests that need headers.
pub struct TestApp {
    pub address: String,
    pub client: reqwest::Client,
    state: web::Data<AppState>,
    config_path: PathBuf,
    /// Kept so the folder outlives the server.
    _dir: TempDir,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(&config_text(DEFAULT_POLICIES, &default_users())).await
}

/// Starts the real server on the given config text, in a fresh temporary folder.
pub async fn spawn_app_with(config: &str) -> TestApp {
    spawn_app_in(tempfile::tempdir().unwrap(), config).await
}

/// Starts the real server on the given config text in `dir`, which may hold a data
/// dir already.
pub async fn spawn_app_in(dir: TempDir, config: &str) -> TestApp {
    let path = dir.path().join("config.toml");
    std::fs::write(&path, config).unwrap();
    let config = Config::load(&path).expect("test config is valid");
    let app = Application::build(config, Some(path.clone()))
        .await
        .expect("server starts");
    let address = format!("http://{}", app.address());
    let state = app.state();
    tokio::spawn(app.run_until_stopped());
    TestApp {
        address,
        client: reqwest::Client::new(),
        state,
        config_path: path,
        _dir: dir,
    }
}

#[derive(Clone, Copy)]
enum Credentials<'a> {
    None,
    Basic(&'a str, &'a str),
    Bearer(&'a str),
}

/// Requests to a server (a [`TestApp`], or a child's address) with one set of
/// credentials.
pub struct Caller<'a> {
    client: reqwest::Client,
    address: &'a str,
    credentials: Credentials<'a>,
}

impl TestApp {
    /// `host:port` of the server, for raw sockets.
    pub fn socket_address(&self) -> &str {
        self.address.trim_start_matches("http://")
    }

    /// Prunes the audit trail now, as `[audit] keep_days` does at its next turn.
    pub async fn prune_audit(&self) -> u64 {
        self.state.prune_audit_now().await.unwrap()
    }

    /// Writes `config` over the server's config.toml and reloads it, as SIGHUP does.
    pub async fn reload(&self, config: &str) {
        std::fs::write(&self.config_path, config).unwrap();
        self.state.reload().await;
    }

    pub fn anonymous(&self) -> Caller<'_> {
        Caller::at(&self.address).via(&self.client)
    }

    pub fn admin(&self) -> Caller<'_> {
        self.anonymous().admin()
    }

    pub fn reader(&self) -> Caller<'_> {
        self.anonymous().reader()
    }

    pub fn user<'a>(&'a self, name: &'a str, password: &'a str) -> Caller<'a> {
        self.anonymous().user(name, password)
    }

    pub fn bearer<'a>(&'a self, token: &'a str) -> Caller<'a> {
        self.anonymous().bearer(token)
    }

    /// A request without credentials.
    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.client
            .request(method, format!("{}{}", self.address, path))
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.anonymous().get(path).await
    }

    /// Creates an image as the admin.
    pub async fn create(&self, body: Value) -> (u16, Value) {
        self.admin().post("/v3/image", body).await
    }

    /// Creates an image that must succeed.
    pub async fn seed(&self, id: &str, provider: &str) {
        let (status, body) = self
            .create(serde_json::json!({
                "id": id, "provider": provider, "remote_user": "ubuntu", "name": format!("image {id}")
            }))
            .await;
        assert_eq!(status, 200, "seeding {id}: {body}");
    }

    /// The image `id` as the reader sees it.
    pub async fn get_image(&self, id: &str) -> (u16, Value) {
        self.reader().get(&image_path(id)).await
    }

    /// The raw response to the reader's GET of image `id`, for its headers.
    pub async fn get_image_response(&self, id: &str) -> Response {
        self.reader()
            .request(Method::GET, &image_path(id))
            .send()
            .await
            .unwrap()
    }

    /// The number in `/metrics` of the line that starts with `prefix`.
    pub async fn metric(&self, prefix: &str) -> Option<f64> {
        self.anonymous().metric(prefix).await
    }
}

impl<'a> Caller<'a> {
    /// The number in `/metrics` of the line that starts with `prefix`.
    pub async fn metric(&self, prefix: &str) -> Option<f64> {
        let response = self.request(Method::GET, "/metrics").send().await.unwrap();
        assert_eq!(response.status(), 200);
        metric(&response.text().await.unwrap(), prefix)
    }

    /// Requests without credentials to the server at `address` (`http://host:port`).
    pub fn at(address: &'a str) -> Caller<'a> {
        Caller {
            client: reqwest::Client::new(),
            address,
            credentials: Credentials::None,
        }
    }

    /// Sends through `client` (e.g. one bound to another local address).
    pub fn via(self, client: &reqwest::Client) -> Caller<'a> {
        Caller {
            client: client.clone(),
            ..self
        }
    }

    pub fn admin(self) -> Caller<'a> {
        self.user(ADMIN.0, ADMIN.1)
    }

    pub fn reader(self) -> Caller<'a> {
        self.user(READER.0, READER.1)
    }

    pub fn user(self, name: &'a str, password: &'a str) -> Caller<'a> {
        Caller {
            credentials: Credentials::Basic(name, password),
            ..self
        }
    }

    pub fn bearer(self, token: &'a str) -> Caller<'a> {
        Caller {
            credentials: Credentials::Bearer(token),
            ..self
        }
    }

    /// The raw request, with these credentials.
    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let request = self
            .client
            .request(method, format!("{}{}", self.address, path));
        match self.credentials {
            Credentials::None => request,
            Credentials::Basic(name, password) => request.basic_auth(name, Some(password)),
            Credentials::Bearer(token) => request.bearer_auth(token),
        }
    }

    async fn send(&self, method: Method, path: &str, body: Option<&Value>) -> (u16, Value) {
        let mut request = self.request(method, path);
        if let Some(body) = body {
            request = request.json(body);
        }
        status_json(request.send().await.unwrap()).await
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.send(Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: impl Borrow<Value>) -> (u16, Value) {
        self.send(Method::POST, path, Some(body.borrow())).await
    }

    pub async fn put(&self, path: &str, body: impl Borrow<Value>) -> (u16, Value) {
        self.send(Method::PUT, path, Some(body.borrow())).await
    }

    pub async fn delete(&self, path: &str) -> (u16, Value) {
        self.send(Method::DELETE, path, None).await
    }
}

/// `/v3/image/{id}` with `id` percent-encoded.
pub fn image_path(id: &str) -> String {
    format!("/v3/image/{}", encode(id))
}

/// The value of the metric line that starts with `prefix`, if any.
pub fn metric(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Fails the test, rather than hanging it, if `event` has not happened in a minute.
pub async fn within_a_minute<T>(event: &str, future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(std::time::Duration::from_secs(60), future)
        .await
        .unwrap_or_else(|_| panic!("gave up after a minute waiting for: {event}"))
}

/// `text` with `from` replaced by `to`; panics naming `from` when `text` does not hold
/// it, so that a test whose config edit silently stopped matching fails loudly.
pub fn edit(text: &str, from: &str, to: &str) -> String {
    assert!(
        text.contains(from),
        "the text to edit does not contain {from:?}:\n{text}"
    );
    text.replace(from, to)
}

/// Percent-encodes a path segment.
pub fn encode(segment: &str) -> String {
    percent_encoding::utf8_percent_encode(segment, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// Status and parsed JSON body; also checks the content type every response must have.
pub async fn status_json(response: Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned());
    assert_eq!(
        content_type.as_deref(),
        Some("application/json"),
        "status {status}"
    );
    let text = response.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    (status, body)
}

/// Asserts an error answer: its status, the one JSON shape, and words of the message.
pub fn assert_error((got, body): (u16, Value), status: u16, words: &str) {
    assert_eq!(got, status, "{body}");
    let object = body.as_object().expect("error body is an object");
    assert_eq!(object.len(), 1, "only a message: {body}");
    let message = object["message"].as_str().expect("message is a string");
    assert!(
        message.contains(words),
        "message {message:?} should contain {words:?}"
    );
}

#[test]
#[should_panic(expected = "does not contain \"port = 1\"")]
fn an_edit_that_matches_nothing_fails_naming_what_it_looked_for() {
    edit(&config_text(DEFAULT_POLICIES, ""), "port = 1", "port = 2");
}

/// The default policies, but the role `reader` may read the audit trail and not the
/// images: a user with `read_audit` alone.
pub fn policies_without_read_images() -> String {
    let policies = edit(
        DEFAULT_POLICIES,
        "read_images  = [\"admin\", \"reader\"]",
        "read_images  = [\"admin\"]",
    );
    edit(
        &policies,
        "read_audit   = [\"admin\"]",
        "read_audit   = [\"admin\", \"reader\"]",
    )
}

/// The `seq` of each audit record of a JSON array.
pub fn seqs(records: &Value) -> Vec<u64> {
    records
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["seq"].as_u64().unwrap())
        .collect()
}

/// Resolves once `n` requests wait on `app` (`image_catalog_waiting_requests`): what
/// a test does next then happens while they wait.
pub async fn until_waiting(app: &TestApp, n: f64) {
    until_waiting_at(&app.address, n).await;
}

/// [`until_waiting`] for a server at `address` (a child process, say).
pub async fn until_waiting_at(address: &str, n: f64) {
    within_a_minute("requests to wait", async {
        while Caller::at(address)
            .metric("image_catalog_waiting_requests ")
            .await
            != Some(n)
        {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    })
    .await;
}
