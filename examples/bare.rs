//! The yardstick for `bench/run.sh`: a bare actix-web server answering fixed bodies,
//! with the same actix build and worker count as image-catalog, so the ratio of the
//! two measures what the service adds (auth, policy, store, logging, metrics).
//!
//! `bare BIND IMAGE_FILE IMAGES_FILE` serves `GET /image` with the bytes of
//! IMAGE_FILE and `GET /images` with the bytes of IMAGES_FILE, as application/json.

use actix_web::{App, HttpResponse, HttpServer, web};

fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, bind, image, images] = args.as_slice() else {
        eprintln!("usage: bare BIND IMAGE_FILE IMAGES_FILE");
        std::process::exit(2);
    };
    let image = web::Bytes::from(std::fs::read(image)?);
    let images = web::Bytes::from(std::fs::read(images)?);
    actix_web::rt::System::new().block_on(async move {
        HttpServer::new(move || {
            let image = image.clone();
            let images = images.clone();
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
        })
        .bind(bind.as_str())?
        .run()
        .await
    })
}
