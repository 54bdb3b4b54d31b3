//! What verification is configured with: the issuers accepted (by default the named environment's, or
//! the realm on the IAM's own origin), where each publishes its keys, the clock leeway, the key policy
//! and the fetch timeouts.

use std::time::Duration;

use super::policy::KeyPolicy;
use crate::iam::{CERTS_PATH, IamTimeouts, REALM_PATH, environment_base_url};

/// Default clock leeway for `exp`, `nbf` and `iat`.
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(60);
/// The issuers documented (or, where marked in the spec, likely) for the named environments (spec §3.2):
/// the realm on the IAM host, and the older `tokens.*` host that issued the sandbox samples.
const ENVIRONMENT_ISSUERS: [(&str, [&str; 2]); 3] = [
    (
        "sandbox",
        [
            "https://api.sandbox.sahamati.org.in/auth/realms/sahamati",
            "https://tokens.sandbox.sahamati.org.in/auth/realms/sahamati",
        ],
    ),
    (
        "uat",
        [
            "https://api.uat.sahamati.org.in/auth/realms/sahamati",
            "https://uattokens.sahamati.org.in/auth/realms/sahamati",
        ],
    ),
    (
        "production",
        [
            "https://api.sahamati.org.in/auth/realms/sahamati",
            "https://tokens.sahamati.org.in/auth/realms/sahamati",
        ],
    ),
];

/// The default issuer allow-list for an IAM base URL: the named environment's issuers when the URL is one
/// of the documented bases, else the realm on the IAM's own origin (`https://host/iam` →
/// `https://host/auth/realms/sahamati`, and likewise for a simulator on `http://127.0.0.1:PORT/iam`).
pub fn default_issuers(iam_url: &str) -> Vec<String> {
    let base = iam_url.trim_end_matches('/');
    for (name, issuers) in ENVIRONMENT_ISSUERS {
        if environment_base_url(name) == Some(base) {
            return issuers.iter().map(|i| i.to_string()).collect();
        }
    }
    match reqwest::Url::parse(base) {
        Ok(url) if url.has_host() => {
            vec![format!(
                "{}{REALM_PATH}",
                url.origin().ascii_serialization()
            )]
        }
        _ => Vec::new(),
    }
}

/// Where an issuer publishes its keys.
pub fn jwks_url_for(issuer: &str) -> String {
    format!("{}{CERTS_PATH}", issuer.trim_end_matches('/'))
}

/// What verification needs, validated.
#[derive(Debug, Clone)]
pub struct VerifySettings {
    /// Issuers whose tokens are accepted, exactly as they appear in `iss`.
    pub issuers: Vec<String>,
    /// One key URL for every issuer, instead of each issuer's own.
    pub jwks_url: Option<String>,
    pub leeway: Duration,
    pub policy: KeyPolicy,
    /// Connect and request timeouts of key fetches.
    pub timeouts: IamTimeouts,
}

impl VerifySettings {
    /// The defaults for an IAM base URL: its issuers, their key URLs, 60 s leeway.
    pub fn for_iam_url(iam_url: &str) -> Self {
        Self {
            issuers: default_issuers(iam_url),
            jwks_url: None,
            leeway: DEFAULT_LEEWAY,
            policy: KeyPolicy::default(),
            timeouts: IamTimeouts::default(),
        }
    }
}
