//! The built binary as a child process, for what must survive a kill or a signal.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};

use tokio::sync::mpsc;

pub struct ChildServer {
    pub child: Child,
    pub address: String,
    /// What the server logged before it said where it listens.
    pub startup_log: Vec<String>,
    /// The line that says where it listens (and its pid).
    pub listening_line: String,
    logs: mpsc::UnboundedReceiver<String>,
}

/// Sends each line that `from` produces to `to`, from a thread of its own.
fn forward_lines(from: impl std::io::Read + Send + 'static, to: mpsc::UnboundedSender<String>) {
    std::thread::spawn(move || {
        for line in BufReader::new(from).lines() {
            let Ok(line) = line else { break };
            if to.send(line).is_err() {
                break;
            }
        }
    });
}

pub fn binary() -> Command {
    Command::new(env!("CARGO_BIN_EXE_image-catalog"))
}

/// Runs `serve` on a config it must refuse to start with; returns the exit code (-1
/// for a signal) and what it wrote to stderr.
pub fn serve_refused(config: &Path) -> (i32, String) {
    let child = binary()
        .arg("--config")
        .arg(config)
        .arg("serve")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A config wrongly accepted would serve forever: stop it after a generous deadline.
    let pid = child.id().to_string();
    let (exited, deadline) = std::sync::mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if deadline
            .recv_timeout(std::time::Duration::from_secs(60))
            .is_err()
        {
            let _ = Command::new("kill").args(["-KILL", &pid]).status();
        }
    });
    let output = child.wait_with_output().unwrap();
    let _ = exited.send(());
    let _ = watchdog.join();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Runs `serve` on config text it must refuse, from a temporary folder.
pub fn serve_refused_text(config: &str) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    serve_refused(&write_config(dir.path(), config))
}

/// Runs the binary on `config` with `args` (e.g. `export`) and waits for it.
pub fn run(config: &Path, args: &[&str]) -> Output {
    binary()
        .arg("--config")
        .arg(config)
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

/// What a finished child wrote to stderr.
pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Writes `config` into `dir` and returns its path.
pub fn write_config(dir: &Path, config: &str) -> PathBuf {
    let path = dir.join("config.toml");
    std::fs::write(&path, config).unwrap();
    path
}

impl ChildServer {
    /// Starts `serve` on config text in a temporary folder, kept as long as the
    /// returned `TempDir`.
    pub async fn start_with(config: &str) -> (ChildServer, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let path = write_config(dir.path(), config);
        (ChildServer::start(&path).await, dir)
    }

    /// Requests to this server, as [`crate::helpers::TestApp`]'s.
    pub fn caller(&self) -> crate::helpers::Caller<'_> {
        crate::helpers::Caller::at(&self.address)
    }

    /// Starts `serve` on the config and waits for the log line that gives its address.
    pub async fn start(config: &Path) -> ChildServer {
        ChildServer::start_logging(config, "info").await
    }

    /// [`ChildServer::start`] with the `RUST_LOG` filter `filter`. Both stdout and
    /// stderr are read as log lines.
    pub async fn start_logging(config: &Path, filter: &str) -> ChildServer {
        let mut command = binary();
        command.arg("--config").arg(config).arg("serve");
        ChildServer::start_command(command, filter).await
    }

    /// Runs `command` (the binary with its arguments) as [`ChildServer::start_logging`]
    /// does.
    pub async fn start_command(mut command: Command, filter: &str) -> ChildServer {
        let mut child = command
            .env("RUST_LOG", filter)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (sender, mut logs) = mpsc::unbounded_channel();
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        forward_lines(stdout, sender.clone());
        forward_lines(stderr, sender);
        let mut address = None;
        let mut startup_log = Vec::new();
        let mut listening_line = String::new();
        while let Some(line) = logs.recv().await {
            if let Some(rest) = line.split("listening on ").nth(1) {
                address = rest.split_whitespace().next().map(str::to_owned);
                listening_line = line;
                break;
            }
            startup_log.push(line);
        }
        ChildServer {
            child,
            address: address.unwrap_or_else(|| {
                panic!("the server exited before logging its address: {startup_log:#?}")
            }),
            startup_log,
            listening_line,
            logs,
        }
    }

    /// Waits for a log line containing `words`, returning it.
    pub async fn wait_for_log(&mut self, words: &str) -> String {
        while let Some(line) = self.logs.recv().await {
            if line.contains(words) {
                return line;
            }
        }
        panic!("the server stopped logging before saying {words:?}");
    }

    /// Every log line until the process closes stderr.
    pub async fn rest_of_log(&mut self) -> Vec<String> {
        let mut lines = Vec::new();
        while let Some(line) = self.logs.recv().await {
            lines.push(line);
        }
        lines
    }

    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// SIGKILL, and reap.
    pub fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    pub fn wait(&mut self) -> ExitStatus {
        self.child.wait().unwrap()
    }
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
