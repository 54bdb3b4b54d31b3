//! The cache of one key URL's key set ([`KeySource`]).
//!
//! It has the four properties every cache of something from upstream has in this crate: single flight
//! (one fetch at a time; callers that find one in flight wait for it), a rate limit on the refetches
//! callers can trigger (an unknown `kid`, see [`super::policy`]), the last good value served through an
//! outage, and its age reported (`/readyz`, metrics). The fetch is bounded: connect and request timeouts,
//! no redirects, and a cap on the body size. The document itself is parsed by [`super::jwks`].

use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::SystemTime;

use tokio::time::Instant;

use super::VerifyRecorder;
pub use super::jwks::{JwksError, KeySet, MAX_JWKS_BYTES, RsaKey, parse_jwks};
use super::policy::{FetchHistory, KeyPolicy, UnknownKid};
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
    /// The background task (the first fetch at start, then periodically).
    Scheduled,
    /// A token named a `kid` the key set does not hold.
    UnknownKid,
}

impl FetchTrigger {
    pub fn as_str(self) -> &'static str {
        match self {
            FetchTrigger::Scheduled => "scheduled",
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
    /// A fetch holds, or is about to take, the gate.
    in_flight: bool,
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
    /// Serialises fetches: the single flight.
    gate: tokio::sync::Mutex<()>,
    /// Runs when a fetch finds a key withdrawn.
    on_lost_keys: Box<dyn Fn() + Send + Sync>,
    /// Counts finished fetches (bumped under the state lock), so a caller can wait for the fetch in
    /// flight to finish, and a caller that waited for the gate can see that a fetch happened meanwhile.
    finished: tokio::sync::watch::Sender<u64>,
}

/// What a fetch did to the held key set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refreshed {
    /// New keys are held; `lost` says some key held before is gone (withdrawn).
    Updated { lost: bool },
    /// The fetch failed; the previous keys (if any) stay.
    Failed,
    /// Another caller's fetch finished while this one waited: nothing fetched again.
    Coalesced,
}

impl KeySource {
    pub fn new(
        url: String,
        client: reqwest::Client,
        policy: KeyPolicy,
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
            gate: tokio::sync::Mutex::new(()),
            finished: tokio::sync::watch::Sender::new(0),
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

    fn fetches_finished(&self) -> u64 {
        *self.finished.borrow()
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

    /// Fetches now (single flight: if a fetch is in flight, waits for it and returns `Coalesced`).
    pub async fn refresh(&self, trigger: FetchTrigger) -> Refreshed {
        let seen = {
            let mut state = self.state();
            state.in_flight = true;
            self.fetches_finished()
        };
        let _gate = self.gate.lock().await;
        if self.fetches_finished() != seen {
            self.state().in_flight = false;
            return Refreshed::Coalesced;
        }
        self.fetch_holding_gate(trigger).await
    }

    /// Looks up `kid`, refetching once if the policy allows: the way a verification meets a rotated key.
    pub async fn key_for_unknown_kid(&self, kid: &str) -> Option<RsaKey> {
        let (decision, seen) = {
            let mut state = self.state();
            let decision =
                self.policy
                    .on_unknown_kid(Instant::now(), &state.history, state.in_flight);
            if decision == UnknownKid::Fetch {
                // Marked before the fetch starts, so concurrent callers see it and wait or refuse.
                state.history.last_unknown_kid_fetch = Some(Instant::now());
                state.in_flight = true;
            }
            (decision, self.fetches_finished())
        };
        match decision {
            UnknownKid::Refuse => self.recorder.unknown_kid_refused(),
            UnknownKid::Wait => {
                let mut finished = self.finished.subscribe();
                // Bounded by the fetch's own timeouts; the sender lives as long as `self`.
                let _ = finished.wait_for(|n| *n != seen).await;
            }
            UnknownKid::Fetch => {
                let _gate = self.gate.lock().await;
                if self.fetches_finished() == seen {
                    self.fetch_holding_gate(FetchTrigger::UnknownKid).await;
                } else {
                    // A scheduled fetch finished while this one waited for the gate: its keys will do.
                    self.state().in_flight = false;
                }
            }
        }
        self.keys().and_then(|keys| keys.get(kid).cloned())
    }

    async fn fetch_holding_gate(&self, trigger: FetchTrigger) -> Refreshed {
        let result = self.fetch().await;
        let now = Instant::now();
        self.recorder.key_fetch(
            &self.url,
            trigger.as_str(),
            result.as_ref().err().map_or("ok", FetchError::kind),
        );
        let mut state = self.state();
        state.in_flight = false;
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
        // Bumped under the state lock, after the keys are stored: a waiter that wakes sees them.
        self.finished.send_modify(|n| *n = n.wrapping_add(1));
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
        if response
            .content_length()
            .is_some_and(|len| len > MAX_JWKS_BYTES as u64)
        {
            return Err(FetchError::TooLarge);
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(transport_error)? {
            if body.len().saturating_add(chunk.len()) > MAX_JWKS_BYTES {
                return Err(FetchError::TooLarge);
            }
            body.extend_from_slice(&chunk);
        }
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

    /// The background task: fetch at once, then follow [`KeyPolicy::next_fetch`] until `shutdown`.
    pub async fn run(&self, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        loop {
            let due = self
                .policy
                .next_fetch(Instant::now(), &self.history(), fastrand::f64());
            tokio::select! {
                biased;
                _ = shutdown.wait_for(|stop| *stop) => return,
                () = tokio::time::sleep_until(due) => {}
            }
            self.refresh(FetchTrigger::Scheduled).await;
        }
    }
}

fn transport_error(error: reqwest::Error) -> FetchError {
    if error.is_timeout() {
        return FetchError::Timeout;
    }
    // The error and its sources on one line, clipped. The URL is configured, not secret, and reqwest
    // puts no body in its errors.
    let mut text = if error.is_connect() {
        "connection failed".to_string()
    } else {
        "transport error".to_string()
    };
    let mut source = std::error::Error::source(&error);
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    FetchError::Transport(
        text.chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .take(200)
            .collect(),
    )
}

#[cfg(test)]
mod tests;
