//! What the token path reports. Defined here, so the token module never depends on the metrics registry:
//! the metrics registry (`Metrics`) implements [`TokenRecorder`] (the way rust-spiffe's `X509Source` takes a
//! `MetricsRecorder`), and [`NoRecorder`] serves commands and tests that export nothing. What a report
//! names ([`Trigger`]) is defined here too, so the recorder needs nothing of the rest of the module.

use std::time::Duration;

use crate::entity::EntityId;

/// What started an upstream call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    Background,
    Client,
    Forced,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Background => "background",
            Trigger::Client => "client",
            Trigger::Forced => "forced",
        }
    }
}

/// One count that the hot path bumps: an atomic add behind a vtable, resolved once per entity.
pub trait Tally: Send + Sync {
    fn add(&self);
}

/// An entity's token requests by outcome.
pub struct RequestTallies {
    pub served: Box<dyn Tally>,
    pub stale: Box<dyn Tally>,
    pub unavailable: Box<dyn Tally>,
}

/// Events of the token path.
pub trait TokenRecorder: Send + Sync {
    /// The tallies of one entity's requests, asked for once when the broker is built.
    fn request_tallies(&self, entity: &EntityId) -> RequestTallies;
    /// One entity-token call to the IAM: what started it, how it ended (`ok` or a failure kind), how long.
    fn iam_request(
        &self,
        entity: &EntityId,
        trigger: Trigger,
        outcome: &'static str,
        took: Duration,
    );
    /// A token answer carried the IAM's grace-period warning.
    fn iam_warning(&self, entity: &EntityId);
    /// A forced refresh was asked for; `allowed` is false when it was rate-limited.
    fn forced_refresh(&self, entity: &EntityId, allowed: bool);
}

/// Records nothing.
pub struct NoRecorder;

struct Uncounted;

impl Tally for Uncounted {
    fn add(&self) {}
}

impl TokenRecorder for NoRecorder {
    fn request_tallies(&self, _: &EntityId) -> RequestTallies {
        RequestTallies {
            served: Box::new(Uncounted),
            stale: Box::new(Uncounted),
            unavailable: Box::new(Uncounted),
        }
    }
    fn iam_request(&self, _: &EntityId, _: Trigger, _: &'static str, _: Duration) {}
    fn iam_warning(&self, _: &EntityId) {}
    fn forced_refresh(&self, _: &EntityId, _: bool) {}
}
