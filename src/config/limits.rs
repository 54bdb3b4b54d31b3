//! What the inbound half may cost, as configured: the body budget (bytes buffered at once), the deadline
//! for each body, and the crypto pool that runs RSA off the async workers (its threads and queue).

use std::time::Duration;

use super::{ConfigError, cli, file, seconds, settings};

/// What bodies and crypto may cost: one budget of buffered bytes, a deadline per body, and the pool that
/// runs RSA off the async workers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboundLimits {
    pub max_buffered_bytes: usize,
    pub body_timeout: Duration,
    pub crypto_threads: usize,
    pub crypto_queue: usize,
}

impl InboundLimits {
    /// The defaults for a runtime of `workers` threads.
    pub fn defaults(workers: usize) -> Self {
        Self {
            max_buffered_bytes: crate::budget::DEFAULT_BUDGET_BYTES,
            body_timeout: crate::http::body::DEFAULT_BODY_TIMEOUT,
            crypto_threads: crate::crypto_pool::CryptoPool::default_threads(workers),
            crypto_queue: crate::crypto_pool::DEFAULT_QUEUE,
        }
    }
}

/// The body budget, deadline and crypto pool settings.
pub(super) fn inbound_limits(
    listen: &cli::ListenArgs,
    file: &file::FileConfig,
    workers: usize,
) -> Result<InboundLimits, ConfigError> {
    let defaults = InboundLimits::defaults(workers);
    let max_buffered_bytes = listen
        .max_buffered_bytes
        .or(file.max_buffered_bytes)
        .unwrap_or(defaults.max_buffered_bytes);
    if !(64 * 1024..=crate::budget::MAX_BUDGET_BYTES).contains(&max_buffered_bytes) {
        return Err(ConfigError::new(
            settings::MAX_BUFFERED_BYTES,
            "must be between 65536 and 2147483648",
        ));
    }
    let body_timeout = seconds(
        settings::BODY_TIMEOUT,
        listen.body_timeout.or(file.body_timeout),
        defaults.body_timeout.as_secs_f64(),
    )?;
    let crypto_threads = listen
        .crypto_threads
        .or(file.crypto_threads)
        .unwrap_or(defaults.crypto_threads);
    if !(1..=64).contains(&crypto_threads) {
        return Err(ConfigError::new(
            settings::CRYPTO_THREADS,
            "must be between 1 and 64",
        ));
    }
    let crypto_queue = listen
        .crypto_queue
        .or(file.crypto_queue)
        .unwrap_or(defaults.crypto_queue);
    if !(1..=65_536).contains(&crypto_queue) {
        return Err(ConfigError::new(
            settings::CRYPTO_QUEUE,
            "must be between 1 and 65536",
        ));
    }
    Ok(InboundLimits {
        max_buffered_bytes,
        body_timeout,
        crypto_threads,
        crypto_queue,
    })
}
