//! Behind a reverse proxy: for requests from `[server] trusted_proxies`, the client is
//! the rightmost untrusted `X-Forwarded-For` hop, for the access log and the
//! brute-force throttle alike; from anyone else the header is ignored.

use reqwest::{Client, StatusCode};

use crate::helpers::{ADMIN, READER, config_with};
use crate::process::ChildServer;

async fn start(server: &str) -> (ChildServer, tempfile::TempDir) {
    let auth = "[auth]\nfree_failures = 1\nfirst_delay_ms = 3600000\nmax_delay_ms = 3600000";
    ChildServer::start_with(&config_with(server, auth)).await
}

async fn get(server: &ChildServer, path: &str, forwarded: &str, password: &str) -> StatusCode {
    as_user(server, path, forwarded, (ADMIN.0, password)).await
}

async fn as_user(
    server: &ChildServer,
    path: &str,
    forwarded: &str,
    (user, password): (&str, &str),
) -> StatusCode {
    Client::new()
        .get(format!("{}{path}", server.address))
        .header("x-forwarded-for", forwarded)
        .header("x-request-id", "proxy-test")
        .basic_auth(user, Some(password))
        .send()
        .await
        .unwrap()
        .status()
}

#[tokio::test]
async fn a_trusted_proxy_names_the_client_for_the_log_and_the_throttle() {
    let (mut server, _dir) = start("trusted_proxies = [\"127.0.0.1\", \"10.0.0.0/8\"]").await;
    // The client claims 6.6.6.6; the proxy appended what it saw.
    // (As the reader: admin's password must not be proven yet, see below.)
    let status = as_user(
        &server,
        "/v3/image/ami-0042",
        "6.6.6.6, 203.0.113.7",
        READER,
    )
    .await;
    assert_eq!(status, 404);
    let line = server.wait_for_log("request_id=proxy-test").await;
    for part in [
        "GET /v3/image/ami-0042 404 ",
        "client=203.0.113.7",
        "user=reader",
    ] {
        assert!(line.contains(part), "{part:?} missing in {line}");
    }

    // A wrong password from 203.0.113.7 makes that client's next attempt wait (an
    // hour; a password proven before would skip the wait), and the one after it is
    // refused; another client behind the same proxy
    // is not held back by it.
    assert_eq!(
        get(&server, "/v3/images", "203.0.113.7", "wrong").await,
        401
    );
    server
        .wait_for_log("failed login for user 'admin' from 203.0.113.7")
        .await;
    let address = server.address.clone();
    let waiting = tokio::spawn(async move {
        Client::new()
            .get(format!("{address}/v3/images"))
            .header("x-forwarded-for", "203.0.113.7")
            .basic_auth(ADMIN.0, Some(ADMIN.1))
            .send()
            .await
    });
    let line = server.wait_for_log("login for user 'admin' from").await;
    assert!(line.contains("from 203.0.113.7 waits"), "{line}");
    assert_eq!(
        get(&server, "/v3/images", "203.0.113.7", "wrong").await,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(
        get(&server, "/v3/images", "203.0.113.8", ADMIN.1).await,
        200
    );
    assert!(!waiting.is_finished(), "the throttled attempt still waits");
    waiting.abort();
}

#[tokio::test]
async fn without_trusted_proxies_the_header_is_ignored() {
    let (mut server, _dir) = start("").await;
    assert_eq!(get(&server, "/healthz", "203.0.113.7", ADMIN.1).await, 200);
    let line = server.wait_for_log("request_id=proxy-test").await;
    assert!(line.contains("client=127.0.0.1"), "{line}");
}
