//! Reads that arrive together go to the database together. While a statement of one
//! kind is on its way, the reads of that kind that come in wait; when it returns, they
//! all go as the next statement. A busy node then sends one statement for many
//! requests (one round trip, one wake-up of the server process), an idle one sends
//! each read at once, as before.
//!
//! Every read is answered by a statement sent after it arrived, never by one already
//! on its way: a read still sees every write acknowledged before it came, on this
//! node or any other.

use std::future::Future;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::oneshot;

use crate::store::StoreError;

type Reply<A> = oneshot::Sender<Result<A, StoreError>>;

pub(super) struct Coalescer<Q, A> {
    state: Mutex<State<Q, A>>,
    /// Statements of this kind on their way at once, at most.
    most: usize,
}

struct State<Q, A> {
    in_flight: usize,
    waiting: Vec<(Q, Reply<A>)>,
}

impl<Q: Send + 'static, A: Send + 'static> Coalescer<Q, A> {
    pub(super) fn new(most: usize) -> Arc<Self> {
        Arc::new(Coalescer {
            state: Mutex::new(State {
                in_flight: 0,
                waiting: Vec::new(),
            }),
            most: most.max(1),
        })
    }

    /// The answer to `query`, from `run` given it and the queries waiting beside it.
    /// `run` answers a batch in its order, one answer per query. It runs in a task of
    /// its own on this thread's runtime, so a request that goes away (its client
    /// hung up) takes no other request's answer with it.
    pub(super) async fn ask<R, F>(self: &Arc<Self>, query: Q, run: R) -> Result<A, StoreError>
    where
        R: Fn(Vec<Q>) -> F + Send + 'static,
        F: Future<Output = Result<Vec<A>, StoreError>> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let start = {
            let mut state = self.state.lock();
            state.waiting.push((query, reply));
            let start = state.in_flight < self.most;
            if start {
                state.in_flight += 1;
            }
            start
        };
        if start {
            tokio::spawn(self.clone().drive(run));
        }
        answer
            .await
            .unwrap_or_else(|_| Err(StoreError::Unavailable("the read was cut off".into())))
    }

    /// Runs what waits, then whatever came meanwhile, until nothing waits.
    async fn drive<R, F>(self: Arc<Self>, run: R)
    where
        R: Fn(Vec<Q>) -> F,
        F: Future<Output = Result<Vec<A>, StoreError>>,
    {
        // Should `run` panic, or the runtime end, the slot is given back and the
        // waiting are answered.
        let driving = Driving(&self);
        // Lets the requests that came in with this one (the same wake-up of the
        // thread) reach the coalescer first: tokio runs a yielded task after it has
        // looked for I/O.
        tokio::task::yield_now().await;
        loop {
            let batch = {
                let mut state = self.state.lock();
                if state.waiting.is_empty() {
                    state.in_flight -= 1;
                    drop(state);
                    std::mem::forget(driving);
                    return;
                }
                std::mem::take(&mut state.waiting)
            };
            let (queries, replies): (Vec<Q>, Vec<Reply<A>>) = batch.into_iter().unzip();
            let asked = queries.len();
            match run(queries).await {
                Ok(answers) if answers.len() == asked => {
                    for (reply, answer) in replies.into_iter().zip(answers) {
                        let _ = reply.send(Ok(answer));
                    }
                }
                Ok(answers) => {
                    let why = format!("{asked} reads gave {} answers", answers.len());
                    for reply in replies {
                        let _ = reply.send(Err(StoreError::unreadable(why.clone())));
                    }
                }
                Err(e) => {
                    for reply in replies {
                        let _ = reply.send(Err(e.clone()));
                    }
                }
            }
        }
    }
}

/// Held while batches run; dropped (not forgotten) only when `run` panicked or the
/// runtime dropped the task, and then it answers whatever waits.
struct Driving<'a, Q, A>(&'a Coalescer<Q, A>);

