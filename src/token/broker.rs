//! The broker: one moka cache keyed by entity, one upstream flight per entity at a time.
//!
//! Three paths reach the IAM, and all of them go through [`Inner::fetch`], which holds the entity's
//! *fetch gate* (an async mutex) for the duration of the call:
//! - the background refresher (see [`super::refresher`]), which keeps a token ready so that after warm-up
//!   no client request waits on the IAM;
//! - a client request that finds no valid token: it joins moka's `try_get_with`, so concurrent cold
//!   requests share one call and its result or error, and the call runs in its own task so that a client
//!   hanging up does not cancel the fetch the others wait on;
//! - a forced refresh (`POST …/refresh`), rate-limited per entity.
//!
//! Whoever takes the gate second finds the generation moved on and returns the new token instead of
//! calling again. Client-triggered attempts are also limited to one per entity per second while no valid
//! token exists, so no amount of traffic can turn an outage into a hot loop against the IAM.
//!
//! Every stored token is also put in the entity's `current` pointer, which the hot path reads under a
//! read lock: moka's own `get` records each read for its eviction policy, which measured about 3 µs a
//! request. moka remains the cache that coalesces cold fetches and expires entries at their deadline.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, SystemTime};

use moka::Expiry;
use moka::future::Cache;
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::policy::{AttemptState, RefreshPolicy};
use super::refresher;
use super::{Token, TokenRejected};
use crate::entity::{EntityId, SecretError, SecretSource, fingerprint};
use crate::iam::{IamClient, IamError};
use crate::metrics::{Metrics, TokenCounters};
use crate::supervise::supervise;

/// Why an upstream fetch produced no token. Cloneable so that one failure can be shared by every waiter
/// and kept as the entity's "last error" for `/readyz` and 503 bodies. Never contains a secret.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FetchError {
    #[error(transparent)]
    Secret(#[from] SecretError),
    #[error(transparent)]
    Iam(#[from] IamError),
    #[error("IAM returned an unusable token: {0}")]
    Rejected(#[from] TokenRejected),
    #[error("IAM returned the token already held; treated as not refreshed")]
    SameToken,
    #[error("fetch task ended abnormally: {0}")]
    Internal(String),
}

impl FetchError {
    /// Low-cardinality label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            FetchError::Secret(_) => "secret_unreadable",
            FetchError::Iam(e) => e.kind(),
            FetchError::Rejected(_) => "rejected_token",
            FetchError::SameToken => "same_token",
            FetchError::Internal(_) => "internal",
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            FetchError::Iam(e) => e.retry_after(),
            _ => None,
        }
    }
}

/// What started an upstream call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    Background,
    Client,
    Forced,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Background => "background",
            Trigger::Client => "client",
            Trigger::Forced => "forced",
        }
    }
}

/// A token handed to a caller.
#[derive(Debug, Clone)]
pub struct Served {
    pub token: Arc<Token>,
    /// The last refresh attempt failed; the token is still valid but the broker is retrying.
    pub stale: bool,
}

/// How a token request ended, for the request counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestOutcome {
    Served,
    Stale,
    Unavailable,
}

/// Why a caller got no token.
#[derive(Debug, Clone)]
pub enum TokenError {
    UnknownEntity,
    /// No valid token; `reason` describes the last upstream failure, without secrets.
    Unavailable {
        reason: String,
        retry_after: Duration,
    },
}

/// What the token path tells the secret manager (see [`crate::secret::manager`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretEvent {
    /// The IAM answered 401 to the configured secret.
    Rejected,
    /// A token response carried the grace-period warning.
    GraceWarning,
    /// A token's `secret-expiry-ts` claim.
    ExpiryHint(SystemTime),
}

