//! The client of bench/feed.py: many requests that wait for changes, and a load of
//! durable POSTs beside them. Run by the script; by hand:
//!
//!     feed_bench wake  BASE AUTH PID COUNT SOURCES
//!         COUNT long polls (GET /v3/audit?after=S&wait=5m) from SOURCES loopback
//!         addresses (127.0.0.1, 127.0.0.2, ...); once the server counts them all
//!         waiting, the server's RSS (of PID), then one POST: the time from its 200 to
//!         each poll's answer.
//!     feed_bench load  BASE AUTH KIND COUNT SECONDS CONNECTIONS
//!         COUNT waiters of KIND (`read`: blocking GETs of ids nobody writes; `stream`:
//!         followers of /v3/changes, reading every event), then SECONDS of POSTs from
//!         CONNECTIONS connections: the rate of 200s.
//!
//! Prints one JSON object per run on stdout.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;

type Error = Box<dyn std::error::Error + Send + Sync>;

fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match args.first().map(String::as_str) {
        Some("wake") if args.len() == 6 => runtime.block_on(wake(
            &args[1],
            &args[2],
            args[3].parse()?,
            args[4].parse()?,
            args[5].parse()?,
        )),
        Some("load") if args.len() == 7 => runtime.block_on(load(
            &args[1],
            &args[2],
            &args[3],
            args[4].parse()?,
            args[5].parse()?,
            args[6].parse()?,
        )),
        _ => Err("usage: see the comment at the top of examples/feed_bench.rs".into()),
    }
}

/// A client whose connections come from `source`, each request on a connection of
/// its own while others wait.
fn client_from(source: IpAddr) -> Result<reqwest::Client, Error> {
    Ok(reqwest::Client::builder()
        .local_address(source)
        .timeout(Duration::from_secs(600))
        .build()?)
}

fn source(i: usize, sources: usize) -> IpAddr {
    let n = (i % sources) as u32 + 1;
    IpAddr::V4(Ipv4Addr::from(0x7f00_0000 + n))
}

