//! The entities a broker serves: from `--entity-id` with its secret, or the `[[entities]]` of the
//! `--config` file (or both, one place each), each with its secret source and, for rotation, its sink.

use std::path::Path;
use std::sync::Arc;

use secrecy::SecretString;

use super::cli::EntityArgs;
use super::{ConfigError, ENV_ENTITY_SECRET, EntitySettings, file, rotation, settings};
use crate::entity::{EntityId, SecretSource, read_secret_file};
use crate::secret::SinkSpec;

pub(super) fn resolve_entities(
    args: &EntityArgs,
    cli_sink: Option<&str>,
    file: &file::FileConfig,
    entity_secret_env: Option<SecretString>,
) -> Result<Vec<EntitySettings>, ConfigError> {
    let mut entities = Vec::new();
    for (index, entry) in file.entities.iter().enumerate() {
        let setting = format!("entities[{index}] (in --config)");
        let id =
            EntityId::parse(&entry.id).map_err(|e| ConfigError::new(format!("{setting}.id"), e))?;
        check_secret_file(&format!("{setting}.secret_file"), &entry.secret_file)?;
        let sink = rotation::sink_for(
            entry.secret_sink.as_deref(),
            &format!("{setting}.secret_sink"),
            Some(&entry.secret_file),
        )?;
        entities.push(EntitySettings {
            id,
            secret: SecretSource::File(entry.secret_file.clone()),
            sink,
        });
    }
    // `--entity-id` was parsed by clap.
    if let Some(id) = args.entity_id.clone() {
        let listed = entities.iter().any(|e| e.id == id);
        let secret = match (&args.secret_file, entity_secret_env) {
            (Some(path), _) => {
                check_secret_file(settings::SECRET_FILE, path)?;
                Some(SecretSource::File(path.clone()))
            }
            (None, Some(secret)) => Some(SecretSource::Inline(Arc::new(secret))),
            (None, None) => None,
        };
        match (listed, secret) {
            // `--entity-id` naming an entity of the file selects it (for `token`).
            (true, None) => {}
            (true, Some(_)) => {
                return Err(ConfigError::new(
                    settings::ENTITY_ID,
                    format!("{id} is also listed in --config; configure it in one place"),
                ));
            }
            (false, Some(secret)) => {
                let sink = rotation::sink_for(
                    cli_sink,
                    settings::SECRET_SINK,
                    args.secret_file.as_deref(),
                )?;
                entities.push(EntitySettings { id, secret, sink });
            }
            (false, None) => {
                return Err(ConfigError::new(
                    settings::SECRET_FILE,
                    format!(
                        "no secret for entity {id}; give --secret-file or set {ENV_ENTITY_SECRET}"
                    ),
                ));
            }
        }
    } else if args.secret_file.is_some() {
        return Err(ConfigError::new(
            settings::ENTITY_ID,
            "--secret-file is given but no --entity-id",
        ));
    } else if let Some(raw) = cli_sink {
        // `--secret-sink` without `--entity-id` names the sink of the file's only entity.
        match entities.as_mut_slice() {
            [only] => {
                only.sink = Some(
                    SinkSpec::parse(raw).map_err(|e| ConfigError::new(settings::SECRET_SINK, e))?,
                )
            }
            _ => {
                return Err(ConfigError::new(
                    settings::SECRET_SINK,
                    "with several entities, set secret_sink per entity in --config",
                ));
            }
        }
    }
    if entities.is_empty() {
        return Err(ConfigError::new(
            settings::ENTITY_ID,
            "no entity configured; give --entity-id with --secret-file, or --config listing [[entities]]",
        ));
    }
    let mut seen = std::collections::HashSet::new();
    for entity in &entities {
        if !seen.insert(entity.id.clone()) {
            return Err(ConfigError::new(
                settings::CONFIG,
                format!("entity {} is listed twice", entity.id),
            ));
        }
    }
    Ok(entities)
}

fn check_secret_file(
    setting: impl std::fmt::Display + Copy,
    path: &Path,
) -> Result<(), ConfigError> {
    read_secret_file(path)
        .map(drop)
        .map_err(|e| ConfigError::new(setting, e.to_string()))
}
