//! The PostgreSQL store against a real, private PostgreSQL (see support/postgres.rs):
//! every promise of the sled store, on both write paths (the batching writer, and a
//! transaction per change).

#[path = "support/postgres.rs"]
mod postgres;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use image_catalog::domain::change::{AuditRecord, Change, Precondition};
use image_catalog::domain::image::{Image, ImageId, ImagePatch, Provider};
use image_catalog::store::postgres::{PgOptions, PgStore};
use image_catalog::store::{Applied, Page, Record, StoreError};

const PROVIDERS: [&str; 3] = ["ec2", "openstack", "static"];

fn providers() -> Vec<String> {
    PROVIDERS.iter().map(|p| p.to_string()).collect()
}

fn image_of(id: &str, provider: &str) -> Image {
    let body = serde_json::json!({"id": id, "provider": provider, "remote_user": "u"});
    Image::from_json(body.to_string().as_bytes(), &providers()).unwrap()
}

fn image(id: &str) -> Image {
    image_of(id, "ec2")
}

fn id(id: &str) -> ImageId {
    ImageId::parse(id).unwrap()
}

fn rename(name: &str) -> ImagePatch {
    ImagePatch::from_json(serde_json::json!({ "name": name }).to_string().as_bytes()).unwrap()
}

fn etag(json: &[u8]) -> String {
    Record::from(bytes::Bytes::copy_from_slice(json)).etag()
}

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

fn audit(page: &[bytes::Bytes]) -> Vec<AuditRecord> {
    page.iter()
        .map(|r| serde_json::from_slice(r).unwrap())
        .collect()
}

/// Runs `test` on a fresh database, once per write path.
async fn each_mode<F, Fut>(test: F)
where
    F: Fn(String, bool) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    for batch in [true, false] {
        let Some(db) = postgres::database() else {
            return;
        };
        test(db.url, batch).await;
    }
}

#[tokio::test]
async fn create_update_delete_with_their_audit_records() {
    each_mode(|url, batch| async move {
        let store = connect(&url, batch).await;
        let a = image("a");
        assert!(matches!(
            store.apply(Change::Create(a.clone()), "admin").await,
            Ok(Applied::Created)
        ));
        let stored = store.get(&id("a")).await.unwrap().unwrap();
        assert_eq!(
            stored.json().as_ref(),
            a.to_json().as_slice(),
            "the exact JSON"
        );
        let again = store.apply(Change::Create(image("a")), "admin").await;
        assert!(
            matches!(again, Err(StoreError::Conflict(ref i)) if i == "a"),
            "{again:?}"
        );
        let updated = store
            .apply(
                Change::Update {
                    id: id("a"),
                    patch: rename("new name"),
                    precondition: None,
                },
                "bob \"b\"",
            )
            .await
            .unwrap();
        let Applied::Updated(record) = updated else {
            panic!("{updated:?}")
        };
        let now = store.get(&id("a")).await.unwrap().unwrap();
        assert_eq!(record.json(), now.json());
        assert_eq!(record.image().unwrap().name.as_str(), "new name");
        let missing = store
            .apply(
                Change::Update {
                    id: id("nope"),
                    patch: rename("x"),
                    precondition: None,
                },
                "admin",
            )
            .await;
        assert!(
            matches!(missing, Err(StoreError::NotFound(_))),
            "{missing:?}"
        );
        let delete = || Change::Delete {
            id: id("a"),
            precondition: None,
        };
        assert!(matches!(
            store.apply(delete(), "admin").await,
            Ok(Applied::Deleted)
        ));
        let twice = store.apply(delete(), "admin").await;
        assert!(matches!(twice, Err(StoreError::NotFound(_))), "{twice:?}");
        assert!(store.get(&id("a")).await.unwrap().is_none());

        let Page {
            records: page,
            more,
        } = store.audit_page(None, 10).await.unwrap();
        assert!(!more);
        let records = audit(&page);
        let seen: Vec<(u64, &str, &str)> = records
            .iter()
            .map(|r| (r.seq, r.method.as_str(), r.user.as_str()))
            .collect();
        assert_eq!(
            seen,
            [
                (3, "DELETE", "admin"),
                (2, "PUT", "bob \"b\""),
                (1, "POST", "admin")
            ],
            "refused changes are not audited"
        );
        for (bytes, record) in page.iter().zip(&records) {
            assert_eq!(
                bytes.as_ref(),
                serde_json::to_vec(record).unwrap(),
                "serde's bytes"
            );
            assert_eq!(record.status, 200);
            assert_eq!(record.id, "a");
            assert_eq!(record.time.len(), 27, "{}", record.time);
            assert!(record.time.ends_with('Z'));
        }
        let counters = store.counters().await.unwrap();
        assert_eq!(counters.images, 0);
        assert_eq!(counters.audit_records, 3);
        assert_eq!(
            counters.audit_bytes,
            page.iter().map(|b| b.len() as u64).sum::<u64>()
        );
        assert_eq!(counters.next_seq, 4);
        let Page {
            records: older,
            more,
        } = store.audit_page(Some(3), 1).await.unwrap();
        assert!(more);
        assert_eq!(audit(&older)[0].seq, 2);
    })
    .await;
}

