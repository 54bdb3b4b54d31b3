//! The settings of FI data encryption: each entity's KEK file (`--fi-kek-file` for the one entity of the
//! command line, `fi_kek_file` per entity in the file) and the FI routes' body cap. Validated once: a KEK
//! file that cannot be read or is not a key is one line naming the setting (exit 2), never its content.

use std::path::PathBuf;
use std::sync::Arc;

use super::ConfigError;
use super::cli::FiArgs;
use super::file::FileConfig;
use super::settings::{FI_KEK_FILE, FI_MAX_BODY_BYTES, MAX_BUFFERED_BYTES};
use crate::entity::EntityId;
use crate::fi::kek::KekFile;

/// Default FI body cap: 16 MiB of data in base64 (21.3 MiB) with its key material and handle.
pub const DEFAULT_FI_MAX_BODY_BYTES: usize = 22 * 1024 * 1024;
/// Smallest and largest cap accepted.
const MIN_CAP: usize = 4096;
const MAX_CAP: usize = 1 << 30;

/// FI settings, validated.
#[derive(Debug, Clone)]
pub struct FiSettings {
    /// Each entity with a KEK, in configuration order.
    pub keks: Vec<(EntityId, Arc<KekFile>)>,
    pub max_body_bytes: usize,
}

impl Default for FiSettings {
    /// FI off: no KEK.
    fn default() -> Self {
        Self {
            keks: Vec::new(),
            max_body_bytes: DEFAULT_FI_MAX_BODY_BYTES,
        }
    }
}

/// Validates the flags and the file's keys against the entities configured (`entities`) and the body
/// budget (`budget`, when a server holds one).
pub fn fi_settings(
    args: &FiArgs,
    file: &FileConfig,
    entities: &[EntityId],
    budget: Option<usize>,
) -> Result<FiSettings, ConfigError> {
    let max_body_bytes = args
        .fi_max_body_bytes
        .or(file.fi_max_body_bytes)
        .unwrap_or(DEFAULT_FI_MAX_BODY_BYTES);
    if !(MIN_CAP..=MAX_CAP).contains(&max_body_bytes) {
        return Err(ConfigError::new(
            FI_MAX_BODY_BYTES,
            "must be between 4096 and 1073741824",
        ));
    }
    let mut paths: Vec<(EntityId, PathBuf, String)> = Vec::new();
    for (index, entry) in file.entities.iter().enumerate() {
        if let Some(path) = &entry.fi_kek_file {
            let id = EntityId::parse(&entry.id)
                .map_err(|e| ConfigError::new(format!("entities[{index}].id"), e))?;
            paths.push((
                id,
                path.clone(),
                format!("entities[{index}].fi_kek_file (in --config)"),
            ));
        }
    }
    if let Some(path) = &args.fi_kek_file {
        let id = match entities {
            [only] => only.clone(),
            _ => {
                return Err(ConfigError::new(
                    FI_KEK_FILE,
                    "several entities are configured; set fi_kek_file per entity in --config",
                ));
            }
        };
        if paths.iter().any(|(k, ..)| *k == id) {
            return Err(ConfigError::new(
                FI_KEK_FILE,
                format!("{id} also has an fi_kek_file in --config; configure it in one place"),
            ));
        }
        paths.push((id, path.clone(), FI_KEK_FILE.to_string()));
    }
    if let Some(budget) = budget.filter(|b| !paths.is_empty() && max_body_bytes > *b) {
        return Err(ConfigError::new(
            FI_MAX_BODY_BYTES,
            format!(
                "is larger than {MAX_BUFFERED_BYTES} ({budget}); raise the budget or lower the cap"
            ),
        ));
    }
    let mut keks = Vec::new();
    for (id, path, setting) in paths {
        let file = KekFile::open(&path).map_err(|e| ConfigError::new(setting, e))?;
        keks.push((id, Arc::new(file)));
    }
    Ok(FiSettings {
        keks,
        max_body_bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::file::parse;

    fn id(s: &str) -> EntityId {
        EntityId::parse(s).unwrap()
    }

    fn kek(dir: &std::path::Path, name: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, [7u8; 32]).unwrap();
        path
    }

    #[test]
    fn the_flag_belongs_to_the_one_entity_and_the_file_gives_each_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let none = FileConfig::default();
        let off = fi_settings(&FiArgs::default(), &none, &[id("FIU-A")], Some(1 << 25)).unwrap();
        assert!(off.keks.is_empty());
        assert_eq!(off.max_body_bytes, DEFAULT_FI_MAX_BODY_BYTES);
        let args = FiArgs {
            fi_kek_file: Some(kek(dir.path(), "a")),
            ..FiArgs::default()
        };
        let one = fi_settings(&args, &none, &[id("FIU-A")], Some(1 << 25)).unwrap();
        assert_eq!(one.keks[0].0.as_str(), "FIU-A");
        let error = fi_settings(&args, &none, &[id("FIU-A"), id("FIU-B")], None).unwrap_err();
        assert_eq!(error.setting, FI_KEK_FILE.to_string());
        let text = format!(
            "fi_max_body_bytes = 8192\n[[entities]]\nid = \"FIU-A\"\nsecret_file = \"/s\"\nfi_kek_file = \"{}\"\n\
             [[entities]]\nid = \"FIU-B\"\nsecret_file = \"/s\"\n",
            kek(dir.path(), "b").display()
        );
        let file = parse(&text).unwrap();
        let settings =
            fi_settings(&FiArgs::default(), &file, &[id("FIU-A"), id("FIU-B")], None).unwrap();
        assert_eq!(settings.keks.len(), 1);
        assert_eq!(settings.max_body_bytes, 8192);
    }

    #[test]
    fn mistakes_name_their_setting_and_never_show_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("bad");
        std::fs::write(&bad, "c2VjcmV0LWtleQ==\n").unwrap();
        let args = FiArgs {
            fi_kek_file: Some(bad),
            ..FiArgs::default()
        };
        let error = fi_settings(&args, &FileConfig::default(), &[id("FIU-A")], None).unwrap_err();
        assert_eq!(error.setting, FI_KEK_FILE.to_string());
        assert!(!error.to_string().contains("c2VjcmV0"), "{error}");
        let small = FiArgs {
            fi_max_body_bytes: Some(10),
            ..FiArgs::default()
        };
        let error = fi_settings(&small, &FileConfig::default(), &[], None).unwrap_err();
        assert_eq!(error.setting, FI_MAX_BODY_BYTES.to_string());
        let over = FiArgs {
            fi_kek_file: Some(kek(dir.path(), "k")),
            fi_max_body_bytes: Some(1 << 26),
        };
        let error =
            fi_settings(&over, &FileConfig::default(), &[id("FIU-A")], Some(1 << 25)).unwrap_err();
        assert_eq!(error.setting, FI_MAX_BODY_BYTES.to_string());
    }
}
