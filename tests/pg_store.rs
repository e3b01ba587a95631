//! What is particular to the PostgreSQL engine, against a real, private PostgreSQL
//! (see support/postgres.rs): its schema, TLS, outages, timeouts and lost connections.
//! The contract both engines keep is tested once, on both, in tests/engines/.

#[path = "support/images.rs"]
mod images;
#[path = "support/postgres.rs"]
mod postgres;

use images::{id, image, rename};

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use image_catalog::domain::change::Change;
use image_catalog::domain::filter::Filter;
use image_catalog::store::StoreError;
use image_catalog::store::postgres::{PgOptions, PgStore};

fn options(batch_writes: bool) -> PgOptions {
    PgOptions {
        batch_writes,
        ..PgOptions::default()
    }
}

async fn connect(url: &str, batch_writes: bool) -> PgStore {
    PgStore::connect(url, options(batch_writes))
        .await
        .unwrap_or_else(|e| panic!("connecting: {e}"))
}

#[tokio::test]
async fn schema_is_made_once_and_other_majors_are_refused() {
    let Some(db) = postgres::database() else {
        return;
    };
    // Several nodes starting at once.
    let starts: Vec<_> = (0..4)
        .map(|_| {
            let url = db.url.clone();
            tokio::spawn(
                async move { PgStore::connect(&url, PgOptions::default()).await.map(drop) },
            )
        })
        .collect();
    for start in starts {
        start.await.unwrap().unwrap();
    }
    let store = connect(&db.url, true).await;
    store
        .apply(Change::Create(image("kept")), "a")
        .await
        .unwrap();
    // A newer minor of the same major: used as it is.
    store.set_schema_version_for_tests(1, 7).await.unwrap();
    let newer = connect(&db.url, true).await;
    assert!(newer.get(&id("kept")).await.unwrap().is_some());
    store.set_schema_version_for_tests(2, 0).await.unwrap();
    let err = PgStore::connect(&db.url, PgOptions::default())
        .await
        .err()
        .expect("major 2 is refused");
    assert!(matches!(err, StoreError::Unusable(_)), "{err}");
    assert!(err.to_string().contains("schema 2.0"), "{err}");
    // A database that another program uses.
    let Some(foreign) = postgres::database() else {
        return;
    };
    postgres::shared()
        .unwrap()
        .psql_in(&foreign.name, "CREATE TABLE images (x int)");
    let err = PgStore::connect(&foreign.url, PgOptions::default())
        .await
        .err()
        .expect("a foreign images table is refused");
    assert!(
        err.to_string().contains("not made by image-catalog"),
        "{err}"
    );
}

