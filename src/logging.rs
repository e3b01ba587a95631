//! env_logger, with its output written by a background thread.
//!
//! An access line per request written straight to stderr costs a system call and a
//! contended lock on every request: a third of the throughput of a cached GET (see
//! bench/RESULTS.md). Here the request workers only format the line and queue it; one
//! thread writes whatever is queued in one go, then naps briefly so that under load
//! lines pile up instead of each one waking it (a wake-up is a system call for the
//! worker that logs). A line reaches stderr at most `NAP` after it was logged.
//!
//! The queue holds at most `QUEUE_BYTES`: when stderr is not read (a full pipe), lines
//! past it are dropped, never waited for, and counted; the writer says how many once
//! it can write again.

use std::io::{BufWriter, Write};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// How long the writer waits after each write before it looks at the queue again.
const NAP: Duration = Duration::from_millis(20);

/// The most memory that lines waiting for the writer may take: about ten thousand
/// access lines.
pub const QUEUE_BYTES: usize = 2 * 1024 * 1024;

enum Message {
    Line(Vec<u8>),
    /// Answered once everything queued before it is written.
    Flush(SyncSender<()>),
}

static QUEUE: OnceLock<LogQueue> = OnceLock::new();

/// The sending end of the queue; never blocks.
#[derive(Clone)]
struct LogQueue {
    sender: Sender<Message>,
    counts: Arc<Counts>,
}

/// What the senders and the writer share.
struct Counts {
    bound: usize,
    /// Bytes of the lines queued and not yet taken by the writer.
    queued: AtomicUsize,
    /// Lines dropped since start.
    dropped: AtomicU64,
    /// Lines dropped since the writer last said so.
    unreported: AtomicU64,
}

impl LogQueue {
    fn new(bound: usize) -> (LogQueue, Receiver<Message>, Arc<Counts>) {
        let (sender, receiver) = mpsc::channel();
        let counts = Arc::new(Counts {
            bound,
            queued: AtomicUsize::new(0),
            dropped: AtomicU64::new(0),
            unreported: AtomicU64::new(0),
        });
        let queue = LogQueue {
            sender,
            counts: counts.clone(),
        };
        (queue, receiver, counts)
    }

    /// Queues `line`, or drops and counts it when the queue is full.
    fn push(&self, line: Vec<u8>) {
        let cost = cost(&line);
        let bound = self.counts.bound;
        let room = self
            .counts
            .queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |queued| {
                (queued + cost <= bound).then_some(queued + cost)
            });
        if room.is_err() {
            self.counts.dropped.fetch_add(1, Ordering::Relaxed);
            self.counts.unreported.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if self.sender.send(Message::Line(line)).is_err() {
            // The writer is gone: nothing will take the line.
            self.counts.queued.fetch_sub(cost, Ordering::AcqRel);
        }
    }
}

/// The memory a queued line holds.
fn cost(line: &Vec<u8>) -> usize {
    line.capacity() + std::mem::size_of::<Message>()
}

/// Log lines dropped since start because the queue was full.
pub fn dropped_lines() -> u64 {
    QUEUE
        .get()
        .map_or(0, |queue| queue.counts.dropped.load(Ordering::Relaxed))
}

/// What env_logger writes to: the queue.
struct Queue(LogQueue);

impl Write for Queue {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.push(buf.to_vec());
        Ok(buf.len())
    }

    /// env_logger flushes after every record; writing is the background thread's job.
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Sets up env_logger (`RUST_LOG`, default `info`) with the background writer.
pub fn init() {
    let (queue, receiver, counts) = LogQueue::new(QUEUE_BYTES);
    let spawned = std::thread::Builder::new()
        .name("log-writer".into())
        .spawn(move || write_queued(receiver, &counts, std::io::stderr()));
    let mut builder =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    if spawned.is_ok() {
        let _ = QUEUE.set(queue.clone());
        builder.target(env_logger::Target::Pipe(Box::new(Queue(queue))));
    }
    builder.init();
}

/// Logs one access line, `target: "access"` at info, as env_logger would lay it out.
///
/// When env_logger writes through the queue, the line is built here and queued
/// directly: env_logger's formatting and its writer lock were a tenth of a cached
/// GET (bench/RESULTS.md). Whether the line is logged is still env_logger's call
/// (`RUST_LOG`).
/// `path` is the path as the client sent it (percent-encoded, so it cannot break the
/// line); `client` the address the request came from (behind a trusted proxy, the
/// one `X-Forwarded-For` names).
pub fn access(
    method: &str,
    path: &str,
    status: u16,
    elapsed: Duration,
    client: Option<std::net::IpAddr>,
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
            "{method} {path} {status} {}.{}ms client={} user={user} request_id={request_id}",
            tenths_of_ms / 10,
            tenths_of_ms % 10,
            client.map_or_else(|| "-".to_owned(), |c| c.to_string())
        );
        return;
    };
    let mut numbers = itoa::Buffer::new();
    let mut line = String::with_capacity(160);
    line.push('[');
    TIMESTAMP.with(|cached| line.push_str(cached.borrow_mut().now()));
    line.push_str(" INFO  access] ");
    for part in [method, " ", path, " ", numbers.format(status), " "] {
        line.push_str(part);
    }
    line.push_str(numbers.format(tenths_of_ms / 10));
    line.push('.');
    line.push_str(numbers.format(tenths_of_ms % 10));
    line.push_str("ms client=");
    match client {
        Some(client) => {
            use std::fmt::Write;
            let _ = write!(line, "{client}");
        }
        None => line.push('-'),
    }
    for part in [" user=", user, " request_id=", request_id, "\n"] {
        line.push_str(part);
    }
    queue.push(line.into_bytes());
}

