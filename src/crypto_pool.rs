//! The crypto pool: a few threads of their own for CPU-heavy work (RSA signing and verification, and
//! the hashing of large bodies that comes with them), so that it never runs on the async workers that
//! answer token callers.
//!
//! A signature over 16 MiB costs tens of milliseconds of one core; on an async worker it stalls every
//! connection that worker serves. Here the work waits in a bounded queue for one of a fixed number of
//! threads (by default one fewer than the runtime's workers, at least one), so a flood of signing
//! requests can take at most that many cores, and a full queue is refused at once ([`PoolError::Busy`],
//! which the HTTP layer answers `503` with `Retry-After`) instead of growing without bound.
//!
//! Jobs whose caller went away before a thread picked them up are skipped. A job that panics is an
//! error for its caller and leaves the thread running.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex, PoisonError};

/// Default queue length: jobs waiting for a thread. Each holds a request (and its body, which the body
/// budget counts), so the queue is short: past it, callers are told to come back.
pub const DEFAULT_QUEUE: usize = 64;

type Job = Box<dyn FnOnce() + Send>;

/// Why a job did not run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    /// The queue is full: try again shortly.
    #[error("the crypto pool is busy")]
    Busy,
    /// The job panicked, or the pool is gone.
    #[error("the crypto job failed")]
    Failed,
}

/// Counts for `/metrics`.
#[derive(Debug, Default)]
struct Counters {
    queued: AtomicUsize,
    completed: AtomicU64,
    refused: AtomicU64,
    abandoned: AtomicU64,
}

/// What the pool has done, for `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolStats {
    pub threads: usize,
    pub queue_capacity: usize,
    /// Jobs waiting or running now.
    pub in_flight: usize,
    pub completed: u64,
    /// Jobs refused because the queue was full.
    pub refused: u64,
    /// Jobs skipped because their caller had gone.
    pub abandoned: u64,
}

/// A fixed set of threads and a bounded queue. Shared behind an `Arc`; the threads end when it is
/// dropped.
pub struct CryptoPool {
    sender: SyncSender<Job>,
    threads: usize,
    queue: usize,
    counters: Arc<Counters>,
}

impl std::fmt::Debug for CryptoPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CryptoPool")
            .field("threads", &self.threads)
            .field("queue", &self.queue)
            .finish()
    }
}

impl CryptoPool {
    /// Starts `threads` threads (at least one) behind a queue of `queue` jobs (at least one).
    pub fn new(threads: usize, queue: usize) -> std::io::Result<Self> {
        let threads = threads.max(1);
        let queue = queue.max(1);
        let (sender, receiver) = sync_channel::<Job>(queue);
        let receiver = Arc::new(Mutex::new(receiver));
        for index in 0..threads {
            let receiver = Arc::clone(&receiver);
            std::thread::Builder::new()
                .name(format!("aa-crypto-{index}"))
                // RSA and SHA-256 need little stack.
                .stack_size(256 * 1024)
                .spawn(move || work(&receiver))?;
        }
        Ok(Self {
            sender,
            threads,
            queue,
            counters: Arc::new(Counters::default()),
        })
    }

    /// One thread fewer than the runtime's `workers`, at least one.
    pub fn default_threads(workers: usize) -> usize {
        workers.saturating_sub(1).max(1)
    }

    /// Runs `job` on a pool thread and waits for its result. Refused at once when the queue is full.
    /// If the caller goes away first, the job is skipped when its turn comes (or its result dropped).
    pub async fn run<T, F>(&self, job: F) -> Result<T, PoolError>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let counters = Arc::clone(&self.counters);
        let wrapped: Job = Box::new(move || {
            let done = InFlight(&counters);
            if reply.is_closed() {
                counters.abandoned.fetch_add(1, Ordering::Relaxed);
                return;
            }
            let outcome = catch_unwind(AssertUnwindSafe(job)).map_err(|_| PoolError::Failed);
            counters.completed.fetch_add(1, Ordering::Relaxed);
            // Counted as done before the caller hears of it, so the figures are settled when it does.
            drop(done);
            let _ = reply.send(outcome);
        });
        self.counters.queued.fetch_add(1, Ordering::Relaxed);
        match self.sender.try_send(wrapped) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.counters.queued.fetch_sub(1, Ordering::Relaxed);
                self.counters.refused.fetch_add(1, Ordering::Relaxed);
                return Err(PoolError::Busy);
            }
            Err(TrySendError::Disconnected(_)) => {
                self.counters.queued.fetch_sub(1, Ordering::Relaxed);
                return Err(PoolError::Failed);
            }
        }
        answer.await.unwrap_or(Err(PoolError::Failed))
    }

    pub fn stats(&self) -> PoolStats {
        PoolStats {
            threads: self.threads,
            queue_capacity: self.queue,
            in_flight: self.counters.queued.load(Ordering::Relaxed),
            completed: self.counters.completed.load(Ordering::Relaxed),
            refused: self.counters.refused.load(Ordering::Relaxed),
            abandoned: self.counters.abandoned.load(Ordering::Relaxed),
        }
    }
}

