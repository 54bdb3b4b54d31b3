//! `serve` (the sidecar) and `token` (one token for a script or an init container).

use crate::config::settings;
use std::process::ExitCode;

use super::{bind, config_error, current_thread_runtime, failure, runtime, shutdown_signal};
use crate::app::Application;
use crate::config::cli::{AdminArgs, ListenArgs, RotationArgs, ServeArgs, TokenArgs, VerifyArgs};
use crate::config::fi::FiSettings;
use crate::config::jws::JwsSettings;
use crate::config::rotation::env_secrets;
use crate::config::{self, BrokerArgs, BrokerSettings, ConfigError, EntitySettings};
use crate::iam::{IamClient, IamTimeouts};
use crate::telemetry;
use crate::token::Token;
use crate::token::policy::RefreshPolicy;
use crate::token::status::FetchError;

pub fn serve_command(args: &ServeArgs) -> ExitCode {
    let broker_args = BrokerArgs {
        iam: &args.iam,
        entity: &args.entity,
        listen: &args.listen,
        log: &args.log,
        admin: &args.admin,
        rotation: &args.rotation,
        verify: &args.verify,
    };
    let settings = match config::broker_settings(broker_args, &env_secrets()) {
        Ok(settings) => settings,
        Err(e) => return config_error(&e),
    };
    let jws = match config::broker_jws_settings(&args.entity, &args.jws, &settings) {
        Ok(jws) => jws,
        Err(e) => return config_error(&e),
    };
    match config::broker_fi_settings(&args.entity, &args.fi, &settings) {
        Ok(fi) => serve_full(settings, Some(jws), fi),
        Err(e) => config_error(&e),
    }
}

/// Runs the sidecar until SIGTERM/SIGINT.
pub fn serve(settings: BrokerSettings) -> ExitCode {
    serve_with(settings, None)
}

/// Runs the sidecar with signing settings (`None`: verification only, the CR beside the IAM).
pub fn serve_with(settings: BrokerSettings, jws: Option<JwsSettings>) -> ExitCode {
    serve_full(settings, jws, FiSettings::default())
}

/// Runs the sidecar with signing and FI settings.
pub fn serve_full(settings: BrokerSettings, jws: Option<JwsSettings>, fi: FiSettings) -> ExitCode {
    telemetry::init(&settings.log);
    let rt = match runtime(settings.worker_threads) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    rt.block_on(async move {
        let listener = match bind(settings.listen, settings::LISTEN).await {
            Ok(listener) => listener,
            Err(code) => return code,
        };
        let admin_listener = match settings.admin_listen {
            Some(addr) => match bind(addr, settings::ADMIN_LISTEN).await {
                Ok(listener) => Some(listener),
                Err(code) => return code,
            },
            None => None,
        };
        let verify_listener = match settings.verify_listen {
            Some(addr) => match bind(addr, settings::VERIFY_LISTEN).await {
                Ok(listener) => Some(listener),
                Err(code) => return code,
            },
            None => None,
        };
        let mut app = match Application::build(settings, listener, RefreshPolicy::default()) {
            Ok(app) => app,
            Err(e) => return failure(e),
        };
        if let Some(admin_listener) = admin_listener {
            app = app.with_admin_listener(admin_listener);
        }
        if let Some(jws) = jws {
            app = app.with_jws(jws);
        }
        app = app.with_fi(fi);
        if let Some(verify_listener) = verify_listener {
            app = app.with_verify_listener(verify_listener);
        }
        app.run_until(shutdown_signal()).await;
        ExitCode::SUCCESS
    })
}

/// `token`: one fetch straight from the IAM; the token alone on stdout.
pub fn token(args: &TokenArgs) -> ExitCode {
    let log = args.log.with_default_level("warn");
    let broker_args = BrokerArgs {
        iam: &args.iam,
        entity: &args.entity,
        listen: &ListenArgs::default(),
        log: &log,
        admin: &AdminArgs::default(),
        rotation: &RotationArgs::default(),
        verify: &VerifyArgs::default(),
    };
    let settings = match config::broker_settings(broker_args, &env_secrets()) {
        Ok(settings) => settings,
        Err(e) => return config_error(&e),
    };
    let chosen = match (&args.entity.entity_id, settings.entities.as_slice()) {
        (Some(id), entities) => entities.iter().find(|e| e.id == *id).cloned(),
        (None, [only]) => Some(only.clone()),
        (None, _) => None,
    };
    let Some(entity) = chosen else {
        return config_error(&ConfigError::new(
            settings::ENTITY_ID,
            "several entities are configured; choose one with --entity-id",
        ));
    };
    telemetry::init(&settings.log);
    let rt = match current_thread_runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    match rt.block_on(fetch_once(
        &settings.iam_url,
        settings.iam_timeouts,
        &entity,
    )) {
        Ok(token) if args.check => {
            println!(
                "{}: a token was minted; it expires {} (in {} s)",
                entity.id,
                crate::timefmt::rfc3339_seconds(token.expires_at_wall),
                token.lifetime.as_secs()
            );
            ExitCode::SUCCESS
        }
        Ok(token) => {
            println!("{}", token.expose());
            ExitCode::SUCCESS
        }
        Err(reason) => failure(format!("no token for {}: {reason}", entity.id)),
    }
}

/// Fetches and checks one token, without the cache.
pub async fn fetch_once(
    iam_url: &str,
    timeouts: IamTimeouts,
    entity: &EntitySettings,
) -> Result<Token, FetchError> {
    let client = IamClient::new(iam_url, timeouts)?;
    let secret = entity.secret.load().await?;
    let grant = client.entity_token(&entity.id, &secret).await?;
    Ok(Token::from_grant(
        &entity.id,
        grant,
        &RefreshPolicy::default(),
        0.5,
    )?)
}
