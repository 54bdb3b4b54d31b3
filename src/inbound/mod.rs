//! Verification of the entity tokens on *incoming* calls: the other half of the handshake.
//!
//! Every member of the AA network must check the token on each call it receives (spec §3.5): the RS256
//! signature against the Sahamati realm's keys, the issuer, the expiry, and that the sender is who the
//! request says it is. This module does it once, for every service in the pod.
//!
//! - [`verify`]: the pure verification of one token (parse, algorithm, signature, claims, expectations).
//! - [`keyset`]: the cache of the realm's key set (one [`crate::upstream::Flight`], last good keys
//!   through an outage, age reported), fetched at start or at first use; the document itself is parsed
//!   by [`crate::keys`].
//! - [`policy`]: when to fetch keys, and the rate limit on refetches an unknown `kid` may trigger.
//! - [`settings`]: the issuers accepted (by default the named environment's, or the realm on the IAM's
//!   origin), their key URLs, the leeway.
//! - [`Verifier`] (this file): ties them together, with a cache of verified tokens by SHA-256 of the token
//!   (never past the token's `exp`), so a peer presenting the same token on every call costs a hash and
//!   a lookup after the first; [`recent`] answers those repeats first, by the token's bytes.
//!
//! The issuer is never trusted from the token: it must be on the allow-list, and the keys come from that
//! issuer's configured key URL — never from a URL the token names (`jku`, `x5u`, or `iss` itself). Metrics
//! are recorded through [`VerifyRecorder`], which the application implements; this module does not know
//! the metrics registry. Tokens are never logged: a rejection logs the token's `sha256:` fingerprint.

pub mod callers;
pub mod keyset;
pub mod policy;
pub mod recent;
pub mod settings;
pub mod verify;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use moka::Expiry;
use moka::sync::Cache;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::crypto_pool::{CryptoPool, PoolError};
use crate::keys::RsaKey;
use crate::upstream::http::ClientSpec;
use keyset::{FetchTrigger, KeySource, KeySourceStatus};
use recent::{Recent, Rendered};
pub use verify::{BadExpectation, Expectation, Mismatch, Rejection, Role, Verified};

pub use crate::iam::{CERTS_PATH, REALM_PATH};
pub use settings::{DEFAULT_LEEWAY, VerifySettings, default_issuers, jwks_url_for};
/// Verified tokens remembered. Only tokens that verified are kept, so only tokens the realm issued can
/// fill it: a few per peer and day.
pub const RESULT_CACHE_CAPACITY: u64 = 4096;

/// How a verification ended; also the metric labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Valid; `cached` when the token had been verified before.
    Valid {
        cached: bool,
    },
    Invalid(Rejection),
    Forbidden(Mismatch),
}

impl Outcome {
    /// Every outcome, so a recorder can create its counters once.
    pub fn all() -> impl Iterator<Item = Outcome> {
        [
            Outcome::Valid { cached: false },
            Outcome::Valid { cached: true },
        ]
        .into_iter()
        .chain(Rejection::ALL.into_iter().map(Outcome::Invalid))
        .chain(Mismatch::ALL.into_iter().map(Outcome::Forbidden))
    }

    /// `(outcome, reason)`: `valid` (`verified`, `cached`), `invalid` (the rejection) or `forbidden`
    /// (`wrong_entity`, `wrong_role`).
    pub fn labels(self) -> (&'static str, &'static str) {
        match self {
            Outcome::Valid { cached: false } => ("valid", "verified"),
            Outcome::Valid { cached: true } => ("valid", "cached"),
            Outcome::Invalid(r) => ("invalid", r.as_str()),
            Outcome::Forbidden(m) => ("forbidden", m.as_str()),
        }
    }

    /// A dense index in `0..Outcome::all().count()`, for counters kept in an array.
    pub fn index(self) -> usize {
        match self {
            Outcome::Valid { cached } => usize::from(cached),
            Outcome::Invalid(r) => 2 + Rejection::ALL.iter().position(|x| *x == r).unwrap_or(0),
            Outcome::Forbidden(m) => {
                2 + Rejection::ALL.len() + Mismatch::ALL.iter().position(|x| *x == m).unwrap_or(0)
            }
        }
    }
}

