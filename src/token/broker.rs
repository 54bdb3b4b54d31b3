//! The broker: the handle every other part of the process holds to get a token for an entity.
//!
//! It keeps one `Slot` per configured entity. A request that finds a servable token is answered from the
//! slot's `current` pointer (no await, no allocation: what the hot path uses). A request that finds none
//! joins the entity's [`Flight`], so concurrent cold requests share one upstream call and its result or
//! error, and a client that hangs up cancels nothing the others wait on; the call itself is the
//! `Fetcher`'s. The token it gets is kept in the slot, not in the flight.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::fetch::Fetcher;
use super::policy::RefreshPolicy;
use super::recorder::{TokenRecorder, Trigger};
use super::refresher;
use super::slot::Slot;
use super::status::{EntityStatus, RequestOutcome, Served, TokenError};
use crate::entity::EntityId;
use crate::iam::IamClient;
use crate::secret::SecretCell;
use crate::supervise::supervise;
use crate::upstream::Flight;

/// The entity token broker. Cheap to clone.
#[derive(Clone)]
pub struct Broker {
    slots: Arc<BTreeMap<EntityId, Arc<Slot>>>,
    fetcher: Arc<Fetcher>,
}

impl Broker {
    /// A broker for `entities`, each with the cell its secret is read from.
    pub fn new(
        entities: Vec<(EntityId, Arc<SecretCell>)>,
        iam: IamClient,
        policy: RefreshPolicy,
        recorder: Arc<dyn TokenRecorder>,
    ) -> Self {
        let slots = entities
            .into_iter()
            .map(|(id, secret)| {
                let slot = Slot::new(id.clone(), secret, recorder.request_tallies(&id));
                (id, Arc::new(slot))
            })
            .collect::<BTreeMap<_, _>>();
        // A cold fetch may first wait for the gate (a call under way), then make its own call.
        let bound = iam.timeouts().call_bound().saturating_mul(2);
        let flight = Flight::new(slots.len() as u64 + 1, bound);
        Self {
            slots: Arc::new(slots),
            fetcher: Arc::new(Fetcher {
                flight,
                iam,
                policy,
                recorder,
            }),
        }
    }

    pub fn entity_ids(&self) -> impl Iterator<Item = &EntityId> {
        self.slots.keys()
    }

    /// The only configured entity, if there is exactly one.
    pub fn single_entity(&self) -> Option<&EntityId> {
        let mut ids = self.slots.keys();
        match (ids.next(), ids.next()) {
            (Some(only), None) => Some(only),
            _ => None,
        }
    }

    /// The configured entity named `raw`. No parsing or allocation: a string that is not a valid entity
    /// id cannot be a key.
    pub fn lookup(&self, raw: &str) -> Option<&EntityId> {
        self.slots.get_key_value(raw).map(|(id, _)| id)
    }

    /// Counts a token request's outcome: `served`, `stale` or `unavailable`.
    pub fn count_request(&self, id: &EntityId, outcome: RequestOutcome) {
        if let Some(slot) = self.slots.get(id) {
            match outcome {
                RequestOutcome::Served => slot.tallies.served.add(),
                RequestOutcome::Stale => slot.tallies.stale.add(),
                RequestOutcome::Unavailable => slot.tallies.unavailable.add(),
            }
        }
    }

    /// Starts one background refresher per entity, each under [`supervise`]. Each fetches at once, then
    /// follows the policy until `shutdown` turns true; a replaced secret makes it fetch at once too.
    pub fn spawn_refreshers(&self, shutdown: watch::Receiver<bool>) -> JoinSet<()> {
        let mut tasks = JoinSet::new();
        for slot in self.slots.values() {
            let fetcher = Arc::clone(&self.fetcher);
            let slot = Arc::clone(slot);
            let task_shutdown = shutdown.clone();
            tasks.spawn(supervise(
                "refresher",
                slot.id.to_string(),
                shutdown.clone(),
                move || {
                    refresh(
                        Arc::clone(&fetcher),
                        Arc::clone(&slot),
                        task_shutdown.clone(),
                    )
                },
            ));
        }
        tasks
    }

    /// A valid token for `id`: the held one, or — when none is held — one from a coalesced upstream call.
    pub async fn token(&self, id: &EntityId) -> Result<Served, TokenError> {
        let slot = self.slots.get(id).ok_or(TokenError::UnknownEntity)?;
        match held_in(slot) {
            Some(served) => Ok(served),
            None => self.cold_fetch(slot).await,
        }
    }

