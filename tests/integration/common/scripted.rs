//! A scripted IAM for tests on a paused clock: it answers the entity-token call over loopback like the
//! real one, but its wall clock is the runtime's (tokio) clock, so a test can let minutes of token life pass
//! in milliseconds and still check every token's JWT `exp` against the time the broker served it. The
//! test sets what it answers (tokens, or an HTTP status) and how long it takes; it counts the calls.
//!
//! Everything here runs on the test's runtime: with `start_paused`, the clock moves only when every task
//! waits on a timer, and the loopback calls between the broker and this IAM complete without one.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::time::Instant;

/// A wall clock that advances with the runtime's clock (paused or not).
#[derive(Clone, Copy)]
pub struct Clock {
    wall: f64,
    at: Instant,
}

impl Clock {
    pub fn new() -> Self {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        Self {
            wall,
            at: Instant::now(),
        }
    }

    /// Seconds since the Unix epoch, on this clock.
    pub fn now_secs(&self) -> f64 {
        self.wall + (Instant::now() - self.at).as_secs_f64()
    }
}

/// What the IAM answers next.
#[derive(Clone, Copy, Debug)]
pub enum Script {
    /// A token of this lifetime.
    Tokens { lifetime_secs: u64 },
    /// This HTTP status, with an error body.
    Status(u16),
}

struct Shared {
    entity: String,
    clock: Clock,
    script: Mutex<(Script, Duration)>,
    calls: AtomicU64,
    minted: AtomicU64,
}

/// A scripted IAM on a loopback port.
pub struct ScriptedIam {
    pub url: String,
    pub clock: Clock,
    shared: Arc<Shared>,
}

impl ScriptedIam {
    /// An IAM for `entity` that mints tokens of `lifetime_secs`, at once.
    pub async fn start(entity: &str, lifetime_secs: u64) -> ScriptedIam {
        let clock = Clock::new();
        let shared = Arc::new(Shared {
            entity: entity.to_string(),
            clock,
            script: Mutex::new((Script::Tokens { lifetime_secs }, Duration::ZERO)),
            calls: AtomicU64::new(0),
            minted: AtomicU64::new(0),
        });
        let router = Router::new()
            .route("/iam/v1/entity/token/generate", post(entity_token))
            .with_state(Arc::clone(&shared));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        ScriptedIam {
            url: format!("http://{addr}/iam"),
            clock,
            shared,
        }
    }

    /// Answers from now on as `script` says.
    pub fn answer(&self, script: Script) {
        self.shared.script.lock().unwrap().0 = script;
    }

    /// Takes `latency` before each answer from now on.
    pub fn set_latency(&self, latency: Duration) {
        self.shared.script.lock().unwrap().1 = latency;
    }

    /// Entity-token calls so far, answered or not.
    pub fn token_calls(&self) -> u64 {
        self.shared.calls.load(Ordering::SeqCst)
    }
}

async fn entity_token(State(shared): State<Arc<Shared>>) -> Response {
    shared.calls.fetch_add(1, Ordering::SeqCst);
    let (script, latency) = *shared.script.lock().unwrap();
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    match script {
        Script::Status(status) => (
            StatusCode::from_u16(status).unwrap(),
            axum::Json(json!({"errorCode": "Unavailable", "errorMsg": "scripted"})),
        )
            .into_response(),
        Script::Tokens { lifetime_secs } => {
            let n = shared.minted.fetch_add(1, Ordering::SeqCst);
            // Whole seconds, as the IAM's are; the clock is read after the latency, as the IAM would.
            let iat = shared.clock.now_secs().floor() as u64;
            let claims = json!({
                "iat": iat, "exp": iat + lifetime_secs, "azp": shared.entity,
                "clientId": shared.entity, "jti": format!("scripted-{n}"), "typ": "Bearer",
            });
            let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256","typ":"JWT"}"#);
            let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
            // Not checked by the broker on its own token; a token68 string like any signature.
            let token = format!("{header}.{payload}.c2NyaXB0ZWQ");
            axum::Json(json!({
                "accessToken": token, "expiresIn": lifetime_secs, "tokenType": "Bearer",
            }))
            .into_response()
        }
    }
}
