//! A small WebDriver client for the browser tests: it starts a private `chromedriver`
//! (which starts a headless Chromium) and drives it through the W3C WebDriver JSON API,
//! plus a few Chrome DevTools Protocol commands through chromedriver's
//! `POST /session/{id}/goog/cdp/execute`.
//!
//! It is written on `reqwest` rather than a WebDriver crate (fantoccini, thirtyfour):
//! the tests need a few JSON calls, not a heavy client crate and its build time.
//!
//! Each test starts its own [`Browser`] (about 1.5 s) and drops it at the end, which
//! ends the session and kills chromedriver and its Chromium. Without `chromium` and
//! `chromedriver` (Debian's `chromium` and `chromium-driver`) [`Browser::start`] prints
//! "skipped: TEST: ..." and the test returns; with `CI` set they are required.
//!
//! Basic credentials: use [`Browser::basic_auth`] before the first [`Browser::goto`]. It
//! sets the `Authorization` header on every request of the page through CDP, so the page
//! and its `fetch()` calls all carry it, with no 401 round trip. Credentials in the URL
//! (`http://user:password@host/ui/`) do log the navigation in (Chrome retries after the
//! 401 and caches them), but the page's base URL then keeps the userinfo and Chrome
//! refuses `fetch('/v3/...')` with a relative URL: "TypeError: Request cannot be
//! constructed from a URL that includes credentials"
//! (`credentials_in_the_url_log_the_navigation_in_but_break_relative_fetch` below).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// How long anything may take before a test fails as hung. Tests never assert speed.
const PATIENCE: Duration = Duration::from_secs(30);
/// The key of a W3C element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// One headless Chromium, driven through its own chromedriver.
pub struct Browser {
    http: reqwest::Client,
    /// `http://127.0.0.1:PORT/session/ID`
    session: String,
    driver: Driver,
}

/// The chromedriver process (and, in its process group, the Chromium it starts) and the
/// temp dir of the browser profile and the driver's log.
struct Driver {
    child: Child,
    address: SocketAddr,
    scratch: tempfile::TempDir,
}

