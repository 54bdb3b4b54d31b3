//! What the CR cache holds and how a held record answers: the known senders (by [`Role`], then id), what
//! the negative cache remembers, and the choice of a key for a `kid` (the current certificate's, or the
//! replaced one's within its grace).

use std::collections::HashMap;
use std::sync::{Arc, MutexGuard};

use tokio::time::Instant;

use super::policy::{Action, EntryClock, RegistryPolicy};
use super::{Certificate, EntityKey, Found, Inner, MAX_KNOWN_PER_TYPE};
use crate::entity::{PerRole, Role};

/// A sender the CR vouched for: its key, and the one it replaced.
pub(super) struct Known {
    pub(super) clock: EntryClock,
    pub(super) current: Certificate,
    /// The keys `current` replaced, and when the change was seen.
    pub(super) previous: Option<(Certificate, Instant)>,
}

/// What the negative cache remembers of a sender.
#[derive(Debug, Clone)]
pub(super) enum Negative {
    /// The CR does not know it (or does not show it to us, or shows no usable key).
    Unknown,
    /// The last lookup failed and nothing is held: the next one waits the failure backoff.
    Failed {
        attempted_at: Instant,
        reason: String,
    },
}

/// A sender: its role (the CR type) and its id.
pub(super) type SenderKey = (Role, String);

impl Inner {
    pub(super) fn known(&self) -> MutexGuard<'_, PerRole<HashMap<String, Known>>> {
        self.known.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// For a known sender: what the policy says, and the answer from its record.
    pub(super) fn known_decision(
        &self,
        role: Role,
        id: &str,
        kid: Option<&str>,
        now: Instant,
    ) -> Option<(Action, Found)> {
        let known = self.known();
        let entry = known.get(role).get(id)?;
        let choice = choose(entry, kid, &self.policy, now);
        let action = self.policy.decide(entry.clock, choice.is_some(), now);
        Some((action, choice.map_or(Found::NoSuchKid, Found::Key)))
    }

    pub(super) fn store_known(
        &self,
        role: Role,
        id: &str,
        fetched: Certificate,
        attempted_at: Instant,
        now: Instant,
    ) {
        let clock = EntryClock {
            fetched_at: Some(now),
            attempted_at: Some(attempted_at),
            failed: false,
        };
        let mut known = self.known();
        let of_type = known.get_mut(role);
        if let Some(entry) = of_type.get_mut(id) {
            let changed = entry.current != fetched;
            let old = std::mem::replace(&mut entry.current, fetched);
            if changed {
                tracing::info!(entity = id, old_kids = ?old.kids(), new_kids = ?entry.current.kids(), "a peer's signing key changed in the CR; the previous one verifies for its grace period");
                // With no grace, the replaced key is dropped at once.
                entry.previous = (!self.policy.previous_key_grace.is_zero()).then_some((old, now));
            }
            entry.clock = clock;
            return;
        }
        if of_type.len() >= MAX_KNOWN_PER_TYPE {
            // Only the CR's own entities get here: give way to the one fetched longest ago.
            let oldest = of_type
                .iter()
                .min_by_key(|(_, entry)| entry.clock.fetched_at)
                .map(|(oldest, _)| oldest.clone());
            if let Some(oldest) = oldest {
                of_type.remove(&oldest);
            }
        }
        of_type.insert(
            id.to_string(),
            Known {
                clock,
                current: fetched,
                previous: None,
            },
        );
    }
}

/// The key for `kid`: the current certificate's when it has one (or no `kid` is named), else the
/// previous certificate's within its grace.
pub(super) fn choose(
    entry: &Known,
    kid: Option<&str>,
    policy: &RegistryPolicy,
    now: Instant,
) -> Option<Arc<EntityKey>> {
    entry.current.choose(kid).or_else(|| {
        let kid = kid?;
        entry
            .previous
            .as_ref()
            .filter(|(_, at)| policy.previous_key_valid(*at, now))
            .and_then(|(old, _)| {
                old.keys()
                    .iter()
                    .find(|k| k.kid.as_deref() == Some(kid))
                    .map(Arc::clone)
            })
    })
}
