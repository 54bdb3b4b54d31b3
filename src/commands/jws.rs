//! `sign` and `verify-signature`: the `/v1/sign` and `/v1/verify-signature` of a script, the body read
//! on stdin.
//!
//! - `sign`: signs locally with the key file and prints the `x-jws-signature` value (exit 0), or the
//!   reason (exit 1). The key is never printed.
//! - `verify-signature --sender ID --type T --signature VALUE`: fetches the sender's key from the CR with
//!   this entity's token (one IAM call, one CR call), prints `{"sender","kid"}` and exits 0, or prints
//!   why and exits 1; a configuration mistake exits 2.

use std::io::Read;
use std::process::ExitCode;
use std::sync::Arc;

use super::{config_error, current_thread_runtime, failure, log_or_exit};
use crate::config::cli::{
    AdminArgs, ListenArgs, RotationArgs, SignArgs, VerifyArgs, VerifySignatureArgs,
};
use crate::config::settings::SIGNING_KEY_FILE as S_SIGNING_KEY_FILE;
use crate::config::{self, BrokerArgs, ConfigError};
use crate::entity::Role;
use crate::http::jws::DEFAULT_MAX_BODY_BYTES;
use crate::iam::IamClient;
use crate::jws::SigningKeyFile;
use crate::registry::{Found, Registry};
use crate::secret::SecretCell;
use crate::telemetry;
use crate::token::broker::Broker;
use crate::token::policy::RefreshPolicy;
use crate::token::recorder::NoRecorder;

/// The body on stdin, at most `limit` bytes.
fn read_body(limit: usize) -> Result<Vec<u8>, ExitCode> {
    let mut body = Vec::new();
    let cap = u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1);
    if let Err(e) = std::io::stdin().take(cap).read_to_end(&mut body) {
        return Err(failure(format!("cannot read the body from stdin: {e}")));
    }
    if body.len() > limit {
        return Err(failure(format!("the body is larger than {limit} bytes")));
    }
    Ok(body)
}

pub fn sign(args: &SignArgs) -> ExitCode {
    let Some(path) = &args.key.signing_key_file else {
        return config_error(&ConfigError::new(S_SIGNING_KEY_FILE, "no key file given"));
    };
    let key = match SigningKeyFile::open(path, args.key.signing_kid.as_deref()) {
        Ok(file) => match file.key() {
            Ok(key) => key,
            Err(e) => return config_error(&ConfigError::new(S_SIGNING_KEY_FILE, e)),
        },
        Err(e) => return config_error(&ConfigError::new(S_SIGNING_KEY_FILE, e)),
    };
    let body = match read_body(DEFAULT_MAX_BODY_BYTES) {
        Ok(body) => body,
        Err(code) => return code,
    };
    match key.sign(&body) {
        Ok(signature) => {
            println!("{signature}");
            ExitCode::SUCCESS
        }
        Err(e) => failure(e),
    }
}

pub fn verify_signature(args: &VerifySignatureArgs) -> ExitCode {
    let log = match log_or_exit(&args.log.with_default_level("error")) {
        Ok(log) => log,
        Err(code) => return code,
    };
    let Some(role) = Role::parse(&args.kind) else {
        return config_error(&ConfigError::new("--type", "must be AA, FIU or FIP"));
    };
    let broker_args = BrokerArgs {
        iam: &args.iam,
        entity: &args.entity,
        listen: &ListenArgs::default(),
        log: &args.log,
        admin: &AdminArgs::default(),
        rotation: &RotationArgs::default(),
        verify: &VerifyArgs::default(),
    };
    let settings = match config::broker_settings(broker_args, &config::rotation::env_secrets()) {
        Ok(settings) => settings,
        Err(e) => return config_error(&e),
    };
    let jws = match config::broker_jws_settings(&args.entity, &args.jws, &settings) {
        Ok(jws) => jws,
        Err(e) => return config_error(&e),
    };
    let detached = match crate::jws::parse(args.signature.as_bytes()) {
        Ok(detached) => detached,
        Err(e) => return failure(format!("signature_mismatch: {e}")),
    };
    let body = match read_body(jws.max_body_bytes) {
        Ok(body) => body,
        Err(code) => return code,
    };
    telemetry::init(&log);
    let rt = match current_thread_runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let outcome = rt.block_on(async {
        let iam =
            IamClient::new(&settings.iam_url, settings.iam_timeouts).map_err(|e| e.to_string())?;
        let cells = settings
            .entities
            .iter()
            .map(|e| (e.id.clone(), SecretCell::new(e.secret.clone())))
            .collect();
        let broker = Broker::new(cells, iam, RefreshPolicy::default(), Arc::new(NoRecorder));
        let caller = settings
            .entities
            .first()
            .map(|e| e.id.clone())
            .ok_or("no entity configured")?;
        let registry = Registry::new(
            &jws.cr_url,
            broker,
            caller,
            jws.policy,
            settings.iam_timeouts,
            Arc::new(crate::registry::NoRecorder),
        )
        .map_err(|e| e.to_string())?;
        let found = registry
            .key_for(role, args.sender.as_str(), detached.kid.as_deref())
            .await
            .map_err(|e| e.to_string())?;
        match found {
            Found::Key(choice) => crate::jws::verify(&detached, &choice.key, &body)
                .map(|()| choice.kid.clone())
                .map_err(|e| format!("signature_mismatch: {e}")),
            Found::NoSuchKid => Err(
                "signature_mismatch: the signature names a kid the sender has not registered"
                    .to_string(),
            ),
        }
    });
    match outcome {
        Ok(kid) => {
            println!(
                "{}",
                serde_json::json!({ "sender": args.sender.as_str(), "kid": kid })
            );
            ExitCode::SUCCESS
        }
        Err(reason) => failure(reason),
    }
}
