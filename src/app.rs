//! The state every request may reach: the store, the authenticator, the metrics, the
//! cached list pages, and the config that SIGHUP reloads.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use parking_lot::RwLock;
use std::time::Duration;

use actix_web::web::Bytes;

use crate::auth::Authenticator;
use crate::config::{Config, ServerConfig};
use crate::domain::access::{Granted, Policy, User};
use crate::error::ApiError;
use crate::feed::Feed;
use crate::metrics::{Metrics, StoreStats};
use crate::store::Store;
use crate::tls::Certificates;

/// What every request may reach. The store (and the pages cached from it) is handed
/// out only against a [`Granted`] proof of the policy, which only a user who holds it
/// yields (the `Authorized<P>` extractor gets one after authenticating); the open routes see [`AppState::health`], [`AppState::metrics_text`]
/// and [`AppState::openapi`]. So a handler without its check does not compile:
///
/// ```compile_fail,E0616
/// fn peek(state: &image_catalog::app::AppState) -> &image_catalog::store::Store {
///     &state.store
/// }
/// ```
///
/// ```compile_fail,E0616
/// fn peek(state: &image_catalog::app::AppState) {
///     let _ = &state.auth;
/// }
/// ```
///
/// ```
/// fn ops(state: &image_catalog::app::AppState) -> actix_web::web::Bytes {
///     state.openapi()
/// }
/// ```
pub struct AppState {
    store: Store,
    /// Who waits for a change, and what wakes them.
    feed: Arc<Feed>,
    auth: Authenticator,
    metrics: Metrics,
    pages: PageCache,
    /// `/v3/openapi.json`, rendered once: it depends only on the code and providers.
    openapi: Bytes,
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
    pub fn new(
        store: Store,
        config: Config,
        config_path: Option<PathBuf>,
        certificates: Option<Arc<Certificates>>,
        openapi: Bytes,
    ) -> Result<AppState, prometheus::Error> {
        // The feed starts after what is durable now: a request that waits for more
        // reads the store up to here first.
        let seq = *store.durable_seqs().borrow();
        Ok(AppState {
            feed: Arc::new(Feed::new(seq, config.server.max_waiters)),
            auth: Authenticator::new(config.access.clone(), config.auth.clone()),
            metrics: Metrics::new()?,
            pages: PageCache::default(),
            openapi,
            providers: config.providers.clone(),
            max_body_bytes: config.server.max_body_bytes,
            body_timeout: config.server.body_timeout,
            store,
            certificates,
            config,
            config_path,
        })
    }

    /// The config as loaded at start.
    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn certificates(&self) -> Option<&Arc<Certificates>> {
        self.certificates.as_ref()
    }

    /// Counts a request in the metrics.
    pub fn observe_request(&self, route: &str, method: &str, status: u16, seconds: f64) {
        self.metrics.observe_request(route, method, status, seconds);
    }

    /// Resolves once the store has failed for good (see `store`): the server is then
    /// to stop.
    pub async fn store_failed(&self) -> String {
        self.store.failed().await
    }

    /// Who waits for a change (no store behind it: what they read, they read through
    /// their own proof of policy).
    pub fn feed(&self) -> &Arc<Feed> {
        &self.feed
    }

    /// Follows the store's changes and wakes who waits for them, until the feed
    /// closes.
    pub async fn follow_changes(&self) {
        self.feed.follow(&self.store).await
    }

    /// The server is stopping: every wait ends now, and the streams end.
    pub fn stop_waiting(&self) {
        self.feed.close();
    }

    /// Audit retention now, rather than at its next turn (at least once a minute):
    /// for tests that look at what a prune leaves. Returns how many records went.
    pub async fn prune_audit_now(&self) -> Result<u64, crate::store::StoreError> {
        self.store.prune_audit().await
    }

    /// Stops the store's writer after what is queued, and flushes.
    pub fn shutdown_store(&self) -> Result<(), crate::store::StoreError> {
        self.store.shutdown()
    }

    /// Where the catalog lives, for the start-up line: the data dir, or the database.
    pub fn store_location(&self) -> String {
        match (&self.config.store.postgres, self.store.data_dir()) {
            (Some(pg), _) => format!("PostgreSQL at {}", pg.url.masked()),
            (None, Some(dir)) => format!("data in {}", dir.display()),
            (None, None) => "data in the store".into(),
        }
    }

    /// Whether the server can serve: what `/healthz` says; why not, if not.
    pub async fn health(&self) -> Result<(), crate::store::StoreError> {
        self.store.health().await
    }