/// The number a metric line of the server's `/metrics` gives.
async fn metric(client: &reqwest::Client, base: &str, name: &str) -> Result<f64, Error> {
    let text = client
        .get(format!("{base}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    Ok(text
        .lines()
        .find(|line| line.starts_with(name))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
        .unwrap_or(0.0))
}

/// Resolves once the server counts `count` waiting requests.
async fn until_waiting(client: &reqwest::Client, base: &str, count: usize) -> Result<(), Error> {
    let started = Instant::now();
    while metric(client, base, "image_catalog_waiting_requests ").await? < count as f64 {
        if started.elapsed() > Duration::from_secs(300) {
            return Err(format!("{count} waiters were not all waiting after 300 s").into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse().ok())
        })
        .unwrap_or(0)
}

async fn post(client: &reqwest::Client, base: &str, auth: &str, id: &str) -> Result<u16, Error> {
    let body = format!(r#"{{"id":"{id}","provider":"ec2","remote_user":"u","name":"bench"}}"#);
    let response = client
        .post(format!("{base}/v3/image"))
        .header("authorization", auth)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await?;
    Ok(response.status().as_u16())
}

fn median_max(mut values: Vec<f64>) -> (f64, f64) {
    values.sort_by(f64::total_cmp);
    let median = values.get(values.len() / 2).copied().unwrap_or(0.0);
    (median, values.last().copied().unwrap_or(0.0))
}

async fn wake(base: &str, auth: &str, pid: u32, count: usize, sources: usize) -> Result<(), Error> {
    let control = reqwest::Client::new();
    let idle_kb = rss_kb(pid);
    let after = {
        let response = control
            .get(format!("{base}/v3/audit?limit=1"))
            .header("authorization", auth)
            .send()
            .await?;
        response
            .headers()
            .get("x-audit-seq")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let clients: Vec<reqwest::Client> = (0..sources)
        .map(|i| client_from(source(i, sources)))
        .collect::<Result<_, _>>()?;
    let written = Arc::new(tokio::sync::OnceCell::<Instant>::new());
    let mut polls = Vec::with_capacity(count);
    for i in 0..count {
        let client = clients[i % sources].clone();
        let url = format!("{base}/v3/audit?after={after}&wait=5m");
        let (auth, written) = (auth.to_owned(), written.clone());
        polls.push(tokio::spawn(async move {
            let response = client.get(url).header("authorization", auth).send().await?;
            let status = response.status().as_u16();
            let body = response.bytes().await?;
            let answered = Instant::now();
            let since = written
                .get()
                .map(|w| answered.saturating_duration_since(*w));
            Ok::<_, Error>((status, body.len(), since))
        }));
    }
    until_waiting(&control, base, count).await?;
    let waiting_kb = rss_kb(pid);
    let status = post(&control, base, auth, &format!("wake-{after}")).await?;
    let _ = written.set(Instant::now());
    let mut delays = Vec::with_capacity(count);
    let mut bad = 0;
    for poll in polls {
        let (status, _, since) = poll.await??;
        if status != 200 {
            bad += 1;
        }
        delays.push(since.map_or(0.0, |d| d.as_secs_f64() * 1000.0));
    }
    let (median, max) = median_max(delays);
    println!(
        "{{\"waiters\":{count},\"sources\":{sources},\"post_status\":{status},\"not_200\":{bad},\
         \"rss_idle_kb\":{idle_kb},\"rss_waiting_kb\":{waiting_kb},\
         \"bytes_per_waiter\":{:.0},\"wake_ms_median\":{median:.1},\"wake_ms_max\":{max:.1}}}",
        (waiting_kb.saturating_sub(idle_kb) as f64 * 1024.0) / count.max(1) as f64
    );
    Ok(())
}

async fn load(
    base: &str,
    auth: &str,
    kind: &str,
    count: usize,
    seconds: u64,
    connections: usize,
) -> Result<(), Error> {
    let control = reqwest::Client::new();
    let sources = count.div_ceil(1000).max(1);
    let clients: Vec<reqwest::Client> = (0..sources)
        .map(|i| client_from(source(i, sources)))
        .collect::<Result<_, _>>()?;
    let events = Arc::new(AtomicU64::new(0));
    let mut waiters = Vec::with_capacity(count);
    for i in 0..count {
        let client = clients[i % sources].clone();
        let (auth, events) = (auth.to_owned(), events.clone());
        let request = match kind {
            "read" => client
                .get(format!("{base}/v3/image/nobody-writes-{i}"))
                .header("prefer", "wait=300"),
            "stream" => client
                .get(format!("{base}/v3/changes"))
                .header("accept", "text/event-stream"),
            other => return Err(format!("no kind {other}: read or stream").into()),
        };
        waiters.push(tokio::spawn(async move {
            let response = request.header("authorization", auth).send().await?;
            let mut body = response.bytes_stream();
            while let Some(chunk) = body.next().await {
                let chunk = chunk?;
                let seen = chunk.windows(4).filter(|w| w == b"id: ").count();
                events.fetch_add(seen as u64, Ordering::Relaxed);
            }
            Ok::<_, Error>(())
        }));
    }
    if count > 0 {
        until_waiting(&control, base, count).await?;
    }
    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let writers: Vec<_> = (0..connections)
        .map(|w| {
            let (base, auth, done) = (base.to_owned(), auth.to_owned(), done.clone());
            let kind = kind.to_owned();
            tokio::spawn(async move {
                let client = reqwest::Client::new();
                let mut i = 0u64;
                while Instant::now() < deadline {
                    let status = post(
                        &client,
                        &base,
                        &auth,
                        &format!("load-{kind}-{count}-{w}-{i}"),
                    )
                    .await?;
                    if status == 200 {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    i += 1;
                }
                Ok::<_, Error>(())
            })
        })
        .collect();
    for writer in writers {
        writer.await??;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let posts = done.load(Ordering::Relaxed);
    println!(
        "{{\"kind\":\"{kind}\",\"waiters\":{count},\"posts\":{posts},\"posts_per_s\":{:.0},\
         \"events_read\":{}}}",
        posts as f64 / elapsed,
        events.load(Ordering::Relaxed)
    );
    for waiter in waiters {
        waiter.abort();
    }
    Ok(())
}
