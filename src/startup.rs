//! Builds the actix application from a [`Config`] and a [`Store`], binds, and runs.
//!
//! Binding happens before the server starts so that tests can ask for port 0 and
//! learn the real port.

use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{Server, ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderName, HeaderValue};
use actix_web::middleware::{Next, from_fn};
use actix_web::{App, HttpMessage, HttpServer, ResponseError, web};

use crate::auth::Authenticator;
use crate::config::{Config, DEMO_PASSWORDS, ServerConfig};
use crate::error::ApiError;
use crate::forwarded::TrustedProxies;
use crate::headers;
use crate::limits::{self, ConnectionCounter};
use crate::metrics::{Metrics, UNMATCHED};
use crate::policy::{AuthenticatedUser, Authorized, Policy};
use crate::routes::{self, RoutePattern};
use crate::store::{Store, StoreError};
use crate::tls::{Certificates, TlsError};

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// What every request may reach. The store (and the pages cached from it) is handed
/// out only against an [`Authorized`] proof, which only its extractor makes after the
/// policy check; the open routes see [`AppState::health`], [`AppState::metrics_text`]
/// and [`AppState::openapi`]. So a handler without its check does not compile:
///
/// ```compile_fail,E0616
/// fn peek(state: &image_catalog::startup::AppState) -> &image_catalog::store::Store {
///     &state.store
/// }
/// ```
///
/// ```compile_fail,E0616
/// fn peek(state: &image_catalog::startup::AppState) {
///     let _ = &state.auth;
/// }
/// ```
///
/// ```
/// fn ops(state: &image_catalog::startup::AppState) -> (bool, actix_web::web::Bytes) {
///     (state.health(), state.openapi())
/// }
/// ```
pub struct AppState {
    store: Store,
    auth: Authenticator,
    metrics: Metrics,
    pages: crate::listing::PageCache,
    /// `/v3/openapi.json`, rendered once: it depends only on the code and providers.
    openapi: actix_web::web::Bytes,
    pub providers: Vec<String>,
    pub max_body_bytes: usize,
    /// How long a handler waits for a request body to arrive.
    pub body_timeout: Duration,
    /// The HTTPS certificate, which a reload reads again.
    certificates: Option<Arc<Certificates>>,
    /// The config as loaded at start, to tell what a reload cannot change.
    config: Config,
    config_path: Option<PathBuf>,
}

impl AppState {
    pub fn data_dir(&self) -> &std::path::Path {
        &self.config.server.data_dir
    }

    /// Whether the server can serve: what `/healthz` says.
    pub fn health(&self) -> bool {
        self.store.is_healthy()
    }

    /// The Prometheus text of `/metrics`.
    pub fn metrics_text(&self) -> Result<Vec<u8>, prometheus::Error> {
        self.metrics.render(&self.store)
    }

    /// The OpenAPI document of `/v3/openapi.json`.
    pub fn openapi(&self) -> actix_web::web::Bytes {
        self.openapi.clone()
    }

    /// Who an `Authorization` header value belongs to; a refusal is counted in the
    /// metrics.
    pub(crate) async fn authenticate(
        &self,
        header: Option<&[u8]>,
        client: Option<std::net::IpAddr>,
    ) -> Result<std::sync::Arc<crate::config::User>, ApiError> {
        self.auth
            .authenticate_header(header, client)
            .await
            .inspect_err(|_| self.metrics.auth_failed())
    }

    /// The store, for a caller that holds a policy.
    pub(crate) fn store<P: Policy>(&self, _proof: &Authorized<P>) -> &Store {
        &self.store
    }

    /// The pages cached from the store, for a caller that holds a policy.
    pub(crate) fn pages<P: Policy>(&self, _proof: &Authorized<P>) -> &crate::listing::PageCache {
        &self.pages
    }

    /// Re-reads config.toml: a valid one replaces users, roles and policies at once;
    /// an invalid one is logged and the current one stays.
    /// Reads the certificate and key that `next` names; on any error the pair in use
    /// stays. Turning HTTPS on or off needs a restart.
    fn reload_certificates(&self, next: &Config) {
        match (&self.certificates, &next.server.tls) {
            (Some(certificates), Some(files)) => match certificates.reload(&files.cert, &files.key)
            {
                Ok(()) => log::info!(
                    "TLS certificate reloaded from {} and {}",
                    files.cert.display(),
                    files.key.display()
                ),
                Err(e) => log::error!("TLS reload refused, keeping the certificate in use: {e}"),
            },
            (None, None) => {}
            _ => log::warn!(
                "config reload: switching HTTPS on or off ([server] tls_cert, tls_key) takes \
                 effect only after a restart"
            ),
        }
    }

