//! Test helpers: a simulator on a loopback port, a broker on another, and request helpers, so that each
//! test reads as a short story about what a user would see.

pub mod kube;
pub mod process;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aa_token_broker::app::Application;
use aa_token_broker::config::{BrokerSettings, EntitySettings, InboundLimits, LogSettings};
use aa_token_broker::entity::{EntityId, SecretSource};
use aa_token_broker::http::GuardSettings;
use aa_token_broker::http::server::ServerLimits;
use aa_token_broker::iam::{Endpoint, IamTimeouts};
use aa_token_broker::secret::{RotationSettings, SinkSpec};
use aa_token_broker::simulator::{SimSettings, Simulator};
use aa_token_broker::token::policy::RefreshPolicy;
use secrecy::SecretString;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub const ENTITY: &str = "FIU-TEST";
pub const SECRET: &str = "s3cr3t-value-that-must-never-be-logged";

/// A simulator serving on a loopback port.
pub struct Iam {
    pub sim: Simulator,
    pub url: String,
}

impl Iam {
    pub async fn start(token_lifetime_secs: u64) -> Iam {
        let sim = Simulator::new(SimSettings {
            token_lifetime_secs,
            ..SimSettings::default()
        })
        .expect("simulator");
        sim.add_entity(ENTITY, SECRET, Duration::from_secs(90 * 86_400));
        let url = sim.spawn_local().await.expect("simulator listens");
        Iam { sim, url }
    }

    pub fn token_calls(&self) -> u64 {
        self.sim.calls(Endpoint::EntityToken)
    }
}

/// A broker serving on a loopback port, stopped on drop of its shutdown sender.
pub struct TestBroker {
    pub addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<()>>,
    http: reqwest::Client,
}

pub struct BrokerOptions {
    pub entities: Vec<(String, SecretSource)>,
    pub guard: GuardSettings,
    pub policy: RefreshPolicy,
    pub iam_timeouts: IamTimeouts,
    /// Automatic rotation; off unless a test turns it on.
    pub rotation: Option<RotationSettings>,
    /// The sink of the first entity (default: its secret file, if it has one).
    pub sink: Option<SinkSpec>,
    /// Connection limits of the token listener.
    pub limits: ServerLimits,
    /// The body budget, the body deadline and the crypto pool.
    pub inbound: InboundLimits,
}

impl BrokerOptions {
    pub fn one(secret: SecretSource) -> Self {
        Self {
            entities: vec![(ENTITY.to_string(), secret)],
            guard: GuardSettings::default(),
            policy: RefreshPolicy::default(),
            iam_timeouts: IamTimeouts {
                connect: Duration::from_secs(2),
                request: Duration::from_secs(3),
            },
            rotation: None,
            sink: None,
            limits: ServerLimits {
                max_connections: 4096,
                ..ServerLimits::default()
            },
            inbound: InboundLimits::defaults(2),
        }
    }

    pub fn inline() -> Self {
        Self::one(inline_secret(SECRET))
    }
}

pub fn inline_secret(secret: &str) -> SecretSource {
    SecretSource::Inline(Arc::new(SecretString::from(secret.to_string())))
}

pub fn settings(iam_url: &str, options: BrokerOptions) -> BrokerSettings {
    let mut first_sink = options.sink;
    BrokerSettings {
        iam_url: iam_url.to_string(),
        iam_timeouts: options.iam_timeouts,
        entities: options
            .entities
            .into_iter()
            .map(|(id, secret)| {
                let sink = first_sink.take().or(match &secret {
                    SecretSource::File(path) => Some(SinkSpec::File(path.clone())),
                    SecretSource::Inline(_) => None,
                });
                EntitySettings {
                    id: EntityId::parse(&id).expect("valid id"),
                    secret,
                    sink,
                }
            })
            .collect(),
        listen: "127.0.0.1:0".parse().unwrap(),
        admin_listen: None,
        guard: options.guard,
        limits: options.limits,
        inbound: options.inbound,
        worker_threads: 2,
        log: LogSettings {
            json: false,
            filter: "info".into(),
        },
        rotation: options.rotation,
        verify: aa_token_broker::inbound::VerifySettings::for_iam_url(iam_url),
        verify_listen: None,
    }
}