impl Browser {
    /// Starts chromedriver and a session, or returns `None` (after saying the test is
    /// skipped) where there is no browser, outside CI.
    pub async fn start(test: &str) -> Option<Browser> {
        let chromedriver =
            on_path("chromedriver").or_else(|| executable(Path::new("/usr/bin/chromedriver")));
        // Debian's real binary first (as chromedriver picks): /usr/bin/chromium is a
        // shell wrapper of it.
        let chromium =
            executable(Path::new("/usr/lib/chromium/chromium")).or_else(|| on_path("chromium"));
        let (Some(chromedriver), Some(chromium)) = (chromedriver, chromium) else {
            if std::env::var_os("CI").is_some_and(|ci| !ci.is_empty()) {
                panic!("{test}: CI must have chromium and chromium-driver");
            }
            eprintln!("skipped: {test}: no chromium/chromedriver");
            return None;
        };
        let driver = Driver::start(&chromedriver);
        let http = reqwest::Client::builder()
            .timeout(2 * PATIENCE)
            .build()
            .unwrap();
        let base = format!("http://{}", driver.address);
        driver.wait_ready(&http, &base).await;

        let profile = driver.scratch.path().join("profile");
        let patience = PATIENCE.as_millis() as u64;
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "timeouts": {"pageLoad": patience, "script": patience},
            "goog:chromeOptions": {
                "binary": chromium,
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-dev-shm-usage",
                    "--window-size=1280,900",
                    format!("--user-data-dir={}", profile.display()),
                ],
            },
            // So that console() can read the page's console messages.
            "goog:loggingPrefs": {"browser": "ALL"},
        }}});
        let answer = request(
            &http,
            reqwest::Method::POST,
            &format!("{base}/session"),
            Some(capabilities),
        )
        .await
        .unwrap_or_else(|e| {
            panic!(
                "{test}: chromedriver refused a session: {e}{}",
                driver.log_tail()
            )
        });
        let id = answer["sessionId"].as_str().expect("a session id");
        Some(Browser {
            http,
            session: format!("{base}/session/{id}"),
            driver,
        })
    }

    /// Navigates and waits for the page's load event. `user:password@` in the URL logs
    /// the navigation in, but see the module doc: prefer [`Browser::basic_auth`].
    pub async fn goto(&self, url: &str) {
        self.post("/url", json!({ "url": url })).await;
    }

    /// Sends `Authorization: Basic ...` with every later request of this browser (page,
    /// scripts, `fetch()`, to any origin), through CDP `Network.setExtraHTTPHeaders`.
    pub async fn basic_auth(&self, user: &str, password: &str) {
        let credentials = base64_encode(format!("{user}:{password}").as_bytes());
        self.cdp("Network.enable", json!({})).await;
        let headers = json!({ "headers": { "Authorization": format!("Basic {credentials}") } });
        self.cdp("Network.setExtraHTTPHeaders", headers).await;
    }

    /// Runs a Chrome DevTools Protocol command on the page, e.g. `Emulation.*`.
    pub async fn cdp(&self, cmd: &str, params: Value) -> Value {
        self.post("/goog/cdp/execute", json!({ "cmd": cmd, "params": params }))
            .await
    }

    pub async fn url(&self) -> String {
        string(self.get("/url").await)
    }

    pub async fn title(&self) -> String {
        string(self.get("/title").await)
    }

    /// Runs `script` as the body of a function (so it `return`s its value) with
    /// `arguments` = `args`. A returned promise is awaited.
    pub async fn execute(&self, script: &str, args: Vec<Value>) -> Value {
        self.post("/execute/sync", json!({ "script": script, "args": args }))
            .await
    }

    /// The rendered text (`innerText`, trimmed) of each element matching `css`, in
    /// document order; `""` for one that is not rendered (hidden).
    pub async fn texts(&self, css: &str) -> Vec<String> {
        let script = "return Array.from(document.querySelectorAll(arguments[0]), e =>
            e.checkVisibility({visibilityProperty: true}) ? e.innerText.trim() : '')";
        let texts = self.execute(script, vec![json!(css)]).await;
        texts
            .as_array()
            .unwrap()
            .iter()
            .cloned()
            .map(string)
            .collect()
    }

    /// Polls the JS expression `condition` every 20 ms until it is true; panics naming
    /// `what` after 30 s. A script error (e.g. an element not there yet) counts as false.
    pub async fn wait_until(&self, what: &str, condition: &str) {
        let body = json!({ "script": format!("return !!({condition})"), "args": [] });
        let start = Instant::now();
        let mut last = Value::Null;
        while start.elapsed() < PATIENCE {
            match self
                .call(reqwest::Method::POST, "/execute/sync", Some(body.clone()))
                .await
            {
                Ok(Value::Bool(true)) => return,
                Ok(value) => last = value,
                Err(e) => last = json!(e),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("waited {PATIENCE:?} for {what} ({condition}); last: {last}");
    }

    /// The browser's console log entries since the last call (`level`: SEVERE, WARNING,
    /// INFO...; `message`; `source`: console-api, javascript (uncaught), network...).
    pub async fn console(&self) -> Vec<Value> {
        let entries = self.post("/se/log", json!({ "type": "browser" })).await;
        entries.as_array().cloned().unwrap_or_default()
    }

    /// The SEVERE ones of [`Browser::console`]: `console.error`, uncaught exceptions and
    /// failed loads (e.g. a 404 or 401 of a resource or `fetch()`; also the 404 of
    /// `/favicon.ico`, which Chrome asks for when the page names no icon).
    pub async fn console_errors(&self) -> Vec<Value> {
        let mut entries = self.console().await;
        entries.retain(|entry| entry["level"] == "SEVERE");
        entries
    }

    /// The origins (`scheme://host:port`, sorted, once each) of the page itself and of
    /// everything it loaded so far, from the Resource Timing API.
    pub async fn resource_origins(&self) -> Vec<String> {
        let script = "const urls = performance.getEntriesByType('navigation')
                .concat(performance.getEntriesByType('resource')).map(e => e.name);
            urls.push(location.href);
            return [...new Set(urls.map(u => new URL(u).origin))].sort()";
        let origins = self.execute(script, vec![]).await;
        origins
            .as_array()
            .unwrap()
            .iter()
            .cloned()
            .map(string)
            .collect()
    }

    /// A PNG of the viewport.
    pub async fn screenshot(&self) -> Vec<u8> {
        base64_decode(&string(self.get("/screenshot").await))
    }

    /// Sizes the window. In headless Chromium the viewport is as wide but shorter (by
    /// 143 px in Chromium 156), and the window is at least 500 px wide while the viewport
    /// can be narrower.
    pub async fn set_window_size(&self, width: u32, height: u32) {
        self.post("/window/rect", json!({ "width": width, "height": height }))
            .await;
    }

    /// Emulates `prefers-color-scheme: dark` (or light) for the page's CSS and
    /// `matchMedia`, until changed again.
    pub async fn prefer_dark(&self, dark: bool) {
        let scheme = if dark { "dark" } else { "light" };
        let features = json!([{ "name": "prefers-color-scheme", "value": scheme }]);
        self.cdp(
            "Emulation.setEmulatedMedia",
            json!({ "media": "", "features": features }),
        )
        .await;
    }

    /// Clears the field matching `css` and types `text` into it, key by key (so `input`
    /// listeners fire).
    pub async fn type_into(&self, css: &str, text: &str) {
        let element = self.element(css).await;
        self.post(&format!("/element/{element}/clear"), json!({}))
            .await;
        self.post(
            &format!("/element/{element}/value"),
            json!({ "text": text }),
        )
        .await;
    }

    /// Presses Enter in the element matching `css` (submits its form).
    pub async fn press_enter(&self, css: &str) {
        let element = self.element(css).await;
        self.post(
            &format!("/element/{element}/value"),
            json!({ "text": "\u{E007}" }),
        )
        .await;
    }

    pub async fn click(&self, css: &str) {
        let element = self.element(css).await;
        self.post(&format!("/element/{element}/click"), json!({}))
            .await;
    }

    /// Picks the option whose value is `value` in the `<select>` matching `css`, as a
    /// click on it does (the select fires `input` and `change`).
    pub async fn select_option(&self, css: &str, value: &str) {
        let select = self.element(css).await;
        let script =
            "return Array.from(arguments[0].options).find(o => o.value === arguments[1]) || null";
        let option = self
            .execute(script, vec![json!({ ELEMENT: select }), json!(value)])
            .await;
        let Some(option) = option[ELEMENT].as_str() else {
            panic!("{css} has no option {value:?}");
        };
        self.post(&format!("/element/{option}/click"), json!({}))
            .await;
    }

    /// The id of the first element matching `css`, waiting up to 30 s for one.
    async fn element(&self, css: &str) -> String {
        let body = json!({ "using": "css selector", "value": css });
        let start = Instant::now();
        loop {
            match self
                .call(reqwest::Method::POST, "/element", Some(body.clone()))
                .await
            {
                Ok(element) => return string(element[ELEMENT].clone()),
                Err(e) if e.starts_with("no such element") && start.elapsed() < PATIENCE => {
                    tokio::time::sleep(Duration::from_millis(20)).await
                }
                Err(e) => panic!("no element {css}: {e}"),
            }
        }
    }

    async fn get(&self, path: &str) -> Value {
        self.call(reqwest::Method::GET, path, None)
            .await
            .unwrap_or_else(|e| panic!("webdriver GET {path}: {e}"))
    }

    async fn post(&self, path: &str, body: Value) -> Value {
        self.call(reqwest::Method::POST, path, Some(body.clone()))
            .await
            .unwrap_or_else(|e| panic!("webdriver POST {path} {body}: {e}"))
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, String> {
        request(&self.http, method, &format!("{}{path}", self.session), body).await
    }
}

impl Drop for Browser {
    /// Ends the session (Chromium quits), best effort; then `Driver` kills chromedriver.
    /// Synchronous on purpose: a `Drop` cannot await, and this runs on panics too.
    fn drop(&mut self) {
        let path = self.session.splitn(4, '/').nth(3).unwrap_or_default();
        let Ok(mut stream) =
            TcpStream::connect_timeout(&self.driver.address, Duration::from_secs(2))
        else {
            return;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
        let _ = stream.set_write_timeout(Some(Duration::from_secs(2)));
        let address = self.driver.address;
        let _ = write!(
            stream,
            "DELETE /{path} HTTP/1.1\r\nHost: {address}\r\n\
             Content-Length: 0\r\nConnection: close\r\n\r\n"
        );
        // chromedriver keeps the connection open: read up to the end of the answer.
        let mut answer = Vec::new();
        let mut buffer = [0; 4096];
        while let Ok(n @ 1..) = stream.read(&mut buffer) {
            answer.extend_from_slice(&buffer[..n]);
            if answer_complete(&answer) {
                break;
            }
        }
    }
}

/// Whether `answer` holds a whole HTTP response with a `Content-Length` body.
fn answer_complete(answer: &[u8]) -> bool {
    let Some(end) = answer.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&answer[..end]).to_ascii_lowercase();
    let length = head
        .lines()
        .find_map(|line| line.strip_prefix("content-length:"))
        .and_then(|n| n.trim().parse::<usize>().ok());
    length.is_none_or(|length| answer.len() >= end + 4 + length)
}

impl Driver {
    fn start(chromedriver: &Path) -> Driver {
        let scratch = tempfile::tempdir().expect("a temp dir for the browser");
        // A free port: bind :0, read it, let it go for chromedriver.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free loopback port")
            .port();
        let log = std::fs::File::create(scratch.path().join("chromedriver.log")).unwrap();
        let child = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            // Chromium keeps crash reports under ~/.config whatever the profile: here.
            .env("XDG_CONFIG_HOME", scratch.path())
            .env("XDG_CACHE_HOME", scratch.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            // Its own process group, which Chromium joins: Drop kills the lot.
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", chromedriver.display()));
        Driver {
            child,
            address: SocketAddr::from(([127, 0, 0, 1], port)),
            scratch,
        }
    }

    /// Polls `GET /status` until chromedriver says it is ready.
    async fn wait_ready(&self, http: &reqwest::Client, base: &str) {
        let start = Instant::now();
        loop {
            if let Ok(status) =
                request(http, reqwest::Method::GET, &format!("{base}/status"), None).await
                && status["ready"] == true
            {
                return;
            }
            if start.elapsed() > PATIENCE {
                panic!(
                    "chromedriver not ready after {PATIENCE:?}{}",
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.scratch.path().join("chromedriver.log"))
            .unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        format!(
            "\nchromedriver log:\n{}",
            lines[lines.len().saturating_sub(20)..].join("\n")
        )
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // The group is chromedriver's own (process_group(0) above) and it is not reaped
        // yet, so the id cannot have been reused.
        let group = self.child.id() as libc::pid_t;
        unsafe { libc::kill(-group, libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

/// One WebDriver request: the answer's `value`, or the WebDriver error as
/// "error: message" (first line).
async fn request(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    body: Option<Value>,
) -> Result<Value, String> {
    let mut request = http.request(method, url);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.map_err(|e| e.to_string())?;
    let status = response.status();
    let answer: Value = response
        .json()
        .await
        .map_err(|e| format!("{status}: {e}"))?;
    let value = answer.get("value").cloned().unwrap_or(Value::Null);
    match value.get("error").and_then(Value::as_str) {
        Some(error) if !status.is_success() => {
            let message = value["message"].as_str().unwrap_or_default();
            let message = message.lines().next().unwrap_or_default();
            // chromedriver's messages mostly start with the error already.
            if message.starts_with(error) {
                Err(message.to_string())
            } else {
                Err(format!("{error}: {message}"))
            }
        }
        _ => Ok(value),
    }
}

/// `name` in a folder of `PATH`, if executable there.
fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).find_map(|dir| executable(&dir.join(name)))
}

fn executable(path: &Path) -> Option<PathBuf> {
    let metadata = path.metadata().ok()?;
    (metadata.is_file() && metadata.permissions().mode() & 0o111 != 0).then(|| path.to_path_buf())
}

fn string(value: Value) -> String {
    match value {
        Value::String(s) => s,
        other => panic!("expected a string, got {other}"),
    }
}

const BASE64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn base64_encode(bytes: &[u8]) -> String {
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | (b as u32) << (16 - 8 * i));
        for i in 0..4 {
            out.push(if i <= chunk.len() {
                BASE64[(n >> (18 - 6 * i) & 63) as usize] as char
            } else {
                '='
            });
        }
    }
    out
}

fn base64_decode(text: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let (mut bits, mut n) = (0u32, 0u32);
    for c in text
        .bytes()
        .filter(|&c| c != b'=' && !c.is_ascii_whitespace())
    {
        let digit = BASE64
            .iter()
            .position(|&d| d == c)
            .unwrap_or_else(|| panic!("not base64: {c}"));
        n = n << 6 | digit as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((n >> bits) as u8);
        }
    }
    out
}

// The client's own tests, on `data:` pages and on small servers of their own.

use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A `data:` URL of an HTML page.
fn data_url(html: &str) -> String {
    let encoded: String = html
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect();
    format!("data:text/html;charset=utf-8,{encoded}")
}

/// One request a `TestServer` answered: path, `Authorization` header, status.
type Seen = (String, Option<String>, u16);

/// A tiny HTTP server on 127.0.0.1:0: `/favicon.ico` is a 404; with `credentials`,
/// everything else is a 401 with `WWW-Authenticate: Basic` unless they come; then
/// `/v3/...` answers JSON and any other path `page`.
struct TestServer {
    origin: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl TestServer {
    async fn start(credentials: Option<(&str, &str)>, page: String) -> TestServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let origin = format!("http://{}", listener.local_addr().unwrap());
        let expected = credentials.map(|(user, password)| {
            format!(
                "Basic {}",
                base64_encode(format!("{user}:{password}").as_bytes())
            )
        });
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let (expected, page, log) = (expected.clone(), page.clone(), log.clone());
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buffer = [0; 4096];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buffer).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buffer[..n]),
                        }
                    }
                    let head = String::from_utf8_lossy(&head);
                    let path = head.split(' ').nth(1).unwrap_or_default().to_string();
                    let authorization = head
                        .lines()
                        .find_map(|line| {
                            line.split_once(':')
                                .filter(|(name, _)| name.eq_ignore_ascii_case("authorization"))
                        })
                        .map(|(_, value)| value.trim().to_string());
                    let (status, extra, content_type, body) = if path == "/favicon.ico" {
                        (404, "", "text/plain", "no".to_string())
                    } else if expected.is_some() && authorization != expected {
                        (
                            401,
                            "WWW-Authenticate: Basic realm=\"x\"\r\n",
                            "text/plain",
                            "who?".to_string(),
                        )
                    } else if path.starts_with("/v3/") {
                        (200, "", "application/json", r#"{"ok":true}"#.to_string())
                    } else {
                        (200, "", "text/html; charset=utf-8", page)
                    };
                    log.lock().unwrap().push((path, authorization, status));
                    let response = format!(
                        "HTTP/1.1 {status} X\r\n{extra}Content-Type: {content_type}\r\n\
                         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = stream.write_all(response.as_bytes()).await;
                });
            }
        });
        TestServer { origin, seen }
    }

    /// The requests answered so far, less the favicon's.
    fn seen(&self) -> Vec<Seen> {
        let seen = self.seen.lock().unwrap();
        seen.iter()
            .filter(|(path, ..)| path != "/favicon.ico")
            .cloned()
            .collect()
    }
}

