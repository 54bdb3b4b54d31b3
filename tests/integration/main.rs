//! The integration tests: one binary, one module per part of the broker, all talking to the real
//! broker and the IAM simulator over loopback (and to the real binary where a process matters). The
//! soak runs apart, in `tests/soak.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail by panicking

mod helpers;

mod api;
mod cli;
mod conformance;
mod fi;
mod hostile;
mod hostile_iam;
mod iam_client;
mod inbound_limits;
mod inject;
mod jws;
mod real_peers;
mod resilience;
mod rotation;
mod sites;
mod verify;
