//! One function per subcommand. Each validates its settings (exit 2 with one line on a mistake), builds
//! its runtime, and runs. Exit codes: 0 success, 1 runtime failure, 2 configuration error.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use secrecy::SecretString;
use tokio::net::TcpListener;

use crate::app::Application;
use crate::config::cli::{Command, DemoArgs, ListenArgs, SimulatorArgs, TokenArgs};
use crate::config::{self, BrokerSettings, ConfigError, EntitySettings, LogSettings};
use crate::entity::{EntityId, SecretSource};
use crate::http::GuardSettings;
use crate::http::server::ServerLimits;
use crate::iam::{IamClient, IamTimeouts};
use crate::simulator::{ResetMode, SimSettings, Simulator};
use crate::telemetry;
use crate::token::Token;
use crate::token::policy::RefreshPolicy;

/// Runs a parsed command to completion.
pub fn run(command: Command) -> ExitCode {
    match command {
        Command::Serve(args) => {
            let settings = match config::broker_settings(
                &args.iam,
                &args.entity,
                &args.listen,
                &args.log,
                entity_secret_from_env(),
            ) {
                Ok(settings) => settings,
                Err(e) => return config_error(&e),
            };
            serve(settings)
        }
        Command::Token(args) => token(&args),
        Command::IamSimulator(args) => iam_simulator(&args),
        Command::Demo(args) => demo(&args),
    }
}

/// Prints a configuration error as one line and returns exit code 2.
pub fn config_error(error: &ConfigError) -> ExitCode {
    eprintln!("aa-token-broker: {error}");
    ExitCode::from(2)
}

fn entity_secret_from_env() -> Option<SecretString> {
    std::env::var(config::ENV_ENTITY_SECRET)
        .ok()
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .map(SecretString::from)
}

fn runtime(worker_threads: usize) -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(worker_threads)
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("aa-token-broker: cannot start the runtime: {e}");
            ExitCode::FAILURE
        })
}

async fn bind(addr: std::net::SocketAddr, setting: &str) -> Result<TcpListener, ExitCode> {
    TcpListener::bind(addr).await.map_err(|e| {
        config_error(&ConfigError::new(
            setting,
            format!("cannot listen on {addr}: {e}"),
        ))
    })
}

/// `serve`: run the sidecar until SIGTERM/SIGINT.
pub fn serve(settings: BrokerSettings) -> ExitCode {
    telemetry::init(&settings.log);
    let rt = match runtime(settings.worker_threads) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    rt.block_on(async move {
        let listener = match bind(settings.listen, "--listen (AA_BROKER_LISTEN)").await {
            Ok(listener) => listener,
            Err(code) => return code,
        };
        let app = match Application::build(settings, listener, RefreshPolicy::default()) {
            Ok(app) => app,
            Err(e) => {
                eprintln!("aa-token-broker: {e}");
                return ExitCode::FAILURE;
            }
        };
        app.run_until(shutdown_signal()).await;
        ExitCode::SUCCESS
    })
}

/// `token`: one fetch straight from the IAM; the token alone on stdout.
fn token(args: &TokenArgs) -> ExitCode {
    let log = LogArgs {
        log_format: args.log.log_format.clone(),
        log_level: Some(args.log.log_level.clone().unwrap_or_else(|| "warn".into())),
    };
    let settings = match config::broker_settings(
        &args.iam,
        &args.entity,
        &ListenArgs::default(),
        &log,
        entity_secret_from_env(),
    ) {
        Ok(settings) => settings,
        Err(e) => return config_error(&e),
    };
    let chosen = match (&args.entity.entity_id, settings.entities.as_slice()) {
        (Some(raw), entities) => entities
            .iter()
            .find(|e| e.id.as_str() == raw.trim())
            .cloned(),
        (None, [only]) => Some(only.clone()),
        (None, _) => None,
    };
    let Some(entity) = chosen else {
        return config_error(&ConfigError::new(
            "--entity-id (AA_BROKER_ENTITY_ID)",
            "several entities are configured; choose one with --entity-id",
        ));
    };
    telemetry::init(&settings.log);
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("aa-token-broker: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(fetch_once(
        &settings.iam_url,
        settings.iam_timeouts,
        &entity,
    )) {
        Ok(token) => {
            println!("{}", token.expose());
            ExitCode::SUCCESS
        }
        Err(reason) => {
            eprintln!("aa-token-broker: no token for {}: {reason}", entity.id);
            ExitCode::FAILURE
        }
    }
}

use crate::config::cli::LogArgs;

/// Fetches and checks one token, without the cache.
pub async fn fetch_once(
    iam_url: &str,
    timeouts: IamTimeouts,
    entity: &EntitySettings,
) -> Result<Token, String> {
    let client = IamClient::new(iam_url, timeouts)?;
    let secret = entity.secret.load().await.map_err(|e| e.to_string())?;
    let grant = client
        .entity_token(&entity.id, &secret)
        .await
        .map_err(|e| e.to_string())?;
    Token::from_grant(&entity.id, grant, &RefreshPolicy::default(), 0.5).map_err(|e| e.to_string())
}

/// The entity the simulator and the demo create when none is given.
pub const DEMO_ENTITY: &str = "FIU-DEMO";
const DEMO_SECRET: &str = "demo-secret-for-the-simulator-only";