/// One entity's view for `/readyz` and `/metrics`.
#[derive(Debug, Clone)]
pub struct EntityStatus {
    pub entity_id: EntityId,
    pub ready: bool,
    pub stale: bool,
    pub expires_in: Option<u64>,
    pub consecutive_failures: u32,
    pub last_error: Option<String>,
    pub clock_skew_seconds: Option<f64>,
    pub secret_expires_at: Option<SystemTime>,
    /// The last token response carried the IAM's grace-period warning.
    pub secret_in_grace: bool,
    pub iam_message: Option<String>,
    /// A secret-lifecycle problem that makes the entity not ready (e.g. a rotated secret not yet stored).
    pub secret_alert: Option<String>,
    /// A secret-lifecycle oddity that needs a human but leaves tokens flowing (an expiry that cannot be
    /// right). Does not affect readiness.
    pub secret_warning: Option<String>,
    /// The admin login's state when rotation is on: `none`, `ok`, `backing_off`, `credentials_rejected`.
    pub admin_login: Option<&'static str>,
    /// When the last rotation succeeded.
    pub last_rotation: Option<SystemTime>,
}

impl EntityStatus {
    /// What the newest token alone says about an entity, with no failure and no secret-lifecycle news.
    pub fn of_token(entity_id: EntityId, latest: Option<&Token>, now: Instant) -> EntityStatus {
        let valid = latest.filter(|t| t.servable(now));
        EntityStatus {
            entity_id,
            ready: valid.is_some(),
            stale: false,
            expires_in: valid.map(|t| t.seconds_left(now)),
            consecutive_failures: 0,
            last_error: None,
            clock_skew_seconds: latest.and_then(|t| t.clock_skew_seconds),
            secret_expires_at: latest.and_then(|t| t.secret_expires_at),
            secret_in_grace: latest.is_some_and(|t| t.iam_message.is_some()),
            iam_message: latest.and_then(|t| t.iam_message.clone()),
            secret_alert: None,
            secret_warning: None,
            admin_login: None,
            last_rotation: None,
        }
    }
}

/// The entity token broker. Cheap to clone.
#[derive(Clone)]
pub struct Broker {
    inner: Arc<Inner>,
}

struct Inner {
    slots: BTreeMap<EntityId, Arc<Slot>>,
    cache: Cache<EntityId, Arc<Token>>,
    iam: IamClient,
    policy: RefreshPolicy,
    metrics: Arc<Metrics>,
}

/// Per-entity state. The gate serialises upstream calls; the mutex guards bookkeeping and is never held
/// across an `.await`.
struct Slot {
    id: EntityId,
    secret: SecretSource,
    gate: tokio::sync::Mutex<()>,
    state: Mutex<SlotState>,
    /// Mirrors "the last attempt failed" for the hot path, which should not take the mutex.
    stale: AtomicBool,
    /// Wakes the refresher when a token arrived by another path, so it reschedules.
    changed: Notify,
    /// The newest token, for the hot path. moka's `get` records every read for its eviction policy, which
    /// measured about 3 µs a request (bench/RESULTS.md); a read lock on this pointer costs nanoseconds.
    /// It is written wherever a token is stored, so it never disagrees with the cache, and it is the
    /// one record of the newest token (readiness, metrics and the fetch gate read it too).
    current: RwLock<Option<Arc<Token>>>,
    counters: TokenCounters,
}

#[derive(Default)]
struct SlotState {
    generation: u64,
    attempts: AttemptState,
    last_attempt_at: Option<Instant>,
    last_error: Option<FetchError>,
    last_forced_at: Option<Instant>,
    secret_fingerprint: Option<String>,
    /// A secret to use instead of the source's (a rotated secret not yet visible through the source).
    secret_override: Option<SecretString>,
    /// Where [`SecretEvent`]s go, when a secret manager listens.
    events: Option<mpsc::Sender<SecretEvent>>,
    /// The secret's expiry as `secret read` last reported it.
    secret_expiry_read: Option<SystemTime>,
    secret_alert: Option<String>,
    secret_warning: Option<String>,
    admin_login: Option<&'static str>,
    last_rotation: Option<SystemTime>,
}

impl Slot {
    fn state(&self) -> MutexGuard<'_, SlotState> {
        // A panic while holding this lock would be a bug; the data stays consistent, so keep going.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The newest token, servable or not.
    fn current_token(&self) -> Option<Arc<Token>> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Tells the secret manager, if one listens. A full queue drops the hint: the manager re-reads the
    /// secret's state on its own schedule anyway.
    fn notify_secret(&self, event: SecretEvent) {
        if let Some(events) = &self.state().events {
            let _ = events.try_send(event);
        }
    }

