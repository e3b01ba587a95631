//! SIGHUP re-reads config.toml: a valid one switches users, roles and policies at
//! once; an invalid one is logged and the old one stays.

use reqwest::StatusCode;

use crate::helpers::{DEFAULT_POLICIES, cheap_hash, config_text};
use crate::process::{ChildServer, write_config};

fn users(admin_password: &str, extra: &str) -> String {
    format!(
        "[[users]]\nname = \"admin\"\npassword_hash = \"{}\"\nroles = [\"admin\"]\n{extra}",
        cheap_hash(admin_password)
    )
}

/// A generous deadline: a reload that never logs fails the test instead of hanging it.
async fn within_a_minute<T>(future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(std::time::Duration::from_secs(60), future)
        .await
        .expect("no answer within a minute")
}

async fn status(server: &ChildServer, user: &str, password: &str) -> StatusCode {
    reqwest::Client::new()
        .get(format!("{}/v3/images", server.address))
        .basic_auth(user, Some(password))
        .send()
        .await
        .unwrap()
        .status()
}

#[tokio::test]
async fn sighup_swaps_users_and_keeps_the_old_config_when_the_new_is_bad() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(
        dir.path(),
        &config_text(DEFAULT_POLICIES, &users("old-pw", "")),
    );
    let mut server = ChildServer::start(&path).await;
    assert_eq!(status(&server, "admin", "old-pw").await, 200);
    assert_eq!(status(&server, "newbie", "nb-pw").await, 401);

    let newbie = format!(
        "[[users]]\nname = \"newbie\"\npassword_hash = \"{}\"\nroles = [\"reader\"]\n",
        cheap_hash("nb-pw")
    );
    write_config(
        dir.path(),
        &config_text(DEFAULT_POLICIES, &users("new-pw", &newbie)),
    );
    server.signal("HUP");
    server.wait_for_log("config reloaded").await;
    assert_eq!(
        status(&server, "admin", "old-pw").await,
        401,
        "the old password is gone"
    );
    assert_eq!(status(&server, "admin", "new-pw").await, 200);
    assert_eq!(status(&server, "newbie", "nb-pw").await, 200);

    write_config(dir.path(), "[[users]]\nname = \"broken\"\n");
    server.signal("HUP");
    let line = server.wait_for_log("config reload refused").await;
    assert!(line.contains("no credentials"), "{line}");
    assert_eq!(
        status(&server, "admin", "new-pw").await,
        200,
        "old config stays"
    );
    assert_eq!(status(&server, "newbie", "nb-pw").await, 200);

    // Revoking a role takes effect at once, cached verification or not.
    let newbie_without_roles = format!(
        "[[users]]\nname = \"newbie\"\npassword_hash = \"{}\"\nroles = []\n",
        cheap_hash("nb-pw")
    );
    let text = config_text(DEFAULT_POLICIES, &users("new-pw", &newbie_without_roles))
        .replace("127.0.0.1:0", "127.0.0.1:1");
    write_config(dir.path(), &text);
    server.signal("HUP");
    server.wait_for_log("only after a restart").await;
    server.wait_for_log("config reloaded").await;
    assert_eq!(status(&server, "newbie", "nb-pw").await, 403);
}

#[tokio::test]
async fn a_reload_to_a_config_without_users_is_refused_and_the_old_users_stay() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), &config_text(DEFAULT_POLICIES, &users("pw", "")));
    let mut server = ChildServer::start(&path).await;
    assert_eq!(status(&server, "admin", "pw").await, 200);

    for empty in ["", &config_text(DEFAULT_POLICIES, "")] {
        write_config(dir.path(), empty);
        server.signal("HUP");
        let line = within_a_minute(server.wait_for_log("config reload")).await;
        assert!(
            line.contains("refused") && line.contains("no users"),
            "{line}"
        );
        assert_eq!(status(&server, "admin", "pw").await, 200, "old users stay");
    }
}
