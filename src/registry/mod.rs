//! The Central Registry client and the cache of peers' signing keys (spec §1).
//!
//! - [`record`]: the entity-info answer, parsed leniently.
//! - [`policy`]: when to ask the CR, the global budget of lookups, how long a replaced key verifies.
//! - [`Registry`] (this file): `GET {cr}/v2/entityInfo/{type}/{id}` with the broker's own entity token,
//!   and a cache with the properties of every upstream cache of this crate: single flight (one
//!   [`Flight`] of lookups, keyed by sender: concurrent callers share one CR call, which runs to its end
//!   whoever hangs up, and waits are bounded), a rate limit on the lookups callers can trigger (one
//!   budget for every sender, [`policy::LookupBudget`]), the last good record served through an outage
//!   or an empty budget, and the previous key kept for a grace period after a change.
//!
//! Two stores, so that what callers can fill cannot push out what verification needs:
//! - the **known** senders, whose record holds a usable key: only entities the CR vouched for get here
//!   (at most [`MAX_KNOWN_PER_TYPE`] per type; beyond it, the one fetched longest ago gives way);
//! - the **negative** cache (moka, at most [`MAX_NEGATIVE`] entries, each for the policy's
//!   `negative_ttl`): senders the CR does not know, and lookups that failed with nothing held (so the
//!   next waits the failure backoff). A flood of invented senders churns this one only.
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
use crate::registry::policy::{Action, EntryClock, LookupBudget, RegistryPolicy};
use crate::token::broker::Broker;
use crate::upstream::{Flight, FlightError};
pub use record::{Certificate, EntityKey, RecordError, TYPES};

/// Senders with a usable key remembered per type. Only entities the CR vouched for are kept here, so only
/// the size of the network can fill it.
pub const MAX_KNOWN_PER_TYPE: usize = 4096;
/// Unknown senders (and failed lookups) remembered, for all types together.
pub const MAX_NEGATIVE: u64 = 4096;
/// Lookups in flight at once, tracked by the flight; the default budget keeps them well below it (a
/// sender beyond it may get a second lookup while its first runs, never a stuck one).
pub const MAX_LOOKUPS_IN_FLIGHT: u64 = 1024;
/// Largest CR answer read: one record is a few KiB.
pub const MAX_RECORD_BYTES: usize = 256 * 1024;

/// Why no key could be had for a sender.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    /// The CR does not know the entity (or does not let us see it): `404`/`403`, or no usable key.
    #[error("the Central Registry has no usable key for {0}")]
    UnknownSender(String),
    /// The CR could not be asked (it failed, or the lookup budget is spent), and nothing is held.
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

/// How a lookup that needed the CR ended; also the metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrOutcome {
    /// The CR answered with a usable key.
    Ok,
    /// The CR does not know the sender, or shows no usable key for it.
    Unknown,
    /// The CR could not be asked or answered something else (timeout, transport, status, our token
    /// refused twice, an unreadable answer).
    Error,
    /// Not asked: the lookup budget was spent.
    RateLimited,
}

impl CrOutcome {
    pub const ALL: [CrOutcome; 4] = [
        CrOutcome::Ok,
        CrOutcome::Unknown,
        CrOutcome::Error,
        CrOutcome::RateLimited,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CrOutcome::Ok => "ok",
            CrOutcome::Unknown => "unknown",
            CrOutcome::Error => "error",
            CrOutcome::RateLimited => "rate_limited",
        }
    }
}

/// What the CR cache reports, implemented by the application's metrics (so this module never sees the
/// metrics registry). Every method has a no-op default.
pub trait RegistryRecorder: Send + Sync {
    /// One lookup that needed the CR ended (or was not sent: [`CrOutcome::RateLimited`]).
    fn cr_request(&self, _outcome: CrOutcome) {}
}

/// A recorder that records nothing (the CLI).
pub struct NoRecorder;

impl RegistryRecorder for NoRecorder {}

/// A sender the CR vouched for: its key, and the one it replaced.
struct Known {
    clock: EntryClock,
    current: Certificate,
    /// The keys `current` replaced, and when the change was seen.
    previous: Option<(Certificate, Instant)>,
}

