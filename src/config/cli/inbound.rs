//! The command-line groups of the inbound half: how incoming tokens are verified, signing and signature
//! checks, FI data encryption, and the one-shot commands over them (`verify`, `sign`,
//! `verify-signature`, `fi`).

use std::path::PathBuf;

use clap::Args;

use super::super::settings as S;
use super::{EntityArgs, IamArgs, LogArgs};
use crate::entity::EntityId;

/// How incoming tokens are verified (`/v1/verify` and the `verify` command).
#[derive(Debug, Args, Default)]
pub struct VerifyArgs {
    /// Issuer whose tokens are accepted, exactly as in `iss`; repeatable (default: the IAM's realm, or the named environment's issuers) (comma-separated in the variable)
    #[arg(
        long = S::VERIFY_ISSUER.flag,
        env = S::VERIFY_ISSUER.env,
        value_name = "URL",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub verify_issuers: Vec<String>,
    /// Key set URL for every allowed issuer (default: each issuer's /protocol/openid-connect/certs)
    #[arg(long = S::JWKS_URL.flag, env = S::JWKS_URL.env, value_name = "URL", hide_env_values = true)]
    pub jwks_url: Option<String>,
    /// Clock leeway for exp, nbf and iat, seconds, 0-600 (default 60)
    #[arg(
        long = S::VERIFY_LEEWAY.flag,
        env = S::VERIFY_LEEWAY.env,
        value_name = "SECONDS",
        hide_env_values = true
    )]
    pub verify_leeway: Option<f64>,
    /// Seconds between fetches of the key set, 10-86400 (default 300)
    #[arg(
        long = S::JWKS_REFRESH_INTERVAL.flag,
        env = S::JWKS_REFRESH_INTERVAL.env,
        value_name = "SECONDS",
        hide_env_values = true
    )]
    pub jwks_refresh_interval: Option<f64>,
    /// Fetch the realm key set at start, then on schedule (default: at the first verification, then on schedule)
    #[arg(
        long = S::VERIFY_PREFETCH_KEYS.flag,
        env = S::VERIFY_PREFETCH_KEYS.env,
        hide_env_values = true
    )]
    pub verify_prefetch_keys: bool,
}

/// `verify`: one token on stdin.
#[derive(Debug, Args)]
pub struct VerifyTokenArgs {
    #[command(flatten)]
    pub iam: IamArgs,
    #[command(flatten)]
    pub verify: VerifyArgs,
    /// TOML file with the IAM and verify settings
    #[arg(long = S::CONFIG.flag, env = S::CONFIG.env, value_name = "PATH", hide_env_values = true)]
    pub config: Option<PathBuf>,
    /// Expected role of the sender: AA, FIU or FIP (comma-separated for several)
    #[arg(long, value_name = "ROLE")]
    pub role: Option<String>,
    /// Expected sender entity id (no environment fallback: AA_BROKER_ENTITY_ID is the broker's own id)
    #[arg(long = "entity-id", value_name = "ID", value_parser = EntityId::parse_arg)]
    pub entity_id: Option<EntityId>,
    #[command(flatten)]
    pub log: LogArgs,
}

/// Signing and signature verification (`/v1/sign`, `/v1/verify-signature`, `/v1/authorize`).
#[derive(Debug, Args, Default)]
pub struct JwsArgs {
    #[command(flatten)]
    pub key: SigningKeyArgs,
    /// Central Registry base URL; entity info is read at {base}/v2/entityInfo/{type}/{id} (default: the IAM's host, /cr)
    #[arg(
        long = S::CR_URL.flag,
        env = S::CR_URL.env,
        value_name = "URL",
        hide_env_values = true
    )]
    pub cr_url: Option<String>,
    /// Largest body signed or verified, bytes (default 16 MiB); larger ones get 413
    #[arg(
        long = S::MAX_BODY_BYTES.flag,
        env = S::MAX_BODY_BYTES.env,
        value_name = "BYTES",
        hide_env_values = true
    )]
    pub max_body_bytes: Option<usize>,
    /// Roles /v1/authorize accepts as callers, comma-separated (default: those that may call our own role: AA for an FIU or FIP, FIU and FIP for an AA)
    #[arg(
        long = S::AUTHORIZE_ROLES.flag,
        env = S::AUTHORIZE_ROLES.env,
        value_name = "ROLES",
        hide_env_values = true
    )]
    pub authorize_roles: Option<String>,
    /// ReBIT versions /v1/authorize/{path} accepts in `ver`, comma-separated (default 2.0.0,2.1.0); others are 404 NoSuchVersion
    #[arg(
        long = S::REBIT_VERSIONS.flag,
        env = S::REBIT_VERSIONS.env,
        value_name = "VERSIONS",
        hide_env_values = true
    )]
    pub rebit_versions: Option<String>,
    /// Seconds a request's `timestamp` may be from now on /v1/authorize/{path} (default 870: strictly inside 15 minutes)
    #[arg(
        long = S::REBIT_TIMESTAMP_WINDOW.flag,
        env = S::REBIT_TIMESTAMP_WINDOW.env,
        value_name = "SECONDS",
        hide_env_values = true
    )]
    pub rebit_timestamp_window: Option<f64>,
    /// A base path the proxy strips from the ReBIT paths it sends to /v1/authorize/{path} (a GET may be signed over the path with it)
    #[arg(
        long = S::AUTHORIZE_PATH_PREFIX.flag,
        env = S::AUTHORIZE_PATH_PREFIX.env,
        value_name = "PATH",
        hide_env_values = true
    )]
    pub authorize_path_prefix: Option<String>,
    /// Central Registry lookups a second that callers may cause, for all senders together (default 5); beyond the burst, a lookup that needs the CR is answered from the stale record held, or 503
    #[arg(
        long = S::CR_LOOKUP_RATE.flag,
        env = S::CR_LOOKUP_RATE.env,
        value_name = "PER_SECOND",
        hide_env_values = true
    )]
    pub cr_lookup_rate: Option<f64>,
    /// Central Registry lookups allowed at once before the rate applies (default 10)
    #[arg(
        long = S::CR_LOOKUP_BURST.flag,
        env = S::CR_LOOKUP_BURST.env,
        value_name = "N",
        hide_env_values = true
    )]
    pub cr_lookup_burst: Option<u32>,
    /// Seconds a peer's key replaced in the CR keeps verifying, 0-86400 (default 21600, the cache period; 0: not at all)
    #[arg(
        long = S::CR_PREVIOUS_KEY_GRACE.flag,
        env = S::CR_PREVIOUS_KEY_GRACE.env,
        value_name = "SECONDS",
        hide_env_values = true
    )]
    pub cr_previous_key_grace: Option<f64>,
}

