//! Secrets stay secret: passwords and tokens, right or wrong, never reach the log (at
//! debug level) or a response; config.toml readable or writable by others is warned
//! about at start and on reload.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use base64::Engine;

use crate::helpers::{DEFAULT_POLICIES, cheap_hash, config_text, default_users, sha256_hex};
use crate::process::{ChildServer, write_config};

const PASSWORD: &str = "pw-Zq8vRight-horse";
const WRONG_PASSWORD: &str = "pw-Xk2mWrong-battery";
const TOKEN: &str = "tok-Hy7uRight-staple";
const WRONG_TOKEN: &str = "tok-Pp3cWrong-staple";

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[tokio::test]
async fn passwords_and_tokens_never_reach_the_log_or_a_response() {
    let dir = tempfile::tempdir().unwrap();
    let users = format!(
        "[[users]]\nname = \"admin\"\npassword_hash = \"{}\"\nroles = [\"admin\"]\n\
         [[users]]\nname = \"bot\"\ntoken_sha256 = \"{}\"\nroles = [\"reader\"]\n",
        cheap_hash(PASSWORD),
        sha256_hex(TOKEN)
    );
    let path = write_config(dir.path(), &config_text(DEFAULT_POLICIES, &users));
    chmod(&path, 0o600);
    let mut server = ChildServer::start_logging(&path, "debug").await;
    let client = reqwest::Client::new();
    let url = |path: &str| format!("{}{path}", server.address);

    let mut responses = Vec::new();
    let basic = [
        ("admin", PASSWORD, 200),
        ("admin", WRONG_PASSWORD, 401),
        ("nobody", PASSWORD, 401),
        ("nobody", WRONG_PASSWORD, 401),
        // A user who typed the password into the user name field is not helped.
        (PASSWORD, WRONG_PASSWORD, 401),
    ];
    for (user, password, status) in basic {
        let response = client
            .get(url("/v3/images"))
            .basic_auth(user, Some(password))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), status, "{user}");
        responses.push(response.text().await.unwrap());
    }
    let create = client
        .post(url("/v3/image"))
        .basic_auth("admin", Some(PASSWORD))
        .json(&serde_json::json!({"id": "a", "provider": "ec2", "remote_user": "u"}))
        .send()
        .await
        .unwrap();
    assert_eq!(create.status(), 200);
    for (token, status) in [(TOKEN, 200), (WRONG_TOKEN, 401)] {
        let response = client
            .get(url("/v3/image/a"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), status);
        responses.push(response.text().await.unwrap());
    }
    // Malformed headers carrying a secret: Basic without a colon, an unknown scheme.
    let no_colon = base64::engine::general_purpose::STANDARD.encode(PASSWORD);
    for value in [format!("Basic {no_colon}"), format!("Token {TOKEN}")] {
        let response = client
            .get(url("/v3/images"))
            .header("authorization", value)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 401);
        responses.push(response.text().await.unwrap());
    }

    server.signal("TERM");
    let mut log = server.startup_log.clone();
    log.extend(server.rest_of_log().await);
    assert!(server.wait().success());
    assert!(
        log.iter().any(|line| line.contains("DEBUG")),
        "the run logged at debug level: {log:#?}"
    );
    assert!(log.iter().any(|line| line.contains("failed login")));

    let encoded = |pair: &str| base64::engine::general_purpose::STANDARD.encode(pair);
    let secrets = [
        PASSWORD.to_owned(),
        WRONG_PASSWORD.to_owned(),
        TOKEN.to_owned(),
        WRONG_TOKEN.to_owned(),
        encoded(&format!("admin:{PASSWORD}")),
        encoded(&format!("admin:{WRONG_PASSWORD}")),
        no_colon,
    ];
    for secret in &secrets {
        for line in &log {
            assert!(!line.contains(secret.as_str()), "{secret} logged: {line}");
        }
        for body in &responses {
            assert!(!body.contains(secret.as_str()), "{secret} answered: {body}");
        }
    }
}

#[tokio::test]
async fn a_config_others_can_read_or_write_is_warned_about_at_start_and_on_reload() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), &config_text(DEFAULT_POLICIES, &default_users()));
    chmod(&path, 0o644);
    let mut server = ChildServer::start(&path).await;
    let warning = server
        .startup_log
        .iter()
        .find(|line| line.contains("readable by other users"))
        .unwrap_or_else(|| panic!("no warning in {:#?}", server.startup_log));
    assert!(
        warning.contains("WARN") && warning.contains("chmod 600"),
        "{warning}"
    );

    chmod(&path, 0o620);
    server.signal("HUP");
    let warning = server
        .wait_for_log("writable by group or other users")
        .await;
    assert!(warning.contains("mode 620"), "{warning}");
    server.wait_for_log("config reloaded").await;
}

#[tokio::test]
async fn a_private_config_is_not_warned_about() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), &config_text(DEFAULT_POLICIES, &default_users()));
    chmod(&path, 0o600);
    let server = ChildServer::start(&path).await;
    assert!(
        !server
            .startup_log
            .iter()
            .any(|line| line.contains("readable by") || line.contains("writable by")),
        "{:#?}",
        server.startup_log
    );
}