    /// The held token for `id` if it may be handed out now; `None` when [`Broker::token`] would have to
    /// wait. No await and no allocation: the HTTP hot path answers from this alone.
    pub fn held(&self, id: &EntityId) -> Option<Served> {
        held_in(self.slots.get(id)?)
    }

    async fn cold_fetch(&self, slot: &Arc<Slot>) -> Result<Served, TokenError> {
        let fetcher = &self.fetcher;
        if let Some((error, wait)) = fetcher.recent_failure(slot, Trigger::Client) {
            return Err(fetcher.unavailable(&error, wait));
        }
        let leader = Arc::clone(fetcher);
        let task_slot = Arc::clone(slot);
        let result = fetcher
            .flight
            .run(
                slot.id.clone(),
                || true,
                move || async move { leader.fetch(&task_slot, Trigger::Client).await },
            )
            .await
            .unwrap_or_else(|e| Err(e.into()));
        match result {
            Ok(token) if token.servable(Instant::now()) => Ok(Served {
                token,
                stale: slot.stale.load(Ordering::Relaxed),
            }),
            Ok(_) => Err(TokenError::Unavailable {
                reason: "the newest token is past its hand-out deadline".into(),
                retry_after: Duration::from_secs(1),
            }),
            Err(error) => Err(fetcher.unavailable(&error, fetcher.wait_after(slot))),
        }
    }

    /// Forces a new token for a caller whose token a peer rejected. At most one per entity per
    /// `forced_refresh_interval`; within that window it waits for any fetch in flight and returns the
    /// newest token.
    pub async fn force_refresh(&self, id: &EntityId) -> Result<Served, TokenError> {
        let slot = self.slots.get(id).ok_or(TokenError::UnknownEntity)?;
        let fetcher = &self.fetcher;
        let now = Instant::now();
        let allowed = {
            let mut state = slot.state();
            let allowed = fetcher
                .policy
                .forced_refresh_allowed(now, state.last_forced_at);
            if allowed {
                state.last_forced_at = Some(now);
            }
            allowed
        };
        fetcher.recorder.forced_refresh(id, allowed);
        if !allowed {
            drop(slot.gate.lock().await);
            return self.token(id).await;
        }
        if let Some((error, wait)) = fetcher.recent_failure(slot, Trigger::Forced) {
            return Err(fetcher.unavailable(&error, wait));
        }
        match fetcher.detached(slot, Trigger::Forced).await {
            Ok(token) => Ok(Served {
                token,
                stale: false,
            }),
            Err(error) => Err(fetcher.unavailable(&error, fetcher.wait_after(slot))),
        }
    }

    /// Every entity's state, for `/readyz` and `/metrics`.
    pub fn status(&self) -> Vec<EntityStatus> {
        let now = Instant::now();
        self.slots
            .values()
            .map(|slot| {
                let latest = slot.current_token();
                let mut status = EntityStatus::of_token(slot.id.clone(), latest.as_deref(), now);
                {
                    let state = slot.state();
                    status.consecutive_failures = state.attempts.consecutive_failures;
                    status.stale =
                        status.expires_in.is_some() && state.attempts.consecutive_failures > 0;
                    status.last_error = state.last_error.as_ref().map(ToString::to_string);
                    status.secret_fingerprint = state.secret_fingerprint.clone();
                }
                status.with_secret(slot.secret.status())
            })
            .collect()
    }
}

fn held_in(slot: &Slot) -> Option<Served> {
    slot.servable_token(Instant::now()).map(|token| Served {
        token,
        stale: slot.stale.load(Ordering::Relaxed),
    })
}

/// One entity's background refresher: it follows the policy, and fetches at once when the secret is
/// replaced (a rotation, a recovered secret).
async fn refresh(fetcher: Arc<Fetcher>, slot: Arc<Slot>, shutdown: watch::Receiver<bool>) {
    let state_slot = Arc::clone(&slot);
    let attempt_slot = Arc::clone(&slot);
    let policy = fetcher.policy.clone();
    refresher::run(
        policy,
        move || state_slot.state().attempts,
        &slot.changed,
        slot.secret.replacement_signal(),
        shutdown,
        move || {
            let fetcher = Arc::clone(&fetcher);
            let slot = Arc::clone(&attempt_slot);
            async move {
                let _ = fetcher.detached(&slot, Trigger::Background).await;
            }
        },
    )
    .await;
}
