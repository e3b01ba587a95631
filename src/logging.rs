//! env_logger, with its output written by a background thread.
//!
//! An access line per request written straight to stderr costs a system call and a
//! contended lock on every request: a third of the throughput of a cached GET (see
//! bench/RESULTS.md). Here the request workers only format the line and queue it; one
//! thread writes whatever is queued in one go, then naps briefly so that under load
//! lines pile up instead of each one waking it (a wake-up is a system call for the
//! worker that logs). A line reaches stderr at most `NAP` after it was logged.

use std::io::{BufWriter, Write};
use std::sync::OnceLock;
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::time::Duration;

/// How long the writer waits after each write before it looks at the queue again.
const NAP: Duration = Duration::from_millis(20);

enum Message {
    Line(Vec<u8>),
    /// Answered once everything queued before it is written.
    Flush(SyncSender<()>),
}

static QUEUE: OnceLock<Sender<Message>> = OnceLock::new();

/// What env_logger writes to: the queue.
struct Queue(Sender<Message>);

impl Write for Queue {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .send(Message::Line(buf.to_vec()))
            .map_err(|_| std::io::Error::other("the log writer has stopped"))?;
        Ok(buf.len())
    }

    /// env_logger flushes after every record; writing is the background thread's job.
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Sets up env_logger (`RUST_LOG`, default `info`) with the background writer.
pub fn init() {
    let (sender, receiver) = mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name("log-writer".into())
        .spawn(move || write_queued(receiver));
    let mut builder =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    if spawned.is_ok() {
        let _ = QUEUE.set(sender.clone());
        builder.target(env_logger::Target::Pipe(Box::new(Queue(sender))));
    }
    builder.init();
}

/// Logs one access line, `target: "access"` at info, as env_logger would lay it out.
///
/// When env_logger writes through the queue, the line is built here and queued
/// directly: env_logger's formatting and its writer lock were a tenth of a cached
/// GET (bench/RESULTS.md). Whether the line is logged is still env_logger's call
/// (`RUST_LOG`).
pub fn access(
    method: &str,
    route: &str,
    status: u16,
    elapsed: Duration,
    user: &str,
    request_id: &str,
) {
    if !log::log_enabled!(target: "access", log::Level::Info) {
        return;
    }
    let tenths_of_ms = elapsed.as_micros() / 100;
    let Some(queue) = QUEUE.get() else {
        log::info!(
            target: "access",
            "{method} {route} {status} {}.{}ms user={user} request_id={request_id}",
            tenths_of_ms / 10,
            tenths_of_ms % 10
        );
        return;
    };
    let mut numbers = itoa::Buffer::new();
    let mut line = String::with_capacity(160);
    line.push('[');
    TIMESTAMP.with(|cached| line.push_str(cached.borrow_mut().now()));
    line.push_str(" INFO  access] ");
    for part in [method, " ", route, " ", numbers.format(status), " "] {
        line.push_str(part);
    }
    line.push_str(numbers.format(tenths_of_ms / 10));
    line.push('.');
    line.push_str(numbers.format(tenths_of_ms % 10));
    for part in ["ms user=", user, " request_id=", request_id, "\n"] {
        line.push_str(part);
    }
    let _ = queue.send(Message::Line(line.into_bytes()));
}

/// The current second as env_logger prints it, formatted once per second per thread.
struct SecondsClock {
    second: i64,
    text: String,
}

thread_local! {
    static TIMESTAMP: std::cell::RefCell<SecondsClock> =
        const { std::cell::RefCell::new(SecondsClock { second: i64::MIN, text: String::new() }) };
}

impl SecondsClock {
    fn now(&mut self) -> &str {
        let now = time::OffsetDateTime::now_utc();
        let second = now.unix_timestamp();
        if second != self.second {
            self.second = second;
            self.text = format!(
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
                now.year(),
                u8::from(now.month()),
                now.day(),
                now.hour(),
                now.minute(),
                now.second()
            );
        }
        &self.text
    }
}

/// Waits until every line logged so far is written: call before the process exits.
pub fn flush() {
    let Some(queue) = QUEUE.get() else { return };
    let (done, written) = mpsc::sync_channel(1);
    if queue.send(Message::Flush(done)).is_ok() {
        let _ = written.recv();
    }
}

fn write_queued(queue: Receiver<Message>) {
    let mut out = BufWriter::with_capacity(64 * 1024, std::io::stderr());
    while let Ok(first) = queue.recv() {
        let mut waiting = Vec::new();
        for message in std::iter::once(first).chain(std::iter::from_fn(|| queue.try_recv().ok())) {
            match message {
                Message::Line(line) => {
                    let _ = out.write_all(&line);
                }
                Message::Flush(done) => waiting.push(done),
            }
        }
        let _ = out.flush();
        let flushing = !waiting.is_empty();
        for done in waiting {
            let _ = done.send(());
        }
        // Someone waits for the log to be complete: the process is about to exit.
        if !flushing {
            std::thread::sleep(NAP);
        }
    }
}