#[tokio::test]
async fn if_match_is_a_compare_and_swap() {
    each_mode(|url, batch| async move {
        let store = connect(&url, batch).await;
        store.apply(Change::Create(image("x")), "a").await.unwrap();
        let tag = store.get(&id("x")).await.unwrap().unwrap().etag();
        assert_eq!(
            tag,
            etag(&image("x").to_json()),
            "equal records, equal tags"
        );
        let update = |tags: Vec<String>| Change::Update {
            id: id("x"),
            patch: rename("n"),
            precondition: Some(Precondition::EtagIn(tags)),
        };
        let stale = store.apply(update(vec!["\"0000\"".into()]), "a").await;
        assert!(
            matches!(stale, Err(StoreError::PreconditionFailed(_))),
            "{stale:?}"
        );
        assert_eq!(
            store.get(&id("x")).await.unwrap().unwrap().json().as_ref(),
            image("x").to_json()
        );
        let Applied::Updated(record) = store
            .apply(update(vec!["\"1\"".into(), tag.clone()]), "a")
            .await
            .unwrap()
        else {
            panic!()
        };
        let again = store.apply(update(vec![tag.clone()]), "a").await;
        assert!(
            matches!(again, Err(StoreError::PreconditionFailed(_))),
            "{again:?}"
        );
        let delete = |precondition| Change::Delete {
            id: id("x"),
            precondition: Some(precondition),
        };
        let refused = store
            .apply(delete(Precondition::EtagIn(vec![tag])), "a")
            .await;
        assert!(
            matches!(refused, Err(StoreError::PreconditionFailed(_))),
            "{refused:?}"
        );
        store
            .apply(delete(Precondition::EtagIn(vec![record.etag()])), "a")
            .await
            .unwrap();
        let gone = store.apply(delete(Precondition::Exists), "a").await;
        assert!(matches!(gone, Err(StoreError::NotFound(_))), "{gone:?}");
        assert_eq!(store.audit_size().await.unwrap().0, 3);
    })
    .await;
}

