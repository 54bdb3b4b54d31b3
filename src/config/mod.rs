//! Configuration: the command line ([`cli`]), environment fallbacks, and the TOML file ([`file`](mod@file)), merged
//! and validated once at start into typed settings.
//!
//! Precedence is flag, then environment variable, then the file, then the default. Every mistake becomes a
//! [`ConfigError`] naming the setting, which `main` prints as one line before exiting with code 2 —
//! before anything listens or calls the IAM.

pub mod cli;
pub mod entities;
pub mod fi;
pub mod file;
pub mod jws;
mod limits;
pub mod rotation;
pub mod settings;
pub mod verify;

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use secrecy::SecretString;

use crate::entity::{EntityId, SecretSource};
use crate::http::GuardSettings;
use crate::http::server::ServerLimits;
use crate::iam::{IamTimeouts, environment_base_url};
use crate::inbound::VerifySettings;
use crate::secret::{RotationSettings, SinkSpec};
use cli::{AdminArgs, EntityArgs, IamArgs, ListenArgs, LogArgs, RotationArgs, VerifyArgs};
pub use limits::InboundLimits;
use limits::inbound_limits;

/// The environment variable that may hold an entity secret when no secret file is given.
pub const ENV_ENTITY_SECRET: &str = "AA_BROKER_ENTITY_SECRET";
/// Default listen address: loopback only.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7373";
/// Default runtime worker threads. A sidecar serving a localhost GET rarely needs more.
pub const DEFAULT_WORKER_THREADS: usize = 2;

/// A setting that is missing or wrong. Displayed as one line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The flag and its variable, e.g. `--secret-file (AA_BROKER_SECRET_FILE)`.
    pub setting: String,
    pub reason: String,
}

