//! The command line. Every setting is a flag with an environment fallback; none has a clap default, so
//! that the validation in `config` can tell "given" from "not given" and let the TOML file fill the gaps.
//! Entity ids are parsed by clap itself ([`EntityId::parse_arg`]): a bad one is a one-line usage error
//! naming the flag (exit 2) before any command runs.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use super::settings as S;
use crate::entity::EntityId;

mod inbound;
mod rotation;
pub use inbound::{
    FiArgs, FiCommandArgs, JwsArgs, SignArgs, SigningKeyArgs, VerifyArgs, VerifySignatureArgs,
    VerifyTokenArgs,
};
pub use rotation::{
    AdminArgs, RotateArgs, RotationArgs, SecretCommand, SecretFingerprintArgs, SecretReadArgs,
    SecretResetArgs,
};

#[derive(Debug, Parser)]
#[command(
    name = "aa-token-broker",
    version,
    about = "Keeps a valid Sahamati Central Registry entity access token ready on localhost",
    propagate_version = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the sidecar: keep tokens fresh and serve them on a local port.
    Serve(Box<ServeArgs>),
    /// Fetch one entity token from the IAM, print it to stdout and exit (for scripts and init containers).
    Token(TokenArgs),
    /// Run the built-in IAM simulator as a server.
    // Parsed in every build, so that a build without the simulator says so instead of "unrecognized
    // subcommand"; left out of its help.
    #[cfg_attr(not(feature = "simulator"), command(hide = true))]
    IamSimulator(SimulatorArgs),
    /// Run the simulator and the broker in one process with a demo entity; needs no credentials.
    #[cfg_attr(not(feature = "simulator"), command(hide = true))]
    Demo(DemoArgs),
    /// Admin operations on the entity secret (needs the admin user's credentials).
    #[command(subcommand)]
    Secret(SecretCommand),
    /// Rotate the entity secret if it expires within the threshold (or --force): reset, store, verify.
    Rotate(RotateArgs),
    /// Check a running broker: exit 0 when /readyz (or /healthz with --live) answers 200. For probes in
    /// images without curl.
    Healthcheck(HealthcheckArgs),
    /// Add the broker as a sidecar to every pod template in Kubernetes manifests (files or stdin, to stdout).
    Inject(InjectArgs),
    /// Verify an incoming entity token read on stdin: print its claims and exit 0, or the reason and exit 1.
    Verify(VerifyTokenArgs),
    /// Sign the body read on stdin with the entity's key: print the x-jws-signature value.
    Sign(SignArgs),
    /// Verify the x-jws-signature of a body read on stdin against the sender's key in the Central Registry.
    VerifySignature(VerifySignatureArgs),
    /// FI data: key-material, decrypt or encrypt, with the JSON of /v1/fi/OPERATION on stdin (needs --fi-kek-file for key-material and decrypt).
    Fi(FiCommandArgs),
    /// Run the certification cases a sidecar can decide against an ingress, with the built-in simulator as IAM and CR; print a pass/fail table by case id.
    Certify(CertifyArgs),
}

#[derive(Debug, Args)]
pub struct CertifyArgs {
    /// The ingress the ReBIT paths are appended to, e.g. http://127.0.0.1:8080 (your proxy) or http://127.0.0.1:7373/v1/authorize
    #[arg(long, value_name = "URL")]
    pub ingress: String,
    /// The built-in simulator the sidecar uses as its IAM and CR (`aa-token-broker iam-simulator`), e.g. http://127.0.0.1:7380
    #[arg(long, value_name = "URL")]
    pub simulator: String,
    /// The deployment's role: FIU, FIP or AA (its cases are run)
    #[arg(long, value_name = "ROLE")]
    pub role: String,
    /// The deployment's entity id
    #[arg(long = "entity-id", value_name = "ID", value_parser = crate::entity::EntityId::parse_arg)]
    pub entity_id: crate::entity::EntityId,
    /// Run only these case ids (repeatable; default: every case of the role)
    #[arg(long = "case", value_name = "ID")]
    pub cases: Vec<String>,
}

#[derive(Debug, Args)]
pub struct HealthcheckArgs {
    /// Address the broker serves on (default 127.0.0.1:7373)
    #[arg(long = S::LISTEN.flag, env = S::LISTEN.env, value_name = "ADDR", hide_env_values = true)]
    pub listen: Option<SocketAddr>,
    /// Check liveness (/healthz) instead of readiness (/readyz)
    #[arg(long)]
    pub live: bool,
    /// Keep checking for up to this many seconds until it passes
    #[arg(long, value_name = "SECONDS")]
    pub wait: Option<f64>,
}

