//! The settings of signing and signature verification: each entity's signing key file and `kid`, the
//! Central Registry URL, the budget of CR lookups, the grace of a peer's replaced key, and the body-size
//! cap. Validated once, like every other setting: a key file that
//! cannot be read or parsed is one line naming the setting (exit 2), and never shows the key.

use std::path::PathBuf;
use std::sync::Arc;

use super::cli::JwsArgs;
use super::file::FileConfig;
use super::{ConfigError, EntitySettings};
use crate::entity::EntityId;
use crate::http::jws::DEFAULT_MAX_BODY_BYTES;
use crate::jws::SigningKeyFile;
use crate::registry::default_cr_url;
use crate::registry::policy::RegistryPolicy;

use super::settings::{
    AUTHORIZE_PATH_PREFIX, AUTHORIZE_ROLES, CR_LOOKUP_BURST, CR_LOOKUP_RATE, CR_PREVIOUS_KEY_GRACE,
    CR_URL, MAX_BODY_BYTES, REBIT_TIMESTAMP_WINDOW, REBIT_VERSIONS, SIGNING_KEY_FILE, SIGNING_KID,
};
use crate::entity::Role;
use crate::rebit::envelope::EnvelopeRules;

/// Largest body cap accepted: 1 GiB.
const MAX_BODY_CAP: usize = 1 << 30;
/// The range of CR lookups a second: from one every 100 s to a thousand.
const LOOKUP_RATES: std::ops::RangeInclusive<f64> = 0.01..=1000.0;
/// The range of the lookup burst.
const LOOKUP_BURSTS: std::ops::RangeInclusive<u32> = 1..=1000;
/// Longest grace of a replaced key: a day, the longest a record is trusted (`policy::MAX_TTL`).
const MAX_GRACE_SECS: f64 = 86_400.0;

/// Signing and verification settings, validated.
#[derive(Debug, Clone)]
pub struct JwsSettings {
    /// The CR base URL (`https://…/cr`).
    pub cr_url: String,
    /// Each entity with a signing key, opened (and parsed once) at validation.
    pub signers: Vec<(EntityId, Arc<SigningKeyFile>)>,
    pub max_body_bytes: usize,
    pub policy: RegistryPolicy,
    /// `--authorize-roles`: the caller roles `/v1/authorize` accepts, instead of those that follow ours.
    pub authorize_roles: Option<Vec<Role>>,
    /// The envelope rules of `/v1/authorize/{ReBIT path}`.
    pub envelope: EnvelopeRules,
    /// `--authorize-path-prefix`.
    pub path_prefix: Option<String>,
}

impl JwsSettings {
    /// Verification only, with the CR beside the IAM.
    pub fn for_iam_url(iam_url: &str) -> Self {
        Self {
            cr_url: default_cr_url(iam_url),
            signers: Vec::new(),
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            policy: RegistryPolicy::default(),
            authorize_roles: None,
            envelope: EnvelopeRules::default(),
            path_prefix: None,
        }
    }
}

