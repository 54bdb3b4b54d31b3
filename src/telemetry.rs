//! Tracing set-up: human-readable text (the default) or one JSON object per line (`--log-format json`),
//! always on stderr so that `token` can print the token alone on stdout.
//!
//! Nothing in the crate logs a secret, password or token; values that identify them are logged as
//! [`crate::entity::fingerprint`]s. The integration tests capture this output and search it.

use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::LogSettings;

/// Installs the global subscriber. A second call (tests) is a no-op.
///
/// The filter is a list of `level` and `target=level` directives (`info`, `aa_token_broker=debug,warn`):
/// [`Targets`], not `EnvFilter`, whose span and field filters would bring a regex engine into a
/// binary that every pod runs (a third of a megabyte of code, resident once mapped).
pub fn init(settings: &LogSettings) {
    let filter = settings
        .filter
        .parse::<Targets>()
        .unwrap_or_else(|_| Targets::new().with_default(LevelFilter::INFO));
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_target(false);
    let registry = tracing_subscriber::registry().with(filter);
    let _ = if settings.json {
        registry
            .with(fmt.json().flatten_event(true).with_current_span(false))
            .try_init()
    } else {
        registry.with(fmt.with_ansi(false)).try_init()
    };
}
