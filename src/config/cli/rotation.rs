//! The command-line groups of the secret lifecycle: the admin user, rotation, and the `secret` and
//! `rotate` subcommands.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::super::settings as S;
use super::{EntityArgs, IamArgs, LogArgs};

#[derive(Debug, Subcommand)]
pub enum SecretCommand {
    /// Print the secret's expiry (and, only when asked, the secret).
    Read(SecretReadArgs),
    /// Reset the secret, store the new one in the sink, then print its expiry.
    Reset(SecretResetArgs),
    /// Print the fingerprint (sha256:xxxxxxxx) the broker logs and shows in /readyz for a secret, read
    /// from a file or stdin; no IAM, no credentials.
    Fingerprint(SecretFingerprintArgs),
}

/// `secret fingerprint [FILE|-]`.
#[derive(Debug, Args)]
pub struct SecretFingerprintArgs {
    /// The secret's file, or `-` (the default) for stdin, e.g. from
    /// `kubectl get secret NAME -o jsonpath='{.data.secret}' | base64 -d`
    #[arg(value_name = "FILE", default_value = "-")]
    pub file: PathBuf,
}

/// The entity's admin user.
#[derive(Debug, Args, Default)]
pub struct AdminArgs {
    /// Email of the entity's admin user
    #[arg(
        long = S::ADMIN_EMAIL.flag,
        env = S::ADMIN_EMAIL.env,
        value_name = "EMAIL",
        hide_env_values = true
    )]
    pub admin_email: Option<String>,
    /// File holding the admin password (or set AA_BROKER_ADMIN_PASSWORD)
    #[arg(
        long = S::ADMIN_PASSWORD_FILE.flag,
        env = S::ADMIN_PASSWORD_FILE.env,
        value_name = "PATH",
        hide_env_values = true
    )]
    pub admin_password_file: Option<PathBuf>,
}

/// When and where to rotate.
#[derive(Debug, Args, Default)]
pub struct RotationArgs {
    /// Rotate when fewer days than this remain (default 15)
    #[arg(
        long = S::ROTATE_BEFORE_DAYS.flag,
        env = S::ROTATE_BEFORE_DAYS.env,
        value_name = "DAYS",
        hide_env_values = true
    )]
    pub rotate_before_days: Option<f64>,
    /// Validity to ask for on reset, 1-180 days (default 180)
    #[arg(
        long = S::SECRET_EXPIRY_DAYS.flag,
        env = S::SECRET_EXPIRY_DAYS.env,
        value_name = "DAYS",
        hide_env_values = true
    )]
    pub secret_expiry_days: Option<u32>,
    /// Where a new secret goes: file:PATH, kubernetes-secret:NS/NAME[/KEY] or exec:COMMAND (default: the secret file)
    #[arg(
        long = S::SECRET_SINK.flag,
        env = S::SECRET_SINK.env,
        value_name = "SINK",
        hide_env_values = true
    )]
    pub secret_sink: Option<String>,
    /// Seconds between reads of the secret's expiry in serve (default 21600)
    #[arg(
        long = S::SECRET_CHECK_INTERVAL.flag,
        env = S::SECRET_CHECK_INTERVAL.env,
        value_name = "SECONDS",
        hide_env_values = true
    )]
    pub secret_check_interval: Option<f64>,
    /// Least time between two resets of one entity's secret, in seconds, kept across restarts (default 3600, at least 600)
    #[arg(
        long = S::MIN_RESET_INTERVAL.flag,
        env = S::MIN_RESET_INTERVAL.env,
        value_name = "SECONDS",
        hide_env_values = true
    )]
    pub min_reset_interval: Option<f64>,
    /// Directory for the reset records of exec: sinks (a file keeps its own beside it, a Kubernetes Secret on itself; default: $TMPDIR/aa-token-broker)
    #[arg(
        long = S::STATE_DIR.flag,
        env = S::STATE_DIR.env,
        value_name = "PATH",
        hide_env_values = true
    )]
    pub state_dir: Option<PathBuf>,
    /// A standby rotator (also --standby): converges on the primary's resets, resets only when fewer than --standby-reset-days remain
    #[arg(
        long = S::ROTATION_STANDBY.flag,
        visible_alias = "standby",
        env = S::ROTATION_STANDBY.env,
        hide_env_values = true
    )]
    pub rotation_standby: bool,
    /// A standby resets only when fewer days than this remain (default 3; never more than --rotate-before-days)
    #[arg(
        long = S::STANDBY_RESET_DAYS.flag,
        env = S::STANDBY_RESET_DAYS.env,
        value_name = "DAYS",
        hide_env_values = true
    )]
    pub standby_reset_days: Option<f64>,
    /// This site's name, recorded with each reset (default: the host name)
    #[arg(
        long = S::SITE.flag,
        env = S::SITE.env,
        value_name = "NAME",
        hide_env_values = true
    )]
    pub site: Option<String>,
    /// Kubernetes API server for a kubernetes-secret sink (default from KUBERNETES_SERVICE_HOST/PORT)
    #[arg(
        long = S::KUBE_API_URL.flag,
        env = S::KUBE_API_URL.env,
        value_name = "URL",
        hide_env_values = true
    )]
    pub kube_api_url: Option<String>,
    /// Bearer token file for the API server (default: the pod's service account token)
    #[arg(
        long = S::KUBE_TOKEN_FILE.flag,
        env = S::KUBE_TOKEN_FILE.env,
        value_name = "PATH",
        hide_env_values = true
    )]
    pub kube_token_file: Option<PathBuf>,
    /// CA bundle of the API server (default: the pod's service account CA)
    #[arg(
        long = S::KUBE_CA_FILE.flag,
        env = S::KUBE_CA_FILE.env,
        value_name = "PATH",
        hide_env_values = true
    )]
    pub kube_ca_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct SecretReadArgs {
    #[command(flatten)]
    pub iam: IamArgs,
    #[command(flatten)]
    pub entity: EntityArgs,
    #[command(flatten)]
    pub admin: AdminArgs,
    #[command(flatten)]
    pub log: LogArgs,
    /// Also print the secret itself on stdout
    #[arg(long)]
    pub show_secret: bool,
    /// Write the secret to this file (atomically, mode 0600)
    #[arg(long, value_name = "PATH")]
    pub output: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct SecretResetArgs {
    #[command(flatten)]
    pub iam: IamArgs,
    #[command(flatten)]
    pub entity: EntityArgs,
    #[command(flatten)]
    pub admin: AdminArgs,
    #[command(flatten)]
    pub rotation: RotationArgs,
    #[command(flatten)]
    pub log: LogArgs,
    /// Validity to ask for, 1-180 days (overrides --secret-expiry-days)
    #[arg(long, value_name = "DAYS")]
    pub expiry_days: Option<u32>,
}

#[derive(Debug, Args)]
pub struct RotateArgs {
    #[command(flatten)]
    pub iam: IamArgs,
    #[command(flatten)]
    pub entity: EntityArgs,
    #[command(flatten)]
    pub admin: AdminArgs,
    #[command(flatten)]
    pub rotation: RotationArgs,
    #[command(flatten)]
    pub log: LogArgs,
    /// Rotate even if the secret is not due
    #[arg(long)]
    pub force: bool,
}