/// What verification reports, implemented by the application's metrics. Every method has a no-op
/// default, so tests and the CLI can pass [`NoRecorder`].
pub trait VerifyRecorder: Send + Sync {
    /// One verification finished.
    fn verification(&self, _outcome: Outcome) {}
    /// One key-set fetch finished; `outcome` is `ok` or a [`keyset::FetchError::kind`].
    fn key_fetch(&self, _url: &str, _trigger: &'static str, _outcome: &'static str) {}
    /// A key set was stored.
    fn key_set(&self, _url: &str, _keys: usize, _fetched_at: SystemTime) {}
    /// A token with an unknown `kid` was refused without a refetch (the rate limit).
    fn unknown_kid_refused(&self) {}
}

/// A recorder that records nothing.
pub struct NoRecorder;

impl VerifyRecorder for NoRecorder {}

/// Why a token was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// Not a valid token: `401`.
    #[error("invalid token: {0}")]
    Invalid(Rejection),
    /// A valid token from the wrong sender: `403`.
    #[error("{0}")]
    Forbidden(Mismatch),
    /// The signature could not be checked now: the crypto pool is full (`503`, try again shortly).
    #[error("the broker is busy; try again shortly")]
    Busy,
}

/// Why [`Verifier::check`] gave no answer.
enum Failure {
    Rejected(Rejection),
    Busy,
}

impl From<Rejection> for Failure {
    fn from(rejection: Rejection) -> Self {
        Failure::Rejected(rejection)
    }
}

/// Building a verifier failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InboundError {
    #[error("no issuer is allowed; give --verify-issuer")]
    NoIssuer,
    #[error("cannot build the HTTP client for the key set: {0}")]
    Client(String),
}

/// The status of the key sets, for `/readyz`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VerifierStatus {
    pub issuers: Vec<String>,
    pub key_sets: Vec<KeySourceStatus>,
}

/// Cached results live until the token's `exp`, never longer.
struct UntilExp;

impl Expiry<[u8; 32], Arc<Verified>> for UntilExp {
    fn expire_after_create(
        &self,
        _: &[u8; 32],
        verified: &Arc<Verified>,
        _: std::time::Instant,
    ) -> Option<Duration> {
        Some(
            verified
                .expires_at
                .duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO),
        )
    }
}

/// Verifies entity tokens against the allow-listed issuers' key sets. Shared behind an `Arc`.
pub struct Verifier {
    /// Each allowed issuer and the index of its key source.
    issuers: Vec<(String, usize)>,
    sources: Vec<Arc<KeySource>>,
    leeway: Duration,
    verified: Cache<[u8; 32], Arc<Verified>>,
    /// The last tokens answered from `verified`, by their bytes (emptied with it).
    recent: Arc<Recent>,
    recorder: Arc<dyn VerifyRecorder>,
    /// Where RSA checks run, once the application has started its crypto pool.
    pool: std::sync::OnceLock<Arc<CryptoPool>>,
}

impl Verifier {
    /// Builds the verifier and its key sources (one per distinct key URL). Fetches nothing yet: see
    /// [`Verifier::spawn_key_tasks`] and [`Verifier::fetch_keys`].
    pub fn new(
        settings: &VerifySettings,
        recorder: Arc<dyn VerifyRecorder>,
    ) -> Result<Self, InboundError> {
        if settings.issuers.is_empty() {
            return Err(InboundError::NoIssuer);
        }
        let key_urls: Vec<String> = settings
            .issuers
            .iter()
            .map(|issuer| {
                settings
                    .jwks_url
                    .clone()
                    .unwrap_or_else(|| jwks_url_for(issuer))
            })
            .collect();
        let client = ClientSpec::new(settings.timeouts.connect, settings.timeouts.request)
            .direct_to_loopback(key_urls.iter().map(String::as_str))
            .build()
            .map_err(|e| InboundError::Client(e.reason().to_string()))?;
        let verified: Cache<[u8; 32], Arc<Verified>> = Cache::builder()
            .max_capacity(RESULT_CACHE_CAPACITY)
            .expire_after(UntilExp)
            .build();
        let recent = Arc::new(Recent::default());
        let mut sources: Vec<Arc<KeySource>> = Vec::new();
        let mut issuers = Vec::new();
        for (issuer, url) in settings.issuers.iter().zip(key_urls) {
            let index = match sources.iter().position(|s| s.url() == url) {
                Some(index) => index,
                None => {
                    let cache = verified.clone();
                    let front = Arc::clone(&recent);
                    sources.push(Arc::new(KeySource::new(
                        url,
                        client.clone(),
                        settings.policy.clone(),
                        settings.timeouts,
                        Arc::clone(&recorder),
                        // A key withdrawn from the set takes the results it verified with it: the
                        // cache first, then the table in front of it (see `recent`).
                        Box::new(move || {
                            cache.invalidate_all();
                            front.invalidate();
                        }),
                    )));
                    sources.len() - 1
                }
            };
            if !issuers.iter().any(|(i, _)| i == issuer) {
                issuers.push((issuer.clone(), index));
            }
        }
        Ok(Self {
            issuers,
            sources,
            leeway: settings.leeway,
            verified,
            recent,
            recorder,
            pool: std::sync::OnceLock::new(),
        })
    }

