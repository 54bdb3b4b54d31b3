//! The certification cases a sidecar in front of an entity can decide, by case id, as Sahamati's
//! certification framework (`bdd-feature-files/`, `certification-scenarios/*.md`) states them.
//!
//! Each case is a valid request from the right peer, changed in one way ([`Change`]), and the answer the
//! suite expects. Where the suite contradicts itself the choice is noted on the case:
//! - the code for an unsupported `ver` is `NoSuchVersion` with `404` everywhere: every feature file
//!   asserts it, though FIP's scenario table writes `NosuchVersionFound` (FIP_1029, FIP_1045);
//! - a `timestamp` 15 minutes off is `400 InvalidRequest`, as AA_2005's scenario text says (its feature
//!   file asserts `404 NoSuchVersion`, copied from the version case).

use crate::entity::Role;

/// How a case changes the valid request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// None: the request must pass.
    Valid,
    Ver(&'static str),
    TimestampText(&'static str),
    /// The timestamp this many seconds from now.
    TimestampOffset(i64),
    Txnid(&'static str),
    /// `Notifier.id` names another entity of the caller's role.
    NotifierId,
    NotifierType(&'static str),
    /// The body changed after it was signed.
    Tampered,
    /// The signature damaged (its last character removed).
    DamagedSignature,
    /// Not a token at all.
    InvalidApiKey,
    /// The token of another peer of the same role; the request signed by the regular peer.
    AlternateApiKey,
    /// `KeyMaterial` with this `cryptoAlg` and `curve`.
    KeyMaterial(&'static str, &'static str),
}

/// One certification case.
#[derive(Debug, Clone, Copy)]
pub struct Case {
    pub id: &'static str,
    /// The deployment under test: the entity behind the sidecar.
    pub deployment: Role,
    /// The peer that calls it.
    pub caller: Role,
    pub method: &'static str,
    /// The ReBIT path (`{id}` parts are filled in).
    pub path: &'static str,
    pub change: Change,
    pub status: u16,
    /// The `errorCode` expected; `None` for `200` (and for a `401`, which carries no ReBIT code in the
    /// suite).
    pub code: Option<&'static str>,
}

const fn case(
    id: &'static str,
    deployment: Role,
    caller: Role,
    method: &'static str,
    path: &'static str,
    change: Change,
    (status, code): (u16, Option<&'static str>),
) -> Case {
    Case {
        id,
        deployment,
        caller,
        method,
        path,
        change,
        status,
        code,
    }
}

use Change::*;
use Role::{Aa, Fip, Fiu};

const INVALID: Option<&str> = Some("InvalidRequest");
const MISMATCH: Option<&str> = Some("SignatureDoesNotMatch");
const VERSION: Option<&str> = Some("NoSuchVersion");
const NOTIFIER: Option<&str> = Some("InvalidNotifier");
const KEY: Option<&str> = Some("InvalidKey");

/// Every case, for the three deployments.
#[rustfmt::skip]
pub const CASES: &[Case] = &[
    // FIU: notifications from the AA.
    case("FIU_1004", Fiu, Aa, "POST", "/Consent/Notification", Valid, (200, None)),
    case("FIU_1005", Fiu, Aa, "POST", "/Consent/Notification", NotifierId, (400, NOTIFIER)),
    case("FIU_1006", Fiu, Aa, "POST", "/Consent/Notification", NotifierType("FIP"), (400, NOTIFIER)),
    case("FIU_1010_1", Fiu, Aa, "POST", "/Consent/Notification", TimestampOffset(900), (400, INVALID)),
    case("FIU_1010_2", Fiu, Aa, "POST", "/Consent/Notification", TimestampOffset(-900), (400, INVALID)),
    case("FIU_1013", Fiu, Aa, "POST", "/Consent/Notification", Ver("1.1.2"), (404, VERSION)),
    case("FIU_1014_1", Fiu, Aa, "POST", "/Consent/Notification", TimestampText("Dec 06 2026 10:00:00"), (400, INVALID)),
    case("FIU_1014_2", Fiu, Aa, "POST", "/Consent/Notification", TimestampText("26-12-06 10:00:00"), (400, INVALID)),
    case("FIU_1036", Fiu, Aa, "POST", "/Consent/Notification", Tampered, (400, MISMATCH)),
    case("FIU_1042", Fiu, Aa, "POST", "/Consent/Notification", InvalidApiKey, (401, None)),
    case("FIU_1043", Fiu, Aa, "POST", "/Consent/Notification", AlternateApiKey, (400, INVALID)),
    case("FIU_2002", Fiu, Aa, "POST", "/FI/Notification", Valid, (200, None)),
    case("FIU_2003", Fiu, Aa, "POST", "/FI/Notification", Ver("3.0.0"), (404, VERSION)),
    case("FIU_2005", Fiu, Aa, "POST", "/FI/Notification", NotifierId, (400, INVALID)),
    case("FIU_2007_1", Fiu, Aa, "POST", "/FI/Notification", Txnid("0b811819-9044-4856-b0ee-8c88035f885"), (400, INVALID)),
    case("FIU_2007_2", Fiu, Aa, "POST", "/FI/Notification", Txnid("0b811819-9044-4856-b0ee-8c88035f88581"), (400, INVALID)),
    case("FIU_2008", Fiu, Aa, "POST", "/FI/Notification", TimestampText("2026-12-06T10:00:00.000Zx"), (400, INVALID)),
    case("FIU_2012", Fiu, Aa, "POST", "/FI/Notification", NotifierType("FIP"), (400, INVALID)),
    case("FIU_2027", Fiu, Aa, "POST", "/FI/Notification", DamagedSignature, (400, MISMATCH)),
    case("FIU_2028", Fiu, Aa, "POST", "/FI/Notification", InvalidApiKey, (401, None)),
    case("FIU_2029", Fiu, Aa, "POST", "/FI/Notification", AlternateApiKey, (400, INVALID)),
    // FIP: requests from the AA.
    case("FIP_1001", Fip, Aa, "POST", "/Accounts/discover", Valid, (200, None)),
    case("FIP_1027", Fip, Aa, "POST", "/Accounts/discover", TimestampOffset(-900), (400, INVALID)),
    case("FIP_1029", Fip, Aa, "POST", "/Accounts/discover", Ver("10"), (404, VERSION)),
    case("FIP_1033", Fip, Aa, "POST", "/Accounts/link", TimestampOffset(900), (400, INVALID)),
    case("FIP_1034", Fip, Aa, "POST", "/Accounts/link", Ver("10"), (404, VERSION)),
    case("FIP_1040", Fip, Aa, "POST", "/Accounts/link", AlternateApiKey, (400, INVALID)),
    case("FIP_1045", Fip, Aa, "DELETE", "/Accounts/link", Ver("10"), (404, VERSION)),
    case("FIP_1056", Fip, Aa, "POST", "/Accounts/discover", Tampered, (400, MISMATCH)),
    case("FIP_1057", Fip, Aa, "POST", "/Accounts/link", DamagedSignature, (400, MISMATCH)),
    case("FIP_1058", Fip, Aa, "DELETE", "/Accounts/link", Tampered, (400, MISMATCH)),
    case("FIP_1059", Fip, Aa, "GET", "/Accounts/link/{ref}/{token}", DamagedSignature, (400, MISMATCH)),
    case("FIP_2003", Fip, Aa, "POST", "/Consent", TimestampText("2026-12-06 10:00:00"), (400, INVALID)),
    case("FIP_2018", Fip, Aa, "POST", "/Consent", Ver("10"), (404, VERSION)),
    case("FIP_2019", Fip, Aa, "POST", "/Consent/Notification", Valid, (200, None)),
    case("FIP_2021", Fip, Aa, "POST", "/Consent/Notification", TimestampOffset(-900), (400, INVALID)),
    case("FIP_2022", Fip, Aa, "POST", "/Consent/Notification", Ver("10"), (404, VERSION)),
    case("FIP_2023", Fip, Aa, "POST", "/Consent/Notification", NotifierId, (400, NOTIFIER)),
    case("FIP_2026", Fip, Aa, "POST", "/Consent", Tampered, (400, MISMATCH)),
    case("FIP_2027", Fip, Aa, "POST", "/Consent/Notification", DamagedSignature, (400, MISMATCH)),
    case("FIP_3001", Fip, Aa, "POST", "/FI/request", Valid, (200, None)),
    case("FIP_3003", Fip, Aa, "POST", "/FI/request", TimestampText("06/12/2026 10:00:00"), (400, INVALID)),
    case("FIP_3004", Fip, Aa, "POST", "/FI/request", Ver("10"), (404, VERSION)),
    case("FIP_3005", Fip, Aa, "POST", "/FI/request", TimestampOffset(900), (400, INVALID)),
    case("FIP_3008_1", Fip, Aa, "POST", "/FI/request", KeyMaterial("RSA", "Curve25519"), (400, KEY)),
    case("FIP_3008_2", Fip, Aa, "POST", "/FI/request", KeyMaterial("DH", "Curve25519"), (400, KEY)),
    case("FIP_3008_3", Fip, Aa, "POST", "/FI/request", KeyMaterial("ECC", "Curve25519"), (400, KEY)),
    case("FIP_3008_4", Fip, Aa, "POST", "/FI/request", KeyMaterial("FourQ", "Curve25519"), (400, KEY)),
    case("FIP_3008_5", Fip, Aa, "POST", "/FI/request", KeyMaterial("ECMQV", "Curve25519"), (400, KEY)),
    case("FIP_3008_6", Fip, Aa, "POST", "/FI/request", KeyMaterial("ECDH", "secp256r1"), (400, KEY)),
    case("FIP_3010", Fip, Aa, "GET", "/FI/fetch/{id}", Valid, (200, None)),
    case("FIP_3021", Fip, Aa, "POST", "/FI/request", Tampered, (400, MISMATCH)),
    case("FIP_3022", Fip, Aa, "GET", "/FI/fetch/{id}", DamagedSignature, (400, MISMATCH)),
    case("FIP_3026", Fip, Aa, "GET", "/FI/fetch/{id}", Valid, (200, None)),
    case("FIP_3027", Fip, Aa, "GET", "/FI/fetch/{id}", AlternateApiKey, (400, INVALID)),
    case("FIP_4001", Fip, Aa, "GET", "/Heartbeat", Valid, (200, None)),
    // AA: requests from FIUs.
    case("AA_1001", Aa, Fiu, "POST", "/Consent", Valid, (200, None)),
    case("AA_1003", Aa, Fiu, "POST", "/Consent", TimestampText("2026/12/06 10:00:00"), (400, INVALID)),
    case("AA_1004", Aa, Fiu, "POST", "/Consent", Ver("1.1.3"), (404, VERSION)),
    case("AA_1005", Aa, Fiu, "POST", "/Consent", TimestampOffset(960), (400, INVALID)),
    case("AA_1006", Aa, Fiu, "POST", "/Consent", Txnid("txn-1"), (400, INVALID)),
    case("AA_1015", Aa, Fiu, "GET", "/Consent/handle/{id}", Valid, (200, None)),
    case("AA_1026", Aa, Fiu, "GET", "/Consent/{id}", Valid, (200, None)),
    case("AA_1041", Aa, Fiu, "POST", "/Consent", Tampered, (400, MISMATCH)),
    case("AA_1042", Aa, Fiu, "GET", "/Consent/handle/{id}", DamagedSignature, (400, MISMATCH)),
    case("AA_1043", Aa, Fiu, "GET", "/Consent/{id}", DamagedSignature, (400, MISMATCH)),
    case("AA_2001", Aa, Fiu, "POST", "/FI/request", Valid, (200, None)),
    case("AA_2003", Aa, Fiu, "POST", "/FI/request", TimestampText("2026-12-06T10:00"), (400, INVALID)),
    case("AA_2004", Aa, Fiu, "POST", "/FI/request", Ver("1.0"), (404, VERSION)),
    case("AA_2005_1", Aa, Fiu, "POST", "/FI/request", TimestampOffset(960), (400, INVALID)),
    case("AA_2005_2", Aa, Fiu, "POST", "/FI/request", TimestampOffset(-900), (400, INVALID)),
    case("AA_2006", Aa, Fiu, "POST", "/FI/request", Txnid("not-a-uuid"), (400, INVALID)),
    case("AA_2011", Aa, Fiu, "POST", "/FI/request", KeyMaterial("RSA", "Curve25519"), (400, KEY)),
];

/// The cases of one deployment.
pub fn for_deployment(role: Role) -> impl Iterator<Item = &'static Case> {
    CASES.iter().filter(move |c| c.deployment == role)
}

/// One case by id.
pub fn by_id(id: &str) -> Option<&'static Case> {
    CASES.iter().find(|c| c.id == id)
}
