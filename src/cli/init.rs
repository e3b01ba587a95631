//! `init`: a config.toml to deploy with, so that nobody deploys the demo users.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::Engine;
use rand::RngCore;

use super::CliError;
use crate::config::Config;

/// What `init` is told on the command line.
pub struct InitOptions {
    pub data_dir: PathBuf,
    pub bind: String,
    pub admin: String,
    /// A group that may read the file (mode 0640), for a service user.
    pub group: Option<String>,
    /// Where the admin password goes (a new file, mode 0600), instead of stdout: a
    /// package's install script must not leave it in a terminal's scrollback or a log.
    pub password_file: Option<PathBuf>,
}

/// Writes a new config at `path`, never over an existing file, and shows the admin
/// password once: printed, or in the new file `--password-file` names.
pub fn init(path: &Path, options: &InitOptions) -> Result<(), CliError> {
    if let Some(file) = &options.password_file
        && file.exists()
    {
        return Err(CliError::Usage(format!(
            "{} exists already; init never overwrites a password file",
            file.display()
        )));
    }
    let password = new_password();
    let hash = crate::auth::hash_password(password.as_bytes())
        .map_err(|e| CliError::Runtime(format!("cannot hash the new password: {e}")))?;
    let text = config_text(options, &hash);
    // What it writes must load: a config that init writes and serve refuses is a bug.
    let base = path.parent().unwrap_or(Path::new("."));
    Config::parse(&text, base)
        .map_err(|e| CliError::Usage(format!("the config init would write is invalid: {e}")))?;
    let gid = options.group.as_deref().map(group_id).transpose()?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => CliError::Usage(format!(
                "{} exists already; init never overwrites a config (move it aside, or pass \
                 --config NEW_PATH)",
                path.display()
            )),
            _ => CliError::Runtime(format!("cannot create {}: {e}", path.display())),
        })?;
    let written = file
        .write_all(text.as_bytes())
        .and_then(|()| file.sync_all());
    if let Err(e) = written {
        let _ = std::fs::remove_file(path);
        return Err(CliError::Runtime(format!(
            "cannot write {}: {e}",
            path.display()
        )));
    }
    if let Some(file) = &options.password_file
        && let Err(e) = write_new_private(file, format!("{password}\n").as_bytes())
    {
        // Without its password the config is of no use: leave nothing behind.
        let _ = std::fs::remove_file(path);
        return Err(CliError::Runtime(format!(
            "cannot write the password to {}: {e}",
            file.display()
        )));
    }
    if let Some(gid) = gid {
        std::os::unix::fs::chown(path, None, Some(gid))
            .and_then(|()| std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o640)))
            .map_err(|e| {
                CliError::Runtime(format!(
                    "wrote {} but cannot give it to the group: {e}",
                    path.display()
                ))
            })?;
    }
    match &options.password_file {
        None => super::print_lines(&[
            format!("wrote {}", path.display()),
            format!("user '{}', password: {password}", options.admin),
            "(shown once: store it now; `image-catalog hash-password` makes a new one)".into(),
        ]),
        Some(file) => super::print_lines(&[
            format!("wrote {}", path.display()),
            format!(
                "user '{}': the password is in {} (mode 0600); store it elsewhere, then \
                 delete the file",
                options.admin,
                file.display()
            ),
        ]),
    }
}

/// Creates `path` (never over an existing file) readable only by its owner, with
/// `bytes`, on disk before this returns.
fn write_new_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    let written = file.write_all(bytes).and_then(|()| file.sync_all());
    if written.is_err() {
        let _ = std::fs::remove_file(path);
    }
    written
}

/// 24 random bytes, URL-safe base64: 192 bits, easy to paste.
fn new_password() -> String {
    let mut bytes = [0u8; 24];
    rand::rng().fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn config_text(options: &InitOptions, hash: &str) -> String {
    let quote = |s: &str| toml::Value::String(s.to_owned()).to_string();
    format!(
        r#"# Written by `image-catalog init`. Reference: docs/guide/09-reference.md
# (installed: /usr/share/doc/image-catalog/guide/09-reference.md).
providers = ["ec2", "openstack", "static"]

[server]
bind = {bind}
# Relative paths are relative to this file's folder.
data_dir = {data_dir}

# The read-only page for people at /ui/ (same users and policies).
[ui]
enabled = true

[policies]
read_images  = ["admin", "reader"]
create_image = ["admin"]
delete_image = ["admin"]
read_audit   = ["admin"]

[[users]]
name = {admin}
password_hash = {hash}
roles = ["admin"]

# More users: `image-catalog hash-password` or `image-catalog new-token`, then
# `image-catalog check-config` and SIGHUP (systemctl reload image-catalog).
"#,
        bind = quote(&options.bind),
        data_dir = quote(&options.data_dir.to_string_lossy()),
        admin = quote(&options.admin),
        hash = quote(hash),
    )
}

fn group_id(name: &str) -> Result<u32, CliError> {
    let unknown = || CliError::Usage(format!("no group named '{name}' on this system"));
    let c_name = std::ffi::CString::new(name).map_err(|_| unknown())?;
    let mut group: libc::group = unsafe { std::mem::zeroed() };
    let mut buffer = vec![0 as libc::c_char; 16 * 1024];
    let mut found: *mut libc::group = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call; the buffer outlives `group`'s use.
    let status = unsafe {
        libc::getgrnam_r(
            c_name.as_ptr(),
            &mut group,
            buffer.as_mut_ptr(),
            buffer.len(),
            &mut found,
        )
    };
    if status != 0 || found.is_null() {
        return Err(unknown());
    }
    Ok(group.gr_gid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_written_config_loads_with_one_admin() {
        let options = InitOptions {
            data_dir: "/var/lib/image-catalog".into(),
            bind: "0.0.0.0:8080".into(),
            admin: "ops \"lead\"".into(),
            group: None,
            password_file: None,
        };
        let text = config_text(
            &options,
            "$argon2id$v=19$m=8,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA",
        );
        let config = Config::parse(&text, Path::new("/etc")).unwrap();
        let users = config.access.users();
        assert_eq!(users.len(), 1);
        assert_eq!(users[0].name, "ops \"lead\"");
        assert!(users[0].holds("delete_image"));
        assert_eq!(
            config.server.data_dir,
            PathBuf::from("/var/lib/image-catalog")
        );
    }

    #[test]
    fn passwords_are_long_and_fresh() {
        let (a, b) = (new_password(), new_password());
        assert_eq!(a.len(), 32);
        assert_ne!(a, b);
    }

    #[test]
    fn unknown_groups_are_named() {
        let err = group_id("no-such-group-here").err().unwrap().to_string();
        assert!(err.contains("no-such-group-here"), "{err}");
    }
}
