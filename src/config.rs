//! `config.toml` -> a validated [`Config`]: the server settings, the providers, and the
//! [`Access`] table (users, their credentials, the policies each one holds).
//!
//! A config that could let the wrong user in, or lock everyone out by a typo, is
//! refused as a whole with a message naming the problem and, where known, its line.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use argon2::PasswordHash;
use serde::Deserialize;
use toml::Spanned;

pub use crate::database_url::DatabaseUrl;
use crate::domain::access::{self, Access, User};
use crate::forwarded::TrustedProxies;

/// The passwords the bundled config.toml documents; a user still on one is warned about.
pub const DEMO_PASSWORDS: &[&str] = &["admin-demo-password", "reader-demo-password"];

pub const DEFAULT_PROVIDERS: &[&str] = &["ec2", "openstack", "static"];

const NO_USERS: &str = "no users: add at least one [[users]] entry with a password_hash \
                        (from `image-catalog hash-password`) or a token_sha256 (from \
                        `image-catalog new-token`)";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "cannot read {path}: {source}; name the config file with --config PATH or the \
         IMAGE_CATALOG_CONFIG variable, or write one with `image-catalog init`"
    )]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
}

#[derive(Debug, Clone)]
pub struct Config {
    pub providers: Vec<String>,
    pub server: ServerConfig,
    pub store: StoreConfig,
    pub audit: AuditConfig,
    pub auth: AuthConfig,
    pub ui: UiConfig,
    pub access: Access,
}

/// The page for people under `/ui/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UiConfig {
    /// `false`: every `/ui/` path and `/` are 404s.
    pub enabled: bool,
}

/// The audit trail's retention.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditConfig {
    /// How long a record is kept; `None` keeps every record.
    pub keep: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    pub bind: String,
    /// Already resolved against the config file's folder.
    pub data_dir: PathBuf,
    pub max_body_bytes: usize,
    /// How long a new connection may take to send its first request head.
    pub client_request_timeout: Duration,
    /// How long a closing connection may take to acknowledge the close.
    pub client_disconnect_timeout: Duration,
    /// How long an idle connection stays open between requests; zero closes it after
    /// each response.
    pub keep_alive: Duration,
    /// How long a request body may take to arrive once the handler reads it.
    pub body_timeout: Duration,
    /// Connections served at once; the ones past it are answered 503 and closed.
    /// `None`: set at start from the limit on open files (see `limits`).
    pub max_connections: Option<usize>,
    /// Connections served at once from one peer address; past it, 503 and closed.
    pub max_connections_per_address: usize,
    /// The request headers' names and values, in bytes; past it, 431 and closed.
    pub max_header_bytes: usize,
    /// Connections the kernel queues before the server accepts them.
    pub backlog: u32,
    /// HTTPS on `bind`, when set; SIGHUP reads the files again.
    pub tls: Option<TlsFiles>,
    /// Reverse proxies whose `X-Forwarded-For` names the client.
    pub trusted_proxies: TrustedProxies,
    /// Connections served at once from one trusted proxy, instead of
    /// `max_connections_per_address`: a proxy carries many clients.
    pub max_connections_per_proxy: usize,
    /// Requests waiting for a change at once (long polls, blocking reads, streams);
    /// past it a new one is a 503.
    pub max_waiters: usize,
}

/// The PEM files of `[server] tls_cert` and `tls_key`, resolved against the config
/// file's folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The brute-force throttle (see `throttle`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthConfig {
    /// Failures in a row of one (user, address) pair before its attempts are spaced.
    pub free_failures: u32,
    /// The first gap; it doubles with each further failure.
    pub first_delay: Duration,
    /// The largest gap; an attempt whose turn is further away than this is refused.
    pub max_delay: Duration,
    /// A pair with no attempt for this long is forgotten.
    pub quiet_window: Duration,
    /// How many pairs are remembered at most; the oldest go first.
    pub max_tracked: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreConfig {
    /// The embedded store's cache.
    pub cache_mb: u64,
    /// `serve --accept-data-loss`: start on a store behind its high-water mark. Never
    /// read from the file.
    pub accept_data_loss: bool,
    /// How long a flush of the embedded store may take before it counts as failed
    /// (fail-stop): a disk that stops answering must not hang every write.
    pub flush_timeout: Duration,
    /// `backend = "postgres"`: where the catalog lives instead of the data dir.
    pub postgres: Option<PostgresConfig>,
    /// Keys set in the file that this backend ignores, and other things to warn of.
    pub notes: Vec<String>,
}

/// The variable that, when set, gives the database URL in place of `[store] url`.
pub const DATABASE_URL_VAR: &str = "IMAGE_CATALOG_DATABASE_URL";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostgresConfig {
    pub url: DatabaseUrl,
    /// To open a connection, and to wait for one from the pool.
    pub connect_timeout: Duration,
    /// Each statement, at most.
    pub statement_timeout: Duration,
    /// Connections this node opens at most.
    pub pool_size: usize,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default = "default_providers")]
    providers: Vec<String>,
    #[serde(default)]
    server: RawServer,
    #[serde(default)]
    store: RawStore,
    #[serde(default)]
    audit: RawAudit,
    #[serde(default)]
    auth: RawAuth,
    #[serde(default)]
    ui: RawUi,
    #[serde(default)]
    policies: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    users: Vec<Spanned<RawUser>>,
}