/// Decrements the in-flight count when a job ends, however it ends.
struct InFlight<'a>(&'a Counters);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.queued.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A pool thread: take the next job, run it, until the pool is dropped.
fn work(receiver: &Mutex<Receiver<Job>>) {
    loop {
        // The lock is held only while waiting for a job, never while one runs.
        let job = receiver
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .recv();
        match job {
            Ok(job) => job(),
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Barrier;
    use std::time::Duration;

    #[tokio::test]
    async fn jobs_run_off_the_runtime_and_return_their_result() {
        let pool = CryptoPool::new(1, 4).unwrap();
        let name = pool
            .run(|| std::thread::current().name().map(str::to_string))
            .await
            .unwrap();
        assert_eq!(name.as_deref(), Some("aa-crypto-0"));
        assert_eq!(pool.run(|| 6 * 7).await, Ok(42));
        let stats = pool.stats();
        assert_eq!((stats.completed, stats.in_flight), (2, 0));
    }

    /// Occupies one pool thread until the returned barrier is passed; returns once the thread runs it.
    async fn hold(
        pool: &Arc<CryptoPool>,
    ) -> (tokio::task::JoinHandle<Result<(), PoolError>>, Arc<Barrier>) {
        let gate = Arc::new(Barrier::new(2));
        let (started, running) = tokio::sync::oneshot::channel();
        let held = {
            let (pool, gate) = (Arc::clone(pool), Arc::clone(&gate));
            tokio::spawn(async move {
                pool.run(move || {
                    let _ = started.send(());
                    gate.wait();
                })
                .await
            })
        };
        running.await.unwrap();
        (held, gate)
    }

    #[tokio::test]
    async fn a_full_queue_is_refused_at_once_and_frees_up_again() {
        let pool = Arc::new(CryptoPool::new(1, 2).unwrap());
        let (held, gate) = hold(&pool).await;
        let queued: Vec<_> = (0..2)
            .map(|i| {
                let pool = Arc::clone(&pool);
                tokio::spawn(async move { pool.run(move || i).await })
            })
            .collect();
        while pool.stats().in_flight < 3 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert_eq!(pool.run(|| 99).await, Err(PoolError::Busy));
        assert_eq!(pool.stats().refused, 1);
        gate.wait();
        held.await.unwrap().unwrap();
        for (i, job) in queued.into_iter().enumerate() {
            assert_eq!(job.await.unwrap(), Ok(i));
        }
        assert_eq!(pool.run(|| 7).await, Ok(7));
    }

    #[tokio::test]
    async fn a_panicking_job_is_an_error_and_the_thread_lives_on() {
        let pool = CryptoPool::new(1, 1).unwrap();
        let failed: Result<(), _> = pool.run(|| panic!("boom")).await;
        assert_eq!(failed, Err(PoolError::Failed));
        assert_eq!(pool.run(|| 1).await, Ok(1));
        assert_eq!(pool.stats().in_flight, 0);
    }

    #[tokio::test]
    async fn a_job_whose_caller_left_is_skipped() {
        let pool = Arc::new(CryptoPool::new(1, 4).unwrap());
        let (held, gate) = hold(&pool).await;
        let ran = Arc::new(AtomicU64::new(0));
        let waiting = {
            let (pool, ran) = (Arc::clone(&pool), Arc::clone(&ran));
            tokio::spawn(async move { pool.run(move || ran.fetch_add(1, Ordering::Relaxed)).await })
        };
        while pool.stats().in_flight < 2 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        waiting.abort();
        let _ = waiting.await;
        gate.wait();
        held.await.unwrap().unwrap();
        assert_eq!(pool.run(|| ()).await, Ok(()));
        assert_eq!(ran.load(Ordering::Relaxed), 0);
        assert_eq!(pool.stats().abandoned, 1);
    }

    #[test]
    fn the_default_leaves_the_runtime_a_core() {
        assert_eq!(CryptoPool::default_threads(1), 1);
        assert_eq!(CryptoPool::default_threads(2), 1);
        assert_eq!(CryptoPool::default_threads(8), 7);
    }
}
