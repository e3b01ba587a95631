//! Password guessing is slowed per (user name, client address), alike for known and
//! unknown names, without locking the user out from elsewhere; failures are logged
//! with the address and the name.
//!
//! The server runs as a child so that its log can be read: each step waits for the
//! log line or the response that shows it, never for time to pass. Clients on
//! 127.0.0.1 and 127.0.0.2 stand for two machines.

use std::net::IpAddr;

use reqwest::{Client, StatusCode};

use crate::helpers::{ADMIN, config_with};
use crate::process::ChildServer;

fn client_at(address: [u8; 4]) -> Client {
    Client::builder()
        .local_address(IpAddr::from(address))
        .build()
        .unwrap()
}

async fn images(server: &ChildServer, client: &Client, user: &str, password: &str) -> StatusCode {
    let (status, _) = server
        .caller()
        .via(client)
        .user(user, password)
        .get("/v3/images")
        .await;
    StatusCode::from_u16(status).unwrap()
}

async fn start(auth: &str) -> (ChildServer, tempfile::TempDir) {
    ChildServer::start_with(&config_with("", &format!("[auth]\n{auth}"))).await
}

#[tokio::test]
async fn guesses_wait_their_turn_per_user_and_address_known_or_not() {
    // One free failure, then an hour between attempts: a waiting attempt is plainly
    // waiting, and the one after it plainly past the cap.
    let (mut server, _dir) =
        start("free_failures = 1\nfirst_delay_ms = 3600000\nmax_delay_ms = 3600000").await;
    let here = client_at([127, 0, 0, 1]);
    let elsewhere = client_at([127, 0, 0, 2]);
    // The log names a known user; an unknown name may be a mistyped password, so it
    // shows only as a fingerprint.
    for (user, shown) in [
        ("admin", "user 'admin'"),
        ("mallory", "unknown user name #"),
    ] {
        assert_eq!(images(&server, &here, user, "guess-1").await, 401);
        let line = server
            .wait_for_log(&format!("failed login for {shown}"))
            .await;
        assert!(line.contains("WARN"), "{line}");
        assert!(line.contains("from 127.0.0.1 (1 in a row)"), "{line}");

        // The next attempt waits for its turn, even with the right password.
        let waiting = tokio::spawn({
            let here = here.clone();
            let url = format!("{}/v3/images", server.address);
            let user = user.to_owned();
            async move { here.get(url).basic_auth(user, Some(ADMIN.1)).send().await }
        });
        let line = server.wait_for_log(&format!("login for {shown}")).await;
        assert!(line.contains("from 127.0.0.1 waits"), "{line}");
        assert!(line.contains("after 1 failures in a row"), "{line}");

        // One more would queue past the cap: refused at once, without verifying.
        let refused = here
            .get(format!("{}/v3/images", server.address))
            .basic_auth(user, Some("guess-2"))
            .send()
            .await
            .unwrap();
        assert_eq!(refused.status(), 429);
        let retry_after: u64 = refused.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(retry_after > 0);
        let body = refused.text().await.unwrap();
        assert!(body.contains("too many failed logins"), "{body}");

        // The same name from another address is not slowed, and the server keeps
        // serving while the attempt above sleeps.
        let expected = if user == "admin" { 200 } else { 401 };
        assert_eq!(images(&server, &elsewhere, user, ADMIN.1).await, expected);
        let health = elsewhere
            .get(format!("{}/healthz", server.address))
            .send()
            .await
            .unwrap();
        assert_eq!(health.status(), 200);
        assert!(!waiting.is_finished(), "the throttled attempt still waits");
        waiting.abort();
    }
}

#[tokio::test]
async fn success_resets_the_count_and_bearer_failures_are_logged() {
    let (mut server, _dir) = start("free_failures = 2").await;
    let here = client_at([127, 0, 0, 1]);
    assert_eq!(images(&server, &here, "admin", "wrong").await, 401);
    let line = server.wait_for_log("failed login for user 'admin'").await;
    assert!(line.contains("(1 in a row)"), "{line}");
    assert_eq!(images(&server, &here, ADMIN.0, ADMIN.1).await, 200);
    assert_eq!(images(&server, &here, "admin", "wrong again").await, 401);
    let line = server.wait_for_log("failed login for user 'admin'").await;
    assert!(
        line.contains("(1 in a row)"),
        "the success reset the count: {line}"
    );

    let response = here
        .get(format!("{}/v3/images", server.address))
        .bearer_auth("not-the-token")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let line = server
        .wait_for_log("failed login for a Bearer token from 127.0.0.1")
        .await;
    assert!(line.contains("(1 in a row)"), "{line}");
}

#[tokio::test]
async fn an_unknown_name_is_logged_as_a_fingerprint_only() {
    let (mut server, _dir) = start("").await;
    let here = client_at([127, 0, 0, 1]);
    let status = images(&server, &here, "evil\n[INFO] forged", "x").await;
    assert_eq!(status, 401);
    let line = server.wait_for_log("failed login for").await;
    assert!(line.contains("unknown user name #"), "{line}");
    assert!(!line.contains("forged"), "{line}");
}
