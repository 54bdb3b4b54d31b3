//! Every setting's names, defined once: the flag, the environment variable and the key in the `--config`
//! file. clap's attributes ([`super::cli`]), the file's keys ([`super::file`]), every configuration error
//! and the README's settings table all use these; a test checks each against the others.

use std::fmt;

/// The names of one setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setting {
    /// The long flag, without `--`.
    pub flag: &'static str,
    /// The environment variable clap falls back to.
    pub env: &'static str,
    /// The key in the `--config` file (`entities[].…` for one of an entity's keys), when it has one.
    pub key: Option<&'static str>,
}

impl fmt::Display for Setting {
    /// `--flag (VARIABLE)`: how configuration errors name a setting.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "--{} ({})", self.flag, self.env)
    }
}

const fn setting(flag: &'static str, env: &'static str, key: Option<&'static str>) -> Setting {
    Setting { flag, env, key }
}

pub const ADMIN_EMAIL: Setting =
    setting("admin-email", "AA_BROKER_ADMIN_EMAIL", Some("admin_email"));
pub const ADMIN_LISTEN: Setting = setting(
    "admin-listen",
    "AA_BROKER_ADMIN_LISTEN",
    Some("admin_listen"),
);
pub const ADMIN_PASSWORD_FILE: Setting = setting(
    "admin-password-file",
    "AA_BROKER_ADMIN_PASSWORD_FILE",
    Some("admin_password_file"),
);
pub const ALLOW_HOST: Setting =
    setting("allow-host", "AA_BROKER_ALLOW_HOSTS", Some("allowed_hosts"));
pub const ALLOW_PLAIN_HTTP: Setting =
    setting("allow-plain-http", "AA_BROKER_ALLOW_PLAIN_HTTP", None);
pub const CONFIG: Setting = setting("config", "AA_BROKER_CONFIG", None);
pub const ENTITY_ID: Setting = setting("entity-id", "AA_BROKER_ENTITY_ID", Some("entities[].id"));
pub const ENVIRONMENT: Setting =
    setting("environment", "AA_BROKER_ENVIRONMENT", Some("environment"));
pub const IAM_CONNECT_TIMEOUT: Setting = setting(
    "iam-connect-timeout",
    "AA_BROKER_IAM_CONNECT_TIMEOUT",
    Some("iam_connect_timeout"),
);
pub const IAM_TIMEOUT: Setting =
    setting("iam-timeout", "AA_BROKER_IAM_TIMEOUT", Some("iam_timeout"));