/// Validates the flags and the file's keys. `--signing-key-file` belongs to the one entity of the command
/// line (or the file's only entity); with several, each sets `signing_key_file` in `[[entities]]`.
pub fn jws_settings(
    args: &JwsArgs,
    file: &FileConfig,
    iam_url: &str,
    entities: &[EntitySettings],
) -> Result<JwsSettings, ConfigError> {
    let cr_url = match args.cr_url.as_deref().or(file.cr_url.as_deref()) {
        Some(raw) => super::resolve_iam_url(Some(raw), None, false)
            .map_err(|e| ConfigError::new(CR_URL, e.reason))?,
        None => default_cr_url(iam_url),
    };
    let max_body_bytes = args
        .max_body_bytes
        .or(file.max_body_bytes)
        .unwrap_or(DEFAULT_MAX_BODY_BYTES);
    if !(1024..=MAX_BODY_CAP).contains(&max_body_bytes) {
        return Err(ConfigError::new(
            MAX_BODY_BYTES,
            "must be between 1024 and 1073741824",
        ));
    }
    let authorize_roles = match args
        .authorize_roles
        .as_deref()
        .or(file.authorize_roles.as_deref())
    {
        None => None,
        Some(raw) => {
            let roles = crate::inbound::Expectation::parse(Some(raw), None)
                .map_err(|e| ConfigError::new(AUTHORIZE_ROLES, e))?
                .roles;
            if roles.is_empty() {
                return Err(ConfigError::new(
                    AUTHORIZE_ROLES,
                    "name at least one of AA, FIU, FIP",
                ));
            }
            Some(roles)
        }
    };
    let policy = registry_policy(args, file)?;
    let envelope = envelope_rules(args, file)?;
    let path_prefix = match args
        .authorize_path_prefix
        .as_deref()
        .or(file.authorize_path_prefix.as_deref())
        .map(str::trim)
    {
        None | Some("") => None,
        Some(prefix) if prefix.starts_with('/') && !prefix.contains(['?', '#', ' ']) => {
            Some(prefix.trim_end_matches('/').to_string())
        }
        Some(_) => {
            return Err(ConfigError::new(
                AUTHORIZE_PATH_PREFIX,
                "must be a path starting with /, e.g. /aa/v2",
            ));
        }
    };
    let mut keys: Vec<(EntityId, PathBuf, Option<String>, String)> = Vec::new();
    for (index, entry) in file.entities.iter().enumerate() {
        if let Some(path) = &entry.signing_key_file {
            let id = EntityId::parse(&entry.id)
                .map_err(|e| ConfigError::new(format!("entities[{index}].id"), e))?;
            keys.push((
                id,
                path.clone(),
                entry.signing_kid.clone(),
                format!("entities[{index}].signing_key_file (in --config)"),
            ));
        }
    }
    if let Some(path) = &args.key.signing_key_file {
        let id = match entities {
            [only] => only.id.clone(),
            _ => {
                return Err(ConfigError::new(
                    SIGNING_KEY_FILE,
                    "several entities are configured; set signing_key_file per entity in --config",
                ));
            }
        };
        if keys.iter().any(|(k, ..)| *k == id) {
            return Err(ConfigError::new(
                SIGNING_KEY_FILE,
                format!("{id} also has a signing_key_file in --config; configure it in one place"),
            ));
        }
        keys.push((
            id,
            path.clone(),
            args.key.signing_kid.clone(),
            SIGNING_KEY_FILE.to_string(),
        ));
    } else if args.key.signing_kid.is_some() {
        return Err(ConfigError::new(
            SIGNING_KID,
            "--signing-kid needs --signing-key-file",
        ));
    }
    let mut signers = Vec::new();
    for (id, path, kid, setting) in keys {
        let file = SigningKeyFile::open(&path, kid.as_deref())
            .map_err(|e| ConfigError::new(setting, e))?;
        signers.push((id, Arc::new(file)));
    }
    Ok(JwsSettings {
        cr_url,
        signers,
        max_body_bytes,
        policy,
        authorize_roles,
        envelope,
        path_prefix,
    })
}

/// The envelope rules of `/v1/authorize/{ReBIT path}` from the flags or the file.
fn envelope_rules(args: &JwsArgs, file: &FileConfig) -> Result<EnvelopeRules, ConfigError> {
    let defaults = EnvelopeRules::default();
    let versions = match args
        .rebit_versions
        .as_deref()
        .or(file.rebit_versions.as_deref())
    {
        None => defaults.versions,
        Some(raw) => {
            let versions: Vec<String> = raw
                .split(',')
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(str::to_string)
                .collect();
            let well_formed = |v: &String| {
                v.len() <= 16
                    && v.split('.')
                        .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
            };
            if versions.is_empty() || !versions.iter().all(well_formed) {
                return Err(ConfigError::new(
                    REBIT_VERSIONS,
                    "must be versions like 2.0.0, comma-separated",
                ));
            }
            versions
        }
    };
    let window = match args.rebit_timestamp_window.or(file.rebit_timestamp_window) {
        None => defaults.window,
        Some(secs) if secs.is_finite() && (1.0..=86_400.0).contains(&secs) => {
            std::time::Duration::from_secs_f64(secs)
        }
        Some(_) => {
            return Err(ConfigError::new(
                REBIT_TIMESTAMP_WINDOW,
                "must be a number of seconds between 1 and 86400",
            ));
        }
    };
    Ok(EnvelopeRules { versions, window })
}

