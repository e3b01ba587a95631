//! HTTPS on `bind` with `[server] tls_cert` and `tls_key`, a certificate swapped by
//! SIGHUP, and a bad pair refused (at start, exit 2; on reload, the old one stays).

use std::path::{Path, PathBuf};

use crate::helpers::{DEFAULT_POLICIES, config_text, default_users, edit};
use crate::process::{ChildServer, serve_refused, write_config};

/// A self-signed certificate for 127.0.0.1 and localhost: (cert PEM, key PEM).
fn certificate() -> (String, String) {
    let made =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
    (made.cert.pem(), made.signing_key.serialize_pem())
}

fn write_pair(dir: &Path, pair: &(String, String)) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join("server.crt"), dir.join("server.key"));
    std::fs::write(&cert, &pair.0).unwrap();
    std::fs::write(&key, &pair.1).unwrap();
    (cert, key)
}

fn tls_config() -> String {
    edit(
        &config_text(DEFAULT_POLICIES, &default_users()),
        "data_dir = \"data\"",
        "data_dir = \"data\"\ntls_cert = \"server.crt\"\ntls_key = \"server.key\"",
    )
}

/// A client that trusts only `cert`, with no connection kept between calls.
async fn health_trusting(address: &str, cert: &str) -> Result<u16, reqwest::Error> {
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(cert.as_bytes()).unwrap())
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let response = client.get(format!("{address}/healthz")).send().await?;
    Ok(response.status().as_u16())
}

#[tokio::test]
async fn https_serves_and_sighup_swaps_the_certificate_or_keeps_it() {
    let dir = tempfile::tempdir().unwrap();
    let first = certificate();
    write_pair(dir.path(), &first);
    let config = write_config(dir.path(), &tls_config());
    let mut server = ChildServer::start(&config).await;
    assert!(server.address.starts_with("https://"), "{}", server.address);
    assert_eq!(
        health_trusting(&server.address, &first.0).await.unwrap(),
        200
    );
    let plain = server.address.replace("https://", "http://");
    assert!(
        reqwest::get(format!("{plain}/healthz")).await.is_err(),
        "no plain HTTP on an HTTPS bind"
    );

    // A new pair: new connections get it.
    let second = certificate();
    write_pair(dir.path(), &second);
    server.signal("HUP");
    server.wait_for_log("TLS certificate reloaded").await;
    assert_eq!(
        health_trusting(&server.address, &second.0).await.unwrap(),
        200
    );
    assert!(health_trusting(&server.address, &first.0).await.is_err());

    // A key that does not belong to the certificate: refused, the pair in use stays.
    let third = certificate();
    std::fs::write(dir.path().join("server.key"), &third.1).unwrap();
    server.signal("HUP");
    let refused = server.wait_for_log("TLS reload refused").await;
    assert!(refused.contains("does not belong"), "{refused}");
    assert_eq!(
        health_trusting(&server.address, &second.0).await.unwrap(),
        200
    );
}

#[test]
fn check_config_loads_the_pair_as_serve_does() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &tls_config());
    let check = || {
        crate::process::binary()
            .arg("--config")
            .arg(&config)
            .arg("check-config")
            .output()
            .unwrap()
    };
    write_pair(dir.path(), &certificate());
    let output = check();
    assert_eq!(output.status.code(), Some(0), "{output:?}");

    let (cert, _) = certificate();
    let (_, other_key) = certificate();
    write_pair(dir.path(), &(cert, other_key));
    let output = check();
    let said = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{said}");
    assert!(
        said.contains("does not belong to the certificate"),
        "{said}"
    );

    std::fs::remove_file(dir.path().join("server.key")).unwrap();
    let output = check();
    let said = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{said}");
    assert!(said.contains("cannot read the TLS key"), "{said}");
}

#[test]
fn a_bad_pair_at_start_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, _) = certificate();
    let (_, other_key) = certificate();
    write_pair(dir.path(), &(cert, other_key));
    let (code, said) = serve_refused(&write_config(dir.path(), &tls_config()));
    assert_eq!(code, 2, "{said}");
    assert!(
        said.contains("does not belong to the certificate"),
        "{said}"
    );

    let only_cert = edit(
        &config_text(DEFAULT_POLICIES, &default_users()),
        "data_dir = \"data\"",
        "data_dir = \"data\"\ntls_cert = \"server.crt\"",
    );
    let (code, said) = serve_refused(&write_config(dir.path(), &only_cert));
    assert_eq!(code, 2, "{said}");
    assert!(said.contains("go together"), "{said}");
}

/// With TLS, HTTP/2 is offered (ALPN), so that several open pages share one
/// connection; HTTP/1.1 clients are served as before.
#[tokio::test]
async fn https_offers_http2_and_still_serves_http1() {
    let dir = tempfile::tempdir().unwrap();
    let pair = certificate();
    write_pair(dir.path(), &pair);
    let config = write_config(dir.path(), &tls_config());
    let server = ChildServer::start(&config).await;
    let trusting = || {
        reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(pair.0.as_bytes()).unwrap())
    };
    let h2 = trusting().build().unwrap();
    let response = h2
        .get(format!("{}/ui/static/style.css", server.address))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    let h1 = trusting().http1_only().build().unwrap();
    let response = h1
        .get(format!("{}/healthz", server.address))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.version(), reqwest::Version::HTTP_11);
}
