//! Bad configs stop the real binary at start with exit code 2 and a message naming the
//! problem; `check-config` shows who may do what.

use crate::helpers::{DEFAULT_POLICIES, cheap_hash, config_text, default_users, edit, on_postgres};
use crate::process::{binary, serve_refused_text, write_config};

#[test]
fn each_bad_config_is_refused_at_start_with_exit_code_2() {
    let hash = cheap_hash("pw");
    let user = |body: &str| format!("{DEFAULT_POLICIES}\n[[users]]\nname = \"u\"\n{body}\n");
    let cases = [
        (
            format!("{DEFAULT_POLICIES}\nfly_planes = [\"admin\"]"),
            "unknown policy 'fly_planes'",
        ),
        (
            user(&format!("password_hash = \"{hash}\"\nroles = [\"pilot\"]")),
            "unknown role 'pilot'",
        ),
        (
            format!(
                "{}\n[[users]]\nname = \"u\"\npassword_hash = \"{hash}\"\nroles = []",
                user(&format!("password_hash = \"{hash}\"\nroles = []"))
            ),
            "duplicated user",
        ),
        (user("roles = [\"admin\"]"), "no credentials"),
        (
            user("password_hash = \"plain-text-secret\"\nroles = [\"admin\"]"),
            "password_hash is not a valid PHC string",
        ),
        (
            user("password_hash = \"$argon2id$garbage\"\nroles = [\"admin\"]"),
            "user 'u': password_hash",
        ),
        (
            user("token_sha256 = \"xyz\"\nroles = [\"admin\"]"),
            "token_sha256 must be 64 hexadecimal digits",
        ),
        ("this is = not toml [".to_string(), "TOML"),
        (DEFAULT_POLICIES.to_string(), "no users"),
    ];
    for (config, words) in cases {
        let (code, stderr) = serve_refused_text(&config_text("", &config));
        assert_eq!(code, 2, "{words}: {stderr}");
        assert!(
            stderr.contains(words),
            "{stderr:?} should contain {words:?}"
        );
    }
}

#[test]
fn a_missing_config_file_is_exit_code_2() {
    let output = binary()
        .args(["--config", "/nonexistent/config.toml", "serve"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(said.contains("/nonexistent/config.toml"), "{said}");
    assert!(
        said.contains("--config") && said.contains("IMAGE_CATALOG_CONFIG"),
        "says how to name another file: {said}"
    );
}

#[test]
fn bad_usage_is_exit_code_2() {
    let output = binary().arg("no-such-command").output().unwrap();
    assert_eq!(output.status.code(), Some(2));
}

/// `check-config` on the config at `path`.
fn check_config(path: &std::path::Path) -> std::process::Output {
    binary()
        .arg("--config")
        .arg(path)
        .arg("check-config")
        .output()
        .unwrap()
}

#[test]
fn check_config_tables_policies_and_routes_per_user() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(&path, config_text(DEFAULT_POLICIES, &default_users())).unwrap();
    let output = check_config(&path);
    assert_eq!(output.status.code(), Some(0));
    let text = String::from_utf8_lossy(&output.stdout);
    let row = |start: &str| -> Vec<String> {
        let line = text
            .lines()
            .find(|l| l.starts_with(start))
            .unwrap_or_else(|| panic!("no row {start:?} in {text}"));
        line.split_whitespace().map(str::to_owned).collect()
    };
    assert_eq!(
        row("reader "),
        ["reader", "password", "reader", "read_images"]
    );
    assert_eq!(row("bot "), ["bot", "token", "reader", "read_images"]);
    // Columns: route (two words), policy, then admin, reader, bot.
    assert_eq!(
        row("DELETE /v3/image/{id}")[2..],
        ["delete_image", "yes", "-", "-"]
    );
    assert_eq!(
        row("GET /v3/image/{id}")[2..],
        ["read_images", "yes", "yes", "yes"]
    );
    assert_eq!(row("GET /healthz")[2..], ["(open)", "yes", "yes", "yes"]);
    // The pages for people, while [ui] enabled (the default).
    assert_eq!(row("GET /ui/ ")[2..], ["read_images", "yes", "yes", "yes"]);
    assert_eq!(row("GET /ui/audit")[2..], ["read_audit", "yes", "-", "-"]);
    let off = format!(
        "{}\n[ui]\nenabled = false\n",
        config_text(DEFAULT_POLICIES, &default_users())
    );
    std::fs::write(&path, off).unwrap();
    let output = check_config(&path);
    assert_eq!(output.status.code(), Some(0));
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(!text.contains("/ui/"), "{text}");
}

#[test]
fn hash_password_output_is_accepted_by_config() {
    use std::io::Write;
    let mut child = binary()
        .arg("hash-password")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"s3cret\n").unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success());
    let line = String::from_utf8(output.stdout).unwrap();
    let hash = line
        .trim()
        .strip_prefix("password_hash = \"")
        .and_then(|s| s.strip_suffix('"'))
        .expect("a config line");
    assert!(image_catalog::auth::verify_password(b"s3cret", hash));
    assert!(!image_catalog::auth::verify_password(b"s3cret\n", hash));
}

