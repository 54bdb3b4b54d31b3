//! The broker application: built from validated settings on an already-bound listener, run until a
//! shutdown future completes. `main` binds and waits for signals; tests bind `127.0.0.1:0` and call the
//! same code.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::budget::{self, ByteBudget};
use crate::config::BrokerSettings;
use crate::config::fi::FiSettings;
use crate::config::jws::JwsSettings;
use crate::crypto_pool::CryptoPool;
use crate::entity::EntityId;
use crate::http::body::BodyLimits;
use crate::http::server::ServerLimits;
use crate::http::{self, AppState};
use crate::iam::IamClient;
use crate::iam::client::ClientBuildError;
use crate::inbound::{InboundError, Verifier, VerifyRecorder};
use crate::metrics::Metrics;
use crate::secret::manager::SecretManager;
use crate::secret::sink::SinkSetupError;
use crate::secret::{AdminSession, Rotator, SecretCell, SecretRecorder, SecretSink};
use crate::supervise::supervise;
use crate::token::broker::Broker;
use crate::token::policy::RefreshPolicy;
use crate::token::recorder::TokenRecorder;

/// Why the application could not be built from valid settings.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Client(#[from] ClientBuildError),
    #[error("entity {0} has no secret sink")]
    NoSink(EntityId),
    #[error(transparent)]
    Sink(#[from] SinkSetupError),
    #[error(transparent)]
    Verify(#[from] InboundError),
}

/// A broker ready to run.
pub struct Application {
    listener: TcpListener,
    admin_listener: Option<TcpListener>,
    settings: BrokerSettings,
    broker: Broker,
    metrics: Arc<Metrics>,
    secret_managers: Vec<SecretManager>,
    verifier: Arc<Verifier>,
    verify_listener: Option<TcpListener>,
    /// Signing keys, the CR and the body cap; verification only, with the CR beside the IAM, when unset.
    jws: Option<JwsSettings>,
    /// FI encryption's KEKs and body cap; the FI routes answer `404 fi_disabled` when unset.
    fi: Option<FiSettings>,
}

impl Application {
    /// Builds the IAM client and the broker. Nothing runs until [`Application::run_until`].
    pub fn build(
        settings: BrokerSettings,
        listener: TcpListener,
        policy: RefreshPolicy,
    ) -> Result<Self, BuildError> {
        let iam = IamClient::new(&settings.iam_url, settings.iam_timeouts)?;
        let metrics = Arc::new(Metrics::new());
        let ids: Vec<EntityId> = settings.entities.iter().map(|e| e.id.clone()).collect();
        metrics.known_entities(&ids);
        // Each entity's secret lives in a cell the secret module owns; the token path reads it there.
        let cells: Vec<(EntityId, Arc<SecretCell>)> = settings
            .entities
            .iter()
            .map(|e| (e.id.clone(), SecretCell::new(e.secret.clone())))
            .collect();
        let verifier = Arc::new(Verifier::new(
            &settings.verify,
            Arc::clone(&metrics) as Arc<dyn VerifyRecorder>,
        )?);
        let key_sets = verifier.status().key_sets;
        metrics.known_key_sets(key_sets.iter().map(|k| k.url.as_str()));
        let broker = Broker::new(
            cells.clone(),
            iam.clone(),
            policy,
            Arc::clone(&metrics) as Arc<dyn TokenRecorder>,
        );
        let mut secret_managers = Vec::new();
        if let Some(rotation) = &settings.rotation {
            let recorder = Arc::clone(&metrics) as Arc<dyn SecretRecorder>;
            let admin = AdminSession::new(iam, rotation.admin.clone(), Arc::clone(&recorder));
            let rotator = Arc::new(Rotator::new(
                admin,
                rotation.expiry_days,
                rotation.reset_bound(),
            ));
            for (entity, (id, cell)) in settings.entities.iter().zip(&cells) {
                let spec = entity
                    .sink
                    .clone()
                    .ok_or_else(|| BuildError::NoSink(id.clone()))?;
                let sink = SecretSink::new(spec, rotation.kube.as_ref())?;
                secret_managers.push(SecretManager::new(
                    id.clone(),
                    Arc::clone(cell),
                    Arc::clone(&recorder),
                    Arc::clone(&rotator),
                    sink,
                    rotation,
                ));
            }
        }
        Ok(Self {
            listener,
            admin_listener: None,
            settings,
            broker,
            metrics,
            secret_managers,
            verifier,
            verify_listener: None,
            jws: None,
            fi: None,
        })
    }

    /// Signs with these keys and reads peers' keys from this CR (`/v1/sign`, `/v1/verify-signature`,
    /// `/v1/authorize`).
    pub fn with_jws(mut self, jws: JwsSettings) -> Self {
        self.jws = Some(jws);
        self
    }

    /// Encrypts and decrypts FI data with these KEKs (`/v1/fi/*`, `/ecc/v1/*`).
    pub fn with_fi(mut self, fi: FiSettings) -> Self {
        self.fi = Some(fi);
        self
    }

    /// Also serves `/v1/verify` (and nothing else) on `listener`.
    pub fn with_verify_listener(mut self, listener: TcpListener) -> Self {
        self.verify_listener = Some(listener);
        self
    }

    pub fn verify_addr(&self) -> Option<SocketAddr> {
        self.verify_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
    }

    /// The verifier of incoming tokens.
    pub fn verifier(&self) -> &Arc<Verifier> {
        &self.verifier
    }

    /// Also serves the admin surface (`/healthz`, `/readyz`, `/metrics`, no tokens) on `listener`.
    pub fn with_admin_listener(mut self, listener: TcpListener) -> Self {
        self.admin_listener = Some(listener);
        self
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
    }

    pub fn broker(&self) -> &Broker {
        &self.broker
    }

    /// Starts the refreshers (each fetches at once) and serves until `shutdown` completes; then stops
    /// accepting, lets requests in flight finish (up to the grace period) and stops the refreshers.
    pub async fn run_until(self, shutdown: impl Future<Output = ()>) {
        let Application {
            listener,
            admin_listener,
            settings,
            broker,
            metrics,
            secret_managers,
            verifier,
            verify_listener,
            jws,
            fi,
        } = self;
        // One body budget and one crypto pool for every listener.
        let limits = BodyLimits {
            budget: ByteBudget::new(settings.inbound.max_buffered_bytes, budget::DEFAULT_WAIT),
            timeout: settings.inbound.body_timeout,
        };
        let pool = match CryptoPool::new(
            settings.inbound.crypto_threads,
            settings.inbound.crypto_queue,
        ) {
            Ok(pool) => Arc::new(pool),
            Err(e) => {
                tracing::error!(error = %e, "cannot start the crypto pool's threads");
                return;
            }
        };
        metrics.observe_limits(limits.budget.clone(), Arc::clone(&pool));
        verifier.run_crypto_on(Arc::clone(&pool));
        let jws = jws_state(
            jws.unwrap_or_else(|| JwsSettings::for_iam_url(&settings.iam_url)),
            &settings,
            &broker,
            &verifier,
            &metrics,
            &limits,
            &pool,
        );
        let fi = fi_state(fi.unwrap_or_default(), &metrics, &limits, &pool);
        log_start(&settings, listener.local_addr().ok());
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut key_tasks = verifier.spawn_key_tasks(&stop_rx);
        // The verify listener stops with the others: `shutdown` is relayed to it.
        let (verify_down_tx, mut verify_down_rx) = watch::channel(false);
        let shutdown = async move {
            shutdown.await;
            let _ = verify_down_tx.send(true);
        };
        let verify_server = verify_listener.map(|listener| {
            tracing::info!(verify_listen = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(), routes = http::VERIFY_LISTEN_ROUTES, "serving the verification routes (and nothing else)");
            tokio::spawn(http::server::serve(
                listener,
                http::verify_frontend(Arc::clone(&verifier), jws.clone(), limits.clone()),
                settings.limits.clone(),
                async move {
                    let _ = verify_down_rx.wait_for(|down| *down).await;
                },
            ))
        });
        // Managers subscribe before the refreshers' first fetch, so no event is missed.
        let mut managers = tokio::task::JoinSet::new();
        for manager in secret_managers {
            let task_stop = stop_rx.clone();
            // A restarted manager subscribes afresh; its state is re-read from the IAM.
            let entity = manager.entity().to_string();
            managers.spawn(supervise(
                "secret manager",
                entity,
                stop_rx.clone(),
                move || {
                    let manager = manager.clone();
                    let events = manager.cell().subscribe();
                    manager.run(events, task_stop.clone())
                },
            ));
        }
        let mut refreshers = broker.spawn_refreshers(stop_rx);
        let state = Arc::new(AppState {
            broker,
            guard: settings.guard.clone(),
            metrics,
            verifier: Some(verifier),
            jws,
            limits,
            fi: Some(fi),
        });
        let frontend = http::frontend(Arc::clone(&state));
        match admin_listener {
            None => {
                http::server::serve(listener, frontend, settings.limits.clone(), shutdown).await
            }
            Some(admin_listener) => {
                tracing::info!(admin_listen = %admin_listener.local_addr().map(|a| a.to_string()).unwrap_or_default(), "serving /healthz, /readyz and /metrics");
                let (down_tx, down_rx) = watch::channel(false);
                let stopped = |mut rx: watch::Receiver<bool>| async move {
                    let _ = rx.wait_for(|down| *down).await;
                };
                let admin_limits = ServerLimits {
                    max_connections: 64,
                    ..settings.limits.clone()
                };
                tokio::join!(
                    async {
                        shutdown.await;
                        let _ = down_tx.send(true);
                    },
                    http::server::serve(
                        listener,
                        frontend,
                        settings.limits.clone(),
                        stopped(down_rx.clone())
                    ),
                    http::server::serve(
                        admin_listener,
                        http::admin_frontend(state),
                        admin_limits,
                        stopped(down_rx)
                    ),
                );
            }
        }
        if let Some(server) = verify_server {
            let _ = server.await;
        }
        let _ = stop_tx.send(true);
        while key_tasks.join_next().await.is_some() {}
        while refreshers.join_next().await.is_some() {}
        while managers.join_next().await.is_some() {}
        tracing::info!("stopped");
    }
}

/// The state of the signature routes: the CR client calls with the first entity's token.
fn jws_state(
    jws: JwsSettings,
    settings: &BrokerSettings,
    broker: &Broker,
    verifier: &Arc<Verifier>,
    metrics: &Arc<Metrics>,
    limits: &BodyLimits,
    pool: &Arc<CryptoPool>,
) -> Option<Arc<http::jws::JwsState>> {
    let caller = settings.entities.first()?.id.clone();
    let caller_for_state = caller.clone();
    let registry = match crate::registry::Registry::new(
        &jws.cr_url,
        broker.clone(),
        caller,
        jws.policy.clone(),
        settings.iam_timeouts,
        Arc::clone(metrics) as Arc<dyn crate::registry::RegistryRecorder>,
    ) {
        Ok(registry) => Arc::new(registry),
        Err(e) => {
            tracing::error!(error = %e, "cannot build the Central Registry client; signature routes are off");
            return None;
        }
    };
    tracing::info!(cr = %jws.cr_url, max_body_bytes = jws.max_body_bytes, "signature verification reads peers' keys from the Central Registry");
    metrics.observe_signers(jws.signers.clone());
    for (entity, file) in &jws.signers {
        // The kid and the file, never the key.
        let kid = file.key().map(|k| k.kid().to_string()).unwrap_or_default();
        tracing::info!(entity = %entity, kid, path = %file.path().display(), "signing key configured");
        // The key was first read while the configuration was validated, before logging was set up.
        if let Some(warning) = file.permission_warning() {
            tracing::warn!(entity = %entity, path = %file.path().display(), "signing key: {warning}");
        }
    }
    Some(Arc::new(http::jws::JwsState {
        signers: jws.signers,
        registry,
        verifier: Arc::clone(verifier),
        metrics: Arc::clone(metrics),
        max_body_bytes: jws.max_body_bytes,
        limits: limits.clone(),
        pool: Arc::clone(pool),
        broker: broker.clone(),
        own: caller_for_state,
        authorize_roles: jws.authorize_roles,
        envelope: jws.envelope,
        path_prefix: jws.path_prefix,
    }))
}

/// The FI routes' state; logs each KEK by path and id, never the key.
fn fi_state(
    fi: FiSettings,
    metrics: &Arc<Metrics>,
    limits: &BodyLimits,
    pool: &Arc<CryptoPool>,
) -> Arc<http::fi::FiState> {
    let service = crate::fi::wire::Fi::new(fi.keks);
    for (entity, status) in service.status() {
        tracing::info!(entity = %entity, kek_id = %status.kek_id, previous_keys = status.previous_keys, "FI encryption is on (/v1/fi/*, /ecc/v1/*)");
    }
    for (entity, file) in service.keks() {
        if let Some(warning) = file.permission_warning() {
            tracing::warn!(entity = %entity, path = %file.path().display(), "FI key-encryption key: {warning}");
        }
    }
    Arc::new(http::fi::FiState {
        fi: Arc::new(service),
        metrics: Arc::clone(metrics),
        limits: limits.clone(),
        pool: Arc::clone(pool),
        max_body_bytes: fi.max_body_bytes,
    })
}

fn log_start(settings: &BrokerSettings, addr: Option<SocketAddr>) {
    let ids: Vec<&str> = settings.entities.iter().map(|e| e.id.as_str()).collect();
    tracing::info!(
        listen = %addr.map_or_else(|| settings.listen.to_string(), |a| a.to_string()),
        iam = %settings.iam_url,
        entities = %ids.join(","),
        version = env!("CARGO_PKG_VERSION"),
        "aa-token-broker serving"
    );
    if settings.iam_url.starts_with("http:")
        && !reqwest::Url::parse(&settings.iam_url)
            .is_ok_and(|u| crate::upstream::http::is_loopback_url(&u))
    {
        tracing::warn!(iam = %settings.iam_url, "plain http to a non-loopback IAM (--allow-plain-http): the entity secret crosses the network without TLS");
    }
    for entity in &settings.entities {
        tracing::info!(entity = %entity.id, secret = %entity.secret.describe(), "entity configured");
        if let Some(warning) = entity.secret.permission_warning() {
            tracing::warn!(entity = %entity.id, "{warning}");
        }
    }
    if let Some(warning) = settings
        .rotation
        .as_ref()
        .and_then(|r| r.admin.password.permission_warning())
    {
        tracing::warn!("admin password: {warning}");
    }
    match &settings.rotation {
        Some(rotation) => tracing::info!(
            admin = %rotation.admin.email,
            rotate_before_days = rotation.rotate_before.as_secs_f64() / 86_400.0,
            expiry_days = rotation.expiry_days,
            "automatic secret rotation is on"
        ),
        None => tracing::info!("automatic secret rotation is off (no admin credentials)"),
    }
    if !settings.guard.require_metadata_header {
        tracing::warn!(
            "the `Metadata: true` header requirement is OFF: any local process that can be tricked into a GET (SSRF) can obtain tokens"
        );
    }
    if let Some(addr) = addr.filter(|a| !a.ip().is_loopback()) {
        tracing::warn!(%addr, "listening on a non-loopback address: tokens are reachable from outside this host or pod, guarded only by the Host and Metadata checks");
    }
}
