//! `GET /v1/token[/{entityId}]` and `POST /v1/token[/{entityId}]/refresh`.
//!
//! The hot path: the guard's header checks, one read lock, and a body assembled from the token's
//! pre-serialized parts. Nothing here waits on the IAM unless no valid token exists, and then only
//! through the broker's coalesced, rate-limited cold path.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, Response, StatusCode, header};
use tokio::time::Instant;

use super::guard::CallerAllowed;
use super::{AppState, reply};
use crate::entity::{EntityId, EntityIdError};
use crate::token::status::{RequestOutcome, Served, TokenError};

/// Response header set when the token is valid but its last refresh failed.
pub const STALE_HEADER: &str = "x-token-stale";

pub async fn get_default(
    caller: CallerAllowed,
    State(app): State<Arc<AppState>>,
) -> Response<Body> {
    serve(&app, None, caller, Want::Held).await
}

pub async fn get_one(
    caller: CallerAllowed,
    State(app): State<Arc<AppState>>,
    Path(raw): Path<String>,
) -> Response<Body> {
    serve(&app, Some(&raw), caller, Want::Held).await
}

pub async fn refresh_default(
    caller: CallerAllowed,
    State(app): State<Arc<AppState>>,
) -> Response<Body> {
    serve(&app, None, caller, Want::Refreshed).await
}

pub async fn refresh_one(
    caller: CallerAllowed,
    State(app): State<Arc<AppState>>,
    Path(raw): Path<String>,
) -> Response<Body> {
    serve(&app, Some(&raw), caller, Want::Refreshed).await
}

/// Which token a request asks for.
enum Want {
    /// The held token, fetched only if none is valid.
    Held,
    /// A new one from the IAM (`POST …/refresh`).
    Refreshed,
}

async fn serve(
    app: &AppState,
    raw_id: Option<&str>,
    caller: CallerAllowed,
    want: Want,
) -> Response<Body> {
    let id = match resolve(app, raw_id) {
        Ok(id) => id,
        Err(EntityMiss::Required) => return entity_required(app),
        Err(EntityMiss::Unknown) => return unknown_entity(),
        Err(EntityMiss::Invalid(e)) => return invalid_entity(&e),
    };
    let result = match want {
        Want::Held => app.broker.token(id).await,
        Want::Refreshed => app.broker.force_refresh(id).await,
    };
    answer(app, id, result, caller.wants_plain_text)
}

/// Why a request names no configured entity.
pub(super) enum EntityMiss {
    /// No id in the path, and more than one entity is configured.
    Required,
    /// The id in the path is not configured.
    Unknown,
    /// The path does not hold an entity id at all.
    Invalid(EntityIdError),
}

/// The entity a request is for: the one in the path, or the only one configured. Shared with the
/// [`super::hot_path`], so both read paths resolve ids alike.
pub(super) fn resolve<'a>(
    app: &'a AppState,
    raw_id: Option<&str>,
) -> Result<&'a EntityId, EntityMiss> {
    match raw_id {
        None => app.broker.single_entity().ok_or(EntityMiss::Required),
        // The grammar is checked on the miss only: a configured id is found without it.
        Some(raw) => app
            .broker
            .lookup(raw)
            .ok_or_else(|| match EntityId::parse(raw) {
                Ok(_) => EntityMiss::Unknown,
                Err(e) => EntityMiss::Invalid(e),
            }),
    }
}

fn entity_required(app: &AppState) -> Response<Body> {
    let ids: Vec<&str> = app.broker.entity_ids().map(EntityId::as_str).collect();
    reply::error(
        StatusCode::BAD_REQUEST,
        "entity_required",
        format!(
            "several entities are configured; ask for /v1/token/{{entityId}} with one of: {}",
            ids.join(", ")
        ),
    )
}

fn invalid_entity(error: &EntityIdError) -> Response<Body> {
    reply::error(
        StatusCode::BAD_REQUEST,
        "invalid_entity_id",
        format!("the path does not name an entity id: {error}"),
    )
}

fn unknown_entity() -> Response<Body> {
    reply::error(
        StatusCode::NOT_FOUND,
        "unknown_entity",
        "no such entity is configured",
    )
}

/// The answer to a token request, counted. Shared with the [`super::hot_path`], so both give the same bytes.
pub(super) fn answer(
    app: &AppState,
    id: &EntityId,
    result: Result<Served, TokenError>,
    plain: bool,
) -> Response<Body> {
    match result {
        Ok(served) => {
            let outcome = if served.stale {
                RequestOutcome::Stale
            } else {
                RequestOutcome::Served
            };
            app.broker.count_request(id, outcome);
            token_response(&served, plain)
        }
        Err(TokenError::UnknownEntity) => unknown_entity(),
        Err(TokenError::Unavailable {
            reason,
            retry_after,
        }) => {
            app.broker.count_request(id, RequestOutcome::Unavailable);
            reply::unavailable(
                "token_unavailable",
                format!("no valid token for {id}; last upstream failure: {reason}"),
                retry_after.max(Duration::from_secs(1)),
            )
        }
    }
}

fn token_response(served: &Served, plain: bool) -> Response<Body> {
    let token = &served.token;
    let (content_type, body) = if plain {
        ("text/plain; charset=utf-8", Body::from(token.plain_body()))
    } else {
        (
            "application/json",
            Body::from(token.json_body(Instant::now())),
        )
    };
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if served.stale {
        headers.insert(STALE_HEADER, HeaderValue::from_static("true"));
    }
    response
}