/// FI data encryption (`/v1/fi/*`, rahasya's `/ecc/v1/*`, the `fi` command).
#[derive(Debug, Args, Default)]
pub struct FiArgs {
    /// The FI key-encryption key: 32 random bytes, raw or base64 (further lines: earlier keys that still unwrap); shared by every pod of the entity; re-read when it changes. Without it the FI routes answer 404 fi_disabled
    #[arg(
        long = S::FI_KEK_FILE.flag,
        env = S::FI_KEK_FILE.env,
        value_name = "PATH",
        hide_env_values = true
    )]
    pub fi_kek_file: Option<PathBuf>,
    /// Largest body of /v1/fi/* and /ecc/v1/*, bytes (default 23068672 = 22 MiB: 16 MiB of data in base64 with its key material); at most --max-buffered-bytes
    #[arg(
        long = S::FI_MAX_BODY_BYTES.flag,
        env = S::FI_MAX_BODY_BYTES.env,
        value_name = "BYTES",
        hide_env_values = true
    )]
    pub fi_max_body_bytes: Option<usize>,
}

/// `fi key-material|decrypt|encrypt`: the FI routes of a script, JSON on stdin and stdout.
#[derive(Debug, Args)]
pub struct FiCommandArgs {
    /// key-material, decrypt or encrypt (the same JSON as POST /v1/fi/OPERATION)
    #[arg(value_name = "OPERATION", value_parser = ["key-material", "decrypt", "encrypt"])]
    pub operation: String,
    #[command(flatten)]
    pub entity: EntityArgs,
    #[command(flatten)]
    pub fi: FiArgs,
    #[command(flatten)]
    pub log: LogArgs,
}

/// `sign`: one body on stdin, signed locally with the key file.
#[derive(Debug, Args)]
pub struct SignArgs {
    #[command(flatten)]
    pub key: SigningKeyArgs,
}

/// The entity's signing key: for the serving routes (`/v1/sign`, signed ReBIT errors) and the `sign`
/// command alike.
#[derive(Debug, Args, Default)]
pub struct SigningKeyArgs {
    /// The entity's private key for x-jws-signature: PKCS#8 PEM or a private RSA JWK; re-read when it changes
    #[arg(
        long = S::SIGNING_KEY_FILE.flag,
        env = S::SIGNING_KEY_FILE.env,
        value_name = "PATH",
        hide_env_values = true
    )]
    pub signing_key_file: Option<PathBuf>,
    /// The kid to sign under; must equal the kid registered in the CR (default: the JWK's kid)
    #[arg(
        long = S::SIGNING_KID.flag,
        env = S::SIGNING_KID.env,
        value_name = "KID",
        hide_env_values = true
    )]
    pub signing_kid: Option<String>,
}

/// `verify-signature`: one body on stdin, its signature in --signature, the sender's key from the CR
/// (read with this entity's token).
#[derive(Debug, Args)]
pub struct VerifySignatureArgs {
    #[command(flatten)]
    pub iam: IamArgs,
    #[command(flatten)]
    pub entity: EntityArgs,
    #[command(flatten)]
    pub jws: JwsArgs,
    /// The sender's entity id
    #[arg(long, value_name = "ID", value_parser = EntityId::parse_arg)]
    pub sender: EntityId,
    /// The sender's type: AA, FIU or FIP
    #[arg(long = "type", value_name = "TYPE")]
    pub kind: String,
    /// The x-jws-signature value received with the body
    #[arg(long, value_name = "VALUE")]
    pub signature: String,
    #[command(flatten)]
    pub log: LogArgs,
}
