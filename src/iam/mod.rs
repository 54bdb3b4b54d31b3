//! The client for the Sahamati Central Registry IAM: the four endpoints of the spec, exactly as documented.
//!
//! - [`client`] sends the requests (form bodies for the two token endpoints, JSON plus a bearer user token for
//!   secret read/reset), with connect and request timeouts and a cap on the size of what it reads back.
//! - [`wire`] holds the serde shapes of every body, including the lowercase aliases of the first draft.
//! - [`error`] keeps what a failure was (status, `errorCode`, `errorMsg`, or a sanitized excerpt of a body
//!   that was not the IAM's envelope) without ever carrying a secret or a token.
//! - [`url`](mod@url) builds the URLs of upstream calls (these endpoints, the Central Registry's entity
//!   records) segment by segment from a base URL.

pub mod client;
pub mod error;
pub mod url;
pub mod wire;

pub use client::{IamClient, IamTimeouts, SecretGrant, TokenGrant};
pub use error::IamError;

/// The realm's path below the IAM host (spec §0: a Keycloak realm named `sahamati`).
pub const REALM_PATH: &str = "/auth/realms/sahamati";
/// The key set's path below an issuer (Keycloak's).
pub const CERTS_PATH: &str = "/protocol/openid-connect/certs";

/// The documented IAM bases, by environment name.
pub fn environment_base_url(name: &str) -> Option<&'static str> {
    match name {
        "sandbox" => Some("https://api.sandbox.sahamati.org.in/iam"),
        "uat" => Some("https://api.uat.sahamati.org.in/iam"),
        "production" | "prod" => Some("https://api.sahamati.org.in/iam"),
        _ => None,
    }
}

/// The four IAM endpoints, for metrics labels, errors and the simulator's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Endpoint {
    EntityToken,
    UserToken,
    SecretRead,
    SecretReset,
}

impl Endpoint {
    pub const ALL: [Endpoint; 4] = [
        Endpoint::EntityToken,
        Endpoint::UserToken,
        Endpoint::SecretRead,
        Endpoint::SecretReset,
    ];

    /// The path below the IAM base.
    pub fn path(self) -> &'static str {
        match self {
            Endpoint::EntityToken => "/v1/entity/token/generate",
            Endpoint::UserToken => "/v1/user/token/generate",
            Endpoint::SecretRead => "/v1/entity/secret/read",
            Endpoint::SecretReset => "/v1/entity/secret/reset",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Endpoint::EntityToken => "entity_token",
            Endpoint::UserToken => "user_token",
            Endpoint::SecretRead => "secret_read",
            Endpoint::SecretReset => "secret_reset",
        }
    }
}
