//! `GET /v1/token[/{entityId}]` and `POST /v1/token[/{entityId}]/refresh`.
//!
//! The hot path: one cache read, one small JSON body. Nothing here waits on the IAM unless no valid token
//! exists, and then only through the broker's coalesced, rate-limited cold path.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use tokio::time::Instant;

use super::{AppState, reply};
use crate::entity::EntityId;
use crate::timefmt;
use crate::token::broker::{Served, TokenError};

/// Response header set when the token is valid but its last refresh failed.
pub const STALE_HEADER: &str = "x-token-stale";

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct TokenBody<'a> {
    access_token: &'a str,
    token_type: &'static str,
    expires_in: u64,
    expires_at: String,
    entity_id: &'a str,
}

pub async fn get_default(State(app): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let Some(id) = app.broker.single_entity().cloned() else {
        return entity_required(&app);
    };
    answer(&app, &id, app.broker.token(&id).await, &headers)
}

pub async fn get_one(
    State(app): State<Arc<AppState>>,
    Path(raw): Path<String>,
    headers: HeaderMap,
) -> Response {
    let Some(id) = app.broker.lookup(&raw) else {
        return unknown_entity();
    };
    answer(&app, &id, app.broker.token(&id).await, &headers)
}

pub async fn refresh_default(State(app): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let Some(id) = app.broker.single_entity().cloned() else {
        return entity_required(&app);
    };
    answer(&app, &id, app.broker.force_refresh(&id).await, &headers)
}

pub async fn refresh_one(
    State(app): State<Arc<AppState>>,
    Path(raw): Path<String>,
    headers: HeaderMap,
) -> Response {
    let Some(id) = app.broker.lookup(&raw) else {
        return unknown_entity();
    };
    answer(&app, &id, app.broker.force_refresh(&id).await, &headers)
}

fn entity_required(app: &AppState) -> Response {
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

fn unknown_entity() -> Response {
    reply::error(
        StatusCode::NOT_FOUND,
        "unknown_entity",
        "no such entity is configured",
    )
}

fn answer(
    app: &AppState,
    id: &EntityId,
    result: Result<Served, TokenError>,
    headers: &HeaderMap,
) -> Response {
    let metrics = app.broker.metrics();
    match result {
        Ok(served) => {
            metrics.token_request(id, if served.stale { "stale" } else { "served" });
            token_response(&served, wants_plain_text(headers))
        }
        Err(TokenError::UnknownEntity) => unknown_entity(),
        Err(TokenError::Unavailable {
            reason,
            retry_after,
        }) => {
            metrics.token_request(id, "unavailable");
            reply::unavailable(
                "token_unavailable",
                format!("no valid token for {id}; last upstream failure: {reason}"),
                retry_after.max(Duration::from_secs(1)),
            )
        }
    }
}

fn token_response(served: &Served, plain: bool) -> Response {
    let token = &served.token;
    let mut response = if plain {
        (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            )],
            token.expose().to_owned(),
        )
            .into_response()
    } else {
        let body = TokenBody {
            access_token: token.expose(),
            token_type: "Bearer",
            expires_in: token.seconds_left(Instant::now()),
            expires_at: timefmt::rfc3339_seconds(token.expires_at_wall),
            entity_id: token.entity_id.as_str(),
        };
        axum::Json(body).into_response()
    };
    if served.stale {
        response
            .headers_mut()
            .insert(STALE_HEADER, HeaderValue::from_static("true"));
    }
    reply::no_store(response)
}

/// The first of `application/json` and `text/plain` named in `Accept` wins; JSON when neither is.
fn wants_plain_text(headers: &HeaderMap) -> bool {
    for value in headers.get_all(header::ACCEPT) {
        let Ok(value) = value.to_str() else { continue };
        for item in value.split(',') {
            let media = item.split(';').next().unwrap_or("").trim();
            if media.eq_ignore_ascii_case("application/json") {
                return false;
            }
            if media.eq_ignore_ascii_case("text/plain") {
                return true;
            }
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_negotiation() {
        let with = |v: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(header::ACCEPT, HeaderValue::from_static(v));
            wants_plain_text(&h)
        };
        assert!(with("text/plain"));
        assert!(with("text/plain; charset=utf-8, */*"));
        assert!(!with("application/json, text/plain"));
        assert!(!with("*/*"));
        assert!(!wants_plain_text(&HeaderMap::new()));
    }
}
