//! One lookup of a sender at the Central Registry, on the flight's task: the budget it spends, the
//! `GET {cr}/v2/entityInfo/{type}/{id}` with our entity token (refreshed once on a `401`), and what the
//! answer leaves in the stores and the recorder.

use std::time::Duration;

use tokio::time::Instant;

use super::Certificate;
use super::store::{Negative, SenderKey};
use super::{CrOutcome, Inner, LastAnswer, MAX_RECORD_BYTES, RecordError, record};
use crate::entity::{EntityId, Role};
use crate::iam::url::entity_info_url;
use crate::upstream::http::{ReadError, describe, read_whole};

/// What one lookup found; what it left behind is in the stores.
#[derive(Debug, Clone)]
pub(super) enum Looked {
    Found,
    Unknown,
    Failed(String),
}

impl Inner {
    pub(super) fn spend_lookup(&self) -> Result<(), Duration> {
        let mut budget = self.budget.lock().unwrap_or_else(|p| p.into_inner());
        self.policy.spend_lookup(&mut budget, Instant::now())
    }

    /// One lookup and what it leaves behind; runs on the flight's task, to completion.
    pub(super) async fn lookup(&self, sender: SenderKey) -> Looked {
        let (role, id) = &sender;
        let attempted_at = Instant::now();
        let result = self.fetch(*role, id).await;
        let outcome = match &result {
            Ok(Some(_)) => CrOutcome::Ok,
            Ok(None) => CrOutcome::Unknown,
            Err(_) => CrOutcome::Error,
        };
        self.recorder.cr_request(outcome);
        let answer = LastAnswer {
            at: crate::timefmt::rfc3339_seconds(std::time::SystemTime::now()),
            outcome: outcome.as_str(),
            error: result.as_ref().err().cloned(),
        };
        *self.last_answer.lock().unwrap_or_else(|p| p.into_inner()) = Some(answer);
        let now = Instant::now();
        match result {
            Ok(Some(fetched)) => {
                self.negative.invalidate(&sender);
                self.store_known(*role, id, fetched, attempted_at, now);
                Looked::Found
            }
            Ok(None) => {
                self.known().get_mut(*role).remove(id.as_str());
                self.negative.insert(sender, Negative::Unknown);
                Looked::Unknown
            }
            Err(reason) => {
                tracing::warn!(entity = %id, %reason, "Central Registry lookup failed");
                let held = {
                    let mut known = self.known();
                    match known.get_mut(*role).get_mut(id) {
                        Some(entry) => {
                            entry.clock.attempted_at = Some(attempted_at);
                            entry.clock.failed = true;
                            true
                        }
                        None => false,
                    }
                };
                if !held {
                    self.negative.insert(
                        sender,
                        Negative::Failed {
                            attempted_at,
                            reason: reason.clone(),
                        },
                    );
                }
                Looked::Failed(reason)
            }
        }
    }

    /// One lookup; `Ok(None)` when the CR says the entity is unknown to it (or hidden from us).
    async fn fetch(&self, role: Role, id: &str) -> Result<Option<Certificate>, String> {
        // Built by segment; an id outside the grammar is never sent (callers parse it before).
        let Ok(entity) = EntityId::parse(id) else {
            return Ok(None);
        };
        let base = reqwest::Url::parse(&self.base).map_err(|e| format!("the CR URL: {e}"))?;
        let url = entity_info_url(&base, role, &entity);
        let mut refreshed = false;
        loop {
            let served = if refreshed {
                self.broker.force_refresh(&self.caller).await
            } else {
                self.broker.token(&self.caller).await
            }
            .map_err(|e| format!("no entity token for the CR call: {e}"))?;
            let mut response = self
                .client
                .get(url.clone())
                .bearer_auth(served.token.expose())
                .header(reqwest::header::ACCEPT, "application/json")
                .send()
                .await
                .map_err(|e| {
                    if e.is_timeout() {
                        "timed out".to_string()
                    } else {
                        format!("transport: {}", describe(&e))
                    }
                })?;
            let status = response.status().as_u16();
            match status {
                200 => {}
                401 if !refreshed => {
                    tracing::info!(
                        "the Central Registry refused our entity token; forcing a refresh, once"
                    );
                    refreshed = true;
                    continue;
                }
                403 | 404 => return Ok(None),
                other => return Err(format!("HTTP {other}")),
            }
            let body = read_whole(&mut response, MAX_RECORD_BYTES)
                .await
                .map_err(|e| match e {
                    ReadError::Transport(_) => format!("reading the answer: {e}"),
                    ReadError::TooLarge(_) => e.to_string(),
                })?;
            return match record::parse(&body, id) {
                Ok(key) => Ok(Some(key)),
                Err(RecordError::NoRecord | RecordError::BadCertificate) => Ok(None),
                Err(e) => Err(e.to_string()),
            };
        }
    }
}
