//! What is about the embedded store itself: a filtered page is a scan of sled's tree
//! (PostgreSQL answers it from an index), and it must not hold the request workers.

use reqwest::Method;

/// A catalog of `count` ec2 images, written straight into a store in `dir`.
fn big_catalog(dir: &std::path::Path, count: usize) {
    use image_catalog::domain::image::Image;
    use image_catalog::store::Store;
    let providers = ["ec2".to_string()];
    let images: Vec<Image> = (0..count)
        .map(|i| {
            let json = format!(
                r#"{{"id":"ami-{i:07}","provider":"ec2","remote_user":"ubuntu","name":"image number {i}"}}"#
            );
            Image::from_json(json.as_bytes(), &providers).unwrap()
        })
        .collect();
    let store = Store::open_embedded(dir, 8).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    runtime
        .block_on(store.import(images, Vec::new(), "test"))
        .unwrap();
    store.shutdown().unwrap();
}

#[tokio::test]
async fn filtered_scans_do_not_stall_other_requests() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("big");
    let built = data.clone();
    tokio::task::spawn_blocking(move || big_catalog(&built, 150_000))
        .await
        .unwrap();
    let config = crate::helpers::config_in(&data);
    let app = crate::helpers::spawn_app_with(&config).await;
    let app = std::sync::Arc::new(app);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let scanned = std::sync::Arc::new(tokio::sync::watch::Sender::new(0usize));
    // Clients whose pages match nothing: each request scans the whole catalog. A
    // new marker each time keeps the page cache out of it.
    let scanners: Vec<_> = (0..4)
        .map(|client| {
            let (app, stop, scanned) = (app.clone(), stop.clone(), scanned.clone());
            tokio::spawn(async move {
                let mut round = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let path =
                        format!("/v3/images?provider=static&limit=5&marker=0-{client}-{round}");
                    let response = app
                        .reader()
                        .request(Method::GET, &path)
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(response.status(), 200);
                    assert_eq!(response.text().await.unwrap(), "[]");
                    if round == 0 {
                        scanned.send_modify(|n| *n += 1);
                    }
                    round += 1;
                }
            })
        })
        .collect();
    // Once every client has had a page, probe: each probe must come back within the
    // generous deadline, which workers held by the scans would blow.
    let mut scanned = scanned.subscribe();
    scanned.wait_for(|n| *n >= 4).await.unwrap();
    for _ in 0..10 {
        let probe = app
            .request(Method::GET, "/healthz")
            .timeout(std::time::Duration::from_secs(2))
            .send()
            .await;
        let status = probe.map(|r| r.status().as_u16());
        assert!(
            matches!(status, Ok(200)),
            "/healthz during filtered scans: {status:?}"
        );
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for scanner in scanners {
        scanner.await.unwrap();
    }
}
