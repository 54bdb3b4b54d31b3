//! The single flight every upstream cache uses: the entity token's cold fetch, the realm key set, the
//! Central Registry's records.
//!
//! A [`Flight`] keeps, per key, the fetch in flight and nothing else: a completed result is never served
//! from here (the owner keeps what it fetched, and its policy decides when to fetch again). What it
//! guarantees:
//! - **one fetch per key at a time**: concurrent callers join the fetch in flight; who starts one is
//!   decided under the table's lock, and only when none is in flight is the owner's `admit` asked (a rate
//!   limit sees the fetches that start, not the callers that join);
//! - **nothing a caller can cancel**: the fetch runs on a task of its own, so a caller that goes away (a
//!   client that hung up, a waiter that timed out) cancels nothing others wait on. The record of the
//!   flight is removed by a drop guard in that task, which runs whether the fetch returns, panics or is
//!   cancelled by the runtime; its waiters then get the outcome or [`FlightError::Aborted`];
//! - **bounded**: a caller waits at most the flight's bound, then gets [`FlightError::TimedOut`] (for the
//!   owner: unavailable, retry later); the fetch itself is cut at the same bound from its start, so no
//!   flight outlives it, whatever upstream does.
//!
//! Why not moka's `try_get_with` around the fetch itself: its loading caller *is* the fetch, so a caller
//! that hangs up cancels it, and moka then lets the next waiter start another one (a second upstream
//! call; after 200 such cancellations a waiter panics). Here the only thing done under the lock is
//! creating the record of the flight, which cannot be interrupted. The table is a plain map behind a
//! mutex, not a moka cache: it holds a handful of records for a few seconds at most, and a moka cache
//! allocates its logs up front (about 55 KiB each), which an idle sidecar with several flights kept for
//! its whole life.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::watch;

/// Why a caller got no outcome from a flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FlightError {
    /// No fetch was in flight for the key, and the owner's `admit` did not let one start.
    #[error("no fetch in flight, and none may start now")]
    NotAdmitted,
    /// The fetch gave no outcome within the bound (the caller's wait, or the fetch's own run).
    #[error("no answer from upstream within {} ms", .0.as_millis())]
    TimedOut(Duration),
    /// The fetch panicked, or its task was cancelled (the runtime is shutting down).
    #[error("the fetch ended abnormally")]
    Aborted,
}

/// What waiters of one flight watch: `None` until the fetch lands.
type Landing<V> = watch::Sender<Option<Result<V, FlightError>>>;

/// The records of the fetches in flight, by key.
type Running<K, V> = Arc<Mutex<HashMap<K, Arc<Landing<V>>>>>;

/// The fetches in flight, by key. Cheap to share behind its owner; see the module documentation.
pub struct Flight<K, V> {
    running: Running<K, V>,
    capacity: usize,
    bound: Duration,
}