#[test]
fn base64_round_trips() {
    for text in ["", "a", "ab", "abc", "abcd", "user:pass word"] {
        assert_eq!(
            base64_decode(&base64_encode(text.as_bytes())),
            text.as_bytes()
        );
    }
    assert_eq!(base64_encode(b"u:p"), "dTpw");
    assert_eq!(base64_encode(b"admin:admin"), "YWRtaW46YWRtaW4=");
}

#[tokio::test]
async fn reads_texts_runs_scripts_and_captures_console_errors() {
    let Some(browser) =
        Browser::start("reads_texts_runs_scripts_and_captures_console_errors").await
    else {
        return;
    };
    let page = "<!doctype html><title>T</title>
        <ul><li>one</li><li> two </li><li hidden>three</li></ul>
        <script>setTimeout(() => document.title = 'later', 100)</script>";
    browser.goto(&data_url(page)).await;
    assert_eq!(browser.texts("li").await, ["one", "two", ""]);
    assert!(browser.texts("table").await.is_empty());
    assert_eq!(
        browser
            .execute("return arguments[0] + 1", vec![json!(41)])
            .await,
        json!(42)
    );
    // A returned promise is awaited.
    let later = browser
        .execute(
            "return new Promise(r => setTimeout(() => r('done'), 50))",
            vec![],
        )
        .await;
    assert_eq!(later, json!("done"));
    browser
        .wait_until("the title to change", "document.title == 'later'")
        .await;
    assert_eq!(browser.title().await, "later");
    assert!(browser.url().await.starts_with("data:text/html"));

    let script = "console.log('fine'); console.error('x');
        setTimeout(() => { throw new Error('uncaught') })";
    browser.execute(script, vec![]).await;
    browser
        .wait_until(
            "the timeout to fire",
            "new Promise(r => setTimeout(() => r(true), 50))",
        )
        .await;
    let errors = browser.console_errors().await;
    let messages: Vec<&str> = errors
        .iter()
        .map(|e| e["message"].as_str().unwrap())
        .collect();
    assert_eq!(messages.len(), 2, "{errors:?}");
    assert!(messages[0].ends_with("\"x\""), "{messages:?}");
    assert!(
        messages[1].contains("Uncaught Error: uncaught"),
        "{messages:?}"
    );
    // Read once: the next call has only what came since.
    browser.execute("console.warn('w')", vec![]).await;
    let entries = browser.console().await;
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(entries[0]["level"], "WARNING");
}