#[test]
fn new_token_prints_a_token_and_its_digest() {
    let output = binary().arg("new-token").output().unwrap();
    let text = String::from_utf8(output.stdout).unwrap();
    // Both lines are TOML as they stand.
    let parsed: toml::Table = text.parse().unwrap();
    let token = parsed["token"].as_str().unwrap();
    let digest = text.lines().nth(1).unwrap();
    assert!(token.len() >= 43, "256 bits of randomness: {token}");
    assert_eq!(
        digest,
        format!("token_sha256 = \"{}\"", crate::helpers::sha256_hex(token))
    );
}

#[test]
fn audit_retention_of_zero_days_is_refused() {
    let config = crate::helpers::config_with("", "[audit]\nkeep_days = 0\n");
    let (code, said) = serve_refused_text(&config);
    assert_eq!(code, 2, "{said}");
    assert!(said.contains("keep_days must be at least 1"), "{said}");
}

#[test]
fn init_writes_a_private_config_whose_admin_password_works() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    let init = |extra: &[&str]| {
        binary()
            .arg("--config")
            .arg(&config)
            .args(["init", "--data-dir", "catalog", "--bind", "127.0.0.1:0"])
            .args(extra)
            .output()
            .unwrap()
    };
    let output = init(&[]);
    assert!(output.status.success(), "{output:?}");
    let said = String::from_utf8(output.stdout).unwrap();
    let password = said
        .lines()
        .find_map(|l| l.strip_prefix("user 'admin', password: "))
        .unwrap_or_else(|| panic!("no password in {said}"))
        .to_owned();
    assert_eq!(std::fs::metadata(&config).unwrap().mode() & 0o777, 0o600);

    let again = init(&[]);
    assert_eq!(again.status.code(), Some(2), "never overwrites");
    assert!(String::from_utf8_lossy(&again.stderr).contains("exists already"));

    let loaded = image_catalog::config::Config::load(&config).unwrap();
    assert_eq!(loaded.server.data_dir, dir.path().join("catalog"));
    let user = loaded.access.user("admin").unwrap();
    assert!(image_catalog::auth::verify_password(
        password.as_bytes(),
        user.password_hash.as_ref().unwrap()
    ));
    assert!(user.holds("delete_image") && user.holds("read_audit"));
    assert!(!said.contains("argon2"), "the hash is not shown");

    // --group: readable by that group, for a service user.
    let shared = dir.path().join("shared.toml");
    let output = binary()
        .arg("--config")
        .arg(&shared)
        .args(["init", "--data-dir", "/var/lib/x", "--group", "root"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let meta = std::fs::metadata(&shared).unwrap();
    assert_eq!(meta.mode() & 0o777, 0o640);
    assert_eq!(meta.gid(), 0);
}

#[test]
fn init_can_put_the_password_in_a_private_file_instead() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let (config, secret) = (
        dir.path().join("config.toml"),
        dir.path().join("admin-password"),
    );
    let init = || {
        binary()
            .arg("--config")
            .arg(&config)
            .args(["init", "--data-dir", "catalog", "--password-file"])
            .arg(&secret)
            .output()
            .unwrap()
    };
    let output = init();
    assert!(output.status.success(), "{output:?}");
    let said = String::from_utf8(output.stdout).unwrap();
    let password = std::fs::read_to_string(&secret).unwrap();
    let password = password.strip_suffix('\n').expect("one line");
    assert!(!said.contains(password), "not printed: {said}");
    assert!(
        said.contains(&secret.display().to_string()),
        "names the file: {said}"
    );
    let meta = std::fs::metadata(&secret).unwrap();
    assert_eq!(meta.mode() & 0o777, 0o600);
    assert_eq!(meta.uid(), unsafe { libc::geteuid() });
    let loaded = image_catalog::config::Config::load(&config).unwrap();
    let hash = loaded.access.user("admin").unwrap().password_hash.clone();
    assert!(image_catalog::auth::verify_password(
        password.as_bytes(),
        hash.as_ref().unwrap()
    ));

    // Written once: with the config moved away, the old password file still refuses.
    std::fs::remove_file(&config).unwrap();
    let again = init();
    assert_eq!(again.status.code(), Some(2), "{again:?}");
    assert!(String::from_utf8_lossy(&again.stderr).contains("password file"));
    assert!(!config.exists(), "nothing written when refused");
    assert_eq!(
        std::fs::read_to_string(&secret).unwrap().trim_end(),
        password
    );
}

