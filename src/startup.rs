//! Builds the actix application from a [`Config`] and a [`Store`], binds, and runs.
//!
//! Binding happens before the server starts so that tests can ask for port 0 and
//! learn the real port.

use std::net::TcpListener;
use std::path::PathBuf;

use actix_web::dev::Server;
use actix_web::middleware::from_fn;
use actix_web::{App, HttpServer, web};

use crate::app::AppState;
use crate::config::{Config, DEMO_PASSWORDS, ServerConfig};
use crate::http::limits::{self, ConnectionCounter};
use crate::http::middleware::envelope;
use crate::routes;
use crate::store::{Store, StoreError};
use crate::tls::{Certificates, TlsError};

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

/// SIGTERM ends the process within this, whatever is stuck.
pub const STOP_DEADLINE: std::time::Duration = std::time::Duration::from_secs(28);
/// In-flight requests get this long to finish at SIGTERM (then they are cut).
const SHUTDOWN_GRACE_SECS: u64 = 20;
/// After a fail-stop, the answers already decided get this long to be written.
const FAIL_STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

pub struct Application {
    address: std::net::SocketAddr,
    server: Server,
    state: web::Data<AppState>,
}

impl Application {
    /// Binds `config.server.bind`, opens the store and builds the server, not yet
    /// running. `config_path` is what SIGHUP re-reads.
    pub async fn build(
        config: Config,
        config_path: Option<PathBuf>,
    ) -> Result<Application, StartError> {
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
        let store = Store::open(&config.store, &config.server.data_dir).await?;
        store.keep_audit_for(config.audit.keep);
        let openapi = serde_json::to_vec(&crate::openapi::document(&config.providers))
            .unwrap_or_default()
            .into();
        let state = web::Data::new(AppState::new(
            store,
            config,
            config_path,
            certificates,
            openapi,
        )?);
        let server = run(listener, state.clone()).map_err(|source| StartError::Bind {
            bind: state.config().server.bind.clone(),
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
            let reason = state.store_failed().await;
            state.stop_waiting();
            // Stops accepting at once; what is in flight is answered (503) meanwhile.
            let _ = tokio::time::timeout(FAIL_STOP_GRACE, handle.stop(true)).await;
            reason
        };
        let follower = self.state.clone();
        let follower = tokio::spawn(async move { follower.follow_changes().await });
        let result = tokio::select! {
            result = self.server => result,
            reason = stop_on_failure => {
                follower.abort();
                return Err(std::io::Error::other(format!(
                    "the store has stopped after a failure ({reason}); exiting so that a \
                     restart reopens it on what is durably on disk"
                )));
            }
        };
        // The server stopped (a test may stop it without a signal): so do the waits.
        self.state.stop_waiting();
        follower.abort();
        self.state.shutdown_store().map_err(|e| {
            std::io::Error::other(format!(
                "{e}; exiting so that a restart reopens the store on what is durably on disk"
            ))
        })?;
        result
    }
}

fn run(listener: TcpListener, state: web::Data<AppState>) -> std::io::Result<Server> {
    let settings: ServerConfig = state.config().server.clone();
    let state_tls = state.certificates().cloned();
    let max_connections = limits::choose_max_connections(settings.max_connections);
    let connections = ConnectionCounter::new(max_connections, settings.max_connections_per_address)
        .with_proxies(
            settings.trusted_proxies.clone(),
            settings.max_connections_per_proxy,
        );
    let ui_enabled = state.config().ui.enabled;
    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .configure(routes::configure)
            .configure(|cfg| {
                if ui_enabled {
                    crate::ui::configure(cfg);
                }
            })
            .default_service(web::to(routes::not_found))
            .wrap(from_fn(envelope))
    })
    .on_connect(move |io, data| {
        connections.on_connect(io, data);
        data.insert(limits::ClosingConnection::default());
    })
    // A client that is slow to send its request head, to go away, or that idles
    // between requests holds a connection slot, not a worker; these bound how long.
    .client_request_timeout(settings.client_request_timeout)
    .client_disconnect_timeout(settings.client_disconnect_timeout)
    .keep_alive(settings.keep_alive)
    .shutdown_timeout(SHUTDOWN_GRACE_SECS)
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
