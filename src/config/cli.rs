//! The command line. Every setting is a flag with an environment fallback; none has a clap default, so
//! that [`super::validate`] can tell "given" from "not given" and let the TOML file fill the gaps.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

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
    Serve(ServeArgs),
    /// Fetch one entity token from the IAM, print it to stdout and exit (for scripts and init containers).
    Token(TokenArgs),
    /// Run the built-in IAM simulator as a server.
    IamSimulator(SimulatorArgs),
    /// Run the simulator and the broker in one process with a demo entity; needs no credentials.
    Demo(DemoArgs),
}

/// Where the IAM is and how long to wait for it.
#[derive(Debug, Args, Default)]
pub struct IamArgs {
    /// IAM base URL; endpoints are {base}/v1/... [env: AA_BROKER_IAM_URL]
    #[arg(long, env = "AA_BROKER_IAM_URL", value_name = "URL", hide_env = true)]
    pub iam_url: Option<String>,
    /// Use the documented IAM base of an environment: sandbox, uat or production [env: AA_BROKER_ENVIRONMENT]
    #[arg(
        long,
        env = "AA_BROKER_ENVIRONMENT",
        value_name = "NAME",
        hide_env = true
    )]
    pub environment: Option<String>,
    /// Seconds to wait for a connection to the IAM (default 5) [env: AA_BROKER_IAM_CONNECT_TIMEOUT]
    #[arg(
        long,
        env = "AA_BROKER_IAM_CONNECT_TIMEOUT",
        value_name = "SECONDS",
        hide_env = true
    )]
    pub iam_connect_timeout: Option<f64>,
    /// Seconds to wait for a whole IAM request (default 10) [env: AA_BROKER_IAM_TIMEOUT]
    #[arg(
        long,
        env = "AA_BROKER_IAM_TIMEOUT",
        value_name = "SECONDS",
        hide_env = true
    )]
    pub iam_timeout: Option<f64>,
}

/// Which entity (or entities) and their secrets.
#[derive(Debug, Args, Default)]
pub struct EntityArgs {
    /// Central Registry entity id [env: AA_BROKER_ENTITY_ID]
    #[arg(long, env = "AA_BROKER_ENTITY_ID", value_name = "ID", hide_env = true)]
    pub entity_id: Option<String>,
    /// File holding the entity secret, re-read on every fetch (or set AA_BROKER_ENTITY_SECRET) [env: AA_BROKER_SECRET_FILE]
    #[arg(
        long,
        env = "AA_BROKER_SECRET_FILE",
        value_name = "PATH",
        hide_env = true
    )]
    pub secret_file: Option<PathBuf>,
    /// TOML file; may list several entities under [[entities]] [env: AA_BROKER_CONFIG]
    #[arg(long, env = "AA_BROKER_CONFIG", value_name = "PATH", hide_env = true)]
    pub config: Option<PathBuf>,
}

/// Logging.
#[derive(Debug, Args, Default)]
pub struct LogArgs {
    /// Log format: text or json [env: AA_BROKER_LOG_FORMAT]
    #[arg(
        long,
        env = "AA_BROKER_LOG_FORMAT",
        value_name = "FORMAT",
        hide_env = true
    )]
    pub log_format: Option<String>,
    /// Log filter, e.g. info or aa_token_broker=debug [env: AA_BROKER_LOG]
    #[arg(long, env = "AA_BROKER_LOG", value_name = "FILTER", hide_env = true)]
    pub log_level: Option<String>,
}

/// The local HTTP surface.
#[derive(Debug, Args, Default)]
pub struct ListenArgs {
    /// Address to serve on (default 127.0.0.1:7373) [env: AA_BROKER_LISTEN]
    #[arg(long, env = "AA_BROKER_LISTEN", value_name = "ADDR", hide_env = true)]
    pub listen: Option<SocketAddr>,
    /// Extra Host name accepted by the caller guard besides loopback; repeatable [env: AA_BROKER_ALLOW_HOSTS, comma-separated]
    #[arg(
        long = "allow-host",
        env = "AA_BROKER_ALLOW_HOSTS",
        value_name = "HOST",
        value_delimiter = ',',
        hide_env = true
    )]
    pub allow_hosts: Vec<String>,
    /// Do not require the `Metadata: true` header (logged as a warning at start) [env: AA_BROKER_NO_METADATA_HEADER]
    #[arg(long, env = "AA_BROKER_NO_METADATA_HEADER", hide_env = true)]
    pub no_metadata_header: bool,
    /// Most concurrent client connections (default 1024) [env: AA_BROKER_MAX_CONNECTIONS]
    #[arg(
        long,
        env = "AA_BROKER_MAX_CONNECTIONS",
        value_name = "N",
        hide_env = true
    )]
    pub max_connections: Option<usize>,
    /// Runtime worker threads (default 2) [env: AA_BROKER_WORKER_THREADS]
    #[arg(
        long,
        env = "AA_BROKER_WORKER_THREADS",
        value_name = "N",
        hide_env = true
    )]
    pub worker_threads: Option<usize>,
    /// Seconds to let requests in flight finish on SIGTERM (default 10) [env: AA_BROKER_SHUTDOWN_GRACE]
    #[arg(
        long,
        env = "AA_BROKER_SHUTDOWN_GRACE",
        value_name = "SECONDS",
        hide_env = true
    )]
    pub shutdown_grace: Option<f64>,
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
    pub log: LogArgs,
}

#[derive(Debug, Args)]
pub struct TokenArgs {
    #[command(flatten)]
    pub iam: IamArgs,
    #[command(flatten)]
    pub entity: EntityArgs,
    #[command(flatten)]
    pub log: LogArgs,
}

#[derive(Debug, Args)]
pub struct SimulatorArgs {
    /// Address to serve on [env: AA_SIMULATOR_LISTEN]
    #[arg(
        long,
        env = "AA_SIMULATOR_LISTEN",
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
    #[command(flatten)]
    pub log: LogArgs,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Address the broker serves on
    #[arg(
        long,
        env = "AA_BROKER_LISTEN",
        default_value = "127.0.0.1:7373",
        hide_env = true
    )]
    pub listen: SocketAddr,
    /// Entity token lifetime in seconds (make it short to watch refreshes happen)
    #[arg(long, default_value_t = 86_400)]
    pub token_lifetime: u64,
    #[command(flatten)]
    pub log: LogArgs,
}
