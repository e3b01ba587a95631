//! The store as `check-config` and `serve`'s start see it: which backend, where, and
//! whether the database answers; exit codes a supervisor can act on; and the
//! database's password in no output and no log line.

use std::path::Path;
use std::process::{Output, Stdio};
use std::time::Duration;

use image_catalog::config::DATABASE_URL_VAR;
use image_catalog::store::postgres::{PgOptions, PgStore};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

use crate::helpers::{Caller, DEFAULT_POLICIES, config_text, default_users, edit};
use crate::pg as postgres;
use crate::process::{binary, serve_refused, write_config};

/// The usual config with the store on PostgreSQL at `url`, or, without one, at the
/// URL the variable gives.
fn pg_config(url: Option<&str>) -> String {
    let text = edit(
        &config_text(DEFAULT_POLICIES, &default_users()),
        "data_dir = \"data\"\n",
        "",
    );
    let mut store = "[store]\nbackend = \"postgres\"\nconnect_timeout_ms = 2000\n".to_string();
    if let Some(url) = url {
        store.push_str(&format!("url = \"{url}\"\n"));
    }
    edit(&text, "[store]\ncache_mb = 8\n", &store)
}

/// A loopback port nothing listens on.
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `check-config` on `config`, with the variable set to `env_url` or unset.
fn check_config(config: &Path, env_url: Option<&str>) -> Output {
    let mut command = binary();
    command
        .arg("--config")
        .arg(config)
        .arg("check-config")
        .env_remove(DATABASE_URL_VAR)
        .stdin(Stdio::null());
    if let Some(url) = env_url {
        command.env(DATABASE_URL_VAR, url);
    }
    command.output().unwrap()
}

/// Everything a child wrote, stdout then stderr.
fn all_of(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Neither the password nor its percent-encoded form is in `text`.
fn assert_hidden(text: &str, password: &str) {
    let encoded =
        percent_encoding::utf8_percent_encode(password, percent_encoding::NON_ALPHANUMERIC)
            .to_string();
    assert!(
        !text.contains(password) && !text.contains(&encoded),
        "the password {password:?} shows in:\n{text}"
    );
}

/// The line of `text` that starts with `start`.
fn line<'a>(text: &'a str, start: &str) -> &'a str {
    text.lines()
        .find(|l| l.starts_with(start))
        .unwrap_or_else(|| panic!("no line starting {start:?} in:\n{text}"))
}

/// `url` (a test database's) with the password replaced by `masked`.
fn with_password(url: &str, password: &str, masked: &str) -> String {
    assert!(url.contains(password), "{url}");
    url.replace(&format!(":{password}@"), &format!(":{masked}@"))
}

#[test]
fn check_config_names_the_sled_store_and_its_folder() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), &config_text(DEFAULT_POLICIES, &default_users()));
    let output = check_config(&path, None);
    assert_eq!(output.status.code(), Some(0), "{}", all_of(&output));
    let said = String::from_utf8(output.stdout).unwrap();
    assert_eq!(
        line(&said, "store: "),
        format!("store: sled in {}", dir.path().join("data").display())
    );
}

#[test]
fn check_config_warns_of_an_unreachable_database_and_passes() {
    let password = "closed-port-secret-4711";
    let port = closed_port();
    let url = format!("postgres://cat:{password}@127.0.0.1:{port}/catalog");
    let masked = format!("postgres://cat:***@127.0.0.1:{port}/catalog");
    let dir = tempfile::tempdir().unwrap();
    // The password in the file, and the same URL from the variable.
    for (text, env_url) in [
        (pg_config(Some(&url)), None),
        (pg_config(None), Some(url.as_str())),
    ] {
        let path = write_config(dir.path(), &text);
        let output = check_config(&path, env_url);
        let all = all_of(&output);
        assert_eq!(
            output.status.code(),
            Some(0),
            "a warning, not a refusal: {all}"
        );
        assert_hidden(&all, password);
        let said = String::from_utf8(output.stdout).unwrap();
        assert_eq!(
            line(&said, "store: "),
            format!("store: postgres at {masked}: unreachable")
        );
        let warning = line(
            &said,
            &format!("warning: store: postgres at {masked}: unreachable: "),
        );
        assert!(warning.contains("refused"), "says why: {warning}");
        let about_password = said
            .lines()
            .any(|l| l.starts_with("warning: [store] url holds a password"));
        assert_eq!(about_password, env_url.is_none(), "{said}");
    }
}