impl<Q, A> Drop for Driving<'_, Q, A> {
    fn drop(&mut self) {
        let mut state = self.0.state.lock();
        state.in_flight -= 1;
        for (_, reply) in state.waiting.drain(..) {
            let _ = reply.send(Err(StoreError::Unavailable(
                "a database read failed".into(),
            )));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::sync::mpsc;

    type Answer = std::pin::Pin<Box<dyn Future<Output = Result<Vec<u32>, StoreError>> + Send>>;

    /// A database stand-in: each batch is reported on `sent`, then answered once
    /// `release` lets it, each query `n` with `n * 10`.
    fn stand_in(
        sent: mpsc::UnboundedSender<Vec<u32>>,
        release: Arc<tokio::sync::Semaphore>,
    ) -> impl Fn(Vec<u32>) -> Answer + Send + Clone + 'static {
        move |batch: Vec<u32>| {
            let sent = sent.clone();
            let release = release.clone();
            Box::pin(async move {
                sent.send(batch.clone()).unwrap();
                release.acquire().await.unwrap().forget();
                Ok(batch.into_iter().map(|n| n * 10).collect())
            })
        }
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn a_read_alone_goes_at_once() {
        runtime().block_on(async {
            let (sent, mut batches) = mpsc::unbounded_channel();
            let release = Arc::new(tokio::sync::Semaphore::new(1));
            let coalescer = Coalescer::new(1);
            let answer = coalescer.ask(7, stand_in(sent, release)).await.unwrap();
            assert_eq!(answer, 70);
            assert_eq!(batches.recv().await.unwrap(), vec![7]);
        });
    }

    #[test]
    fn reads_that_come_while_one_is_out_go_together_after_it() {
        runtime().block_on(async {
            let (sent, mut batches) = mpsc::unbounded_channel();
            let release = Arc::new(tokio::sync::Semaphore::new(0));
            let coalescer = Coalescer::new(1);
            let run = stand_in(sent, release.clone());
            let first = tokio::spawn({
                let (c, run) = (coalescer.clone(), run.clone());
                async move { c.ask(1, run).await }
            });
            // The first statement is out and not answered yet.
            assert_eq!(batches.recv().await.unwrap(), vec![1]);
            let later: Vec<_> = (2..=4)
                .map(|n| {
                    let (c, run) = (coalescer.clone(), run.clone());
                    tokio::spawn(async move { c.ask(n, run).await })
                })
                .collect();
            // Let the three reach the coalescer: they must wait, not join the first.
            tokio::task::yield_now().await;
            for _ in 0..10 {
                tokio::task::yield_now().await;
            }
            assert!(batches.try_recv().is_err(), "a second statement went early");
            release.add_permits(1);
            assert_eq!(first.await.unwrap().unwrap(), 10);
            assert_eq!(batches.recv().await.unwrap(), vec![2, 3, 4]);
            release.add_permits(1);
            for (n, read) in (2..=4).zip(later) {
                assert_eq!(read.await.unwrap().unwrap(), n * 10);
            }
        });
    }

    #[test]
    fn a_failed_statement_fails_each_of_its_reads_and_the_next_ones_go() {
        runtime().block_on(async {
            let coalescer = Coalescer::new(1);
            let failing =
                |_: Vec<u32>| async { Err::<Vec<u32>, _>(StoreError::Unavailable("gone".into())) };
            let (a, b) = tokio::join!(coalescer.ask(1, failing), coalescer.ask(2, failing));
            for read in [a, b] {
                assert!(matches!(read, Err(StoreError::Unavailable(why)) if why == "gone"));
            }
            let ok = |batch: Vec<u32>| async move { Ok(batch) };
            assert_eq!(coalescer.ask(3, ok).await.unwrap(), 3);
        });
    }

    #[test]
    fn a_panicking_statement_frees_its_slot() {
        runtime().block_on(async {
            let coalescer = Coalescer::new(1);
            let panicking = |_: Vec<u32>| async { panic!("the stand-in panics") };
            let read = coalescer.ask(1, panicking).await;
            assert!(matches!(read, Err(StoreError::Unavailable(_))));
            let ok = |batch: Vec<u32>| async move { Ok(batch) };
            let again = tokio::time::timeout(Duration::from_secs(10), coalescer.ask(2, ok));
            assert_eq!(again.await.expect("the coalescer is stuck").unwrap(), 2);
        });
    }

    #[test]
    fn a_wrong_number_of_answers_is_an_error_not_a_mix_up() {
        runtime().block_on(async {
            let coalescer: Arc<Coalescer<u32, u32>> = Coalescer::new(1);
            let short = |_: Vec<u32>| async { Ok(vec![]) };
            assert!(matches!(
                coalescer.ask(1, short).await,
                Err(StoreError::Damaged(_))
            ));
        });
    }
}
