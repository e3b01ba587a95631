//! SIGHUP re-reads config.toml: a valid one switches users, roles and policies at
//! once; an invalid one is logged and the old one stays.

use reqwest::StatusCode;

use crate::helpers::{DEFAULT_POLICIES, cheap_hash, config_text, edit, within_a_minute};
use crate::process::{ChildServer, write_config};

fn users(admin_password: &str, extra: &str) -> String {
    format!(
        "[[users]]\nname = \"admin\"\npassword_hash = \"{}\"\nroles = [\"admin\"]\n{extra}",
        cheap_hash(admin_password)
    )
}

async fn status(server: &ChildServer, user: &str, password: &str) -> StatusCode {
    let (status, _) = server.caller().user(user, password).get("/v3/images").await;
    StatusCode::from_u16(status).unwrap()
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
    let text = edit(
        &config_text(DEFAULT_POLICIES, &users("new-pw", &newbie_without_roles)),
        "127.0.0.1:0",
        "127.0.0.1:1",
    );
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
        let line = within_a_minute("a reload", server.wait_for_log("config reload")).await;
        assert!(
            line.contains("refused") && line.contains("no users"),
            "{line}"
        );
        assert_eq!(status(&server, "admin", "pw").await, 200, "old users stay");
    }
}

/// A password hash whose check takes long enough (about a second) for a reload to land
/// while it runs.
fn slow_hash(password: &str) -> String {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let params = argon2::Params::new(19_456, 64, 1, None).unwrap();
    let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let salt = SaltString::encode_b64(b"slow-salt-16byte").unwrap();
    argon
        .hash_password(password.as_bytes(), &salt)
        .unwrap()
        .to_string()
}

async fn create_as(server: &ChildServer, user: &str, password: &str, id: &str) -> StatusCode {
    create(
        server.address.clone(),
        user.to_owned(),
        password.to_owned(),
        id.to_owned(),
    )
    .await
}

async fn create(address: String, user: String, password: String, id: String) -> StatusCode {
    reqwest::Client::new()
        .post(format!("{address}/v3/image"))
        .basic_auth(user, Some(password))
        .json(&serde_json::json!({
            "id": id, "provider": "ec2", "remote_user": "ubuntu", "name": id
        }))
        .send()
        .await
        .unwrap()
        .status()
}

/// Sends a create as `user` and returns once the server is checking its password; the
/// create's status is the task's outcome.
async fn login_in_progress(
    server: &mut ChildServer,
    user: &str,
    password: &str,
    id: &str,
) -> tokio::task::JoinHandle<StatusCode> {
    let login = tokio::spawn(create(
        server.address.clone(),
        user.to_owned(),
        password.to_owned(),
        id.to_owned(),
    ));
    let line = format!("verifying the credentials of user '{user}'");
    within_a_minute(&line, server.wait_for_log(&line)).await;
    login
}

#[tokio::test]
async fn a_reload_during_a_login_refuses_the_old_credentials_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let victim = format!(
        "[[users]]\nname = \"victim\"\npassword_hash = \"{}\"\nroles = [\"admin\"]\n",
        slow_hash("old-pw")
    );
    let path = write_config(
        dir.path(),
        &config_text(DEFAULT_POLICIES, &users("pw", &victim)),
    );
    let mut server = ChildServer::start_logging(&path, "info,image_catalog::auth=debug").await;

    // The user is removed while its password is checked.
    let login = login_in_progress(&mut server, "victim", "old-pw", "ami-1").await;
    write_config(dir.path(), &config_text(DEFAULT_POLICIES, &users("pw", "")));
    server.signal("HUP");
    within_a_minute("the reload", server.wait_for_log("config reloaded")).await;
    assert_eq!(login.await.unwrap(), 401, "the login the reload overtook");
    assert_eq!(create_as(&server, "victim", "old-pw", "ami-2").await, 401);
    assert_eq!(status(&server, "admin", "pw").await, 200);

    // Its password is rotated and its role cut to reading while the old one is checked.
    write_config(
        dir.path(),
        &config_text(DEFAULT_POLICIES, &users("pw", &victim)),
    );
    server.signal("HUP");
    within_a_minute("the reload", server.wait_for_log("config reloaded")).await;
    let login = login_in_progress(&mut server, "victim", "old-pw", "ami-3").await;
    let rotated = format!(
        "[[users]]\nname = \"victim\"\npassword_hash = \"{}\"\nroles = [\"reader\"]\n",
        cheap_hash("new-pw")
    );
    write_config(
        dir.path(),
        &config_text(DEFAULT_POLICIES, &users("pw", &rotated)),
    );
    server.signal("HUP");
    within_a_minute("the reload", server.wait_for_log("config reloaded")).await;
    assert_eq!(login.await.unwrap(), 401, "the login the reload overtook");
    assert_eq!(create_as(&server, "victim", "old-pw", "ami-4").await, 401);
    assert_eq!(status(&server, "victim", "new-pw").await, 200);
    assert_eq!(create_as(&server, "victim", "new-pw", "ami-5").await, 403);

    // Nothing the old credentials sent was written.
    let listed: Vec<serde_json::Value> = reqwest::Client::new()
        .get(format!("{}/v3/images", server.address))
        .basic_auth("admin", Some("pw"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(listed.is_empty(), "{listed:?}");
}

/// A config path that is a FIFO or a link to `/dev/zero` would block a read or fill the
/// memory: the reload is refused with the reason, and the signal loop stays free, so
/// SIGHUP and SIGTERM are still handled.
#[tokio::test]
async fn a_config_that_is_no_regular_file_is_refused_and_the_server_still_stops() {
    let dir = tempfile::tempdir().unwrap();
    let text = config_text(DEFAULT_POLICIES, &users("pw", ""));
    let path = write_config(dir.path(), &text);
    let mut server = ChildServer::start(&path).await;
    let saved = dir.path().join("saved.toml");
    std::fs::rename(&path, &saved).unwrap();

    let fifo = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    server.signal("HUP");
    let line = within_a_minute("the FIFO's refusal", server.wait_for_log("reload refused")).await;
    assert!(line.contains("not a regular file"), "{line}");

    std::fs::remove_file(&path).unwrap();
    std::os::unix::fs::symlink("/dev/zero", &path).unwrap();
    server.signal("HUP");
    let line = within_a_minute("/dev/zero's refusal", server.wait_for_log("reload refused")).await;
    assert!(line.contains("not a regular file"), "{line}");

    // Still served, still reloadable, still stoppable.
    std::fs::remove_file(&path).unwrap();
    std::fs::rename(&saved, &path).unwrap();
    server.signal("HUP");
    within_a_minute("a good reload", server.wait_for_log("config reloaded")).await;
    assert_eq!(status(&server, "admin", "pw").await, 200);
    server.signal("TERM");
    let exited = tokio::task::spawn_blocking(move || server.wait());
    let status = within_a_minute("the stop", exited).await.unwrap();
    assert!(status.success(), "{status:?}");
}
