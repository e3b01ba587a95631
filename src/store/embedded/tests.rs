use super::reads::take_page;
use super::*;

#[test]
fn audit_times_have_a_fixed_width_with_microseconds() {
    use time::macros::datetime;
    assert_eq!(
        rfc3339(datetime!(2026-01-02 03:04:05.000007 UTC)),
        "2026-01-02T03:04:05.000007Z"
    );
    assert_eq!(
        rfc3339(datetime!(2026-11-28 23:59:59 UTC)),
        "2026-11-28T23:59:59.000000Z"
    );
    // Another offset is written as the same instant in UTC.
    assert_eq!(
        rfc3339(datetime!(2026-01-01 01:30:00.5 +02:00)),
        "2025-12-31T23:30:00.500000Z"
    );
    assert_eq!(now_rfc3339().len(), "YYYY-MM-DDTHH:MM:SS.ffffffZ".len());
}

fn image(id: &str) -> Image {
    let body = format!(r#"{{"id":"{id}","provider":"ec2","remote_user":"u"}}"#);
    Image::from_json(body.as_bytes(), &["ec2".to_string()]).unwrap()
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(f)
}

#[test]
fn reopen_keeps_data_and_refuses_other_versions() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = SledStore::open(dir.path(), 8).unwrap();
        block_on(store.apply(Change::Create(image("x")), "a")).unwrap();
    }
    {
        let store = SledStore::open(dir.path(), 8).unwrap();
        assert!(
            store
                .read_image(&ImageId::parse("x").unwrap())
                .unwrap()
                .is_some()
        );
        assert_eq!(store.image_count(), 1, "the count is kept on disk");
        store.set_format_version_for_tests("99").unwrap();
    }
    let err = SledStore::open(dir.path(), 8)
        .err()
        .expect("version 99 is refused");
    assert!(err.to_string().contains("format version '99'"), "{err}");
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap()
}

#[test]
fn a_full_queue_refuses_writes_after_a_short_wait() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = SledStore::open(dir.path(), 8).unwrap();
    store.queue = WriteQueue::with_limit(2);
    let store = Arc::new(store);
    let held = store.pause.lock();
    runtime().block_on(async {
        let local = tokio::task::LocalSet::new();
        local
            .run_until(async {
                // Two take the two places (the writer holds the first batch).
                let waiting: Vec<_> = ["q1", "q2"]
                    .into_iter()
                    .map(|id| {
                        let store = store.clone();
                        tokio::task::spawn_local(async move {
                            store.apply(Change::Create(image(id)), "a").await
                        })
                    })
                    .collect();
                tokio::task::yield_now().await;
                let refused = store.apply(Change::Create(image("q3")), "a").await;
                assert!(matches!(refused, Err(StoreError::Busy)), "{refused:?}");
                drop(held);
                for task in waiting {
                    task.await.unwrap().unwrap();
                }
            })
            .await;
    });
    assert_eq!(store.image_count(), 2);
    assert!(
        store
            .read_image(&ImageId::parse("q3").unwrap())
            .unwrap()
            .is_none()
    );
}