    /// Verifies `token` and checks it against `expect`; records the outcome.
    pub async fn verify(&self, token: &str, expect: &Expectation) -> Result<Arc<Verified>, Denied> {
        let outcome = match self.check(token).await {
            Err(Failure::Busy) => return Err(Denied::Busy),
            Err(Failure::Rejected(rejection)) => Err(Denied::Invalid(rejection)),
            Ok((verified, cached)) => match expect.check(&verified) {
                Ok(()) => Ok((verified, cached)),
                Err(mismatch) => Err(Denied::Forbidden(mismatch)),
            },
        };
        match outcome {
            Ok((verified, cached)) => {
                self.recorder.verification(Outcome::Valid { cached });
                Ok(verified)
            }
            Err(denied) => {
                self.recorder.verification(match denied {
                    Denied::Invalid(r) => Outcome::Invalid(r),
                    Denied::Forbidden(m) => Outcome::Forbidden(m),
                    // Not reached: a busy pool returns above, before any outcome.
                    Denied::Busy => return Err(denied),
                });
                if !token.is_empty() {
                    tracing::debug!(token = %fingerprint(token), reason = %denied, "incoming token refused");
                }
                Err(denied)
            }
        }
    }

    /// The answer for a token verified before, from [`recent`] or the result cache, without waiting:
    /// `answer` gets the result and this thread's memo of the answer last rendered for the token (see
    /// [`recent::Recent::with_hit`]) when the token is current at `now` and meets `expect`. `None` when
    /// the token must be verified in full ([`Verifier::verify`]). Records the outcome as `verify` does.
    /// The hot path answers repeated tokens with this, in front of the router. The token is taken as
    /// bytes, unchecked: only the bytes of a token that verified can be found.
    pub fn verify_cached<R>(
        &self,
        token: &[u8],
        expect: &Expectation,
        now: SystemTime,
        mut answer: impl FnMut(&Arc<Verified>, &mut Option<Rendered>) -> R,
    ) -> Option<Result<R, Denied>> {
        if token.is_empty() || token.len() > verify::MAX_TOKEN_BYTES {
            return None;
        }
        let mut decide = |verified: &Arc<Verified>, memo: &mut Option<Rendered>| {
            expect.check(verified).map(|()| answer(verified, memo))
        };
        let decided = match self.recent.with_hit(token, now, &mut decide) {
            Some(decided) => decided,
            None => {
                // Read before the lookup: an invalidation in between leaves the entry stale.
                let generation = self.recent.generation();
                let verified = self.cached(&sha256(token), now)?;
                let valid_until = verified.expires_at.checked_add(self.leeway)?;
                self.recent
                    .insert(token, Arc::clone(&verified), valid_until, generation);
                self.recent
                    .with_hit(token, now, &mut decide)
                    .unwrap_or_else(|| decide(&verified, &mut None))
            }
        };
        Some(match decided {
            Ok(answered) => {
                self.recorder.verification(Outcome::Valid { cached: true });
                Ok(answered)
            }
            Err(mismatch) => {
                self.recorder.verification(Outcome::Forbidden(mismatch));
                Err(Denied::Forbidden(mismatch))
            }
        })
    }

    /// A cached result still valid at `now`. The cache expires entries at `exp` on the monotonic clock;
    /// the wall clock decides too.
    fn cached(&self, digest: &[u8; 32], now: SystemTime) -> Option<Arc<Verified>> {
        self.verified.get(digest).filter(|hit| {
            hit.expires_at
                .checked_add(self.leeway)
                .is_some_and(|t| now < t)
        })
    }

    /// Records a token refused before it could be looked at (e.g. a header given twice).
    pub fn record_rejection(&self, rejection: Rejection) {
        self.recorder.verification(Outcome::Invalid(rejection));
    }