/// What the negative cache remembers of a sender.
#[derive(Debug, Clone)]
enum Negative {
    /// The CR does not know it (or does not show it to us, or shows no usable key).
    Unknown,
    /// The last lookup failed and nothing is held: the next one waits the failure backoff.
    Failed {
        attempted_at: Instant,
        reason: String,
    },
}

/// A sender: the index of its type in [`TYPES`], and its id.
type SenderKey = (usize, String);

/// What one lookup found; what it left behind is in the stores.
#[derive(Debug, Clone)]
enum Looked {
    Found,
    Unknown,
    Failed(String),
}

/// The CR key cache. Cheap to share; its lookups run on tasks of their own.
pub struct Registry {
    inner: Arc<Inner>,
}

struct Inner {
    base: String,
    client: reqwest::Client,
    broker: Broker,
    /// The entity whose token the CR calls carry.
    caller: EntityId,
    policy: RegistryPolicy,
    /// Known senders by type (in the order of [`TYPES`]) and id; looked up by `&str`, so a request
    /// allocates nothing to find a known sender.
    known: Mutex<[HashMap<String, Known>; 3]>,
    negative: moka::sync::Cache<SenderKey, Negative>,
    budget: Mutex<LookupBudget>,
    flight: Flight<SenderKey, Looked>,
    recorder: Arc<dyn RegistryRecorder>,
    /// The CR's last answer, for `/readyz`.
    last_answer: Mutex<Option<LastAnswer>>,
}

/// The CR's last answer, as `/readyz` reports it: when, and how it ended.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LastAnswer {
    /// RFC 3339.
    pub at: String,
    /// `ok`, `unknown` (the CR does not know the sender) or `error`.
    pub outcome: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The CR cache's state, for `/readyz`: reported, never a reason to be unready.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RegistryStatus {
    pub url: String,
    /// `None` until the CR is first asked.
    pub last_answer: Option<LastAnswer>,
}

