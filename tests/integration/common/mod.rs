//! The one test harness: a simulator on a loopback port ([`Iam`]), a broker on another ([`TestBroker`],
//! built from [`BrokerOptions`]: entities, limits, policies, rotation, the verify listener, a signing key,
//! FI, and a last-word `tune` of the settings), the answer of a call as data ([`Answer`]), and request
//! helpers, so that each test reads as a short story about what a user would see. A scripted IAM for tests
//! on a paused clock is in [`scripted`]; the real binary is run by [`process`].

pub mod kube;
pub mod process;
pub mod scripted;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aa_token_broker::app::Application;
use aa_token_broker::config::fi::FiSettings;
use aa_token_broker::config::jws::JwsSettings;
use aa_token_broker::config::{BrokerSettings, EntitySettings, InboundLimits, LogSettings};
use aa_token_broker::entity::{EntityId, SecretSource};
use aa_token_broker::fi::kek::KekFile;
use aa_token_broker::http::GuardSettings;
use aa_token_broker::http::server::ServerLimits;
use aa_token_broker::iam::{Endpoint, IamTimeouts};
use aa_token_broker::jws::SigningKeyFile;
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

    /// The simulator's root URL (its IAM is under `/iam`, its CR beside it).
    pub fn root(&self) -> String {
        self.url.trim_end_matches("/iam").to_string()
    }

    /// An entity token, the way a peer gets one: from this IAM, over HTTP.
    pub async fn entity_token(&self, id: &str, secret: &str) -> String {
        entity_token(&self.url, id, secret).await
    }

    /// Registers `id` in the CR as `role` and returns its key as the broker would be given it.
    pub fn signing_key(&self, id: &str, role: &str) -> SigningKey {
        let kid = self.sim.cr_register(id, role).unwrap();
        let pem = self.sim.cr_private_key_pem(id).unwrap();
        SigningKey { kid, pem }
    }
}

/// An entity token, the way a peer gets one: from the IAM at `iam_url`, over HTTP.
pub async fn entity_token(iam_url: &str, id: &str, secret: &str) -> String {
    let response = http_client()
        .post(format!("{iam_url}/v1/entity/token/generate"))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(format!("id={id}&secret={secret}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    body["accessToken"].as_str().unwrap().to_string()
}

/// A private key the broker signs with (written to a 0600 file when the broker starts), and its `kid`.
pub struct SigningKey {
    pub kid: String,
    pub pem: String,
}

/// The answer to one call: status, headers, and the body as JSON (`Null` when it is not JSON).
pub struct Answer {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: serde_json::Value,
}

/// Reads a response into an [`Answer`].
pub async fn answer(response: reqwest::Response) -> Answer {
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.json().await.unwrap_or(serde_json::Value::Null);
    Answer {
        status,
        headers,
        body,
    }
}

/// A broker serving on a loopback port (and on a verify-only one if asked), stopped on drop of its shutdown
/// sender. It may own the simulator it talks to ([`TestBroker::owning`]).
pub struct TestBroker {
    pub addr: SocketAddr,
    /// The verify-only listener, with [`BrokerOptions::verify_listener`].
    pub verify_addr: Option<SocketAddr>,
    pub http: reqwest::Client,
    iam: Option<Iam>,
    /// The signing key file and its `kid`, with [`BrokerOptions::signing_key`].
    signing: Option<(PathBuf, String)>,
    /// The KEK file, with [`BrokerOptions::kek`].
    kek: Option<PathBuf>,
    _dir: Option<tempfile::TempDir>,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<()>>,
}

/// A last word on the settings and the signature settings, for what the options do not cover.
pub type Tune = Box<dyn FnOnce(&mut BrokerSettings, &mut JwsSettings) + Send>;

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
    /// Serve the verification routes on a listener of their own too (`--verify-listen`).
    pub verify_listener: bool,
    /// Sign as the first entity with this key (`--signing-key`).
    pub signing_key: Option<SigningKey>,
    /// The signature settings (default: what `serve` derives from the IAM URL); the signing key above is
    /// added to them.
    pub jws: Option<JwsSettings>,
    /// FI data encryption (default: none configured); a KEK below is added to it.
    pub fi: Option<FiSettings>,
    /// The first entity's KEK file content (`--fi-kek-file`), written to a 0600 file.
    pub kek: Option<String>,
    /// Applied to the settings last.
    pub tune: Option<Tune>,
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
            verify_listener: false,
            signing_key: None,
            jws: None,
            fi: None,
            kek: None,
            tune: None,
        }
    }

    /// These options with the settings changed last by `tune`.
    pub fn tuned(
        mut self,
        tune: impl FnOnce(&mut BrokerSettings, &mut JwsSettings) + Send + 'static,
    ) -> Self {
        self.tune = Some(Box::new(tune));
        self
    }

    pub fn inline() -> Self {
        Self::one(inline_secret(SECRET))
    }
}

pub fn inline_secret(secret: &str) -> SecretSource {
    SecretSource::Inline(Arc::new(SecretString::from(secret.to_string())))
}

/// The settings `options` stand for, tuned (the fields that are not settings, such as the verify listener,
/// are left out: [`TestBroker::start`] applies them to the application).
pub fn settings(iam_url: &str, options: BrokerOptions) -> BrokerSettings {
    let mut first_sink = options.sink;
    let mut settings = BrokerSettings {
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
    };
    if let Some(tune) = options.tune {
        tune(&mut settings, &mut JwsSettings::for_iam_url(iam_url));
    }
    settings
}

