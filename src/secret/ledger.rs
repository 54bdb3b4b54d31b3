//! The record of the last secret reset, which bounds resets across restarts and across processes that
//! share a secret file.
//!
//! A reset revokes the secret every other consumer uses, so a loop of resets takes the entity dark. The
//! bound ([`super::policy::reset_wait`]) must survive a crash loop, so it is kept on disk: one line with the
//! Unix time of the last reset, written atomically (0600) *before* the reset is sent — a crash between the
//! two costs one interval, never a second reset. For a `file:` sink the record sits beside the secret and
//! its lock (`.NAME.resets`), so every process sharing the file shares the bound; otherwise it lives in the
//! state directory (`--state-dir`), one file per entity.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use secrecy::SecretString;

use super::sink::{SinkSpec, write_atomically};
use crate::entity::EntityId;

/// Where one entity's last reset is recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResetLedger {
    path: PathBuf,
}

impl ResetLedger {
    /// The ledger for an entity whose secret goes to `sink`.
    pub fn for_sink(sink: &SinkSpec, entity: &EntityId, state_dir: &Path) -> ResetLedger {
        let path = match sink {
            SinkSpec::File(secret_file) => {
                let name = secret_file
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_else(|| "secret".into());
                secret_file.with_file_name(format!(".{name}.resets"))
            }
            _ => state_dir.join(format!("{}.resets", entity.as_str())),
        };
        ResetLedger { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// When the last reset was recorded; `None` when never. A record that does not parse counts from the
    /// file's modification time, so damage to it cannot lift the bound.
    pub fn last_reset(&self) -> Result<Option<SystemTime>, LedgerError> {
        match std::fs::read_to_string(&self.path) {
            Ok(text) => match text.trim().parse::<u64>() {
                Ok(secs) => Ok(UNIX_EPOCH.checked_add(Duration::from_secs(secs))),
                Err(_) => std::fs::metadata(&self.path)
                    .and_then(|m| m.modified())
                    .map(Some)
                    .map_err(|e| self.describe(&e)),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.describe(&e)),
        }
    }

    /// Records a reset at `at`, atomically. Creates the directory if needed.
    pub fn record(&self, at: SystemTime) -> Result<(), LedgerError> {
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| self.describe(&e))?;
        }
        let secs = at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        write_atomically(&self.path, &SecretString::from(secs.to_string())).map_err(|e| {
            LedgerError {
                path: self.path.clone(),
                reason: e.to_string(),
            }
        })
    }

    fn describe(&self, e: &std::io::Error) -> LedgerError {
        LedgerError {
            path: self.path.clone(),
            reason: e.to_string(),
        }
    }
}

/// The reset record cannot be read or written.
#[derive(Debug, Clone, thiserror::Error)]
#[error("reset record {path}: {reason}")]
pub struct LedgerError {
    pub path: PathBuf,
    pub reason: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_survive_a_new_process_and_damage_does_not_lift_the_bound() {
        let dir = tempfile::tempdir().unwrap();
        let entity = EntityId::parse("FIU-LEDGER").unwrap();
        let secret_file = dir.path().join("entity-secret");
        let beside = ResetLedger::for_sink(&SinkSpec::File(secret_file), &entity, dir.path());
        assert_eq!(beside.path(), dir.path().join(".entity-secret.resets"));
        let elsewhere = ResetLedger::for_sink(
            &SinkSpec::Exec("vault".into()),
            &entity,
            &dir.path().join("state"),
        );
        assert_eq!(
            elsewhere.path(),
            dir.path().join("state").join("FIU-LEDGER.resets")
        );
        assert_eq!(elsewhere.last_reset().unwrap(), None);
        let at = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        elsewhere.record(at).unwrap();
        // A second reader (another process) sees the same record.
        let again = ResetLedger::for_sink(
            &SinkSpec::Exec("vault".into()),
            &entity,
            &dir.path().join("state"),
        );
        assert_eq!(again.last_reset().unwrap(), Some(at));
        std::fs::write(elsewhere.path(), "garbage").unwrap();
        let damaged = again.last_reset().unwrap().unwrap();
        assert!(
            SystemTime::now()
                .duration_since(damaged)
                .unwrap_or_default()
                < Duration::from_secs(60)
        );
    }
}