    /// The secret to use: the override while the source does not show it yet, else the source's.
    async fn current_secret(&self) -> Result<SecretString, SecretError> {
        let override_secret = self.state().secret_override.clone();
        let from_source = self.secret.load().await;
        match (override_secret, from_source) {
            (Some(pending), Ok(stored)) if pending.expose_secret() == stored.expose_secret() => {
                // The source caught up (the kubelet synced, the file was written): drop the override.
                self.state().secret_override = None;
                Ok(stored)
            }
            (Some(pending), _) => Ok(pending),
            (None, result) => result,
        }
    }
}

/// Entries expire from moka when their token stops being servable.
struct ServeDeadline;

impl Expiry<EntityId, Arc<Token>> for ServeDeadline {
    fn expire_after_create(
        &self,
        _: &EntityId,
        token: &Arc<Token>,
        _: std::time::Instant,
    ) -> Option<Duration> {
        Some(
            token
                .schedule
                .serve_until
                .saturating_duration_since(Instant::now()),
        )
    }

    fn expire_after_update(
        &self,
        _: &EntityId,
        token: &Arc<Token>,
        _: std::time::Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(
            token
                .schedule
                .serve_until
                .saturating_duration_since(Instant::now()),
        )
    }
}

impl Broker {
    pub fn new(
        entities: Vec<(EntityId, SecretSource)>,
        iam: IamClient,
        policy: RefreshPolicy,
        metrics: Arc<Metrics>,
    ) -> Self {
        let slots = entities
            .into_iter()
            .map(|(id, secret)| {
                let slot = Slot {
                    current: RwLock::new(None),
                    counters: metrics.token_counters(&id),
                    id: id.clone(),
                    secret,
                    gate: tokio::sync::Mutex::new(()),
                    state: Mutex::new(SlotState::default()),
                    stale: AtomicBool::new(false),
                    changed: Notify::new(),
                };
                (id, Arc::new(slot))
            })
            .collect::<BTreeMap<_, _>>();
        let cache = Cache::builder()
            .max_capacity(slots.len() as u64 + 1)
            .expire_after(ServeDeadline)
            .build();
        Self {
            inner: Arc::new(Inner {
                slots,
                cache,
                iam,
                policy,
                metrics,
            }),
        }
    }

    pub fn entity_ids(&self) -> impl Iterator<Item = &EntityId> {
        self.inner.slots.keys()
    }

    /// The only configured entity, if there is exactly one.
    pub fn single_entity(&self) -> Option<&EntityId> {
        let mut ids = self.inner.slots.keys();
        match (ids.next(), ids.next()) {
            (Some(only), None) => Some(only),
            _ => None,
        }
    }

    /// The configured entity named `raw`. No parsing or allocation: a string that is not a valid entity
    /// id cannot be a key.
    pub fn lookup(&self, raw: &str) -> Option<&EntityId> {
        self.inner.slots.get_key_value(raw).map(|(id, _)| id)
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }

    /// Counts a token request's outcome: `served`, `stale` or `unavailable`.
    pub fn count_request(&self, id: &EntityId, outcome: RequestOutcome) {
        if let Some(slot) = self.inner.slots.get(id) {
            match outcome {
                RequestOutcome::Served => slot.counters.served.inc(),
                RequestOutcome::Stale => slot.counters.stale.inc(),
                RequestOutcome::Unavailable => slot.counters.unavailable.inc(),
            };
        }
    }

    /// Starts one background refresher per entity. Each fetches at once, then follows the policy until
    /// `shutdown` turns true.
    pub fn spawn_refreshers(&self, shutdown: watch::Receiver<bool>) -> JoinSet<()> {
        let mut tasks = JoinSet::new();
        for slot in self.inner.slots.values() {
            let inner = Arc::clone(&self.inner);
            let slot = Arc::clone(slot);
            let task_shutdown = shutdown.clone();
            tasks.spawn(supervise(
                "refresher",
                slot.id.to_string(),
                shutdown.clone(),
                move || {
                    Self::refresher(Arc::clone(&inner), Arc::clone(&slot), task_shutdown.clone())
                },
            ));
        }
        tasks
    }

