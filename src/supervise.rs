//! Keeps the broker's long-lived tasks (a refresher, a secret manager) running through a panic.
//!
//! No panic should be reachable from upstream data, and the fuzz and property tests look for them. But
//! a credential broker that stops refreshing or rotating because of one unforeseen value takes the entity
//! dark a day later, so each long-lived task runs under [`supervise`]: the process is built to unwind,
//! a panicking task is logged and started again after a pause (1 s doubling to a minute), and the token
//! already held keeps being served meanwhile.

use std::future::Future;
use std::time::Duration;

use tokio::sync::watch;

use crate::backoff::Backoff;

/// Pause before restarting a task that panicked.
const RESTART: Backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));

/// Runs the task `start` makes until it returns or `shutdown` turns true; restarts it when it panics.
pub async fn supervise<F, Fut>(
    task: &'static str,
    subject: String,
    mut shutdown: watch::Receiver<bool>,
    mut start: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut panics: u32 = 0;
    loop {
        let result = tokio::spawn(start()).await;
        if *shutdown.borrow() {
            return;
        }
        match result {
            Err(error) if error.is_panic() => {
                panics = panics.saturating_add(1);
                let pause = RESTART.delay(panics, 1.0);
                tracing::error!(
                    task,
                    entity = %subject,
                    panics,
                    restart_in_s = pause.as_secs(),
                    "a background task panicked; restarting it (the held token is still served)"
                );
                tokio::select! {
                    () = tokio::time::sleep(pause) => {}
                    _ = shutdown.changed() => return,
                }
            }
            _ => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test(start_paused = true)]
    async fn a_panicking_task_is_restarted_until_it_ends_well() {
        let runs = Arc::new(AtomicU32::new(0));
        let (_stop, shutdown) = watch::channel(false);
        let counter = Arc::clone(&runs);
        supervise("test", "FIU-X".into(), shutdown, move || {
            let counter = Arc::clone(&counter);
            async move {
                if counter.fetch_add(1, Ordering::SeqCst) < 2 {
                    panic!("an unforeseen value");
                }
            }
        })
        .await;
        assert_eq!(runs.load(Ordering::SeqCst), 3);
    }
}
