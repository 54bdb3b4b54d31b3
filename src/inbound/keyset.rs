//! The cache of one key URL's key set ([`KeySource`]).
//!
//! It has the four properties every cache of something from upstream has in this crate: single flight
//! (one [`Flight`]: one fetch at a time, on a task of its own; callers that find one in flight wait for
//! it, bounded, and one that goes away leaves it to finish for the others), a rate limit on the refetches
//! callers can trigger (an unknown `kid`, see [`super::policy`]), the last good value served through an
//! outage, and its age reported (`/readyz`, metrics). The fetch is bounded: connect and request timeouts,
//! no redirects, and a cap on the body size ([`crate::upstream::http`]). The document itself is parsed by [`crate::keys`].
//!
//! The first fetch happens at start with [`KeyPolicy::prefetch`], otherwise at the first verification,
//! which waits for it; the periodic schedule starts after it.

use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::SystemTime;

use tokio::sync::watch;
use tokio::time::Instant;

use super::VerifyRecorder;
use super::policy::{FetchHistory, KeyPolicy, UnknownKid};
use crate::iam::IamTimeouts;
use crate::keys::{JwksError, KeySet, MAX_JWKS_BYTES, RsaKey, parse_jwks};
use crate::upstream::Flight;
use crate::upstream::http::{ReadError, describe, read_whole};
/// Why a fetch failed; also the metric label.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    #[error("timed out")]
    Timeout,
    #[error("{0}")]
    Transport(String),
    #[error("HTTP {0}")]
    Status(u16),
    #[error("the key set is larger than {MAX_JWKS_BYTES} bytes")]
    TooLarge,
    #[error("{0}")]
    Unusable(#[from] JwksError),
}

impl FetchError {
    pub fn kind(&self) -> &'static str {
        match self {
            FetchError::Timeout => "timeout",
            FetchError::Transport(_) => "transport",
            FetchError::Status(_) => "http_error",
            FetchError::TooLarge => "too_large",
            FetchError::Unusable(_) => "malformed",
        }
    }
}

/// What started a fetch; also the metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchTrigger {
    /// The background task (at start with `--verify-prefetch-keys`, then periodically), or
    /// [`super::Verifier::fetch_keys`].
    Scheduled,
    /// The first verification found no key set held yet (nothing was fetched before).
    FirstUse,
    /// A token named a `kid` the key set does not hold.
    UnknownKid,
}

impl FetchTrigger {
    pub fn as_str(self) -> &'static str {
        match self {
            FetchTrigger::Scheduled => "scheduled",
            FetchTrigger::FirstUse => "first_use",
            FetchTrigger::UnknownKid => "unknown_kid",
        }
    }
}

/// The state of one key source, for `/readyz`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KeySourceStatus {
    pub url: String,
    /// `pending` (no fetch finished yet), `fresh` (the last fetch worked), `stale` (keys held, the last
    /// fetch failed) or `unavailable` (no keys held, the last fetch failed).
    pub state: &'static str,
    pub keys: usize,
    /// Seconds since the held key set was fetched.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub age_seconds: Option<u64>,
    pub consecutive_failures: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

struct Held {
    keys: Arc<KeySet>,
    fetched_at: Instant,
}

#[derive(Default)]
struct SourceState {
    history: FetchHistory,
    last_error: Option<FetchError>,
}

/// The cached key set of one key URL.
pub struct KeySource {
    url: String,
    client: reqwest::Client,
    policy: KeyPolicy,
    recorder: Arc<dyn VerifyRecorder>,
    held: RwLock<Option<Held>>,
    state: Mutex<SourceState>,
    /// The single flight of fetches (one key: this source). In flight only: `held` keeps the keys.
    flight: Flight<(), Refreshed>,
    /// Runs when a fetch finds a key withdrawn.
    on_lost_keys: Box<dyn Fn() + Send + Sync>,
    /// Turns true when the first fetch starts, whatever started it: without prefetching, the schedule
    /// waits for it.
    first_fetch: watch::Sender<bool>,
}