pub const IAM_URL: Setting = setting("iam-url", "AA_BROKER_IAM_URL", Some("iam_url"));
pub const JWKS_REFRESH_INTERVAL: Setting = setting(
    "jwks-refresh-interval",
    "AA_BROKER_JWKS_REFRESH_INTERVAL",
    Some("jwks_refresh_interval"),
);
pub const JWKS_URL: Setting = setting("jwks-url", "AA_BROKER_JWKS_URL", Some("jwks_url"));
pub const KUBE_API_URL: Setting = setting("kube-api-url", "AA_BROKER_KUBE_API_URL", None);
pub const KUBE_CA_FILE: Setting = setting("kube-ca-file", "AA_BROKER_KUBE_CA_FILE", None);
pub const KUBE_TOKEN_FILE: Setting = setting("kube-token-file", "AA_BROKER_KUBE_TOKEN_FILE", None);
pub const LISTEN: Setting = setting("listen", "AA_BROKER_LISTEN", Some("listen"));
pub const LOG_FORMAT: Setting = setting("log-format", "AA_BROKER_LOG_FORMAT", None);
pub const LOG_LEVEL: Setting = setting("log-level", "AA_BROKER_LOG", None);
pub const MAX_CONNECTIONS: Setting = setting(
    "max-connections",
    "AA_BROKER_MAX_CONNECTIONS",
    Some("max_connections"),
);
pub const MAX_REQUESTS_PER_CONNECTION: Setting = setting(
    "max-requests-per-connection",
    "AA_BROKER_MAX_REQUESTS_PER_CONNECTION",
    Some("max_requests_per_connection"),
);
pub const MIN_RESET_INTERVAL: Setting = setting(
    "min-reset-interval",
    "AA_BROKER_MIN_RESET_INTERVAL",
    Some("min_reset_interval"),
);
pub const NO_METADATA_HEADER: Setting = setting(
    "no-metadata-header",
    "AA_BROKER_NO_METADATA_HEADER",
    Some("require_metadata_header"),
);
pub const ROTATE_BEFORE_DAYS: Setting = setting(
    "rotate-before-days",
    "AA_BROKER_ROTATE_BEFORE_DAYS",
    Some("rotate_before_days"),
);
pub const SECRET_CHECK_INTERVAL: Setting = setting(
    "secret-check-interval",
    "AA_BROKER_SECRET_CHECK_INTERVAL",
    Some("secret_check_interval"),
);
pub const SECRET_EXPIRY_DAYS: Setting = setting(
    "secret-expiry-days",
    "AA_BROKER_SECRET_EXPIRY_DAYS",
    Some("secret_expiry_days"),
);
pub const SECRET_FILE: Setting = setting(
    "secret-file",
    "AA_BROKER_SECRET_FILE",
    Some("entities[].secret_file"),
);
pub const SECRET_SINK: Setting = setting(
    "secret-sink",
    "AA_BROKER_SECRET_SINK",
    Some("entities[].secret_sink"),
);
pub const ROTATION_STANDBY: Setting = setting(
    "rotation-standby",
    "AA_BROKER_ROTATION_STANDBY",
    Some("rotation_standby"),
);
pub const STANDBY_RESET_DAYS: Setting = setting(
    "standby-reset-days",
    "AA_BROKER_STANDBY_RESET_DAYS",
    Some("standby_reset_days"),
);
pub const SITE: Setting = setting("site", "AA_BROKER_SITE", Some("site"));
pub const SHUTDOWN_GRACE: Setting = setting(
    "shutdown-grace",
    "AA_BROKER_SHUTDOWN_GRACE",
    Some("shutdown_grace"),
);
pub const STATE_DIR: Setting = setting("state-dir", "AA_BROKER_STATE_DIR", Some("state_dir"));
pub const VERIFY_ISSUER: Setting = setting(
    "verify-issuer",
    "AA_BROKER_VERIFY_ISSUERS",
    Some("verify_issuers"),
);
pub const VERIFY_LEEWAY: Setting = setting(
    "verify-leeway",
    "AA_BROKER_VERIFY_LEEWAY",
    Some("verify_leeway"),
);
pub const VERIFY_PREFETCH_KEYS: Setting = setting(
    "verify-prefetch-keys",
    "AA_BROKER_VERIFY_PREFETCH_KEYS",
    Some("verify_prefetch_keys"),
);
pub const VERIFY_LISTEN: Setting = setting(
    "verify-listen",
    "AA_BROKER_VERIFY_LISTEN",
    Some("verify_listen"),
);
pub const WORKER_THREADS: Setting = setting(
    "worker-threads",
    "AA_BROKER_WORKER_THREADS",
    Some("worker_threads"),
);
pub const MAX_BUFFERED_BYTES: Setting = setting(
    "max-buffered-bytes",
    "AA_BROKER_MAX_BUFFERED_BYTES",
    Some("max_buffered_bytes"),
);
pub const BODY_TIMEOUT: Setting = setting(
    "body-timeout",
    "AA_BROKER_BODY_TIMEOUT",
    Some("body_timeout"),
);
pub const CRYPTO_THREADS: Setting = setting(
    "crypto-threads",
    "AA_BROKER_CRYPTO_THREADS",
    Some("crypto_threads"),
);
pub const CRYPTO_QUEUE: Setting = setting(
    "crypto-queue",
    "AA_BROKER_CRYPTO_QUEUE",
    Some("crypto_queue"),
);
pub const WRITE_TIMEOUT: Setting = setting(
    "write-timeout",
    "AA_BROKER_WRITE_TIMEOUT",
    Some("write_timeout"),
);

/// The simulator's own listen address (`iam-simulator`); it has no file key.
pub const SIMULATOR_LISTEN: Setting = setting("listen", "AA_SIMULATOR_LISTEN", None);

