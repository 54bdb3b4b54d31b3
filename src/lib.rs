//! # aa-token-broker
//!
//! A sidecar that keeps a valid Sahamati Central Registry *entity access token* ready on localhost, so that
//! the services of an Account Aggregator network member never call the IAM themselves, never wait on it and
//! never see it fail while a valid token exists.
//!
//! ## Map of the crate
//!
//! | module | owns |
//! |---|---|
//! | [`config`] | the command line, the environment fallbacks and the TOML file, validated once into [`config::BrokerSettings`] |
//! | [`entity`] | the entity id newtype and the entity secret: where it is read from, how it is fingerprinted |
//! | [`iam`] | the HTTP client for the four IAM endpoints, their wire formats and their errors |
//! | [`token`] | the token type, the pure refresh/backoff policy, the moka-backed broker and its background refresher |
//! | [`inbound`] | verification of the entity tokens on incoming calls: the realm key set, its refetch policy, the checks |
//! | [`http`] | the local HTTP surface: routes, the caller guard, the accept loop with its limits |
//! | [`secret`] | the secret's lifecycle: admin login, secret read/reset, rotation, sinks, the lock, the manager task |
//! | [`metrics`] | the Prometheus registry and every metric the broker exports |
//! | [`simulator`] | a faithful, test-drivable stand-in for the IAM (real RS256 JWTs, JWKS, faults, counters) |
//! | [`telemetry`] | tracing subscriber set-up (text or JSON) |
//! | [`timefmt`] | RFC 3339 formatting and the lenient IAM timestamp parser |
//! | [`app`] | the broker application: built on a bound listener, run until a shutdown future completes |
//! | [`commands`] | one function per subcommand: `serve`, `token`, `iam-simulator`, `demo`, `secret`, `rotate` |
//!
//! Where is the refresh-ahead decision made? In [`token::policy`], a pure function of times and outcomes.
//! The task that sleeps and calls the IAM ([`token::refresher`]) only follows it.

#![forbid(unsafe_code)]

pub mod app;
pub mod commands;
pub mod config;
pub mod entity;
pub mod http;
pub mod iam;
pub mod inbound;
pub mod metrics;
pub mod secret;
pub mod simulator;
pub mod telemetry;
pub mod timefmt;
pub mod token;

/// Installs the process-wide rustls crypto provider (ring). Idempotent; every entry point that may open a
/// TLS connection calls it, because reqwest is built without a provider of its own to keep the binary small.
pub fn install_crypto_provider() {
    // An error only means a provider is already installed, which is what we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
}
