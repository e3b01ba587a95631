//! The yardstick for `bench/run.sh`: a bare actix-web server answering fixed bodies,
//! with the same actix build and worker count as image-catalog, so the ratio of the
//! two measures what the service adds (auth, policy, store, logging, metrics).
//!
//! `bare BIND IMAGE_FILE IMAGES_FILE [BY_ID_FILE]` serves `GET /image` with the bytes
//! of IMAGE_FILE and `GET /images` with the bytes of IMAGES_FILE, as application/json.
//! BY_ID_FILE, if given, holds one `ID<TAB>BODY` line per image; `GET /v3/image/{id}`
//! then answers that image's body (404 for an id not in the file), found the way the
//! service finds it: the id cut from the path by hand (no router regex) and looked up
//! in a map, so that random-id reads of the two do comparable work per request.

use std::collections::HashMap;
use std::sync::Arc;

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};

fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let (bind, image, images, by_id) = match args.as_slice() {
        [_, bind, image, images] => (bind, image, images, None),
        [_, bind, image, images, by_id] => (bind, image, images, Some(by_id)),
        _ => {
            eprintln!("usage: bare BIND IMAGE_FILE IMAGES_FILE [BY_ID_FILE]");
            std::process::exit(2);
        }
    };
    let image = web::Bytes::from(std::fs::read(image)?);
    let images = web::Bytes::from(std::fs::read(images)?);
    let mut bodies = HashMap::new();
    if let Some(path) = by_id {
        for line in std::fs::read_to_string(path)?.lines() {
            if let Some((id, body)) = line.split_once('\t') {
                bodies.insert(id.to_owned(), web::Bytes::from(body.to_owned()));
            }
        }
    }
    let bodies = Arc::new(bodies);
    actix_web::rt::System::new().block_on(async move {
        HttpServer::new(move || {
            let image = image.clone();
            let images = images.clone();
            let bodies = bodies.clone();
            App::new()
                .route(
                    "/image",
                    web::get().to(move || {
                        let body = image.clone();
                        async move {
                            HttpResponse::Ok()
                                .content_type("application/json")
                                .body(body)
                        }
                    }),
                )
                .route(
                    "/images",
                    web::get().to(move || {
                        let body = images.clone();
                        async move {
                            HttpResponse::Ok()
                                .content_type("application/json")
                                .body(body)
                        }
                    }),
                )
                .default_service(web::to(move |req: HttpRequest| {
                    let body = req
                        .path()
                        .strip_prefix("/v3/image/")
                        .and_then(|id| bodies.get(id))
                        .cloned();
                    async move {
                        match body {
                            Some(body) => HttpResponse::Ok()
                                .content_type("application/json")
                                .body(body),
                            None => HttpResponse::NotFound().finish(),
                        }
                    }
                }))
        })
        .bind(bind.as_str())?
        .run()
        .await
    })
}