#[test]
fn a_change_in_flight_is_shown_only_once_durable() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SledStore::open(dir.path(), 8).unwrap());
    block_on(store.apply(Change::Create(image("old")), "a")).unwrap();
    let (applied, in_flight) = std::sync::mpsc::channel();
    let (release, released) = std::sync::mpsc::channel::<()>();
    let released = Mutex::new(released);
    *store.before_flush.lock() = Some(Box::new(move || {
        applied.send(()).unwrap();
        released.lock().recv().unwrap();
    }));
    let writing = store.clone();
    let write = std::thread::spawn(move || {
        block_on(writing.apply(Change::Create(image("new")), "a")).unwrap();
        block_on(writing.apply(
            Change::Delete {
                id: ImageId::parse("old").unwrap(),
                precondition: None,
            },
            "a",
        ))
        .unwrap();
    });
    let shown = |store: &SledStore| -> Vec<String> {
        store
            .list_from(None, Filter::all())
            .map(|r| Record::from(r.unwrap()).image().unwrap().id.to_string())
            .collect()
    };
    let new = ImageId::parse("new").unwrap();
    let old = ImageId::parse("old").unwrap();
    // The create is applied in sled, not yet flushed: nothing of it shows.
    in_flight.recv().unwrap();
    assert!(
        store.images.get("new").unwrap().is_some(),
        "applied in sled"
    );
    assert!(store.read_image(&new).unwrap().is_none());
    assert_eq!(shown(&store), ["old"]);
    assert_eq!(store.audit_after(None).count(), 1);
    let generation = store.generation_now();
    release.send(()).unwrap();
    // The delete in flight: the image still shows, in its place.
    in_flight.recv().unwrap();
    assert!(
        store.generation_now() > generation,
        "the create was revealed"
    );
    assert!(
        store.images.get("old").unwrap().is_none(),
        "deleted in sled"
    );
    assert!(store.read_image(&old).unwrap().is_some());
    assert_eq!(shown(&store), ["new", "old"]);
    assert!(
        take_page(store.list_from(None, Filter::all()), 1)
            .unwrap()
            .more
    );
    assert_eq!(
        store
            .audit_page_now(AuditRange::Before(None), None, 10)
            .unwrap()
            .records
            .len(),
        2
    );
    release.send(()).unwrap();
    write.join().unwrap();
    *store.before_flush.lock() = None;
    assert!(store.read_image(&old).unwrap().is_none());
    assert_eq!(shown(&store), ["new"]);
    assert_eq!(store.audit_after(None).count(), 3);
}

/// A permit that a test takes away.
struct Switch(std::sync::atomic::AtomicBool);

impl crate::store::Permit for Switch {
    fn still_held(&self) -> Result<(), &'static str> {
        if self.0.load(Ordering::SeqCst) {
            Ok(())
        } else {
            Err("create_image")
        }
    }
}

#[test]
fn a_change_whose_author_lost_the_policy_while_queued_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SledStore::open(dir.path(), 8).unwrap());
    let (applied, in_flight) = std::sync::mpsc::channel();
    let (release, released) = std::sync::mpsc::channel::<()>();
    let released = Mutex::new(released);
    *store.before_flush.lock() = Some(Box::new(move || {
        let _ = applied.send(());
        let _ = released.lock().recv();
    }));
    let first = {
        let store = store.clone();
        std::thread::spawn(move || block_on(store.apply(Change::Create(image("first")), "a")))
    };
    in_flight.recv().unwrap();
    // Queued behind the batch in flight, let in while the policy was held.
    let permit = Arc::new(Switch(std::sync::atomic::AtomicBool::new(true)));
    let author = Author::new("bob", permit.clone());
    let queued = {
        let store = store.clone();
        std::thread::spawn(move || block_on(store.apply(Change::Create(image("queued")), author)))
    };
    while store.queue.free() == crate::store::queue::QUEUE_LIMIT - 1 {
        std::thread::yield_now();
    }
    permit.0.store(false, Ordering::SeqCst);
    // One release for the batch in flight, one for the queued change's batch,
    // whose hook may run before the hook is taken away.
    release.send(()).unwrap();
    release.send(()).unwrap();
    *store.before_flush.lock() = None;
    assert!(first.join().unwrap().is_ok());
    let refused = queued.join().unwrap();
    assert!(
        matches!(&refused, Err(StoreError::Revoked(revoked)) if revoked.user == "bob" && revoked.policy == "create_image"),
        "{refused:?}"
    );
    assert!(
        store
            .read_image(&ImageId::parse("queued").unwrap())
            .unwrap()
            .is_none()
    );
}

#[test]
fn a_dead_writer_is_fail_stop() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path(), 8).unwrap();
    block_on(store.apply(Change::Create(image("kept")), "a")).unwrap();
    assert!(store.is_healthy());
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let crashed = block_on(store.submit(Work::Crash, "a".into()));
    std::panic::set_hook(previous);
    assert!(
        matches!(crashed, Err(StoreError::OutcomeUnknown(_))),
        "{crashed:?}"
    );
    assert!(!store.is_healthy());
    assert_eq!(block_on(store.failed()), WRITER_PANICKED);
    let after = block_on(store.apply(Change::Create(image("later")), "a"));
    assert!(matches!(after, Err(StoreError::Stopped(_))), "{after:?}");
    let read = store.read_image(&ImageId::parse("kept").unwrap());
    assert!(matches!(read, Err(StoreError::Stopped(_))), "{read:?}");
    assert!(
        store
            .list_from(None, Filter::all())
            .next()
            .unwrap()
            .is_err()
    );
    assert!(store.shutdown().is_err(), "a failed store is not flushed");
}

