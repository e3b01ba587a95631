//! The contract both engines keep (docs/contract.md), one test each, run on every
//! engine by `main.rs`: what a change may do and what it records, lists and pages,
//! import, retention, and changes racing each other.

use std::collections::BTreeSet;
use std::time::Duration;

use futures_util::StreamExt;
use image_catalog::domain::change::{AuditRecord, Change, Precondition, Transition};
use image_catalog::domain::filter::{Filter, Search};
use image_catalog::domain::image::{Image, ImageId, Provider};
use image_catalog::store::{Applied, AuditRange, Page, Record, Store, StoreError};

use crate::Engine;
use crate::images::{PROVIDERS, id, image, image_of, providers, rename};

/// Every test of the contract, by name.
pub const TESTS: &[(&str, crate::Test)] = &crate::tests![
    create_update_delete_with_their_audit_records,
    if_match_is_a_compare_and_swap,
    concurrent_creates_of_one_id_one_wins,
    concurrent_compare_and_swaps_one_wins,
    audit_seqs_follow_commit_order_under_concurrent_writers,
    lists_are_in_byte_order_with_provider_filter_and_paging,
    the_full_list_streams_in_batches,
    a_search_finds_the_same_images_on_every_engine,
    import_is_all_or_nothing,
    an_audit_trail_moves_in_with_its_seqs,
    images_and_their_trail_land_in_one_transaction,
    a_trail_below_a_seq_given_here_refuses_everything,
    an_import_refused_by_an_id_takes_its_trail_back_out,
    audit_retention_prunes_old_records_but_never_reuses_a_seq,
    the_generation_moves_with_every_write_of_any_node,
    a_batch_gives_each_change_its_own_outcome,
    existing_names_the_ids_the_catalog_holds,
    creates_and_deletes_sent_together_keep_their_own_outcomes,
    a_page_comes_with_the_generation_it_was_read_at,
];

fn etag(json: &[u8]) -> String {
    Record::from(bytes::Bytes::copy_from_slice(json)).etag()
}

fn audit(page: &[bytes::Bytes]) -> Vec<AuditRecord> {
    page.iter()
        .map(|r| serde_json::from_slice(r).unwrap())
        .collect()
}

/// What the store counts, as `figures` gives it.
struct Counters {
    images: u64,
    audit_records: u64,
    audit_bytes: u64,
    /// One past the newest audit record's seq: the seq the next change takes.
    next_seq: u64,
}

async fn counters(store: &Store) -> Counters {
    let figures = store.figures().await.unwrap();
    let Page { records, .. } = store
        .audit_page(AuditRange::Before(None), None, 1)
        .await
        .unwrap();
    Counters {
        images: figures.images,
        audit_records: figures.audit_records,
        audit_bytes: figures.audit_bytes,
        next_seq: audit(&records).first().map_or(1, |r| r.seq + 1),
    }
}

/// An audit trail from elsewhere, one record per seq.
fn trail(seqs: &[u64]) -> Vec<AuditRecord> {
    seqs.iter()
        .map(|&seq| {
            AuditRecord::applied(
                seq,
                "2025-01-01T00:00:00.000000Z",
                "old",
                "POST",
                &format!("i{seq}"),
                Transition::default(),
            )
        })
        .collect()
}

/// The seqs of the audit trail, oldest first.
async fn seqs_of(store: &Store) -> Vec<u64> {
    store
        .audit_ascending(None)
        .map(|r| {
            serde_json::from_slice::<AuditRecord>(&r.unwrap())
                .unwrap()
                .seq
        })
        .collect()
        .await
}

/// The bytes of every audit record, as the full trail streams them.
async fn streamed_audit_bytes(store: &Store) -> u64 {
    store
        .audit_stream(None, None)
        .map(|r| r.unwrap().len() as u64)
        .fold(0, |a, b| async move { a + b })
        .await
}

/// Audit records and their bytes.
async fn audit_size(store: &Store) -> (u64, u64) {
    let counted = counters(store).await;
    (counted.audit_records, counted.audit_bytes)
}

