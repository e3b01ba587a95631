//! Connections: the pools (one for writes and listings, one per request worker for
//! reads), time bounds on every wait, health checks, and errors said without secrets.

use super::*;

impl Inner {
    /// A pool on `url`; with `create`, the schema is made (or checked) and the
    /// writer started.
    pub(super) async fn connect(
        url: &str,
        options: PgOptions,
        create: bool,
    ) -> Result<Arc<Inner>, StoreError> {
        let split = tls::split_url(url).map_err(StoreError::Unavailable)?;
        let mut config: tokio_postgres::Config = split
            .url
            .parse()
            .map_err(|e| StoreError::Unavailable(format!("the database URL is not usable: {e}")))?;
        let mut secrets = Vec::new();
        if let Some(password) = config.get_password() {
            let password = String::from_utf8_lossy(password).into_owned();
            if !password.is_empty() {
                let encoded = percent_encoding::utf8_percent_encode(
                    &password,
                    percent_encoding::NON_ALPHANUMERIC,
                )
                .to_string();
                secrets.push(password);
                secrets.push(encoded);
            }
        }
        let scrub = |message: String| scrub(message, &secrets);
        let tls_config = tls::client_config(split.verify, split.root_cert.as_ref())
            .map_err(|e| StoreError::Unavailable(scrub(e)))?;
        let statement_ms = options.statement_timeout.as_millis().max(1);
        // A generic plan: the statements are key lookups whose plan does not depend
        // on their values, and with a custom plan the server would plan a batched
        // read (`= ANY($1)`, a new array length each time) anew at every execution.
        let session = format!(
            "-c synchronous_commit=on -c statement_timeout={statement_ms} \
             -c plan_cache_mode=force_generic_plan \
             -c idle_in_transaction_session_timeout={}",
            statement_ms.saturating_mul(2).max(10_000)
        );
        let options_line = match config.get_options() {
            Some(given) if !given.is_empty() => format!("{given} {session}"),
            _ => session,
        };
        config.options(options_line);
        config.connect_timeout(options.connect_timeout);
        if config.get_application_name().is_none() {
            config.application_name("image-catalog");
        }
        config.keepalives_idle(Duration::from_secs(30));
        let manager = (config, MakeRustlsConnect::new(tls_config));
        // Half of `pool_size` for writes, listings and health checks; the other half is
        // shared by the request workers' read pools (`local`).
        let pool = new_pool(&manager, &options, (options.pool_size / 2).max(2))?;
        let (writer, jobs) = if options.batch_writes {
            let (sender, receiver) = mpsc::unbounded_channel();
            (Some(sender), Some(receiver))
        } else {
            (None, None)
        };
        let inner = Arc::new(Inner {
            pool,
            manager,
            id: STORE_IDS.fetch_add(1, Ordering::Relaxed),
            local_pools: Mutex::new(Vec::new()),
            options,
            secrets,
            writer,
            queue: WriteQueue::default(),
            decisions: tokio::sync::RwLock::new(()),
            retention: AtomicU64::new(0),
            landed: Arc::new(watch::Sender::new(0)),
        });
        if !create {
            return Ok(inner);
        }
        inner.create_schema().await?;
        let counters = inner.counters().await?;
        inner.landed_up_to(counters.next_seq as i64 - 1);
        if let Some(jobs) = jobs {
            tokio::spawn(Inner::writer_loop(Arc::downgrade(&inner), jobs));
        }
        Ok(inner)
    }

    pub(super) fn scrub(&self, message: String) -> String {
        scrub(message, &self.secrets)
    }

    /// A statement's failure: a refusal of the database (its SQLSTATE says which) or
    /// a lost connection, both before any COMMIT.
    pub(super) fn failed(&self, e: &tokio_postgres::Error) -> Broken {
        Broken::Before(self.scrub(describe(e)))
    }

