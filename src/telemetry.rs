//! Tracing set-up: human-readable text (the default) or one JSON object per line (`--log-format json`),
//! always on stderr so that `token` can print the token alone on stdout.
//!
//! Nothing in the crate logs a secret, password or token; values that identify them are logged as
//! [`crate::entity::fingerprint`]s. The integration tests capture this output and search it.

use crate::config::LogSettings;

/// Installs the global subscriber. A second call (tests) is a no-op.
pub fn init(settings: &LogSettings) {
    let filter = tracing_subscriber::EnvFilter::try_new(&settings.filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    let _ = if settings.json {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init()
    } else {
        builder.with_ansi(false).try_init()
    };
}
