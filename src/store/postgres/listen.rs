//! Other nodes' changes: a connection of its own, outside the pool, LISTENs on the
//! channel a trigger on `counters` notifies at every commit that took seqs (its
//! payload: the highest). Each notification, and each (re)connection (which reads
//! the counters once the LISTEN is in place), moves the seq this node knows to be
//! durable; what follows it reads the records from there, so a lost connection
//! loses no record.

use super::pool::{describe, scrub};
use super::*;

/// The channel the `counters_notify` trigger sends on (schema 1.1).
pub(super) const CHANNEL: &str = "image_catalog_changes";
/// The longest pause between two attempts to connect again.
const MOST_BACKOFF: Duration = Duration::from_secs(5);

impl Inner {
    /// Listens for other nodes' commits while the store lives, connecting again after
    /// any failure.
    pub(super) async fn listen_loop(inner: std::sync::Weak<Inner>) {
        let mut backoff = Duration::from_millis(100);
        let mut failing = false;
        loop {
            // Only what the listener needs: holding the store would keep it alive.
            let Some((config, tls, landed, secrets, timeout)) = inner.upgrade().map(|inner| {
                (
                    inner.manager.0.clone(),
                    inner.manager.1.clone(),
                    inner.landed.clone(),
                    inner.secrets.clone(),
                    inner.options.connect_timeout,
                )
            }) else {
                return;
            };
            let listened = listen(&config, tls, &landed, timeout, || {
                if failing {
                    log::info!("listening for other nodes' changes again");
                }
                failing = false;
                backoff = Duration::from_millis(100);
            })
            .await;
            if let Err(why) = listened {
                if !failing {
                    log::warn!(
                        "not listening for other nodes' changes ({}); waiting requests see \
                         this node's changes only until the connection is back",
                        scrub(why, &secrets)
                    );
                }
                failing = true;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MOST_BACKOFF);
        }
    }
}

/// One connection's life: LISTEN, catch up, then follow its notifications until it
/// fails. `listening` is called once the LISTEN is in place.
async fn listen(
    config: &tokio_postgres::Config,
    tls: MakeRustlsConnect,
    landed: &watch::Sender<u64>,
    timeout: Duration,
    listening: impl FnOnce(),
) -> Result<(), String> {
    use futures_util::StreamExt;
    let bounded =
        |what: &'static str| move |_| format!("{what} took more than {} ms", timeout.as_millis());
    let (client, mut connection) = tokio::time::timeout(timeout, config.connect(tls))
        .await
        .map_err(bounded("connecting"))?
        .map_err(|e| describe(&e))?;
    let (sender, mut notifications) = mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(tokio_postgres::AsyncMessage::Notification(notification)) => {
                    if sender.send(Ok(notification.payload().to_owned())).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    let _ = sender.send(Err(describe(&e)));
                    return;
                }
            }
        }
        let _ = sender.send(Err("the database closed the connection".into()));
    });
    let caught_up = async {
        client
            .batch_execute(&format!("LISTEN {CHANNEL}"))
            .await
            .map_err(|e| describe(&e))?;
        // After the LISTEN: a commit before it is counted here, one after it notifies.
        let row = client
            .query_one("SELECT next_seq - 1 FROM counters WHERE id = 1", &[])
            .await
            .map_err(|e| describe(&e))?;
        Ok::<i64, String>(row.get(0))
    };
    let result = async {
        let seq = tokio::time::timeout(timeout, caught_up)
            .await
            .map_err(bounded("LISTEN"))??;
        landed_up_to(landed, seq);
        listening();
        while let Some(notification) = notifications.recv().await {
            let payload = notification?;
            match payload.parse::<i64>() {
                Ok(seq) => landed_up_to(landed, seq),
                Err(_) => log::warn!("a change notification that is not a seq: {payload:?}"),
            }
        }
        Err("the connection ended".to_owned())
    }
    .await;
    driver.abort();
    result
}