    /// `future`, bounded by the statement timeout and a second more.
    pub(super) async fn bounded<T>(
        &self,
        future: impl Future<Output = Result<T, tokio_postgres::Error>>,
    ) -> Result<T, Broken> {
        let limit = self.options.statement_timeout + Duration::from_secs(1);
        match tokio::time::timeout(limit, future).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(self.failed(&e)),
            Err(_) => Err(Broken::Before(format!(
                "the database did not answer within {} ms",
                limit.as_millis()
            ))),
        }
    }

    /// Sends COMMIT: a refusal by the server rolled the transaction back (nothing
    /// was changed); a lost connection or no answer leaves its outcome unknown.
    pub(super) async fn commit(
        &self,
        tx: deadpool_postgres::Transaction<'_>,
    ) -> Result<(), Broken> {
        self.commit_with(tx.commit()).await
    }

    /// Awaits `commit`, a COMMIT sent, as `commit` says.
    pub(super) async fn commit_with(
        &self,
        commit: impl Future<Output = Result<(), tokio_postgres::Error>>,
    ) -> Result<(), Broken> {
        let limit = self.options.statement_timeout + Duration::from_secs(1);
        match tokio::time::timeout(limit, commit).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) if e.as_db_error().is_some() => Err(self.failed(&e)),
            Ok(Err(e)) => Err(Broken::InCommit(format!(
                "the COMMIT was sent, but {}",
                self.scrub(describe(&e))
            ))),
            Err(_) => Err(Broken::InCommit(format!(
                "the COMMIT was sent, but no answer came within {} ms",
                limit.as_millis()
            ))),
        }
    }

    /// A connection from the pool, opened if need be.
    pub(super) async fn client(&self) -> Result<Object, Broken> {
        self.client_from(&self.pool).await
    }

    /// This thread's read pool and coalescers, made at its first read: `None` on the
    /// store's own runtime and off any runtime. The pool's connections are driven by
    /// the runtime of this thread (a request worker's), so a read on it never leaves
    /// the thread: the hop to the store's runtime and back costs a request more than
    /// the query on a busy machine (bench/RESULTS.md). Each pool holds up to half of
    /// `pool_size`.
    pub(super) fn local(&self) -> Option<Arc<Local>> {
        if ON_STORE_RUNTIME.get() || tokio::runtime::Handle::try_current().is_err() {
            return None;
        }
        LOCALS.with(|locals| {
            let mut locals = locals.borrow_mut();
            if let Some((_, local)) = locals.iter().find(|(id, _)| *id == self.id) {
                return Some(local.clone());
            }
            let mut all = self.local_pools.lock();
            if self.pool.is_closed() {
                return None;
            }
            let size = read_pool_size(self.options.pool_size);
            let pool = new_pool(&self.manager, &self.options, size).ok()?;
            // What is kept for stores that were shut down since.
            locals.retain(|(_, local)| !local.pool.is_closed());
            let local = Arc::new(Local {
                pool: pool.clone(),
                gets: Coalescer::new(READS_IN_FLIGHT),
                pages: Coalescer::new(READS_IN_FLIGHT),
                provider_pages: Coalescer::new(READS_IN_FLIGHT),
                counters: Coalescer::new(READS_IN_FLIGHT),
            });
            locals.push((self.id, local.clone()));
            all.push(pool);
            Some(local)
        })
    }

    /// A connection from `pool`, opened if need be.
    pub(super) async fn client_from(&self, pool: &Pool) -> Result<Object, Broken> {
        // The pool's own timeouts bound this; the outer one is for a pool that
        // waits for a connection that never comes back.
        let limit = self.options.connect_timeout * 2 + Duration::from_secs(1);
        match tokio::time::timeout(limit, pool.get()).await {
            Ok(Ok(client)) => Ok(client),
            Ok(Err(e)) => Err(Broken::Before(self.scrub(describe_pool(&e)))),
            Err(_) => Err(Broken::Before(format!(
                "no database connection within {} ms",
                limit.as_millis()
            ))),
        }
    }

    /// `SELECT 1` within `HEALTH_TIMEOUT`. A connection that failed or did not answer
    /// in time is dropped, not given back to the pool: a node that a balancer took out
    /// gets nothing but health checks, which must not meet the same silent connection
    /// again and again (one to a primary that vanished stays silent for minutes).
    pub(super) async fn health(&self) -> Result<(), StoreError> {
        let late = || {
            StoreError::Unavailable(format!(
                "the database did not answer within {} s",
                HEALTH_TIMEOUT.as_secs()
            ))
        };
        let deadline = tokio::time::Instant::now() + HEALTH_TIMEOUT;
        let client = match tokio::time::timeout_at(deadline, self.client()).await {
            Ok(Ok(client)) => client,
            Ok(Err(broken)) => return Err(broken.into_error()),
            Err(_) => return Err(late()),
        };
        let check = async {
            let statement = client.prepare_cached("SELECT 1").await?;
            client.query(&statement, &[]).await
        };
        let failed = match tokio::time::timeout_at(deadline, check).await {
            Ok(Ok(_)) => return Ok(()),
            Ok(Err(e)) => self.failed(&e).into_error(),
            Err(_) => late(),
        };
        drop(Object::take(client));
        Err(failed)
    }
}

