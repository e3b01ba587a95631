//! The command line: `serve` and the commands that help write config.toml.

use std::io::{IsTerminal, Read};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use base64::Engine;
use clap::{Parser, Subcommand};
use rand::RngCore;

use crate::config::{Config, ConfigError};

mod init;
mod manual;
mod transfer;
use crate::routes::TABLE;
use crate::startup::{Application, demo_password_users, warn_demo_passwords};

#[derive(Debug, Parser)]
#[command(
    name = "image-catalog",
    version,
    about = "A catalog of machine images, served over the v3 Images API"
)]
pub struct Cli {
    /// The config file; relative paths inside it are relative to its folder.
    #[arg(
        long,
        global = true,
        env = "IMAGE_CATALOG_CONFIG",
        default_value = "config.toml"
    )]
    pub config: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server.
    Serve {
        /// Address to listen on, instead of [server] bind.
        #[arg(long)]
        bind: Option<String>,
        /// Data folder, instead of [server] data_dir (relative to the working folder).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Start even if the store is behind its high-water mark (acknowledged changes
        /// are missing): serve what is left and reset the mark.
        #[arg(long)]
        accept_data_loss: bool,
    },
    /// Write a new config.toml to deploy with: an admin user with a generated password
    /// (printed once), the standard policies, and DATA_DIR.
    Init {
        /// Where the catalog will live (relative paths: to the config file's folder).
        #[arg(long)]
        data_dir: PathBuf,
        /// The address to serve on.
        #[arg(long, default_value = "127.0.0.1:8080")]
        bind: String,
        /// The admin user's name.
        #[arg(long, default_value = "admin")]
        admin: String,
        /// Make the file readable by this group (mode 0640) for a service user;
        /// otherwise it is 0600.
        #[arg(long)]
        group: Option<String>,
        /// Write the admin password to this new file (mode 0600, owned by the user
        /// running init) instead of printing it.
        #[arg(long, value_name = "PATH")]
        password_file: Option<PathBuf>,
    },
    /// Read a password from stdin and print the password_hash line for config.toml.
    HashPassword,
    /// Print a new random Bearer token and the token_sha256 line for config.toml.
    NewToken,
    /// Validate config.toml and show what each user may do.
    CheckConfig,
    /// Write every image as a JSON line to stdout. On sled the server must be
    /// stopped; on PostgreSQL it may run while nodes serve, but each image is as its
    /// batch was read, not a snapshot of one moment (stop the writers for an exact copy).
    Export {
        /// Data folder, instead of [server] data_dir (relative to the working folder).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// After the images, write the audit trail: one record per line as /v3/audit
        /// shows it, oldest first (import moves it in with its seqs).
        #[arg(long)]
        with_audit: bool,
    },
    /// Load images (and audit records, from `export --with-audit`) from JSON lines:
    /// every line is checked first, and all of it lands in one atomic step or nothing
    /// does. On sled the server must be stopped; on PostgreSQL it is one transaction
    /// and may run while nodes serve.
    Import {
        /// The JSON-lines file, as written by `export`; `-` reads stdin.
        file: PathBuf,
        /// Data folder, instead of [server] data_dir (relative to the working folder).
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Print a shell completion script (e.g. `image-catalog completions bash >
    /// /etc/bash_completion.d/image-catalog`).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print a manual page (roff; `image-catalog man serve | man -l -`), or write them
    /// all to a folder.
    Man {
        /// The subcommand whose page to print; without it, the top page.
        subcommand: Option<String>,
        /// Write every page (image-catalog.1, image-catalog-serve.1, ...) into DIR.
        #[arg(long, value_name = "DIR", conflicts_with = "subcommand")]
        dir: Option<PathBuf>,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Runtime(String),
    /// The store or its folder needs an operator: a restart cannot help.
    #[error("{0}")]
    NeedsOperator(String),
}

impl CliError {
    /// docs/contract.md §4: 2 for bad usage or bad config, 1 for a failure at run time, 3
    /// when the store needs an operator (so systemd stops retrying).
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Config(_) | CliError::Usage(_) => 2,
            CliError::Runtime(_) => 1,
            CliError::NeedsOperator(_) => 3,
        }
    }
}

impl From<crate::store::StoreError> for CliError {
    fn from(err: crate::store::StoreError) -> Self {
        if err.needs_operator() {
            CliError::NeedsOperator(err.to_string())
        } else {
            CliError::Runtime(err.to_string())
        }
    }
}

