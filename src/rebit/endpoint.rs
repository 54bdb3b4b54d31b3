//! Which ReBIT endpoint a path names, and what the certification suite expects a sidecar in front of it
//! to decide: who may notify it (and the code when the notifier is wrong), whether a `GET` is signed over
//! its path, whether a body carries `KeyMaterial`.

use crate::entity::Role;

/// A ReBIT endpoint, as far as the sidecar's checks tell them apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `POST /Consent/Notification` (FIU and FIP; the AA notifies).
    ConsentNotification,
    /// `POST /FI/Notification` (FIU, AA).
    FiNotification,
    /// `POST /Account/link/Notification` (AA; the FIP notifies).
    AccountLinkNotification,
    /// `POST /FI/request` (FIP, AA): carries `KeyMaterial`.
    FiRequest,
    /// `GET /Heartbeat`: no signature, no body.
    Heartbeat,
    /// A `GET` whose detached JWS covers the endpoint path (`/FI/fetch/{sessionId}`,
    /// `/Accounts/link/{ref}/{token}`, `/Consent/{id}`, `/Consent/handle/{h}`).
    SignedGet,
    /// Any other `POST`/`DELETE` with a ReBIT envelope.
    Other,
}

/// What a wrong `Notifier` is answered with, by endpoint, as the certification suite asserts it.
///
/// | endpoint | code | cases |
/// |---|---|---|
/// | `/Consent/Notification` | `InvalidNotifier` | FIU_1005 (another AA's id), FIU_1006 (type FIP), FIP_2023 |
/// | `/FI/Notification` | `InvalidRequest` | FIU_2005 (another AA's id), FIU_2009 case 1, FIU_2012 (type) |
/// | `/Account/link/Notification` | `InvalidRequest` | (no case names it; the suite's general rule) |
pub const NOTIFIER_CODES: [(Endpoint, &str); 3] = [
    (Endpoint::ConsentNotification, "InvalidNotifier"),
    (Endpoint::FiNotification, "InvalidRequest"),
    (Endpoint::AccountLinkNotification, "InvalidRequest"),
];

impl Endpoint {
    /// The endpoint `path` (the ReBIT path, after any base prefix is removed) names for `method`.
    pub fn classify(method: &str, path: &str) -> Endpoint {
        let path = path.trim_end_matches('/');
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let get = method.eq_ignore_ascii_case("GET") || method.eq_ignore_ascii_case("HEAD");
        match (get, segments.as_slice()) {
            (true, ["Heartbeat"]) => Endpoint::Heartbeat,
            (true, ["FI", "fetch", _])
            | (true, ["Accounts", "link", _, _])
            | (true, ["Consent", "handle", _])
            | (true, ["Consent", _]) => Endpoint::SignedGet,
            (false, ["Consent", "Notification"]) => Endpoint::ConsentNotification,
            (false, ["FI", "Notification"]) => Endpoint::FiNotification,
            (false, ["Account", "link", "Notification"])
            | (false, ["Accounts", "link", "Notification"]) => Endpoint::AccountLinkNotification,
            (false, ["FI", "request"]) => Endpoint::FiRequest,
            _ => Endpoint::Other,
        }
    }

    /// The code for a `Notifier` that is not the token's entity and role, on a notification endpoint.
    pub fn notifier_code(self) -> Option<&'static str> {
        NOTIFIER_CODES
            .iter()
            .find(|(endpoint, _)| *endpoint == self)
            .map(|(_, code)| *code)
    }
}

/// Why a `Notifier` does not match the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotifierError {
    #[error("the body names no Notifier")]
    Missing,
    #[error("Notifier.type is {found}, but the token is an {caller} token")]
    WrongType { found: String, caller: Role },
    #[error("Notifier.id is {found}, but the token was issued to {caller}")]
    WrongId { found: String, caller: String },
}

/// The notifier a notification names must be the token's entity, in the role it calls in.
pub fn check_notifier(
    notifier: Option<(Option<&str>, Option<&str>)>,
    caller_role: Role,
    caller_id: &str,
) -> Result<(), NotifierError> {
    let Some((kind, id)) = notifier else {
        return Err(NotifierError::Missing);
    };
    let kind = kind.unwrap_or("");
    if Role::parse(kind) != Some(caller_role) {
        return Err(NotifierError::WrongType {
            found: kind.chars().take(16).collect(),
            caller: caller_role,
        });
    }
    let id = id.unwrap_or("");
    if id != caller_id {
        return Err(NotifierError::WrongId {
            found: id.chars().take(64).collect(),
            caller: caller_id.to_string(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_their_endpoints() {
        let c = Endpoint::classify;
        assert_eq!(
            c("POST", "/Consent/Notification"),
            Endpoint::ConsentNotification
        );
        assert_eq!(c("POST", "/FI/Notification/"), Endpoint::FiNotification);
        assert_eq!(
            c("POST", "/Account/link/Notification"),
            Endpoint::AccountLinkNotification
        );
        assert_eq!(c("POST", "/FI/request"), Endpoint::FiRequest);
        assert_eq!(c("GET", "/Heartbeat"), Endpoint::Heartbeat);
        assert_eq!(c("GET", "/FI/fetch/5a1c"), Endpoint::SignedGet);
        assert_eq!(c("GET", "/Accounts/link/ref/token"), Endpoint::SignedGet);
        assert_eq!(c("GET", "/Consent/handle/h-1"), Endpoint::SignedGet);
        assert_eq!(c("GET", "/Consent/c-1"), Endpoint::SignedGet);
        assert_eq!(c("POST", "/Consent"), Endpoint::Other);
        assert_eq!(c("POST", "/Accounts/discover"), Endpoint::Other);
        assert_eq!(c("DELETE", "/Accounts/link"), Endpoint::Other);
    }

    #[test]
    fn the_notifier_must_be_the_caller() {
        assert_eq!(
            check_notifier(Some((Some("AA"), Some("AA-1"))), Role::Aa, "AA-1"),
            Ok(())
        );
        assert!(matches!(
            check_notifier(Some((Some("FIP"), Some("AA-1"))), Role::Aa, "AA-1"),
            Err(NotifierError::WrongType { .. })
        ));
        assert!(matches!(
            check_notifier(Some((Some("AA"), Some("AA-2"))), Role::Aa, "AA-1"),
            Err(NotifierError::WrongId { .. })
        ));
        assert_eq!(
            check_notifier(None, Role::Aa, "AA-1"),
            Err(NotifierError::Missing)
        );
        assert_eq!(
            Endpoint::ConsentNotification.notifier_code(),
            Some("InvalidNotifier")
        );
        assert_eq!(
            Endpoint::FiNotification.notifier_code(),
            Some("InvalidRequest")
        );
        assert_eq!(Endpoint::FiRequest.notifier_code(), None);
    }
}