/// Where the IAM is and how long to wait for it.
#[derive(Debug, Args, Default)]
pub struct IamArgs {
    /// IAM base URL; endpoints are {base}/v1/...
    #[arg(long = S::IAM_URL.flag, env = S::IAM_URL.env, value_name = "URL", hide_env_values = true)]
    pub iam_url: Option<String>,
    /// Use the documented IAM base of an environment: sandbox, uat or production
    #[arg(
        long = S::ENVIRONMENT.flag,
        env = S::ENVIRONMENT.env,
        value_name = "NAME",
        hide_env_values = true
    )]
    pub environment: Option<String>,
    /// Seconds to wait for a connection to the IAM (default 5)
    #[arg(
        long = S::IAM_CONNECT_TIMEOUT.flag,
        env = S::IAM_CONNECT_TIMEOUT.env,
        value_name = "SECONDS",
        hide_env_values = true
    )]
    pub iam_connect_timeout: Option<f64>,
    /// Seconds to wait for a whole IAM request (default 10)
    #[arg(
        long = S::IAM_TIMEOUT.flag,
        env = S::IAM_TIMEOUT.env,
        value_name = "SECONDS",
        hide_env_values = true
    )]
    pub iam_timeout: Option<f64>,
    /// Allow a plain-http IAM URL that is not loopback (a simulator in another container); logged as a warning
    #[arg(long = S::ALLOW_PLAIN_HTTP.flag, env = S::ALLOW_PLAIN_HTTP.env, hide_env_values = true)]
    pub allow_plain_http: bool,
}

/// Which entity (or entities) and their secrets.
#[derive(Debug, Args, Default)]
pub struct EntityArgs {
    /// Central Registry entity id
    #[arg(
        long = S::ENTITY_ID.flag,
        env = S::ENTITY_ID.env,
        value_name = "ID",
        hide_env_values = true,
        value_parser = EntityId::parse_arg
    )]
    pub entity_id: Option<EntityId>,
    /// File holding the entity secret, re-read on every fetch (or set AA_BROKER_ENTITY_SECRET)
    #[arg(
        long = S::SECRET_FILE.flag,
        env = S::SECRET_FILE.env,
        value_name = "PATH",
        hide_env_values = true
    )]
    pub secret_file: Option<PathBuf>,
    /// TOML file; may list several entities under `[[entities]]`
    #[arg(long = S::CONFIG.flag, env = S::CONFIG.env, value_name = "PATH", hide_env_values = true)]
    pub config: Option<PathBuf>,
}

/// Logging.
#[derive(Debug, Args, Default)]
pub struct LogArgs {
    /// Log format: text or json
    #[arg(
        long = S::LOG_FORMAT.flag,
        env = S::LOG_FORMAT.env,
        value_name = "FORMAT",
        hide_env_values = true
    )]
    pub log_format: Option<String>,
    /// Log filter, e.g. info or aa_token_broker=debug
    #[arg(long = S::LOG_LEVEL.flag, env = S::LOG_LEVEL.env, value_name = "FILTER", hide_env_values = true)]
    pub log_level: Option<String>,
}

impl LogArgs {
    /// These settings, with `level` where `--log-level` is not given: a one-shot command whose outcome is
    /// the line it prints stays quiet by default.
    pub fn with_default_level(&self, level: &str) -> LogArgs {
        LogArgs {
            log_format: self.log_format.clone(),
            log_level: Some(self.log_level.clone().unwrap_or_else(|| level.into())),
        }
    }
}

