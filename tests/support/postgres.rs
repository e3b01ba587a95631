//! A private PostgreSQL for tests.
//!
//! One cluster per test process ([`shared`]), started on first use in a temp folder
//! on a free loopback port, with TLS on (a CA and a server certificate made here) and
//! `fsync=off` (the database's own durability is not what the tests prove); each test
//! takes a database of its own ([`Cluster::database`]). Tests that stop the database
//! start a cluster of their own ([`Cluster::start`]).
//!
//! Nothing is left running: the postmaster gets SIGQUIT when the test process exits
//! (an `atexit` hook), or dies (a parent-death signal, set in the child, tied to a
//! thread that lives as long as the process), and every start sweeps the folders of
//! earlier runs whose process is gone. As root, PostgreSQL runs as the `postgres`
//! user, since it refuses root.
//!
//! Without PostgreSQL binaries (`/usr/lib/postgresql/15/bin`, or `PG_BIN`), a test
//! is skipped with one printed line, unless `CI=true`: then it fails.

#![allow(dead_code)]

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock, mpsc};
use std::time::{Duration, Instant};

const DEFAULT_BIN: &str = "/usr/lib/postgresql/15/bin";
/// Temp folders of clusters are named `PREFIX<pid of the test process>-<n>`.
const PREFIX: &str = "image-catalog-pg-";
const USER: &str = "postgres";
const START_DEADLINE: Duration = Duration::from_secs(60);

/// A running cluster.
pub struct Cluster {
    root: PathBuf,
    data: PathBuf,
    socket: PathBuf,
    bin: PathBuf,
    owner: Option<(u32, u32)>,
    port: Mutex<u16>,
    postmaster: Mutex<Option<Child>>,
    password: String,
    next_db: AtomicU32,
    /// The CA that signed the server's certificate (`sslrootcert`).
    pub ca_file: PathBuf,
    /// A CA that signed nothing the server shows.
    pub other_ca_file: PathBuf,
}

/// A database of one test.
pub struct TestDb {
    pub name: String,
    /// `postgres://postgres:PASSWORD@127.0.0.1:PORT/NAME?sslmode=disable`
    pub url: String,
    pub password: String,
    pub port: u16,
}

/// Why the tests cannot have a PostgreSQL here, if they cannot.
pub fn missing() -> Option<String> {
    let bin = bin_dir();
    for tool in ["initdb", "postgres", "psql"] {
        if !bin.join(tool).is_file() {
            return Some(format!(
                "no {} (set PG_BIN to PostgreSQL's bin folder)",
                bin.join(tool).display()
            ));
        }
    }
    if is_root() && postgres_user().is_none() {
        return Some(
            "running as root, and there is no 'postgres' user to run PostgreSQL as".into(),
        );
    }
    None
}

fn bin_dir() -> PathBuf {
    std::env::var_os("PG_BIN").map_or_else(|| PathBuf::from(DEFAULT_BIN), PathBuf::from)
}

/// `None` (and one line printed) when PostgreSQL is not installed and this is not CI.
pub fn available() -> bool {
    static SAID: OnceLock<()> = OnceLock::new();
    let Some(why) = missing() else {
        return true;
    };
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("the PostgreSQL tests are required in CI, but {why}");
    }
    // Straight to stderr: the test harness would hide an `eprintln!` of a passing test.
    SAID.get_or_init(|| {
        use std::io::Write;
        let _ = writeln!(io::stderr(), "skipping the PostgreSQL tests: {why}");
    });
    false
}

/// The cluster this test process shares; `None` when the tests are to be skipped.
pub fn shared() -> Option<&'static Cluster> {
    static SHARED: OnceLock<Cluster> = OnceLock::new();
    if !available() {
        return None;
    }
    Some(SHARED.get_or_init(|| Cluster::boot().expect("starting the test PostgreSQL")))
}

/// A fresh database on the shared cluster; `None` when the tests are to be skipped.
pub fn database() -> Option<TestDb> {
    shared().map(Cluster::database)
}

