use std::sync::OnceLock;

use argon2::password_hash::{PasswordHasher, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
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
    format!(
        r#"
providers = ["ec2", "openstack", "static"]

[server]
bind = "127.0.0.1:0"
data_dir = "data"
max_body_bytes = {MAX_BODY}

[store]
cache_mb = 8
{policies}
{users}
"#
    )
}

/// The default test config with `server` added to its `[server]` table and `extra`
/// (more tables) at its end.
pub fn config_with(server: &str, extra: &str) -> String {
    let text = config_text(DEFAULT_POLICIES, &default_users()).replace(
        &format!("max_body_bytes = {MAX_BODY}\n"),
        &format!("max_body_bytes = {MAX_BODY}\n{server}\n"),
    );
    format!("{text}\n{extra}\n")
}

pub struct TestApp {
    pub address: String,
    pub client: reqwest::Client,
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
    let app = Application::build(config, Some(path)).expect("server starts");
    let address = format!("http://{}", app.address());
    tokio::spawn(app.run_until_stopped());
    TestApp {
        address,
        client: reqwest::Client::new(),
        _dir: dir,
    }
}

impl TestApp {
    /// `host:port` of the server, for raw sockets.
    pub fn socket_address(&self) -> &str {
        self.address.trim_start_matches("http://")
    }

    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.client
            .request(method, format!("{}{}", self.address, path))
    }

    pub fn as_admin(&self, method: Method, path: &str) -> RequestBuilder {
        self.request(method, path)
            .basic_auth(ADMIN.0, Some(ADMIN.1))
    }

    pub fn as_reader(&self, method: Method, path: &str) -> RequestBuilder {
        self.request(method, path)
            .basic_auth(READER.0, Some(READER.1))
    }

    pub async fn create(&self, body: Value) -> Response {
        self.as_admin(Method::POST, "/v3/image")
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    /// Creates an image that must succeed.
    pub async fn seed(&self, id: &str, provider: &str) {
        let response = self
            .create(serde_json::json!({
                "id": id, "provider": provider, "remote_user": "ubuntu", "name": format!("image {id}")
            }))
            .await;
        assert_eq!(response.status(), 200, "seeding {id}");
    }

    pub async fn get_image(&self, id: &str) -> Response {
        self.as_reader(Method::GET, &format!("/v3/image/{}", encode(id)))
            .send()
            .await
            .unwrap()
    }
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

/// Asserts an error response: its status, the one JSON shape, and words of the message.
pub async fn assert_error(response: Response, status: u16, words: &str) {
    let (got, body) = status_json(response).await;
    assert_eq!(got, status, "{body}");
    let object = body.as_object().expect("error body is an object");
    assert_eq!(object.len(), 1, "only a message: {body}");
    let message = object["message"].as_str().expect("message is a string");
    assert!(
        message.contains(words),
        "message {message:?} should contain {words:?}"
    );
}
