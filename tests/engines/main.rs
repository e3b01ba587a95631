//! One contract, every engine: the tests of `contract.rs` run on the embedded store
//! and on PostgreSQL (with its batching writer, and with a transaction per change).
//!
//! A harness of its own (libtest-mimic) so that, where PostgreSQL is not installed,
//! each PostgreSQL test shows as `ignored` with one line saying why, never as a
//! silent pass; with `CI=true` a missing PostgreSQL fails them instead.

#[path = "../support/postgres.rs"]
mod postgres;

#[path = "../support/images.rs"]
mod images;

mod contract;

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use image_catalog::store::Store;
use image_catalog::store::postgres::{PgOptions, PgStore};
use libtest_mimic::{Arguments, Trial};

/// A test of the contract: given an engine, passes or panics.
pub type Test = fn(Engine) -> Pin<Box<dyn Future<Output = ()>>>;

/// `[(name, Test)]` of async fns taking an `Engine`.
#[macro_export]
macro_rules! tests {
    ($($name:ident),* $(,)?) => {
        [$((stringify!($name), (|engine| Box::pin($name(engine))) as $crate::Test)),*]
    };
}

/// A deadline that catches a hang, far beyond what any test takes.
const DEADLINE: Duration = Duration::from_secs(300);

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Embedded,
    /// PostgreSQL with the batching writer.
    Postgres,
    /// PostgreSQL with a transaction per change.
    PostgresEach,
}

impl Kind {
    const ALL: [Kind; 3] = [Kind::Embedded, Kind::Postgres, Kind::PostgresEach];

    fn name(self) -> &'static str {
        match self {
            Kind::Embedded => "embedded",
            Kind::Postgres => "postgres",
            Kind::PostgresEach => "postgres_each",
        }
    }
}

/// A fresh, empty store of one engine, for one test.
#[derive(Clone)]
pub struct Engine(Arc<Fresh>);

struct Fresh {
    kind: Kind,
    dir: tempfile::TempDir,
    db: Option<postgres::TestDb>,
    opened: Mutex<Option<Arc<Store>>>,
}

impl Engine {
    fn new(kind: Kind) -> Engine {
        let db = match kind {
            Kind::Embedded => None,
            _ => Some(postgres::database().expect("PostgreSQL, which was found at start")),
        };
        Engine(Arc::new(Fresh {
            kind,
            dir: tempfile::tempdir().unwrap(),
            db,
            opened: Mutex::new(None),
        }))
    }

    /// The store of this test, opened on first use.
    pub async fn store(&self) -> Arc<Store> {
        let opened = self.0.opened.lock().unwrap().clone();
        if let Some(store) = opened {
            return store;
        }
        let store = Arc::new(self.open().await);
        *self.0.opened.lock().unwrap() = Some(store.clone());
        store
    }

    /// `n` handles on the store: on PostgreSQL, nodes of their own that share the
    /// database; the embedded store is one process's, so the same one `n` times.
    pub async fn nodes(&self, n: usize) -> Vec<Arc<Store>> {
        let mut nodes = vec![self.store().await];
        while nodes.len() < n {
            nodes.push(match self.0.kind {
                Kind::Embedded => nodes[0].clone(),
                _ => Arc::new(self.open().await),
            });
        }
        nodes
    }

    /// Whether changes handed over together are taken into one batch, in order.
    pub fn batches(&self) -> bool {
        self.0.kind != Kind::PostgresEach
    }

    async fn open(&self) -> Store {
        match &self.0.db {
            None => Store::open_embedded(self.0.dir.path(), 8).unwrap(),
            Some(db) => {
                let options = PgOptions {
                    batch_writes: self.0.kind == Kind::Postgres,
                    ..PgOptions::default()
                };
                let store = PgStore::connect(&db.url, options)
                    .await
                    .unwrap_or_else(|e| panic!("connecting: {e}"));
                Store::Postgres(store)
            }
        }
    }

    /// Stops the store (the embedded one's writer flushes and ends) before its
    /// folder goes.
    fn close(&self) {
        if let Some(store) = self.0.opened.lock().unwrap().take() {
            store.shutdown().unwrap();
        }
    }
}

fn run(kind: Kind, test: Test) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let engine = Engine::new(kind);
    runtime.block_on(async {
        tokio::time::timeout(DEADLINE, test(engine.clone()))
            .await
            .expect("the test finished within its deadline");
    });
    engine.close();
}

fn main() {
    let args = Arguments::from_args();
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    // In CI a missing PostgreSQL is not skipped: its tests run, and fail saying why.
    let skipped = postgres::missing().filter(|_| !ci);
    if let Some(why) = &skipped {
        eprintln!("the PostgreSQL engine's tests are skipped (shown as ignored): {why}");
    }
    let mut trials = Vec::new();
    for kind in Kind::ALL {
        for &(name, test) in contract::TESTS {
            let trial = Trial::test(format!("{}::{name}", kind.name()), move || {
                run(kind, test);
                Ok(())
            });
            trials.push(trial.with_ignored_flag(kind != Kind::Embedded && skipped.is_some()));
        }
    }
    libtest_mimic::run(&args, trials).exit();
}
