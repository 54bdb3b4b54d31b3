//! The Central Registry client and the cache of peers' signing keys (spec §1).
//!
//! - [`record`]: the entity-info answer, parsed leniently.
//! - [`Registry`] (this file): `GET {cr}/v2/entityInfo/{type}/{id}` with the broker's own entity token,
//!   and a cache per entity with the properties of every upstream cache of this crate: single flight (one
//!   fetch per entity at a time; callers that find one in flight wait for it and use its answer), a rate
//!   limit on the refetches callers can trigger (an unknown `kid`), the last good record served through an
//!   outage, and the previous key kept one cache period after a change. When to fetch is decided by
//!   [`crate::registry::policy`]; this file only follows it.
//!
//! A `401` from the CR means our token was refused: the token is refreshed once through the broker's
//! forced-refresh path and the call retried; a second `401` is an outage, not a reason to loop. The CR is
//! never asked to do anything but read (`GET`), redirects are not followed, and answers are capped.

pub mod policy;
pub mod record;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

use crate::entity::EntityId;
use crate::iam::IamTimeouts;
use crate::iam::url::entity_info_url;
use crate::registry::policy::{Action, EntryClock, RegistryPolicy};
use crate::token::broker::Broker;
pub use record::{EntityKey, RecordError, TYPES};

/// Entities remembered per type. Senders come from local callers (`/v1/verify-signature`) or verified
/// tokens (`/v1/authorize`); a caller that names endless distinct senders cannot grow the cache past this.
pub const MAX_ENTRIES_PER_TYPE: usize = 4096;
/// Largest CR answer read: one record is a few KiB.
pub const MAX_RECORD_BYTES: usize = 256 * 1024;

/// Why no key could be had for a sender.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    /// The CR does not know the entity (or does not let us see it): `404`/`403`, or no usable key.
    #[error("the Central Registry has no usable key for {0}")]
    UnknownSender(String),
    /// The CR could not be asked, and nothing is held.
    #[error("the Central Registry is unavailable: {reason}")]
    Unavailable {
        reason: String,
        retry_after: Duration,
    },
}

/// What the lookup of a `kid` found.
#[derive(Debug, Clone)]
pub enum Found {
    /// The key a signature must verify with (shared with the cache: no copy per request).
    Key(Arc<EntityKey>),
    /// The entity is known but holds no key with that `kid` (now, or within the previous-key period).
    NoSuchKid,
}

/// Entries by type (in the order of [`TYPES`]) and id, each behind its own async lock: the single flight.
/// Looked up by `&str`, so a request allocates nothing to find its sender.
type Entries = [HashMap<String, Arc<tokio::sync::Mutex<Entry>>>; 3];

#[derive(Default)]
struct Entry {
    clock: EntryClock,
    current: Option<Arc<EntityKey>>,
    /// The key `current` replaced, and when the change was seen.
    previous: Option<(Arc<EntityKey>, Instant)>,
    /// The CR said the entity does not exist (kept like a record, so it is not asked again at once).
    unknown: bool,
    last_error: Option<String>,
}

/// The CR key cache.
pub struct Registry {
    base: String,
    client: reqwest::Client,
    broker: Broker,
    /// The entity whose token the CR calls carry.
    caller: EntityId,
    policy: RegistryPolicy,
    entries: Mutex<Entries>,
}

impl Registry {
    /// A cache for the CR at `base` (`https://…/cr`), calling with `caller`'s token from `broker`.
    pub fn new(
        base: &str,
        broker: Broker,
        caller: EntityId,
        policy: RegistryPolicy,
        timeouts: IamTimeouts,
    ) -> Result<Self, reqwest::Error> {
        crate::install_crypto_provider();
        let client = reqwest::Client::builder()
            .connect_timeout(timeouts.connect)
            .timeout(timeouts.request)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("aa-token-broker/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            base: base.trim_end_matches('/').to_string(),
            client,
            broker,
            caller,
            policy,
            entries: Mutex::new(Default::default()),
        })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    fn entries(&self) -> MutexGuard<'_, Entries> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The key of entity `id` of type `kind` for a message naming `kid` (or none). Fetches when the
    /// policy says so; callers for one entity queue on its entry, so concurrent misses make one call.
    pub async fn key_for(
        &self,
        kind: &str,
        id: &str,
        kid: Option<&str>,
    ) -> Result<Found, RegistryError> {
        let index = TYPES
            .iter()
            .position(|t| *t == kind)
            .ok_or_else(|| RegistryError::UnknownSender(id.to_string()))?;
        let slot = {
            let mut entries = self.entries();
            let of_type = &mut entries[index];
            match of_type.get(id) {
                Some(slot) => Arc::clone(slot),
                None => {
                    if of_type.len() >= MAX_ENTRIES_PER_TYPE {
                        // Forget entities that hold no key and that no lookup is using.
                        of_type.retain(|_, slot| {
                            slot.try_lock()
                                .map_or(true, |entry| entry.current.is_some())
                        });
                    }
                    if of_type.len() >= MAX_ENTRIES_PER_TYPE {
                        return Err(RegistryError::UnknownSender(id.to_string()));
                    }
                    Arc::clone(of_type.entry(id.to_string()).or_default())
                }
            }
        };
        let mut entry = slot.lock().await;
        let now = Instant::now();
        let known = choose(&entry, kid, &self.policy, now).is_some();
        match self.policy.decide(entry.clock, known, now) {
            Action::Use => {}
            Action::RetryAfter(wait) => {
                return Err(RegistryError::Unavailable {
                    reason: entry
                        .last_error
                        .clone()
                        .unwrap_or_else(|| "a recent fetch failed".into()),
                    retry_after: wait,
                });
            }
            Action::Fetch => {
                entry.clock.attempted_at = Some(now);
                match self.fetch(kind, id).await {
                    Ok(Some(fetched)) => {
                        entry.clock.failed = false;
                        entry.clock.fetched_at = Some(Instant::now());
                        entry.unknown = false;
                        entry.last_error = None;
                        if let Some(old) = entry.current.take()
                            && old.key != fetched.key
                        {
                            tracing::info!(entity = id, old_kid = ?old.kid, new_kid = ?fetched.kid, "a peer's signing key changed in the CR; the previous one verifies for one cache period");
                            entry.previous = Some((old, Instant::now()));
                        }
                        entry.current = Some(Arc::new(fetched));
                    }
                    Ok(None) => {
                        entry.clock.failed = false;
                        entry.clock.fetched_at = Some(Instant::now());
                        entry.unknown = true;
                        entry.current = None;
                        entry.previous = None;
                    }
                    Err(reason) => {
                        tracing::warn!(entity = id, %reason, "Central Registry lookup failed");
                        entry.clock.failed = true;
                        entry.last_error = Some(reason.clone());
                        if entry.clock.fetched_at.is_none() {
                            return Err(RegistryError::Unavailable {
                                reason,
                                retry_after: self.policy.failure_backoff,
                            });
                        }
                    }
                }
            }
        }
        if entry.unknown || entry.current.is_none() {
            return Err(RegistryError::UnknownSender(id.to_string()));
        }
        Ok(match choose(&entry, kid, &self.policy, Instant::now()) {
            Some(choice) => Found::Key(choice),
            None => Found::NoSuchKid,
        })
    }