impl ConfigError {
    /// `reason` is any error or message; it is displayed on the same line.
    /// `setting` is a [`settings::Setting`] or, for a key of the file alone, a description of where it is.
    pub fn new(setting: impl fmt::Display, reason: impl fmt::Display) -> Self {
        Self {
            setting: setting.to_string(),
            reason: reason.to_string(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid setting {}: {}",
            self.setting,
            self.reason.replace('\n', " ")
        )
    }
}

impl std::error::Error for ConfigError {}

/// One entity the broker serves.
#[derive(Debug, Clone)]
pub struct EntitySettings {
    pub id: EntityId,
    pub secret: SecretSource,
    /// Where a rotated secret goes (rotation needs one).
    pub sink: Option<SinkSpec>,
}

/// Secrets that may come from the process environment, read once by `main` and passed in, so that tests
/// need not touch the environment.
#[derive(Default, Clone)]
pub struct EnvSecrets {
    pub entity_secret: Option<SecretString>,
    pub admin_password: Option<SecretString>,
}

/// Logging settings.
#[derive(Debug, Clone)]
pub struct LogSettings {
    pub json: bool,
    pub filter: String,
}

/// Everything `serve` needs, validated.
#[derive(Debug, Clone)]
pub struct BrokerSettings {
    pub iam_url: String,
    pub iam_timeouts: IamTimeouts,
    pub entities: Vec<EntitySettings>,
    pub listen: SocketAddr,
    /// A second address serving only `/healthz`, `/readyz` and `/metrics`.
    pub admin_listen: Option<SocketAddr>,
    pub guard: GuardSettings,
    pub limits: ServerLimits,
    pub worker_threads: usize,
    pub log: LogSettings,
    /// Automatic rotation, when admin credentials are configured.
    pub rotation: Option<RotationSettings>,
    /// Verification of incoming tokens (`/v1/verify`).
    pub verify: VerifySettings,
    /// A third address serving only the verification routes.
    pub verify_listen: Option<SocketAddr>,
    /// The body budget, the body deadline and the crypto pool.
    pub inbound: InboundLimits,
}

/// Validates the log settings alone (every subcommand has them).
pub fn log_settings(args: &LogArgs) -> Result<LogSettings, ConfigError> {
    let json = match args.log_format.as_deref().map(str::trim) {
        None | Some("text") => false,
        Some("json") => true,
        Some(other) => {
            return Err(ConfigError::new(
                settings::LOG_FORMAT,
                format!("{other:?} is neither text nor json"),
            ));
        }
    };
    let filter = args.log_level.clone().unwrap_or_else(|| "info".into());
    filter
        .parse::<tracing_subscriber::filter::Targets>()
        .map_err(|e| {
            ConfigError::new(
                settings::LOG_LEVEL,
                format!("{filter:?} is not a log filter: {e}"),
            )
        })?;
    Ok(LogSettings { json, filter })
}

/// What every command that talks to the IAM reads first: the file, the IAM base and its timeouts.
pub(crate) struct Common {
    pub file: file::FileConfig,
    pub iam_url: String,
    pub iam_timeouts: IamTimeouts,
}

pub(crate) fn common(iam: &IamArgs, entity: &EntityArgs) -> Result<Common, ConfigError> {
    let file = match &entity.config {
        Some(path) => file::load(path)?,
        None => file::FileConfig::default(),
    };
    let iam_url = resolve_iam_url(
        iam.iam_url.as_deref().or(file.iam_url.as_deref()),
        iam.environment.as_deref().or(file.environment.as_deref()),
        iam.iam_url.is_some() || iam.environment.is_some(),
    )?;
    if iam_url.starts_with("http:")
        && !iam.allow_plain_http
        && !reqwest::Url::parse(&iam_url).is_ok_and(|u| crate::upstream::http::is_loopback_url(&u))
    {
        return Err(ConfigError::new(
            settings::IAM_URL,
            "plain http is accepted only for a loopback IAM (a local simulator); use https, or --allow-plain-http for a simulator in another container",
        ));
    }
    let iam_timeouts = iam_timeouts(iam, &file)?;
    Ok(Common {
        file,
        iam_url,
        iam_timeouts,
    })
}

/// The IAM's connect and request timeouts: flag, variable, file, default (5 s and 10 s).
pub(crate) fn iam_timeouts(
    iam: &IamArgs,
    file: &file::FileConfig,
) -> Result<IamTimeouts, ConfigError> {
    Ok(IamTimeouts {
        connect: seconds(
            settings::IAM_CONNECT_TIMEOUT,
            iam.iam_connect_timeout.or(file.iam_connect_timeout),
            5.0,
        )?,
        request: seconds(
            settings::IAM_TIMEOUT,
            iam.iam_timeout.or(file.iam_timeout),
            10.0,
        )?,
    })
}

/// The command-line groups `serve` and `token` are configured from.
pub struct BrokerArgs<'a> {
    pub iam: &'a IamArgs,
    pub entity: &'a EntityArgs,
    pub listen: &'a ListenArgs,
    pub log: &'a LogArgs,
    pub admin: &'a AdminArgs,
    pub rotation: &'a RotationArgs,
    pub verify: &'a VerifyArgs,
}