pub async fn create_update_delete_with_their_audit_records(engine: Engine) {
    let store = engine.store().await;
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
    } = store
        .audit_page(AuditRange::Before(None), None, 10)
        .await
        .unwrap();
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
    let counters = counters(&store).await;
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
    } = store
        .audit_page(AuditRange::Before(Some(3)), None, 1)
        .await
        .unwrap();
    assert!(more);
    assert_eq!(audit(&older)[0].seq, 2);
}

pub async fn if_match_is_a_compare_and_swap(engine: Engine) {
    let store = engine.store().await;
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
    assert_eq!(audit_size(&store).await.0, 3);
}

pub async fn concurrent_creates_of_one_id_one_wins(engine: Engine) {
    let nodes = engine.nodes(2).await;
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
    assert_eq!(audit_size(&nodes[0]).await.0, 1);
    assert_eq!(counters(&nodes[1]).await.images, 1);
}

pub async fn concurrent_compare_and_swaps_one_wins(engine: Engine) {
    let nodes = engine.nodes(2).await;
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
    assert_eq!(audit_size(&nodes[0]).await.0, 2);
}

/// The seqs visible are always 1..=newest without a gap: a record never commits
/// below one already seen, so paging newest first with a marker skips nothing.
pub async fn audit_seqs_follow_commit_order_under_concurrent_writers(engine: Engine) {
    let nodes = engine.nodes(2).await;
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
            .audit_stream(None, None)
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
        let Page { records: first, .. } = reader
            .audit_page(AuditRange::Before(None), None, 7)
            .await
            .unwrap();
        let Some(newest) = audit(&first).first().map(|r| r.seq) else {
            continue;
        };
        let mut seen: Vec<u64> = audit(&first).iter().map(|r| r.seq).collect();
        let mut marker = *seen.last().unwrap();
        loop {
            let Page {
                records: page,
                more,
            } = reader
                .audit_page(AuditRange::Before(Some(marker)), None, 7)
                .await
                .unwrap();
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
    let counters = counters(&nodes[0]).await;
    assert_eq!(counters.audit_records, changes);
    assert_eq!(counters.next_seq, changes + 1);
    assert_eq!(counters.images, 8 * 16);
    let all: BTreeSet<u64> = nodes[0]
        .audit_stream(None, None)
        .map(|r| {
            serde_json::from_slice::<AuditRecord>(&r.unwrap())
                .unwrap()
                .seq
        })
        .collect()
        .await;
    assert_eq!(all.len() as u64, changes, "seqs unique");
}

pub async fn lists_are_in_byte_order_with_provider_filter_and_paging(engine: Engine) {
    let store = engine.store().await;
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
    } = store.list_page(None, &Filter::all(), 100).await.unwrap();
    assert!(!more);
    assert_eq!(page.iter().map(id_of).collect::<Vec<_>>(), sorted);
    let streamed: Vec<String> = store
        .list_stream(None, &Filter::all())
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
                .list_page(after.as_ref(), &Filter::provider(provider.clone()), 4)
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
            .list_stream(None, &Filter::provider(provider.clone()))
            .map(|r| id_of(&r.unwrap()))
            .collect()
            .await;
        assert_eq!(streamed, wanted);
    }
    let Page {
        records: tail,
        more,
    } = store
        .list_page(Some(&id("e")), &Filter::all(), 3)
        .await
        .unwrap();
    assert!(more);
    let expected: Vec<&str> = sorted
        .iter()
        .copied()
        .filter(|i| i.as_bytes() > b"e".as_slice())
        .take(3)
        .collect();
    assert_eq!(tail.iter().map(id_of).collect::<Vec<_>>(), expected);
}