/// The table, locked. Nothing panics while it is held (`admit` is the owner's and must not), but a
/// poisoned lock would only mean a record left behind, which its guard removes: it is used as it is.
fn lock<K, V>(running: &Running<K, V>) -> MutexGuard<'_, HashMap<K, Arc<Landing<V>>>> {
    running
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl<K, V> Flight<K, V>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// Flights for at most `capacity` keys at once (a key beyond it may get a second flight while its
    /// first runs, never a stuck one), each waited for and run at most `bound`.
    pub fn new(capacity: u64, bound: Duration) -> Self {
        Self {
            running: Arc::default(),
            capacity: usize::try_from(capacity.max(1)).unwrap_or(usize::MAX),
            bound,
        }
    }

    /// How long a caller waits, and a fetch runs, at most.
    pub fn bound(&self) -> Duration {
        self.bound
    }

    /// Whether a fetch for `key` is in flight (an input of the owners' policies).
    pub fn in_flight(&self, key: &K) -> bool {
        lock(&self.running).contains_key(key)
    }

    /// The outcome of the fetch in flight for `key`, joined; or, when none is in flight and `admit()`
    /// says yes, of `fetch()` started now on a task of its own. `admit` is called at most once, only when
    /// nothing is in flight, and never concurrently with another `admit` for the same key; `fetch` is
    /// called only by the caller that starts the flight, and everything it does must be in the future it
    /// returns (that is what runs to completion when callers go away).
    pub async fn run<A, F, Fut>(&self, key: K, admit: A, fetch: F) -> Result<V, FlightError>
    where
        A: FnOnce() -> bool,
        F: FnOnce() -> Fut,
        Fut: Future<Output = V> + Send + 'static,
    {
        // Synchronous from here to the spawn: a caller dropped at an `.await` can only be dropped
        // before the flight exists or after its task is running.
        let (landing, started) = {
            let mut running = lock(&self.running);
            match running.get(&key) {
                Some(landing) => (Arc::clone(landing), false),
                None if !admit() => return Err(FlightError::NotAdmitted),
                None => {
                    let landing = Arc::new(watch::Sender::new(None));
                    // Past the capacity the flight runs unrecorded: a later caller may start a second
                    // one for the same key, but none can wait on a record that nobody removes.
                    if running.len() < self.capacity {
                        running.insert(key.clone(), Arc::clone(&landing));
                    }
                    (landing, true)
                }
            }
        };
        if started {
            self.spawn(key, Arc::clone(&landing), fetch());
        }
        self.wait(&landing).await
    }

    /// The outcome of the fetch in flight for `key`, if one is; never starts one.
    pub async fn join(&self, key: &K) -> Option<Result<V, FlightError>> {
        let landing = lock(&self.running).get(key).cloned()?;
        Some(self.wait(&landing).await)
    }

    async fn wait(&self, landing: &Landing<V>) -> Result<V, FlightError> {
        let mut outcome = landing.subscribe();
        match tokio::time::timeout(self.bound, outcome.wait_for(Option::is_some)).await {
            Ok(Ok(landed)) => landed.clone().unwrap_or(Err(FlightError::Aborted)),
            // The sender is alive as long as `landing` is: not reached, but not a reason to panic.
            Ok(Err(_)) => Err(FlightError::Aborted),
            Err(_) => Err(FlightError::TimedOut(self.bound)),
        }
    }

    fn spawn<Fut>(&self, key: K, landing: Arc<Landing<V>>, fetch: Fut)
    where
        Fut: Future<Output = V> + Send + 'static,
    {
        let mut guard = LandingGuard {
            running: Arc::clone(&self.running),
            key,
            landing,
            outcome: None,
        };
        let bound = self.bound;
        tokio::spawn(async move {
            guard.outcome = Some(
                tokio::time::timeout(bound, fetch)
                    .await
                    .map_err(|_| FlightError::TimedOut(bound)),
            );
            // Dropping the guard lands the flight (also when the fetch panicked or the task was
            // cancelled before this line).
            drop(guard);
        });
    }
}

/// Owned by the fetch's task: on drop, forgets the flight, then wakes its waiters with the outcome
/// ([`FlightError::Aborted`] when there is none: a panic, a cancelled task).
struct LandingGuard<K, V>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    running: Running<K, V>,
    key: K,
    landing: Arc<Landing<V>>,
    outcome: Option<Result<V, FlightError>>,
}

impl<K, V> Drop for LandingGuard<K, V>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    fn drop(&mut self) {
        // Forgotten first, so that a caller who comes once the outcome is out asks its owner afresh
        // (in-flight only). Only this flight's record: past the capacity a flight runs unrecorded, and
        // its key may hold another one's.
        {
            let mut running = lock(&self.running);
            if running
                .get(&self.key)
                .is_some_and(|held| Arc::ptr_eq(held, &self.landing))
            {
                running.remove(&self.key);
            }
        }
        let outcome = self.outcome.take().unwrap_or(Err(FlightError::Aborted));
        self.landing.send_replace(Some(outcome));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use tokio::time::Instant;

    const BOUND: Duration = Duration::from_secs(10);

