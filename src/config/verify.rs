//! The settings of incoming-token verification: the issuer allow-list, the key URL, the leeway, the key
//! refresh interval, whether keys are fetched at start, and the verify-only listener. Validated once, like every other setting; a mistake is
//! one line naming the setting (exit 2).

use super::settings;
use std::net::SocketAddr;
use std::time::Duration;

use super::cli::{IamArgs, ListenArgs, VerifyArgs, VerifyTokenArgs};
use super::file::{self, FileConfig};
use super::{ConfigError, resolve_iam_url};
use crate::iam::IamTimeouts;
use crate::inbound::policy::KeyPolicy;
use crate::inbound::{DEFAULT_LEEWAY, VerifySettings, default_issuers};

/// Largest leeway accepted: ten minutes is already generous for clocks kept by NTP.
const MAX_LEEWAY_SECS: f64 = 600.0;

/// Validates the verify settings; the defaults follow the IAM URL (see [`default_issuers`]).
pub fn verify_settings(
    args: &VerifyArgs,
    file: &FileConfig,
    iam_url: &str,
    timeouts: IamTimeouts,
) -> Result<VerifySettings, ConfigError> {
    let given = if args.verify_issuers.is_empty() {
        file.verify_issuers.clone().unwrap_or_default()
    } else {
        args.verify_issuers.clone()
    };
    let mut issuers = Vec::new();
    for raw in given {
        let issuer = raw.trim();
        if issuer.is_empty() {
            continue;
        }
        check_url(settings::VERIFY_ISSUER, issuer)?;
        if !issuers.iter().any(|i| i == issuer) {
            issuers.push(issuer.to_string());
        }
    }
    if issuers.is_empty() {
        issuers = default_issuers(iam_url);
    }
    if issuers.is_empty() {
        return Err(ConfigError::new(
            settings::VERIFY_ISSUER,
            format!("no issuer can be derived from the IAM URL {iam_url:?}; give --verify-issuer"),
        ));
    }
    let jwks_url = match args.jwks_url.as_deref().or(file.jwks_url.as_deref()) {
        Some(raw) => {
            let url = raw.trim();
            check_url(settings::JWKS_URL, url)?;
            Some(url.to_string())
        }
        None => None,
    };
    let leeway = match args.verify_leeway.or(file.verify_leeway) {
        None => DEFAULT_LEEWAY,
        Some(secs) if secs.is_finite() && (0.0..=MAX_LEEWAY_SECS).contains(&secs) => {
            Duration::from_secs_f64(secs)
        }
        Some(_) => {
            return Err(ConfigError::new(
                settings::VERIFY_LEEWAY,
                "must be a number of seconds between 0 and 600",
            ));
        }
    };
    let refresh_interval = match args.jwks_refresh_interval.or(file.jwks_refresh_interval) {
        None => KeyPolicy::default().refresh_interval,
        Some(secs) if secs.is_finite() && (10.0..=86_400.0).contains(&secs) => {
            Duration::from_secs_f64(secs)
        }
        Some(_) => {
            return Err(ConfigError::new(
                settings::JWKS_REFRESH_INTERVAL,
                "must be a number of seconds between 10 and 86400",
            ));
        }
    };
    Ok(VerifySettings {
        issuers,
        jwks_url,
        leeway,
        policy: KeyPolicy {
            refresh_interval,
            prefetch: args.verify_prefetch_keys || file.verify_prefetch_keys.unwrap_or(false),
            ..KeyPolicy::default()
        },
        timeouts,
    })
}

/// The settings of the `verify` command: the IAM (which gives the default issuers) is needed only when no
/// issuer is given.
pub fn verify_command_settings(args: &VerifyTokenArgs) -> Result<VerifySettings, ConfigError> {
    let file = match &args.config {
        Some(path) => file::load(path)?,
        None => FileConfig::default(),
    };
    let iam: &IamArgs = &args.iam;
    let issuers_given = !args.verify.verify_issuers.is_empty()
        || file.verify_issuers.as_ref().is_some_and(|i| !i.is_empty());
    let iam_url = match resolve_iam_url(
        iam.iam_url.as_deref().or(file.iam_url.as_deref()),
        iam.environment.as_deref().or(file.environment.as_deref()),
        iam.iam_url.is_some() || iam.environment.is_some(),
    ) {
        Ok(url) => url,
        Err(_) if issuers_given => String::new(),
        Err(e) => return Err(e),
    };
    let timeouts = super::iam_timeouts(iam, &file)?;
    verify_settings(&args.verify, &file, &iam_url, timeouts)
}

