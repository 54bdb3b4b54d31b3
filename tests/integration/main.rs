//! The integration tests: one binary, one module per part of the broker, all talking to the real
//! broker and the IAM simulator over loopback (and to the real binary where a process matters), all
//! through the harness in `common`. The soak (`soak`) is ignored by a plain `cargo test`; CI runs it on
//! its own.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail by panicking

mod common;

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
mod soak;
mod verify;
