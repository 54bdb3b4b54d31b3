//! Sites: one IAM seen from several places. Each site gets a door of its own — the same router on another
//! loopback port — so a test can run a primary and a standby against one world and still tell who did
//! what (calls and successful resets per site) and cut one site off (every request through its door
//! answered `503`, as a gateway would when the site's network is down: "the primary is gone").

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::Response;

use super::Shared;
use super::envelope::envelope_error;
use crate::iam::Endpoint;

/// What one site did and how its door behaves.
#[derive(Debug, Clone, Default)]
pub struct SiteState {
    /// Requests per IAM endpoint through this door.
    pub calls: HashMap<Endpoint, u64>,
    /// Secret resets that succeeded (200) through this door.
    pub resets: u64,
    /// Every request through this door is answered 503.
    pub cut_off: bool,
}

/// The IAM endpoint a path names, if any.
fn endpoint_of(path: &str) -> Option<Endpoint> {
    let rest = path.strip_prefix("/iam")?;
    Endpoint::ALL.into_iter().find(|e| rest == e.path())
}

/// The door's middleware: counts, cuts off, and notes successful resets.
pub(super) async fn door(
    State((shared, site)): State<(Arc<Shared>, Arc<str>)>,
    request: Request<Body>,
    next: Next,
) -> Response {
    let endpoint = endpoint_of(request.uri().path());
    let cut_off = {
        let mut sites = shared.sites();
        let state = sites.entry(site.to_string()).or_default();
        if let Some(endpoint) = endpoint {
            *state.calls.entry(endpoint).or_default() += 1;
        }
        state.cut_off
    };
    if cut_off {
        return envelope_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "Service Unavailable",
            "this site cannot reach the IAM",
            None,
        );
    }
    let response = next.run(request).await;
    if endpoint == Some(Endpoint::SecretReset) && response.status() == StatusCode::OK {
        shared.sites().entry(site.to_string()).or_default().resets += 1;
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_their_endpoints() {
        assert_eq!(
            endpoint_of("/iam/v1/entity/secret/reset"),
            Some(Endpoint::SecretReset)
        );
        assert_eq!(
            endpoint_of("/iam/v1/entity/token/generate"),
            Some(Endpoint::EntityToken)
        );
        assert_eq!(endpoint_of("/_simulator/stats"), None);
    }
}