/// Every setting, for the checks that keep the names, the file and the README in step.
pub const SIGNING_KEY_FILE: Setting = setting(
    "signing-key-file",
    "AA_BROKER_SIGNING_KEY_FILE",
    Some("entities[].signing_key_file"),
);
pub const SIGNING_KID: Setting = setting(
    "signing-kid",
    "AA_BROKER_SIGNING_KID",
    Some("entities[].signing_kid"),
);
pub const CR_URL: Setting = setting("cr-url", "AA_BROKER_CR_URL", Some("cr_url"));
pub const AUTHORIZE_ROLES: Setting = setting(
    "authorize-roles",
    "AA_BROKER_AUTHORIZE_ROLES",
    Some("authorize_roles"),
);
pub const REBIT_VERSIONS: Setting = setting(
    "rebit-versions",
    "AA_BROKER_REBIT_VERSIONS",
    Some("rebit_versions"),
);
pub const REBIT_TIMESTAMP_WINDOW: Setting = setting(
    "rebit-timestamp-window",
    "AA_BROKER_REBIT_TIMESTAMP_WINDOW",
    Some("rebit_timestamp_window"),
);
pub const AUTHORIZE_PATH_PREFIX: Setting = setting(
    "authorize-path-prefix",
    "AA_BROKER_AUTHORIZE_PATH_PREFIX",
    Some("authorize_path_prefix"),
);
pub const MAX_BODY_BYTES: Setting = setting(
    "max-body-bytes",
    "AA_BROKER_MAX_BODY_BYTES",
    Some("max_body_bytes"),
);
pub const CR_LOOKUP_RATE: Setting = setting(
    "cr-lookup-rate",
    "AA_BROKER_CR_LOOKUP_RATE",
    Some("cr_lookup_rate"),
);
pub const CR_LOOKUP_BURST: Setting = setting(
    "cr-lookup-burst",
    "AA_BROKER_CR_LOOKUP_BURST",
    Some("cr_lookup_burst"),
);
pub const CR_PREVIOUS_KEY_GRACE: Setting = setting(
    "cr-previous-key-grace",
    "AA_BROKER_CR_PREVIOUS_KEY_GRACE",
    Some("cr_previous_key_grace"),
);

pub const FI_KEK_FILE: Setting = setting(
    "fi-kek-file",
    "AA_BROKER_FI_KEK_FILE",
    Some("entities[].fi_kek_file"),
);
pub const FI_MAX_BODY_BYTES: Setting = setting(
    "fi-max-body-bytes",
    "AA_BROKER_FI_MAX_BODY_BYTES",
    Some("fi_max_body_bytes"),
);

