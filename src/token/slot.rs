//! One entity's place in the broker: its secret, the newest token, the fetch gate and the bookkeeping of
//! attempts.
//!
//! The gate (an async mutex) serialises upstream calls; the state mutex guards bookkeeping and is never
//! held across an `.await`. Lock order everywhere: the state mutex, then the `current` lock.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use tokio::sync::Notify;
use tokio::time::Instant;

use super::Token;
use super::policy::AttemptState;
use super::recorder::RequestTallies;
use super::status::FetchError;
use crate::entity::EntityId;
use crate::secret::SecretCell;

pub(super) struct Slot {
    pub id: EntityId,
    pub secret: Arc<SecretCell>,
    pub gate: tokio::sync::Mutex<()>,
    state: Mutex<SlotState>,
    /// Mirrors "the last attempt failed" for the hot path, which should not take the mutex.
    pub stale: AtomicBool,
    /// Wakes the refresher when a token arrived by another path, so it reschedules.
    pub changed: Notify,
    /// The newest token: the one record of it (the hot path, readiness, metrics and the fetch gate read
    /// it). A read lock on this pointer costs nanoseconds, where a moka `get`, which records every read
    /// for its eviction policy, cost about 3 µs a request (bench/RESULTS.md).
    pub current: RwLock<Option<Arc<Token>>>,
    pub tallies: RequestTallies,
}

#[derive(Default)]
pub(super) struct SlotState {
    /// Bumped on every stored token: a waiter on the gate that sees it move knows a fetch happened.
    pub generation: u64,
    pub attempts: AttemptState,
    pub last_error: Option<FetchError>,
    pub last_forced_at: Option<Instant>,
    /// Of the secret the last fetch used, to log when it changes.
    pub secret_fingerprint: Option<String>,
}

impl Slot {
    pub fn new(id: EntityId, secret: Arc<SecretCell>, tallies: RequestTallies) -> Self {
        Self {
            id,
            secret,
            gate: tokio::sync::Mutex::new(()),
            state: Mutex::new(SlotState::default()),
            stale: AtomicBool::new(false),
            changed: Notify::new(),
            current: RwLock::new(None),
            tallies,
        }
    }

    pub fn state(&self) -> MutexGuard<'_, SlotState> {
        // A panic while holding this lock would be a bug; the data stays consistent, so keep going.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The newest token, servable or not.
    pub fn current_token(&self) -> Option<Arc<Token>> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The newest token if it may be handed out at `now`.
    pub fn servable_token(&self, now: Instant) -> Option<Arc<Token>> {
        self.current_token().filter(|t| t.servable(now))
    }
}