    /// The Prometheus text of `/metrics`. Figures the store cannot give now (a
    /// database that is down) are left out rather than failing the whole page.
    pub async fn metrics_text(&self) -> Result<Vec<u8>, prometheus::Error> {
        let store = self
            .store
            .figures()
            .await
            .inspect_err(|e| log::warn!("cannot read the store's figures for /metrics: {e}"))
            .ok();
        self.metrics.render(&StoreStats {
            store,
            password_verifications: self.auth.password_verifications(),
            waiting_requests: self.feed.waiting() as u64,
        })
    }

    /// The OpenAPI document of `/v3/openapi.json`.
    pub fn openapi(&self) -> Bytes {
        self.openapi.clone()
    }

    /// Who an `Authorization` header value belongs to; a refusal is counted in the
    /// metrics.
    pub(crate) async fn authenticate(
        &self,
        header: Option<&[u8]>,
        client: Option<std::net::IpAddr>,
    ) -> Result<Arc<User>, ApiError> {
        self.auth
            .authenticate_header(header, client)
            .await
            .inspect_err(|_| self.metrics.auth_failed())
            .map_err(ApiError::from)
    }

    /// Whether user `name` holds `policy` now (a reload may have taken it away since
    /// the user's request was let in).
    pub(crate) fn holds_now(&self, name: &str, policy: &str) -> bool {
        self.auth.holds_now(name, policy)
    }

    /// The store, for a caller that holds a policy.
    pub fn store<P: Policy>(&self, _proof: &Granted<P>) -> &Store {
        &self.store
    }

    /// The pages cached from the store, for a caller that holds a policy.
    pub fn pages<P: Policy>(&self, _proof: &Granted<P>) -> &PageCache {
        &self.pages
    }

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

    /// Re-reads config.toml: a valid one replaces users, roles and policies at once;
    /// an invalid one is logged and the current one stays. Resolves once every change
    /// let in under the old policies has been answered, so that the reload applies to
    /// every write answered after it says "config reloaded" (a change still waiting
    /// for the writer is checked against the new policies: 403 if they refuse it).
    /// Reading the file may block (a hung mount): the server runs this on a thread of
    /// its own, never on its signal loop.
    pub async fn reload(&self) {
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
                // Waiters check their policy again: a user who lost it stops waiting.
                self.feed.reloaded();
                if let Err(e) = self.store.settle().await {
                    log::warn!("config reload: cannot wait for the writes in flight: {e}");
                }
                log::info!("config reloaded from {}: {users} users", path.display());
            }
            Err(e) => log::error!("config reload refused, keeping the current one: {e}"),
        }
    }
}

/// Pages of the list served recently, reused until the catalog changes: scripts that
/// poll the catalog ask for the same pages again and again, and reading a page from
/// sled costs most of a request (bench/RESULTS.md).
#[derive(Default)]
pub struct PageCache {
    pages: RwLock<HashMap<String, CachedPage>>,
}

/// A page's body and its `Link` header, as of a store generation, and the audit seq
/// read with it (`X-Audit-Seq`).
#[derive(Clone)]
pub struct CachedPage {
    pub generation: u64,
    pub seq: u64,
    pub body: Bytes,
    pub link: Option<String>,
}

impl PageCache {
    /// Bounds the cache to a few megabytes whatever the traffic.
    const MAX_PAGES: usize = 64;

    /// The page under `key`, of whatever generation it was made at.
    pub fn peek(&self, key: &str) -> Option<CachedPage> {
        self.pages.read().get(key).cloned()
    }

    /// The page under `key` if it was made at `generation`.
    pub fn get(&self, key: &str, generation: u64) -> Option<CachedPage> {
        self.peek(key).filter(|page| page.generation == generation)
    }

    pub fn put(&self, key: String, page: CachedPage) {
        let mut pages = self.pages.write();
        if pages.len() >= Self::MAX_PAGES && !pages.contains_key(&key) {
            pages.retain(|_, p| p.generation == page.generation);
            if pages.len() >= Self::MAX_PAGES {
                pages.clear();
            }
        }
        pages.insert(key, page);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cached_pages_expire_with_the_generation() {
        let cache = PageCache::default();
        let page = |generation| CachedPage {
            generation,
            seq: 0,
            body: Bytes::from_static(b"[]"),
            link: None,
        };
        cache.put("k".into(), page(1));
        assert!(cache.get("k", 1).is_some());
        assert!(cache.get("k", 2).is_none(), "a write happened since");
        for i in 0..PageCache::MAX_PAGES * 2 {
            cache.put(format!("k{i}"), page(3));
        }
        assert!(cache.pages.read().len() <= PageCache::MAX_PAGES);
    }
}