pub const ALL: &[Setting] = &[
    SIMULATOR_LISTEN,
    FI_KEK_FILE,
    FI_MAX_BODY_BYTES,
    SIGNING_KEY_FILE,
    SIGNING_KID,
    CR_URL,
    AUTHORIZE_ROLES,
    REBIT_VERSIONS,
    REBIT_TIMESTAMP_WINDOW,
    AUTHORIZE_PATH_PREFIX,
    MAX_BODY_BYTES,
    CR_LOOKUP_RATE,
    CR_LOOKUP_BURST,
    CR_PREVIOUS_KEY_GRACE,
    ADMIN_EMAIL,
    ADMIN_LISTEN,
    ADMIN_PASSWORD_FILE,
    ALLOW_HOST,
    ALLOW_PLAIN_HTTP,
    CONFIG,
    ENTITY_ID,
    ENVIRONMENT,
    IAM_CONNECT_TIMEOUT,
    IAM_TIMEOUT,
    IAM_URL,
    JWKS_REFRESH_INTERVAL,
    JWKS_URL,
    KUBE_API_URL,
    KUBE_CA_FILE,
    KUBE_TOKEN_FILE,
    LISTEN,
    LOG_FORMAT,
    LOG_LEVEL,
    MAX_CONNECTIONS,
    MAX_REQUESTS_PER_CONNECTION,
    MIN_RESET_INTERVAL,
    NO_METADATA_HEADER,
    ROTATE_BEFORE_DAYS,
    ROTATION_STANDBY,
    STANDBY_RESET_DAYS,
    SITE,
    SECRET_CHECK_INTERVAL,
    SECRET_EXPIRY_DAYS,
    SECRET_FILE,
    SECRET_SINK,
    SHUTDOWN_GRACE,
    STATE_DIR,
    VERIFY_ISSUER,
    VERIFY_LEEWAY,
    VERIFY_LISTEN,
    VERIFY_PREFETCH_KEYS,
    WORKER_THREADS,
    WRITE_TIMEOUT,
    MAX_BUFFERED_BYTES,
    BODY_TIMEOUT,
    CRYPTO_THREADS,
    CRYPTO_QUEUE,
];

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// Every flag with a variable that some subcommand takes: (flag, variable).
    fn clap_settings() -> Vec<(String, String)> {
        fn walk(command: &clap::Command, out: &mut Vec<(String, String)>) {
            for arg in command.get_arguments() {
                if let (Some(long), Some(env)) = (arg.get_long(), arg.get_env()) {
                    out.push((long.to_string(), env.to_string_lossy().into_owned()));
                }
            }
            for sub in command.get_subcommands() {
                walk(sub, out);
            }
        }
        let mut out = Vec::new();
        walk(&crate::config::cli::Cli::command(), &mut out);
        out
    }

    #[test]
    fn every_flag_with_a_variable_is_defined_here_and_every_setting_is_a_flag() {
        let taken = clap_settings();
        for (flag, env) in &taken {
            assert!(
                ALL.iter().any(|s| s.flag == flag && s.env == env),
                "--{flag} ({env}) is not in config::settings"
            );
        }
        for setting in ALL {
            assert!(
                taken
                    .iter()
                    .any(|(flag, env)| flag == setting.flag && env == setting.env),
                "{setting} is defined but no subcommand takes it"
            );
        }
    }

    #[test]
    fn every_file_key_is_a_key_of_the_file() {
        for setting in ALL {
            let Some(key) = setting.key else { continue };
            let text = match key.strip_prefix("entities[].") {
                Some(entity_key) => format!("[[entities]]\n{entity_key} = {{}}\n"),
                None => format!("{key} = {{}}\n"),
            };
            // A value of the wrong type: a known key complains about the type, an unknown one about itself.
            let error = crate::config::file::parse(&text).unwrap_err().to_string();
            assert!(
                !error.contains("unknown field"),
                "{setting}: `{key}` is not a key of the file: {error}"
            );
        }
    }

    #[test]
    fn the_readmes_list_of_file_keys_is_every_file_key() {
        let readme = include_str!("../../README.md");
        let start = readme
            .find("File keys (every one")
            .expect("the README lists the file keys");
        let paragraph = &readme[start..];
        let paragraph = &paragraph[..paragraph.find("\n\n").unwrap_or(paragraph.len())];
        // The backticked words before the settings without a key.
        let listed = &paragraph[..paragraph
            .find("The settings without a key")
            .unwrap_or(paragraph.len())];
        let mut in_readme: Vec<&str> = listed
            .split('`')
            .skip(1)
            .step_by(2)
            .filter(|word| *word != "[[entities]]" && !word.starts_with("--"))
            .collect();
        let mut keys: Vec<&str> = ALL
            .iter()
            .filter_map(|s| s.key)
            .map(|k| k.trim_start_matches("entities[]."))
            .collect();
        in_readme.sort_unstable();
        keys.sort_unstable();
        keys.dedup();
        assert_eq!(
            in_readme, keys,
            "the README's file keys and config::settings differ"
        );
    }

    #[test]
    fn the_readme_table_lists_every_setting_by_its_names() {
        let readme = include_str!("../../README.md");
        let rows: Vec<(String, String)> = readme
            .lines()
            .filter(|line| line.starts_with("| `--"))
            .filter_map(|line| {
                // `\|` is a pipe inside a cell (`text\|json`), not a column.
                let line = line.replace("\\|", "/");
                let cells: Vec<&str> = line.split('|').map(str::trim).collect();
                let flag = cells.get(1)?.trim_matches('`').split([' ', '`']).next()?;
                let env = cells.get(2)?.trim_matches('`').split([' ', '`']).next()?;
                Some((flag.trim_start_matches("--").to_string(), env.to_string()))
            })
            .collect();
        for (flag, env) in &rows {
            assert!(
                ALL.iter().any(|s| s.flag == flag && s.env == env),
                "the README lists --{flag} ({env}), which config::settings does not define"
            );
        }
        for setting in ALL.iter().filter(|s| **s != SIMULATOR_LISTEN) {
            assert!(
                rows.iter()
                    .any(|(flag, env)| flag == setting.flag && env == setting.env),
                "the README's settings table lacks {setting}"
            );
        }
    }
}
