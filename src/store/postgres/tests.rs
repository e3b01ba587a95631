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
    send_future(store.list_page(None, None, 1));
    send_future(store.audit_page(None, 1));
    send_future(store.is_healthy());
    send_future(store.list_stream(None, None));
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
fn audit_bytes_less_seq_digits_match_serde() {
    let mut batch = AuditBatch::default();
    batch.push("bob \"the\" admin", "PUT", "ïd-ü");
    let record = AuditRecord {
        seq: 12345,
        time: "2026-11-28T04:00:00.123456Z".into(),
        user: "bob \"the\" admin".into(),
        method: "PUT".into(),
        id: "ïd-ü".into(),
        status: 200,
    };
    let full = serde_json::to_vec(&record).unwrap().len() as i64;
    assert_eq!(batch.bytes + 5, full);
}
