//! The record of the last secret reset — when, the fingerprint of the secret it made, and which site made
//! it — which bounds resets across restarts, across processes that share a secret file, and across every
//! run and replica of a rotator that writes one Kubernetes Secret.
//!
//! A reset revokes the secret every other consumer uses, so a loop of resets takes the entity dark. The
//! bound ([`super::policy::reset_wait`]) must survive a crash loop, so the record is written *before* the
//! reset is sent — a crash between the two costs one interval, never a second reset — and it travels with
//! the store:
//! - `file:` sink: beside the secret and its lock, `.NAME.resets` (mode 0600), one line
//!   `UNIX_SECONDS [FINGERPRINT [SITE]]`, so every process sharing the file shares the bound;
//! - `kubernetes-secret:` sink: the annotation [`RESET_RECORD_ANNOTATION`] on the Secret itself. Before the
//!   reset it is written alone, compare-and-swap on the `resourceVersion` the bound was checked against
//!   (so of two rotators of one Secret only one gets to reset); after it, it is written again with the
//!   new secret's fingerprint *in the same update as the secret*. Every Job run, every replica and every
//!   reader of the Secret sees it; nothing is kept in the Job's pod;
//! - `exec:` sink: the state directory (`--state-dir`), one file per entity.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use secrecy::SecretString;

use super::sink::{
    RESET_RECORD_ANNOTATION, SecretSink, SinkError, SinkSpec, Stored, write_atomically,
};
use crate::entity::EntityId;
use crate::timefmt;

/// One reset, as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResetRecord {
    pub at: SystemTime,
    /// The fingerprint of the secret the reset made; `None` in the record written before the reset.
    pub secret: Option<String>,
    /// The site whose rotator made it.
    pub site: Option<String>,
}

impl ResetRecord {
    fn unix(&self) -> u64 {
        self.at
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    }

    /// The ledger file's line.
    fn to_line(&self) -> String {
        let mut line = self.unix().to_string();
        if let Some(secret) = &self.secret {
            line.push(' ');
            line.push_str(secret);
            if let Some(site) = &self.site {
                line.push(' ');
                line.push_str(site);
            }
        } else if let Some(site) = &self.site {
            line.push_str(" - ");
            line.push_str(site);
        }
        line
    }

    /// Parses a ledger line; the first field alone is needed (older records have nothing else).
    fn from_line(text: &str) -> Option<ResetRecord> {
        let mut fields = text.split_whitespace();
        let secs = fields.next()?.parse::<u64>().ok()?;
        let secret = fields.next().filter(|f| *f != "-").map(str::to_string);
        let site = fields.next().map(str::to_string);
        Some(ResetRecord {
            at: UNIX_EPOCH.checked_add(Duration::from_secs(secs))?,
            secret,
            site,
        })
    }

    /// The annotation's value: JSON with the Unix time (read), an RFC 3339 time (for people), the
    /// fingerprint (or `null` before the reset) and the site.
    pub fn to_annotation(&self) -> String {
        serde_json::json!({
            "at": timefmt::rfc3339_seconds(self.at),
            "unix": self.unix(),
            "secret": self.secret,
            "site": self.site,
        })
        .to_string()
    }

    /// Parses an annotation written by [`ResetRecord::to_annotation`].
    pub fn from_annotation(text: &str) -> Option<ResetRecord> {
        let value: serde_json::Value = serde_json::from_str(text).ok()?;
        let secs = value["unix"].as_u64()?;
        let text_of = |field: &str| value[field].as_str().map(str::to_string);
        Some(ResetRecord {
            at: UNIX_EPOCH.checked_add(Duration::from_secs(secs))?,
            secret: text_of("secret"),
            site: text_of("site"),
        })
    }

    /// `2025-01-02T03:04:05Z by site A (sha256:…)`, for output and logs.
    pub fn describe(&self) -> String {
        format!(
            "{} by {}{}",
            timefmt::rfc3339_seconds(self.at),
            self.site
                .as_deref()
                .map_or_else(|| "an unnamed site".to_string(), |s| format!("site {s}")),
            self.secret
                .as_deref()
                .map(|s| format!(" ({s})"))
                .unwrap_or_else(|| " (no secret recorded: the reset may not have completed)".into())
        )
    }
}

