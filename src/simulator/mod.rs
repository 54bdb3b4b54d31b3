//! A faithful stand-in for the Sahamati IAM, for tests, benchmarks, the demo and local development.
//!
//! It serves the four endpoints of the spec under `/iam/v1/…` (so its IAM base is `http://HOST:PORT/iam`)
//! with the spec's bodies, envelope and error texts; issues real RS256 JWTs with the documented claims and
//! publishes the JWKS at `/auth/realms/sahamati/protocol/openid-connect/certs`; models secret expiry, the
//! 5-day grace period and its warning, and both readings of reset semantics. The realm (`realm` module)
//! rotates its signing key on request, takes its issuer from a setting or the listen address, and serves
//! the OpenID discovery document.
//!
//! Tests drive it through the [`Simulator`] handle (or the same operations over HTTP under `/_simulator/`,
//! see the `control` module): entities, users, token lifetime, latency, a shifted clock, injected faults (status
//! codes, delays, hung requests, malformed bodies) and call counters. The `registry` module serves the
//! Central Registry's entity-info API (`/cr/v2/entityInfo/…`) with peers that hold real key pairs. The
//! `sites` module gives each site of a multi-site deployment its own door to the one world
//! ([`Simulator::spawn_site`]): calls and resets counted per site, and a site that can be cut off. The
//! `faults` module turns a queued fault into the answer that replaces or spoils the IAM's, and `envelope`
//! wraps every IAM answer, the routes', the faults' and the site doors' alike.
//!
//! It is compiled only with the cargo feature `simulator` (on by default): its keys are fixed and public,
//! so the image, built without the feature, carries neither the simulator nor its keys.

mod control;
mod envelope;
mod faults;
mod iam_routes;
pub mod jwt;
pub mod realm;
mod registry;
pub use registry::CertificateForm;
pub mod sites;
pub mod state;

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::routing::{get, post};
use tokio::net::TcpListener;

use crate::iam::Endpoint;
use state::{Counters, SimEntity, SimUser, World};
pub use state::{EpochUnit, Fault, FaultKind, LocalZone, ResetMode, SimSettings};

/// A running (or runnable) simulator. Cheap to clone; clones share one world.
#[derive(Clone)]
pub struct Simulator {
    shared: Arc<Shared>,
}

pub(crate) struct Shared {
    world: Mutex<World>,
    /// The realm: its signing keys, issuer and published key set.
    key: realm::Realm,
    counters: Counters,
    /// The Central Registry: entities, their keys, its faults (`registry` module).
    cr: registry::CrState,
    /// What each site did through its own door (`sites` module).
    sites: Mutex<HashMap<String, sites::SiteState>>,
}

