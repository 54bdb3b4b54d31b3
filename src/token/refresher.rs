//! The background refresher: one task per entity that wakes when the policy says and calls the IAM.
//!
//! It owns no decisions. Each turn it reads the entity's [`AttemptState`], asks
//! [`RefreshPolicy::next_attempt`] when to act, sleeps until then (or until a token arrives by another path,
//! or shutdown), and makes one attempt. It also attempts at once when told the secret was replaced (a
//! rotation), since the held token was minted with a secret the IAM may already have revoked. A floor
//! between attempts guards against a hot loop even if the state were ever to say "now" twice in a row.

use std::future::Future;
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio::time::{Instant, sleep_until};

use super::policy::{AttemptState, RefreshPolicy};

/// Smallest gap between two background attempts, whatever the state says.
pub const MIN_ATTEMPT_SPACING: Duration = Duration::from_millis(100);

/// Runs until `shutdown` becomes true (or its sender is dropped).
pub async fn run<S, A, F>(
    policy: RefreshPolicy,
    state: S,
    changed: &Notify,
    urgent: &Notify,
    mut shutdown: watch::Receiver<bool>,
    mut attempt: A,
) where
    S: Fn() -> AttemptState,
    A: FnMut() -> F,
    F: Future<Output = ()>,
{
    let mut last_attempt: Option<Instant> = None;
    let mut now_wanted = false;
    loop {
        if *shutdown.borrow() {
            return;
        }
        let now = Instant::now();
        let mut wake = if now_wanted {
            now
        } else {
            policy.next_attempt(now, &state(), fastrand::f64())
        };
        if let Some(last) = last_attempt {
            wake = wake.max(last + MIN_ATTEMPT_SPACING);
        }
        tokio::select! {
            _ = sleep_until(wake) => {
                now_wanted = false;
                last_attempt = Some(Instant::now());
                tokio::select! {
                    _ = attempt() => {}
                    _ = shutdown.changed() => return,
                }
            }
            _ = changed.notified() => {}
            _ = urgent.notified() => now_wanted = true,
            result = shutdown.changed() => {
                if result.is_err() {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// A scripted IAM: each attempt pops an outcome (true = token) and records when it happened.
    struct Script {
        policy: RefreshPolicy,
        lifetime: Duration,
        outcomes: Mutex<Vec<bool>>,
        state: Mutex<AttemptState>,
        attempts: Mutex<Vec<Instant>>,
    }

    impl Script {
        fn new(lifetime: Duration, outcomes: Vec<bool>) -> Arc<Self> {
            Arc::new(Self {
                policy: RefreshPolicy::default(),
                lifetime,
                outcomes: Mutex::new(outcomes.into_iter().rev().collect()),
                state: Mutex::new(AttemptState::default()),
                attempts: Mutex::new(Vec::new()),
            })
        }

        fn attempt(&self) {
            let now = Instant::now();
            self.attempts.lock().unwrap().push(now);
            let ok = self.outcomes.lock().unwrap().pop().unwrap_or(true);
            let mut state = self.state.lock().unwrap();
            if ok {
                state.token = self.policy.schedule(now, self.lifetime, fastrand::f64());
                state.consecutive_failures = 0;
                state.last_failure_at = None;
            } else {
                state.consecutive_failures += 1;
                state.last_failure_at = Some(now);
            }
        }

        async fn run_for(self: &Arc<Self>, span: Duration) {
            let (tx, rx) = watch::channel(false);
            let notify = Arc::new(Notify::new());
            let script = Arc::clone(self);
            let runner = {
                let notify = Arc::clone(&notify);
                let state_script = Arc::clone(&script);
                tokio::spawn(async move {
                    run(
                        state_script.policy.clone(),
                        || *state_script.state.lock().unwrap(),
                        &notify,
                        &Notify::new(),
                        rx,
                        || {
                            script.attempt();
                            async {}
                        },
                    )
                    .await
                })
            };
            tokio::time::sleep(span).await;
            tx.send(true).unwrap();
            runner.await.unwrap();
        }
    }

    #[tokio::test(start_paused = true)]
    async fn steady_state_refreshes_each_token_inside_its_window() {
        let lifetime = Duration::from_secs(10);
        let script = Script::new(lifetime, vec![]);
        let start = Instant::now();
        script.run_for(Duration::from_secs(100)).await;
        let attempts = script.attempts.lock().unwrap().clone();
        assert_eq!(attempts[0], start, "fetches at once on start");
        // Usable life is 8.5 s and the refresh lands at 75–80 % of it: 6.4–6.8 s apart.
        for pair in attempts.windows(2) {
            let gap = pair[1] - pair[0];
            assert!(
                gap >= Duration::from_millis(6375) && gap <= Duration::from_millis(6800),
                "{gap:?}"
            );
        }
        assert!((14..=16).contains(&attempts.len()), "{}", attempts.len());
    }

    #[tokio::test(start_paused = true)]
    async fn an_outage_backs_off_exponentially_and_recovers() {
        let script = Script::new(Duration::from_secs(10), vec![false; 8]);
        script.run_for(Duration::from_secs(120)).await;
        let attempts = script.attempts.lock().unwrap().clone();
        let gaps: Vec<Duration> = attempts.windows(2).map(|p| p[1] - p[0]).collect();
        // Failures 1..=8: each gap is at least half its ceiling (0.5 s doubling, 30 s cap), never more.
        for (i, gap) in gaps.iter().take(8).enumerate() {
            let ceiling = Duration::from_millis(500 * (1 << i)).min(Duration::from_secs(30));
            assert!(*gap >= ceiling / 2 && *gap <= ceiling, "gap {i}: {gap:?}");
        }
        // After recovery the token cadence resumes: the 10th attempt onward is a refresh, not a retry.
        assert!(gaps[8] >= Duration::from_millis(6375), "{:?}", gaps[8]);
        // Bounded: 8 failures + 1 recovery + at most a handful of refreshes in two minutes.
        assert!(attempts.len() <= 9 + 120 / 6, "{}", attempts.len());
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_token_reschedules_without_an_attempt_and_a_new_secret_fetches_at_once() {
        let script = Script::new(Duration::from_secs(3600), vec![]);
        let (tx, rx) = watch::channel(false);
        let notify = Arc::new(Notify::new());
        let urgent = Arc::new(Notify::new());
        let handle = {
            let script = Arc::clone(&script);
            let notify = Arc::clone(&notify);
            let urgent = Arc::clone(&urgent);
            tokio::spawn(async move {
                let state_script = Arc::clone(&script);
                run(
                    RefreshPolicy::default(),
                    || *state_script.state.lock().unwrap(),
                    &notify,
                    &urgent,
                    rx,
                    || {
                        script.attempt();
                        async {}
                    },
                )
                .await
            })
        };
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(script.attempts.lock().unwrap().len(), 1);
        // Another path installs a token that is due later; the refresher must not call in between.
        script.state.lock().unwrap().token =
            RefreshPolicy::default().schedule(Instant::now(), Duration::from_secs(7200), 0.0);
        notify.notify_one();
        tokio::time::sleep(Duration::from_secs(3000)).await;
        assert_eq!(script.attempts.lock().unwrap().len(), 1);
        // The secret was replaced: an attempt at once, whatever the schedule says.
        urgent.notify_one();
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(script.attempts.lock().unwrap().len(), 2);
        tx.send(true).unwrap();
        handle.await.unwrap();
    }
}