/// Waits (bounded) until `store` answers again after an outage.
async fn until_healthy(store: &PgStore) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !store.is_healthy().await {
        assert!(Instant::now() < deadline, "the store did not recover");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn an_outage_is_unavailable_without_a_hang_and_recovers_by_itself() {
    let Some(cluster) = postgres::Cluster::start() else {
        return;
    };
    let db = cluster.database();
    let options = PgOptions {
        connect_timeout: Duration::from_secs(2),
        statement_timeout: Duration::from_secs(2),
        ..PgOptions::default()
    };
    for batch in [true, false] {
        let store = PgStore::connect(
            &db.url,
            PgOptions {
                batch_writes: batch,
                ..options.clone()
            },
        )
        .await
        .unwrap();
        let before = format!("before-{batch}");
        store
            .apply(Change::Create(image(&before)), "a")
            .await
            .unwrap();
        assert!(store.is_healthy().await);
        cluster.stop_immediate();
        let deadline = Duration::from_secs(20);
        let started = Instant::now();
        let write =
            tokio::time::timeout(deadline, store.apply(Change::Create(image("during")), "a"))
                .await
                .expect("a write during the outage hung");
        assert!(
            matches!(write, Err(StoreError::Unavailable(_))),
            "{write:?}"
        );
        let message = write.unwrap_err().to_string();
        assert!(message.contains("nothing was changed"), "{message}");
        assert!(!message.contains(&db.password), "{message}");
        let read = tokio::time::timeout(deadline, store.get(&id(&before)))
            .await
            .expect("a read during the outage hung");
        assert!(matches!(read, Err(StoreError::Unavailable(_))), "{read:?}");
        let list = tokio::time::timeout(
            deadline,
            store.list_stream(None, &Filter::all()).collect::<Vec<_>>(),
        )
        .await
        .expect("a listing during the outage hung");
        assert!(
            matches!(list.as_slice(), [Err(StoreError::Unavailable(_))]),
            "{list:?}"
        );
        assert!(
            !tokio::time::timeout(deadline, store.is_healthy())
                .await
                .unwrap()
        );
        assert!(started.elapsed() < Duration::from_secs(60));
        cluster.restart();
        until_healthy(&store).await;
        store
            .apply(Change::Create(image(&format!("after-{batch}"))), "a")
            .await
            .unwrap();
        assert!(store.get(&id(&before)).await.unwrap().is_some());
        assert!(store.get(&id("during")).await.unwrap().is_none());
    }
}

/// A statement that waits on a lock longer than the statement timeout is cut off
/// by the server: the change is refused as unavailable, nothing written.
#[tokio::test]
async fn a_statement_timeout_is_unavailable() {
    let Some(db) = postgres::database() else {
        return;
    };
    let store = PgStore::connect(
        &db.url,
        PgOptions {
            statement_timeout: Duration::from_millis(500),
            ..PgOptions::default()
        },
    )
    .await
    .unwrap();
    store
        .apply(Change::Create(image("held")), "a")
        .await
        .unwrap();
    let (mut client, connection) = tokio_postgres::connect(&db.url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let tx = client.transaction().await.unwrap();
    tx.execute("SELECT 1 FROM images WHERE id = 'held' FOR UPDATE", &[])
        .await
        .unwrap();
    let change = Change::Update {
        id: id("held"),
        patch: rename("n"),
        precondition: None,
    };
    let refused = tokio::time::timeout(Duration::from_secs(20), store.apply(change.clone(), "a"))
        .await
        .expect("hung on a lock");
    assert!(
        matches!(refused, Err(StoreError::Unavailable(ref m)) if m.contains("timed out")),
        "{refused:?}"
    );
    tx.rollback().await.unwrap();
    store.apply(change, "a").await.unwrap();
    assert_eq!(store.audit_size().await.unwrap().0, 2);
}

#[tokio::test]
async fn errors_never_show_the_password() {
    let Some(db) = postgres::database() else {
        return;
    };
    let fast = PgOptions {
        connect_timeout: Duration::from_secs(3),
        ..PgOptions::default()
    };
    let wrong = db.url.replace(&db.password, "Wr0ng-PassW0rd");
    let err = PgStore::connect(&wrong, fast.clone())
        .await
        .err()
        .expect("refused");
    let message = err.to_string();
    assert!(matches!(err, StoreError::Unavailable(_)), "{message}");
    assert!(
        message.contains("password authentication failed"),
        "{message}"
    );
    assert!(!message.contains("Wr0ng-PassW0rd"), "{message}");
    let closed = db.url.replace(&format!(":{}/", db.port), ":1/");
    let err = PgStore::connect(&closed, fast.clone())
        .await
        .err()
        .expect("refused");
    assert!(!err.to_string().contains(&db.password), "{err}");
    assert!(!format!("{err:?}").contains(&db.password), "{err:?}");
    let bad_mode = format!("{}&sslmode=sometimes", db.url);
    let err = PgStore::connect(&bad_mode, fast)
        .await
        .err()
        .expect("refused");
    assert!(!err.to_string().contains(&db.password), "{err}");
}

/// Whether the database's own view says this database has a TLS connection open.
fn tls_in_use(db: &str) -> bool {
    let cluster = postgres::shared().unwrap();
    let count = cluster.psql(&format!(
        "SELECT count(*) FROM pg_stat_ssl JOIN pg_stat_activity USING (pid) \
         WHERE ssl AND datname = '{db}'"
    ));
    count != "0"
}

#[tokio::test]
async fn tls_require_and_verify_full() {
    let Some(cluster) = postgres::shared() else {
        return;
    };
    let ca = cluster.ca_file.display().to_string();
    let other = cluster.other_ca_file.display().to_string();
    let db = cluster.database();
    let url = |host: &str, query: String| {
        cluster
            .url_with(&db.name, &query)
            .replace("@127.0.0.1:", &format!("@{host}:"))
    };
    let fast = || PgOptions {
        connect_timeout: Duration::from_secs(5),
        ..PgOptions::default()
    };
    {
        let store = PgStore::connect(&url("127.0.0.1", "sslmode=require".into()), fast())
            .await
            .unwrap();
        store
            .apply(Change::Create(image("over-tls")), "a")
            .await
            .unwrap();
        assert!(tls_in_use(&db.name), "require encrypts");
    }
    let full = PgStore::connect(
        &url("localhost", format!("sslmode=verify-full&sslrootcert={ca}")),
        fast(),
    )
    .await
    .unwrap_or_else(|e| panic!("verify-full: {e}"));
    assert!(full.get(&id("over-tls")).await.unwrap().is_some());
    drop(full);
    // The certificate names localhost, not the address.
    let err = PgStore::connect(
        &url("127.0.0.1", format!("sslmode=verify-full&sslrootcert={ca}")),
        fast(),
    )
    .await
    .err()
    .expect("a name that the certificate does not hold is refused");
    assert!(
        err.to_string().to_lowercase().contains("certificate"),
        "{err}"
    );
    assert!(!err.to_string().contains(&db.password), "{err}");
    PgStore::connect(
        &url("127.0.0.1", format!("sslmode=verify-ca&sslrootcert={ca}")),
        fast(),
    )
    .await
    .unwrap_or_else(|e| panic!("verify-ca: {e}"));
    let err = PgStore::connect(
        &url(
            "localhost",
            format!("sslmode=verify-full&sslrootcert={other}"),
        ),
        fast(),
    )
    .await
    .err()
    .expect("a certificate of another CA is refused");
    assert!(
        err.to_string().to_lowercase().contains("certificate"),
        "{err}"
    );
    // Without sslrootcert, the Mozilla roots: a private CA is not among them.
    let err = PgStore::connect(&url("localhost", "sslmode=verify-full".into()), fast())
        .await
        .err()
        .expect("the test CA is not a public root");
    assert!(
        err.to_string().to_lowercase().contains("certificate"),
        "{err}"
    );
}

/// Waits (bounded) until `id` is stored, as seen through `store`.
async fn until_stored(store: &PgStore, name: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while store.get(&id(name)).await.unwrap().is_none() {
        assert!(Instant::now() < deadline, "{name} never appeared");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A connection lost before COMMIT was sent: nothing was changed, and the store
/// says so. Lost after COMMIT was sent: the outcome is unknown, and the store says
/// that (here the change did commit: "nothing was changed" would have been a lie).
#[tokio::test]
async fn a_connection_lost_before_or_after_commit_is_answered_honestly() {
    let Some(db) = postgres::database() else {
        return;
    };
    let direct = connect(&db.url, true).await;
    let proxy = postgres::CutProxy::to(db.port).unwrap();
    let via_proxy = db
        .url
        .replace(&format!(":{}/", db.port), &format!(":{}/", proxy.port));
    for batch in [true, false] {
        let store = connect(&via_proxy, batch).await;
        let before = format!("cut-before-{batch}");
        proxy.arm(b"INSERT INTO images", postgres::Cut::Before);
        let lost = store.apply(Change::Create(image(&before)), "a").await;
        assert!(matches!(lost, Err(StoreError::Unavailable(_))), "{lost:?}");
        assert!(direct.get(&id(&before)).await.unwrap().is_none());

        let after = format!("cut-after-{batch}");
        proxy.arm(b"COMMIT\0", postgres::Cut::After);
        let unknown = store.apply(Change::Create(image(&after)), "a").await;
        let Err(StoreError::OutcomeUnknown(why)) = &unknown else {
            panic!("{unknown:?}")
        };
        assert!(why.contains("COMMIT was sent"), "{why}");
        assert!(!why.contains(&db.password), "{why}");
        until_stored(&direct, &after).await;
        // The store goes on, on a new connection.
        store
            .apply(Change::Create(image(&format!("next-{batch}"))), "a")
            .await
            .unwrap();
    }
    assert_eq!(direct.audit_size().await.unwrap().0, 4);
}

/// A database that stops answering (no error, no closed connection) is bounded by
/// the timeouts: a connect is refused after `connect_timeout`, a statement after
/// `statement_timeout` and a second, a COMMIT with no answer is of unknown outcome.
#[tokio::test]
async fn a_database_that_stops_answering_never_hangs_a_caller() {
    let Some(db) = postgres::database() else {
        return;
    };
    let proxy = postgres::CutProxy::to(db.port).unwrap();
    let via_proxy = db
        .url
        .replace(&format!(":{}/", db.port), &format!(":{}/", proxy.port));
    let options = PgOptions {
        connect_timeout: Duration::from_secs(1),
        statement_timeout: Duration::from_secs(1),
        ..PgOptions::default()
    };
    let deadline = Duration::from_secs(20);
    // The login itself is never answered.
    proxy.arm(b"image-catalog\0", postgres::Cut::Stall);
    let started = Instant::now();
    let refused = tokio::time::timeout(deadline, PgStore::connect(&via_proxy, options.clone()))
        .await
        .expect("a connect hung");
    assert!(
        matches!(refused, Err(StoreError::Unavailable(_))),
        "{:?}",
        refused.err()
    );
    assert!(started.elapsed() < deadline);
    for batch in [true, false] {
        let store = PgStore::connect(
            &via_proxy,
            PgOptions {
                batch_writes: batch,
                ..options.clone()
            },
        )
        .await
        .unwrap();
        proxy.arm(b"INSERT INTO images", postgres::Cut::Stall);
        let stalled = tokio::time::timeout(
            deadline,
            store.apply(Change::Create(image(&format!("s-{batch}"))), "a"),
        )
        .await
        .expect("a statement hung");
        assert!(
            matches!(stalled, Err(StoreError::Unavailable(_))),
            "{stalled:?}"
        );
        proxy.arm(b"COMMIT\0", postgres::Cut::Stall);
        let unknown = tokio::time::timeout(
            deadline,
            store.apply(Change::Create(image(&format!("c-{batch}"))), "a"),
        )
        .await
        .expect("a COMMIT hung");
        let Err(StoreError::OutcomeUnknown(why)) = &unknown else {
            panic!("{unknown:?}")
        };
        assert!(why.contains("no answer"), "{why}");
        let read = tokio::time::timeout(deadline, store.get(&id("s-true")))
            .await
            .expect("a read hung");
        assert!(
            read.unwrap().is_none(),
            "the stalled insert never committed"
        );
    }
}

/// `probe` (for check-config) reads what the database holds and changes nothing.
#[tokio::test]
async fn probe_reports_the_schema_and_changes_nothing() {
    let Some(db) = postgres::database() else {
        return;
    };
    let fast = PgOptions {
        connect_timeout: Duration::from_secs(3),
        ..PgOptions::default()
    };
    assert_eq!(PgStore::probe(&db.url, fast.clone()).await.unwrap(), None);
    let cluster = postgres::shared().unwrap();
    let tables = |db: &str| {
        cluster.psql_in(
            db,
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'",
        )
    };
    assert_eq!(tables(&db.name), "0", "a probe creates nothing");
    let store = connect(&db.url, true).await;
    assert_eq!(
        PgStore::probe(&db.url, fast.clone()).await.unwrap(),
        Some((1, 1))
    );
    store.set_schema_version_for_tests(3, 1).await.unwrap();
    let err = PgStore::probe(&db.url, fast.clone()).await.unwrap_err();
    assert!(err.to_string().contains("schema 3.1"), "{err}");
    let closed = db.url.replace(&format!(":{}/", db.port), ":1/");
    let err = PgStore::probe(&closed, fast).await.unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err}");
    assert!(!err.to_string().contains(&db.password), "{err}");
}

/// Schema 1.0 (before the audit trail by image and its notifications) is brought to 1.1 in place at the
/// next connect, its records indexed; a node of 1.0 still writing during a rolling
/// upgrade (no `image_id` in its insert) has its records indexed all the same.
#[tokio::test]
async fn schema_1_0_is_upgraded_in_place_to_the_trail_by_image() {
    use image_catalog::store::AuditRange;
    let Some(db) = postgres::database() else {
        return;
    };
    let store = connect(&db.url, true).await;
    for name in ["a", "ab", "b"] {
        store.apply(Change::Create(image(name)), "u").await.unwrap();
    }
    drop(store);
    let cluster = postgres::shared().unwrap();
    // What 1.0 had: no image_id, no index, no trigger.
    cluster.psql_in(
        &db.name,
        "DROP TRIGGER audit_image_id ON audit; DROP FUNCTION audit_image_id(); \
         DROP TRIGGER counters_notify ON counters; DROP FUNCTION counters_notify(); \
         ALTER TABLE audit DROP COLUMN image_id; UPDATE schema_version SET minor = 0",
    );
    let store = connect(&db.url, true).await;
    let version = cluster.psql_in(&db.name, "SELECT major || '.' || minor FROM schema_version");
    assert_eq!(version, "1.1");
    let history = |id: &'static str| {
        let store = &store;
        async move {
            let page = store
                .audit_page(AuditRange::Before(None), Some(&images::id(id)), 10)
                .await
                .unwrap();
            page.records
                .iter()
                .map(|r| {
                    serde_json::from_slice::<serde_json::Value>(r).unwrap()["seq"]
                        .as_u64()
                        .unwrap()
                })
                .collect::<Vec<u64>>()
        }
    };
    assert_eq!(history("a").await, [1]);
    assert_eq!(history("ab").await, [2]);
    // An insert as release 1.0 writes it, without image_id.
    cluster.psql_in(
        &db.name,
        "INSERT INTO audit (seq, time, json) VALUES (9, '2026-01-01T00:00:00.000000Z', \
         convert_to('{\"seq\":9,\"time\":\"2026-01-01T00:00:00.000000Z\",\"user\":\"old\",\
         \"method\":\"DELETE\",\"id\":\"ab\",\"status\":200}', 'UTF8'))",
    );
    assert_eq!(history("ab").await, [9, 2]);
}

/// Reads on a runtime of the caller's use connections that runtime drives (no hop to
/// the store's runtime and back): once that runtime has ended, its connections are
/// dead, and the next runtime's reads open new ones instead of hanging on them.
#[test]
fn reads_outlive_the_runtime_that_opened_their_connections() {
    let Some(db) = postgres::database() else {
        return;
    };
    let runtime = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    };
    let first = runtime();
    let store = first.block_on(async {
        let store = connect(&db.url, true).await;
        store
            .apply(Change::Create(image("kept")), "a")
            .await
            .unwrap();
        // Reads at once: several connections, all driven by this runtime.
        let kept = id("kept");
        let reads = futures_util::future::join_all((0..4).map(|_| store.get(&kept))).await;
        assert!(reads.iter().all(|r| matches!(r, Ok(Some(_)))), "{reads:?}");
        store
    });
    drop(first);
    runtime().block_on(async {
        let deadline = Duration::from_secs(20);
        let read = tokio::time::timeout(deadline, store.get(&id("kept")))
            .await
            .expect("a read hung on a connection of a runtime that has ended");
        assert!(matches!(read, Ok(Some(_))), "{read:?}");
        let page = tokio::time::timeout(deadline, store.list_page(None, &Filter::all(), 10))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(page.records.len(), 1);
        assert_eq!(store.counters().await.unwrap().images, 1);
        // Writes still go through the store's writer.
        store
            .apply(Change::Create(image("later")), "a")
            .await
            .unwrap();
        store.shutdown().unwrap();
        let read = tokio::time::timeout(deadline, store.get(&id("kept")))
            .await
            .expect("a read after shutdown hung");
        assert!(read.is_err(), "{read:?}");
    });
}