/// The verify-only listener, from the flag or the file.
pub fn verify_listen(
    listen: &ListenArgs,
    file: &FileConfig,
) -> Result<Option<SocketAddr>, ConfigError> {
    match (listen.verify_listen, &file.verify_listen) {
        (Some(addr), _) => Ok(Some(addr)),
        (None, Some(raw)) => raw.trim().parse().map(Some).map_err(|_| {
            ConfigError::new(
                "verify_listen (in --config)",
                format!("{raw:?} is not an address like 0.0.0.0:7374"),
            )
        }),
        (None, None) => Ok(None),
    }
}

/// An http(s) URL with a host and no credentials, query or fragment. Issuers are compared with `iss`
/// exactly, so the text is kept as given.
fn check_url(setting: impl std::fmt::Display + Copy, raw: &str) -> Result<(), ConfigError> {
    let url = reqwest::Url::parse(raw)
        .map_err(|e| ConfigError::new(setting, format!("{raw:?} is not a URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(ConfigError::new(
            setting,
            format!("{raw:?}: the scheme must be https (or http for a local simulator)"),
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(ConfigError::new(setting, format!("{raw:?} has no host")));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(ConfigError::new(
            setting,
            "the URL must not carry credentials",
        ));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(ConfigError::new(
            setting,
            format!("{raw:?} must not have a query or fragment"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(args: VerifyArgs) -> Result<VerifySettings, ConfigError> {
        verify_settings(
            &args,
            &FileConfig::default(),
            "https://api.sandbox.sahamati.org.in/iam",
            IamTimeouts::default(),
        )
    }

    #[test]
    fn defaults_follow_the_environment_and_flags_replace_them() {
        let defaults = settings(VerifyArgs::default()).unwrap();
        assert_eq!(defaults.issuers.len(), 2);
        assert_eq!(defaults.leeway, Duration::from_secs(60));
        assert_eq!(defaults.jwks_url, None);
        let given = settings(VerifyArgs {
            verify_issuers: vec![
                " https://kc.example/auth/realms/sahamati ".into(),
                "https://kc.example/auth/realms/sahamati".into(),
                String::new(),
            ],
            jwks_url: Some("https://kc.example/certs".into()),
            verify_leeway: Some(0.0),
            jwks_refresh_interval: Some(60.0),
            verify_prefetch_keys: true,
        })
        .unwrap();
        assert_eq!(given.issuers, ["https://kc.example/auth/realms/sahamati"]);
        assert_eq!(given.jwks_url.as_deref(), Some("https://kc.example/certs"));
        assert_eq!(given.leeway, Duration::ZERO);
        assert_eq!(given.policy.refresh_interval, Duration::from_secs(60));
        assert!(given.policy.prefetch);
        assert!(!defaults.policy.prefetch, "keys are fetched at first use");
    }

    #[test]
    fn mistakes_name_the_setting() {
        let cases = [
            (
                VerifyArgs {
                    verify_issuers: vec!["ftp://x/realm".into()],
                    ..VerifyArgs::default()
                },
                settings::VERIFY_ISSUER,
            ),
            (
                VerifyArgs {
                    verify_issuers: vec!["not a url".into()],
                    ..VerifyArgs::default()
                },
                settings::VERIFY_ISSUER,
            ),
            (
                VerifyArgs {
                    jwks_url: Some("https://u:p@kc.example/certs".into()),
                    ..VerifyArgs::default()
                },
                settings::JWKS_URL,
            ),
            (
                VerifyArgs {
                    verify_leeway: Some(-1.0),
                    ..VerifyArgs::default()
                },
                settings::VERIFY_LEEWAY,
            ),
            (
                VerifyArgs {
                    verify_leeway: Some(f64::NAN),
                    ..VerifyArgs::default()
                },
                settings::VERIFY_LEEWAY,
            ),
            (
                VerifyArgs {
                    jwks_refresh_interval: Some(1.0),
                    ..VerifyArgs::default()
                },
                settings::JWKS_REFRESH_INTERVAL,
            ),
        ];
        for (args, setting) in cases {
            let err = settings(args).unwrap_err();
            assert_eq!(err.setting, setting.to_string());
            assert!(!err.to_string().contains('\n'));
        }
    }
}