/// The CR cache's policy: the lookup budget and the previous key's grace from the flags or the file.
fn registry_policy(args: &JwsArgs, file: &FileConfig) -> Result<RegistryPolicy, ConfigError> {
    let defaults = RegistryPolicy::default();
    let lookup_interval = match args.cr_lookup_rate.or(file.cr_lookup_rate) {
        None => defaults.lookup_interval,
        Some(rate) if rate.is_finite() && LOOKUP_RATES.contains(&rate) => {
            std::time::Duration::from_secs_f64(1.0 / rate)
        }
        Some(_) => {
            return Err(ConfigError::new(
                CR_LOOKUP_RATE,
                "must be a number of lookups a second between 0.01 and 1000",
            ));
        }
    };
    let lookup_burst = args
        .cr_lookup_burst
        .or(file.cr_lookup_burst)
        .unwrap_or(defaults.lookup_burst);
    if !LOOKUP_BURSTS.contains(&lookup_burst) {
        return Err(ConfigError::new(
            CR_LOOKUP_BURST,
            "must be between 1 and 1000",
        ));
    }
    let previous_key_grace = match args.cr_previous_key_grace.or(file.cr_previous_key_grace) {
        None => defaults.previous_key_grace,
        Some(secs) if secs.is_finite() && (0.0..=MAX_GRACE_SECS).contains(&secs) => {
            std::time::Duration::from_secs_f64(secs)
        }
        Some(_) => {
            return Err(ConfigError::new(
                CR_PREVIOUS_KEY_GRACE,
                "must be a number of seconds between 0 (off) and 86400",
            ));
        }
    };
    Ok(RegistryPolicy {
        lookup_interval,
        lookup_burst,
        previous_key_grace,
        ..defaults
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::cli::SigningKeyArgs;
    use crate::config::file::parse;
    use crate::entity::SecretSource;

    fn entity(id: &str) -> EntitySettings {
        EntitySettings {
            id: EntityId::parse(id).unwrap(),
            secret: SecretSource::File("/dev/null".into()),
            sink: None,
        }
    }

    /// A PKCS#8 key of the simulator's pool, written as PEM.
    fn key_file(dir: &std::path::Path, name: &str) -> PathBuf {
        use base64::Engine;
        let der = include_bytes!("../simulator/peer-key-3.der");
        let pem = format!(
            "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
            base64::engine::general_purpose::STANDARD.encode(der)
        );
        let path = dir.join(name);
        std::fs::write(&path, pem).unwrap();
        path
    }

    fn args(key: Option<PathBuf>, kid: Option<&str>) -> JwsArgs {
        JwsArgs {
            key: SigningKeyArgs {
                signing_key_file: key,
                signing_kid: kid.map(str::to_string),
            },
            ..JwsArgs::default()
        }
    }

    #[test]
    fn defaults_follow_the_iam_and_keys_belong_to_one_entity() {
        let none = FileConfig::default();
        let settings = jws_settings(
            &args(None, None),
            &none,
            "https://x.in/iam",
            &[entity("FIU-A")],
        )
        .unwrap();
        assert_eq!(settings.cr_url, "https://x.in/cr");
        assert_eq!(settings.max_body_bytes, DEFAULT_MAX_BODY_BYTES);
        assert!(settings.signers.is_empty(), "verification needs no key");
        let dir = tempfile::tempdir().unwrap();
        let key = key_file(dir.path(), "k.pem");
        let one = jws_settings(
            &args(Some(key.clone()), Some("kid-a")),
            &none,
            "https://x.in/iam",
            &[entity("FIU-A")],
        )
        .unwrap();
        assert_eq!(one.signers[0].0.as_str(), "FIU-A");
        let two = [entity("FIU-A"), entity("FIU-B")];
        let error =
            jws_settings(&args(Some(key), Some("k")), &none, "https://x.in/iam", &two).unwrap_err();
        assert_eq!(error.setting, SIGNING_KEY_FILE.to_string());
    }

    #[test]
    fn mistakes_name_their_setting_and_never_show_the_key() {
        let none = FileConfig::default();
        let fiu = [entity("FIU-A")];
        let dir = tempfile::tempdir().unwrap();
        let kid_alone = jws_settings(&args(None, Some("k")), &none, "https://x.in/iam", &fiu);
        assert_eq!(kid_alone.unwrap_err().setting, SIGNING_KID.to_string());
        let no_kid = key_file(dir.path(), "k.pem");
        let error =
            jws_settings(&args(Some(no_kid), None), &none, "https://x.in/iam", &fiu).unwrap_err();
        assert!(error.reason.contains("kid"), "{error}");
        let bad = dir.path().join("bad.pem");
        std::fs::write(
            &bad,
            "-----BEGIN PRIVATE KEY-----\nc2VjcmV0\n-----END PRIVATE KEY-----\n",
        )
        .unwrap();
        let error =
            jws_settings(&args(Some(bad), Some("k")), &none, "https://x.in/iam", &fiu).unwrap_err();
        assert!(!error.to_string().contains("c2VjcmV0"), "{error}");
        let small = JwsArgs {
            max_body_bytes: Some(10),
            ..JwsArgs::default()
        };
        let error = jws_settings(&small, &none, "https://x.in/iam", &fiu).unwrap_err();
        assert_eq!(error.setting, MAX_BODY_BYTES.to_string());
        let cr = JwsArgs {
            cr_url: Some("ftp://cr".into()),
            ..JwsArgs::default()
        };
        let error = jws_settings(&cr, &none, "https://x.in/iam", &fiu).unwrap_err();
        assert_eq!(error.setting, CR_URL.to_string());
        for (args, setting) in [
            (
                JwsArgs {
                    cr_lookup_rate: Some(0.0),
                    ..JwsArgs::default()
                },
                CR_LOOKUP_RATE,
            ),
            (
                JwsArgs {
                    cr_lookup_rate: Some(f64::INFINITY),
                    ..JwsArgs::default()
                },
                CR_LOOKUP_RATE,
            ),
            (
                JwsArgs {
                    cr_lookup_burst: Some(0),
                    ..JwsArgs::default()
                },
                CR_LOOKUP_BURST,
            ),
            (
                JwsArgs {
                    cr_previous_key_grace: Some(-1.0),
                    ..JwsArgs::default()
                },
                CR_PREVIOUS_KEY_GRACE,
            ),
            (
                JwsArgs {
                    cr_previous_key_grace: Some(86_401.0),
                    ..JwsArgs::default()
                },
                CR_PREVIOUS_KEY_GRACE,
            ),
        ] {
            let error = jws_settings(&args, &none, "https://x.in/iam", &fiu).unwrap_err();
            assert_eq!(error.setting, setting.to_string());
        }
    }

    #[test]
    fn the_cr_budget_and_grace_come_from_the_flags_or_the_file() {
        let fiu = [entity("FIU-A")];
        let defaults = jws_settings(
            &JwsArgs::default(),
            &FileConfig::default(),
            "https://x.in/iam",
            &fiu,
        )
        .unwrap();
        assert_eq!(defaults.policy, RegistryPolicy::default());
        assert_eq!(
            defaults.policy.lookup_interval,
            std::time::Duration::from_millis(200),
            "5 a second"
        );
        assert_eq!(defaults.policy.lookup_burst, 10);
        assert_eq!(defaults.policy.previous_key_grace, defaults.policy.ttl);
        let file = parse("cr_lookup_rate = 2.0\ncr_lookup_burst = 3\ncr_previous_key_grace = 0\n")
            .unwrap();
        let from_file = jws_settings(&JwsArgs::default(), &file, "https://x.in/iam", &fiu).unwrap();
        assert_eq!(
            from_file.policy.lookup_interval,
            std::time::Duration::from_millis(500)
        );
        assert_eq!(from_file.policy.lookup_burst, 3);
        assert!(from_file.policy.previous_key_grace.is_zero());
        let flags = JwsArgs {
            cr_lookup_rate: Some(20.0),
            cr_lookup_burst: Some(40),
            cr_previous_key_grace: Some(600.0),
            ..JwsArgs::default()
        };
        let from_flags = jws_settings(&flags, &file, "https://x.in/iam", &fiu).unwrap();
        assert_eq!(
            from_flags.policy.lookup_interval,
            std::time::Duration::from_millis(50)
        );
        assert_eq!(from_flags.policy.lookup_burst, 40);
        assert_eq!(
            from_flags.policy.previous_key_grace,
            std::time::Duration::from_secs(600)
        );
    }

    #[test]
    fn the_file_gives_each_entity_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let a = key_file(dir.path(), "a.pem");
        let text = format!(
            "cr_url = \"https://cr.example/cr\"\nmax_body_bytes = 4096\n\
             [[entities]]\nid = \"FIU-A\"\nsecret_file = \"/s\"\nsigning_key_file = \"{}\"\nsigning_kid = \"a-1\"\n\
             [[entities]]\nid = \"FIU-B\"\nsecret_file = \"/s\"\n",
            a.display()
        );
        let file = parse(&text).unwrap();
        let two = [entity("FIU-A"), entity("FIU-B")];
        let settings = jws_settings(&JwsArgs::default(), &file, "https://x.in/iam", &two).unwrap();
        assert_eq!(settings.cr_url, "https://cr.example/cr");
        assert_eq!(settings.max_body_bytes, 4096);
        assert_eq!(settings.signers.len(), 1);
        assert_eq!(settings.signers[0].1.key().unwrap().kid(), "a-1");
    }
}