#[test]
fn the_changelog_has_a_section_for_the_version_printed() {
    let output = binary().arg("--version").output().unwrap();
    let printed = String::from_utf8(output.stdout).unwrap();
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(printed.trim(), format!("image-catalog {version}"));
    let changelog =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/CHANGELOG.md")).unwrap();
    assert!(
        changelog
            .lines()
            .any(|l| l.starts_with(&format!("## [{version}]"))),
        "CHANGELOG.md has no section for {version}"
    );
}

#[test]
fn completions_and_man_page_are_generated() {
    for (shell, words) in [
        ("bash", "COMPREPLY"),
        ("zsh", "#compdef image-catalog"),
        ("fish", "complete -c image-catalog"),
    ] {
        let output = binary().args(["completions", shell]).output().unwrap();
        assert!(output.status.success(), "{shell}");
        let text = String::from_utf8(output.stdout).unwrap();
        assert!(text.contains(words), "{shell}: {text}");
        assert!(
            text.contains("check-config"),
            "{shell} completes subcommands"
        );
    }
    let output = binary().arg("man").output().unwrap();
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(
        text.starts_with(".ie") || text.contains(".TH image-catalog"),
        "{text}"
    );
    // Every page the top one names, written where `man` finds them.
    let dir = tempfile::tempdir().unwrap();
    let output = binary()
        .args(["man", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    for page in [
        "image-catalog.1",
        "image-catalog-serve.1",
        "image-catalog-init.1",
    ] {
        let text = std::fs::read_to_string(dir.path().join(page)).unwrap();
        assert!(text.contains("EXIT STATUS"), "{page}");
    }
}

#[test]
fn a_reader_that_goes_away_is_not_an_error() {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &config_text(DEFAULT_POLICIES, &default_users()));
    let output = binary()
        .arg("--config")
        .arg(&config)
        .arg("check-config")
        .stdout(writer)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(!said.contains("panicked"), "{said}");
    assert_eq!(output.status.code(), Some(0), "{said}");
}

#[test]
fn check_config_warns_of_demo_passwords_open_files_and_plain_http() {
    use std::os::unix::fs::PermissionsExt;
    let users = format!(
        "{}\n[[users]]\nname = \"demo\"\npassword_hash = \"{}\"\nroles = [\"admin\"]\n",
        default_users(),
        cheap_hash("admin-demo-password")
    );
    let text = edit(
        &config_text(DEFAULT_POLICIES, &users),
        "bind = \"127.0.0.1:0\"",
        "bind = \"0.0.0.0:8080\"",
    );
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), &text);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let output = check_config(&path);
    assert!(output.status.success());
    let said = String::from_utf8(output.stdout).unwrap();
    let warnings: Vec<&str> = said
        .lines()
        .filter(|l| l.starts_with("warning: "))
        .collect();
    // On PostgreSQL the test configs also hold a password in [store] url, and a
    // data_dir that does not apply: two warnings more, each saying so.
    let store_notes = |said: &str| {
        said.lines()
            .filter(|l| {
                l.contains("[store] url holds a password") || l.contains("data_dir is ignored")
            })
            .count()
    };
    let expected_store_notes = if on_postgres() { 2 } else { 0 };
    assert_eq!(store_notes(&said), expected_store_notes, "{said}");
    assert_eq!(warnings.len(), 3 + expected_store_notes, "{said}");
    assert!(
        said.contains("user 'demo' still has the documented demo password"),
        "{said}"
    );
    assert!(said.contains("chmod 600"), "{said}");
    assert!(said.contains("plain HTTP"), "{said}");

    // A quiet config says nothing of the kind.
    let quiet_dir = tempfile::tempdir().unwrap();
    let quiet = write_config(
        quiet_dir.path(),
        &config_text(DEFAULT_POLICIES, &default_users()),
    );
    std::fs::set_permissions(&quiet, std::fs::Permissions::from_mode(0o600)).unwrap();
    let output = check_config(&quiet);
    let said = String::from_utf8(output.stdout).unwrap();
    let warnings = said.lines().filter(|l| l.starts_with("warning: ")).count();
    assert_eq!(warnings, expected_store_notes, "{said}");
}

#[test]
fn a_bind_that_is_not_host_and_port_is_refused() {
    let text = edit(
        &config_text(DEFAULT_POLICIES, &default_users()),
        "bind = \"127.0.0.1:0\"",
        "bind = \"8080\"",
    );
    let (code, said) = serve_refused_text(&text);
    assert_eq!(code, 2, "{said}");
    assert!(said.contains("bind '8080' is not host:port"), "{said}");
}