#[test]
fn an_import_that_fails_part_way_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path(), 8).unwrap();
    block_on(store.apply(Change::Create(image("taken")), "a")).unwrap();
    // The conflict sits in the third chunk: two chunks commit before it.
    let mut batch: Vec<Image> = (0..2 * IMPORT_CHUNK + 10)
        .map(|i| image(&format!("new-{i:05}")))
        .collect();
    batch.push(image("taken"));
    let err = block_on(store.import(batch, Vec::new(), "import:file")).unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err}");
    assert_eq!(store.image_count(), 1);
    assert_eq!(store.list_from(None, Filter::all()).count(), 1);
    assert_eq!(
        store.audit_from(None).count(),
        1,
        "its audit records went too"
    );
    // The next change takes the next seq after the surviving record.
    block_on(store.apply(Change::Create(image("next")), "a")).unwrap();
    // The seqs the undone chunks took are given back, as PostgreSQL's rollback does:
    // no client saw them (an import runs with the data dir locked against servers).
    let page = store
        .audit_page_now(AuditRange::Before(None), None, 1)
        .unwrap();
    let newest: AuditRecord = serde_json::from_slice(&page.records[0]).unwrap();
    assert_eq!(newest.seq, 2);
}

#[test]
fn an_interrupted_import_is_undone_at_the_next_open() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = SledStore::open(dir.path(), 8).unwrap();
        block_on(store.apply(Change::Create(image("kept")), "a")).unwrap();
        let mut writer = writer_of(&store);
        // As if the process died after the marker and one chunk reached the disk.
        let marker = serde_json::to_vec(&ImportMarker {
            first_seq: 2,
            user: "import:f".into(),
            trail: None,
            next_seq: None,
        })
        .unwrap();
        writer.meta.insert(IMPORT_KEY, marker).unwrap();
        let batch: Vec<Image> = (0..5).map(|i| image(&format!("half-{i}"))).collect();
        writer.import_chunks(&batch, "import:f").unwrap();
        store.db.flush().unwrap();
        assert_eq!(store.list_from(None, Filter::all()).count(), 6);
    }
    let store = reopen(dir.path());
    assert_eq!(store.list_from(None, Filter::all()).count(), 1);
    assert_eq!(store.image_count(), 1);
    assert_eq!(store.audit_from(None).count(), 1);
}

fn trail(seqs: &[u64]) -> Vec<AuditRecord> {
    seqs.iter()
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
        .collect()
}

/// The seqs in the audit tree, shown or not (a test's writer makes no batch).
fn seqs_of(store: &SledStore) -> Vec<u64> {
    store
        .audit
        .iter()
        .map(|r| u64_from_bytes(&r.unwrap().0).unwrap())
        .collect()
}

/// What the contract suite (tests/engines) cannot see: a moved trail's seqs and
/// the tally are kept on disk, and the open's read-through agrees with them.
#[test]
fn a_moved_trail_and_its_tally_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = SledStore::open(dir.path(), 8).unwrap();
        let images = vec![image("m-1"), image("m-2")];
        block_on(store.import(images, trail(&[3, 7, 9]), "import:f")).unwrap();
        assert_eq!(seqs_of(&store), [3, 7, 9, 10, 11]);
        assert!(
            store.meta_import_marker().is_none(),
            "a finished import's marker goes"
        );
        store.shutdown().unwrap();
    }
    let store = reopen(dir.path());
    block_on(store.apply(Change::Create(image("after")), "u")).unwrap();
    assert_eq!(seqs_of(&store), [3, 7, 9, 10, 11, 12]);
    assert_eq!(store.audit_size().0, 6);
    assert_eq!(store.image_count(), 3);
}