    /// A fetch that counts its starts, takes `took`, and answers its start number.
    fn counted(
        starts: &Arc<AtomicU32>,
        took: Duration,
    ) -> impl FnOnce() -> std::pin::Pin<Box<dyn Future<Output = u32> + Send>> + use<> {
        let starts = Arc::clone(starts);
        move || {
            Box::pin(async move {
                let n = starts.fetch_add(1, Ordering::SeqCst) + 1;
                tokio::time::sleep(took).await;
                n
            })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_callers_share_one_fetch_and_a_later_one_starts_another() {
        let flight = Arc::new(Flight::<&str, u32>::new(16, BOUND));
        let starts = Arc::new(AtomicU32::new(0));
        let mut callers = tokio::task::JoinSet::new();
        for _ in 0..50 {
            let flight = Arc::clone(&flight);
            let fetch = counted(&starts, Duration::from_secs(1));
            callers.spawn(async move { flight.run("k", || true, fetch).await });
        }
        let outcomes = callers.join_all().await;
        assert!(outcomes.iter().all(|o| *o == Ok(1)), "{outcomes:?}");
        assert_eq!(starts.load(Ordering::SeqCst), 1);
        assert!(!flight.in_flight(&"k"), "in flight only: nothing kept");
        assert_eq!(
            flight
                .run("k", || true, counted(&starts, Duration::ZERO))
                .await,
            Ok(2)
        );
        // Another key is another flight.
        assert_eq!(
            flight
                .run("other", || true, counted(&starts, Duration::ZERO))
                .await,
            Ok(3)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_fetch_outlives_a_leader_that_went_away_and_serves_the_next_caller() {
        let flight = Arc::new(Flight::<&str, u32>::new(16, BOUND));
        let starts = Arc::new(AtomicU32::new(0));
        let leader = {
            let flight = Arc::clone(&flight);
            let fetch = counted(&starts, Duration::from_secs(2));
            tokio::spawn(async move { flight.run("k", || true, fetch).await })
        };
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(flight.in_flight(&"k"));
        leader.abort();
        assert!(leader.await.unwrap_err().is_cancelled());
        // The next caller joins the fetch the leader started: no second start, no admission asked.
        let begun = Instant::now();
        let next = flight
            .run(
                "k",
                || panic!("nothing to admit: a fetch is in flight"),
                counted(&starts, Duration::ZERO),
            )
            .await;
        assert_eq!(next, Ok(1));
        assert_eq!(begun.elapsed(), Duration::from_millis(1500));
        assert_eq!(starts.load(Ordering::SeqCst), 1);
        assert!(!flight.in_flight(&"k"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_gets_an_error_at_the_bound_and_the_flight_is_cut_there_too() {
        let flight = Arc::new(Flight::<&str, u32>::new(16, BOUND));
        let starts = Arc::new(AtomicU32::new(0));
        let begun = Instant::now();
        let leader = {
            let flight = Arc::clone(&flight);
            let fetch = counted(&starts, Duration::from_secs(3600));
            tokio::spawn(async move { flight.run("k", || true, fetch).await })
        };
        tokio::time::sleep(BOUND / 2).await;
        // A waiter that joins late waits for the rest of the fetch's bound, not a bound of its own.
        let late = flight.join(&"k").await;
        assert_eq!(late, Some(Err(FlightError::TimedOut(BOUND))));
        assert_eq!(begun.elapsed(), BOUND);
        assert_eq!(leader.await.unwrap(), Err(FlightError::TimedOut(BOUND)));
        assert!(
            !flight.in_flight(&"k"),
            "a cut flight leaves nothing behind"
        );
        assert_eq!(flight.join(&"k").await, None);
        assert_eq!(
            flight
                .run("k", || true, counted(&starts, Duration::ZERO))
                .await,
            Ok(2)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_alone_times_out_at_its_bound() {
        // A fetch that ignores its bound cannot be made here; a waiter's own bound is what a caller sees
        // when it joins a flight that a slower owner started with a longer one.
        let slow = Arc::new(Flight::<&str, u32>::new(16, BOUND * 10));
        let starts = Arc::new(AtomicU32::new(0));
        {
            let slow = Arc::clone(&slow);
            let fetch = counted(&starts, BOUND * 5);
            tokio::spawn(async move { slow.run("k", || true, fetch).await });
        }
        tokio::task::yield_now().await;
        let quick = Flight::<&str, u32> {
            running: slow.running.clone(),
            capacity: 16,
            bound: BOUND,
        };
        let begun = Instant::now();
        assert_eq!(
            quick.join(&"k").await,
            Some(Err(FlightError::TimedOut(BOUND)))
        );
        assert_eq!(begun.elapsed(), BOUND);
        assert!(slow.in_flight(&"k"), "the fetch goes on for those who wait");
    }

    #[tokio::test(start_paused = true)]
    async fn past_its_capacity_a_flight_runs_unrecorded_and_leaves_nothing_behind() {
        let flight = Arc::new(Flight::<&str, u32>::new(1, BOUND));
        let (a_starts, b_starts) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0)));
        let a = {
            let flight = Arc::clone(&flight);
            let fetch = counted(&a_starts, Duration::from_secs(2));
            tokio::spawn(async move { flight.run("a", || true, fetch).await })
        };
        tokio::task::yield_now().await;
        assert!(flight.in_flight(&"a"));
        // The table is full: "b" is fetched all the same, with no record for others to join.
        let b = {
            let flight = Arc::clone(&flight);
            let fetch = counted(&b_starts, Duration::from_secs(1));
            tokio::spawn(async move { flight.run("b", || true, fetch).await })
        };
        tokio::task::yield_now().await;
        assert!(!flight.in_flight(&"b"));
        assert_eq!(b.await.unwrap(), Ok(1));
        assert_eq!(a.await.unwrap(), Ok(1));
        assert!(!flight.in_flight(&"a"));
        assert!(lock(&flight.running).is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_panicking_fetch_is_an_error_for_every_waiter_and_leaves_nothing_stuck() {
        let flight = Arc::new(Flight::<&str, u32>::new(16, BOUND));
        let mut callers = tokio::task::JoinSet::new();
        for _ in 0..5 {
            let flight = Arc::clone(&flight);
            callers.spawn(async move {
                flight
                    .run(
                        "k",
                        || true,
                        || async {
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            panic!("a bug in the fetch");
                        },
                    )
                    .await
            });
        }
        let outcomes = callers.join_all().await;
        assert!(
            outcomes.iter().all(|o| *o == Err(FlightError::Aborted)),
            "{outcomes:?}"
        );
        assert!(!flight.in_flight(&"k"));
        let starts = Arc::new(AtomicU32::new(0));
        assert_eq!(
            flight
                .run("k", || true, counted(&starts, Duration::ZERO))
                .await,
            Ok(1)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn admission_is_asked_only_to_start_a_fetch() {
        let flight = Arc::new(Flight::<&str, u32>::new(16, BOUND));
        let starts = Arc::new(AtomicU32::new(0));
        assert_eq!(
            flight
                .run("k", || false, counted(&starts, Duration::ZERO))
                .await,
            Err(FlightError::NotAdmitted)
        );
        assert_eq!(starts.load(Ordering::SeqCst), 0);
        assert!(!flight.in_flight(&"k"));
        let asked = AtomicU32::new(0);
        let leader = {
            let flight = Arc::clone(&flight);
            let fetch = counted(&starts, Duration::from_secs(1));
            tokio::spawn(async move { flight.run("k", || true, fetch).await })
        };
        tokio::task::yield_now().await;
        let joined = flight
            .run(
                "k",
                || {
                    asked.fetch_add(1, Ordering::SeqCst);
                    false
                },
                counted(&starts, Duration::ZERO),
            )
            .await;
        assert_eq!(joined, Ok(1));
        assert_eq!(asked.load(Ordering::SeqCst), 0);
        assert_eq!(leader.await.unwrap(), Ok(1));
    }
}