impl Cluster {
    /// A cluster of its own, for a test that stops and starts it; `None` when the
    /// tests are to be skipped. Stopped and removed when dropped.
    pub fn start() -> Option<Cluster> {
        if !available() {
            return None;
        }
        Some(Cluster::boot().expect("starting a test PostgreSQL"))
    }

    fn boot() -> io::Result<Cluster> {
        sweep();
        static COUNT: AtomicU32 = AtomicU32::new(0);
        let n = COUNT.fetch_add(1, Ordering::Relaxed);
        let root = std::env::temp_dir().join(format!("{PREFIX}{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(&root)?;
        fs::set_permissions(&root, fs::Permissions::from_mode(0o755))?;
        let owner = if is_root() { postgres_user() } else { None };
        let data = root.join("data");
        let socket = root.join("socket");
        let ssl = root.join("ssl");
        for dir in [&data, &socket, &ssl] {
            fs::create_dir(dir)?;
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
        }
        let password = format!("pw-{}-{:08x}", std::process::id(), rand_u32());
        let pwfile = ssl.join("pwfile");
        fs::write(&pwfile, &password)?;
        let (ca_file, other_ca_file) = write_certificates(&ssl)?;
        if let Some((uid, gid)) = owner {
            for path in [&data, &socket, &ssl] {
                chown(path, uid, gid)?;
            }
            for entry in fs::read_dir(&ssl)? {
                chown(&entry?.path(), uid, gid)?;
            }
        }
        let bin = bin_dir();
        let mut initdb = Command::new(bin.join("initdb"));
        initdb
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                USER,
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
                "--no-instructions",
            ])
            .args(["--auth-local=trust", "--auth-host=scram-sha-256"])
            .arg(format!("--pwfile={}", pwfile.display()))
            .env("LC_ALL", "C")
            .stdin(Stdio::null());
        as_owner(&mut initdb, owner);
        let out = initdb.output()?;
        if !out.status.success() {
            return Err(io::Error::other(format!(
                "initdb failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        let cluster = Cluster {
            root,
            data,
            socket,
            bin,
            owner,
            port: Mutex::new(0),
            postmaster: Mutex::new(None),
            password,
            next_db: AtomicU32::new(0),
            ca_file,
            other_ca_file,
        };
        let mut last = None;
        for _ in 0..5 {
            *cluster.port.lock().unwrap() = free_port()?;
            match cluster.run_postmaster() {
                Ok(()) => return Ok(cluster),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| io::Error::other("the postmaster did not start")))
    }

    pub fn port(&self) -> u16 {
        *self.port.lock().unwrap()
    }

    pub fn password(&self) -> &str {
        &self.password
    }

    /// The URL of `db` with extra query words (`sslmode=...` and the like).
    pub fn url_with(&self, db: &str, query: &str) -> String {
        format!(
            "postgres://{USER}:{}@127.0.0.1:{}/{db}?{query}",
            self.password,
            self.port()
        )
    }

    /// A new, empty database. Its locale is `C.utf8`, whose case rules cover all of
    /// Unicode (as most installs' do): SQL that leans on the database's locale where
    /// the store's rules say ASCII (the search's case folding) answers otherwise here.
    pub fn database(&self) -> TestDb {
        let n = self.next_db.fetch_add(1, Ordering::Relaxed);
        let name = format!("t_{n}");
        self.psql(&format!(
            "CREATE DATABASE {name} LOCALE 'C.utf8' TEMPLATE template0"
        ));
        TestDb {
            url: self.url_with(&name, "sslmode=disable"),
            name,
            password: self.password.clone(),
            port: self.port(),
        }
    }

    /// Runs `sql` as the superuser over the Unix socket; panics if it fails.
    pub fn psql(&self, sql: &str) -> String {
        self.psql_in("postgres", sql)
    }

    pub fn psql_in(&self, db: &str, sql: &str) -> String {
        let out = Command::new(self.bin.join("psql"))
            .arg("-h")
            .arg(&self.socket)
            .args(["-p", &self.port().to_string(), "-U", USER, "-d", db])
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .stdin(Stdio::null())
            .output()
            .expect("running psql");
        assert!(
            out.status.success(),
            "psql {sql:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Stops the cluster at once, as `pg_ctl stop -m immediate` does (SIGQUIT).
    pub fn stop_immediate(&self) {
        let child = self.postmaster.lock().unwrap().take();
        if let Some(mut child) = child {
            unregister(child.id());
            // SAFETY: kill on a pid of a child of ours that was not reaped yet.
            unsafe { libc::kill(child.id() as i32, libc::SIGQUIT) };
            let _ = child.wait();
        }
    }

    /// Starts the cluster again, on the same data and port.
    pub fn restart(&self) {
        self.stop_immediate();
        self.run_postmaster()
            .expect("restarting the test PostgreSQL");
    }

    fn run_postmaster(&self) -> io::Result<()> {
        let ssl = self.root.join("ssl");
        let log = fs::File::create(self.root.join("log"))?;
        if let Some((uid, gid)) = self.owner {
            chown(&self.root.join("log"), uid, gid)?;
        }
        let mut command = Command::new(self.bin.join("postgres"));
        command
            .arg("-D")
            .arg(&self.data)
            .args(["-p", &self.port().to_string()])
            .args(["-c", "listen_addresses=127.0.0.1"])
            .arg("-k")
            .arg(&self.socket)
            .args(["-c", "fsync=off", "-c", "full_page_writes=off"])
            .args(["-c", "max_connections=200", "-c", "shared_buffers=32MB"])
            .args(["-c", "ssl=on"])
            .arg("-c")
            .arg(format!(
                "ssl_cert_file={}",
                ssl.join("server.crt").display()
            ))
            .arg("-c")
            .arg(format!("ssl_key_file={}", ssl.join("server.key").display()))
            .env("LC_ALL", "C")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        as_owner(&mut command, self.owner);
        let parent = std::process::id();
        // SAFETY: prctl and getppid are async-signal-safe.
        unsafe {
            command.pre_exec(move || {
                // Runs after the uid change, which would clear the setting.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGQUIT) != 0 {
                    return Err(io::Error::last_os_error());
                }
                if libc::getppid() as u32 != parent {
                    return Err(io::Error::other("the test process is gone"));
                }
                Ok(())
            });
        }
        let mut child = spawn_kept(command)?;
        register(child.id(), &self.root);
        let pid_file = self.data.join("postmaster.pid");
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            if let Some(status) = child.try_wait()? {
                unregister(child.id());
                let log = fs::read_to_string(self.root.join("log")).unwrap_or_default();
                return Err(io::Error::other(format!(
                    "postgres exited ({status}): {log}"
                )));
            }
            // The postmaster writes "ready" as the last line of its pid file once it
            // accepts connections; there is nothing to await short of that.
            if let Ok(text) = fs::read_to_string(&pid_file)
                && text.lines().last().is_some_and(|l| l.trim() == "ready")
                && text
                    .lines()
                    .next()
                    .is_some_and(|l| l.trim() == child.id().to_string())
            {
                break;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                unregister(child.id());
                return Err(io::Error::other("postgres did not get ready in time"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        *self.postmaster.lock().unwrap() = Some(child);
        Ok(())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop_immediate();
        let _ = fs::remove_dir_all(&self.root);
    }
}

/// Spawns `command` from a thread that lives as long as the process: the
/// parent-death signal follows the thread that forked, not the process.
fn spawn_kept(command: Command) -> io::Result<Child> {
    type Order = (Command, mpsc::Sender<io::Result<Child>>);
    static KEEPER: OnceLock<Mutex<mpsc::Sender<Order>>> = OnceLock::new();
    let keeper = KEEPER.get_or_init(|| {
        let (sender, receiver) = mpsc::channel::<Order>();
        std::thread::Builder::new()
            .name("pg-keeper".into())
            .spawn(move || {
                for (mut command, reply) in receiver {
                    let _ = reply.send(command.spawn());
                }
                // Never reached while the process runs: the sender is static.
            })
            .expect("starting the postgres keeper thread");
        // SAFETY: registers a plain extern "C" function.
        unsafe { libc::atexit(stop_all_at_exit) };
        Mutex::new(sender)
    });
    let (reply, answer) = mpsc::channel();
    keeper
        .lock()
        .unwrap()
        .send((command, reply))
        .map_err(|_| io::Error::other("the keeper thread is gone"))?;
    answer
        .recv()
        .map_err(|_| io::Error::other("the keeper thread is gone"))?
}

/// Postmasters running, with their folders, for the exit hook.
static LIVE: Mutex<Vec<(u32, PathBuf)>> = Mutex::new(Vec::new());

fn register(pid: u32, root: &Path) {
    LIVE.lock().unwrap().push((pid, root.to_owned()));
}

fn unregister(pid: u32) {
    LIVE.lock().unwrap().retain(|(p, _)| *p != pid);
}

extern "C" fn stop_all_at_exit() {
    let live = match LIVE.lock() {
        Ok(mut live) => std::mem::take(&mut *live),
        Err(_) => return,
    };
    for (pid, root) in live {
        // SAFETY: signals and reaps a child of this process.
        unsafe {
            libc::kill(pid as i32, libc::SIGQUIT);
            libc::waitpid(pid as i32, std::ptr::null_mut(), 0);
        }
        let _ = fs::remove_dir_all(&root);
    }
}

/// Removes what killed test runs left: folders whose test process is gone, after
/// stopping a postmaster still running in them.
fn sweep() {
    static SWEPT: OnceLock<()> = OnceLock::new();
    SWEPT.get_or_init(|| {
        let Ok(entries) = fs::read_dir(std::env::temp_dir()) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(rest) = name.strip_prefix(PREFIX) else {
                continue;
            };
            let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<i32>().ok()) else {
                continue;
            };
            if pid as u32 == std::process::id() || process_alive(pid) {
                continue;
            }
            let root = entry.path();
            let pid_file = root.join("data").join("postmaster.pid");
            if let Some(postmaster) = fs::read_to_string(pid_file)
                .ok()
                .and_then(|t| t.lines().next().and_then(|l| l.trim().parse::<i32>().ok()))
                && is_postgres(postmaster)
            {
                // SAFETY: a signal to a postgres process of a dead test run.
                unsafe { libc::kill(postmaster, libc::SIGQUIT) };
                let deadline = Instant::now() + Duration::from_secs(10);
                while process_alive(postmaster) && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            let _ = fs::remove_dir_all(&root);
        }
    });
}

fn process_alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    let alive = unsafe { libc::kill(pid, 0) } == 0;
    alive || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

fn is_postgres(pid: i32) -> bool {
    fs::read(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|c| String::from_utf8_lossy(&c).contains("postgres"))
}

fn is_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn postgres_user() -> Option<(u32, u32)> {
    let name = CString::new(USER).ok()?;
    // SAFETY: getpwnam returns a pointer into static storage, read at once.
    unsafe {
        let entry = libc::getpwnam(name.as_ptr());
        if entry.is_null() {
            return None;
        }
        Some(((*entry).pw_uid, (*entry).pw_gid))
    }
}

fn as_owner(command: &mut Command, owner: Option<(u32, u32)>) {
    if let Some((uid, gid)) = owner {
        command
            .uid(uid)
            .gid(gid)
            .env("HOME", "/tmp")
            .env("USER", USER);
    }
}

fn chown(path: &Path, uid: u32, gid: u32) -> io::Result<()> {
    std::os::unix::fs::chown(path, Some(uid), Some(gid))
}

fn free_port() -> io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn rand_u32() -> u32 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(Instant::now()) as u32
}

/// A CA, a server certificate it signs for `localhost` (not for 127.0.0.1: a test
/// shows verify-full refusing the address), and an unrelated CA. Returns the CA files.
fn write_certificates(dir: &Path) -> io::Result<(PathBuf, PathBuf)> {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let err = |e: rcgen::Error| io::Error::other(e.to_string());
    let ca = |name: &str| -> Result<CertifiedIssuer<'static, KeyPair>, rcgen::Error> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        CertifiedIssuer::self_signed(params, KeyPair::generate()?)
    };
    let authority = ca("image-catalog test CA").map_err(err)?;
    let other = ca("some other CA").map_err(err)?;
    let key = KeyPair::generate().map_err(err)?;
    let server = CertificateParams::new(vec!["localhost".to_string()])
        .and_then(|p| p.signed_by(&key, &authority))
        .map_err(err)?;
    fs::write(dir.join("server.crt"), server.pem())?;
    let key_file = dir.join("server.key");
    fs::write(&key_file, key.serialize_pem())?;
    fs::set_permissions(&key_file, fs::Permissions::from_mode(0o600))?;
    let ca_file = dir.join("ca.crt");
    fs::write(&ca_file, authority.pem())?;
    let other_file = dir.join("other-ca.crt");
    fs::write(&other_file, other.pem())?;
    // The test process (root or not) reads the CA files; they are not secret.
    for file in [&ca_file, &other_file] {
        fs::set_permissions(file, fs::Permissions::from_mode(0o644))?;
    }
    Ok((ca_file, other_file))
}

/// Where a [`CutProxy`] cuts a connection, once armed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// Drops the message holding the pattern, and the connection: the server never
    /// sees it.
    Before,
    /// Passes the message on, then drops the connection before any answer comes
    /// back: the server acts on it, the client never learns how.
    After,
    /// Holds the message back and passes nothing more, leaving the connection open:
    /// a server that stopped answering.
    Stall,
}

/// The pattern a [`CutProxy`] waits for, and what it does then.
type Trigger = std::sync::Arc<Mutex<Option<(Vec<u8>, Cut)>>>;

/// A TCP proxy to the cluster that cuts the connection carrying a given message
/// (plaintext connections only: `sslmode=disable`), for tests of what the store
/// answers when a connection breaks at a given point.
pub struct CutProxy {
    pub port: u16,
    armed: Trigger,
}

impl CutProxy {
    pub fn to(target_port: u16) -> io::Result<CutProxy> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let armed: Trigger = Default::default();
        let shared = armed.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let Ok(server) = std::net::TcpStream::connect(("127.0.0.1", target_port)) else {
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let (Ok(client2), Ok(server2)) = (client.try_clone(), server.try_clone()) else {
                    continue;
                };
                let armed = shared.clone();
                // Client to server, watching for the pattern.
                std::thread::spawn(move || pipe(client, server, Some(armed)));
                // Server to client.
                std::thread::spawn(move || pipe(server2, client2, None));
            }
        });
        Ok(CutProxy { port, armed })
    }

