//! The built binary as a child process, for what must survive a kill or a signal.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};

use tokio::sync::mpsc;

pub struct ChildServer {
    pub child: Child,
    pub address: String,
    logs: mpsc::UnboundedReceiver<String>,
}

pub fn binary() -> Command {
    Command::new(env!("CARGO_BIN_EXE_image-catalog"))
}

/// Writes `config` into `dir` and returns its path.
pub fn write_config(dir: &Path, config: &str) -> PathBuf {
    let path = dir.join("config.toml");
    std::fs::write(&path, config).unwrap();
    path
}

impl ChildServer {
    /// Starts `serve` on the config and waits for the log line that gives its address.
    pub async fn start(config: &Path) -> ChildServer {
        let mut child = binary()
            .arg("--config")
            .arg(config)
            .arg("serve")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (sender, mut logs) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        let mut address = None;
        while let Some(line) = logs.recv().await {
            if let Some(rest) = line.split("listening on ").nth(1) {
                address = rest.split_whitespace().next().map(str::to_owned);
                break;
            }
        }
        ChildServer {
            child,
            address: address.expect("the server logged its address before exiting"),
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