/// Connections of one request worker's read pool: the read half of `pool_size`,
/// shared by the workers (actix runs one per core), at least one each.
pub(super) fn read_pool_size(pool_size: usize) -> usize {
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    (pool_size / 2 / workers).max(1)
}

/// A pool of up to `size` connections as `manager` makes them; each connection's task
/// runs on the runtime that opens it.
pub(super) fn new_pool(
    manager: &(tokio_postgres::Config, MakeRustlsConnect),
    options: &PgOptions,
    size: usize,
) -> Result<Pool, StoreError> {
    let manager = Manager::from_config(
        manager.0.clone(),
        manager.1.clone(),
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(size)
        // The connection used last first: its server process is awake and warm.
        // First in, first out would take every idle connection in turn, each
        // request waking a server process that has slept the longest (GET at one
        // connection ran at a third of the speed after a burst had opened 8).
        .queue_mode(deadpool_postgres::QueueMode::Lifo)
        .wait_timeout(Some(options.connect_timeout))
        .create_timeout(Some(options.connect_timeout))
        .recycle_timeout(Some(options.connect_timeout))
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .build()
        .map_err(|e| StoreError::Unavailable(format!("the connection pool: {e}")))
}

/// What went wrong, in words for the log: the server's message and SQLSTATE when it
/// answered, the cause when the connection failed.
pub(super) fn describe(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        let code = db.code();
        let what = if *code == SqlState::QUERY_CANCELED {
            "the statement timed out"
        } else if *code == SqlState::ADMIN_SHUTDOWN || *code == SqlState::CRASH_SHUTDOWN {
            "the database is shutting down"
        } else {
            "the database refused a statement"
        };
        return format!("{what}: {} ({})", db.message(), code.code());
    }
    let mut message = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    let io = {
        let mut source = std::error::Error::source(e);
        let mut found = false;
        while let Some(cause) = source {
            found |= cause.is::<std::io::Error>();
            source = cause.source();
        }
        found
    };
    if e.is_closed() {
        format!("the database connection is closed ({message})")
    } else if io || message.starts_with("error connecting") {
        format!("the database is unreachable ({message})")
    } else {
        format!("a database request failed ({message})")
    }
}

pub(super) fn describe_pool(e: &deadpool_postgres::PoolError) -> String {
    use deadpool_postgres::PoolError;
    match e {
        PoolError::Backend(e) => describe(e),
        PoolError::Timeout(_) => "no database connection could be had in time".into(),
        PoolError::Closed => "the store is shut down".into(),
        other => format!("the connection pool failed: {other}"),
    }
}

/// `message` with every secret replaced.
pub(super) fn scrub(mut message: String, secrets: &[String]) -> String {
    for secret in secrets {
        if !secret.is_empty() && message.contains(secret.as_str()) {
            message = message.replace(secret.as_str(), "***");
        }
    }
    message
}
