//! What every cache of something from upstream shares, below the feature modules that own those caches
//! (`token`, `inbound`, `registry`) and depending on none of them.
//!
//! - [`flight`]: the one cancellation-safe single flight — concurrent callers for one key share one fetch,
//!   which runs to completion on a task of its own, bounded in time, whoever stops waiting for it.
//! - [`http`]: the one HTTP client builder, capped body reader and error describer of every upstream
//!   call (the IAM, the realm key set, the Central Registry, the Kubernetes sink, `certify`).

pub mod flight;
pub mod http;

pub use flight::{Flight, FlightError};