    /// Cuts the next connection that sends `pattern`, then disarms.
    pub fn arm(&self, pattern: &[u8], cut: Cut) {
        *self.armed.lock().unwrap() = Some((pattern.to_vec(), cut));
    }
}

fn pipe(mut from: std::net::TcpStream, mut to: std::net::TcpStream, armed: Option<Trigger>) {
    use std::io::{Read, Write};
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let chunk = &buffer[..n];
        let cut = armed.as_ref().and_then(|armed| {
            let mut armed = armed.lock().unwrap();
            let hit = armed.as_ref().is_some_and(|(pattern, _)| {
                chunk
                    .windows(pattern.len())
                    .any(|w| w == pattern.as_slice())
            });
            if hit {
                armed.take().map(|(_, cut)| cut)
            } else {
                None
            }
        });
        if cut == Some(Cut::Stall) {
            // Swallow what the client sends until it gives up and closes.
            while matches!(from.read(&mut buffer), Ok(n) if n > 0) {}
            break;
        }
        if let Some(cut) = cut {
            // The client's side first, so that no answer reaches it; then, for
            // `After`, the message goes on, followed by the end of the stream: the
            // server reads and acts on it before it sees the end.
            let _ = from.shutdown(std::net::Shutdown::Both);
            if cut == Cut::After {
                let _ = to.write_all(chunk);
            }
            let _ = to.shutdown(std::net::Shutdown::Write);
            break;
        }
        if to.write_all(chunk).is_err() {
            break;
        }
    }
    let _ = from.shutdown(std::net::Shutdown::Both);
    let _ = to.shutdown(std::net::Shutdown::Both);
}