#[tokio::test]
async fn screenshots_are_pngs_and_dark_mode_is_emulated() {
    let Some(browser) = Browser::start("screenshots_are_pngs_and_dark_mode_is_emulated").await
    else {
        return;
    };
    let page = "<!doctype html><style>body { background: white }
        @media (prefers-color-scheme: dark) { body { background: black } }</style><p>hi";
    browser.goto(&data_url(page)).await;
    let dark = "matchMedia('(prefers-color-scheme: dark)').matches";
    let background = "return getComputedStyle(document.body).backgroundColor";
    assert_eq!(
        browser.execute(&format!("return {dark}"), vec![]).await,
        json!(false)
    );
    browser.prefer_dark(true).await;
    assert_eq!(
        browser.execute(&format!("return {dark}"), vec![]).await,
        json!(true)
    );
    assert_eq!(
        browser.execute(background, vec![]).await,
        json!("rgb(0, 0, 0)")
    );
    browser.prefer_dark(false).await;
    assert_eq!(
        browser.execute(&format!("return {dark}"), vec![]).await,
        json!(false)
    );
    assert_eq!(
        browser.execute(background, vec![]).await,
        json!("rgb(255, 255, 255)")
    );

    browser.set_window_size(375, 812).await;
    assert_eq!(
        browser.execute("return innerWidth", vec![]).await,
        json!(375)
    );
    let png = browser.screenshot().await;
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n"),
        "{:?}",
        &png[..png.len().min(16)]
    );
    // The IHDR chunk: the width, then the height, big-endian.
    assert_eq!(u32::from_be_bytes(png[16..20].try_into().unwrap()), 375);
}