    /// One entity's background refresher.
    async fn refresher(inner: Arc<Inner>, slot: Arc<Slot>, shutdown: watch::Receiver<bool>) {
        let state_slot = Arc::clone(&slot);
        let attempt_slot = Arc::clone(&slot);
        let policy = inner.policy.clone();
        refresher::run(
            policy,
            move || state_slot.state().attempts,
            &slot.changed,
            shutdown,
            move || {
                let inner = Arc::clone(&inner);
                let slot = Arc::clone(&attempt_slot);
                async move {
                    let _ = inner.fetch_and_store(slot, Trigger::Background).await;
                }
            },
        )
        .await;
    }

    /// A valid token for `id`: from the cache, or — when none is held — from one coalesced upstream call.
    pub async fn token(&self, id: &EntityId) -> Result<Served, TokenError> {
        let slot = self.inner.slots.get(id).ok_or(TokenError::UnknownEntity)?;
        match Self::held_in(slot) {
            Some(served) => Ok(served),
            None => self.cold_fetch(slot).await,
        }
    }

    /// The held token for `id` if it may be handed out now; `None` when [`Broker::token`] would have to
    /// wait. No await and no allocation: the HTTP hot path answers from this alone.
    pub fn held(&self, id: &EntityId) -> Option<Served> {
        Self::held_in(self.inner.slots.get(id)?)
    }

    fn held_in(slot: &Slot) -> Option<Served> {
        let current = slot
            .current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        current
            .filter(|t| t.servable(Instant::now()))
            .map(|token| Served {
                token,
                stale: slot.stale.load(Ordering::Relaxed),
            })
    }

    async fn cold_fetch(&self, slot: &Arc<Slot>) -> Result<Served, TokenError> {
        if let Some((error, wait)) = self.inner.recent_failure(slot, Trigger::Client) {
            return Err(self.inner.unavailable(&error, wait));
        }
        let inner = Arc::clone(&self.inner);
        let task_slot = Arc::clone(slot);
        let result = self
            .inner
            .cache
            .try_get_with(slot.id.clone(), async move {
                // Detached, so a cancelled leader (a client that hung up) does not cancel the upstream call.
                tokio::spawn(async move { inner.fetch(&task_slot, Trigger::Client).await })
                    .await
                    .unwrap_or_else(|e| Err(FetchError::Internal(e.to_string())))
            })
            .await;
        match result {
            Ok(token) if token.servable(Instant::now()) => Ok(Served {
                token,
                stale: slot.stale.load(Ordering::Relaxed),
            }),
            Ok(_) => Err(TokenError::Unavailable {
                reason: "the newest token is past its hand-out deadline".into(),
                retry_after: Duration::from_secs(1),
            }),
            Err(error) => Err(self.inner.unavailable(&error, self.inner.wait_after(slot))),
        }
    }

    /// Forces a new token for a caller whose token a peer rejected. At most one per entity per
    /// `forced_refresh_interval`; within that window it waits for any fetch in flight and returns the
    /// newest token.
    pub async fn force_refresh(&self, id: &EntityId) -> Result<Served, TokenError> {
        let slot = self.inner.slots.get(id).ok_or(TokenError::UnknownEntity)?;
        let now = Instant::now();
        let allowed = {
            let mut state = slot.state();
            let allowed = self
                .inner
                .policy
                .forced_refresh_allowed(now, state.last_forced_at);
            if allowed {
                state.last_forced_at = Some(now);
            }
            allowed
        };
        self.inner.metrics.forced_refresh(id, allowed);
        if !allowed {
            drop(slot.gate.lock().await);
            return self.token(id).await;
        }
        if let Some((error, wait)) = self.inner.recent_failure(slot, Trigger::Forced) {
            return Err(self.inner.unavailable(&error, wait));
        }
        let inner = Arc::clone(&self.inner);
        let task_slot = Arc::clone(slot);
        match tokio::spawn(async move { inner.fetch_and_store(task_slot, Trigger::Forced).await })
            .await
        {
            Ok(Ok(token)) => Ok(Served {
                token,
                stale: false,
            }),
            Ok(Err(error)) => Err(self.inner.unavailable(&error, self.inner.wait_after(slot))),
            Err(e) => Err(self
                .inner
                .unavailable(&FetchError::Internal(e.to_string()), None)),
        }
    }