#[test]
fn an_interrupted_import_with_a_trail_is_undone_at_the_next_open() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = SledStore::open(dir.path(), 8).unwrap();
        block_on(store.apply(Change::Create(image("kept")), "a")).unwrap();
        let mut writer = writer_of(&store);
        // As if the process died after the marker, the trail and one chunk of
        // images reached the disk. The trail holds an IMPORT record of the same
        // user naming the kept image: only the range says it is the trail's.
        let mut moved = trail(&[5, 6]);
        moved[1].method = IMPORT_METHOD.into();
        moved[1].user = "import:f".into();
        moved[1].id = "kept".into();
        let marker = serde_json::to_vec(&ImportMarker {
            first_seq: 7,
            user: "import:f".into(),
            trail: Some((5, 6)),
            next_seq: None,
        })
        .unwrap();
        writer.meta.insert(IMPORT_KEY, marker).unwrap();
        writer.import_trail(&moved).unwrap();
        let batch: Vec<Image> = (0..3).map(|i| image(&format!("half-{i}"))).collect();
        writer.import_chunks(&batch, "import:f").unwrap();
        store.db.flush().unwrap();
        assert_eq!(seqs_of(&store), [1, 5, 6, 7, 8, 9]);
    }
    let store = reopen(dir.path());
    assert_eq!(seqs_of(&store), [1]);
    assert_eq!(store.image_count(), 1);
    assert!(
        store
            .read_image(&ImageId::parse("kept").unwrap())
            .unwrap()
            .is_some()
    );
    let bytes: u64 = store
        .audit_from(None)
        .map(|r| r.unwrap().len() as u64)
        .sum();
    assert_eq!(store.audit_size(), (1, bytes));
}

/// A second writer on the store's trees, for driving the writer's steps directly.
fn writer_of(store: &SledStore) -> Writer {
    let meta = store.db.open_tree(META_TREE).unwrap();
    Writer {
        images: store.images.clone(),
        audit: store.audit.clone(),
        by_id: store.by_id.clone(),
        tally: Tally::load(&meta).unwrap(),
        meta,
        gauges: store.gauges.clone(),
        generation: store.generation.clone(),
        retention: store.retention.clone(),
        last_prune: None,
        health: Health::new(),
        pause: Arc::new(Mutex::new(())),
        before_flush: BeforeFlush::default(),
        mark: store.mark.clone(),
        visible: store.visible.clone(),
        flusher: store.flusher.clone(),
    }
}

#[test]
fn a_format_1_store_is_upgraded_in_place() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = SledStore::open(dir.path(), 8).unwrap();
        for id in ["a", "b", "c"] {
            block_on(store.apply(Change::Create(image(id)), "u")).unwrap();
        }
        // What format 1 had: the version and the image count, nothing else.
        let meta = store.db.open_tree(META_TREE).unwrap();
        for key in [
            AUDIT_RECORDS_KEY,
            AUDIT_BYTES_KEY,
            NEXT_SEQ_KEY,
            HAS_MARK_KEY,
        ] {
            meta.remove(key).unwrap();
        }
        store.by_id.clear().unwrap();
        store.set_format_version_for_tests("1").unwrap();
    }
    let store = reopen(dir.path());
    assert_eq!(
        store.db.get(FORMAT_KEY).unwrap().unwrap(),
        FORMAT_VERSION.as_bytes()
    );
    assert_eq!(store.image_count(), 3);
    assert_eq!(store.audit_size().0, 3);
    block_on(store.apply(Change::Create(image("d")), "u")).unwrap();
    let page = store
        .audit_page_now(AuditRange::Before(None), None, 1)
        .unwrap();
    let newest: AuditRecord = serde_json::from_slice(&page.records[0]).unwrap();
    assert_eq!(newest.seq, 4);
    assert_eq!(
        history(&store, "b"),
        [2],
        "and indexed, as format 2 to 3 does"
    );
}

/// The seqs of image `id`'s records, newest first, through the index.
fn history(store: &SledStore, id: &str) -> Vec<u64> {
    let id = ImageId::parse(id).unwrap();
    store
        .audit_of(&id, AuditRange::Before(None))
        .map(|r| {
            serde_json::from_slice::<AuditRecord>(&r.unwrap())
                .unwrap()
                .seq
        })
        .collect()
}