/// `q`: each engine finds what the domain's rule (`Filter::keeps`) keeps, through
/// pages, page-with-snapshot and the stream, alone and with a provider: ASCII letters
/// in any case, other letters as they are, SQL's wildcards literal, JSON escapes in
/// names read as the characters they stand for.
pub async fn a_search_finds_the_same_images_on_every_engine(engine: Engine) {
    let store = engine.open().await;
    let named = [
        ("ami-UBU-1", "ec2", "Ubuntu 24.04 LTS"),
        ("ami-ubu-2", "openstack", "ubuntu minimal"),
        // Escaped in the stored JSON, as a name below: a scan must read them too.
        ("id-\"q\"\\x", "openstack", "an id with a quote"),
        ("os-cafe", "openstack", "Café Édition"),
        ("os-percent", "static", "100% done_ok"),
        ("plain", "ec2", "percent free, underscore free"),
        ("quoted", "ec2", "say \"hi\" \\ back <b>"),
        ("z-last", "static", "Zeta UBUNTU"),
    ];
    let mut images = Vec::new();
    for (id, provider, name) in named {
        let body =
            serde_json::json!({"id": id, "provider": provider, "remote_user": "u", "name": name});
        let image = Image::from_json(body.to_string().as_bytes(), &providers()).unwrap();
        store
            .apply(Change::Create(image.clone()), "t")
            .await
            .unwrap();
        images.push(image);
    }
    let id_of = |json: &bytes::Bytes| {
        serde_json::from_slice::<Image>(json)
            .unwrap()
            .id
            .to_string()
    };
    let texts = [
        "ubuntu",
        "UBU",
        "café",
        "CAFÉ",
        "édition",
        "100%",
        "%",
        "_",
        "e_o",
        "done_ok",
        "\"hi\"",
        "\\",
        " \\ b",
        "<b>",
        "\"q\"\\",
        "ami-",
        "1",
        "nothing at all",
    ];
    for text in texts {
        for provider in [None, Some("ec2"), Some("openstack")] {
            let filter = Filter {
                provider: provider.map(|p| Provider::parse(p, &providers()).unwrap()),
                search: Search::parse(text).unwrap(),
            };
            let wanted: Vec<String> = images
                .iter()
                .filter(|i| filter.keeps(i))
                .map(|i| i.id.to_string())
                .collect();
            let mut paged = Vec::new();
            let mut after: Option<ImageId> = None;
            loop {
                let Page { records, more } =
                    store.list_page(after.as_ref(), &filter, 2).await.unwrap();
                paged.extend(records.iter().map(id_of));
                if !more {
                    break;
                }
                after = Some(id(paged.last().unwrap()));
            }
            let case = format!("q={text:?} provider={provider:?}");
            assert_eq!(paged, wanted, "{case}: pages");
            let (_, Page { records, .. }) = store.list_page_at(None, &filter, 100).await.unwrap();
            assert_eq!(
                records.iter().map(id_of).collect::<Vec<_>>(),
                wanted,
                "{case}: page"
            );
            let streamed: Vec<String> = store
                .list_stream(None, &filter)
                .map(|r| id_of(&r.unwrap()))
                .collect()
                .await;
            assert_eq!(streamed, wanted, "{case}: stream");
        }
    }
    // The rule itself, so that the engines cannot agree on a wrong answer.
    let find = |text: &str| {
        let filter = Filter {
            provider: None,
            search: Search::parse(text).unwrap(),
        };
        images
            .iter()
            .filter(|i| filter.keeps(i))
            .map(|i| i.id.to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(find("ubuntu"), ["ami-UBU-1", "ami-ubu-2", "z-last"]);
    assert_eq!(find("CAFÉ"), Vec::<String>::new());
    assert_eq!(find("café"), ["os-cafe"]);
    assert_eq!(find("%"), ["os-percent"]);
    assert_eq!(find("_"), ["os-percent"]);
    assert_eq!(find("\"hi\""), ["quoted"]);
    assert_eq!(find("\\"), ["id-\"q\"\\x", "quoted"]);
    assert_eq!(find("\"Q\"\\"), ["id-\"q\"\\x"]);
}

/// The full listing is read in batches as it is consumed, not gathered first: an
/// image added at the end while the stream is part way is still listed.
pub async fn the_full_list_streams_in_batches(engine: Engine) {
    let store = engine.store().await;
    let batch: Vec<Image> = (0..1203).map(|i| image(&format!("img-{i:05}"))).collect();
    assert_eq!(
        store
            .import(batch, Vec::new(), "import:test")
            .await
            .unwrap(),
        1203
    );
    let mut stream = Box::pin(store.list_stream(None, &Filter::all()));
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
        .audit_stream(Some(1200), None)
        .map(|r| {
            serde_json::from_slice::<AuditRecord>(&r.unwrap())
                .unwrap()
                .seq
        })
        .collect()
        .await;
    assert_eq!(seqs, (1..1200).rev().collect::<Vec<_>>());
}

pub async fn import_is_all_or_nothing(engine: Engine) {
    let store = engine.store().await;
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
    assert_eq!(counters(&store).await.images, 1);
    assert_eq!(store.list_stream(None, &Filter::all()).count().await, 1);
    assert_eq!(audit_size(&store).await.0, 1, "no audit of it either");
    let batch: Vec<Image> = (0..1500).map(|i| image(&format!("ok-{i:05}"))).collect();
    assert_eq!(
        store
            .import(batch, Vec::new(), "import:file")
            .await
            .unwrap(),
        1500
    );
    let counters = counters(&store).await;
    assert_eq!(counters.images, 1501);
    assert_eq!(counters.audit_records, 1501);
    // The import's records follow the first one's seq, in a row; seqs an undone
    // import took may be skipped (never given twice), not reused.
    let Page { records: page, .. } = store
        .audit_page(AuditRange::Before(None), None, 1501)
        .await
        .unwrap();
    let records = audit(&page);
    let (newest, oldest) = (&records[0], &records[1500]);
    assert_eq!((oldest.seq, oldest.id.as_str()), (1, "taken"));
    assert_eq!(
        (newest.method.as_str(), newest.id.as_str()),
        ("IMPORT", "ok-01499")
    );
    assert_eq!(
        records[..1500].iter().map(|r| r.seq).collect::<Vec<_>>(),
        (newest.seq - 1499..=newest.seq).rev().collect::<Vec<_>>()
    );
    assert_eq!(counters.audit_bytes, streamed_audit_bytes(&store).await);
}

pub async fn an_audit_trail_moves_in_with_its_seqs(engine: Engine) {
    let store = engine.store().await;
    let records: Vec<AuditRecord> = [3u64, 7, 9]
        .iter()
        .map(|&seq| AuditRecord {
            seq,
            time: "2025-01-01T00:00:00.000000Z".into(),
            user: "old".into(),
            method: "POST".into(),
            id: format!("i{seq}"),
            status: 200,
            before: None,
            after: None,
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
    assert!(
        again.to_string().contains("spans seqs 7 to 7") && again.to_string().contains("up to 9"),
        "a trail must lie above every seq given: {again}"
    );
    store
        .apply(Change::Create(image("next")), "a")
        .await
        .unwrap();
    let Page { records: page, .. } = store
        .audit_page(AuditRange::Before(None), None, 10)
        .await
        .unwrap();
    let seqs: Vec<u64> = audit(&page).iter().map(|r| r.seq).collect();
    assert_eq!(seqs, [10, 9, 7, 3]);
    assert_eq!(audit(&page)[1], records[2], "kept as it was");
    assert_eq!(audit_size(&store).await.0, 4);
}

pub async fn images_and_their_trail_land_in_one_transaction(engine: Engine) {
    let store = engine.store().await;
    let old = |seqs: std::ops::Range<u64>| -> Vec<AuditRecord> {
        seqs.map(|seq| AuditRecord {
            seq,
            time: "2025-01-01T00:00:00.000000Z".into(),
            user: "old".into(),
            method: "POST".into(),
            id: format!("i{seq}"),
            status: 200,
            before: None,
            after: None,
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
    // A trail that does not lie above every seq given here (3000) refuses the images
    // too, and so does a seq out of range.
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
        (&[2, 3005], "up to 3000"),
    ] {
        let err = store
            .import(vec![image("fresh")], with_seqs(seqs), "import:f")
            .await
            .unwrap_err();
        assert!(err.to_string().contains(words), "{seqs:?}: {err}");
    }
    assert_eq!(counters(&store).await.images, 1);
    assert_eq!(audit_size(&store).await.0, 2, "nothing of either");
    // Both at once: the trail keeps its seqs, the images' records come after it.
    let imported = store
        .import(
            vec![image("fresh"), image("other")],
            old(3005..5010),
            "import:f",
        )
        .await
        .unwrap();
    assert_eq!(imported, 2);
    let newest: Vec<(u64, String, String)> = audit(
        &store
            .audit_page(AuditRange::Before(None), None, 3)
            .await
            .unwrap()
            .records,
    )
    .into_iter()
    .map(|r| (r.seq, r.method, r.id))
    .collect();
    assert_eq!(
        newest,
        [
            (5011, "IMPORT".into(), "other".into()),
            (5010, "IMPORT".into(), "fresh".into()),
            (5009, "POST".into(), "i5009".into()),
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
    assert_eq!(oldest, [1, 3000, 3005], "oldest first");
    let counters = counters(&store).await;
    assert_eq!(
        (counters.images, counters.audit_records),
        (3, 1 + 1 + 2005 + 2)
    );
    assert_eq!(counters.audit_bytes, streamed_audit_bytes(&store).await);
}

pub async fn a_trail_below_a_seq_given_here_refuses_everything(engine: Engine) {
    let store = engine.store().await;
    for name in ["a", "b"] {
        store.apply(Change::Create(image(name)), "u").await.unwrap();
    }
    store
        .import(Vec::new(), trail(&[10]), "import:f")
        .await
        .unwrap();
    assert_eq!(seqs_of(&store).await, [1, 2, 10]);
    let before = (audit_size(&store).await, seqs_of(&store).await);
    for (seqs, words) in [
        (vec![2u64, 5], "up to 10"),
        // Above every seq held but one: a follower past seq 10 would miss 4.
        (vec![4, 12], "up to 10"),
        (vec![11, 11], "seq 11 twice"),
        (vec![0, 12], "seq 0 is out of range"),
    ] {
        let err = store
            .import(vec![image("new")], trail(&seqs), "import:f")
            .await
            .unwrap_err();
        assert!(err.to_string().contains(words), "{seqs:?}: {err}");
        let after = (audit_size(&store).await, seqs_of(&store).await);
        assert_eq!(after, before, "{seqs:?}");
        assert_eq!(counters(&store).await.images, 2);
    }
    // Above the seqs here: fine.
    store
        .import(vec![image("new")], trail(&[12, 13]), "import:f")
        .await
        .unwrap();
    assert_eq!(seqs_of(&store).await, [1, 2, 10, 12, 13, 14]);
}

pub async fn an_import_refused_by_an_id_takes_its_trail_back_out(engine: Engine) {
    let store = engine.store().await;
    store
        .apply(Change::Create(image("taken")), "u")
        .await
        .unwrap();
    // Longer than one of the embedded store's import transactions (1,000 records).
    let long: Vec<u64> = (10..2015).collect();
    let err = store
        .import(
            vec![image("fresh"), image("taken")],
            trail(&long),
            "import:f",
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err}");
    assert_eq!(seqs_of(&store).await, [1]);
    let Page { records, .. } = store
        .audit_page(AuditRange::Before(None), None, 10)
        .await
        .unwrap();
    assert_eq!(audit_size(&store).await, (1, records[0].len() as u64));
    assert_eq!(counters(&store).await.images, 1);
    // The same trail may be tried again: its seqs are free.
    store
        .import(vec![image("fresh")], trail(&long), "import:f")
        .await
        .unwrap();
    assert_eq!(audit_size(&store).await.0, 1 + long.len() as u64 + 1);
}

pub async fn audit_retention_prunes_old_records_but_never_reuses_a_seq(engine: Engine) {
    let store = engine.store().await;
    let old: Vec<AuditRecord> = (1..=3)
        .map(|seq| AuditRecord {
            seq,
            time: "2020-01-01T00:00:00.000000Z".into(),
            user: "u".into(),
            method: "POST".into(),
            id: format!("o{seq}"),
            status: 200,
            before: None,
            after: None,
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
    let Page { records: page, .. } = store
        .audit_page(AuditRange::Before(None), None, 10)
        .await
        .unwrap();
    assert_eq!(audit(&page).iter().map(|r| r.seq).collect::<Vec<_>>(), [4]);
    assert_eq!(audit_size(&store).await, (1, page[0].len() as u64));
    store
        .apply(Change::Create(image("later")), "u")
        .await
        .unwrap();
    assert_eq!(counters(&store).await.next_seq, 6);
}

pub async fn the_generation_moves_with_every_write_of_any_node(engine: Engine) {
    let nodes = engine.nodes(2).await;
    let before = nodes[1].snapshot().await.unwrap().generation;
    nodes[0]
        .apply(Change::Create(image("g")), "a")
        .await
        .unwrap();
    let after = nodes[1].snapshot().await.unwrap().generation;
    assert_ne!(before, after);
    let refused = nodes[0].apply(Change::Create(image("g")), "a").await;
    assert!(refused.is_err());
    assert_eq!(
        nodes[1].snapshot().await.unwrap().generation,
        after,
        "a refusal changes nothing"
    );
    if let Some((open, idle)) = nodes[0].figures().await.unwrap().connections {
        assert!(open >= 1 && idle <= open, "{open} {idle}");
    }
}

/// Changes queued together are committed together, in the order they were queued
/// for each id, each with its own outcome.
pub async fn a_batch_gives_each_change_its_own_outcome(engine: Engine) {
    let store = engine.store().await;
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
    let outcomes = apply_all(&store, changes, engine.batches()).await;
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
    let counters = counters(&store).await;
    assert_eq!(counters.images, 2, "c0 and c");
    assert_eq!(counters.audit_records, 1 + 6);
    let listed: Vec<String> = store
        .list_stream(None, &Filter::all())
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

pub async fn existing_names_the_ids_the_catalog_holds(engine: Engine) {
    let store = engine.store().await;
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

/// Creates and plain deletes are sent together (on PostgreSQL: to the database at once) and committed when
/// each touched its row; when one would be refused, the batch is rolled back and
/// run statement by statement. Either way each change has its own outcome, a refused
/// one writes nothing, and the audit seqs are exactly 1..=n.
pub async fn creates_and_deletes_sent_together_keep_their_own_outcomes(engine: Engine) {
    let store = engine.store().await;
    let batch = engine.batches();
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
    let counters = counters(&store).await;
    assert_eq!(counters.images, 10 + 1, "the q's and a");
    assert_eq!(counters.audit_records, 30 + 3);
    let seqs: Vec<u64> = store
        .audit_stream(None, None)
        .map(|r| {
            serde_json::from_slice::<AuditRecord>(&r.unwrap())
                .unwrap()
                .seq
        })
        .collect()
        .await;
    assert_eq!(seqs, (1..=33).rev().collect::<Vec<_>>(), "{batch}");
    let listed: Vec<String> = store
        .list_stream(None, &Filter::all())
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
}

pub async fn a_page_comes_with_the_generation_it_was_read_at(engine: Engine) {
    let store = engine.store().await;
    let (
        generation,
        Page {
            records: empty,
            more,
        },
    ) = store.list_page_at(None, &Filter::all(), 10).await.unwrap();
    assert!(empty.is_empty() && !more);
    assert_eq!(generation, store.snapshot().await.unwrap());
    assert_eq!(generation.seq, 0);
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
    ) = store.list_page_at(None, &Filter::all(), 2).await.unwrap();
    assert!(
        now.generation > generation.generation,
        "every write moves the generation"
    );
    assert_eq!(now, store.snapshot().await.unwrap());
    assert_eq!(now.seq, 4, "the seq of the last change, read with the page");
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
    ) = store
        .list_page_at(Some(&id("b")), &Filter::all(), 5)
        .await
        .unwrap();
    assert_eq!(rest.len(), 2);
    assert!(!more);
    let static_only = Provider::parse("static", &providers()).unwrap();
    let (_, Page { records: page, .. }) = store
        .list_page_at(None, &Filter::provider(static_only.clone()), 5)
        .await
        .unwrap();
    assert_eq!(page.len(), 1);
    let (_, Page { records: none, .. }) = store
        .list_page_at(Some(&id("d")), &Filter::provider(static_only.clone()), 5)
        .await
        .unwrap();
    assert!(none.is_empty());
}

/// Applies `changes`: at once with the batching writer, which takes them in order into
/// one batch; one after another without it, since concurrent transactions of their
/// own have no order.
async fn apply_all(
    store: &Store,
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
