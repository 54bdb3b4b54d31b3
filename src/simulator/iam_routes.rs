//! The simulator's IAM endpoints (spec §2). How an injected fault replaces or spoils an answer is in
//! [`super::faults`].

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::Shared;
use super::envelope::{envelope, envelope_error};
use super::faults::{Prelude, prelude};
use super::state::{
    ClientIdClaim, EpochUnit, FaultKind, GRACE_PERIOD, LocalZone, MAX_SECRET_DAYS, ResetMode,
    SimSettings, UserSession, random_secret,
};
use crate::iam::Endpoint;
use crate::iam::client::new_txn_id;
use crate::timefmt;

const ENTITY_SCOPE: &str = "email microprofile-jwt profile address phone offline_access";
const USER_SCOPE: &str = "email secret-expiry-ts profile entityMetadata";
const MISSING_ENTITY_CREDENTIALS: &str = "Entity Id/Secret is missing in the request";
const BAD_ENTITY_CREDENTIALS: &str = "Invalid entity id/secret or secret is expired";

fn unauthorized(message: &str, txn_id: Option<String>) -> Response {
    envelope_error(StatusCode::UNAUTHORIZED, "Unauthorized", message, txn_id)
}

fn bad_request(message: &str, txn_id: Option<String>) -> Response {
    envelope_error(StatusCode::BAD_REQUEST, "Bad Request", message, txn_id)
}

fn is_form(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.to_ascii_lowercase()
                .starts_with("application/x-www-form-urlencoded")
        })
}

fn form_fields(body: &[u8]) -> HashMap<String, String> {
    serde_urlencoded::from_bytes::<Vec<(String, String)>>(body)
        .unwrap_or_default()
        .into_iter()
        .collect()
}

