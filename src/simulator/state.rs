//! The simulator's world: entities and their secrets, admin users and their sessions, settings, the
//! injected faults waiting to fire, and the call counters tests read.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::iam::Endpoint;

/// Grace period after a secret's expiry during which tokens are still issued, with a warning (spec §2.3).
pub const GRACE_PERIOD: Duration = Duration::from_secs(5 * 86_400);
/// Default and maximum secret validity.
pub const MAX_SECRET_DAYS: u32 = 180;

/// What a reset does to the previous secret. The spec (§2.3) records both readings.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ResetMode {
    /// The old secret stops working at once (observed Oct 2024; the default).
    #[default]
    RevokeImmediately,
    /// The old secret keeps working for the grace period after the reset, with the warning message.
    GracePeriod,
}

/// The unit of `expiresOn` in secret answers. The IAM's published examples disagree (spec §2.2).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EpochUnit {
    /// Epoch milliseconds, as observed (the default).
    #[default]
    Millis,
    /// Epoch seconds, as in one published example (`1725010763`).
    Seconds,
}

/// The zone the zoneless local date-times (`expirationDate`, `secret-expiry-ts`) are written in.
///
/// The spec calls them local date-times and leaves the zone unstated; the IAM runs in India, and the
/// broker reads a zoneless expiry as IST ([`crate::timefmt::parse_iam_expiry`]). Written in IST by
/// default, so the instant a client reads from them is the one `expiresOn` (epoch milliseconds) gives:
/// `/readyz`, from the token's `secret-expiry-ts`, and `secret read`, from `expiresOn`, agree. `utc`
/// plays an IAM that writes UTC wall time instead, which the broker then reads 5 h 30 min early (its
/// safe side).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LocalZone {
    /// UTC wall time.
    Utc,
    /// India Standard Time, +05:30 (the default).
    #[default]
    Ist,
}

/// Tunable behaviour, settable at start and through `PUT /_simulator/settings`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct SimSettings {
    /// Entity token lifetime (`expiresIn`), seconds.
    pub token_lifetime_secs: u64,
    /// User (admin) token lifetime, seconds.
    pub user_token_lifetime_secs: u64,
    /// Added before every answer, milliseconds.
    pub latency_ms: u64,
    pub reset_mode: ResetMode,
    /// Shifts the simulator's wall clock (secret expiry, `iat`/`exp`), seconds; may be negative.
    pub clock_offset_secs: i64,
    /// Cap a reset secret's validity by the remaining life of the admin token that asked (spec §2.3).
    pub cap_secret_by_user_token: bool,
    /// The unit of `expiresOn` in secret read/reset answers.
    pub expires_on_unit: EpochUnit,
    /// The zone of the zoneless local date-times.
    pub local_zone: LocalZone,
    /// Keycloak's brute-force protection: after this many failed logins in a row a user is locked out,
    /// and even the right password is refused until [`SimSettings::lockout_secs`] pass. Off when absent.
    pub lockout_after_failures: Option<u32>,
    /// How long a lockout lasts, seconds.
    pub lockout_secs: u64,
    /// Which claim besides `azp` names the entity in the tokens issued (Keycloak's mappers differ).
    pub client_id_claim: ClientIdClaim,
}

/// The claim that repeats the entity id in an entity token: Keycloak's older service-account mapper writes
/// `clientId`, its newer one `client_id`; some realms write neither (`azp` alone).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientIdClaim {
    #[default]
    #[serde(rename = "clientId")]
    CamelCase,
    #[serde(rename = "client_id")]
    Snake,
    #[serde(rename = "none")]
    AzpOnly,
}

impl Default for SimSettings {
    fn default() -> Self {
        Self {
            token_lifetime_secs: 86_400,
            user_token_lifetime_secs: 86_400,
            latency_ms: 0,
            reset_mode: ResetMode::default(),
            clock_offset_secs: 0,
            cap_secret_by_user_token: true,
            expires_on_unit: EpochUnit::default(),
            local_zone: LocalZone::default(),
            lockout_after_failures: None,
            lockout_secs: 900,
            client_id_claim: ClientIdClaim::default(),
        }
    }
}

/// One injected fault.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Fault {
    /// Only this endpoint; every endpoint when absent.
    #[serde(default)]
    pub endpoint: Option<Endpoint>,
    pub kind: FaultKind,
    /// How many requests it applies to; until cleared when absent.
    #[serde(default)]
    pub times: Option<u32>,
}