/// The tests' HTTP client. Plain HTTP on loopback only, so it has no root certificates: loading the
/// system's (what a default client does when it is built) costs more CPU than most tests.
pub fn http_client() -> reqwest::Client {
    aa_token_broker::install_crypto_provider();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .pool_max_idle_per_host(2048)
        .tls_certs_only([])
        .build()
        .expect("client")
}

impl TestBroker {
    /// A broker for the simulator at `iam_url`, built from `options`, serving in the background. It does
    /// not wait for anything: see [`TestBroker::wait_ready`] and [`TestBroker::wait_keys`].
    pub async fn start(iam_url: &str, mut options: BrokerOptions) -> TestBroker {
        let policy = options.policy.clone();
        let verify_listener = options.verify_listener;
        let mut fi = options.fi.take();
        let mut jws = options.jws.take();
        let dir = tempfile::tempdir().unwrap();
        let first = EntityId::parse(&options.entities[0].0).unwrap();
        let mut signing = None;
        if let Some(key) = options.signing_key.take() {
            let path = dir.path().join("signing-key.pem");
            write_secret(&path, &key.pem);
            let signer = Arc::new(SigningKeyFile::open(&path, Some(&key.kid)).unwrap());
            jws.get_or_insert_with(|| JwsSettings::for_iam_url(iam_url))
                .signers
                .push((first.clone(), signer));
            signing = Some((path, key.kid));
        }
        let mut kek = None;
        if let Some(content) = options.kek.take() {
            let path = dir.path().join("kek");
            write_secret(&path, content.trim_end());
            let file = Arc::new(KekFile::open(&path).unwrap());
            fi.get_or_insert_with(FiSettings::default)
                .keks
                .push((first, file));
            kek = Some(path);
        }
        let mut jws = jws.unwrap_or_else(|| JwsSettings::for_iam_url(iam_url));
        let tune = options.tune.take();
        let mut settings = settings(iam_url, options);
        if let Some(tune) = tune {
            tune(&mut settings, &mut jws);
        }
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut app = Application::build(settings, listener, policy)
            .expect("broker builds")
            .with_jws(jws);
        if let Some(fi) = fi {
            app = app.with_fi(fi);
        }
        if verify_listener {
            app = app.with_verify_listener(TcpListener::bind("127.0.0.1:0").await.unwrap());
        }
        let mut broker = Self::spawn(app);
        broker.signing = signing;
        broker.kek = kek;
        broker._dir = Some(dir);
        broker
    }

    /// [`TestBroker::start`] for a simulator the broker then owns ([`TestBroker::iam`]).
    pub async fn owning(iam: Iam, options: BrokerOptions) -> TestBroker {
        let mut broker = Self::start(&iam.url, options).await;
        broker.iam = Some(iam);
        broker
    }

    /// Runs an application built by the test (with settings `start` does not cover).
    pub fn spawn(app: Application) -> TestBroker {
        let addr = app.local_addr().unwrap();
        let verify_addr = app.verify_addr();
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(app.run_until(async {
            let _ = rx.await;
        }));
        TestBroker {
            addr,
            verify_addr,
            http: http_client(),
            iam: None,
            signing: None,
            kek: None,
            _dir: None,
            shutdown: Some(tx),
            handle: Some(handle),
        }
    }

    /// The simulator this broker owns.
    pub fn iam(&self) -> &Iam {
        self.iam.as_ref().expect("started with TestBroker::owning")
    }

    /// The signing key file, with [`BrokerOptions::signing_key`].
    pub fn signing_key_path(&self) -> &Path {
        &self.signing.as_ref().expect("a signing key").0
    }

    /// The signing key's `kid`, with [`BrokerOptions::signing_key`].
    pub fn signing_kid(&self) -> &str {
        &self.signing.as_ref().expect("a signing key").1
    }

    /// The KEK file, with [`BrokerOptions::kek`].
    pub fn kek_path(&self) -> &Path {
        self.kek.as_deref().expect("a KEK")
    }

    /// The verify-only listener's address, with [`BrokerOptions::verify_listener`].
    pub fn verify_addr(&self) -> SocketAddr {
        self.verify_addr.expect("a verify listener")
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

    /// Waits until the realm's key set is held and fresh (with `--verify-prefetch-keys`, at start).
    pub async fn wait_keys(&self) {
        eventually("the realm key set", Duration::from_secs(5), async || {
            self.key_set_state().await == "fresh"
        })
        .await;
    }

    /// The state of the first realm key set in `/readyz`.
    pub async fn key_set_state(&self) -> String {
        self.readyz().await.1["verify"]["keySets"][0]["state"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// The value of one sample in `/metrics` (`None` when absent).
    pub async fn sample(&self, sample: &str) -> Option<f64> {
        self.metrics()
            .await
            .lines()
            .find_map(|line| line.strip_prefix(sample)?.trim().parse().ok())
    }

    /// The value of one sample in `/metrics` (0 when absent).
    pub async fn metric(&self, sample: &str) -> f64 {
        self.sample(sample).await.unwrap_or(0.0)
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