    /// One GET; `Ok(None)` when the CR says the entity is unknown to it (or hidden from us).
    async fn fetch(&self, kind: &str, id: &str) -> Result<Option<EntityKey>, String> {
        // Built by segment; an id outside the grammar is never sent (callers parse it before).
        let Ok(entity) = EntityId::parse(id) else {
            return Ok(None);
        };
        let base = reqwest::Url::parse(&self.base).map_err(|e| format!("the CR URL: {e}"))?;
        let url = entity_info_url(&base, kind, &entity);
        let mut refreshed = false;
        loop {
            let served = if refreshed {
                self.broker.force_refresh(&self.caller).await
            } else {
                self.broker.token(&self.caller).await
            }
            .map_err(|e| format!("no entity token for the CR call: {e}"))?;
            let response = self
                .client
                .get(url.clone())
                .bearer_auth(served.token.expose())
                .header(reqwest::header::ACCEPT, "application/json")
                .send()
                .await
                .map_err(|e| {
                    if e.is_timeout() {
                        "timed out".to_string()
                    } else {
                        format!("transport: {}", without_url(&e))
                    }
                })?;
            let status = response.status().as_u16();
            match status {
                200 => {}
                401 if !refreshed => {
                    tracing::info!(
                        "the Central Registry refused our entity token; forcing a refresh, once"
                    );
                    refreshed = true;
                    continue;
                }
                403 | 404 => return Ok(None),
                other => return Err(format!("HTTP {other}")),
            }
            let body = read_capped(response).await?;
            return match record::parse(&body, id) {
                Ok(key) => Ok(Some(key)),
                Err(RecordError::NoRecord | RecordError::BadCertificate) => Ok(None),
                Err(e) => Err(e.to_string()),
            };
        }
    }
}

/// The key for `kid`: the current one when it matches (or no `kid` is named), else the previous one
/// within its period.
fn choose(
    entry: &Entry,
    kid: Option<&str>,
    policy: &RegistryPolicy,
    now: Instant,
) -> Option<Arc<EntityKey>> {
    let current = entry.current.as_ref()?;
    let Some(kid) = kid else {
        return Some(Arc::clone(current));
    };
    // A certificate without a `kid` matches any: it is the sender's single key.
    if current.kid.as_deref().is_none_or(|k| k == kid) {
        return Some(Arc::clone(current));
    }
    entry
        .previous
        .as_ref()
        .filter(|(old, at)| old.kid.as_deref() == Some(kid) && policy.previous_key_valid(*at, now))
        .map(|(old, _)| Arc::clone(old))
}

fn without_url(error: &reqwest::Error) -> String {
    let text = error.to_string();
    match error.url() {
        Some(url) => text.replace(url.as_str(), "<cr>"),
        None => text,
    }
}

async fn read_capped(mut response: reqwest::Response) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| format!("reading the answer: {}", without_url(&e)))?
    {
        if body.len() + chunk.len() > MAX_RECORD_BYTES {
            return Err(format!(
                "the answer is larger than {MAX_RECORD_BYTES} bytes"
            ));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// The CR base for an IAM base: the same host, `/cr` in place of `/iam` (spec §1.1), e.g.
/// `https://api.sandbox.sahamati.org.in/iam` → `…/cr`, and a simulator's `http://127.0.0.1:P/iam` → `…/cr`.
pub fn default_cr_url(iam_url: &str) -> String {
    let base = iam_url.trim_end_matches('/');
    match base.strip_suffix("/iam") {
        Some(host) => format!("{host}/cr"),
        None => format!("{base}/cr"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cr_sits_beside_the_iam() {
        assert_eq!(
            default_cr_url("https://api.sandbox.sahamati.org.in/iam"),
            "https://api.sandbox.sahamati.org.in/cr"
        );
        assert_eq!(
            default_cr_url("http://127.0.0.1:7380/iam/"),
            "http://127.0.0.1:7380/cr"
        );
        assert_eq!(default_cr_url("https://x.in"), "https://x.in/cr");
    }
}