fn epoch_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn epoch_millis(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// `expiresOn` in the unit the settings choose.
fn expires_on(t: SystemTime, settings: &SimSettings) -> i64 {
    match settings.expires_on_unit {
        EpochUnit::Millis => epoch_millis(t),
        EpochUnit::Seconds => epoch_millis(t) / 1000,
    }
}

/// `t` as the wall clock of the configured zone reads it, for the zoneless date-time fields.
fn local(t: SystemTime, settings: &SimSettings) -> SystemTime {
    match settings.local_zone {
        LocalZone::Utc => t,
        LocalZone::Ist => t + Duration::from_secs(timefmt::IST_OFFSET_SECONDS.unsigned_abs()),
    }
}

/// Merges a [`FaultKind::Patch`]'s fields into `target`; a `null` removes the field.
fn patch(target: &mut Value, fields: &serde_json::Map<String, Value>) {
    if let Value::Object(object) = target {
        for (key, value) in fields {
            if value.is_null() {
                object.remove(key);
            } else {
                object.insert(key.clone(), value.clone());
            }
        }
    }
}

fn token_body(token: Value, lifetime: u64, scope: &str, message: Option<String>) -> Value {
    let mut body = envelope(
        json!({
            "accessToken": token,
            "expiresIn": lifetime,
            "refreshExpiresIn": 0,
            "tokenType": "Bearer",
            "notBeforePolicy": 0,
            "scope": scope,
        }),
        None,
    );
    if let Some(message) = message {
        body["message"] = json!(message);
    }
    body
}

/// `POST /iam/v1/entity/token/generate`.
pub async fn entity_token(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let spoiler = match prelude(&shared, Endpoint::EntityToken).await {
        Prelude::Respond(response) => return response,
        Prelude::Proceed(spoiler) => spoiler,
    };
    if !is_form(&headers) {
        return bad_request(MISSING_ENTITY_CREDENTIALS, None);
    }
    let form = form_fields(&body);
    let (Some(id), Some(secret)) = (
        form.get("id").filter(|v| !v.is_empty()),
        form.get("secret").filter(|v| !v.is_empty()),
    ) else {
        return bad_request(MISSING_ENTITY_CREDENTIALS, None);
    };
    let issuer = shared.key.issuer();
    let mut world = shared.world();
    let now = world.now();
    let settings = world.settings.clone();
    let Some(entity) = world.entities.get_mut(id.as_str()) else {
        return unauthorized(BAD_ENTITY_CREDENTIALS, None);
    };
    let grace_message =
        format!("The secret for entity with ID {id} is expired and within the grace period");
    let message = if *secret == entity.secret {
        if now > entity.expires_on + GRACE_PERIOD {
            return unauthorized(BAD_ENTITY_CREDENTIALS, None);
        }
        (now > entity.expires_on).then(|| grace_message.clone())
    } else if entity
        .previous
        .as_ref()
        .is_some_and(|(old, until)| old == secret && now < *until)
    {
        Some(grace_message.clone())
    } else {
        return unauthorized(BAD_ENTITY_CREDENTIALS, None);
    };
    let lifetime = if matches!(spoiler, Some(FaultKind::ShortLived)) {
        1
    } else {
        settings.token_lifetime_secs
    };
    let subject = if matches!(spoiler, Some(FaultKind::ForeignToken)) {
        "SOMEONE-ELSE".to_string()
    } else {
        id.clone()
    };
    let iat = epoch_secs(now);
    let mut claims = json!({
        "exp": iat + lifetime,
        "iat": iat,
        "jti": new_txn_id(),
        "iss": issuer,
        "aud": "account",
        "sub": new_txn_id(),
        "typ": "Bearer",
        "azp": subject,
        "clientId": subject,
        "roles": entity.role,
        "scope": ENTITY_SCOPE,
        "acr": "1",
        "realm_access": { "roles": ["default-roles-sahamati", "offline_access", "uma_authorization"] },
        "resource_access": { "account": { "roles": ["manage-account", "manage-account-links", "view-profile"] } },
        "clientHost": "127.0.0.1",
        "clientAddress": "127.0.0.1",
        "upn": format!("service-account-{}", subject.to_lowercase()),
        "preferred_username": format!("service-account-{}", subject.to_lowercase()),
        "secret-expiry-ts": timefmt::local_datetime_nanos(local(entity.expires_on, &settings)),
    });
    if let Some(fields) = claims.as_object_mut() {
        match settings.client_id_claim {
            ClientIdClaim::CamelCase => {}
            ClientIdClaim::Snake => {
                if let Some(value) = fields.remove("clientId") {
                    fields.insert("client_id".into(), value);
                }
            }
            ClientIdClaim::AzpOnly => {
                fields.remove("clientId");
            }
        }
    }
    if let Some(FaultKind::Patch { claims: extra, .. }) = &spoiler {
        patch(&mut claims, extra);
    }
    let token = match (&spoiler, &entity.last_token) {
        (Some(FaultKind::RepeatToken), Some(previous)) => previous.clone(),
        _ => match shared.key.sign(&claims) {
            Ok(token) => token,
            Err(e) => {
                return envelope_error(StatusCode::INTERNAL_SERVER_ERROR, "Internal", &e, None);
            }
        },
    };
    if spoiler.is_none() {
        entity.last_token = Some(token.clone());
    }
    drop(world);
    shared
        .counters
        .entity_tokens_issued
        .fetch_add(1, Ordering::SeqCst);
    let mut body = token_body(json!(token), lifetime, ENTITY_SCOPE, message);
    if let Some(FaultKind::Patch { body: extra, .. }) = &spoiler {
        patch(&mut body, extra);
    }
    match spoiler {
        Some(FaultKind::TruncatedJson) => {
            let text = body.to_string();
            let cut = text
                .find("accessToken")
                .map_or(text.len() / 2, |at| at + 40);
            (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/json")],
                text[..cut.min(text.len())].to_string(),
            )
                .into_response()
        }
        Some(FaultKind::WrongTypes) => {
            let wrong = envelope(
                json!({ "accessToken": 12345, "expiresIn": "soon", "tokenType": ["Bearer"] }),
                None,
            );
            (StatusCode::OK, axum::Json(wrong)).into_response()
        }
        _ => (StatusCode::OK, axum::Json(body)).into_response(),
    }
}

/// `POST /iam/v1/user/token/generate`.
pub async fn user_token(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let spoiler = match prelude(&shared, Endpoint::UserToken).await {
        Prelude::Respond(response) => return response,
        Prelude::Proceed(spoiler) => spoiler,
    };
    if !is_form(&headers) {
        return bad_request("User Id/Password is missing in the request", None);
    }
    let form = form_fields(&body);
    let (Some(email), Some(password)) = (
        form.get("username").filter(|v| !v.is_empty()),
        form.get("password").filter(|v| !v.is_empty()),
    ) else {
        return bad_request("User Id/Password is missing in the request", None);
    };
    let issuer = shared.key.issuer();
    let mut world = shared.world();
    let now = world.now();
    let lockout = (
        world.settings.lockout_after_failures,
        Duration::from_secs(world.settings.lockout_secs),
    );
    let Some(user) = world.users.get_mut(email.as_str()) else {
        shared.counters.failed_login();
        return unauthorized("Invalid username/password or password is expired", None);
    };
    // Keycloak answers a locked-out user exactly as it answers a wrong password.
    let locked = user.locked_until.is_some_and(|until| now < until);
    if locked || user.password != *password {
        if !locked {
            user.failed_logins += 1;
            if let (Some(limit), lasts) = lockout
                && user.failed_logins >= limit
            {
                user.locked_until = Some(now + lasts);
            }
        }
        shared.counters.failed_login();
        return unauthorized("Invalid username/password or password is expired", None);
    }
    user.failed_logins = 0;
    let user = user.clone();
    let lifetime = world.settings.user_token_lifetime_secs.max(1);
    let iat = epoch_secs(now);
    let entity_meta: serde_json::Map<String, Value> = user
        .entities
        .iter()
        .map(|e| (e.clone(), json!(["entity-admin"])))
        .collect();
    let mut claims = json!({
        "exp": iat + lifetime,
        "iat": iat,
        "jti": new_txn_id(),
        "iss": issuer,
        "aud": "account",
        "sub": new_txn_id(),
        "typ": "Bearer",
        "azp": "entity-admin",
        "scope": USER_SCOPE,
        "entity_meta": entity_meta,
        "email": email,
        "name": email,
        "secret_expiry_ts": timefmt::rfc3339_nanos(now + Duration::from_secs(180 * 86_400)),
    });
    if let Some(FaultKind::Patch { claims: extra, .. }) = &spoiler {
        patch(&mut claims, extra);
    }
    let token = match shared.key.sign(&claims) {
        Ok(token) => token,
        Err(e) => return envelope_error(StatusCode::INTERNAL_SERVER_ERROR, "Internal", &e, None),
    };
    world.sessions.insert(
        token.clone(),
        UserSession {
            email: email.clone(),
            expires: now + Duration::from_secs(lifetime),
        },
    );
    drop(world);
    let mut body = token_body(json!(token), lifetime, USER_SCOPE, None);
    if let Some(FaultKind::Patch { body: extra, .. }) = &spoiler {
        patch(&mut body, extra);
    }
    (StatusCode::OK, axum::Json(body)).into_response()
}

/// `POST /iam/v1/entity/secret/read`.
pub async fn secret_read(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    secret_call(shared, headers, body, Endpoint::SecretRead).await
}

/// `POST /iam/v1/entity/secret/reset`.
pub async fn secret_reset(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    secret_call(shared, headers, body, Endpoint::SecretReset).await
}

async fn secret_call(
    shared: Arc<Shared>,
    headers: HeaderMap,
    body: Bytes,
    endpoint: Endpoint,
) -> Response {
    let spoiler = match prelude(&shared, endpoint).await {
        Prelude::Respond(response) => return response,
        Prelude::Proceed(spoiler) => spoiler,
    };
    let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let txn_id = request["txnId"].as_str().map(str::to_string);
    // The spec's clients send `Bearer <token>`; a production client sends the raw token. Accept both.
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            let v = v.trim();
            match v.get(..7) {
                Some(prefix) if prefix.eq_ignore_ascii_case("bearer ") => v[7..].trim(),
                _ => v,
            }
        })
        .unwrap_or("");
    let mut world = shared.world();
    let now = world.now();
    let Some(session) = world
        .sessions
        .get(presented)
        .filter(|s| s.expires > now)
        .cloned()
    else {
        return envelope_error(
            StatusCode::UNAUTHORIZED,
            "TKN_2001",
            "Authorization token is missing or invalid",
            txn_id,
        );
    };
    let Some(entity_id) = request["entityId"]
        .as_str()
        .filter(|s| !s.is_empty())
        .map(str::to_string)
    else {
        return bad_request("Entity Id is missing in the request", txn_id);
    };
    let administers = world
        .users
        .get(&session.email)
        .is_some_and(|u| u.entities.contains(&entity_id));
    let settings = world.settings.clone();
    let Some(entity) = world.entities.get_mut(&entity_id).filter(|_| administers) else {
        return unauthorized("Invalid entity id", txn_id);
    };
    let mut message = None;
    if endpoint == Endpoint::SecretReset {
        let requested = request["secretExpiryDays"].as_u64();
        let days = match requested {
            Some(days) if (1..=u64::from(MAX_SECRET_DAYS)).contains(&days) => days,
            _ => {
                message = Some(
                    "The expiry is set to 180 days by default, as the user didn't specify or exceeded the default limit."
                        .to_string(),
                );
                u64::from(MAX_SECRET_DAYS)
            }
        };
        let mut validity = Duration::from_secs(days * 86_400);
        if settings.cap_secret_by_user_token {
            validity = validity.min(
                session
                    .expires
                    .duration_since(now)
                    .unwrap_or(Duration::ZERO),
            );
        }
        let old = std::mem::replace(&mut entity.secret, random_secret(32));
        entity.previous = match settings.reset_mode {
            ResetMode::RevokeImmediately => None,
            ResetMode::GracePeriod => Some((old, now + GRACE_PERIOD)),
        };
        entity.expires_on = now + validity;
    }
    let mut body = envelope(
        json!({
            "entityId": entity_id,
            "secret": entity.secret,
            "expiresOn": expires_on(entity.expires_on, &settings),
            "expirationDate": timefmt::local_datetime_millis(local(entity.expires_on, &settings)),
        }),
        txn_id,
    );
    if let Some(message) = message {
        body["message"] = json!(message);
    }
    if let Some(FaultKind::Patch { body: extra, .. }) = &spoiler {
        patch(&mut body, extra);
    }
    drop(world);
    (StatusCode::OK, axum::Json(body)).into_response()
}
