//! Which key signed a request that the token's entity's key does not verify: another registered entity's
//! (`InvalidRequest`: FIP_1040, FIP_3027, FIU_1043, FIU_2029) or nobody's (`SignatureDoesNotMatch`), for
//! bodies and for `GET`s signed over their endpoint path. Bounded: at most two keys are tried, and at most
//! one CR lookup is made, within the lookup budget.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{HeaderMap, StatusCode};

use super::refusal::{Refusal, mismatch};
use crate::entity::Role;
use crate::http::body::{self, Buffered};
use crate::http::jws::{
    BUSY_RETRY_AFTER, Checked, JwsState, Signature, parse_signature, signature_and_key,
    verifies_with,
};
use crate::http::rebit;
use crate::metrics::edge::AuthorizeOutcome;
use crate::registry::Found;

/// A `GET` signed over its endpoint path: the detached JWS's payload is the path, with or without the
/// base prefix a proxy strips (`--authorize-path-prefix`).
pub(super) async fn signed_path(
    state: &JwsState,
    role: Role,
    sender: &str,
    headers: &HeaderMap,
    path: &str,
) -> Result<(), Refusal> {
    let (signature, key) = match signature_and_key(state, role, sender, headers).await {
        Ok(found) => found,
        Err(Checked::Unavailable(wait)) => {
            return Err(Refusal::new(
                AuthorizeOutcome::Unavailable,
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceUnavailable",
                "the Central Registry cannot be asked and no key for the sender is held",
            )
            .retry_after(wait));
        }
        Err(Checked::UnknownSender) => {
            return Err(Refusal::unauthorized(
                "the token's entity has no usable key in the Central Registry",
            ));
        }
        Err(Checked::ForeignKey) => {
            // The kid is not the sender's: whose is it?
            let Ok(Signature { prefix, kid, bytes }) = parse_signature(headers) else {
                return Err(mismatch());
            };
            for candidate in path_forms(state, path) {
                let input = Buffered::small(
                    [prefix.as_bytes(), candidate.as_bytes()].concat(),
                    prefix.len(),
                    &state.limits.budget,
                );
                let (other, _) =
                    signed_by_another(state, kid.as_deref(), bytes.clone(), input, &[], sender)
                        .await;
                if let Some(other) = other {
                    return Err(Refusal::invalid(format!(
                        "the request is signed by {other}, not by the token's entity"
                    )));
                }
            }
            return Err(mismatch());
        }
        Err(_) => return Err(mismatch()),
    };
    for candidate in path_forms(state, path) {
        let input = Buffered::small(
            [signature.prefix.as_bytes(), candidate.as_bytes()].concat(),
            signature.prefix.len(),
            &state.limits.budget,
        );
        match verifies_with(state, Arc::clone(&key), signature.bytes.clone(), input).await {
            Some((true, _)) => return Ok(()),
            Some((false, input)) => {
                let (other, _) = signed_by_another(
                    state,
                    signature.kid.as_deref(),
                    signature.bytes.clone(),
                    input,
                    &[],
                    sender,
                )
                .await;
                if let Some(other) = other {
                    return Err(Refusal::invalid(format!(
                        "the request is signed by {other}, not by the token's entity"
                    )));
                }
            }
            None => {
                return Err(Refusal::new(
                    AuthorizeOutcome::Busy,
                    StatusCode::SERVICE_UNAVAILABLE,
                    "ServiceUnavailable",
                    "the broker is busy; try again shortly",
                )
                .retry_after(BUSY_RETRY_AFTER));
            }
        }
    }
    Err(mismatch())
}

/// The forms of a path a peer may have signed: as received, and with the configured base prefix.
fn path_forms(state: &JwsState, path: &str) -> Vec<String> {
    let mut forms = vec![path.to_string()];
    if let Some(prefix) = state.path_prefix.as_deref() {
        forms.push(format!("{}{path}", prefix.trim_end_matches('/')));
    }
    forms
}

/// [`signed_by_another`] for a body: reads it first when the check stopped before reading (a `kid` that
/// is not the sender's), with the signature's header segment in front.
pub(super) async fn signed_by_another_body(
    state: &JwsState,
    headers: &HeaderMap,
    sender: &str,
    read: Option<Buffered>,
    unread: Option<Body>,
) -> (Option<String>, Option<Buffered>, Option<Body>) {
    // A signature that does not parse is nobody's: the body stays as it is, for the answer's envelope.
    let Ok(signature) = parse_signature(headers) else {
        return (None, read, unread);
    };
    let buffered = match (read, unread) {
        (Some(buffered), _) => buffered,
        (None, Some(body)) => {
            let prefix = signature.prefix.as_bytes();
            match body::read(body, prefix, state.max_body_bytes, &state.limits).await {
                Ok(buffered) => buffered,
                Err(_) => return (None, None, None),
            }
        }
        (None, None) => return (None, None, None),
    };
    let named: Vec<(Role, String)> = rebit::body_senders(buffered.body())
        .into_iter()
        .map(|(role, id)| (role, id.to_string()))
        .collect();
    let (other, back) = signed_by_another(
        state,
        signature.kid.as_deref(),
        signature.bytes,
        buffered,
        &named,
        sender,
    )
    .await;
    (other, back, None)
}

/// Which other registered entity signed `input`, if any: the known holder of the signature's `kid` (from
/// the cache, no CR call), then the first entity the body names (one lookup, within the lookup budget).
/// At most two keys are tried. A `kid` no registered entity holds is nobody's: `None`.
async fn signed_by_another(
    state: &JwsState,
    kid: Option<&str>,
    signature: Vec<u8>,
    mut input: Buffered,
    named: &[(Role, String)],
    sender: &str,
) -> (Option<String>, Option<Buffered>) {
    let mut candidates: Vec<(String, Arc<crate::registry::EntityKey>)> = Vec::new();
    if let Some((_, id, key)) = kid.and_then(|kid| state.registry.holder_of_kid(kid, sender)) {
        candidates.push((id, key));
    }
    if let Some((role, other)) = named.iter().find(|(_, id)| id != sender)
        && !candidates.iter().any(|(id, _)| id == other)
        && let Ok(Found::Key(key)) = state.registry.key_for(*role, other, kid).await
    {
        candidates.push((other.clone(), key));
    }
    for (other, key) in candidates.into_iter().take(2) {
        match verifies_with(state, key, signature.clone(), input).await {
            Some((true, back)) => return (Some(other), Some(back)),
            Some((false, back)) => input = back,
            None => return (None, None),
        }
    }
    (None, Some(input))
}