    /// The verification proper: the cache, then parse, issuer, key, signature, claims.
    async fn check(&self, token: &str) -> Result<(Arc<Verified>, bool), Failure> {
        if token.is_empty() {
            return Err(Rejection::Missing.into());
        }
        if token.len() > verify::MAX_TOKEN_BYTES {
            return Err(Rejection::Malformed.into());
        }
        let digest = sha256(token.as_bytes());
        let now = SystemTime::now();
        if let Some(hit) = self.cached(&digest, now) {
            return Ok((hit, true));
        }
        let parsed = verify::parse(token)?;
        let (issuer, source) = parsed
            .issuer
            .as_deref()
            .and_then(|iss| self.issuers.iter().find(|(allowed, _)| allowed == iss))
            .map(|(issuer, index)| (issuer.as_str(), &self.sources[*index]))
            .ok_or(Rejection::IssuerNotAllowed)?;
        // No `kid`, no key: a realm with several keys cannot be guessed at, and one is never refetched for.
        let kid = parsed.kid.clone().ok_or(Rejection::UnknownKey)?;
        let held = source.keys().and_then(|keys| keys.get(&kid).cloned());
        let key = match held {
            Some(key) => key,
            None => source
                .key_for_unknown_kid(&kid)
                .await
                .ok_or(Rejection::UnknownKey)?,
        };
        self.check_signature(&parsed, key).await?;
        let verified = Arc::new(verify::check_claims(
            parsed,
            issuer,
            &kid,
            SystemTime::now(),
            self.leeway,
        )?);
        if verified.expires_in(SystemTime::now()) > 0 {
            self.verified.insert(digest, Arc::clone(&verified));
        }
        Ok((verified, false))
    }

    /// The RSA check, on the crypto pool when one is set ([`Verifier::run_crypto_on`]): a flood of
    /// forged tokens then costs the pool's threads, never the async workers that serve tokens.
    async fn check_signature(
        &self,
        parsed: &verify::Parsed<'_>,
        key: RsaKey,
    ) -> Result<(), Failure> {
        let Some(pool) = self.pool.get() else {
            return Ok(verify::check_signature(parsed, &key)?);
        };
        let input = parsed.signing_input.to_string();
        let signature = parsed.signature.clone();
        match pool
            .run(move || key.verify(input.as_bytes(), &signature))
            .await
        {
            Ok(true) => Ok(()),
            Ok(false) => Err(Rejection::BadSignature.into()),
            Err(PoolError::Busy) => Err(Failure::Busy),
            Err(PoolError::Failed) => Err(Rejection::BadSignature.into()),
        }
    }

    /// Runs signature checks on `pool` from now on (once; later calls are ignored).
    pub fn run_crypto_on(&self, pool: Arc<CryptoPool>) {
        let _ = self.pool.set(pool);
    }

    /// Starts one background task per key source: the policy's schedule, from start with `prefetch`,
    /// else from the first fetch (the first verification's).
    pub fn spawn_key_tasks(&self, shutdown: &watch::Receiver<bool>) -> JoinSet<()> {
        let mut tasks = JoinSet::new();
        for source in &self.sources {
            let source = Arc::clone(source);
            let shutdown = shutdown.clone();
            tasks.spawn(async move { source.run(shutdown).await });
        }
        tasks
    }

    /// Fetches every key set once, now (or joins the fetch in flight), whatever the schedule.
    pub async fn fetch_keys(&self) {
        for source in &self.sources {
            source.refresh(FetchTrigger::Scheduled).await;
        }
    }

    /// The allow-list and the state of each key set.
    pub fn status(&self) -> VerifierStatus {
        VerifierStatus {
            issuers: self.issuers.iter().map(|(i, _)| i.clone()).collect(),
            key_sets: self.sources.iter().map(|s| s.status()).collect(),
        }
    }

    /// True when every key source holds keys (a verification can succeed).
    pub fn has_keys(&self) -> bool {
        self.sources
            .iter()
            .all(|s| s.keys().is_some_and(|k| !k.is_empty()))
    }
}

fn sha256(token: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, token);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// `sha256:` and 8 hex digits of the token: the same fingerprint [`crate::entity::fingerprint`] gives,
/// so a token can be recognised across log lines without being written.
pub fn fingerprint(token: &str) -> String {
    let digest = sha256(token.as_bytes());
    let hex: String = digest[..4].iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

#[cfg(test)]
mod tests;