    pub fn reload(&self) {
        let Some(path) = &self.config_path else {
            log::warn!("reload asked, but this server was not started from a config file");
            return;
        };
        crate::config::warn_insecure_permissions(path);
        match Config::load(path) {
            Ok(mut next) => {
                next.store.accept_data_loss = self.config.store.accept_data_loss;
                self.reload_certificates(&next);
                let same_server = ServerConfig {
                    tls: self.config.server.tls.clone(),
                    ..next.server.clone()
                };
                if same_server != self.config.server
                    || next.store != self.config.store
                    || next.audit != self.config.audit
                    || next.auth != self.config.auth
                    || next.providers != self.config.providers
                {
                    log::warn!(
                        "config reload: changes to [server], [store], [audit], [auth] and providers take \
                         effect only after a restart; users, roles and policies are applied now"
                    );
                }
                let users = next.access.users().len();
                self.auth.replace(next.access);
                log::info!("config reloaded from {}: {users} users", path.display());
            }
            Err(e) => log::error!("config reload refused, keeping the current one: {e}"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot bind {bind}: {source}")]
    Bind {
        bind: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot start a thread: {0}")]
    Thread(std::io::Error),
    #[error("cannot set up metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error(transparent)]
    Tls(#[from] TlsError),
}

pub struct Application {
    address: std::net::SocketAddr,
    server: Server,
    state: web::Data<AppState>,
}

impl Application {
    /// Binds `config.server.bind`, opens the store and builds the server, not yet
    /// running. `config_path` is what SIGHUP re-reads.
    pub fn build(config: Config, config_path: Option<PathBuf>) -> Result<Application, StartError> {
        let listener =
            limits::listen(&config.server.bind, config.server.backlog).map_err(|source| {
                StartError::Bind {
                    bind: config.server.bind.clone(),
                    source,
                }
            })?;
        let address = listener.local_addr().map_err(|source| StartError::Bind {
            bind: config.server.bind.clone(),
            source,
        })?;
        let certificates = config
            .server
            .tls
            .as_ref()
            .map(|files| Certificates::load(&files.cert, &files.key))
            .transpose()?;
        let store = Store::open_with(
            &config.server.data_dir,
            config.store.cache_mb,
            config.store.accept_data_loss,
        )?;
        store.keep_audit_for(config.audit.keep);
        let openapi = serde_json::to_vec(&crate::openapi::document(&config.providers))
            .unwrap_or_default()
            .into();
        let state = web::Data::new(AppState {
            store,
            auth: Authenticator::new(config.access.clone(), config.auth.clone()),
            metrics: Metrics::new()?,
            pages: Default::default(),
            openapi,
            providers: config.providers.clone(),
            max_body_bytes: config.server.max_body_bytes,
            body_timeout: config.server.body_timeout,
            certificates,
            config,
            config_path,
        });
        let warming = state.clone();
        std::thread::Builder::new()
            .name("store-warm".into())
            .spawn(move || {
                let started = Instant::now();
                match warming.store.warm() {
                    Ok(entries) => log::info!(
                        "store warmed: {entries} entries read in {:.0} ms",
                        started.elapsed().as_secs_f64() * 1000.0
                    ),
                    Err(e) => log::warn!("warming the store failed: {e}"),
                }
            })
            .map_err(StartError::Thread)?;
        let server = run(listener, state.clone()).map_err(|source| StartError::Bind {
            bind: state.config.server.bind.clone(),
            source,
        })?;

        Ok(Application {
            address,
            server,
            state,
        })
    }

    /// The address actually bound (the real port when config asked for 0).
    pub fn address(&self) -> std::net::SocketAddr {
        self.address
    }

    pub fn state(&self) -> web::Data<AppState> {
        self.state.clone()
    }

    pub fn handle(&self) -> actix_web::dev::ServerHandle {
        self.server.handle()
    }

    /// Serves until the server is stopped (SIGINT/SIGTERM: in-flight requests finish),
    /// then flushes the store.
    /// Fails when the store failed meanwhile: the process should exit non-zero so that
    /// a supervisor starts it again on what is durably on disk.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        // Fail-stop: once the store has failed, stop taking connections and answer
        // the requests in flight; the server then ends and so does this.
        let handle = self.server.handle();
        let state = self.state.clone();
        let stop_on_failure = async move {
            state.store.failed().await;
            handle.stop(true).await;
            std::future::pending::<std::io::Result<()>>().await
        };
        let result = tokio::select! {
            result = self.server => result,
            never = stop_on_failure => never,
        };
        self.state.store.shutdown().map_err(|e| {
            std::io::Error::other(format!(
                "{e}; exiting so that a restart reopens the store on what is durably on disk"
            ))
        })?;
        result
    }
}

fn run(listener: TcpListener, state: web::Data<AppState>) -> std::io::Result<Server> {
    let settings: ServerConfig = state.config.server.clone();
    let state_tls = state.certificates.clone();
    let max_connections = limits::choose_max_connections(settings.max_connections);
    let connections = ConnectionCounter::new(max_connections, settings.max_connections_per_address)
        .with_proxies(
            settings.trusted_proxies.clone(),
            settings.max_connections_per_proxy,
        );
    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .configure(routes::configure)
            .default_service(web::to(routes::not_found))
            .wrap(from_fn(access_log))
    })
    .on_connect(move |io, data| connections.on_connect(io, data))
    // A client that is slow to send its request head, to go away, or that idles
    // between requests holds a connection slot, not a worker; these bound how long.
    .client_request_timeout(settings.client_request_timeout)
    .client_disconnect_timeout(settings.client_disconnect_timeout)
    .keep_alive(settings.keep_alive)
    .max_connections(limits::per_worker_cap(max_connections))
    // Signals are the command line's business (see `cli`): actix would treat SIGINT
    // as a hard stop, and tests run servers in-process.
    .disable_signals();
    let server = match &state_tls {
        Some(certificates) => server.listen_rustls_0_23(listener, certificates.server_config())?,
        None => server.listen(listener)?,
    };
    Ok(server.run())
}

/// Wraps every request: refuses a connection past `max_connections` or
/// `max_connections_per_address` (503), request headers past `max_header_bytes` (431)
/// and an Accept that rules out JSON (406) before any work is done (`/metrics` speaks
/// Prometheus text and is exempt), gives every response an `X-Request-Id`, counts the
/// request in the metrics and writes its access-log line. Credentials never reach the
/// line: only the authenticated user's name does.
async fn access_log(
    mut req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let started = Instant::now();
    let request_id = req
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| headers::sane_request_id(v.as_bytes()))
        .map(str::to_owned)
        .unwrap_or_else(new_request_id);
    let method = req.method().clone();
    let state = req.app_data::<web::Data<AppState>>().cloned();
    let client = state
        .as_ref()
        .and_then(|state| client_address(&req, &state.config.server.trusted_proxies));
    if let Some(client) = client {
        req.extensions_mut().insert(ClientAddress(client));
    }
    let accept = req.headers().get(header::ACCEPT);
    let max_header_bytes = state
        .as_ref()
        .map_or(16 * 1024, |s| s.config.server.max_header_bytes);
    let refusal =
        limits::over_limit(&req).or_else(|| limits::oversize_headers(&req, max_header_bytes));
    let mut response = if let Some(refusal) = refusal {
        req.into_response(refusal.error_response())
    } else if req.path() != "/metrics" && !headers::accepts_json(accept.map(|v| v.as_bytes())) {
        let shown = accept
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .unwrap_or_default();
        req.into_response(ApiError::NotAcceptable(shown).error_response())
    } else {
        // When a handler drops a chunked body unread (a 401 before it, a 413 halfway),
        // actix would read and discard the rest for as long as the client sends it;
        // holding the body until the response is written makes it close instead.
        match limits::hold_body(&mut req) {
            None => next.call(req).await?.map_into_boxed_body(),
            Some(hold) => {
                let response = next.call(req).await?.map_into_boxed_body();
                limits::keep_until_written(response, hold)
            }
        }
    };
    let elapsed = started.elapsed();
    let status = response.status().as_u16();
    {
        let request = response.request();
        let pattern = request.app_data::<RoutePattern>().map(|p| p.0);
        if let Some(state) = state {
            let route = pattern.unwrap_or(UNMATCHED);
            let seconds = elapsed.as_secs_f64();
            state
                .metrics
                .observe_request(route, method.as_str(), status, seconds);
        }
        let extensions = request.extensions();
        let user = extensions
            .get::<AuthenticatedUser>()
            .map_or("-", |u| u.0.name.as_str());
        crate::logging::access(
            method.as_str(),
            request.path(),
            status,
            elapsed,
            client,
            user,
            &request_id,
        );
    }
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    Ok(response)
}

/// Where a request came from: its TCP peer, or behind a trusted proxy the client
/// that `X-Forwarded-For` names. What the access log and the brute-force throttle use.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddress(pub std::net::IpAddr);

fn client_address(req: &ServiceRequest, proxies: &TrustedProxies) -> Option<std::net::IpAddr> {
    let peer = req.peer_addr()?.ip();
    if proxies.is_empty() {
        return Some(peer);
    }
    let forwarded = req
        .headers()
        .get_all("x-forwarded-for")
        .map(HeaderValue::as_bytes);
    Some(proxies.client(peer, forwarded))
}

/// 32 random hex digits.
fn new_request_id() -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut bits = rand::random::<u128>();
    let mut id = String::with_capacity(32);
    for _ in 0..32 {
        id.push(HEX[(bits & 0xf) as usize] as char);
        bits >>= 4;
    }
    id
}

/// Warns about each user still on a documented demo password. Runs argon2 per user,
/// so it belongs on a blocking thread.
pub fn warn_demo_passwords(config: &Config) {
    for name in demo_password_users(config) {
        log::warn!(
            "user '{name}' still has the documented demo password; set a new one with \
             `image-catalog hash-password` before exposing this server"
        );
    }
}

/// The users whose password is still one the README documents.
pub fn demo_password_users(config: &Config) -> Vec<String> {
    config
        .access
        .users()
        .iter()
        .filter(|user| {
            user.password_hash.as_ref().is_some_and(|hash| {
                DEMO_PASSWORDS
                    .iter()
                    .any(|demo| crate::auth::verify_password(demo.as_bytes(), hash))
            })
        })
        .map(|user| user.name.clone())
        .collect()
}
