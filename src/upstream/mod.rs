//! What every call to an upstream shares, below the feature modules that make those calls (`iam`,
//! `token`, `inbound`, `registry`, `secret`'s Kubernetes sink, `certify`) and depending on none of them.
//!
//! - [`flight`]: the one cancellation-safe single flight — concurrent callers for one key share one fetch,
//!   which runs to completion on a task of its own, bounded in time, whoever stops waiting for it.
//! - [`http`]: the one HTTP client builder, capped body reader and error describer of every upstream
//!   call (the IAM, the realm key set, the Central Registry, the Kubernetes sink, `certify`);
//!   [`tls`]: the one TLS configuration of those that trust the system roots, built once.

pub mod flight;
pub mod http;
pub mod tls;

pub use flight::{Flight, FlightError};
