//! The admin and rotation settings: the admin user's credentials, the rotation threshold and validity,
//! where new secrets go, and how to reach the Kubernetes API server when a Secret is the sink.

use super::settings;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use secrecy::SecretString;

use super::cli::{AdminArgs, EntityArgs, IamArgs, LogArgs, RotationArgs};
use super::{Common, ConfigError, EnvSecrets, LogSettings, common, file, log_settings};
use crate::entity::{EntityId, SecretSource, read_secret_file};
use crate::iam::IamTimeouts;
use crate::secret::policy::sites::DEFAULT_STANDBY_RESET_WITHIN;
use crate::secret::policy::{DEFAULT_MIN_RESET_INTERVAL, MIN_RESET_INTERVAL_FLOOR};
use crate::secret::sink::{SERVICE_ACCOUNT_CA, SERVICE_ACCOUNT_TOKEN};
use crate::secret::{AdminCredentials, KubeAccess, Role, RotationSettings, SinkSpec};

/// The variable that may hold the admin password when no file is given.
pub const ENV_ADMIN_PASSWORD: &str = "AA_BROKER_ADMIN_PASSWORD";

/// Rotation settings, or `None` when no admin user is configured (rotation off).
pub fn rotation_settings(
    admin: &AdminArgs,
    rotation: &RotationArgs,
    file: &file::FileConfig,
    env: &EnvSecrets,
    sinks: &[&SinkSpec],
) -> Result<Option<RotationSettings>, ConfigError> {
    let email = admin
        .admin_email
        .clone()
        .or_else(|| file.admin_email.clone());
    let password_file = admin
        .admin_password_file
        .clone()
        .or_else(|| file.admin_password_file.clone());
    let standby = rotation.rotation_standby || file.rotation_standby.unwrap_or(false);
    let Some(email) = email.map(|e| e.trim().to_string()) else {
        if standby {
            // A standby's whole job is to read the IAM's current secret; without the admin user it cannot.
            return Err(ConfigError::new(
                settings::ROTATION_STANDBY,
                "a standby reads the IAM's current secret, which needs the admin user (--admin-email and its password); without admin credentials run one rotator that writes a shared store (e.g. External Secrets) and have every site read from it",
            ));
        }
        if password_file.is_some() {
            return Err(ConfigError::new(
                settings::ADMIN_EMAIL,
                "an admin password is given but no admin email",
            ));
        }
        return Ok(None);
    };
    if email.is_empty() || !email.contains('@') || email.len() > 254 {
        return Err(ConfigError::new(
            settings::ADMIN_EMAIL,
            "not an email address",
        ));
    }
    let password = match (password_file, &env.admin_password) {
        (Some(path), _) => {
            read_secret_file(&path)
                .map_err(|e| ConfigError::new(settings::ADMIN_PASSWORD_FILE, e.to_string()))?;
            SecretSource::File(path)
        }
        (None, Some(password)) => SecretSource::Inline(Arc::new(password.clone())),
        (None, None) => {
            return Err(ConfigError::new(
                settings::ADMIN_PASSWORD_FILE,
                format!(
                    "the admin user needs a password: give --admin-password-file or set {ENV_ADMIN_PASSWORD}"
                ),
            ));
        }
    };
    let days = rotation
        .rotate_before_days
        .or(file.rotate_before_days)
        .unwrap_or(15.0);
    let expiry_days = rotation
        .secret_expiry_days
        .or(file.secret_expiry_days)
        .unwrap_or(180);
    if !(1..=180).contains(&expiry_days) {
        return Err(ConfigError::new(
            settings::SECRET_EXPIRY_DAYS,
            "must be between 1 and 180",
        ));
    }
    if !(days.is_finite() && days > 0.0 && days < f64::from(expiry_days)) {
        return Err(ConfigError::new(
            settings::ROTATE_BEFORE_DAYS,
            format!("must be more than 0 and less than the secret's validity ({expiry_days} days)"),
        ));
    }
    let check_interval = match rotation
        .secret_check_interval
        .or(file.secret_check_interval)
    {
        Some(secs) if secs.is_finite() && (1.0..=7.0 * 86_400.0).contains(&secs) => {
            Duration::from_secs_f64(secs)
        }
        Some(_) => {
            return Err(ConfigError::new(
                settings::SECRET_CHECK_INTERVAL,
                "must be between 1 second and 7 days",
            ));
        }
        None => Duration::from_secs(6 * 3600),
    };
    let kube = if sinks
        .iter()
        .any(|s| matches!(s, SinkSpec::KubernetesSecret { .. }))
    {
        Some(kube_access(rotation)?)
    } else {
        None
    };
    let floor = MIN_RESET_INTERVAL_FLOOR.as_secs_f64();
    let min_reset_interval = match rotation.min_reset_interval.or(file.min_reset_interval) {
        Some(secs) if secs.is_finite() && (floor..=30.0 * 86_400.0).contains(&secs) => {
            Duration::from_secs_f64(secs)
        }
        Some(_) => {
            return Err(ConfigError::new(
                settings::MIN_RESET_INTERVAL,
                format!("must be between {floor} seconds (10 minutes) and 30 days"),
            ));
        }
        None => DEFAULT_MIN_RESET_INTERVAL,
    };
    let state_dir = rotation
        .state_dir
        .clone()
        .or_else(|| file.state_dir.clone())
        .unwrap_or_else(|| std::env::temp_dir().join("aa-token-broker"));
    let reset_within = match rotation.standby_reset_days.or(file.standby_reset_days) {
        Some(days) if days.is_finite() && days > 0.0 && days < f64::from(expiry_days) => {
            Duration::from_secs_f64(days * 86_400.0)
        }
        Some(_) => {
            return Err(ConfigError::new(
                settings::STANDBY_RESET_DAYS,
                format!(
                    "must be more than 0 and less than the secret's validity ({expiry_days} days)"
                ),
            ));
        }
        None => DEFAULT_STANDBY_RESET_WITHIN,
    };
    let role = if standby {
        Role::Standby { reset_within }
    } else {
        Role::Primary
    };
    let site = match rotation.site.as_deref().or(file.site.as_deref()) {
        Some(name) if valid_site(name.trim()) => name.trim().to_string(),
        Some(_) => {
            return Err(ConfigError::new(
                settings::SITE,
                "must be 1 to 63 letters, digits, '.', '_' or '-'",
            ));
        }
        None => host_name(),
    };
    Ok(Some(RotationSettings {
        role,
        site,
        min_reset_interval,
        state_dir,
        admin: AdminCredentials { email, password },
        rotate_before: Duration::from_secs_f64(days * 86_400.0),
        expiry_days,
        check_interval,
        kube,
    }))
}