/// The local HTTP surface.
#[derive(Debug, Args, Default)]
pub struct ListenArgs {
    /// Address to serve on (default 127.0.0.1:7373)
    #[arg(long = S::LISTEN.flag, env = S::LISTEN.env, value_name = "ADDR", hide_env_values = true)]
    pub listen: Option<SocketAddr>,
    /// Extra Host name accepted by the caller guard besides loopback; repeatable (comma-separated in the variable)
    #[arg(
        long = S::ALLOW_HOST.flag,
        env = S::ALLOW_HOST.env,
        value_name = "HOST",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub allow_hosts: Vec<String>,
    /// Do not require the `Metadata: true` header (logged as a warning at start)
    #[arg(long = S::NO_METADATA_HEADER.flag, env = S::NO_METADATA_HEADER.env, hide_env_values = true)]
    pub no_metadata_header: bool,
    /// Most concurrent client connections (default 1024)
    #[arg(
        long = S::MAX_CONNECTIONS.flag,
        env = S::MAX_CONNECTIONS.env,
        value_name = "N",
        hide_env_values = true
    )]
    pub max_connections: Option<usize>,
    /// Runtime worker threads (default 2)
    #[arg(
        long = S::WORKER_THREADS.flag,
        env = S::WORKER_THREADS.env,
        value_name = "N",
        hide_env_values = true
    )]
    pub worker_threads: Option<usize>,
    /// Also serve /healthz, /readyz and /metrics (never tokens) on this address, e.g. 0.0.0.0:9373 for Prometheus
    #[arg(
        long = S::ADMIN_LISTEN.flag,
        env = S::ADMIN_LISTEN.env,
        value_name = "ADDR",
        hide_env_values = true
    )]
    pub admin_listen: Option<SocketAddr>,
    /// Also serve the verification routes (/v1/verify[/…], /v1/verify-signature, /v1/authorize[/…]) and nothing else (never tokens, never signing) on this address, for an ingress proxy in another pod
    #[arg(
        long = S::VERIFY_LISTEN.flag,
        env = S::VERIFY_LISTEN.env,
        value_name = "ADDR",
        hide_env_values = true
    )]
    pub verify_listen: Option<SocketAddr>,
    /// Seconds to let requests in flight finish on SIGTERM (default 10)
    #[arg(
        long = S::SHUTDOWN_GRACE.flag,
        env = S::SHUTDOWN_GRACE.env,
        value_name = "SECONDS",
        hide_env_values = true
    )]
    pub shutdown_grace: Option<f64>,
    /// Seconds a write to a client may make no progress before the connection is closed (default 10)
    #[arg(
        long = S::WRITE_TIMEOUT.flag,
        env = S::WRITE_TIMEOUT.env,
        value_name = "SECONDS",
        hide_env_values = true
    )]
    pub write_timeout: Option<f64>,
    /// Requests served on one connection before it is closed (default 10000)
    #[arg(
        long = S::MAX_REQUESTS_PER_CONNECTION.flag,
        env = S::MAX_REQUESTS_PER_CONNECTION.env,
        value_name = "N",
        hide_env_values = true
    )]
    pub max_requests_per_connection: Option<u32>,
    /// Most request-body bytes held at once, across all connections and listeners (default 25165824 = 24 MiB); past it a request waits up to 2 s, then gets 503
    #[arg(
        long = S::MAX_BUFFERED_BYTES.flag,
        env = S::MAX_BUFFERED_BYTES.env,
        value_name = "BYTES",
        hide_env_values = true
    )]
    pub max_buffered_bytes: Option<usize>,
    /// Seconds a request body may take to arrive in full before 408 and the connection is closed (default 15)
    #[arg(
        long = S::BODY_TIMEOUT.flag,
        env = S::BODY_TIMEOUT.env,
        value_name = "SECONDS",
        hide_env_values = true
    )]
    pub body_timeout: Option<f64>,
    /// Threads for RSA signing and verification, off the async workers (default: --worker-threads minus one, at least 1)
    #[arg(
        long = S::CRYPTO_THREADS.flag,
        env = S::CRYPTO_THREADS.env,
        value_name = "N",
        hide_env_values = true
    )]
    pub crypto_threads: Option<usize>,
    /// Crypto jobs that may wait for a thread; past it, 503 busy with Retry-After (default 64)
    #[arg(
        long = S::CRYPTO_QUEUE.flag,
        env = S::CRYPTO_QUEUE.env,
        value_name = "N",
        hide_env_values = true
    )]
    pub crypto_queue: Option<usize>,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub iam: IamArgs,
    #[command(flatten)]
    pub entity: EntityArgs,
    #[command(flatten)]
    pub listen: ListenArgs,
    #[command(flatten)]
    pub admin: AdminArgs,
    #[command(flatten)]
    pub rotation: RotationArgs,
    #[command(flatten)]
    pub log: LogArgs,
    /// Boxed: `serve` has the most flags, and the command enum should not grow by all of them.
    #[command(flatten)]
    pub verify: Box<VerifyArgs>,
    #[command(flatten)]
    pub jws: Box<JwsArgs>,
    #[command(flatten)]
    pub fi: Box<FiArgs>,
}

#[derive(Debug, Args)]
pub struct TokenArgs {
    #[command(flatten)]
    pub iam: IamArgs,
    #[command(flatten)]
    pub entity: EntityArgs,
    #[command(flatten)]
    pub log: LogArgs,
    /// Check that a token can be minted and print its expiry instead of the token
    #[arg(long)]
    pub check: bool,
}