/// Two stores on one database stand for two nodes.
async fn two_nodes(url: &str, batch: bool) -> Vec<Arc<PgStore>> {
    vec![
        Arc::new(connect(url, batch).await),
        Arc::new(connect(url, batch).await),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_creates_of_one_id_one_wins() {
    each_mode(|url, batch| async move {
        let nodes = two_nodes(&url, batch).await;
        let tasks: Vec<_> = (0..24)
            .map(|i| {
                let node = nodes[i % 2].clone();
                tokio::spawn(async move { node.apply(Change::Create(image("one")), "a").await })
            })
            .collect();
        let mut won = 0;
        for task in tasks {
            match task.await.unwrap() {
                Ok(Applied::Created) => won += 1,
                Err(StoreError::Conflict(_)) => {}
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(won, 1);
        assert_eq!(nodes[0].audit_size().await.unwrap().0, 1);
        assert_eq!(nodes[1].image_count().await.unwrap(), 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_compare_and_swaps_one_wins() {
    each_mode(|url, batch| async move {
        let nodes = two_nodes(&url, batch).await;
        nodes[0]
            .apply(Change::Create(image("cas")), "a")
            .await
            .unwrap();
        let tag = nodes[1].get(&id("cas")).await.unwrap().unwrap().etag();
        let tasks: Vec<_> = (0..24)
            .map(|i| {
                let node = nodes[i % 2].clone();
                let tag = tag.clone();
                tokio::spawn(async move {
                    let change = Change::Update {
                        id: id("cas"),
                        patch: rename(&format!("writer {i}")),
                        precondition: Some(Precondition::EtagIn(vec![tag])),
                    };
                    node.apply(change, "a").await
                })
            })
            .collect();
        let mut won = 0;
        for task in tasks {
            match task.await.unwrap() {
                Ok(Applied::Updated(_)) => won += 1,
                Err(StoreError::PreconditionFailed(_)) => {}
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(won, 1);
        assert_eq!(nodes[0].audit_size().await.unwrap().0, 2);
    })
    .await;
}

/// The seqs visible are always 1..=newest without a gap: a record never commits
/// below one already seen, so paging newest first with a marker skips nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_seqs_follow_commit_order_under_concurrent_writers() {
    each_mode(|url, batch| async move {
        let nodes = two_nodes(&url, batch).await;
        let writers: Vec<_> = (0..8)
            .map(|w| {
                let node = nodes[w % 2].clone();
                tokio::spawn(async move {
                    for i in 0..25 {
                        let name = format!("w{w}-{i:03}");
                        node.apply(Change::Create(image(&name)), "a").await.unwrap();
                        if i % 3 == 0 {
                            let change = Change::Delete {
                                id: id(&name),
                                precondition: None,
                            };
                            node.apply(change, "a").await.unwrap();
                        }
                    }
                })
            })
            .collect();
        let reader = nodes[1].clone();
        let mut checks = 0;
        let mut walks = 0;
        while !writers.iter().all(|w| w.is_finished()) || checks < 3 {
            // The whole trail at once: contiguous.
            let seqs: Vec<u64> = reader
                .audit_stream(None)
                .map(|r| {
                    serde_json::from_slice::<AuditRecord>(&r.unwrap())
                        .unwrap()
                        .seq
                })
                .collect()
                .await;
            let expected: Vec<u64> = (1..=seqs.len() as u64).rev().collect();
            assert_eq!(seqs, expected, "a gap in the trail");
            checks += 1;
            // Paged with markers while writes land: everything up to the first
            // page's newest record is seen.
            let Page { records: first, .. } = reader.audit_page(None, 7).await.unwrap();
            let Some(newest) = audit(&first).first().map(|r| r.seq) else {
                continue;
            };
            let mut seen: Vec<u64> = audit(&first).iter().map(|r| r.seq).collect();
            let mut marker = *seen.last().unwrap();
            loop {
                let Page {
                    records: page,
                    more,
                } = reader.audit_page(Some(marker), 7).await.unwrap();
                seen.extend(audit(&page).iter().map(|r| r.seq));
                if !more {
                    break;
                }
                marker = *seen.last().unwrap();
            }
            assert_eq!(
                seen,
                (1..=newest).rev().collect::<Vec<_>>(),
                "paging skipped"
            );
            walks += 1;
        }
        for writer in writers {
            writer.await.unwrap();
        }
        assert!(walks > 0);
        let changes = 8 * (25 + 9);
        let counters = nodes[0].counters().await.unwrap();
        assert_eq!(counters.audit_records, changes);
        assert_eq!(counters.next_seq, changes + 1);
        assert_eq!(counters.images, 8 * 16);
        let all: BTreeSet<u64> = nodes[0]
            .audit_stream(None)
            .map(|r| {
                serde_json::from_slice::<AuditRecord>(&r.unwrap())
                    .unwrap()
                    .seq
            })
            .collect()
            .await;
        assert_eq!(all.len() as u64, changes, "seqs unique");
    })
    .await;
}

#[tokio::test]
async fn lists_are_in_byte_order_with_provider_filter_and_paging() {
    let Some(db) = postgres::database() else {
        return;
    };
    let store = connect(&db.url, true).await;
    let ids = [
        "b", "B", "a", "Z", "é", "e", "a-b", "a_b", "a.b", "~x", "ÿ", "日本", "A-1", "a0", "_",
    ];
    for (n, name) in ids.iter().enumerate() {
        let provider = PROVIDERS[n % 2];
        store
            .apply(Change::Create(image_of(name, provider)), "a")
            .await
            .unwrap();
    }
    let mut sorted: Vec<&str> = ids.to_vec();
    sorted.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    let id_of = |json: &bytes::Bytes| -> String {
        serde_json::from_slice::<Image>(json)
            .unwrap()
            .id
            .to_string()
    };
    let Page {
        records: page,
        more,
    } = store.list_page(None, None, 100).await.unwrap();
    assert!(!more);
    assert_eq!(page.iter().map(id_of).collect::<Vec<_>>(), sorted);
    let streamed: Vec<String> = store
        .list_stream(None, None)
        .map(|r| id_of(&r.unwrap()))
        .collect()
        .await;
    assert_eq!(streamed, sorted);
    // Paging by 4 from a marker, per provider.
    for (p, provider) in PROVIDERS.iter().enumerate() {
        let wanted: Vec<&str> = sorted
            .iter()
            .copied()
            .filter(|name| ids.iter().position(|i| i == name).unwrap() % 2 == p)
            .collect();
        let provider = Provider::parse(provider, &providers()).unwrap();
        let mut seen = Vec::new();
        let mut after: Option<ImageId> = None;
        loop {
            let Page {
                records: page,
                more,
            } = store
                .list_page(after.as_ref(), Some(&provider), 4)
                .await
                .unwrap();
            assert!(page.len() <= 4);
            seen.extend(page.iter().map(id_of));
            if !more {
                break;
            }
            after = Some(id(seen.last().unwrap()));
        }
        assert_eq!(seen, wanted, "provider {}", provider.as_str());
        let streamed: Vec<String> = store
            .list_stream(None, Some(&provider))
            .map(|r| id_of(&r.unwrap()))
            .collect()
            .await;
        assert_eq!(streamed, wanted);
    }
    let Page {
        records: tail,
        more,
    } = store.list_page(Some(&id("e")), None, 3).await.unwrap();
    assert!(more);
    let expected: Vec<&str> = sorted
        .iter()
        .copied()
        .filter(|i| i.as_bytes() > b"e".as_slice())
        .take(3)
        .collect();
    assert_eq!(tail.iter().map(id_of).collect::<Vec<_>>(), expected);
}

/// The full listing is read in batches as it is consumed, not gathered first: an
/// image added at the end while the stream is part way is still listed.
#[tokio::test]
async fn the_full_list_streams_in_batches() {
    let Some(db) = postgres::database() else {
        return;
    };
    let store = connect(&db.url, true).await;
    let batch: Vec<Image> = (0..1203).map(|i| image(&format!("img-{i:05}"))).collect();
    assert_eq!(
        store
            .import(batch, Vec::new(), "import:test")
            .await
            .unwrap(),
        1203
    );
    let mut stream = Box::pin(store.list_stream(None, None));
    let first = stream.next().await.unwrap().unwrap();
    assert_eq!(
        serde_json::from_slice::<Image>(&first).unwrap().id.as_str(),
        "img-00000"
    );
    store
        .apply(Change::Create(image("zz-late")), "a")
        .await
        .unwrap();
    let mut count = 1;
    let mut last = String::new();
    while let Some(item) = stream.next().await {
        let image: Image = serde_json::from_slice(&item.unwrap()).unwrap();
        assert!(image.id.as_str() > last.as_str());
        last = image.id.to_string();
        count += 1;
    }
    assert_eq!(count, 1204);
    assert_eq!(last, "zz-late");
    // The audit trail streams the same way, newest first.
    let seqs: Vec<u64> = store
        .audit_stream(Some(1200))
        .map(|r| {
            serde_json::from_slice::<AuditRecord>(&r.unwrap())
                .unwrap()
                .seq
        })
        .collect()
        .await;
    assert_eq!(seqs, (1..1200).rev().collect::<Vec<_>>());
}

#[tokio::test]
async fn import_is_all_or_nothing() {
    let Some(db) = postgres::database() else {
        return;
    };
    let store = connect(&db.url, true).await;
    store
        .apply(Change::Create(image("taken")), "a")
        .await
        .unwrap();
    let mut batch: Vec<Image> = (0..2010).map(|i| image(&format!("new-{i:05}"))).collect();
    batch.push(image("taken"));
    let err = store
        .import(batch, Vec::new(), "import:file")
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Conflict(ref i) if i == "taken"),
        "{err}"
    );
    let mut twice: Vec<Image> = (0..5).map(|i| image(&format!("dup-{i}"))).collect();
    twice.push(image("dup-2"));
    let err = store
        .import(twice, Vec::new(), "import:file")
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Conflict(ref i) if i == "dup-2"),
        "{err}"
    );
    assert_eq!(store.image_count().await.unwrap(), 1);
    assert_eq!(store.list_stream(None, None).count().await, 1);
    assert_eq!(
        store.audit_size().await.unwrap().0,
        1,
        "no audit of it either"
    );
    let batch: Vec<Image> = (0..1500).map(|i| image(&format!("ok-{i:05}"))).collect();
    assert_eq!(
        store
            .import(batch, Vec::new(), "import:file")
            .await
            .unwrap(),
        1500
    );
    let counters = store.counters().await.unwrap();
    assert_eq!(counters.images, 1501);
    assert_eq!(counters.audit_records, 1501);
    let Page { records: page, .. } = store.audit_page(None, 1).await.unwrap();
    let newest = &audit(&page)[0];
    assert_eq!((newest.seq, newest.method.as_str()), (1501, "IMPORT"));
    assert_eq!(newest.id, "ok-01499");
    let total: u64 = store
        .audit_stream(None)
        .map(|r| r.unwrap().len() as u64)
        .fold(0, |a, b| async move { a + b })
        .await;
    assert_eq!(counters.audit_bytes, total);
}

#[tokio::test]
async fn an_audit_trail_moves_in_with_its_seqs() {
    let Some(db) = postgres::database() else {
        return;
    };
    let store = connect(&db.url, true).await;
    let records: Vec<AuditRecord> = [3u64, 7, 9]
        .iter()
        .map(|&seq| AuditRecord {
            seq,
            time: "2025-01-01T00:00:00.000000Z".into(),
            user: "old".into(),
            method: "POST".into(),
            id: format!("i{seq}"),
            status: 200,
        })
        .collect();
    assert_eq!(
        store
            .import(Vec::new(), records.clone(), "import:f")
            .await
            .unwrap(),
        0,
        "no images"
    );
    let again = store
        .import(Vec::new(), records[1..2].to_vec(), "import:f")
        .await
        .unwrap_err();
    assert!(again.to_string().contains("seq 7"), "{again}");
    store
        .apply(Change::Create(image("next")), "a")
        .await
        .unwrap();
    let Page { records: page, .. } = store.audit_page(None, 10).await.unwrap();
    let seqs: Vec<u64> = audit(&page).iter().map(|r| r.seq).collect();
    assert_eq!(seqs, [10, 9, 7, 3]);
    assert_eq!(audit(&page)[1], records[2], "kept as it was");
    assert_eq!(store.audit_size().await.unwrap().0, 4);
}

#[tokio::test]
async fn images_and_their_trail_land_in_one_transaction() {
    let Some(db) = postgres::database() else {
        return;
    };
    let store = connect(&db.url, true).await;
    let old = |seqs: std::ops::Range<u64>| -> Vec<AuditRecord> {
        seqs.map(|seq| AuditRecord {
            seq,
            time: "2025-01-01T00:00:00.000000Z".into(),
            user: "old".into(),
            method: "POST".into(),
            id: format!("i{seq}"),
            status: 200,
        })
        .collect()
    };
    store
        .apply(Change::Create(image("taken")), "a")
        .await
        .unwrap();
    // An id present refuses the trail too.
    let err = store
        .import(
            vec![image("fresh"), image("taken")],
            old(5..2010),
            "import:f",
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err}");
    // A trail moved in alone, far ahead.
    assert_eq!(
        store
            .import(Vec::new(), old(3000..3001), "import:f")
            .await
            .unwrap(),
        0
    );
    // A trail that would interleave with the one here (seq 3000 lies between its
    // seqs) refuses the images too, and so does a seq out of range.
    let with_seqs = |seqs: &[u64]| -> Vec<AuditRecord> {
        seqs.iter()
            .map(|&seq| AuditRecord {
                seq,
                ..old(5..6).remove(0)
            })
            .collect()
    };
    for (seqs, words) in [
        (&[0u64, 3][..], "seq 0 is out of range"),
        (&[2, 3005], "seq 3000"),
    ] {
        let err = store
            .import(vec![image("fresh")], with_seqs(seqs), "import:f")
            .await
            .unwrap_err();
        assert!(err.to_string().contains(words), "{seqs:?}: {err}");
    }
    assert_eq!(store.image_count().await.unwrap(), 1);
    assert_eq!(store.audit_size().await.unwrap().0, 2, "nothing of either");
    // Both at once: the trail keeps its seqs, the images' records come after it.
    let imported = store
        .import(
            vec![image("fresh"), image("other")],
            old(5..2010),
            "import:f",
        )
        .await
        .unwrap();
    assert_eq!(imported, 2);
    let newest: Vec<(u64, String, String)> =
        audit(&store.audit_page(None, 3).await.unwrap().records)
            .into_iter()
            .map(|r| (r.seq, r.method, r.id))
            .collect();
    assert_eq!(
        newest,
        [
            (3002, "IMPORT".into(), "other".into()),
            (3001, "IMPORT".into(), "fresh".into()),
            (3000, "POST".into(), "i3000".into()),
        ]
    );
    let oldest: Vec<u64> = store
        .audit_ascending(None)
        .take(3)
        .map(|r| {
            serde_json::from_slice::<AuditRecord>(&r.unwrap())
                .unwrap()
                .seq
        })
        .collect()
        .await;
    assert_eq!(oldest, [1, 5, 6], "oldest first");
    let counters = store.counters().await.unwrap();
    assert_eq!(
        (counters.images, counters.audit_records),
        (3, 1 + 1 + 2005 + 2)
    );
    let total: u64 = store
        .audit_stream(None)
        .map(|r| r.unwrap().len() as u64)
        .fold(0, |a, b| async move { a + b })
        .await;
    assert_eq!(counters.audit_bytes, total);
}

#[tokio::test]
async fn audit_retention_prunes_old_records_but_never_reuses_a_seq() {
    let Some(db) = postgres::database() else {
        return;
    };
    let store = connect(&db.url, true).await;
    let old: Vec<AuditRecord> = (1..=3)
        .map(|seq| AuditRecord {
            seq,
            time: "2020-01-01T00:00:00.000000Z".into(),
            user: "u".into(),
            method: "POST".into(),
            id: format!("o{seq}"),
            status: 200,
        })
        .collect();
    store.import(Vec::new(), old, "import:f").await.unwrap();
    store
        .apply(Change::Create(image("new")), "u")
        .await
        .unwrap();
    assert_eq!(
        store.prune_audit().await.unwrap(),
        0,
        "no retention: all kept"
    );
    store.keep_audit_for(Some(Duration::from_secs(30 * 86_400)));
    assert_eq!(store.prune_audit().await.unwrap(), 3);
    let Page { records: page, .. } = store.audit_page(None, 10).await.unwrap();
    assert_eq!(audit(&page).iter().map(|r| r.seq).collect::<Vec<_>>(), [4]);
    assert_eq!(store.audit_size().await.unwrap(), (1, page[0].len() as u64));
    store
        .apply(Change::Create(image("later")), "u")
        .await
        .unwrap();
    assert_eq!(store.counters().await.unwrap().next_seq, 6);
}

#[tokio::test]
async fn the_generation_moves_with_every_write_of_any_node() {
    let Some(db) = postgres::database() else {
        return;
    };
    let nodes = two_nodes(&db.url, true).await;
    let before = nodes[1].generation().await.unwrap();
    nodes[0]
        .apply(Change::Create(image("g")), "a")
        .await
        .unwrap();
    let after = nodes[1].generation().await.unwrap();
    assert_ne!(before, after);
    let refused = nodes[0].apply(Change::Create(image("g")), "a").await;
    assert!(refused.is_err());
    assert_eq!(
        nodes[1].generation().await.unwrap(),
        after,
        "a refusal changes nothing"
    );
    let (open, idle) = nodes[0].pool_status();
    assert!(open >= 1 && idle <= open, "{open} {idle}");
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
        let list =
            tokio::time::timeout(deadline, store.list_stream(None, None).collect::<Vec<_>>())
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

/// Changes queued together are committed together, in the order they were queued
/// for each id, each with its own outcome.
#[tokio::test]
async fn a_batch_gives_each_change_its_own_outcome() {
    let Some(db) = postgres::database() else {
        return;
    };
    let store = connect(&db.url, true).await;
    store.apply(Change::Create(image("c0")), "a").await.unwrap();
    let tag = store.get(&id("c0")).await.unwrap().unwrap().etag();
    let delete = |name: &str| Change::Delete {
        id: id(name),
        precondition: None,
    };
    let changes = vec![
        Change::Create(image("a")),
        Change::Create(image("b")),
        Change::Create(image("a")),
        delete("b"),
        delete("c"),
        Change::Create(image("c")),
        Change::Update {
            id: id("c0"),
            patch: rename("x"),
            precondition: Some(Precondition::EtagIn(vec!["\"nope\"".into()])),
        },
        Change::Update {
            id: id("c0"),
            patch: rename("y"),
            precondition: Some(Precondition::EtagIn(vec![tag])),
        },
        delete("a"),
        delete("a"),
    ];
    let outcomes =
        futures_util::future::join_all(changes.into_iter().map(|c| store.apply(c, "a"))).await;
    let seen: Vec<&str> = outcomes
        .iter()
        .map(|o| match o {
            Ok(Applied::Created) => "created",
            Ok(Applied::Deleted) => "deleted",
            Ok(Applied::Updated(_)) => "updated",
            Err(StoreError::Conflict(_)) => "409",
            Err(StoreError::NotFound(_)) => "404",
            Err(StoreError::PreconditionFailed(_)) => "412",
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        seen,
        [
            "created", "created", "409", "deleted", "404", "created", "412", "updated", "deleted",
            "404"
        ]
    );
    let counters = store.counters().await.unwrap();
    assert_eq!(counters.images, 2, "c0 and c");
    assert_eq!(counters.audit_records, 1 + 6);
    let listed: Vec<String> = store
        .list_stream(None, None)
        .map(|r| {
            serde_json::from_slice::<Image>(&r.unwrap())
                .unwrap()
                .id
                .to_string()
        })
        .collect()
        .await;
    assert_eq!(listed, ["c", "c0"]);
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
        Some((1, 0))
    );
    store.set_schema_version_for_tests(3, 1).await.unwrap();
    let err = PgStore::probe(&db.url, fast.clone()).await.unwrap_err();
    assert!(err.to_string().contains("schema 3.1"), "{err}");
    let closed = db.url.replace(&format!(":{}/", db.port), ":1/");
    let err = PgStore::probe(&closed, fast).await.unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err}");
    assert!(!err.to_string().contains(&db.password), "{err}");
}

#[tokio::test]
async fn existing_names_the_ids_the_catalog_holds() {
    let Some(db) = postgres::database() else {
        return;
    };
    let store = connect(&db.url, true).await;
    for name in ["a", "b"] {
        store
            .apply(Change::Create(image(name)), "admin")
            .await
            .unwrap();
    }
    let mut found = store.existing(&[id("a"), id("c"), id("b")]).await.unwrap();
    found.sort_by(|x, y| x.as_str().cmp(y.as_str()));
    assert_eq!(found, vec![id("a"), id("b")]);
    assert!(store.existing(&[]).await.unwrap().is_empty());
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
        let page = tokio::time::timeout(deadline, store.list_page(None, None, 10))
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

/// Applies `changes`: at once with the batching writer, which takes them in order into
/// one batch; one after another without it, since concurrent transactions of their
/// own have no order.
async fn apply_all(
    store: &PgStore,
    changes: Vec<Change>,
    batch: bool,
) -> Vec<Result<Applied, StoreError>> {
    if batch {
        return futures_util::future::join_all(changes.into_iter().map(|c| store.apply(c, "a")))
            .await;
    }
    let mut outcomes = Vec::new();
    for change in changes {
        outcomes.push(store.apply(change, "a").await);
    }
    outcomes
}

/// Creates and plain deletes are sent to the database together and committed when
/// each touched its row; when one would be refused, the batch is rolled back and
/// run statement by statement. Either way each change has its own outcome, a refused
/// one writes nothing, and the audit seqs are exactly 1..=n.
#[tokio::test]
async fn creates_and_deletes_sent_together_keep_their_own_outcomes() {
    each_mode(|url, batch| async move {
        let store = connect(&url, batch).await;
        let delete = |name: &str| Change::Delete {
            id: id(name),
            precondition: None,
        };
        let outcome = |o: &Result<Applied, StoreError>| match o {
            Ok(Applied::Created) => "created",
            Ok(Applied::Deleted) => "deleted",
            Err(StoreError::Conflict(_)) => "409",
            Err(StoreError::NotFound(_)) => "404",
            other => panic!("{other:?}"),
        };
        for round in 0..10 {
            let (p, q) = (format!("p{round}"), format!("q{round}"));
            let changes = vec![
                Change::Create(image(&p)),
                Change::Create(image(&q)),
                delete(&p),
            ];
            let outcomes = apply_all(&store, changes, batch).await;
            let seen: Vec<&str> = outcomes.iter().map(outcome).collect();
            assert_eq!(seen, ["created", "created", "deleted"], "{batch}");
        }
        let changes = vec![
            Change::Create(image("a")),
            Change::Create(image("b")),
            Change::Create(image("a")),
            delete("b"),
            delete("z"),
        ];
        let outcomes = apply_all(&store, changes, batch).await;
        let seen: Vec<&str> = outcomes.iter().map(outcome).collect();
        assert_eq!(
            seen,
            ["created", "created", "409", "deleted", "404"],
            "{batch}"
        );
        let counters = store.counters().await.unwrap();
        assert_eq!(counters.images, 10 + 1, "the q's and a");
        assert_eq!(counters.audit_records, 30 + 3);
        let seqs: Vec<u64> = store
            .audit_stream(None)
            .map(|r| {
                serde_json::from_slice::<AuditRecord>(&r.unwrap())
                    .unwrap()
                    .seq
            })
            .collect()
            .await;
        assert_eq!(seqs, (1..=33).rev().collect::<Vec<_>>(), "{batch}");
        let listed: Vec<String> = store
            .list_stream(None, None)
            .map(|r| {
                serde_json::from_slice::<Image>(&r.unwrap())
                    .unwrap()
                    .id
                    .to_string()
            })
            .collect()
            .await;
        assert_eq!(listed.len(), 11);
        assert_eq!(listed[0], "a");
    })
    .await;
}

#[tokio::test]
async fn a_page_comes_with_the_generation_it_was_read_at() {
    let Some(db) = postgres::database() else {
        return;
    };
    let store = connect(&db.url, true).await;
    let (
        generation,
        Page {
            records: empty,
            more,
        },
    ) = store.list_page_at(None, None, 10).await.unwrap();
    assert!(empty.is_empty() && !more);
    assert_eq!(generation, store.generation().await.unwrap());
    for name in ["c", "a", "b"] {
        store
            .apply(Change::Create(image(name)), "admin")
            .await
            .unwrap();
    }
    store
        .apply(Change::Create(image_of("d", "static")), "admin")
        .await
        .unwrap();
    let (
        now,
        Page {
            records: page,
            more,
        },
    ) = store.list_page_at(None, None, 2).await.unwrap();
    assert!(now > generation, "every write moves the generation");
    assert_eq!(now, store.generation().await.unwrap());
    let ids: Vec<String> = page
        .iter()
        .map(|json| Record::from(json.clone()).image().unwrap().id.to_string())
        .collect();
    assert_eq!(ids, ["a", "b"]);
    assert!(more);
    let (
        _,
        Page {
            records: rest,
            more,
        },
    ) = store.list_page_at(Some(&id("b")), None, 5).await.unwrap();
    assert_eq!(rest.len(), 2);
    assert!(!more);
    let static_only = Provider::parse("static", &providers()).unwrap();
    let (_, Page { records: page, .. }) = store
        .list_page_at(None, Some(&static_only), 5)
        .await
        .unwrap();
    assert_eq!(page.len(), 1);
    let (_, Page { records: none, .. }) = store
        .list_page_at(Some(&id("d")), Some(&static_only), 5)
        .await
        .unwrap();
    assert!(none.is_empty());
}