/// A site name: what may stand in a reset record and a log line without quoting.
fn valid_site(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// The default site name: the host name (a pod's name in Kubernetes), cut to what a site name may hold.
fn host_name() -> String {
    let raw = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_default();
    let name: String = raw
        .trim()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        .take(63)
        .collect();
    if name.is_empty() {
        "unnamed".into()
    } else {
        name
    }
}

/// The sink for an entity: the explicit one, else its secret file.
pub fn sink_for(
    explicit: Option<&str>,
    setting: impl std::fmt::Display + Copy,
    secret_file: Option<&Path>,
) -> Result<Option<SinkSpec>, ConfigError> {
    match (explicit, secret_file) {
        (Some(raw), _) => SinkSpec::parse(raw)
            .map(Some)
            .map_err(|e| ConfigError::new(setting, e)),
        (None, Some(path)) => Ok(Some(SinkSpec::File(path.to_path_buf()))),
        (None, None) => Ok(None),
    }
}

fn kube_access(rotation: &RotationArgs) -> Result<KubeAccess, ConfigError> {
    let api_url = match &rotation.kube_api_url {
        Some(url) => url.trim().trim_end_matches('/').to_string(),
        None => {
            let host = std::env::var("KUBERNETES_SERVICE_HOST")
                .ok()
                .filter(|h| !h.is_empty());
            let port = std::env::var("KUBERNETES_SERVICE_PORT")
                .ok()
                .filter(|p| !p.is_empty());
            match (host, port) {
                (Some(host), port) if host.contains(':') => {
                    format!("https://[{host}]:{}", port.unwrap_or_else(|| "443".into()))
                }
                (Some(host), port) => {
                    format!("https://{host}:{}", port.unwrap_or_else(|| "443".into()))
                }
                (None, _) => {
                    return Err(ConfigError::new(
                        settings::KUBE_API_URL,
                        "a kubernetes-secret sink needs the API server; not in a pod (no KUBERNETES_SERVICE_HOST), so give --kube-api-url",
                    ));
                }
            }
        }
    };
    let parsed = reqwest::Url::parse(&api_url).map_err(|e| {
        ConfigError::new(
            settings::KUBE_API_URL,
            format!("{api_url:?} is not a URL: {e}"),
        )
    })?;
    let loopback = crate::upstream::http::is_loopback_url(&parsed);
    if !(parsed.scheme() == "https" || (parsed.scheme() == "http" && loopback)) {
        return Err(ConfigError::new(
            settings::KUBE_API_URL,
            "the scheme must be https (plain http only for a loopback address, e.g. kubectl proxy)",
        ));
    }
    let token_file = rotation
        .kube_token_file
        .clone()
        .unwrap_or_else(|| PathBuf::from(SERVICE_ACCOUNT_TOKEN));
    let ca_file = match &rotation.kube_ca_file {
        Some(path) => Some(path.clone()),
        None => Some(PathBuf::from(SERVICE_ACCOUNT_CA)).filter(|p| p.exists()),
    };
    Ok(KubeAccess {
        api_url,
        token_file,
        ca_file,
    })
}

/// Everything the `secret` and `rotate` commands need, validated. The entity secret itself need not be
/// readable: recovering a lost one is one of the things these commands are for.
#[derive(Debug, Clone)]
pub struct AdminContext {
    pub iam_url: String,
    pub iam_timeouts: IamTimeouts,
    pub entity: EntityId,
    /// Where the new secret goes (`reset`, `rotate`); `None` when there is nowhere (then those refuse).
    pub sink: Option<SinkSpec>,
    /// The entity's secret file, when one is named: what `rotate` compares with the IAM when the sink
    /// cannot be read back (`exec:`).
    pub secret_file: Option<PathBuf>,
    pub rotation: RotationSettings,
    pub log: LogSettings,
}

/// Validates the settings of `secret read`, `secret reset` and `rotate`.
pub fn admin_context(
    iam: &IamArgs,
    entity: &EntityArgs,
    admin: &AdminArgs,
    rotation: &RotationArgs,
    log: &LogArgs,
    env: &EnvSecrets,
) -> Result<AdminContext, ConfigError> {
    let log = log_settings(log)?;
    let Common {
        file,
        iam_url,
        iam_timeouts,
    } = common(iam, entity)?;
    // The entity: --entity-id, or the only one in the file.
    let listed = |id: &EntityId| file.entities.iter().find(|e| e.id == id.as_str());
    let entity_id = match (&entity.entity_id, file.entities.as_slice()) {
        (Some(id), _) => id.clone(),
        (None, [only]) => EntityId::parse(&only.id)
            .map_err(|e| ConfigError::new("entities[0].id (in --config)", e))?,
        (None, _) => {
            return Err(ConfigError::new(
                settings::ENTITY_ID,
                "name the entity with --entity-id",
            ));
        }
    };
    let from_file = listed(&entity_id);
    let secret_file = entity
        .secret_file
        .clone()
        .or_else(|| from_file.map(|e| e.secret_file.clone()));
    let explicit_sink = rotation
        .secret_sink
        .clone()
        .or_else(|| from_file.and_then(|e| e.secret_sink.clone()));
    let sink = sink_for(
        explicit_sink.as_deref(),
        settings::SECRET_SINK,
        secret_file.as_deref(),
    )?;
    let sinks: Vec<&SinkSpec> = sink.iter().collect();
    let rotation = rotation_settings(admin, rotation, &file, env, &sinks)?.ok_or_else(|| {
        ConfigError::new(
            settings::ADMIN_EMAIL,
            "the admin user's email is required for this command",
        )
    })?;
    Ok(AdminContext {
        iam_url,
        iam_timeouts,
        entity: entity_id,
        sink,
        secret_file,
        rotation,
        log,
    })
}

/// Reads the process's secret variables once.
pub fn env_secrets() -> EnvSecrets {
    let read = |name: &str| {
        std::env::var(name)
            .ok()
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
            .map(SecretString::from)
    };
    EnvSecrets {
        entity_secret: read(super::ENV_ENTITY_SECRET),
        admin_password: read(ENV_ADMIN_PASSWORD),
    }
}
