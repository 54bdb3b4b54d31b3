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
//! | [`config`] | the command line, the environment fallbacks and the TOML file, validated once into [`config::BrokerSettings`]; every setting's names in [`config::settings`] |
//! | [`entity`] | the entity id newtype, the roles of the network (and who may call whom), and the entity secret: where it is read from, how it is fingerprinted |
//! | [`private_file`] | how the private files (secret, password, signing key) are read: regular files only, capped, errors in plain words, the warning on a loose mode |
//! | [`iam`] | the HTTP client for the four IAM endpoints, their wire formats and their errors |
//! | [`token`] | the token type, its pure refresh/backoff/caller policy, the broker handle, the one place that fetches, the background refresher |
//! | [`secret`] | the secret's lifecycle: the cell the token path reads the secret from, admin login within its limits, the reset bound, rotation, sinks, the lock, the manager task |
//! | [`inbound`] | verification of the entity tokens on incoming calls: the realm key set, its refetch policy, the checks |
//! | [`jws`] | detached `x-jws-signature`s (RFC 7797): parse, sign, verify; our signing key |
//! | [`rebit`] | ReBIT's message rules a sidecar can decide: the envelope, the endpoints and who may notify them, bounded scans of a body |
//! | [`registry`] | the Central Registry entity-info client, the cache of peers' signing keys and its refetch policy |
//! | [`fi`] | FI data encryption (rahasya's scheme): BouncyCastle's Curve25519 on curve25519-dalek, `KeyMaterial`, the KEK and key handles, the routes' JSON worked in place; no HTTP |
//! | [`http`] | the local HTTP surface: routes, the caller guard, the hot path, the accept loop with its limits |
//! | [`metrics`] | the Prometheus registry; it implements the recorder traits of `token`, `secret`, `inbound` and `registry` |
//! | [`simulator`] | a faithful, test-drivable stand-in for the IAM (real RS256 JWTs, JWKS, faults, counters) |
//! | [`telemetry`] | tracing subscriber set-up (text or JSON) |
//! | [`upstream`] | what every upstream cache shares: the one cancellation-safe single flight ([`upstream::Flight`]) |
//! | [`timefmt`] | the one checked conversion of upstream times, total formatters, the lenient IAM timestamp parser |
//! | [`backoff`] | the exponential backoff with equal jitter that every retry loop uses |
//! | [`certify`] | the certification cases a sidecar can decide, by case id, and the runner `certify` uses against an ingress |
//! | [`budget`] | the one budget of request-body bytes the process may hold at once |
//! | [`crypto_pool`] | the bounded threads that run RSA (and the hashing of large bodies) off the async workers |
//! | [`supervise`] | restarts a long-lived task that panicked, so refresh and rotation survive a bug |
//! | [`app`] | the broker application: built on a bound listener, run until a shutdown future completes |
//! | [`inject`] | `inject`: Kubernetes manifests in, the same with the sidecar in every pod template out (a pure function; never on the serving path) |
//! | [`commands`] | one function per subcommand: `serve`, `token`, `iam-simulator`, `demo`, `secret`, `rotate`, `inject`, `verify`, `sign`, `verify-signature`, `fi`, `certify` |
//!
//! Dependencies point one way: `app` and `commands` wire everything; `http` uses `token`, `inbound` and
//! `metrics`; `token` reads the secret from `secret` ([`secret::SecretCell`]) and both call `iam`; the
//! foundations (`entity`, `timefmt`, `backoff`, `upstream`) use nothing above them; the token's cold
//! fetch, the realm key set and the CR's records each fetch through one [`upstream::Flight`]. `metrics`
//! observes: `token`, `secret`, `inbound` and `registry` define what they report (recorder traits) and
//! never import it; the body budget and the crypto pool it reads at scrape time. `jws` works on bytes (and
//! its own key file); `registry` fetches CR keys with a token from `token` and follows
//! [`registry::policy`]. `rebit` (envelope, endpoints, bounded scans) uses only `entity`; `http` follows
//! it for `/v1/authorize` and uses `fi` for `KeyMaterial`. `budget` and `crypto_pool` are foundations:
//! `http` reads bodies through the one and runs RSA (and `inbound` its token signatures) on the other.
//! `certify` is a client: it drives an ingress and the simulator over HTTP.
//!
//! Where is a decision made? In a `policy` module, as a pure function of times and outcomes:
//! [`token::policy`] (refresh ahead, retry, when a caller may call the IAM), [`secret::policy`] (when to
//! rotate, which expiries to believe, the reset bound, the admin-login limits), [`inbound::policy`] (when
//! to fetch keys), [`registry::policy`] (when to ask the CR for a peer's key, the global budget of CR
//! lookups, and how long a replaced key verifies). The tasks that sleep and call upstream only follow them.

#![forbid(unsafe_code)]

pub mod app;
pub mod backoff;
pub mod budget;
pub mod certify;
pub mod commands;
pub mod config;
pub mod crypto_pool;
pub mod entity;
pub mod fi;
pub mod http;
pub mod iam;
pub mod inbound;
pub mod inject;
pub mod jws;
pub mod metrics;
pub mod private_file;
pub mod rebit;
pub mod registry;
pub mod secret;
pub mod simulator;
pub mod supervise;
pub mod telemetry;
pub mod timefmt;
pub mod tls;
pub mod token;
pub mod upstream;

/// Installs the process-wide rustls crypto provider (ring). Idempotent; every entry point that may open a
/// TLS connection calls it, because reqwest is built without a provider of its own to keep the binary small.
pub fn install_crypto_provider() {
    // An error only means a provider is already installed, which is what we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Helpers for the unit tests.
#[cfg(test)]
pub(crate) mod test_support {
    use std::path::{Path, PathBuf};

    /// Writes a secret file with mode 0600 and returns its path.
    pub fn secret_file(dir: &Path, name: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join(name);
        std::fs::write(&path, "unit-test-secret\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        path
    }
}