/// `iam-simulator`: serve the simulator until SIGTERM/SIGINT.
fn iam_simulator(args: &SimulatorArgs) -> ExitCode {
    let log = match log_or_exit(&args.log) {
        Ok(log) => log,
        Err(code) => return code,
    };
    let reset_mode = match args.reset_mode.as_str() {
        "revoke-immediately" => ResetMode::RevokeImmediately,
        "grace-period" => ResetMode::GracePeriod,
        other => {
            return config_error(&ConfigError::new(
                "--reset-mode",
                format!("{other:?} is neither revoke-immediately nor grace-period"),
            ));
        }
    };
    let settings = SimSettings {
        token_lifetime_secs: args.token_lifetime.max(1),
        latency_ms: args.latency_ms,
        reset_mode,
        ..SimSettings::default()
    };
    let simulator = match Simulator::new(settings) {
        Ok(simulator) => simulator,
        Err(e) => {
            eprintln!("aa-token-broker: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut entity_ids = Vec::new();
    for raw in &args.entities {
        let Some((id, secret)) = raw
            .split_once('=')
            .filter(|(id, s)| EntityId::parse(id).is_ok() && !s.is_empty())
        else {
            return config_error(&ConfigError::new("--entity", "expected ID=SECRET"));
        };
        simulator.add_entity(id, secret, Duration::from_secs(180 * 86_400));
        entity_ids.push(id.to_string());
    }
    if args.entities.is_empty() {
        simulator.add_entity(DEMO_ENTITY, DEMO_SECRET, Duration::from_secs(180 * 86_400));
    }
    for raw in &args.users {
        let mut parts = raw.splitn(3, '=');
        let (Some(email), Some(password), Some(entities)) =
            (parts.next(), parts.next(), parts.next())
        else {
            return config_error(&ConfigError::new(
                "--user",
                "expected EMAIL=PASSWORD=ENTITY[,ENTITY...]",
            ));
        };
        let entities: Vec<&str> = entities
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .collect();
        simulator.add_user(email, password, &entities);
    }
    telemetry::init(&log);
    let rt = match runtime(1) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    rt.block_on(async move {
        let listener = match bind(args.listen, "--listen (AA_SIMULATOR_LISTEN)").await {
            Ok(listener) => listener,
            Err(code) => return code,
        };
        let addr = listener
            .local_addr()
            .map_or_else(|_| args.listen.to_string(), |a| a.to_string());
        println!("IAM simulator: base URL http://{addr}/iam");
        println!("  JWKS:     http://{addr}/auth/realms/sahamati/protocol/openid-connect/certs");
        println!("  control:  http://{addr}/_simulator/stats");
        if args.entities.is_empty() {
            println!("  entity:   {DEMO_ENTITY} with the simulator-only secret {DEMO_SECRET:?}");
        } else {
            println!("  entities: {}", entity_ids.join(", "));
        }
        match simulator.serve(listener, shutdown_signal()).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("aa-token-broker: simulator stopped: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

fn log_or_exit(args: &LogArgs) -> Result<LogSettings, ExitCode> {
    config::log_settings(args).map_err(|e| config_error(&e))
}

/// `demo`: the simulator and the broker in one process.
fn demo(args: &DemoArgs) -> ExitCode {
    let log = match log_or_exit(&args.log) {
        Ok(log) => log,
        Err(code) => return code,
    };
    telemetry::init(&log);
    let rt = match runtime(config::DEFAULT_WORKER_THREADS) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    rt.block_on(async move {
        let simulator = match Simulator::new(SimSettings {
            token_lifetime_secs: args.token_lifetime.max(3),
            ..SimSettings::default()
        }) {
            Ok(simulator) => simulator,
            Err(e) => {
                eprintln!("aa-token-broker: {e}");
                return ExitCode::FAILURE;
            }
        };
        let secret = crate::simulator::state::random_secret(32);
        simulator.add_entity(DEMO_ENTITY, &secret, Duration::from_secs(180 * 86_400));
        let iam_url = match simulator.spawn_local().await {
            Ok(url) => url,
            Err(e) => {
                eprintln!("aa-token-broker: cannot start the simulator: {e}");
                return ExitCode::FAILURE;
            }
        };
        let listener = match bind(args.listen, "--listen (AA_BROKER_LISTEN)").await {
            Ok(listener) => listener,
            Err(code) => return code,
        };
        let id = match EntityId::parse(DEMO_ENTITY) {
            Ok(id) => id,
            Err(e) => {
                eprintln!("aa-token-broker: {e}");
                return ExitCode::FAILURE;
            }
        };
        let settings = BrokerSettings {
            iam_url: iam_url.clone(),
            iam_timeouts: IamTimeouts::default(),
            entities: vec![EntitySettings {
                id,
                secret: SecretSource::Inline(Arc::new(SecretString::from(secret))),
            }],
            listen: args.listen,
            guard: GuardSettings::default(),
            limits: ServerLimits::default(),
            request_timeout: Duration::from_secs(15),
            worker_threads: config::DEFAULT_WORKER_THREADS,
            log,
        };
        let app = match Application::build(settings, listener, RefreshPolicy::default()) {
            Ok(app) => app,
            Err(e) => {
                eprintln!("aa-token-broker: {e}");
                return ExitCode::FAILURE;
            }
        };
        let addr = app
            .local_addr()
            .map_or_else(|_| args.listen.to_string(), |a| a.to_string());
        println!("aa-token-broker demo");
        println!(
            "  IAM simulator: {iam_url} (entity {DEMO_ENTITY}, token lifetime {} s)",
            args.token_lifetime.max(3)
        );
        println!("  broker:        http://{addr}");
        println!();
        println!("Try:");
        println!("  curl -s -H 'Metadata: true' http://{addr}/v1/token");
        println!("  curl -s -H 'Metadata: true' -H 'Accept: text/plain' http://{addr}/v1/token");
        println!("  curl -s http://{addr}/readyz");
        println!("  curl -s http://{addr}/metrics");
        println!();
        println!("Ctrl-C stops it.");
        app.run_until(shutdown_signal()).await;
        ExitCode::SUCCESS
    })
}

/// Completes on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
    tracing::info!("shutdown signal received; finishing requests in flight");
}