impl Shared {
    pub(crate) fn world(&self) -> MutexGuard<'_, World> {
        self.world
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn sites(&self) -> MutexGuard<'_, HashMap<String, sites::SiteState>> {
        self.sites
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Simulator {
    pub fn new(settings: SimSettings) -> Result<Self, String> {
        let world = World {
            settings,
            ..World::default()
        };
        Ok(Self {
            shared: Arc::new(Shared {
                world: Mutex::new(world),
                key: realm::Realm::new()?,
                counters: Counters::default(),
                cr: registry::CrState::default(),
                sites: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// The router: IAM endpoints, JWKS and the control API.
    pub fn router(&self) -> Router {
        Router::new()
            .route(
                "/iam/v1/entity/token/generate",
                post(iam_routes::entity_token),
            )
            .route("/iam/v1/user/token/generate", post(iam_routes::user_token))
            .route("/iam/v1/entity/secret/read", post(iam_routes::secret_read))
            .route(
                "/iam/v1/entity/secret/reset",
                post(iam_routes::secret_reset),
            )
            .route(
                "/auth/realms/sahamati/protocol/openid-connect/certs",
                get(realm::jwks),
            )
            .route(realm::DISCOVERY_PATH, get(realm::discovery))
            .merge(control::router())
            .merge(realm::router())
            .merge(registry::router())
            .layer(axum::middleware::from_fn_with_state(
                Arc::clone(&self.shared),
                registry::count_requests,
            ))
            .with_state(Arc::clone(&self.shared))
    }

    /// Serves on `listener` until `shutdown` completes.
    pub async fn serve(
        &self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        self.shared.key.set_listen_addr(listener.local_addr()?);
        axum::serve(listener, self.router())
            .with_graceful_shutdown(shutdown)
            .await
    }

    /// Binds `127.0.0.1:0`, serves in the background, and returns the IAM base URL (`http://…/iam`).
    pub async fn spawn_local(&self) -> std::io::Result<String> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        self.shared.key.set_listen_addr(addr);
        let router = self.router();
        tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Ok(format!("http://{addr}/iam"))
    }

    /// Serves the same world on another loopback port as `site`'s door, in the background, and returns
    /// that door's IAM base URL. Requests through it are counted for the site, successful resets too, and
    /// [`Simulator::cut_off_site`] makes it answer 503.
    pub async fn spawn_site(&self, site: &str) -> std::io::Result<String> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        self.shared.sites().entry(site.to_string()).or_default();
        let router = self.router().layer(axum::middleware::from_fn_with_state(
            (Arc::clone(&self.shared), Arc::<str>::from(site)),
            sites::door,
        ));
        tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Ok(format!("http://{addr}/iam"))
    }

    /// Successful secret resets made through `site`'s door.
    pub fn site_resets(&self, site: &str) -> u64 {
        self.shared.sites().get(site).map_or(0, |s| s.resets)
    }

    /// Requests to `endpoint` through `site`'s door.
    pub fn site_calls(&self, site: &str, endpoint: Endpoint) -> u64 {
        self.shared
            .sites()
            .get(site)
            .and_then(|s| s.calls.get(&endpoint).copied())
            .unwrap_or(0)
    }

    /// Cuts `site` off the IAM (every request through its door gets 503), or lets it through again.
    pub fn cut_off_site(&self, site: &str, cut_off: bool) {
        self.shared
            .sites()
            .entry(site.to_string())
            .or_default()
            .cut_off = cut_off;
    }

    /// Adds (or replaces) an entity whose secret expires `valid_for` from the simulator's now.
    pub fn add_entity(&self, id: &str, secret: &str, valid_for: Duration) {
        let mut world = self.shared.world();
        let expires_on = world.now() + valid_for;
        world.entities.insert(
            id.to_string(),
            SimEntity {
                secret: secret.to_string(),
                expires_on,
                role: if id.starts_with("AA") {
                    "AA"
                } else if id.starts_with("FIP") {
                    "FIP"
                } else {
                    "FIU"
                }
                .to_string(),
                previous: None,
                last_token: None,
            },
        );
    }

    /// Sets an entity's secret expiry relative to the simulator's now (negative: already expired).
    pub fn set_secret_expiry(&self, id: &str, from_now_secs: i64) {
        let mut world = self.shared.world();
        let now = world.now();
        if let Some(entity) = world.entities.get_mut(id) {
            let offset = Duration::from_secs(from_now_secs.unsigned_abs());
            entity.expires_on = if from_now_secs >= 0 {
                now + offset
            } else {
                now - offset
            };
        }
    }

    /// Replaces an entity's secret (as an out-of-band reset would).
    pub fn set_secret(&self, id: &str, secret: &str) {
        if let Some(entity) = self.shared.world().entities.get_mut(id) {
            entity.secret = secret.to_string();
            entity.previous = None;
        }
    }

    /// The entity's current secret (test helper).
    pub fn current_secret(&self, id: &str) -> Option<String> {
        self.shared
            .world()
            .entities
            .get(id)
            .map(|e| e.secret.clone())
    }

    /// The entity's secret expiry.
    pub fn secret_expires_on(&self, id: &str) -> Option<SystemTime> {
        self.shared.world().entities.get(id).map(|e| e.expires_on)
    }

    /// Adds an admin user who administers `entities`.
    pub fn add_user(&self, email: &str, password: &str, entities: &[&str]) {
        self.shared.world().users.insert(
            email.to_string(),
            SimUser {
                password: password.to_string(),
                entities: entities.iter().map(|e| e.to_string()).collect(),
                failed_logins: 0,
                locked_until: None,
            },
        );
    }

    pub fn settings(&self) -> SimSettings {
        self.shared.world().settings.clone()
    }

    pub fn update_settings(&self, change: impl FnOnce(&mut SimSettings)) {
        change(&mut self.shared.world().settings);
    }

    pub fn set_token_lifetime(&self, lifetime: Duration) {
        self.update_settings(|s| s.token_lifetime_secs = lifetime.as_secs().max(1));
    }

    pub fn set_latency(&self, latency: Duration) {
        self.update_settings(|s| {
            s.latency_ms = u64::try_from(latency.as_millis()).unwrap_or(u64::MAX)
        });
    }

    /// Queues a fault.
    pub fn inject(&self, fault: Fault) {
        self.shared.world().faults.push_back(fault);
    }

    /// Queues a fault for the entity token endpoint that fires `times` times (until cleared if `None`).
    pub fn inject_token_fault(&self, kind: FaultKind, times: Option<u32>) {
        self.inject(Fault {
            endpoint: Some(Endpoint::EntityToken),
            kind,
            times,
        });
    }

    pub fn clear_faults(&self) {
        self.shared.world().faults.clear();
    }

    /// Requests received by an endpoint, faults included.
    pub fn calls(&self, endpoint: Endpoint) -> u64 {
        self.shared.counters.calls(endpoint)
    }

    /// Logins refused (wrong password, or the user locked out).
    pub fn failed_logins(&self) -> u64 {
        self.shared
            .counters
            .failed_logins
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Whether Keycloak-style brute-force protection has locked the user out now.
    pub fn user_locked(&self, email: &str) -> bool {
        let world = self.shared.world();
        let now = world.now();
        world
            .users
            .get(email)
            .and_then(|u| u.locked_until)
            .is_some_and(|until| now < until)
    }

    /// Changes a user's password (as an operator would after it expired).
    pub fn set_password(&self, email: &str, password: &str) {
        if let Some(user) = self.shared.world().users.get_mut(email) {
            user.password = password.to_string();
        }
    }

    /// Queues a fault for `endpoint` that fires `times` times (until cleared if `None`).
    pub fn inject_fault(&self, endpoint: Endpoint, kind: FaultKind, times: Option<u32>) {
        self.inject(Fault {
            endpoint: Some(endpoint),
            kind,
            times,
        });
    }

    /// Entity tokens issued successfully.
    pub fn entity_tokens_issued(&self) -> u64 {
        self.shared
            .counters
            .entity_tokens_issued
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The JWKS the simulator publishes.
    pub fn jwks(&self) -> serde_json::Value {
        self.shared.key.jwks()
    }
}