pub fn http_client() -> reqwest::Client {
    aa_token_broker::install_crypto_provider();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .pool_max_idle_per_host(2048)
        .build()
        .expect("client")
}

impl TestBroker {
    pub async fn start(iam_url: &str, options: BrokerOptions) -> TestBroker {
        let policy = options.policy.clone();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let app = Application::build(settings(iam_url, options), listener, policy)
            .expect("broker builds");
        Self::spawn(app)
    }

    /// Runs an application built by the test (with settings `start` does not cover).
    pub fn spawn(app: Application) -> TestBroker {
        let addr = app.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(app.run_until(async {
            let _ = rx.await;
        }));
        TestBroker {
            addr,
            shutdown: Some(tx),
            handle: Some(handle),
            http: http_client(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// `GET` with `Metadata: true`.
    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.http
            .get(self.url(path))
            .guarded()
            .send()
            .await
            .expect("broker answers")
    }

    /// `POST` with `Metadata: true`.
    pub async fn post(&self, path: &str) -> reqwest::Response {
        self.http
            .post(self.url(path))
            .guarded()
            .send()
            .await
            .expect("broker answers")
    }

    pub fn client(&self) -> &reqwest::Client {
        &self.http
    }

    /// The token from `GET /v1/token`, asserting a 200.
    pub async fn token(&self) -> String {
        let response = self.get("/v1/token").await;
        assert_eq!(response.status(), 200);
        let body: serde_json::Value = response.json().await.unwrap();
        body["accessToken"].as_str().unwrap().to_string()
    }

    /// `GET /readyz`: the status and the JSON detail.
    pub async fn readyz(&self) -> (u16, serde_json::Value) {
        let response = self.http.get(self.url("/readyz")).send().await.unwrap();
        (response.status().as_u16(), response.json().await.unwrap())
    }

    /// Waits until `/readyz` says 200 (or panics after `within`).
    pub async fn wait_ready(&self, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if self.readyz().await.0 == 200 {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "broker not ready within {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn metrics(&self) -> String {
        self.http
            .get(self.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(handle) = self.handle.take() {
            tokio::time::timeout(Duration::from_secs(15), handle)
                .await
                .expect("broker stops")
                .unwrap();
        }
    }
}

/// The JWT's claims, unverified (tests check signatures separately where it matters).
pub fn claims(token: &str) -> serde_json::Value {
    use base64::Engine;
    let payload = token.split('.').nth(1).expect("JWT has a payload");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

pub fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// Writes a secret file with mode 0600.
pub fn write_secret(path: &Path, secret: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, format!("{secret}\n")).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// Lays out a secret the way a Kubernetes Secret volume does: `secret -> ..data/secret`,
/// `..data -> ..<version>`, and returns the path to `secret`.
pub fn kubernetes_volume(dir: &Path, version: &str, secret: &str) -> PathBuf {
    let versioned = dir.join(format!("..{version}"));
    std::fs::create_dir_all(&versioned).unwrap();
    write_secret(&versioned.join("secret"), secret);
    let data = dir.join("..data");
    let staging = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&staging);
    std::os::unix::fs::symlink(format!("..{version}"), &staging).unwrap();
    std::fs::rename(&staging, &data).unwrap();
    let link = dir.join("secret");
    if !link.exists() {
        std::os::unix::fs::symlink("..data/secret", &link).unwrap();
    }
    link
}

/// Waits until `check` holds, polling every 25 ms; fails the test after `within`.
pub async fn eventually(what: &str, within: Duration, mut check: impl AsyncFnMut() -> bool) {
    eventually_some(what, within, async || check().await.then_some(())).await
}

/// Waits until `check` gives a value and returns it; fails the test after `within`.
pub async fn eventually_some<T>(
    what: &str,
    within: Duration,
    mut check: impl AsyncFnMut() -> Option<T>,
) -> T {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A request as a sibling container sends it to the token routes: with `Metadata: true`.
pub trait Guarded {
    fn guarded(self) -> Self;
}

impl Guarded for reqwest::RequestBuilder {
    fn guarded(self) -> Self {
        self.header("Metadata", "true")
    }
}