#[tokio::test]
async fn types_clicks_and_selects() {
    let Some(browser) = Browser::start("types_clicks_and_selects").await else {
        return;
    };
    let page = "<!doctype html>
        <form id=f><input id=q value=old><button id=go type=button>Go</button></form>
        <select id=s><option value=a>A</option><option value=b>B</option></select>
        <p id=out></p>
        <script>
          const out = document.getElementById('out');
          f.onsubmit = e => { e.preventDefault(); out.textContent = 'submitted ' + q.value };
          go.onclick = () => out.textContent = 'clicked ' + q.value;
          s.onchange = () => out.textContent = 'changed ' + s.value;
        </script>";
    browser.goto(&data_url(page)).await;
    browser.type_into("#q", "ubuntu").await;
    browser.click("#go").await;
    assert_eq!(browser.texts("#out").await, ["clicked ubuntu"]);
    browser.type_into("#q", "debian").await;
    browser.press_enter("#q").await;
    assert_eq!(browser.texts("#out").await, ["submitted debian"]);
    browser.select_option("#s", "b").await;
    assert_eq!(browser.texts("#out").await, ["changed b"]);
}

/// The mechanism the UI tests use: the header comes with the page and with a `fetch()`
/// to another path of the origin, at once (no 401 first).
#[tokio::test]
async fn basic_auth_goes_with_the_page_and_its_fetches() {
    let Some(browser) = Browser::start("basic_auth_goes_with_the_page_and_its_fetches").await
    else {
        return;
    };
    let other = TestServer::start(None, String::new()).await;
    let page = format!(
        "<!doctype html><title>secret</title><img src='{}/v3/pixel'>",
        other.origin
    );
    let server = TestServer::start(Some(("admin", "pw")), page).await;
    browser.basic_auth("admin", "pw").await;
    browser.goto(&format!("{}/ui/", server.origin)).await;
    assert_eq!(browser.title().await, "secret");
    let status = browser
        .execute("return fetch('/v3/images').then(r => r.status)", vec![])
        .await;
    assert_eq!(status, json!(200));
    let auth = Some("Basic YWRtaW46cHc=".to_string());
    let expected = [
        ("/ui/".to_string(), auth.clone(), 200),
        ("/v3/images".to_string(), auth, 200),
    ];
    assert_eq!(server.seen(), expected);

    let mut origins = vec![server.origin.clone(), other.origin.clone()];
    origins.sort();
    assert_eq!(browser.resource_origins().await, origins);
}