impl Registry {
    /// A cache for the CR at `base` (`https://…/cr`), calling with `caller`'s token from `broker`.
    pub fn new(
        base: &str,
        broker: Broker,
        caller: EntityId,
        policy: RegistryPolicy,
        timeouts: IamTimeouts,
        recorder: Arc<dyn RegistryRecorder>,
    ) -> Result<Self, reqwest::Error> {
        crate::install_crypto_provider();
        let client = crate::tls::shared(reqwest::Client::builder())
            .connect_timeout(timeouts.connect)
            .timeout(timeouts.request)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("aa-token-broker/", env!("CARGO_PKG_VERSION")))
            .build()?;
        let negative = moka::sync::Cache::builder()
            .max_capacity(MAX_NEGATIVE)
            .time_to_live(policy.negative_ttl)
            .build();
        // A lookup may wait for our token (one IAM call, perhaps behind another), then make up to two CR
        // calls with a forced refresh between them.
        let bound = timeouts.call_bound().saturating_mul(5);
        Ok(Self {
            inner: Arc::new(Inner {
                base: base.trim_end_matches('/').to_string(),
                client,
                broker,
                caller,
                policy,
                known: Mutex::new(Default::default()),
                negative,
                budget: Mutex::new(LookupBudget::default()),
                flight: Flight::new(MAX_LOOKUPS_IN_FLIGHT, bound),
                recorder,
                last_answer: Mutex::new(None),
            }),
        })
    }

    /// The known sender (other than `except`) whose registered keys include `kid`, from the cache alone:
    /// no CR call. Used to tell a body signed by another registered entity from a forged signature.
    pub fn holder_of_kid(
        &self,
        kid: &str,
        except: &str,
    ) -> Option<(&'static str, String, Arc<EntityKey>)> {
        let known = self.inner.known();
        for (index, of_type) in known.iter().enumerate() {
            for (id, entry) in of_type {
                if id == except {
                    continue;
                }
                if let Some(key) = entry
                    .current
                    .keys()
                    .iter()
                    .find(|k| k.kid.as_deref() == Some(kid))
                {
                    return Some((TYPES.get(index).copied()?, id.clone(), Arc::clone(key)));
                }
            }
        }
        None
    }

    /// The CR's URL and last answer, for `/readyz`.
    pub fn status(&self) -> RegistryStatus {
        RegistryStatus {
            url: self.inner.base.clone(),
            last_answer: self
                .inner
                .last_answer
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        }
    }

    pub fn base(&self) -> &str {
        &self.inner.base
    }

    /// The key of entity `id` of type `kind` for a message naming `kid` (or none). Asks the CR when the
    /// policy says so and the budget allows; callers for one sender share one lookup.
    pub async fn key_for(
        &self,
        kind: &str,
        id: &str,
        kid: Option<&str>,
    ) -> Result<Found, RegistryError> {
        let inner = &self.inner;
        let index = TYPES
            .iter()
            .position(|t| *t == kind)
            .filter(|_| is_segment(id))
            .ok_or_else(|| RegistryError::UnknownSender(id.to_string()))?;
        let now = Instant::now();
        let held = inner.known_decision(index, id, kid, now);
        if let Some((Action::Use, found)) = held {
            return Ok(found);
        }
        let key: SenderKey = (index, id.to_string());
        if held.is_none() {
            match inner.negative.get(&key) {
                Some(Negative::Unknown) => {
                    return Err(RegistryError::UnknownSender(id.to_string()));
                }
                Some(Negative::Failed {
                    attempted_at,
                    reason,
                }) => {
                    let clock = EntryClock {
                        fetched_at: None,
                        attempted_at: Some(attempted_at),
                        failed: true,
                    };
                    if let Action::RetryAfter(wait) = inner.policy.decide(clock, false, now) {
                        return Err(RegistryError::Unavailable {
                            reason,
                            retry_after: wait,
                        });
                    }
                }
                None => {}
            }
        }
        // Ask the CR: join the lookup of this sender in flight, or start one if the budget allows.
        let mut refused_for = None;
        let lookup = Arc::clone(inner);
        let sender = key.clone();
        let outcome = inner
            .flight
            .run(
                key,
                || match inner.spend_lookup() {
                    Ok(()) => true,
                    Err(wait) => {
                        refused_for = Some(wait);
                        false
                    }
                },
                move || async move { lookup.lookup(sender).await },
            )
            .await;
        if matches!(outcome, Err(FlightError::NotAdmitted)) {
            inner.recorder.cr_request(CrOutcome::RateLimited);
        }
        // Whatever the outcome, answer from what is held now: the new record, or the stale one.
        if let Some((_, found)) = inner.known_decision(index, id, kid, Instant::now()) {
            if outcome.is_err() {
                tracing::debug!(
                    entity = id,
                    "Central Registry not asked (or no answer in time); the record held is used"
                );
            }
            return Ok(found);
        }
        let (reason, retry_after) = match outcome {
            Ok(Looked::Unknown) | Ok(Looked::Found) => {
                return Err(RegistryError::UnknownSender(id.to_string()));
            }
            Ok(Looked::Failed(reason)) => (reason, inner.policy.failure_backoff),
            Err(FlightError::NotAdmitted) => {
                let wait = refused_for.unwrap_or(inner.policy.lookup_interval);
                (
                    "too many lookups of senders not held; the budget is spent".to_string(),
                    wait,
                )
            }
            Err(error) => (error.to_string(), inner.policy.failure_backoff),
        };
        Err(RegistryError::Unavailable {
            reason,
            retry_after,
        })
    }
}

impl Inner {
    fn known(&self) -> MutexGuard<'_, [HashMap<String, Known>; 3]> {
        self.known.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// For a known sender: what the policy says, and the answer from its record.
    fn known_decision(
        &self,
        index: usize,
        id: &str,
        kid: Option<&str>,
        now: Instant,
    ) -> Option<(Action, Found)> {
        let known = self.known();
        let entry = known.get(index)?.get(id)?;
        let choice = choose(entry, kid, &self.policy, now);
        let action = self.policy.decide(entry.clock, choice.is_some(), now);
        Some((action, choice.map_or(Found::NoSuchKid, Found::Key)))
    }

    fn spend_lookup(&self) -> Result<(), Duration> {
        let mut budget = self.budget.lock().unwrap_or_else(|p| p.into_inner());
        self.policy.spend_lookup(&mut budget, Instant::now())
    }

