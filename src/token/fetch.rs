//! The one place that calls the IAM for entity tokens, and what it records about each call.
//!
//! Three paths reach the IAM, and all of them go through `Fetcher::fetch`, which holds the entity's fetch
//! gate for the duration of the call:
//! - the background refresher ([`super::refresher`]), which keeps a token ready so that after warm-up no
//!   client request waits on the IAM;
//! - a client request that finds no valid token (see [`super::broker`]: they share one
//!   [`crate::upstream::Flight`]);
//! - a forced refresh (`POST …/refresh`).
//!
//! Whoever takes the gate second finds the generation moved on and returns the new token instead of
//! calling again. Caller-triggered attempts are held back by the policy while a failure is recent or the
//! IAM's `Retry-After` runs ([`RefreshPolicy::caller_attempt_wait`]), so no amount of traffic can turn an
//! outage into a hot loop against the IAM.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;

use super::Token;
use super::policy::RefreshPolicy;
use super::recorder::{TokenRecorder, Trigger};
use super::slot::Slot;
use super::status::{FetchError, TokenError};
use crate::entity::{EntityId, fingerprint};
use crate::iam::IamClient;
use crate::secret::SecretEvent;
use crate::upstream::Flight;

/// Calls the IAM for entity tokens and records the outcomes in the slots.
pub(super) struct Fetcher {
    /// Client requests that find no valid token share one fetch per entity. In flight only: the slot's
    /// `current` pointer is where a token is kept.
    pub flight: Flight<EntityId, Result<Arc<Token>, FetchError>>,
    pub iam: IamClient,
    pub policy: RefreshPolicy,
    pub recorder: Arc<dyn TokenRecorder>,
}

impl Fetcher {
    /// Fetches in a task of its own, so that a caller who goes away (a forced refresh whose client hung
    /// up) does not cancel a call under way, and a panic in it is an error, not a lost task. Client
    /// requests go through the [`Flight`] instead, which does the same and coalesces them.
    pub async fn detached(
        self: &Arc<Self>,
        slot: &Arc<Slot>,
        trigger: Trigger,
    ) -> Result<Arc<Token>, FetchError> {
        let fetcher = Arc::clone(self);
        let slot = Arc::clone(slot);
        tokio::spawn(async move { fetcher.fetch(&slot, trigger).await })
            .await
            .unwrap_or_else(|e| Err(FetchError::Internal(e.to_string())))
    }

    /// A caller-triggered attempt that the policy holds back gets the last failure back, with how long
    /// it must still wait, instead of calling the IAM again ([`RefreshPolicy::caller_attempt_wait`]).
    pub fn recent_failure(
        &self,
        slot: &Slot,
        trigger: Trigger,
    ) -> Option<(FetchError, Option<Duration>)> {
        if trigger == Trigger::Background {
            return None;
        }
        let state = slot.state();
        let now = Instant::now();
        let holds_valid = slot.servable_token(now).is_some();
        if holds_valid && trigger == Trigger::Client {
            return None;
        }
        let wait = self
            .policy
            .caller_attempt_wait(now, &state.attempts, holds_valid)?;
        state.last_error.clone().map(|error| (error, Some(wait)))
    }

    /// How long callers must wait after the failure just recorded.
    pub fn wait_after(&self, slot: &Slot) -> Option<Duration> {
        let state = slot.state();
        self.policy
            .caller_attempt_wait(Instant::now(), &state.attempts, false)
    }

    /// The answer for a caller who gets no token: the failure, and a `Retry-After` that is the remaining
    /// wait (whole seconds, rounded up, at least one).
    pub fn unavailable(&self, error: &FetchError, wait: Option<Duration>) -> TokenError {
        let wait = wait.unwrap_or(self.policy.cold_attempt_interval);
        let whole_seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        TokenError::Unavailable {
            reason: error.to_string(),
            retry_after: Duration::from_secs(whole_seconds.max(1)),
        }
    }