#[derive(Debug, Args)]
pub struct SimulatorArgs {
    /// Address to serve on
    #[arg(
        long,
        env = S::SIMULATOR_LISTEN.env,
        default_value = "127.0.0.1:7380",
        hide_env = true
    )]
    pub listen: SocketAddr,
    /// An entity as ID=SECRET; repeatable (default: FIU-DEMO with a random secret, printed at start)
    #[arg(long = "entity", value_name = "ID=SECRET")]
    pub entities: Vec<String>,
    /// An admin user as EMAIL=PASSWORD=ENTITY[,ENTITY...]; repeatable
    #[arg(long = "user", value_name = "EMAIL=PASSWORD=ENTITIES")]
    pub users: Vec<String>,
    /// Entity token lifetime in seconds
    #[arg(long, default_value_t = 86_400)]
    pub token_lifetime: u64,
    /// Latency added to every answer, milliseconds
    #[arg(long, default_value_t = 0)]
    pub latency_ms: u64,
    /// What a secret reset does to the old secret: revoke-immediately or grace-period
    #[arg(long, default_value = "revoke-immediately")]
    pub reset_mode: String,
    /// The tokens' `iss` (default http://LISTEN/auth/realms/sahamati, whatever Host a client uses)
    #[arg(long, value_name = "URL")]
    pub issuer: Option<String>,
    #[command(flatten)]
    pub log: LogArgs,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Address the broker serves on
    #[arg(
        long = S::LISTEN.flag,
        env = S::LISTEN.env,
        default_value = "127.0.0.1:7373",
        hide_env_values = true
    )]
    pub listen: SocketAddr,
    /// Entity token lifetime in seconds (make it short to watch refreshes happen)
    #[arg(long, default_value_t = 86_400)]
    pub token_lifetime: u64,
    #[command(flatten)]
    pub log: LogArgs,
}

/// `inject` reads its flags only, no environment variables, so that what it writes depends on its command
/// line alone. The required flags are options so that a missing one is reported by name (exit 2).
#[derive(Debug, Args)]
pub struct InjectArgs {
    /// Manifest files, read in order; `-` or none reads stdin
    #[arg(value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// Central Registry entity id the sidecar serves tokens for (required)
    #[arg(long, value_name = "ID", value_parser = EntityId::parse_arg)]
    pub entity_id: Option<EntityId>,
    /// Kubernetes Secret holding the entity secret, mounted read-only into the sidecar (required)
    #[arg(long, value_name = "NAME")]
    pub secret_name: Option<String>,
    /// Key of the entity secret in that Secret
    #[arg(long, value_name = "KEY", default_value = "secret")]
    pub secret_key: String,
    /// Sidecar image (default: this version's published image)
    #[arg(long, value_name = "IMAGE")]
    pub image: Option<String>,
    /// IAM base URL; endpoints are {base}/v1/...
    #[arg(long, value_name = "URL")]
    pub iam_url: Option<String>,
    /// Use the documented IAM base of an environment: sandbox, uat or production
    #[arg(long, value_name = "NAME")]
    pub environment: Option<String>,
    /// Token API port on the pod's loopback
    #[arg(long, value_name = "PORT", default_value_t = 7373)]
    pub port: u16,
    /// Also serve /healthz, /readyz and /metrics on this port of the pod IP (port name `broker-metrics`); probes use it
    #[arg(long, value_name = "PORT")]
    pub admin_port: Option<u16>,
    /// native: first init container with restartPolicy Always (Kubernetes >= 1.29); regular: first container
    /// held by postStart; auto: native unless --kube-version is older than 1.29
    #[arg(long, value_name = "MODE", default_value = "auto", value_parser = ["native", "regular", "auto"])]
    pub mode: String,
    /// Kubernetes version the manifests are for, e.g. 1.28 (for --mode auto)
    #[arg(long, value_name = "VERSION")]
    pub kube_version: Option<String>,
    /// Kubernetes Secret holding the FI key-encryption key under the key `kek`; mounted into the sidecar only (FI encryption is off without it)
    #[arg(long, value_name = "NAME")]
    pub fi_kek_secret: Option<String>,
    /// Only workloads whose pod template labels match (kubectl's equality syntax: k=v,k2!=v2)
    #[arg(short = 'l', long, value_name = "SELECTOR")]
    pub selector: Option<String>,
    /// Leave this workload alone, e.g. deployment/redis (repeatable)
    #[arg(long, value_name = "KIND/NAME")]
    pub exclude: Vec<String>,
    /// Set no runAsUser, runAsGroup or fsGroup: OpenShift (restricted-v2) assigns them
    #[arg(long)]
    pub openshift: bool,
}