fn default_providers() -> Vec<String> {
    DEFAULT_PROVIDERS.iter().map(|p| p.to_string()).collect()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawServer {
    bind: String,
    data_dir: Option<PathBuf>,
    max_body_bytes: usize,
    client_request_timeout_ms: u64,
    client_disconnect_timeout_ms: u64,
    keep_alive_ms: u64,
    body_timeout_ms: u64,
    max_connections: Option<usize>,
    max_connections_per_address: usize,
    max_header_bytes: usize,
    backlog: u32,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    trusted_proxies: Vec<String>,
    max_connections_per_proxy: usize,
    max_waiters: usize,
}

impl Default for RawServer {
    fn default() -> Self {
        RawServer {
            bind: "127.0.0.1:8080".into(),
            data_dir: None,
            max_body_bytes: 65536,
            client_request_timeout_ms: 5000,
            client_disconnect_timeout_ms: 1000,
            keep_alive_ms: 5000,
            body_timeout_ms: 10_000,
            max_connections: None,
            max_connections_per_address: 64,
            // Node's default.
            max_header_bytes: 16 * 1024,
            backlog: 1024,
            tls_cert: None,
            tls_key: None,
            trusted_proxies: Vec::new(),
            max_connections_per_proxy: 1024,
            max_waiters: 4096,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawAuth {
    free_failures: u32,
    first_delay_ms: u64,
    max_delay_ms: u64,
    quiet_window_secs: u64,
    max_tracked: usize,
}

impl Default for RawAuth {
    fn default() -> Self {
        RawAuth {
            free_failures: 3,
            first_delay_ms: 1000,
            max_delay_ms: 30_000,
            quiet_window_secs: 900,
            max_tracked: 10_000,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawUi {
    enabled: bool,
}

impl Default for RawUi {
    fn default() -> Self {
        RawUi { enabled: true }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawAudit {
    keep_days: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawStore {
    backend: String,
    /// Not defaulted here, so that one set with postgres can be warned about.
    cache_mb: Option<u64>,
    url: Option<String>,
    connect_timeout_ms: u64,
    statement_timeout_ms: u64,
    pool_size: usize,
    flush_timeout_ms: u64,
}

impl Default for RawStore {
    fn default() -> Self {
        RawStore {
            backend: "sled".into(),
            cache_mb: None,
            url: None,
            connect_timeout_ms: 5000,
            statement_timeout_ms: 5000,
            pool_size: 16,
            flush_timeout_ms: 30_000,
        }
    }
}

const DEFAULT_CACHE_MB: u64 = 32;

/// `[store]` as the server uses it. `env_url` is [`DATABASE_URL_VAR`], if set.
fn check_store(
    raw: RawStore,
    data_dir_set: bool,
    env_url: Option<String>,
) -> Result<StoreConfig, String> {
    let mut notes = Vec::new();
    let cache_mb = raw.cache_mb.unwrap_or(DEFAULT_CACHE_MB);
    let postgres = match raw.backend.as_str() {
        "sled" => {
            if cache_mb == 0 {
                return Err("[store] cache_mb must be at least 1".into());
            }
            if raw.flush_timeout_ms == 0 {
                return Err("[store] flush_timeout_ms must be at least 1".into());
            }
            if raw.url.is_some() {
                notes.push(
                    "[store] url is ignored: backend is \"sled\" (set backend = \"postgres\" \
                     to use the database)"
                        .to_string(),
                );
            }
            if env_url.is_some() {
                notes.push(format!(
                    "{DATABASE_URL_VAR} is set but ignored: [store] backend is \"sled\""
                ));
            }
            None
        }
        "postgres" => {
            let from_file = raw.url.clone().map(DatabaseUrl::new);
            if let Some(url) = &from_file
                && url.has_password()
            {
                notes.push(format!(
                    "[store] url holds a password in the config file; give the URL in the \
                     {DATABASE_URL_VAR} variable instead (it overrides url), so the \
                     password need not sit in config.toml"
                ));
            }
            let from_env = env_url.is_some();
            let url = env_url.map(DatabaseUrl::new).or(from_file).ok_or_else(|| {
                format!(
                    "[store] backend = \"postgres\" needs url = \"postgres://user@host:port/dbname\" \
                     or the {DATABASE_URL_VAR} variable"
                )
            })?;
            let source = if from_env {
                DATABASE_URL_VAR
            } else {
                "[store] url"
            };
            crate::database_url::check_url(url.expose()).map_err(|why| {
                let masked = url.masked();
                format!(
                    "{source} '{masked}' is not a usable database URL ({}); write it as \
                     postgres://user@host:port/dbname?sslmode=require",
                    hide_unshown(&why, &masked)
                )
            })?;
            if data_dir_set {
                notes.push(
                    "[server] data_dir is ignored: the catalog is in PostgreSQL ([store] \
                     backend = \"postgres\")"
                        .to_string(),
                );
            }
            if raw.cache_mb.is_some() {
                notes.push(
                    "[store] cache_mb is ignored: it sizes the embedded store's cache, and \
                     backend is \"postgres\""
                        .to_string(),
                );
            }
            for (name, value) in [
                ("connect_timeout_ms", raw.connect_timeout_ms),
                ("statement_timeout_ms", raw.statement_timeout_ms),
                ("pool_size", raw.pool_size as u64),
            ] {
                if value == 0 {
                    return Err(format!("[store] {name} must be at least 1"));
                }
            }
            Some(PostgresConfig {
                url,
                connect_timeout: Duration::from_millis(raw.connect_timeout_ms),
                statement_timeout: Duration::from_millis(raw.statement_timeout_ms),
                pool_size: raw.pool_size,
            })
        }
        other => {
            return Err(format!(
                "[store] backend '{}' is unknown; it is \"sled\" (the default, in the data \
                 dir) or \"postgres\"",
                other.escape_debug()
            ));
        }
    };
    Ok(StoreConfig {
        cache_mb,
        accept_data_loss: false,
        flush_timeout: Duration::from_millis(raw.flush_timeout_ms),
        postgres,
        notes,
    })
}

/// `message` with each quoted word (in backquotes or single quotes) that `shown`
/// does not hold replaced by `***`: a parser's message may quote a piece of the URL,
/// and that piece may be part of the password.
fn hide_unshown(message: &str, shown: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(open) = rest.find(['`', '\'']) {
        let quote = rest[open..].chars().next().unwrap_or('`');
        out.push_str(&rest[..=open]);
        rest = &rest[open + 1..];
        let Some(close) = rest.find(quote) else {
            out.push_str(if shown.contains(rest) { rest } else { "***" });
            return out;
        };
        let word = &rest[..close];
        out.push_str(if shown.contains(word) { word } else { "***" });
        out.push(quote);
        rest = &rest[close + 1..];
    }
    out.push_str(rest);
    out
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUser {
    name: String,
    password_hash: Option<String>,
    token_sha256: Option<String>,
    #[serde(default)]
    roles: Vec<String>,
}

/// A config file is small: anything larger is not one.
pub const MAX_CONFIG_BYTES: u64 = 1024 * 1024;

/// The text of the config file at `path`, read only from a regular file of at most
/// [`MAX_CONFIG_BYTES`]: a FIFO, a device (`/dev/zero`) or a huge file would block the
/// read or fill the memory.
fn read_config_file(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let refuse = |why: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, why);
    let meta = std::fs::metadata(path)?;
    if !meta.is_file() {
        return Err(refuse(
            "not a regular file (a FIFO, a device or a folder); a config must be a file".into(),
        ));
    }
    if meta.len() > MAX_CONFIG_BYTES {
        return Err(refuse(format!(
            "{} bytes, more than a config file may hold ({MAX_CONFIG_BYTES})",
            meta.len()
        )));
    }
    // O_NONBLOCK: the path may have been swapped for a FIFO since the check.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(refuse("not a regular file".into()));
    }
    let mut text = String::new();
    file.take(MAX_CONFIG_BYTES + 1).read_to_string(&mut text)?;
    if text.len() as u64 > MAX_CONFIG_BYTES {
        return Err(refuse(format!(
            "more than a config file may hold ({MAX_CONFIG_BYTES} bytes)"
        )));
    }
    Ok(text)
}

impl Config {
    /// Reads the config file; [`DATABASE_URL_VAR`], when set, gives the database URL.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = read_config_file(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let env_url = std::env::var(DATABASE_URL_VAR)
            .ok()
            .filter(|url| !url.is_empty());
        Config::parse_with(&text, base, env_url).map_err(|message| ConfigError::Invalid {
            path: path.display().to_string(),
            message,
        })
    }

    /// Parses config text; relative paths in it are resolved against `base`.
    pub fn parse(text: &str, base: &Path) -> Result<Config, String> {
        Config::parse_with(text, base, None)
    }

    /// As [`Config::parse`], with the database URL of the environment, if any.
    pub fn parse_with(text: &str, base: &Path, env_url: Option<String>) -> Result<Config, String> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        let providers = check_providers(raw.providers)?;
        let server = raw.server;
        check_bind(&server.bind)?;
        let trusted_proxies = TrustedProxies::parse(&server.trusted_proxies)?;
        let tls = match (&server.tls_cert, &server.tls_key) {
            (Some(cert), Some(key)) => Some(TlsFiles {
                cert: base.join(cert),
                key: base.join(key),
            }),
            (None, None) => None,
            _ => {
                return Err(
                    "[server] tls_cert and tls_key go together: set both (HTTPS) or \
                            neither (plain HTTP)"
                        .into(),
                );
            }
        };
        // A zero would switch the limit off in actix, or refuse every request.
        for (name, value) in [
            ("max_body_bytes", server.max_body_bytes as u64),
            (
                "client_request_timeout_ms",
                server.client_request_timeout_ms,
            ),
            (
                "client_disconnect_timeout_ms",
                server.client_disconnect_timeout_ms,
            ),
            ("body_timeout_ms", server.body_timeout_ms),
            (
                "max_connections",
                server.max_connections.map_or(1, |n| n as u64),
            ),
            (
                "max_connections_per_address",
                server.max_connections_per_address as u64,
            ),
            ("max_header_bytes", server.max_header_bytes as u64),
            (
                "max_connections_per_proxy",
                server.max_connections_per_proxy as u64,
            ),
            ("backlog", u64::from(server.backlog)),
            ("max_waiters", server.max_waiters as u64),
        ] {
            if value == 0 {
                return Err(format!("[server] {name} must be at least 1"));
            }
        }
        let store = check_store(raw.store, server.data_dir.is_some(), env_url)?;
        let audit = match raw.audit.keep_days {
            Some(0) => {
                return Err(
                    "[audit] keep_days must be at least 1 (leave it out to keep every \
                            record)"
                        .into(),
                );
            }
            Some(days) if days > 100 * 365 => {
                return Err(
                    "[audit] keep_days is more than a century; leave it out to keep \
                            every record"
                        .into(),
                );
            }
            days => AuditConfig {
                keep: days.map(|d| Duration::from_secs(d * 86_400)),
            },
        };
        let auth = check_auth(raw.auth)?;
        let access = build_access(text, raw.policies, raw.users)?;
        if access.users().is_empty() {
            // Nobody could log in: on a reload that would lock everyone out.
            return Err(NO_USERS.into());
        }
        Ok(Config {
            providers,
            server: ServerConfig {
                bind: server.bind,
                data_dir: base.join(server.data_dir.unwrap_or_else(|| "data".into())),
                max_body_bytes: server.max_body_bytes,
                client_request_timeout: Duration::from_millis(server.client_request_timeout_ms),
                client_disconnect_timeout: Duration::from_millis(
                    server.client_disconnect_timeout_ms,
                ),
                keep_alive: Duration::from_millis(server.keep_alive_ms),
                body_timeout: Duration::from_millis(server.body_timeout_ms),
                max_connections: server.max_connections,
                max_connections_per_address: server.max_connections_per_address,
                max_header_bytes: server.max_header_bytes,
                backlog: server.backlog,
                tls,
                trusted_proxies,
                max_connections_per_proxy: server.max_connections_per_proxy,
                max_waiters: server.max_waiters,
            },
            store,
            audit,
            auth,
            ui: UiConfig {
                enabled: raw.ui.enabled,
            },
            access,
        })
    }
}

fn check_auth(raw: RawAuth) -> Result<AuthConfig, String> {
    if raw.free_failures == 0 {
        // Zero would space out every login, the first successful one included.
        return Err("[auth] free_failures must be at least 1".into());
    }
    if raw.max_delay_ms < raw.first_delay_ms {
        return Err(format!(
            "[auth] max_delay_ms ({}) must not be smaller than first_delay_ms ({})",
            raw.max_delay_ms, raw.first_delay_ms
        ));
    }
    if raw.quiet_window_secs == 0 {
        return Err("[auth] quiet_window_secs must be at least 1".into());
    }
    if raw.max_tracked == 0 {
        return Err("[auth] max_tracked must be at least 1".into());
    }
    Ok(AuthConfig {
        free_failures: raw.free_failures,
        first_delay: Duration::from_millis(raw.first_delay_ms),
        max_delay: Duration::from_millis(raw.max_delay_ms),
        quiet_window: Duration::from_secs(raw.quiet_window_secs),
        max_tracked: raw.max_tracked,
    })
}

/// What is wrong with a config file's permission bits, if anything: it holds password
/// hashes (which can be attacked offline) and decides who gets in.
pub fn permission_problems(mode: u32) -> Vec<&'static str> {
    let mut problems = Vec::new();
    if mode & 0o004 != 0 {
        problems.push("is readable by other users, who could attack its password hashes offline");
    }
    if mode & 0o022 != 0 {
        problems.push("is writable by group or other users, who could grant themselves access");
    }
    problems
}

/// Logs a warning for each [`permission_problems`] of the config file at `path`.
pub fn warn_insecure_permissions(path: &Path) {
    for warning in permission_warnings(path) {
        log::warn!("{warning}");
    }
}

/// What is wrong with who may read or change the config file at `path`.
pub fn permission_warnings(path: &Path) -> Vec<String> {
    use std::os::unix::fs::PermissionsExt;
    let Ok(metadata) = std::fs::metadata(path) else {
        return Vec::new();
    };
    let mode = metadata.permissions().mode();
    permission_problems(mode)
        .into_iter()
        .map(|problem| {
            format!(
                "{} (mode {:03o}) {problem}; restrict it with: chmod 600 {}",
                path.display(),
                mode & 0o777,
                path.display()
            )
        })
        .collect()
}

impl Config {
    /// What an operator should hear about at start and from `check-config`, short of
    /// refusing the config. (Demo passwords are `startup::demo_password_users`: they
    /// cost an argon2 verification each.)
    pub fn warnings(&self, path: &Path) -> Vec<String> {
        let mut warnings = permission_warnings(path);
        warnings.extend(self.store.notes.iter().cloned());
        if self.server.tls.is_none() && !is_loopback(&self.server.bind) {
            warnings.push(format!(
                "bind {} is reachable from other machines over plain HTTP: passwords and \
                 tokens would cross the network in clear; serve HTTPS (the guide's \"4. Deploying\", \"TLS\"), \
                 put a TLS proxy in front, or bind 127.0.0.1",
                self.server.bind
            ));
        }
        warnings
    }
}

/// Whether `bind` (already checked by [`check_bind`]) only listens on this machine.
fn is_loopback(bind: &str) -> bool {
    if let Ok(address) = bind.parse::<std::net::SocketAddr>() {
        return address.ip().is_loopback();
    }
    bind.rsplit_once(':')
        .is_some_and(|(host, _)| host.eq_ignore_ascii_case("localhost"))
}

/// `host:port`, where host is an IP address (IPv6 in brackets) or a name.
fn check_bind(bind: &str) -> Result<(), String> {
    if bind.parse::<std::net::SocketAddr>().is_ok() {
        return Ok(());
    }
    let refuse = || {
        format!(
            "[server] bind '{}' is not host:port (e.g. \"127.0.0.1:8080\", \"0.0.0.0:8080\", \
             \"[::1]:8080\", \"localhost:8080\")",
            bind.escape_debug()
        )
    };
    let (host, port) = bind.rsplit_once(':').ok_or_else(refuse)?;
    let name_ok = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
    if !name_ok || port.parse::<u16>().is_err() {
        return Err(refuse());
    }
    Ok(())
}

fn check_providers(providers: Vec<String>) -> Result<Vec<String>, String> {
    if providers.is_empty() {
        return Err("providers must list at least one provider".into());
    }
    let mut seen = BTreeSet::new();
    for p in &providers {
        if p.is_empty() || p.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!(
                "providers: '{}' is not a usable provider name (empty, or has whitespace)",
                p.escape_debug()
            ));
        }
        if !seen.insert(p) {
            return Err(format!("providers: '{p}' is listed twice"));
        }
    }
    Ok(providers)
}

fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

fn build_access(
    text: &str,
    policies: BTreeMap<String, Vec<String>>,
    users: Vec<Spanned<RawUser>>,
) -> Result<Access, String> {
    for name in policies.keys() {
        if !access::ALL.contains(&name.as_str()) {
            return Err(format!(
                "[policies]: unknown policy '{name}'; the policies are: {}",
                access::ALL.join(", ")
            ));
        }
    }
    let known_roles: BTreeSet<&str> = policies.values().flatten().map(String::as_str).collect();

    let mut users_built = Vec::new();
    let mut lines: HashMap<String, usize> = HashMap::new();
    for spanned in users {
        let line = line_of(text, spanned.span().start);
        let raw = spanned.into_inner();
        let at = format!("line {line}: user '{}'", raw.name.escape_debug());
        if raw.name.is_empty() || raw.name.contains(':') || raw.name.chars().any(char::is_control) {
            return Err(format!(
                "{at}: a user name must be non-empty, without ':' or control characters"
            ));
        }
        if let Some(first) = lines.get(&raw.name) {
            return Err(format!(
                "{at}: duplicated user (first defined on line {first})"
            ));
        }
        if raw.password_hash.is_none() && raw.token_sha256.is_none() {
            return Err(format!(
                "{at}: no credentials; give it password_hash (from `image-catalog hash-password`) \
                 and/or token_sha256 (from `image-catalog new-token`)"
            ));
        }
        if let Some(hash) = &raw.password_hash {
            check_password_hash(hash).map_err(|why| format!("{at}: password_hash {why}"))?;
        }
        let token_sha256 = match &raw.token_sha256 {
            Some(hex_digest) => Some(parse_sha256(hex_digest).ok_or_else(|| {
                format!("{at}: token_sha256 must be 64 hexadecimal digits (a SHA-256)")
            })?),
            None => None,
        };
        for role in &raw.roles {
            if !known_roles.contains(role.as_str()) {
                return Err(format!(
                    "{at}: unknown role '{}'; no policy in [policies] names it",
                    role.escape_debug()
                ));
            }
        }
        let held = access::ALL
            .iter()
            .copied()
            .filter(|p| {
                policies
                    .get(*p)
                    .is_some_and(|roles| roles.iter().any(|r| raw.roles.contains(r)))
            })
            .collect();
        lines.insert(raw.name.clone(), line);
        users_built.push(Arc::new(User {
            name: raw.name,
            password_hash: raw.password_hash,
            token_sha256,
            roles: raw.roles,
            policies: held,
        }));
    }
    Ok(Access::new(users_built))
}

fn check_password_hash(hash: &str) -> Result<(), String> {
    let parsed = PasswordHash::new(hash).map_err(|e| format!("is not a valid PHC string ({e})"))?;
    if parsed.algorithm.as_str() != "argon2id" {
        return Err(format!(
            "uses '{}'; only argon2id is accepted",
            parsed.algorithm.as_str()
        ));
    }
    if parsed.hash.is_none() || parsed.salt.is_none() {
        return Err("has no salt or no hash part".into());
    }
    argon2::Params::try_from(&parsed).map_err(|e| format!("has bad argon2 parameters ({e})"))?;
    Ok(())
}

fn parse_sha256(hex_digest: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex_digest, &mut out).ok()?;
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str =
        "$argon2id$v=19$m=8,t=1,p=1$c2FsdHNhbHQ$0hTRbhkbrQ8M8cEVNJOHxGVCKdPNUqT9H3BqR6ejPc8";

    fn parse(text: &str) -> Result<Config, String> {
        Config::parse(text, Path::new("/etc/ic"))
    }

    /// One user, so that a config is valid.
    fn with_user(text: &str) -> String {
        format!("{text}\n[[users]]\nname = \"u\"\npassword_hash = \"{HASH}\"\n")
    }

    #[test]
    fn bind_must_be_host_and_port() {
        for ok in [
            "127.0.0.1:8080",
            "0.0.0.0:0",
            "[::1]:80",
            "localhost:8080",
            "catalog.internal:443",
        ] {
            assert!(check_bind(ok).is_ok(), "{ok}");
        }
        for bad in [
            "8080",
            "127.0.0.1",
            "127.0.0.1:99999",
            ":8080",
            "host name:80",
            "http://x:80",
        ] {
            assert!(check_bind(bad).is_err(), "{bad}");
        }
        assert!(
            is_loopback("127.0.0.1:8080") && is_loopback("[::1]:1") && is_loopback("localhost:1")
        );
        assert!(!is_loopback("0.0.0.0:8080") && !is_loopback("catalog.internal:443"));
    }

    #[test]
    fn defaults_apply() {
        let config = parse(&with_user("")).unwrap();
        assert_eq!(config.providers, ["ec2", "openstack", "static"]);
        assert_eq!(config.server.bind, "127.0.0.1:8080");
        assert_eq!(config.server.data_dir, Path::new("/etc/ic/data"));
        assert_eq!(config.server.max_body_bytes, 65536);
        assert_eq!(config.store.cache_mb, 32);
        assert_eq!(config.server.client_request_timeout, Duration::from_secs(5));
        assert_eq!(
            config.server.client_disconnect_timeout,
            Duration::from_secs(1)
        );
        assert_eq!(config.server.keep_alive, Duration::from_secs(5));
        assert_eq!(config.server.body_timeout, Duration::from_secs(10));
        assert_eq!(config.server.max_connections, None);
        assert_eq!(config.server.max_connections_per_address, 64);
        assert_eq!(config.server.max_header_bytes, 16384);
        assert_eq!(config.server.backlog, 1024);
        assert_eq!(
            config.auth,
            AuthConfig {
                free_failures: 3,
                first_delay: Duration::from_secs(1),
                max_delay: Duration::from_secs(30),
                quiet_window: Duration::from_secs(900),
                max_tracked: 10_000,
            }
        );
        assert_eq!(config.access.users().len(), 1);
    }

    #[test]
    fn a_config_without_users_is_refused() {
        for text in ["", "[policies]\nread_images = [\"reader\"]\n", "users = []"] {
            let err = parse(text).unwrap_err();
            assert!(err.starts_with("no users"), "{err}");
        }
    }

    #[test]
    fn limits_are_read_and_zero_is_refused() {
        let config = parse(&with_user(
            "[server]\nclient_request_timeout_ms = 250\nkeep_alive_ms = 0\nbody_timeout_ms = 75\n\
             max_connections = 3\nmax_connections_per_address = 2\nmax_header_bytes = 100\n\
             backlog = 8\n[auth]\nfree_failures = 1\nfirst_delay_ms = 10\n\
             max_delay_ms = 20\nquiet_window_secs = 2\nmax_tracked = 5",
        ))
        .unwrap();
        assert_eq!(
            config.server.client_request_timeout,
            Duration::from_millis(250)
        );
        assert_eq!(config.server.keep_alive, Duration::ZERO);
        assert_eq!(config.server.body_timeout, Duration::from_millis(75));
        assert_eq!(config.server.max_connections, Some(3));
        assert_eq!(config.server.max_connections_per_address, 2);
        assert_eq!(config.server.max_header_bytes, 100);
        assert_eq!(config.server.backlog, 8);
        assert_eq!(config.auth.max_delay, Duration::from_millis(20));
        assert_eq!(config.auth.max_tracked, 5);
        for (text, expected) in [
            (
                "[server]\nbody_timeout_ms = 0",
                "body_timeout_ms must be at least 1",
            ),
            (
                "[server]\nclient_request_timeout_ms = 0",
                "client_request_timeout_ms must be at least 1",
            ),
            (
                "[server]\nmax_connections = 0",
                "max_connections must be at least 1",
            ),
            (
                "[server]\nmax_connections_per_address = 0",
                "max_connections_per_address must be at least 1",
            ),
            (
                "[server]\nmax_header_bytes = 0",
                "max_header_bytes must be at least 1",
            ),
            (
                "[auth]\nfree_failures = 0",
                "free_failures must be at least 1",
            ),
            (
                "[auth]\nfirst_delay_ms = 10\nmax_delay_ms = 5",
                "max_delay_ms (5) must not be smaller",
            ),
            ("[auth]\nmax_tracked = 0", "max_tracked must be at least 1"),
            ("[auth]\nlockout = 1", "unknown field"),
        ] {
            let err = parse(text).unwrap_err();
            assert!(
                err.contains(expected),
                "{err:?} should contain {expected:?}"
            );
        }
    }

    #[test]
    fn permission_problems_follow_the_mode_bits() {
        assert!(permission_problems(0o100600).is_empty());
        assert!(permission_problems(0o100640).is_empty());
        let readable = permission_problems(0o100644);
        assert_eq!(readable.len(), 1);
        assert!(readable[0].contains("readable by other users"));
        let writable = permission_problems(0o100620);
        assert_eq!(writable.len(), 1);
        assert!(writable[0].contains("writable by group or other users"));
        assert_eq!(permission_problems(0o100666).len(), 2);
    }

    #[test]
    fn policies_follow_roles() {
        let config = parse(&format!(
            r#"
[policies]
read_images = ["reader", "admin"]
create_image = ["admin"]

[[users]]
name = "r"
password_hash = "{HASH}"
roles = ["reader"]
"#
        ))
        .unwrap();
        let user = config.access.user("r").unwrap();
        assert!(user.holds("read_images"));
        assert!(!user.holds("create_image"));
        assert!(!user.holds("delete_image"));
    }

    #[test]
    fn refusals_name_the_problem() {
        let user = |extra: &str| {
            format!("[policies]\nread_images = [\"reader\"]\n[[users]]\nname = \"u\"\n{extra}")
        };
        let cases = [
            (
                "[policies]\nfly = [\"a\"]".to_string(),
                "unknown policy 'fly'",
            ),
            (
                user("roles = [\"reader\"]"),
                "line 3: user 'u': no credentials",
            ),
            (
                user(&format!("password_hash = \"{HASH}\"\nroles = [\"ops\"]")),
                "unknown role 'ops'",
            ),
            (
                user("password_hash = \"secret\""),
                "password_hash is not a valid PHC",
            ),
            (
                user("token_sha256 = \"abc\""),
                "token_sha256 must be 64 hexadecimal",
            ),
            (
                format!(
                    "{}\n[[users]]\nname = \"u\"\ntoken_sha256 = \"{}\"",
                    user(&format!("password_hash = \"{HASH}\"")),
                    "0".repeat(64)
                ),
                "duplicated user (first defined on line 3)",
            ),
            ("providers = []".to_string(), "at least one provider"),
            ("bogus = 1".to_string(), "unknown field"),
        ];
        for (text, expected) in cases {
            let err = parse(&text).unwrap_err();
            assert!(
                err.contains(expected),
                "{err:?} should contain {expected:?}"
            );
        }
    }

    fn store_of(store: &str, env_url: Option<&str>) -> Result<Config, String> {
        Config::parse_with(
            &with_user(store),
            Path::new("/etc/ic"),
            env_url.map(str::to_owned),
        )
    }

    const PG: &str = "[store]\nbackend = \"postgres\"\n";

    #[test]
    fn sled_is_the_default_and_takes_no_url() {
        let config = store_of("", None).unwrap();
        assert_eq!(config.store.postgres, None);
        assert!(config.store.notes.is_empty(), "{:?}", config.store.notes);
        assert!(config.warnings(Path::new("/nonexistent")).is_empty());

        let config = store_of(
            "[store]\nbackend = \"sled\"\nurl = \"postgres://u@h/db\"",
            Some("postgres://u:secret@h/db"),
        )
        .unwrap();
        assert_eq!(config.store.postgres, None);
        let notes = &config.store.notes;
        assert_eq!(notes.len(), 2, "{notes:?}");
        assert!(notes[0].contains("[store] url is ignored"), "{notes:?}");
        assert!(
            notes[1].contains("IMAGE_CATALOG_DATABASE_URL is set but ignored"),
            "{notes:?}"
        );
        assert!(!notes.concat().contains("secret"));
        assert_eq!(
            config.warnings(Path::new("/nonexistent")),
            *notes,
            "the notes are warnings"
        );

        let err = store_of("[store]\ncache_mb = 0", None).unwrap_err();
        assert!(err.contains("cache_mb must be at least 1"), "{err}");
    }

    #[test]
    fn postgres_reads_its_keys_and_defaults() {
        let config = store_of(
            &format!(
                "{PG}url = \"postgres://cat@db.internal:5432/catalog?sslmode=require\"\n\
                 connect_timeout_ms = 1500\nstatement_timeout_ms = 2500\npool_size = 4"
            ),
            None,
        )
        .unwrap();
        let pg = config.store.postgres.unwrap();
        assert_eq!(
            pg.url.expose(),
            "postgres://cat@db.internal:5432/catalog?sslmode=require"
        );
        assert_eq!(pg.connect_timeout, Duration::from_millis(1500));
        assert_eq!(pg.statement_timeout, Duration::from_millis(2500));
        assert_eq!(pg.pool_size, 4);
        assert!(config.store.notes.is_empty(), "{:?}", config.store.notes);

        let pg = store_of(&format!("{PG}url = \"postgres://h/db\""), None)
            .unwrap()
            .store
            .postgres
            .unwrap();
        assert_eq!(pg.connect_timeout, Duration::from_secs(5));
        assert_eq!(pg.statement_timeout, Duration::from_secs(5));
        assert_eq!(pg.pool_size, 16);
    }

    #[test]
    fn the_variable_overrides_the_file() {
        let file = format!("{PG}url = \"postgres://file@h/db\"");
        let url = |config: Config| config.store.postgres.unwrap().url;
        assert_eq!(
            url(store_of(&file, None).unwrap()).expose(),
            "postgres://file@h/db"
        );
        let config = store_of(&file, Some("postgres://env:secret@h/db")).unwrap();
        assert!(
            config.store.notes.is_empty(),
            "a password in the variable is where it belongs: {:?}",
            config.store.notes
        );
        assert_eq!(url(config).expose(), "postgres://env:secret@h/db");
        // The variable alone is enough.
        let config = store_of(PG, Some("host=h user=env dbname=db")).unwrap();
        assert_eq!(url(config).expose(), "host=h user=env dbname=db");
    }

    #[test]
    fn postgres_warnings() {
        let secret = "s3cr%40t-word";
        let config = store_of(
            &format!(
                "[server]\ndata_dir = \"/var/lib/ic\"\n{PG}url = \"postgres://cat:{secret}@h/db\"\n\
                 cache_mb = 0"
            ),
            None,
        )
        .unwrap();
        let notes = &config.store.notes;
        assert_eq!(notes.len(), 3, "{notes:?}");
        assert!(
            notes[0].contains("holds a password") && notes[0].contains(DATABASE_URL_VAR),
            "names the variable: {notes:?}"
        );
        assert!(notes[1].contains("data_dir is ignored"), "{notes:?}");
        assert!(
            notes[2].contains("cache_mb is ignored"),
            "a key the backend ignores is not refused: {notes:?}"
        );
        let all = notes.concat();
        assert!(!all.contains("s3cr") && !all.contains("t-word"), "{all}");
        assert!(
            !format!("{config:?}").contains("s3cr"),
            "Debug masks the URL"
        );

        // The password in a query word or key=value string is a password too.
        for url in [
            "postgres://cat@h/db?password=secret",
            "host=h user=cat password=secret",
        ] {
            let config = store_of(&format!("{PG}url = \"{url}\""), None).unwrap();
            assert_eq!(config.store.notes.len(), 1, "{url}");
            assert!(config.store.notes[0].contains("holds a password"));
        }
    }

    #[test]
    fn postgres_refusals() {
        let cases = [
            (PG.to_string(), "needs url"),
            (
                format!("{PG}url = \"postgres://h/db\"\nconnect_timeout_ms = 0"),
                "connect_timeout_ms must be at least 1",
            ),
            (
                format!("{PG}url = \"postgres://h/db\"\nstatement_timeout_ms = 0"),
                "statement_timeout_ms must be at least 1",
            ),
            (
                format!("{PG}url = \"postgres://h/db\"\npool_size = 0"),
                "pool_size must be at least 1",
            ),
            (
                "[store]\nbackend = \"mysql\"".to_string(),
                "backend 'mysql' is unknown",
            ),
            (
                format!("{PG}url = \"postgres://h/db\"\ncache = 1"),
                "unknown field",
            ),
            (format!("{PG}url = \"\""), "not a usable database URL"),
            (
                format!("{PG}url = \"postgres://cat:secret@h:port/db\""),
                "[store] url 'postgres://cat:***@h:port/db' is not a usable database URL",
            ),
            (
                format!("{PG}url = \"postgres://cat:secret@h/db?sslmode=sometimes\""),
                "is not a usable database URL",
            ),
            (
                format!("{PG}url = \"user=cat password=secret\""),
                "names no host",
            ),
            (
                format!("{PG}url = \"host=h password=secret mood=calm\""),
                "unknown option `mood`",
            ),
        ];
        for (text, expected) in cases {
            let err = store_of(&text, None).unwrap_err();
            assert!(
                err.contains(expected),
                "{err:?} should contain {expected:?}"
            );
            assert!(!err.contains("secret"), "{err}");
        }
        // The variable's URL is checked as well, and named.
        let err = store_of(PG, Some("postgres://cat:secret@h:port/db")).unwrap_err();
        assert!(
            err.starts_with("IMAGE_CATALOG_DATABASE_URL 'postgres://cat:***@h:port/db'"),
            "{err}"
        );
    }

    #[test]
    fn quoted_words_that_the_masked_url_hides_stay_hidden() {
        assert_eq!(
            hide_unshown("unknown option `pw` near 'x' and `db`", "host=db"),
            "unknown option `***` near '***' and `db`"
        );
        assert_eq!(hide_unshown("open `quote", "host"), "open `***");
    }

    #[test]
    fn bcrypt_style_hash_refused() {
        let text = "[[users]]\nname = \"u\"\npassword_hash = \"$argon2i$v=19$m=8,t=1,p=1$c2FsdHNhbHQ$0hTRbhkbrQ8M8cEVNJOHxGVCKdPNUqT9H3BqR6ejPc8\"";
        assert!(parse(text).unwrap_err().contains("only argon2id"));
    }
}