    /// The one place that calls the IAM for an entity token.
    pub async fn fetch(&self, slot: &Slot, trigger: Trigger) -> Result<Arc<Token>, FetchError> {
        let seen_generation = slot.state().generation;
        let _gate = slot.gate.lock().await;
        {
            let state = slot.state();
            if let Some(token) = slot.servable_token(Instant::now()) {
                // A client came here because it found no valid token; one exists now, so it is served. The
                // refresher and a forced refresh want a *newer* token than the one they saw: only a token
                // obtained while they waited for the gate satisfies them.
                if trigger == Trigger::Client || state.generation != seen_generation {
                    return Ok(token);
                }
            }
        }
        if let Some((error, _)) = self.recent_failure(slot, trigger) {
            return Err(error);
        }
        let started = Instant::now();
        let result = self.call_iam(slot).await;
        self.recorder.iam_request(
            &slot.id,
            trigger,
            result.as_ref().err().map_or("ok", FetchError::kind),
            started.elapsed(),
        );
        match result {
            Ok(token) => Ok(self.record_success(slot, token, trigger)),
            Err(error) => {
                self.record_failure(slot, &error, trigger);
                Err(error)
            }
        }
    }

    async fn call_iam(&self, slot: &Slot) -> Result<Token, FetchError> {
        let secret = slot.secret.current().await?;
        let secret_fp = fingerprint(&secret);
        {
            let mut state = slot.state();
            if state.secret_fingerprint.as_deref() != Some(secret_fp.as_str()) {
                match &state.secret_fingerprint {
                    Some(previous) => {
                        tracing::info!(entity = %slot.id, from = %previous, to = %secret_fp, "entity secret changed");
                    }
                    // The first read, wrong secret or not: the fingerprint to compare with
                    // `aa-token-broker secret fingerprint` of the expected one.
                    None => {
                        tracing::info!(entity = %slot.id, secret = %secret_fp, "entity secret read");
                    }
                }
                state.secret_fingerprint = Some(secret_fp);
            }
        }
        let grant = self.iam.entity_token(&slot.id, &secret).await?;
        drop(secret);
        let token = Token::from_grant(&slot.id, grant, &self.policy, fastrand::f64())?;
        if slot
            .current_token()
            .is_some_and(|held| held.same_value_as(&token))
        {
            return Err(FetchError::SameToken);
        }
        Ok(token)
    }

    fn record_success(&self, slot: &Slot, token: Token, trigger: Trigger) -> Arc<Token> {
        let token = Arc::new(token);
        if let Some(message) = &token.iam_message {
            tracing::warn!(entity = %slot.id, iam_message = %message, "IAM warning on token response: the entity secret has expired and is inside its grace period");
            self.recorder.iam_warning(&slot.id);
            slot.secret.tell(SecretEvent::GraceWarning);
        }
        if let Some(expiry) = token.secret_expires_at {
            slot.secret.tell(SecretEvent::ExpiryHint(expiry));
        }
        if let Some(skew) = token.clock_skew_seconds.filter(|s| s.abs() > 60.0) {
            tracing::warn!(entity = %slot.id, clock_skew_seconds = skew, "local clock differs from the IAM's by more than a minute; lifetimes use the monotonic clock and are unaffected");
        }
        {
            // Lock order everywhere: the state mutex, then the `current` lock.
            let mut state = slot.state();
            *slot
                .current
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Arc::clone(&token));
            state.generation += 1;
            state.attempts.token = Some(token.schedule);
            state.attempts.consecutive_failures = 0;
            state.attempts.last_failure_at = None;
            state.attempts.retry_after = None;
            state.last_error = None;
        }
        slot.stale.store(false, Ordering::Relaxed);
        slot.changed.notify_one();
        tracing::info!(
            entity = %slot.id,
            trigger = trigger.as_str(),
            token = %token.fingerprint,
            lifetime_s = token.lifetime.as_secs(),
            refresh_in_s = token.schedule.refresh_at.saturating_duration_since(Instant::now()).as_secs(),
            "entity token obtained"
        );
        token
    }

    fn record_failure(&self, slot: &Slot, error: &FetchError, trigger: Trigger) {
        let now = Instant::now();
        let failures = {
            let mut state = slot.state();
            state.attempts.consecutive_failures =
                state.attempts.consecutive_failures.saturating_add(1);
            state.attempts.last_failure_at = Some(now);
            state.attempts.retry_after = error.retry_after();
            state.last_error = Some(error.clone());
            slot.stale
                .store(slot.servable_token(now).is_some(), Ordering::Relaxed);
            state.attempts.consecutive_failures
        };
        tracing::warn!(
            entity = %slot.id,
            trigger = trigger.as_str(),
            consecutive_failures = failures,
            error = %error,
            "entity token fetch failed"
        );
        if matches!(error, FetchError::Iam(e) if e.is_unauthorized()) {
            slot.secret.tell(SecretEvent::Rejected);
        }
    }
}
