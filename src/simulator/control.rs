//! The simulator's control API under `/_simulator/`, for driving it from outside the process (benchmarks,
//! soak runs, a developer with curl). Everything here is also a method on [`super::Simulator`].
//!
//! - `GET /_simulator/stats` — calls per endpoint, entity tokens issued, and per site (see
//!   [`Simulator::spawn_site`](super::Simulator::spawn_site)) its calls, resets and whether it is cut off
//! - `GET|PUT /_simulator/settings` — token lifetime, latency, reset mode, clock offset
//! - `POST|DELETE /_simulator/faults` — queue a [`Fault`](super::Fault) / clear the queue
//! - `POST /_simulator/entities` — `{"id","secret","secretValidForSecs"}` adds or replaces an entity
//! - `POST /_simulator/users` — `{"email","password","entities":[…]}` adds an admin user

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;

use super::state::{Fault, SimSettings, SimUser};
use super::{Shared, Simulator};
use crate::iam::Endpoint;

pub(crate) fn router() -> Router<Arc<Shared>> {
    Router::new()
        .route("/_simulator/stats", get(stats))
        .route("/_simulator/settings", get(get_settings).put(put_settings))
        .route("/_simulator/faults", post(add_fault).delete(clear_faults))
        .route("/_simulator/entities", post(add_entity))
        .route("/_simulator/users", post(add_user))
}

async fn stats(State(shared): State<Arc<Shared>>) -> Response {
    let calls: serde_json::Map<String, serde_json::Value> = Endpoint::ALL
        .iter()
        .map(|e| {
            let name = serde_json::to_value(e)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string));
            (name.unwrap_or_default(), shared.counters.calls(*e).into())
        })
        .collect();
    let issued = shared
        .counters
        .entity_tokens_issued
        .load(std::sync::atomic::Ordering::SeqCst);
    let sites: serde_json::Map<String, serde_json::Value> = shared
        .sites()
        .iter()
        .map(|(name, site)| {
            let calls: serde_json::Map<String, serde_json::Value> = site
                .calls
                .iter()
                .map(|(e, n)| (e.as_str().to_string(), (*n).into()))
                .collect();
            (
                name.clone(),
                serde_json::json!({ "calls": calls, "resets": site.resets, "cutOff": site.cut_off }),
            )
        })
        .collect();
    axum::Json(serde_json::json!({ "calls": calls, "entityTokensIssued": issued, "sites": sites }))
        .into_response()
}

async fn get_settings(State(shared): State<Arc<Shared>>) -> Response {
    axum::Json(shared.world().settings.clone()).into_response()
}

async fn put_settings(
    State(shared): State<Arc<Shared>>,
    axum::Json(settings): axum::Json<SimSettings>,
) -> Response {
    shared.world().settings = settings;
    StatusCode::NO_CONTENT.into_response()
}

async fn add_fault(
    State(shared): State<Arc<Shared>>,
    axum::Json(fault): axum::Json<Fault>,
) -> Response {
    shared.world().faults.push_back(fault);
    StatusCode::NO_CONTENT.into_response()
}

async fn clear_faults(State(shared): State<Arc<Shared>>) -> Response {
    shared.world().faults.clear();
    StatusCode::NO_CONTENT.into_response()
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct NewEntity {
    id: String,
    secret: String,
    #[serde(default = "default_validity")]
    secret_valid_for_secs: u64,
}

fn default_validity() -> u64 {
    180 * 86_400
}

async fn add_entity(
    State(shared): State<Arc<Shared>>,
    axum::Json(new): axum::Json<NewEntity>,
) -> Response {
    Simulator { shared }.add_entity(
        &new.id,
        &new.secret,
        Duration::from_secs(new.secret_valid_for_secs),
    );
    StatusCode::NO_CONTENT.into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewUser {
    email: String,
    password: String,
    entities: Vec<String>,
}

async fn add_user(
    State(shared): State<Arc<Shared>>,
    axum::Json(new): axum::Json<NewUser>,
) -> Response {
    shared.world().users.insert(
        new.email,
        SimUser {
            password: new.password,
            entities: new.entities,
            failed_logins: 0,
            locked_until: None,
        },
    );
    StatusCode::NO_CONTENT.into_response()
}