pub fn run(cli: Cli) -> Result<(), CliError> {
    match cli.command {
        Command::Serve {
            bind,
            data_dir,
            accept_data_loss,
        } => serve(cli.config, bind, data_dir, accept_data_loss),
        Command::HashPassword => hash_password(),
        Command::Init {
            data_dir,
            bind,
            admin,
            group,
            password_file,
        } => init::init(
            &cli.config,
            &init::InitOptions {
                data_dir,
                bind,
                admin,
                group,
                password_file,
            },
        ),
        Command::NewToken => {
            let (token, digest) = new_token();
            // Both quoted: each line pastes into TOML as it is.
            print_lines(&[
                format!("token = \"{token}\""),
                format!("token_sha256 = \"{digest}\""),
            ])
        }
        Command::Completions { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut command, "image-catalog", &mut out);
            write_stdout(&out)
        }
        Command::Man { subcommand, dir } => match dir {
            Some(dir) => print_lines(&manual::write_all(&dir)?),
            None => write_stdout(&manual::page(subcommand.as_deref())?),
        },
        Command::CheckConfig => check_config(&cli.config),
        Command::Export {
            data_dir,
            with_audit,
        } => transfer::export(&cli.config, data_dir, with_audit),
        Command::Import { file, data_dir } => transfer::import(&cli.config, &file, data_dir),
    }
}

fn serve(
    config_path: PathBuf,
    bind: Option<String>,
    data_dir: Option<PathBuf>,
    accept_data_loss: bool,
) -> Result<(), CliError> {
    let mut config = Config::load(&config_path)?;
    config.store.accept_data_loss = accept_data_loss;
    if let Some(bind) = bind {
        config.server.bind = bind;
    }
    if let Some(dir) = data_dir {
        if config.store.postgres.is_some() {
            log::warn!(
                "--data-dir {} is ignored: the catalog is in PostgreSQL ([store] backend = \"postgres\")",
                dir.display()
            );
        }
        config.server.data_dir = dir;
    }
    for warning in config.warnings(&config_path) {
        log::warn!("{warning}");
    }
    let demo_check = config.clone();
    let database = config.store.postgres.as_ref().map(|pg| pg.url.masked());
    actix_web::rt::System::new().block_on(async move {
        let scheme = if config.server.tls.is_some() {
            "https"
        } else {
            "http"
        };
        let app = Application::build(config, Some(config_path))
            .await
            .map_err(|e| match e {
                // A certificate that does not load is a config to fix, not a restart.
                crate::startup::StartError::Tls(_) => CliError::Usage(e.to_string()),
                crate::startup::StartError::Store(e) => match &database {
                    Some(at) => database_failed_at_start(at, e),
                    None => CliError::from(e),
                },
                e => CliError::Runtime(e.to_string()),
            })?;
        // Listening for signals before saying where we listen: a SIGHUP sent as soon
        // as the address is known must reload, not kill with the default action.
        let signals = Signals::listen();
        log::info!(
            "image-catalog listening on {scheme}://{} (pid {}; {})",
            app.address(),
            std::process::id(),
            app.state().store_location()
        );
        std::thread::spawn(move || warn_demo_passwords(&demo_check));
        actix_web::rt::spawn(handle_signals(signals, app.state(), app.handle()));
        if let Err(e) = app.run_until_stopped().await {
            // Fail-stop: a clean exit could block on the store's stuck threads.
            log::error!("{e}");
            eprintln!("image-catalog: {e}");
            crate::logging::exit_now(1);
        }
        log::info!("stopped cleanly");
        Ok(())
    })
}

/// Why `serve` cannot start on the database at `at` (masked): unreachable is exit 1,
/// so that a supervisor starts it again; a schema it cannot read is exit 3.
fn database_failed_at_start(at: &str, error: crate::store::StoreError) -> CliError {
    use crate::store::StoreError;
    match error {
        StoreError::Unavailable(why) => CliError::Runtime(format!(
            "cannot start on the database at {at}: {why}; image-catalog exits 1 so \
             that its supervisor starts it again (systemd: Restart=on-failure)"
        )),
        e => {
            let message = format!("cannot start on the database at {at}: {e}");
            if e.needs_operator() {
                CliError::NeedsOperator(message)
            } else {
                CliError::Runtime(message)
            }
        }
    }
}

/// The signals the server reacts to, listened for from the moment this exists.
struct Signals {
    hangup: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
}

impl Signals {
    fn listen() -> Option<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Some(Signals {
            hangup: signal(SignalKind::hangup()).ok()?,
            terminate: signal(SignalKind::terminate()).ok()?,
            interrupt: signal(SignalKind::interrupt()).ok()?,
        })
    }
}