#[test]
fn a_format_2_store_gets_its_audit_index_in_place() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = SledStore::open(dir.path(), 8).unwrap();
        for id in ["a", "ab", "a", "b"] {
            let change = match store.read_image(&ImageId::parse(id).unwrap()).unwrap() {
                None => Change::Create(image(id)),
                Some(_) => Change::Delete {
                    id: ImageId::parse(id).unwrap(),
                    precondition: None,
                },
            };
            block_on(store.apply(change, "u")).unwrap();
        }
        // Format 2 had no index.
        store.by_id.clear().unwrap();
        store.set_format_version_for_tests("2").unwrap();
    }
    let store = reopen(dir.path());
    assert_eq!(
        store.db.get(FORMAT_KEY).unwrap().unwrap(),
        FORMAT_VERSION.as_bytes()
    );
    assert_eq!(history(&store, "a"), [3, 1]);
    assert_eq!(history(&store, "ab"), [2]);
    assert_eq!(history(&store, "nothing"), Vec::<u64>::new());
    drop(store);
    let store = reopen(dir.path());
    store.by_id.remove(by_id_key("a", 3)).unwrap();
    store.shutdown().unwrap();
    drop(store);
    // A clean stop skips the read-through: undo it, as after a crash.
    std::fs::remove_file(dir.path().join(clean::CLEAN_FILE)).ok();
    let err = SledStore::open(dir.path(), 8)
        .err()
        .expect("a short index is damage");
    assert!(
        err.to_string().contains("audit index holds 3 keys for 4"),
        "{err}"
    );
}

/// Opens again (`open` itself waits out sled's threads of the last handle).
fn reopen(dir: &Path) -> SledStore {
    SledStore::open(dir, 8).unwrap()
}

#[test]
fn a_store_without_a_mark_gets_one_at_its_count_of_changes() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = SledStore::open(dir.path(), 8).unwrap();
        for id in ["a", "b", "c"] {
            block_on(store.apply(Change::Create(image(id)), "u")).unwrap();
        }
        block_on(store.apply(
            Change::Delete {
                id: ImageId::parse("a").unwrap(),
                precondition: None,
            },
            "u",
        ))
        .unwrap();
        // As a store written before the mark: format 1, no tally, no mark.
        let meta = store.db.open_tree(META_TREE).unwrap();
        for key in [
            AUDIT_RECORDS_KEY,
            AUDIT_BYTES_KEY,
            NEXT_SEQ_KEY,
            HAS_MARK_KEY,
        ] {
            meta.remove(key).unwrap();
        }
        store.set_format_version_for_tests("1").unwrap();
    }
    std::fs::remove_file(dir.path().join(crate::store::embedded::mark::MARK_FILE)).unwrap();
    let store = reopen(dir.path());
    assert_eq!(
        crate::store::embedded::mark::read(dir.path()).unwrap(),
        Some(4)
    );
    block_on(store.apply(Change::Create(image("d")), "u")).unwrap();
    store.shutdown().unwrap();
    assert_eq!(
        crate::store::embedded::mark::read(dir.path()).unwrap(),
        Some(5)
    );
}

#[test]
fn a_miscounted_store_is_damaged() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = SledStore::open(dir.path(), 8).unwrap();
        block_on(store.apply(Change::Create(image("a")), "u")).unwrap();
        store.images.remove("a").unwrap();
    }
    // As after an unclean stop: no record of a clean one, so the store is read through.
    std::fs::remove_file(dir.path().join(clean::CLEAN_FILE)).unwrap();
    let err = (|| loop {
        match SledStore::open(dir.path(), 8) {
            Err(StoreError::InUse(_)) => std::thread::yield_now(),
            other => return other,
        }
    })()
    .err()
    .expect("refused");
    assert!(matches!(err, StoreError::Damaged { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("0 images and 1 audit records but counted 1 and 1"),
        "{err}"
    );
    assert!(err.needs_operator());
}

#[test]
fn second_open_says_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let _first = SledStore::open(dir.path(), 8).unwrap();
    let err = SledStore::open(dir.path(), 8)
        .err()
        .expect("second open refused");
    assert!(matches!(err, StoreError::InUse(_)), "{err}");
}