/// What a fetch did to the held key set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refreshed {
    /// New keys are held; `lost` says some key held before is gone (withdrawn).
    Updated { lost: bool },
    /// The fetch failed, or gave no answer within its bound; the previous keys (if any) stay.
    Failed,
}

impl KeySource {
    pub fn new(
        url: String,
        client: reqwest::Client,
        policy: KeyPolicy,
        timeouts: IamTimeouts,
        recorder: Arc<dyn VerifyRecorder>,
        on_lost_keys: Box<dyn Fn() + Send + Sync>,
    ) -> Self {
        Self {
            url,
            client,
            policy,
            recorder,
            on_lost_keys,
            held: RwLock::new(None),
            state: Mutex::new(SourceState::default()),
            flight: Flight::new(1, timeouts.call_bound()),
            first_fetch: watch::Sender::new(false),
        }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn policy(&self) -> &KeyPolicy {
        &self.policy
    }

    fn state(&self) -> MutexGuard<'_, SourceState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The held key set, if a fetch ever worked.
    pub fn keys(&self) -> Option<Arc<KeySet>> {
        self.held
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|h| Arc::clone(&h.keys))
    }

    /// The fetch history, for the scheduler.
    pub fn history(&self) -> FetchHistory {
        self.state().history
    }

    /// Fetches now, or joins the fetch in flight (single flight): what that fetch did.
    pub async fn refresh(self: &Arc<Self>, trigger: FetchTrigger) -> Refreshed {
        let source = Arc::clone(self);
        self.flight
            .run(
                (),
                || true,
                move || async move { source.fetch_and_store(trigger).await },
            )
            .await
            .unwrap_or(Refreshed::Failed)
    }

    /// Looks up `kid`, refetching once if the policy allows: the way a verification meets a rotated key
    /// (or, before anything was fetched, the first verification meets the key set). The wait is bounded;
    /// a caller that goes away leaves the fetch to finish for the others.
    pub async fn key_for_unknown_kid(self: &Arc<Self>, kid: &str) -> Option<RsaKey> {
        let (decision, trigger) = {
            let mut state = self.state();
            let now = Instant::now();
            let decision =
                self.policy
                    .on_unknown_kid(now, &state.history, self.flight.in_flight(&()));
            if decision == UnknownKid::Fetch {
                // Recorded before the fetch starts, so concurrent callers see it (or join the flight).
                state.history.last_unknown_kid_fetch = Some(now);
            }
            let trigger = if state.history.last_attempt.is_none() {
                FetchTrigger::FirstUse
            } else {
                FetchTrigger::UnknownKid
            };
            (decision, trigger)
        };
        match decision {
            UnknownKid::Refuse => self.recorder.unknown_kid_refused(),
            UnknownKid::Wait => {
                // Nothing in flight any more means it just landed: its keys are held.
                let _ = self.flight.join(&()).await;
            }
            UnknownKid::Fetch => {
                self.refresh(trigger).await;
            }
        }
        self.keys().and_then(|keys| keys.get(kid).cloned())
    }