/// What the ledger says now.
#[derive(Debug, Clone, Default)]
pub struct Ledgered {
    pub last: Option<ResetRecord>,
    /// The version the claim must be written against (a Secret's `resourceVersion`).
    pub version: Option<String>,
}

/// Where one entity's last reset is recorded.
#[derive(Debug, Clone)]
pub enum ResetLedger {
    File(PathBuf),
    /// The annotation on the Kubernetes Secret the sink writes.
    Secret(SecretSink),
}

impl ResetLedger {
    /// The ledger for an entity whose secret goes to `sink`.
    pub fn for_sink(sink: &SecretSink, entity: &EntityId, state_dir: &Path) -> ResetLedger {
        match sink.spec() {
            SinkSpec::File(secret_file) => {
                let name = secret_file
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_else(|| "secret".into());
                ResetLedger::File(secret_file.with_file_name(format!(".{name}.resets")))
            }
            SinkSpec::KubernetesSecret { .. } => ResetLedger::Secret(sink.clone()),
            SinkSpec::Exec(_) => {
                ResetLedger::File(state_dir.join(format!("{}.resets", entity.as_str())))
            }
        }
    }

    /// Where the record is, for messages.
    pub fn place(&self) -> String {
        match self {
            ResetLedger::File(path) => path.display().to_string(),
            ResetLedger::Secret(sink) => {
                format!(
                    "the annotation {RESET_RECORD_ANNOTATION} of {}",
                    sink.spec()
                )
            }
        }
    }

    /// The last reset recorded; `None` when never. A file record that does not parse counts from the
    /// file's modification time, so damage to it cannot lift the bound; an annotation that does not parse
    /// is an error (no reset until it is fixed or removed), since a Secret keeps no such time of its own.
    pub async fn read(&self) -> Result<Ledgered, LedgerError> {
        match self {
            ResetLedger::File(path) => Ok(Ledgered {
                last: read_file(path)?,
                version: None,
            }),
            ResetLedger::Secret(sink) => {
                let stored = sink.read().await.map_err(|e| self.fail(&e))?;
                let Some(Stored { note, version, .. }) = stored else {
                    return Ok(Ledgered::default());
                };
                let last = match note {
                    Some(text) => Some(ResetRecord::from_annotation(&text).ok_or_else(|| {
                        self.fail(&"the annotation is not a reset record; fix or remove it")
                    })?),
                    None => None,
                };
                Ok(Ledgered { last, version })
            }
        }
    }

    /// Records a reset about to be made, against the version [`ResetLedger::read`] returned. For a
    /// Secret, a 409 means another rotator wrote the Secret since: [`LedgerError::contended`] is set and
    /// no reset may follow.
    pub async fn claim(
        &self,
        record: &ResetRecord,
        version: Option<&str>,
    ) -> Result<(), LedgerError> {
        match self {
            ResetLedger::File(path) => self.write_file(path, record),
            ResetLedger::Secret(sink) => {
                let version =
                    version.ok_or_else(|| self.fail(&"the Secret's resourceVersion is unknown"))?;
                match sink.write_note(&record.to_annotation(), version).await {
                    Ok(()) => Ok(()),
                    Err(e @ SinkError::Conflict { .. }) => Err(LedgerError {
                        contended: true,
                        ..self.fail(&e)
                    }),
                    Err(e) => Err(self.fail(&e)),
                }
            }
        }
    }

    /// The annotation to write with the new secret (a Secret's ledger), or `None` (a file's, completed
    /// by [`ResetLedger::complete`]).
    pub fn note(&self, record: &ResetRecord) -> Option<String> {
        matches!(self, ResetLedger::Secret(_)).then(|| record.to_annotation())
    }

    /// Adds the new secret's fingerprint to a file's record once the secret is stored. (A Secret's record
    /// was written with the secret.)
    pub fn complete(&self, record: &ResetRecord) -> Result<(), LedgerError> {
        match self {
            ResetLedger::File(path) => self.write_file(path, record),
            ResetLedger::Secret(_) => Ok(()),
        }
    }

