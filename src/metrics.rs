//! The Prometheus metrics served at `/metrics`: requests by route, method and status,
//! latency histograms, auth failures, the catalog's size, and log lines dropped.

use std::sync::atomic::{AtomicU64, Ordering};

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// Route label of requests that matched no route, so that random paths cannot grow
/// the number of series without bound.
pub const UNMATCHED: &str = "unmatched";

/// The figures `/metrics` shows about the store, which the store fills in.
#[derive(Debug, Clone, Copy, Default)]
pub struct StoreFigures {
    pub images: u64,
    pub audit_records: u64,
    pub audit_bytes: u64,
    /// The embedded store's files; `None` for a database (its size is the DBA's).
    pub size_on_disk: Option<u64>,
    /// This node's connections to the database, open and idle; `None` for sled.
    pub connections: Option<(u64, u64)>,
}

/// What `/metrics` shows of the store, read when it is rendered.
pub struct StoreStats {
    /// `None` when the store could not say (a database that is down): the gauges
    /// then keep their last values.
    pub store: Option<StoreFigures>,
    /// argon2 password verifications run since start.
    pub password_verifications: u64,
    /// Requests waiting for a change now.
    pub waiting_requests: u64,
}

pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    latency: HistogramVec,
    auth_failures: IntCounter,
    images: IntGauge,
    store_bytes: IntGauge,
    audit_records: IntGauge,
    audit_bytes: IntGauge,
    store_up: IntGauge,
    database_connections: IntGaugeVec,
    log_lines_dropped: IntCounter,
    /// The dropped-lines count `log_lines_dropped` has been raised to.
    log_lines_dropped_seen: AtomicU64,
    password_verifications: IntCounter,
    password_verifications_seen: AtomicU64,
    waiting_requests: IntGauge,
}

impl Metrics {
    pub fn new() -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new_custom(Some("image_catalog".into()), None)?;
        let requests = IntCounterVec::new(
            Opts::new(
                "http_requests_total",
                "HTTP requests by route, method and status",
            ),
            &["route", "method", "status"],
        )?;
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "http_request_duration_seconds",
                "Time from request to response head, by route and method",
            )
            .buckets(vec![
                0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                0.5, 1.0, 2.5,
            ]),
            &["route", "method"],
        )?;
        let auth_failures = IntCounter::new(
            "auth_failures_total",
            "Requests refused for missing, malformed or wrong credentials",
        )?;
        let images = IntGauge::new("images", "Images in the catalog")?;
        let store_bytes = IntGauge::new("store_size_bytes", "Size of the store on disk")?;
        let audit_records = IntGauge::new("audit_records", "Records in the audit trail")?;
        let audit_bytes = IntGauge::new(
            "audit_bytes",
            "Bytes of the audit trail's records (their JSON), part of store_size_bytes",
        )?;
        let store_up = IntGauge::new(
            "store_up",
            "1 when the store answered as these metrics were read, 0 when it did not",
        )?;
        let database_connections = IntGaugeVec::new(
            Opts::new(
                "database_connections",
                "This node's connections to PostgreSQL, by state (open, idle)",
            ),
            &["state"],
        )?;
        registry.register(Box::new(store_up.clone()))?;
        registry.register(Box::new(database_connections.clone()))?;
        registry.register(Box::new(audit_records.clone()))?;
        registry.register(Box::new(audit_bytes.clone()))?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(latency.clone()))?;
        registry.register(Box::new(auth_failures.clone()))?;
        registry.register(Box::new(images.clone()))?;
        registry.register(Box::new(store_bytes.clone()))?;
        let log_lines_dropped = IntCounter::new(
            "log_lines_dropped_total",
            "Log lines dropped because the log was not being read fast enough",
        )?;
        registry.register(Box::new(log_lines_dropped.clone()))?;
        let password_verifications = IntCounter::new(
            "password_verifications_total",
            "argon2 password checks run: the first request of a user and password, not the ones \
             the cache of proven credentials answers",
        )?;
        registry.register(Box::new(password_verifications.clone()))?;
        let waiting_requests = IntGauge::new(
            "waiting_requests",
            "Requests waiting for a change: long polls, blocking reads and event streams",
        )?;
        registry.register(Box::new(waiting_requests.clone()))?;
        Ok(Metrics {
            registry,
            requests,
            latency,
            auth_failures,
            images,
            store_bytes,
            audit_records,
            audit_bytes,
            store_up,
            database_connections,
            log_lines_dropped,
            log_lines_dropped_seen: AtomicU64::new(0),
            password_verifications,
            password_verifications_seen: AtomicU64::new(0),
            waiting_requests,
        })
    }

    pub fn observe_request(&self, route: &str, method: &str, status: u16, seconds: f64) {
        // Unusual methods share one label value, for the same reason as UNMATCHED.
        let method = match method {
            "GET" | "HEAD" | "POST" | "PUT" | "DELETE" | "PATCH" | "OPTIONS" => method,
            _ => "OTHER",
        };
        let mut code = itoa::Buffer::new();
        self.requests
            .with_label_values(&[route, method, code.format(status)])
            .inc();
        self.latency
            .with_label_values(&[route, method])
            .observe(seconds);
    }

    pub fn auth_failed(&self) {
        self.auth_failures.inc();
    }

    /// The text exposition, with the store's gauges as of `stats`.
    pub fn render(&self, stats: &StoreStats) -> Result<Vec<u8>, prometheus::Error> {
        let gauge = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        self.waiting_requests.set(gauge(stats.waiting_requests));
        self.store_up.set(i64::from(stats.store.is_some()));
        if let Some(store) = &stats.store {
            if let Some((open, idle)) = store.connections {
                self.database_connections
                    .with_label_values(&["open"])
                    .set(gauge(open));
                self.database_connections
                    .with_label_values(&["idle"])
                    .set(gauge(idle));
            }
            self.images.set(gauge(store.images));
            self.audit_records.set(gauge(store.audit_records));
            self.audit_bytes.set(gauge(store.audit_bytes));
            if let Some(bytes) = store.size_on_disk {
                self.store_bytes.set(gauge(bytes));
            }
        }
        // Raised by the difference only by the render that saw it first, so that two
        // renders at once do not count the same drops twice.
        let dropped = crate::logging::dropped_lines();
        let seen = self
            .log_lines_dropped_seen
            .fetch_max(dropped, Ordering::Relaxed);
        if dropped > seen {
            self.log_lines_dropped.inc_by(dropped - seen);
        }
        let verified = stats.password_verifications;
        let seen = self
            .password_verifications_seen
            .fetch_max(verified, Ordering::Relaxed);
        if verified > seen {
            self.password_verifications.inc_by(verified - seen);
        }
        let mut text = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut text)?;
        Ok(text)
    }
}