    /// One fetch and what it leaves behind; runs on the flight's task, to completion.
    async fn fetch_and_store(&self, trigger: FetchTrigger) -> Refreshed {
        self.first_fetch.send_replace(true);
        let result = self.fetch().await;
        let now = Instant::now();
        self.recorder.key_fetch(
            &self.url,
            trigger.as_str(),
            result.as_ref().err().map_or("ok", FetchError::kind),
        );
        let mut state = self.state();
        state.history.last_attempt = Some(now);
        let outcome = match result {
            Ok(keys) => {
                state.history.consecutive_failures = 0;
                state.last_error = None;
                let mut held = self.held.write().unwrap_or_else(|p| p.into_inner());
                let lost = held.as_ref().is_some_and(|h| h.keys.lost_keys_in(&keys));
                self.recorder
                    .key_set(&self.url, keys.len(), SystemTime::now());
                tracing::debug!(url = %self.url, keys = keys.len(), trigger = trigger.as_str(), "realm key set fetched");
                *held = Some(Held {
                    keys: Arc::new(keys),
                    fetched_at: now,
                });
                Refreshed::Updated { lost }
            }
            Err(error) => {
                state.history.consecutive_failures =
                    state.history.consecutive_failures.saturating_add(1);
                let failures = state.history.consecutive_failures;
                // A key URL that stays down (a retired host on the default allow-list) is reported on
                // the 1st, 2nd, 4th, 8th… failure, not every minute; `/readyz` and the metrics say it always.
                if failures.is_power_of_two() {
                    tracing::warn!(url = %self.url, trigger = trigger.as_str(), failures, %error, "cannot fetch the realm key set; the keys held (if any) stay in use");
                } else {
                    tracing::debug!(url = %self.url, trigger = trigger.as_str(), failures, %error, "cannot fetch the realm key set; the keys held (if any) stay in use");
                }
                state.last_error = Some(error);
                Refreshed::Failed
            }
        };
        drop(state);
        if let Refreshed::Updated { lost: true } = outcome {
            tracing::info!(url = %self.url, "a key was withdrawn from the realm key set; results verified before are dropped");
            (self.on_lost_keys)();
        }
        outcome
    }

    async fn fetch(&self) -> Result<KeySet, FetchError> {
        let mut response = self
            .client
            .get(&self.url)
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(transport_error)?;
        let status = response.status();
        if !status.is_success() {
            return Err(FetchError::Status(status.as_u16()));
        }
        let body = read_whole(&mut response, MAX_JWKS_BYTES)
            .await
            .map_err(|e| match e {
                ReadError::Transport(e) => transport_error(e),
                ReadError::TooLarge(_) => FetchError::TooLarge,
            })?;
        Ok(parse_jwks(&body)?)
    }

    /// The state for `/readyz`.
    pub fn status(&self) -> KeySourceStatus {
        let (keys, age) = match &*self.held.read().unwrap_or_else(|p| p.into_inner()) {
            Some(held) => (
                held.keys.len(),
                Some(Instant::now().saturating_duration_since(held.fetched_at)),
            ),
            None => (0, None),
        };
        let state = self.state();
        let label = match (
            keys > 0,
            state.history.last_attempt.is_some(),
            state.history.consecutive_failures,
        ) {
            (_, false, _) => "pending",
            (true, true, 0) => "fresh",
            (true, true, _) => "stale",
            (false, true, _) => "unavailable",
        };
        KeySourceStatus {
            url: self.url.clone(),
            state: label,
            keys,
            age_seconds: age.map(|a| a.as_secs()),
            consecutive_failures: state.history.consecutive_failures,
            last_error: state.last_error.as_ref().map(ToString::to_string),
        }
    }

    /// The background task: with [`KeyPolicy::prefetch`], fetch at once; otherwise wait until the first
    /// fetch starts (the first verification's). Then follow [`KeyPolicy::next_fetch`] until `shutdown`.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        if !self.policy.prefetch {
            let mut first = self.first_fetch.subscribe();
            tokio::select! {
                biased;
                _ = shutdown.wait_for(|stop| *stop) => return,
                _ = first.wait_for(|started| *started) => {}
            }
        }
        loop {
            let due = self
                .policy
                .next_fetch(Instant::now(), &self.history(), fastrand::f64());
            tokio::select! {
                biased;
                _ = shutdown.wait_for(|stop| *stop) => return,
                () = tokio::time::sleep_until(due) => {}
            }
            // Joins the first fetch if it is still in flight: it is due at once while none has landed.
            self.refresh(FetchTrigger::Scheduled).await;
        }
    }
}

fn transport_error(error: reqwest::Error) -> FetchError {
    if error.is_timeout() {
        return FetchError::Timeout;
    }
    // The URL is configured and reported on its own; the text says what failed.
    FetchError::Transport(describe(&error))
}