    /// Every entity's state, for `/readyz` and `/metrics`.
    pub fn status(&self) -> Vec<EntityStatus> {
        let now = Instant::now();
        self.inner
            .slots
            .values()
            .map(|slot| {
                let latest = slot.current_token();
                let state = slot.state();
                let mut status = EntityStatus::of_token(slot.id.clone(), latest.as_deref(), now);
                status.ready &= state.secret_alert.is_none();
                status.stale =
                    status.expires_in.is_some() && state.attempts.consecutive_failures > 0;
                status.consecutive_failures = state.attempts.consecutive_failures;
                status.last_error = state.last_error.as_ref().map(ToString::to_string);
                status.secret_expires_at = state.secret_expiry_read.or(status.secret_expires_at);
                status.secret_alert = state.secret_alert.clone();
                status.secret_warning = state.secret_warning.clone();
                status.admin_login = state.admin_login;
                status.last_rotation = state.last_rotation;
                status
            })
            .collect()
    }
}

/// The hooks the secret manager uses. Each takes a configured entity id; an unknown one is ignored.
impl Broker {
    fn slot(&self, id: &EntityId) -> Option<&Arc<Slot>> {
        self.inner.slots.get(id)
    }

    /// Subscribes to an entity's [`SecretEvent`]s (one subscriber per entity; a second replaces the first).
    pub fn secret_events(&self, id: &EntityId) -> Option<mpsc::Receiver<SecretEvent>> {
        let slot = self.slot(id)?;
        let (tx, rx) = mpsc::channel(16);
        slot.state().events = Some(tx);
        Some(rx)
    }

    /// The secret the next fetch will use.
    pub async fn current_secret(&self, id: &EntityId) -> Option<Result<SecretString, SecretError>> {
        Some(self.slot(id)?.current_secret().await)
    }

    /// Uses `secret` for fetches until the entity's secret source shows the same value.
    pub fn set_secret_override(&self, id: &EntityId, secret: Option<SecretString>) {
        if let Some(slot) = self.slot(id) {
            slot.state().secret_override = secret;
        }
    }

    /// Marks the entity not ready for a secret-lifecycle reason (or clears it).
    pub fn set_secret_alert(&self, id: &EntityId, alert: Option<String>) {
        if let Some(slot) = self.slot(id) {
            slot.state().secret_alert = alert;
        }
    }

    /// Reports a secret-lifecycle oddity that does not affect readiness (or clears it).
    pub fn set_secret_warning(&self, id: &EntityId, warning: Option<String>) {
        if let Some(slot) = self.slot(id) {
            slot.state().secret_warning = warning;
        }
    }

    /// Records the admin login's state for `/readyz`.
    pub fn note_admin_login(&self, id: &EntityId, state: &'static str) {
        if let Some(slot) = self.slot(id) {
            slot.state().admin_login = Some(state);
        }
    }

    /// Records the secret's expiry as `secret read` reported it.
    pub fn note_secret_expiry(&self, id: &EntityId, expires_at: Option<SystemTime>) {
        if let Some(slot) = self.slot(id) {
            slot.state().secret_expiry_read = expires_at;
        }
    }

    /// Records a rotation's outcome for `/metrics` and `/readyz`.
    pub fn note_rotation(&self, id: &EntityId, outcome: &str) {
        if let Some(slot) = self.slot(id) {
            if outcome == "ok" {
                slot.state().last_rotation = Some(SystemTime::now());
            }
            self.inner.metrics.rotation(id, outcome);
        }
    }

    /// Fetches a new token now (after the secret changed), bypassing the forced-refresh rate limit.
    pub async fn refresh_now(&self, id: &EntityId) -> Result<Arc<Token>, FetchError> {
        let Some(slot) = self.slot(id).cloned() else {
            return Err(FetchError::Internal("unknown entity".into()));
        };
        let inner = Arc::clone(&self.inner);
        tokio::spawn(async move { inner.fetch_and_store(slot, Trigger::Background).await })
            .await
            .unwrap_or_else(|e| Err(FetchError::Internal(e.to_string())))
    }
}