    fn write_file(&self, path: &Path, record: &ResetRecord) -> Result<(), LedgerError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| self.fail(&e))?;
        }
        write_atomically(path, &SecretString::from(record.to_line())).map_err(|e| self.fail(&e))
    }

    fn fail(&self, reason: &dyn std::fmt::Display) -> LedgerError {
        LedgerError {
            place: self.place(),
            reason: reason.to_string(),
            contended: false,
        }
    }
}

fn read_file(path: &Path) -> Result<Option<ResetRecord>, LedgerError> {
    let fail = |e: &std::io::Error| LedgerError {
        place: path.display().to_string(),
        reason: e.to_string(),
        contended: false,
    };
    match std::fs::read_to_string(path) {
        Ok(text) => match ResetRecord::from_line(text.trim()) {
            Some(record) => Ok(Some(record)),
            None => std::fs::metadata(path)
                .and_then(|m| m.modified())
                .map(|at| {
                    Some(ResetRecord {
                        at,
                        secret: None,
                        site: None,
                    })
                })
                .map_err(|e| fail(&e)),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(fail(&e)),
    }
}

/// The reset record cannot be read or written.
#[derive(Debug, Clone, thiserror::Error)]
#[error("reset record {place}: {reason}")]
pub struct LedgerError {
    pub place: String,
    pub reason: String,
    /// Another rotator wrote the store between the read and the claim.
    pub contended: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exec_sink() -> SecretSink {
        SecretSink::new(SinkSpec::Exec("vault".into()), None).unwrap()
    }

    #[tokio::test]
    async fn records_survive_a_new_process_and_damage_does_not_lift_the_bound() {
        let dir = tempfile::tempdir().unwrap();
        let entity = EntityId::parse("FIU-LEDGER").unwrap();
        let secret_file = dir.path().join("entity-secret");
        let file_sink = SecretSink::new(SinkSpec::File(secret_file), None).unwrap();
        let beside = ResetLedger::for_sink(&file_sink, &entity, dir.path());
        assert_eq!(
            beside.place(),
            dir.path()
                .join(".entity-secret.resets")
                .display()
                .to_string()
        );
        let state = dir.path().join("state");
        let elsewhere = ResetLedger::for_sink(&exec_sink(), &entity, &state);
        assert_eq!(
            elsewhere.place(),
            state.join("FIU-LEDGER.resets").display().to_string()
        );
        assert_eq!(elsewhere.read().await.unwrap().last, None);
        let at = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let claim = ResetRecord {
            at,
            secret: None,
            site: Some("mumbai".into()),
        };
        elsewhere.claim(&claim, None).await.unwrap();
        // A second reader (another process) sees the same record.
        let again = ResetLedger::for_sink(&exec_sink(), &entity, &state);
        assert_eq!(again.read().await.unwrap().last, Some(claim.clone()));
        let done = ResetRecord {
            secret: Some("sha256:0123abcd".into()),
            ..claim
        };
        again.complete(&done).unwrap();
        assert_eq!(again.read().await.unwrap().last, Some(done));
        // A record of an older version (the time alone) still bounds.
        std::fs::write(state.join("FIU-LEDGER.resets"), "1800000000\n").unwrap();
        assert_eq!(again.read().await.unwrap().last.unwrap().at, at);
        std::fs::write(state.join("FIU-LEDGER.resets"), "garbage").unwrap();
        let damaged = again.read().await.unwrap().last.unwrap().at;
        assert!(
            SystemTime::now()
                .duration_since(damaged)
                .unwrap_or_default()
                < Duration::from_secs(60)
        );
    }

    #[test]
    fn annotations_round_trip_and_name_the_site() {
        let record = ResetRecord {
            at: UNIX_EPOCH + Duration::from_secs(1_800_000_000),
            secret: Some("sha256:0123abcd".into()),
            site: Some("dr-chennai".into()),
        };
        let text = record.to_annotation();
        assert!(text.contains("2027-01-15T08:00:00Z"), "{text}");
        assert_eq!(ResetRecord::from_annotation(&text), Some(record.clone()));
        assert!(
            record
                .describe()
                .contains("site dr-chennai (sha256:0123abcd)")
        );
        assert_eq!(ResetRecord::from_annotation("{\"at\":\"yesterday\"}"), None);
        assert_eq!(ResetRecord::from_annotation("not json"), None);
    }
}