#[tokio::test]
async fn check_config_says_whether_postgres_answers_and_which_schema_it_holds() {
    let Some(db) = postgres::database() else {
        return;
    };
    let masked = with_password(&db.url, &db.password, "***");
    let dir = tempfile::tempdir().unwrap();
    let in_file = write_config(dir.path(), &pg_config(Some(&db.url)));
    let check = |env_url: Option<&str>| {
        let output = check_config(&in_file, env_url);
        assert_hidden(&all_of(&output), &db.password);
        output
    };

    let output = check(None);
    assert_eq!(output.status.code(), Some(0), "{}", all_of(&output));
    let said = String::from_utf8(output.stdout).unwrap();
    assert_eq!(
        line(&said, "store: "),
        format!(
            "store: postgres at {masked}: reachable, no schema yet (the first start creates it)"
        )
    );
    assert!(
        line(&said, "warning: [store] url holds a password").contains(DATABASE_URL_VAR),
        "{said}"
    );

    let store = PgStore::connect(&db.url, PgOptions::default())
        .await
        .unwrap();
    let dir_env = tempfile::tempdir().unwrap();
    let from_env = write_config(dir_env.path(), &pg_config(None));
    for output in [check(None), check_config(&from_env, Some(&db.url))] {
        let all = all_of(&output);
        assert_hidden(&all, &db.password);
        assert_eq!(output.status.code(), Some(0), "{all}");
        let said = String::from_utf8(output.stdout).unwrap();
        assert_eq!(
            line(&said, "store: "),
            format!("store: postgres at {masked}: reachable, schema 1.1")
        );
    }

    // A schema of another major needs an operator: refused, exit 3.
    store.set_schema_version_for_tests(2, 0).await.unwrap();
    let output = check(None);
    let all = all_of(&output);
    assert_eq!(output.status.code(), Some(3), "{all}");
    assert!(
        all.contains(&masked) && all.contains("schema 2.0"),
        "names the database and what it holds: {all}"
    );
    store.shutdown().unwrap();
}

#[test]
fn serve_exits_1_naming_the_masked_url_when_the_database_is_unreachable() {
    let password = "closed-port-secret-0815";
    let port = closed_port();
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(
        dir.path(),
        &pg_config(Some(&format!(
            "postgres://cat:{password}@127.0.0.1:{port}/catalog"
        ))),
    );
    let (code, said) = serve_refused(&path);
    assert_eq!(code, 1, "a restart may help: {said}");
    assert_hidden(&said, password);
    let message = line(&said, "image-catalog: ");
    assert!(
        message.contains(&format!(
            "cannot start on the database at postgres://cat:***@127.0.0.1:{port}/catalog: "
        )) && message.contains("refused"),
        "{message}"
    );
}

#[test]
fn serve_with_a_wrong_password_exits_1_without_showing_either_password() {
    let Some(db) = postgres::database() else {
        return;
    };
    let wrong = "wrong-password-8150";
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(
        dir.path(),
        &pg_config(Some(&with_password(&db.url, &db.password, wrong))),
    );
    let (code, said) = serve_refused(&path);
    assert_eq!(code, 1, "{said}");
    assert_hidden(&said, wrong);
    assert_hidden(&said, &db.password);
    let message = line(&said, "image-catalog: ");
    assert!(
        message.contains(&with_password(&db.url, &db.password, "***"))
            && message.contains("password authentication failed"),
        "{message}"
    );
}

#[tokio::test]
async fn serve_refuses_a_schema_of_another_major_with_exit_3() {
    let Some(db) = postgres::database() else {
        return;
    };
    let store = PgStore::connect(&db.url, PgOptions::default())
        .await
        .unwrap();
    store.set_schema_version_for_tests(2, 0).await.unwrap();
    store.shutdown().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), &pg_config(Some(&db.url)));
    let (code, said) = serve_refused(&path);
    assert_eq!(code, 3, "needs an operator, not a restart: {said}");
    assert_hidden(&said, &db.password);
    let message = line(&said, "image-catalog: ");
    assert!(
        message.contains(&with_password(&db.url, &db.password, "***"))
            && message.contains("schema 2.0"),
        "{message}"
    );
}

