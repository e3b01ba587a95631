//! Many reads at once. On PostgreSQL, reads that arrive while one is on its way to the
//! database go together in the next statement; these tests hold that each still gets
//! its own answer, and that no read is answered from before a write it came after.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use std::future::Future;
use std::pin::Pin;

use futures_util::future::join_all;
use futures_util::{StreamExt, stream};
use reqwest::Method;
use serde_json::Value;

use crate::helpers::{TestApp, image_path, spawn_app, status_json};

fn provider_of(i: usize) -> &'static str {
    if i.is_multiple_of(3) {
        "openstack"
    } else {
        "ec2"
    }
}

/// Seeds `count` images `r-000`…, returns their ids with providers, sorted.
async fn seed(app: &TestApp, count: usize) -> Vec<(String, &'static str)> {
    let all: Vec<(String, &'static str)> = (0..count)
        .map(|i| (format!("r-{i:03}"), provider_of(i)))
        .collect();
    for chunk in all.chunks(20) {
        join_all(chunk.iter().map(|(id, provider)| app.seed(id, provider))).await;
    }
    all
}

/// A page's ids, and whether it has a `Link` to a next one.
async fn page(app: &TestApp, path: &str) -> (Vec<String>, bool) {
    let response = app
        .reader()
        .request(Method::GET, path)
        .send()
        .await
        .unwrap();
    let more = response.headers().contains_key("link");
    let (status, body) = status_json(response).await;
    assert_eq!(status, 200, "{path}: {body}");
    let ids = body
        .as_array()
        .unwrap_or_else(|| panic!("{path}: not an array: {body}"))
        .iter()
        .map(|image| image["id"].as_str().unwrap().to_owned())
        .collect();
    (ids, more)
}

#[tokio::test]
async fn many_reads_at_once_each_get_their_own_answer() {
    let app = spawn_app().await;
    let all = seed(&app, 60).await;

    // GETs of every image (each twice), of missing ids, and pages of every shape, all
    // at once; each compared with what the seeded catalog says it must be.
    let gets = (0..90).map(|n| {
        let (app, all) = (&app, &all);
        async move {
            let (id, provider) = match n % 30 {
                29 => (format!("r-missing-{n}"), None),
                _ => {
                    let (id, provider) = &all[n % all.len()];
                    (id.clone(), Some(*provider))
                }
            };
            let (status, body) = app.get_image(&id).await;
            match provider {
                Some(provider) => {
                    assert_eq!(status, 200, "{id}: {body}");
                    assert_eq!(body["id"], id.as_str(), "{id} answered with another image");
                    assert_eq!(body["provider"], provider);
                    assert_eq!(body["name"], format!("image {id}"));
                }
                None => assert_eq!(status, 404, "{id}: {body}"),
            }
        }
    });
    let pages = (0..90).map(|n| {
        let (app, all) = (&app, &all);
        async move {
            let limit = 1 + n % 13;
            let marker = format!("r-{:03}", (n * 7) % 64);
            let provider = [None, Some("ec2"), Some("openstack")][n % 3];
            let mut path = format!("/v3/images?limit={limit}&marker={marker}");
            if let Some(provider) = provider {
                path.push_str(&format!("&provider={provider}"));
            }
            let following: Vec<String> = all
                .iter()
                .filter(|(id, p)| *id > marker && provider.is_none_or(|wanted| wanted == *p))
                .map(|(id, _)| id.clone())
                .collect();
            let (ids, more) = page(app, &path).await;
            let expected: Vec<String> = following.iter().take(limit).cloned().collect();
            assert_eq!(ids, expected, "{path}");
            assert_eq!(more, following.len() > limit, "{path}: Link");
        }
    });
    // Mixed, and 48 at a time: the server caps one address at 64 connections.
    let mut reads: Vec<Pin<Box<dyn Future<Output = ()> + '_>>> = Vec::new();
    for (get, page) in gets.zip(pages) {
        reads.push(Box::pin(get));
        reads.push(Box::pin(page));
    }
    let all_reads = stream::iter(reads)
        .buffer_unordered(48)
        .collect::<Vec<()>>();
    tokio::time::timeout(std::time::Duration::from_secs(120), all_reads)
        .await
        .expect("the reads were all answered");
}

#[tokio::test]
async fn a_read_sees_every_write_acknowledged_before_it_came() {
    let app = Arc::new(spawn_app().await);
    seed(&app, 30).await;

    // Readers that keep reads on their way to the store all along, so that the reads
    // below arrive while others are out.
    let stop = Arc::new(AtomicBool::new(false));
    let busy_reads = Arc::new(AtomicUsize::new(0));
    let readers: Vec<_> = (0..12_usize)
        .map(|r| {
            let (app, stop, busy_reads) = (app.clone(), stop.clone(), busy_reads.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let path = if r.is_multiple_of(2) {
                        image_path(&format!("r-{:03}", r))
                    } else {
                        format!("/v3/images?limit=5&marker=r-{:03}", r)
                    };
                    let (status, body) = app.reader().get(&path).await;
                    assert_eq!(status, 200, "{path}: {body}");
                    busy_reads.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();

    for i in 0..60 {
        let id = format!("w-{i:03}");
        app.seed(&id, "ec2").await;
        // Right after the 200: the image, and the page that must hold it.
        let (status, body) = app.get_image(&id).await;
        assert_eq!(status, 200, "{id} acknowledged, then not found: {body}");
        let marker = if i == 0 {
            "r-999".to_owned()
        } else {
            format!("w-{:03}", i - 1)
        };
        let (ids, _) = page(&app, &format!("/v3/images?limit=3&marker={marker}")).await;
        assert_eq!(ids.first(), Some(&id), "the page after {marker} lacks {id}");

        let (status, body): (u16, Value) = app.admin().delete(&image_path(&id)).await;
        assert_eq!(status, 200, "{body}");
        let (status, body) = app.get_image(&id).await;
        assert_eq!(status, 404, "{id} deleted, then still found: {body}");
        app.seed(&id, "ec2").await;
    }
    stop.store(true, Ordering::Relaxed);
    for reader in readers {
        reader.await.expect("a reader failed");
    }
    assert!(
        busy_reads.load(Ordering::Relaxed) > 60,
        "the readers hardly ran: {}",
        busy_reads.load(Ordering::Relaxed)
    );
}