/// What Chrome does with `user:password@` in the URL, which the UI tests do not use.
#[tokio::test]
async fn credentials_in_the_url_log_the_navigation_in_but_break_relative_fetch() {
    let name = "credentials_in_the_url_log_the_navigation_in_but_break_relative_fetch";
    let Some(browser) = Browser::start(name).await else {
        return;
    };
    let server = TestServer::start(
        Some(("admin", "pw")),
        "<!doctype html><title>secret</title>".into(),
    )
    .await;
    let with_userinfo = server.origin.replace("http://", "http://admin:pw@");
    browser.goto(&format!("{with_userinfo}/ui/")).await;
    assert_eq!(browser.title().await, "secret");
    let auth = Some("Basic YWRtaW46cHc=".to_string());
    let ui = |auth: &Option<String>, status| ("/ui/".to_string(), auth.clone(), status);
    // A first try without, the 401, the retry with them.
    assert_eq!(server.seen(), [ui(&None, 401), ui(&auth, 200)]);

    // The document's base URL keeps the userinfo, and fetch() refuses such URLs.
    let relative = "return fetch(arguments[0]).then(r => r.status, e => String(e))";
    let refused = browser.execute(relative, vec![json!("/v3/images")]).await;
    assert!(
        refused
            .as_str()
            .unwrap()
            .contains("Request cannot be constructed from a URL that includes credentials"),
        "{refused}"
    );
    // An absolute URL without userinfo works: Chrome adds the cached credentials.
    let absolute = "return fetch(location.origin + arguments[0]).then(r => r.status)";
    assert_eq!(
        browser.execute(absolute, vec![json!("/v3/images")]).await,
        json!(200)
    );
    let v3 = server
        .seen()
        .into_iter()
        .filter(|(path, ..)| path == "/v3/images")
        .collect::<Vec<_>>();
    eprintln!("{name}: /v3/images after a navigation with userinfo: {v3:?}");
    assert_eq!(v3.last().unwrap().1, auth);

    // Later navigations without userinfo use the cache too, and relative fetch() works.
    browser.goto(&format!("{}/ui/again", server.origin)).await;
    assert_eq!(browser.title().await, "secret");
    assert_eq!(
        browser.execute(relative, vec![json!("/v3/more")]).await,
        json!(200)
    );
    let seen = server.seen();
    eprintln!("{name}: all requests: {seen:?}");
    assert_eq!(seen.last().unwrap().1, auth);
}
