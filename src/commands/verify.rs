//! `verify`: one incoming token, read on stdin, verified like `/v1/verify` does — against the key set
//! of the allow-listed issuer it names, fetched once. Prints the token's claims (JSON, one line) and exits 0, or
//! prints the reason and exits 1; a configuration mistake exits 2. The token is never printed.

use std::io::Read;
use std::process::ExitCode;
use std::sync::Arc;

use super::{config_error, current_thread_runtime, failure, log_or_exit};
use crate::config::ConfigError;
use crate::config::cli::VerifyTokenArgs;
use crate::config::verify::verify_command_settings;
use crate::entity::EntityId;
use crate::inbound::{Denied, Expectation, NoRecorder, Rejection, Verifier};
use crate::telemetry;

/// Most bytes read from stdin: a token is at most 8 KiB; more is not a token.
const MAX_STDIN_BYTES: u64 = 64 * 1024;

pub fn run(args: &VerifyTokenArgs) -> ExitCode {
    // Errors only by default: the outcome is the one line printed at the end (a key set that could not
    // be fetched is named in it).
    let log = match log_or_exit(&args.log.with_default_level("error")) {
        Ok(log) => log,
        Err(code) => return code,
    };
    let settings = match verify_command_settings(args) {
        Ok(settings) => settings,
        Err(e) => return config_error(&e),
    };
    let expect = match Expectation::parse(
        args.role.as_deref(),
        args.entity_id.as_ref().map(EntityId::as_str),
    ) {
        Ok(expect) => expect,
        Err(e) => {
            let setting = match e {
                crate::inbound::BadExpectation::Role(_) => "--role",
                crate::inbound::BadExpectation::EntityId(_) => "--entity-id",
            };
            return config_error(&ConfigError::new(setting, e.to_string()));
        }
    };
    let mut input = Vec::new();
    if let Err(e) = std::io::stdin()
        .take(MAX_STDIN_BYTES)
        .read_to_end(&mut input)
    {
        return failure(format!("cannot read the token from stdin: {e}"));
    }
    let text = String::from_utf8_lossy(&input);
    let text = text.trim();
    // A pasted header value works too.
    let token = match text.get(..7) {
        Some(scheme) if scheme.eq_ignore_ascii_case("bearer ") => text[7..].trim(),
        _ => text,
    };
    telemetry::init(&log);
    let verifier = match Verifier::new(&settings, Arc::new(NoRecorder)) {
        Ok(verifier) => verifier,
        Err(e) => return config_error(&ConfigError::new("--verify-issuer", e.to_string())),
    };
    let rt = match current_thread_runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    // No fetch ahead: the first look-up fetches the key set of the token's (allowed) issuer, and only that.
    let result = rt.block_on(verifier.verify(token, &expect));
    match result {
        Ok(verified) => {
            println!("{}", verified.claims_json);
            ExitCode::SUCCESS
        }
        Err(Denied::Invalid(Rejection::UnknownKey)) => {
            // Say why there may be no key at all: the key set could not be fetched.
            let problems: Vec<String> = verifier
                .status()
                .key_sets
                .into_iter()
                .filter_map(|s| s.last_error.map(|e| format!("{}: {e}", s.url)))
                .collect();
            if problems.is_empty() {
                failure("token rejected: unknown key")
            } else {
                failure(format!(
                    "token rejected: unknown key (key set unavailable: {})",
                    problems.join("; ")
                ))
            }
        }
        Err(Denied::Invalid(rejection)) => {
            failure(format!("token rejected: {}", rejection.message()))
        }
        Err(Denied::Forbidden(mismatch)) => failure(format!("token rejected: {mismatch}")),
        Err(Denied::Busy) => failure("the broker is busy; try again"),
    }
}