/// SIGHUP reloads config; SIGTERM and SIGINT both stop gracefully: no new
/// connections, in-flight requests finish, then the store is flushed.
async fn handle_signals(
    signals: Option<Signals>,
    state: actix_web::web::Data<crate::app::AppState>,
    server: actix_web::dev::ServerHandle,
) {
    let Some(Signals {
        mut hangup,
        mut terminate,
        mut interrupt,
    }) = signals
    else {
        log::error!("cannot listen for signals; stop the server with SIGKILL");
        return;
    };
    let reloading = Arc::new(AtomicBool::new(false));
    let name = loop {
        tokio::select! {
            _ = hangup.recv() => reload_aside(&state, &reloading),
            _ = terminate.recv() => break "SIGTERM",
            _ = interrupt.recv() => break "SIGINT",
        }
    };
    log::info!("{name} received: graceful shutdown, finishing in-flight requests");
    // Waiting requests are answered now, as if their time had run out; streams end.
    state.stop_waiting();
    // Whatever is stuck (a flush, a reload on a hung mount), the process ends in time.
    let _ = std::thread::Builder::new()
        .name("stop-deadline".into())
        .spawn(move || {
            std::thread::sleep(crate::startup::STOP_DEADLINE);
            log::error!(
                "{name}: the server did not stop within {} s; exiting now (exit 1)",
                crate::startup::STOP_DEADLINE.as_secs()
            );
            crate::logging::exit_now(1);
        });
    server.stop(true).await;
}

/// Reloads config on a thread of its own: reading the file may block (a FIFO, a hung
/// mount), and the signal loop must stay free for SIGTERM. One reload at a time.
fn reload_aside(state: &actix_web::web::Data<crate::app::AppState>, reloading: &Arc<AtomicBool>) {
    if reloading.swap(true, Ordering::AcqRel) {
        log::warn!(
            "SIGHUP: a reload is still under way (reading the config file); this one is skipped"
        );
        return;
    }
    let (state, reloading) = (state.clone(), reloading.clone());
    let spawned = std::thread::Builder::new()
        .name("config-reload".into())
        .spawn(move || {
            match tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
            {
                Ok(runtime) => runtime.block_on(state.reload()),
                Err(e) => log::error!("config reload refused: cannot start its runtime: {e}"),
            }
            reloading.store(false, Ordering::Release);
        });
    if let Err(e) = spawned {
        log::error!("config reload refused: cannot start its thread: {e}");
    }
}

fn hash_password() -> Result<(), CliError> {
    let password = if std::io::stdin().is_terminal() {
        let first = rpassword::prompt_password("Password: ")
            .map_err(|e| CliError::Runtime(e.to_string()))?;
        let again =
            rpassword::prompt_password("Again: ").map_err(|e| CliError::Runtime(e.to_string()))?;
        if first != again {
            return Err(CliError::Usage("the two passwords differ".into()));
        }
        first
    } else {
        let mut input = String::new();
        std::io::stdin()
            .read_to_string(&mut input)
            .map_err(|e| CliError::Runtime(format!("cannot read stdin: {e}")))?;
        // One trailing newline is what `echo` adds, not part of the password.
        let trimmed = input.strip_suffix('\n').unwrap_or(&input);
        trimmed.strip_suffix('\r').unwrap_or(trimmed).to_owned()
    };
    if password.is_empty() {
        return Err(CliError::Usage("the password is empty".into()));
    }
    let hash = crate::auth::hash_password(password.as_bytes())
        .map_err(|e| CliError::Runtime(e.to_string()))?;
    print_lines(&[format!("password_hash = \"{hash}\"")])
}

/// A fresh token (256 random bits, URL-safe base64) and its SHA-256 in hex.
pub fn new_token() -> (String, String) {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let digest = hex::encode(crate::domain::change::sha256(token.as_bytes()));
    (token, digest)
}

/// Writes `bytes` to stdout. A reader that went away (`| head -1`) is not an error.
fn write_stdout(bytes: &[u8]) -> Result<(), CliError> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(CliError::Runtime(format!("cannot write to stdout: {e}")))
        }
        _ => Ok(()),
    }
}

fn print_lines(lines: &[String]) -> Result<(), CliError> {
    let mut text = lines.join("\n");
    text.push('\n');
    write_stdout(text.as_bytes())
}