impl Inner {
    /// Fetches and puts the result in the cache (the moka path inserts by itself).
    async fn fetch_and_store(
        &self,
        slot: Arc<Slot>,
        trigger: Trigger,
    ) -> Result<Arc<Token>, FetchError> {
        let token = self.fetch(&slot, trigger).await?;
        self.cache.insert(slot.id.clone(), Arc::clone(&token)).await;
        Ok(token)
    }

    /// A caller-triggered attempt that the policy holds back gets the last failure back, with how long
    /// it must still wait, instead of calling the IAM again ([`RefreshPolicy::caller_attempt_wait`]).
    fn recent_failure(
        &self,
        slot: &Slot,
        trigger: Trigger,
    ) -> Option<(FetchError, Option<Duration>)> {
        if trigger == Trigger::Background {
            return None;
        }
        let state = slot.state();
        let now = Instant::now();
        let holds_valid = slot.current_token().is_some_and(|t| t.servable(now));
        if holds_valid && trigger == Trigger::Client {
            return None;
        }
        let wait = self
            .policy
            .caller_attempt_wait(now, &state.attempts, holds_valid)?;
        state.last_error.clone().map(|error| (error, Some(wait)))
    }

    /// How long callers must wait after the failure just recorded.
    fn wait_after(&self, slot: &Slot) -> Option<Duration> {
        let state = slot.state();
        self.policy
            .caller_attempt_wait(Instant::now(), &state.attempts, false)
    }

    /// The answer for a caller who gets no token: the failure, and a `Retry-After` that is the remaining
    /// wait (whole seconds, rounded up, at least one).
    fn unavailable(&self, error: &FetchError, wait: Option<Duration>) -> TokenError {
        let wait = wait.unwrap_or(self.policy.cold_attempt_interval);
        let whole_seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        TokenError::Unavailable {
            reason: error.to_string(),
            retry_after: Duration::from_secs(whole_seconds.max(1)),
        }
    }

    /// The one place that calls the IAM for an entity token.
    async fn fetch(&self, slot: &Slot, trigger: Trigger) -> Result<Arc<Token>, FetchError> {
        let seen_generation = slot.state().generation;
        let _gate = slot.gate.lock().await;
        {
            let state = slot.state();
            if let Some(token) = slot.current_token().filter(|t| t.servable(Instant::now())) {
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
        slot.state().last_attempt_at = Some(Instant::now());
        let started = Instant::now();
        let result = self.call_iam(slot).await;
        self.metrics.iam_request(
            &slot.id,
            trigger.as_str(),
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
        let secret = slot.current_secret().await?;
        let secret_fp = fingerprint(&secret);
        {
            let mut state = slot.state();
            if state.secret_fingerprint.as_deref() != Some(secret_fp.as_str()) {
                if let Some(previous) = &state.secret_fingerprint {
                    tracing::info!(entity = %slot.id, from = %previous, to = %secret_fp, "entity secret changed");
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
            self.metrics.iam_warning(&slot.id);
            slot.notify_secret(SecretEvent::GraceWarning);
        }
        if let Some(expiry) = token.secret_expires_at {
            slot.notify_secret(SecretEvent::ExpiryHint(expiry));
        }
        if let Some(skew) = token.clock_skew_seconds.filter(|s| s.abs() > 60.0) {
            tracing::warn!(entity = %slot.id, clock_skew_seconds = skew, "local clock differs from the IAM's by more than a minute; lifetimes use the monotonic clock and are unaffected");
        }
        {
            // Lock order everywhere: the state mutex, then the `current` lock.
            let mut state = slot.state();
            *slot.current.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::clone(&token));
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
            let has_valid = slot.current_token().is_some_and(|t| t.servable(now));
            slot.stale.store(has_valid, Ordering::Relaxed);
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
            slot.notify_secret(SecretEvent::Rejected);
        }
    }
}
