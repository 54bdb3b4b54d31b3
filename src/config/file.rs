//! The TOML configuration file (`--config`). It can hold every setting and, above all, several entities:
//!
//! ```toml
//! environment = "sandbox"          # or iam_url = "https://…/iam"
//! listen = "127.0.0.1:7373"
//!
//! [[entities]]
//! id = "FIU-ONE"
//! secret_file = "/var/run/secrets/fiu-one/secret"
//!
//! [[entities]]
//! id = "FIU-TWO"
//! secret_file = "/var/run/secrets/fiu-two/secret"
//! ```
//!
//! Unknown keys are errors, so a typo cannot silently fall back to a default.

use super::settings;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::ConfigError;

/// Largest config file read.
const MAX_CONFIG_BYTES: u64 = 1024 * 1024;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub iam_url: Option<String>,
    pub environment: Option<String>,
    pub iam_connect_timeout: Option<f64>,
    pub iam_timeout: Option<f64>,
    pub listen: Option<String>,
    pub admin_listen: Option<String>,
    pub allowed_hosts: Option<Vec<String>>,
    pub require_metadata_header: Option<bool>,
    pub max_connections: Option<usize>,
    pub worker_threads: Option<usize>,
    pub shutdown_grace: Option<f64>,
    pub write_timeout: Option<f64>,
    pub max_requests_per_connection: Option<u32>,
    pub max_buffered_bytes: Option<usize>,
    pub body_timeout: Option<f64>,
    pub crypto_threads: Option<usize>,
    pub crypto_queue: Option<usize>,
    pub admin_email: Option<String>,
    pub admin_password_file: Option<PathBuf>,
    pub rotate_before_days: Option<f64>,
    pub secret_expiry_days: Option<u32>,
    pub secret_check_interval: Option<f64>,
    pub min_reset_interval: Option<f64>,
    pub state_dir: Option<PathBuf>,
    pub rotation_standby: Option<bool>,
    pub standby_reset_days: Option<f64>,
    pub site: Option<String>,
    pub verify_listen: Option<String>,
    pub verify_issuers: Option<Vec<String>>,
    pub jwks_url: Option<String>,
    pub verify_leeway: Option<f64>,
    pub jwks_refresh_interval: Option<f64>,
    pub verify_prefetch_keys: Option<bool>,
    pub cr_url: Option<String>,
    pub max_body_bytes: Option<usize>,
    pub authorize_roles: Option<String>,
    pub rebit_versions: Option<String>,
    pub rebit_timestamp_window: Option<f64>,
    pub authorize_path_prefix: Option<String>,
    pub cr_lookup_rate: Option<f64>,
    pub cr_lookup_burst: Option<u32>,
    pub cr_previous_key_grace: Option<f64>,
    pub fi_max_body_bytes: Option<usize>,
    #[serde(default)]
    pub entities: Vec<FileEntity>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntity {
    pub id: String,
    pub secret_file: PathBuf,
    /// Where a rotated secret goes; `file:<secret_file>` when absent.
    pub secret_sink: Option<String>,
    /// The entity's private key for `x-jws-signature` (PKCS#8 PEM or a private JWK).
    pub signing_key_file: Option<PathBuf>,
    /// The `kid` registered in the CR (default: the JWK's own).
    pub signing_kid: Option<String>,
    /// The FI key-encryption key (32 bytes, raw or base64).
    pub fi_kek_file: Option<PathBuf>,
}

/// Reads and parses the file. Errors name the file and, for syntax errors, the line.
pub fn load(path: &Path) -> Result<FileConfig, ConfigError> {
    let meta = std::fs::metadata(path).map_err(|e| {
        ConfigError::new(
            settings::CONFIG,
            format!(
                "cannot read {}: {}",
                path.display(),
                crate::private_file::io_reason(&e)
            ),
        )
    })?;
    if !meta.is_file() || meta.len() > MAX_CONFIG_BYTES {
        return Err(ConfigError::new(
            settings::CONFIG,
            format!("{} is not a regular file under 1 MiB", path.display()),
        ));
    }
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigError::new(
            settings::CONFIG,
            format!(
                "cannot read {}: {}",
                path.display(),
                crate::private_file::io_reason(&e)
            ),
        )
    })?;
    parse(&text).map_err(|reason| {
        ConfigError::new(settings::CONFIG, format!("{}: {reason}", path.display()))
    })
}

/// Parses TOML text; the error is one line with the line number.
pub fn parse(text: &str) -> Result<FileConfig, SyntaxError> {
    toml::from_str(text).map_err(|e| SyntaxError {
        line: e
            .span()
            .map(|span| text[..span.start.min(text.len())].matches('\n').count() + 1),
        message: e.message().replace('\n', " "),
    })
}

/// What is wrong with the file, on one line, with the line number when the parser knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxError {
    pub line: Option<usize>,
    pub message: String,
}

impl std::fmt::Display for SyntaxError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.line {
            Some(line) => write!(f, "line {line}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for SyntaxError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_several_entities() {
        let config = parse(
            r#"
environment = "sandbox"
[[entities]]
id = "FIU-ONE"
secret_file = "/s/one"
[[entities]]
id = "FIU-TWO"
secret_file = "/s/two"
"#,
        )
        .unwrap();
        assert_eq!(config.entities.len(), 2);
        assert_eq!(config.entities[1].id, "FIU-TWO");
    }

    #[test]
    fn errors_are_one_line_with_a_line_number() {
        let err = parse("environment = \"sandbox\"\nlisten = [\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("line 2") || err.starts_with("line 3"),
            "{err}"
        );
        assert!(!err.contains('\n'));
        let err = parse("environmnet = \"sandbox\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field"), "{err}");
        assert!(
            parse("[[entities]]\nid = \"X\"\n")
                .unwrap_err()
                .message
                .contains("secret_file")
        );
    }
}
