use super::pool::scrub;
use super::*;

/// The store and its futures can move between threads (a trait object, a
/// spawned task).
#[allow(dead_code)]
fn store_and_futures_are_send(store: &PgStore) {
    fn send<T: Send + Sync>(_: &T) {}
    fn send_future<T: Send>(_: T) {}
    send(store);
    let id = ImageId::parse("x").unwrap();
    send_future(store.apply(
        Change::Delete {
            id: id.clone(),
            precondition: None,
        },
        Author::tool("u"),
    ));
    send_future(store.get(&id));
    send_future(store.list_page(None, &Filter::all(), 1));
    send_future(store.audit_page(AuditRange::Before(None), None, 1));
    send_future(store.is_healthy());
    send_future(store.list_stream(None, &Filter::all()));
}

#[test]
fn secrets_are_scrubbed() {
    let secrets = vec!["s3cr%t".to_string(), "s3cr%25t".to_string()];
    assert_eq!(
        scrub(
            "login as u:s3cr%t failed, url u:s3cr%25t@h".into(),
            &secrets
        ),
        "login as u:*** failed, url u:***@h"
    );
}

#[test]
fn audit_rows_are_the_records_serde_writes_with_their_bytes() {
    let mut batch = AuditBatch::default();
    batch.push("bob \"the\" admin", "PUT", "ïd-ü", Transition::default());
    batch.push("alice", "DELETE", "x", Transition::default());
    let rows = batch.rows(12345, "2026-11-28T04:00:00.123456Z".into());
    assert_eq!(rows.seqs, [12345, 12346]);
    let first: AuditRecord = serde_json::from_slice(&rows.jsons[0]).unwrap();
    assert_eq!(
        first,
        AuditRecord::applied(
            12345,
            "2026-11-28T04:00:00.123456Z",
            "bob \"the\" admin",
            "PUT",
            "ïd-ü",
            Transition::default()
        )
    );
    assert_eq!(rows.ids, ["ïd-ü", "x"]);
    let second: AuditRecord = serde_json::from_slice(&rows.jsons[1]).unwrap();
    assert_eq!((second.seq, second.method.as_str()), (12346, "DELETE"));
    assert_eq!(
        rows.bytes,
        (rows.jsons[0].len() + rows.jsons[1].len()) as i64
    );
}

#[test]
fn the_trigger_notifies_the_channel_the_nodes_listen_on() {
    assert!(
        SCHEMA_1_1.contains(&format!("pg_notify('{}'", listen::CHANNEL)),
        "{SCHEMA_1_1}"
    );
}