/// The ways the simulator can misbehave.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase", deny_unknown_fields)]
pub enum FaultKind {
    /// An error status with the IAM's envelope (or `body` verbatim), optionally with `Retry-After`.
    #[serde(rename_all = "camelCase")]
    Status {
        status: u16,
        #[serde(default)]
        retry_after_secs: Option<u64>,
        #[serde(default)]
        body: Option<String>,
    },
    /// Waits, then answers normally.
    Delay { ms: u64 },
    /// Accepts the request and never answers.
    Hang,
    /// Sends a status line and headers, then drops the connection in the middle of the body.
    Reset,
    /// A gateway's HTML error page.
    Html { status: u16 },
    /// A status with an empty body.
    Empty { status: u16 },
    /// 200 with JSON cut off in the middle (after the token has started).
    TruncatedJson,
    /// 200 with well-formed JSON of the wrong types.
    WrongTypes,
    /// 200 with the last properly issued token of this entity, again.
    RepeatToken,
    /// 200 with a valid token issued to a different entity.
    ForeignToken,
    /// 200 with a body of 1 MiB.
    HugeBody,
    /// 200 with a token whose `expiresIn` and `exp` are one second.
    ShortLived,
    /// 200 with absurd but well-formed values: `body`'s fields are merged into the success answer, and
    /// (on the token endpoints) `claims`' into the JWT's claims; a `null` claim is removed.
    Patch {
        #[serde(default)]
        body: serde_json::Map<String, serde_json::Value>,
        #[serde(default)]
        claims: serde_json::Map<String, serde_json::Value>,
    },
}

impl FaultKind {
    /// An error status with the IAM's usual envelope and no `Retry-After`.
    pub fn status(status: u16) -> Self {
        FaultKind::Status {
            status,
            retry_after_secs: None,
            body: None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct SimEntity {
    pub secret: String,
    pub expires_on: SystemTime,
    pub role: String,
    /// After a reset in grace-period mode: the old secret and until when it still works.
    pub previous: Option<(String, SystemTime)>,
    pub last_token: Option<String>,
}

#[derive(Debug, Clone)]
pub struct SimUser {
    pub password: String,
    pub entities: Vec<String>,
    /// Failed logins in a row (Keycloak's brute-force counter).
    pub failed_logins: u32,
    /// Locked out until then.
    pub locked_until: Option<SystemTime>,
}

#[derive(Debug, Clone)]
pub struct UserSession {
    pub email: String,
    pub expires: SystemTime,
}

/// Everything behind the simulator's one lock.
#[derive(Default)]
pub struct World {
    pub settings: SimSettings,
    pub entities: HashMap<String, SimEntity>,
    pub users: HashMap<String, SimUser>,
    pub sessions: HashMap<String, UserSession>,
    pub faults: VecDeque<Fault>,
}

impl World {
    /// The simulator's wall clock.
    pub fn now(&self) -> SystemTime {
        let offset = Duration::from_secs(self.settings.clock_offset_secs.unsigned_abs());
        if self.settings.clock_offset_secs >= 0 {
            SystemTime::now() + offset
        } else {
            SystemTime::now() - offset
        }
    }

    /// Takes the first fault that applies to `endpoint`, consuming one of its uses.
    pub fn take_fault(&mut self, endpoint: Endpoint) -> Option<FaultKind> {
        let index = self
            .faults
            .iter()
            .position(|f| f.endpoint.is_none_or(|e| e == endpoint))?;
        let fault = &mut self.faults[index];
        let kind = fault.kind.clone();
        match &mut fault.times {
            Some(0) | Some(1) => {
                self.faults.remove(index);
            }
            Some(n) => *n -= 1,
            None => {}
        }
        Some(kind)
    }
}

/// Per-endpoint request counters plus tokens issued.
#[derive(Default)]
pub struct Counters {
    calls: [AtomicU64; 4],
    pub entity_tokens_issued: AtomicU64,
    pub failed_logins: AtomicU64,
}

impl Counters {
    fn index(endpoint: Endpoint) -> usize {
        match endpoint {
            Endpoint::EntityToken => 0,
            Endpoint::UserToken => 1,
            Endpoint::SecretRead => 2,
            Endpoint::SecretReset => 3,
        }
    }

    /// Logins refused because the password was wrong or the user locked out.
    pub fn failed_login(&self) {
        self.failed_logins.fetch_add(1, Ordering::SeqCst);
    }

    pub fn record(&self, endpoint: Endpoint) {
        self.calls[Self::index(endpoint)].fetch_add(1, Ordering::SeqCst);
    }

    pub fn calls(&self, endpoint: Endpoint) -> u64 {
        self.calls[Self::index(endpoint)].load(Ordering::SeqCst)
    }
}

/// A random alphanumeric secret of `len` characters.
pub fn random_secret(len: usize) -> String {
    (0..len).map(|_| fastrand::alphanumeric()).collect()
}