/// Reads `lines` until one contains `words`; `None` if they end first.
async fn read_until(
    lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStderr>>,
    seen: &mut Vec<String>,
    words: &str,
) -> Option<String> {
    while let Some(line) = lines.next_line().await.unwrap() {
        seen.push(line.clone());
        if line.contains(words) {
            return Some(line);
        }
    }
    None
}

#[tokio::test]
async fn serve_on_postgres_shows_the_masked_url_and_never_logs_the_password() {
    let Some(db) = postgres::database() else {
        return;
    };
    let masked = with_password(&db.url, &db.password, "***");
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), &pg_config(Some(&db.url)));
    let mut child = tokio::process::Command::from(binary())
        .arg("--config")
        .arg(&path)
        .arg("serve")
        // The systemd unit's default; a postgres node ignores it, and says so.
        .arg("--data-dir")
        .arg(dir.path().join("unused"))
        .env_remove(DATABASE_URL_VAR)
        .env("RUST_LOG", "debug")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = Vec::new();
    let deadline = Duration::from_secs(60);
    let listening =
        tokio::time::timeout(deadline, read_until(&mut lines, &mut seen, "listening on"))
            .await
            .expect("the server starts")
            .unwrap_or_else(|| panic!("the server stopped before listening: {seen:#?}"));
    assert!(
        listening.contains(&format!("; PostgreSQL at {masked})")),
        "{listening}"
    );
    assert!(
        seen.iter()
            .any(|l| l.contains("[store] url holds a password") && l.contains(DATABASE_URL_VAR)),
        "the password in config.toml is warned of: {seen:#?}"
    );
    assert!(
        seen.iter()
            .any(|l| l.contains("--data-dir") && l.contains("is ignored")),
        "{seen:#?}"
    );
    assert!(!dir.path().join("unused").exists(), "no data dir is made");

    // Some work, with its log lines.
    let address = listening
        .split("listening on ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap()
        .to_owned();
    let body = json!({"id": "img-1", "provider": "ec2", "remote_user": "u"});
    let (status, _) = Caller::at(&address).admin().post("/v3/image", &body).await;
    assert_eq!(status, 200);
    let (status, _) = Caller::at(&address).admin().get("/v3/image/img-1").await;
    assert_eq!(status, 200);

    let status = std::process::Command::new("kill")
        .args(["-TERM", &child.id().unwrap().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    tokio::time::timeout(deadline, read_until(&mut lines, &mut seen, "\u{0}"))
        .await
        .expect("the server stops");
    let mut out = String::new();
    stdout.read_to_string(&mut out).await.unwrap();
    let exit = child.wait().await.unwrap();
    assert_eq!(exit.code(), Some(0), "{seen:#?}");
    let all = format!("{}\n{out}", seen.join("\n"));
    assert!(
        all.contains("stopped cleanly"),
        "the whole log was read: {all}"
    );
    assert_hidden(&all, &db.password);
}

#[test]
fn check_config_reaches_postgres_over_verified_tls_and_warns_of_a_bad_certificate() {
    let Some(cluster) = postgres::shared() else {
        return;
    };
    let db = cluster.database();
    // The test server's certificate names localhost.
    let url = |ca: &Path| {
        cluster
            .url_with(
                &db.name,
                &format!("sslmode=verify-full&sslrootcert={}", ca.display()),
            )
            .replace("@127.0.0.1:", "@localhost:")
    };
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), &pg_config(None));

    let good = url(&cluster.ca_file);
    let output = check_config(&path, Some(&good));
    let all = all_of(&output);
    assert_eq!(output.status.code(), Some(0), "{all}");
    assert_hidden(&all, &db.password);
    assert!(
        all.contains(&format!(
            "store: postgres at {}: reachable, no schema yet",
            with_password(&good, &db.password, "***")
        )),
        "{all}"
    );

    let output = check_config(&path, Some(&url(&cluster.other_ca_file)));
    let all = all_of(&output);
    assert_eq!(output.status.code(), Some(0), "{all}");
    assert_hidden(&all, &db.password);
    let said = String::from_utf8(output.stdout).unwrap();
    let warning = line(&said, "warning: store: postgres at ");
    assert!(
        warning.contains(": unreachable: ") && warning.to_lowercase().contains("certificate"),
        "says why: {warning}"
    );
}