/// Validates `serve`'s (and `token`'s) settings.
pub fn broker_settings(
    args: BrokerArgs<'_>,
    env: &EnvSecrets,
) -> Result<BrokerSettings, ConfigError> {
    let BrokerArgs {
        iam,
        entity,
        listen,
        log,
        admin,
        rotation,
        verify,
    } = args;
    let log = log_settings(log)?;
    let Common {
        file,
        iam_url,
        iam_timeouts,
    } = common(iam, entity)?;
    let entities = entities::resolve_entities(
        entity,
        rotation.secret_sink.as_deref(),
        &file,
        env.entity_secret.clone(),
    )?;
    let sinks: Vec<&SinkSpec> = entities.iter().filter_map(|e| e.sink.as_ref()).collect();
    let rotation = rotation::rotation_settings(admin, rotation, &file, env, &sinks)?;
    if rotation.is_some()
        && let Some(entity) = entities.iter().find(|e| e.sink.is_none())
    {
        return Err(ConfigError::new(
            settings::SECRET_SINK,
            format!(
                "rotation is on (admin credentials are set) but entity {} has no secret file to write to; give --secret-sink",
                entity.id
            ),
        ));
    }
    let listen_addr = match (listen.listen, &file.listen) {
        (Some(addr), _) => addr,
        (None, Some(raw)) => raw.parse().map_err(|_| {
            ConfigError::new(
                "listen (in --config)",
                format!("{raw:?} is not an address like 127.0.0.1:7373"),
            )
        })?,
        (None, None) => DEFAULT_LISTEN
            .parse()
            .map_err(|_| ConfigError::new("--listen", "bad default"))?,
    };
    let admin_listen = match (listen.admin_listen, &file.admin_listen) {
        (Some(addr), _) => Some(addr),
        (None, Some(raw)) => Some(raw.parse().map_err(|_| {
            ConfigError::new(
                "admin_listen (in --config)",
                format!("{raw:?} is not an address like 0.0.0.0:9373"),
            )
        })?),
        (None, None) => None,
    };
    if admin_listen.is_some_and(|a| a == listen_addr) {
        return Err(ConfigError::new(
            settings::ADMIN_LISTEN,
            "must differ from --listen",
        ));
    }
    let verify_listen = verify::verify_listen(listen, &file)?;
    if verify_listen.is_some_and(|a| a == listen_addr || Some(a) == admin_listen) {
        return Err(ConfigError::new(
            settings::VERIFY_LISTEN,
            "must differ from --listen and --admin-listen",
        ));
    }
    let verify = verify::verify_settings(verify, &file, &iam_url, iam_timeouts)?;
    let mut allowed_hosts: Vec<String> = if listen.allow_hosts.is_empty() {
        file.allowed_hosts.clone().unwrap_or_default()
    } else {
        listen.allow_hosts.clone()
    };
    for host in &mut allowed_hosts {
        *host = host.trim().trim_end_matches('.').to_ascii_lowercase();
        if host.is_empty() || host.contains(['/', ' ', '@']) {
            return Err(ConfigError::new(
                settings::ALLOW_HOST,
                "host names must be plain names without port",
            ));
        }
    }
    allowed_hosts.retain(|h| !h.is_empty());
    let require_metadata_header =
        !listen.no_metadata_header && file.require_metadata_header.unwrap_or(true);
    let max_connections = listen
        .max_connections
        .or(file.max_connections)
        .unwrap_or(1024);
    if !(1..=65_536).contains(&max_connections) {
        return Err(ConfigError::new(
            settings::MAX_CONNECTIONS,
            "must be between 1 and 65536",
        ));
    }
    let worker_threads = listen
        .worker_threads
        .or(file.worker_threads)
        .unwrap_or(DEFAULT_WORKER_THREADS);
    if !(1..=64).contains(&worker_threads) {
        return Err(ConfigError::new(
            settings::WORKER_THREADS,
            "must be between 1 and 64",
        ));
    }
    let shutdown_grace = seconds(
        settings::SHUTDOWN_GRACE,
        listen.shutdown_grace.or(file.shutdown_grace),
        10.0,
    )?;
    let write_timeout = seconds(
        settings::WRITE_TIMEOUT,
        listen.write_timeout.or(file.write_timeout),
        10.0,
    )?;
    let max_requests_per_connection = listen
        .max_requests_per_connection
        .or(file.max_requests_per_connection)
        .unwrap_or(10_000);
    if max_requests_per_connection == 0 {
        return Err(ConfigError::new(
            settings::MAX_REQUESTS_PER_CONNECTION,
            "must be at least 1",
        ));
    }
    let inbound = inbound_limits(listen, &file, worker_threads)?;
    let limits = ServerLimits {
        max_connections,
        shutdown_grace,
        write_timeout,
        max_requests_per_connection,
        ..ServerLimits::default()
    };
    Ok(BrokerSettings {
        iam_url,
        iam_timeouts,
        entities,
        listen: listen_addr,
        admin_listen,
        guard: GuardSettings {
            require_metadata_header,
            allowed_hosts,
        },
        limits,
        worker_threads,
        log,
        rotation,
        verify,
        verify_listen,
        inbound,
    })
}