fn check_config(path: &std::path::Path) -> Result<(), CliError> {
    let config = Config::load(path)?;
    // The pair as `serve` loads it, as the user running this: a key the service user
    // cannot read, or one that does not match, fails here rather than at the restart.
    if let Some(files) = &config.server.tls {
        crate::tls::Certificates::load(&files.cert, &files.key)
            .map_err(|e| CliError::Usage(e.to_string()))?;
    }
    let mut warnings = config.warnings(path);
    let store = match &config.store.postgres {
        None => format!("store: sled in {}", config.server.data_dir.display()),
        Some(pg) => {
            let at = format!("store: postgres at {}", pg.url.masked());
            match probe_database(pg)? {
                Ok(Some((major, minor))) => format!("{at}: reachable, schema {major}.{minor}"),
                Ok(None) => {
                    format!("{at}: reachable, no schema yet (the first start creates it)")
                }
                Err(why) => {
                    // A warning, not a refusal: a reload check must still work while
                    // the database is down.
                    warnings.push(format!(
                        "{at}: unreachable: {why}; `serve` cannot start until it is \
                         reachable (a running server answers 503 meanwhile)"
                    ));
                    format!("{at}: unreachable")
                }
            }
        }
    };
    warnings.extend(demo_password_users(&config).into_iter().map(|name| {
        format!(
            "user '{name}' still has the documented demo password; set a new one with \
             `image-catalog hash-password`"
        )
    }));
    let mut out = vec![format!("{}: valid", path.display())];
    out.extend(warnings.iter().map(|w| format!("warning: {w}")));
    out.extend([
        format!(
            "bind {}, providers {}",
            config.server.bind,
            config.providers.join(", ")
        ),
        store,
        String::new(),
    ]);
    let users = config.access.users();
    let mut rows = vec![vec![
        "USER".to_string(),
        "CREDENTIALS".into(),
        "ROLES".into(),
        "POLICIES".into(),
    ]];
    for user in users {
        let credentials: Vec<&str> = [
            user.password_hash.as_ref().map(|_| "password"),
            user.token_sha256.as_ref().map(|_| "token"),
        ]
        .into_iter()
        .flatten()
        .collect();
        let policies: Vec<&str> = user.policies.iter().copied().collect();
        rows.push(vec![
            user.name.clone(),
            credentials.join("+"),
            or_none(&user.roles.join(",")).to_owned(),
            or_none(&policies.join(",")).to_owned(),
        ]);
    }
    print_table(&rows, &mut out);
    out.push(String::new());
    let mut header = vec!["ROUTE".to_string(), "POLICY".into()];
    header.extend(users.iter().map(|u| u.name.clone()));
    let mut rows = vec![header];
    // The API's routes, then the pages for people while they are on.
    let pages = crate::ui::ROUTES
        .iter()
        .filter(|_| config.ui.enabled)
        .map(|&(path, policy)| ("GET", path, Some(policy)));
    let routes = TABLE
        .iter()
        .map(|r| (r.method, r.path, r.policy))
        .chain(pages);
    for (method, path, policy) in routes {
        let mut row = vec![
            format!("{method} {path}"),
            policy.unwrap_or("(open)").to_owned(),
        ];
        row.extend(users.iter().map(|u| {
            let open = policy.is_none_or(|p| u.holds(p));
            if open { "yes" } else { "-" }.to_owned()
        }));
        rows.push(row);
    }
    print_table(&rows, &mut out);
    print_lines(&out)
}

/// How long `check-config` waits for the database, at most, to connect and to answer.
const PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// Whether the database can be reached, and the schema it holds (`None`: none yet);
/// why not, if it cannot. A schema this build cannot read is an error (exit 3).
fn probe_database(
    pg: &crate::config::PostgresConfig,
) -> Result<Result<Option<(i32, i32)>, String>, CliError> {
    use crate::store::StoreError;
    use crate::store::postgres::{PgOptions, PgStore};
    let options = PgOptions {
        connect_timeout: pg.connect_timeout.min(PROBE_TIMEOUT),
        statement_timeout: pg.statement_timeout.min(PROBE_TIMEOUT),
        pool_size: 1,
        batch_writes: false,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Runtime(format!("cannot start a runtime: {e}")))?;
    // Connecting and reading the version, each bounded; a margin over both.
    let limit = PROBE_TIMEOUT * 3;
    let found = runtime.block_on(async {
        tokio::time::timeout(limit, PgStore::probe(pg.url.expose(), options)).await
    });
    match found {
        Ok(Ok(schema)) => Ok(Ok(schema)),
        Ok(Err(StoreError::Unavailable(why))) => Ok(Err(why)),
        Ok(Err(e)) if e.needs_operator() => Err(CliError::NeedsOperator(format!(
            "the database at {}: {e}",
            pg.url.masked()
        ))),
        Ok(Err(e)) => Ok(Err(e.to_string())),
        Err(_) => Ok(Err(format!("no answer within {} s", limit.as_secs()))),
    }
}

fn print_table(rows: &[Vec<String>], out: &mut Vec<String>) {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        out.push(cells.join("  ").trim_end().to_owned());
    }
}

fn or_none(s: &str) -> &str {
    if s.is_empty() { "(none)" } else { s }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_tokens_carry_256_random_bits_and_their_digest() {
        let (token, digest) = new_token();
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(&token)
            .unwrap();
        assert_eq!(bytes.len(), 32, "256 bits");
        assert_eq!(
            digest,
            hex::encode(crate::domain::change::sha256(token.as_bytes()))
        );
        let (other, _) = new_token();
        assert_ne!(token, other);
    }
}
