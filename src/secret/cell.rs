//! The entity secret as the rest of the broker sees it, owned by the secret module.
//!
//! A [`SecretCell`] holds where the secret is read from, the rotated value that stands in for it until the
//! source shows it (the kubelet syncs a Secret volume a minute or so after it changes), and what the
//! secret lifecycle reports about it ([`SecretStatus`]). The token path reads the current secret here and
//! tells the cell what the IAM said about it ([`SecretEvent`]); the secret manager writes here and waits
//! for those events. Neither side holds the other.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use secrecy::{ExposeSecret, SecretString};
use tokio::sync::{Notify, mpsc};

use crate::entity::{SecretError, SecretSource};

/// What the token path learns about the secret from the IAM's answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretEvent {
    /// The IAM answered 401 to the configured secret.
    Rejected,
    /// A token response carried the grace-period warning.
    GraceWarning,
    /// A token's `secret-expiry-ts` claim.
    ExpiryHint(SystemTime),
}

/// What the secret lifecycle reports about one entity, for `/readyz` and `/metrics`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SecretStatus {
    /// The secret's expiry as the IAM last reported it (a read, or a reset's grant).
    pub expires_at: Option<SystemTime>,
    /// A problem that makes the entity not ready (a rotated secret held only in memory).
    pub alert: Option<String>,
    /// An oddity that needs a human but leaves tokens flowing (an expiry that cannot be right).
    pub warning: Option<String>,
    /// The admin login's state when rotation is on: `none`, `ok`, `backing_off`, `credentials_rejected`.
    pub admin_login: Option<&'static str>,
    /// When the last rotation succeeded.
    pub last_rotation: Option<SystemTime>,
    /// Since when the store's secret has differed from the IAM's current one (a convergence that has not
    /// succeeded yet); `None` when they agree or rotation is off.
    pub store_diverged_since: Option<SystemTime>,
    /// How often the secret manager compares the store with the IAM (rotation on).
    pub check_interval: Option<Duration>,
}

#[derive(Default)]
struct CellState {
    /// A secret to use instead of the source's (a rotated secret not yet visible through the source).
    replacement: Option<SecretString>,
    /// Where [`SecretEvent`]s go, when a secret manager listens.
    events: Option<mpsc::Sender<SecretEvent>>,
    status: SecretStatus,
}

/// One entity's secret. Shared behind an `Arc` by the token path and the secret manager.
pub struct SecretCell {
    source: SecretSource,
    state: Mutex<CellState>,
    /// Wakes the token path when a new secret is to be used now.
    replaced: Notify,
}

impl SecretCell {
    pub fn new(source: SecretSource) -> Arc<Self> {
        Arc::new(Self {
            source,
            state: Mutex::new(CellState::default()),
            replaced: Notify::new(),
        })
    }

    fn state(&self) -> MutexGuard<'_, CellState> {
        // The state stays consistent whatever panicked while holding the lock.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn source(&self) -> &SecretSource {
        &self.source
    }

    /// The secret to use: the replacement while the source does not show it yet, else the source's.
    pub async fn current(&self) -> Result<SecretString, SecretError> {
        let replacement = self.state().replacement.clone();
        let from_source = self.source.load().await;
        match (replacement, from_source) {
            (Some(pending), Ok(stored)) if pending.expose_secret() == stored.expose_secret() => {
                // The source caught up (the kubelet synced, the file was written): drop the replacement.
                self.state().replacement = None;
                Ok(stored)
            }
            (Some(pending), _) => Ok(pending),
            (None, result) => result,
        }
    }

    /// Uses `secret` from now on (until the source shows the same value), and wakes the token path so it
    /// mints a token with it at once.
    pub fn replace(&self, secret: SecretString) {
        self.state().replacement = Some(secret);
        self.replaced.notify_one();
    }

    /// Signalled by [`SecretCell::replace`]; a permit is kept if nobody waits yet.
    pub fn replacement_signal(&self) -> &Notify {
        &self.replaced
    }

    /// Subscribes to the token path's [`SecretEvent`]s (one subscriber; a second replaces the first).
    pub fn subscribe(&self) -> mpsc::Receiver<SecretEvent> {
        let (tx, rx) = mpsc::channel(16);
        self.state().events = Some(tx);
        rx
    }

    /// Tells the secret manager, if one listens. A full queue drops the hint: the manager re-reads the
    /// secret's state on its own schedule anyway.
    pub fn tell(&self, event: SecretEvent) {
        if let Some(events) = &self.state().events {
            let _ = events.try_send(event);
        }
    }

    pub fn status(&self) -> SecretStatus {
        self.state().status.clone()
    }

    /// Changes the reported status.
    pub fn report(&self, change: impl FnOnce(&mut SecretStatus)) {
        change(&mut self.state().status);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_replacement_stands_in_until_the_source_shows_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, "old").unwrap();
        let cell = SecretCell::new(SecretSource::File(path.clone()));
        assert_eq!(cell.current().await.unwrap().expose_secret(), "old");
        cell.replace(SecretString::from("new"));
        // `replaced` completes for a replacement made before the wait.
        tokio::time::timeout(
            std::time::Duration::from_secs(1),
            cell.replacement_signal().notified(),
        )
        .await
        .unwrap();
        assert_eq!(cell.current().await.unwrap().expose_secret(), "new");
        std::fs::write(&path, "new").unwrap();
        assert_eq!(cell.current().await.unwrap().expose_secret(), "new");
        // The source caught up: a later change of the file is read again.
        std::fs::write(&path, "newer").unwrap();
        assert_eq!(cell.current().await.unwrap().expose_secret(), "newer");
    }

    #[tokio::test]
    async fn events_reach_the_one_subscriber() {
        let cell = SecretCell::new(SecretSource::File("/nonexistent".into()));
        cell.tell(SecretEvent::Rejected); // nobody listens: dropped
        let mut events = cell.subscribe();
        cell.tell(SecretEvent::GraceWarning);
        assert_eq!(events.recv().await, Some(SecretEvent::GraceWarning));
        cell.report(|s| s.alert = Some("held in memory".into()));
        assert_eq!(cell.status().alert.as_deref(), Some("held in memory"));
    }
}