    /// One lookup and what it leaves behind; runs on the flight's task, to completion.
    async fn lookup(&self, sender: SenderKey) -> Looked {
        let (index, id) = &sender;
        let Some(kind) = TYPES.get(*index) else {
            return Looked::Unknown;
        };
        let attempted_at = Instant::now();
        let result = self.fetch(kind, id).await;
        let outcome = match &result {
            Ok(Some(_)) => CrOutcome::Ok,
            Ok(None) => CrOutcome::Unknown,
            Err(_) => CrOutcome::Error,
        };
        self.recorder.cr_request(outcome);
        let answer = LastAnswer {
            at: crate::timefmt::rfc3339_seconds(std::time::SystemTime::now()),
            outcome: outcome.as_str(),
            error: result.as_ref().err().cloned(),
        };
        *self.last_answer.lock().unwrap_or_else(|p| p.into_inner()) = Some(answer);
        let now = Instant::now();
        match result {
            Ok(Some(fetched)) => {
                self.negative.invalidate(&sender);
                self.store_known(*index, id, fetched, attempted_at, now);
                Looked::Found
            }
            Ok(None) => {
                if let Some(of_type) = self.known().get_mut(*index) {
                    of_type.remove(id.as_str());
                }
                self.negative.insert(sender, Negative::Unknown);
                Looked::Unknown
            }
            Err(reason) => {
                tracing::warn!(entity = %id, %reason, "Central Registry lookup failed");
                let held = {
                    let mut known = self.known();
                    match known
                        .get_mut(*index)
                        .and_then(|of_type| of_type.get_mut(id))
                    {
                        Some(entry) => {
                            entry.clock.attempted_at = Some(attempted_at);
                            entry.clock.failed = true;
                            true
                        }
                        None => false,
                    }
                };
                if !held {
                    self.negative.insert(
                        sender,
                        Negative::Failed {
                            attempted_at,
                            reason: reason.clone(),
                        },
                    );
                }
                Looked::Failed(reason)
            }
        }
    }

    fn store_known(
        &self,
        index: usize,
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
        let Some(of_type) = known.get_mut(index) else {
            return;
        };
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

    /// One lookup; `Ok(None)` when the CR says the entity is unknown to it (or hidden from us).
    async fn fetch(&self, kind: &str, id: &str) -> Result<Option<Certificate>, String> {
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

/// The key for `kid`: the current certificate's when it has one (or no `kid` is named), else the
/// previous certificate's within its grace.
fn choose(
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

/// Whether `text` can be one path segment of a CR URL.
fn is_segment(text: &str) -> bool {
    !matches!(text, "" | "." | "..")
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

/// The Central Registry of each named environment, by its IAM base. Sahamati's ReBIT 2.x readiness notes
/// (`Sahamati/Ecosystem-Readiness-for-ReBIT-2.x-specs`, `Changes_in_CR_and_APIs.md`) give production and
/// UAT their own hosts (entity info at `{base}/v2/entityInfo/{type}/{id}`); the sandbox's CR sits beside its
/// IAM (spec §1.1).
const ENVIRONMENT_CRS: [(&str, &str); 3] = [
    ("sandbox", "https://api.sandbox.sahamati.org.in/cr"),
    ("uat", "https://uatcr.sahamati.org.in"),
    ("production", "https://cr.sahamati.org.in"),
];

/// The CR base for an IAM base: a named environment's CR (`ENVIRONMENT_CRS`); otherwise the same host,
/// `/cr` in place of `/iam` (spec §1.1), e.g. a simulator's `http://127.0.0.1:P/iam` → `…/cr`.
pub fn default_cr_url(iam_url: &str) -> String {
    let base = iam_url.trim_end_matches('/');
    for (name, cr) in ENVIRONMENT_CRS {
        if crate::iam::environment_base_url(name) == Some(base) {
            return cr.to_string();
        }
    }
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
        // The named environments' own CR hosts.
        assert_eq!(
            default_cr_url("https://api.sahamati.org.in/iam"),
            "https://cr.sahamati.org.in"
        );
        assert_eq!(
            default_cr_url("https://api.uat.sahamati.org.in/iam/"),
            "https://uatcr.sahamati.org.in"
        );
    }
}