/// The current second as env_logger prints it, formatted once per second per thread.
struct SecondsClock {
    second: i64,
    text: String,
}

const LOG_TIME: &[time::format_description::BorrowedFormatItem<'_>] =
    time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");

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
            self.text = now
                .format(LOG_TIME)
                .expect("a date-time has every component the format names");
        }
        &self.text
    }
}

/// Waits until every line logged so far is written, for 10 s at most: call before the
/// process exits. A log nobody reads must not keep the process from exiting.
pub fn flush() {
    let Some(queue) = QUEUE.get() else { return };
    queue.flush(Duration::from_secs(10));
}

impl LogQueue {
    /// Waits until every line queued so far is written, or `at_most`.
    fn flush(&self, at_most: Duration) {
        let (done, written) = mpsc::sync_channel(1);
        if self.sender.send(Message::Flush(done)).is_ok() {
            let _ = written.recv_timeout(at_most);
        }
    }
}

fn write_queued(queue: Receiver<Message>, counts: &Counts, out: impl Write) {
    let mut out = BufWriter::with_capacity(64 * 1024, out);
    while let Ok(first) = queue.recv() {
        let mut waiting = Vec::new();
        for message in std::iter::once(first).chain(std::iter::from_fn(|| queue.try_recv().ok())) {
            match message {
                Message::Line(line) => {
                    // Taken: from here on at most this one line waits on a full pipe.
                    counts.queued.fetch_sub(cost(&line), Ordering::AcqRel);
                    let _ = out.write_all(&line);
                }
                Message::Flush(done) => waiting.push(done),
            }
        }
        let dropped = counts.unreported.swap(0, Ordering::Relaxed);
        if dropped > 0 {
            let _ = out.write_all(dropped_warning(dropped, counts.bound).as_bytes());
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

/// The line that says how many lines were dropped, laid out as env_logger's.
fn dropped_warning(dropped: u64, bound: usize) -> String {
    let mut line = String::from("[");
    TIMESTAMP.with(|cached| line.push_str(cached.borrow_mut().now()));
    line.push_str(&format!(
        " WARN  image_catalog::logging] {dropped} log lines were dropped while the log was \
         not being read (more than {bound} bytes were waiting to be written)\n"
    ));
    line
}

/// Ends the process now, with the log flushed, without running destructors or waiting
/// for threads that may be stuck (in a flush that never returns): what fail-stop
/// needs.
pub fn exit_now(code: i32) -> ! {
    flush();
    // SAFETY: _exit ends the process at once; nothing after it runs.
    unsafe { libc::_exit(code) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn the_log_clock_prints_whole_seconds_in_utc() {
        let mut clock = SecondsClock {
            second: i64::MIN,
            text: String::new(),
        };
        let text = clock.now().to_owned();
        let parsed =
            time::OffsetDateTime::parse(&text, &time::format_description::well_known::Rfc3339)
                .expect("RFC 3339");
        assert_eq!(text.len(), "YYYY-MM-DDTHH:MM:SSZ".len(), "{text}");
        assert!(text.ends_with('Z'), "{text}");
        assert_eq!(parsed.nanosecond(), 0, "{text}");
    }

    /// A log reader that stops reading until it is let go: a full pipe.
    struct Stalled {
        blocked: mpsc::Sender<()>,
        let_go: Receiver<()>,
        stalled: bool,
        written: Arc<Mutex<Vec<u8>>>,
    }

    impl Write for Stalled {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if self.stalled {
                let _ = self.blocked.send(());
                let _ = self.let_go.recv();
                self.stalled = false;
            }
            self.written.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_log_nobody_reads_holds_at_most_the_bound_and_the_drops_are_counted_and_told() {
        let bound = 64 * 1024;
        let (queue, receiver, counts) = LogQueue::new(bound);
        let (blocked, is_blocked) = mpsc::channel();
        let (let_go, go) = mpsc::channel();
        let written = Arc::new(Mutex::new(Vec::new()));
        let out = Stalled {
            blocked,
            let_go: go,
            stalled: true,
            written: written.clone(),
        };
        let writer = std::thread::spawn({
            let counts = counts.clone();
            move || write_queued(receiver, &counts, out)
        });

        queue.push(b"first\n".to_vec());
        is_blocked
            .recv_timeout(Duration::from_secs(60))
            .expect("the writer writes, and blocks");
        let mut line = vec![b'x'; 1000];
        line[999] = b'\n';
        let fits = bound / cost(&line);
        let pushed = 10 * fits;
        for _ in 0..pushed {
            queue.push(line.clone());
            assert!(counts.queued.load(Ordering::Acquire) <= bound);
        }
        let dropped = (pushed - fits) as u64;
        assert_eq!(counts.dropped.load(Ordering::Relaxed), dropped);

        // Exiting does not wait for a log nobody reads.
        queue.flush(Duration::from_millis(10));
        let_go.send(()).unwrap();
        queue.flush(Duration::from_secs(60));
        let text = String::from_utf8(written.lock().unwrap().clone()).unwrap();
        let warning = format!("{dropped} log lines were dropped while the log was not being read");
        assert_eq!(
            text.matches(&warning).count(),
            1,
            "{}",
            &text[text.len() - 300..]
        );
        assert_eq!(text.lines().filter(|l| l.starts_with('x')).count(), fits);
        assert_eq!(counts.queued.load(Ordering::Acquire), 0);

        // Once told, not told again.
        queue.push(b"after\n".to_vec());
        queue.flush(Duration::from_secs(60));
        let text = String::from_utf8(written.lock().unwrap().clone()).unwrap();
        assert_eq!(text.matches("were dropped").count(), 1);
        assert!(text.ends_with("after\n"));
        drop(queue);
        writer.join().unwrap();
    }
}
