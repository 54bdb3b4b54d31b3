//! What every cache of something from upstream shares, below the feature modules that own those caches
//! (`token`, `inbound`, `registry`) and depending on none of them.
//!
//! - [`flight`]: the one cancellation-safe single flight — concurrent callers for one key share one fetch,
//!   which runs to completion on a task of its own, bounded in time, whoever stops waiting for it.

pub mod flight;

pub use flight::{Flight, FlightError};