/// Validates the signing and signature settings of `serve` against its validated `settings`.
pub fn broker_jws_settings(
    entity: &EntityArgs,
    args: &cli::JwsArgs,
    settings: &BrokerSettings,
) -> Result<jws::JwsSettings, ConfigError> {
    let file = match &entity.config {
        Some(path) => file::load(path)?,
        None => file::FileConfig::default(),
    };
    let jws = jws::jws_settings(args, &file, &settings.iam_url, &settings.entities)?;
    // A body the cap allows must fit the budget with its signature prefix, or it could never be read.
    if jws
        .max_body_bytes
        .saturating_add(crate::budget::PREFIX_ALLOWANCE)
        > settings.inbound.max_buffered_bytes
    {
        return Err(ConfigError::new(
            settings::MAX_BODY_BYTES,
            format!(
                "plus 16 KiB is larger than --max-buffered-bytes ({}); raise the budget or lower the cap",
                settings.inbound.max_buffered_bytes
            ),
        ));
    }
    Ok(jws)
}

/// Validates the FI settings of `serve` against its validated `settings` (the body budget bounds the cap).
pub fn broker_fi_settings(
    entity: &EntityArgs,
    args: &cli::FiArgs,
    settings: &BrokerSettings,
) -> Result<fi::FiSettings, ConfigError> {
    let file = match &entity.config {
        Some(path) => file::load(path)?,
        None => file::FileConfig::default(),
    };
    let ids: Vec<EntityId> = settings.entities.iter().map(|e| e.id.clone()).collect();
    fi::fi_settings(args, &file, &ids, Some(settings.inbound.max_buffered_bytes))
}

pub(crate) fn seconds(
    setting: impl std::fmt::Display + Copy,
    value: Option<f64>,
    default: f64,
) -> Result<Duration, ConfigError> {
    let value = value.unwrap_or(default);
    if !(value.is_finite() && value > 0.0 && value <= 3600.0) {
        return Err(ConfigError::new(
            setting,
            "must be a number of seconds between 0 and 3600",
        ));
    }
    Ok(Duration::from_secs_f64(value))
}

/// Checks an IAM base URL: http(s), a host, no credentials, query or fragment. Returns it without a
/// trailing slash.
pub fn resolve_iam_url(
    url: Option<&str>,
    environment: Option<&str>,
    from_cli: bool,
) -> Result<String, ConfigError> {
    let raw = match (url, environment) {
        (Some(_), Some(_)) if from_cli => {
            return Err(ConfigError::new(
                settings::IAM_URL,
                "give either --iam-url or --environment, not both",
            ));
        }
        (Some(url), _) => url.trim().to_string(),
        (None, Some(env)) => environment_base_url(env.trim())
            .ok_or_else(|| {
                ConfigError::new(
                    settings::ENVIRONMENT,
                    format!("{env:?} is not one of sandbox, uat, production"),
                )
            })?
            .to_string(),
        (None, None) => {
            return Err(ConfigError::new(
                settings::IAM_URL,
                "no IAM given; set --iam-url or --environment sandbox|uat|production",
            ));
        }
    };
    let parsed = reqwest::Url::parse(&raw)
        .map_err(|e| ConfigError::new(settings::IAM_URL, format!("{raw:?} is not a URL: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(ConfigError::new(
            settings::IAM_URL,
            "the scheme must be https (or http for a local simulator)",
        ));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(ConfigError::new(settings::IAM_URL, "the URL has no host"));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(ConfigError::new(
            settings::IAM_URL,
            "the URL must not carry credentials",
        ));
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(ConfigError::new(
            settings::IAM_URL,
            "the URL must not have a query or fragment",
        ));
    }
    Ok(parsed.as_str().trim_end_matches('/').to_string())
}

#[cfg(test)]
mod tests;
