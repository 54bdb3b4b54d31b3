//! `iam-simulator` (the simulator as a server) and `demo` (simulator and broker in one process).

use crate::config::settings;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use secrecy::SecretString;

use super::{bind, config_error, failure, log_or_exit, runtime, shutdown_signal};
use crate::app::Application;
use crate::config::cli::{DemoArgs, SimulatorArgs};
use crate::config::jws::JwsSettings;
use crate::config::{self, BrokerSettings, ConfigError, EntitySettings};
use crate::entity::{EntityId, SecretSource};
use crate::http::GuardSettings;
use crate::http::server::ServerLimits;
use crate::iam::IamTimeouts;
use crate::jws::SigningKeyFile;
use crate::simulator::{ResetMode, SimSettings, Simulator};
use crate::telemetry;
use crate::token::policy::RefreshPolicy;

/// The entity the simulator and the demo create when none is given.
pub const DEMO_ENTITY: &str = "FIU-DEMO";
const DEMO_SECRET: &str = "demo-secret-for-the-simulator-only";

/// `iam-simulator`: serve the simulator until SIGTERM/SIGINT.
pub fn iam_simulator(args: &SimulatorArgs) -> ExitCode {
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
        Err(e) => return failure(e),
    };
    if let Some(issuer) = &args.issuer {
        let issuer = issuer.trim().trim_end_matches('/').to_string();
        if !(issuer.starts_with("http://") || issuer.starts_with("https://")) {
            return config_error(&ConfigError::new("--issuer", "must be an http(s) URL"));
        }
        simulator.update_realm_settings(|s| s.issuer = Some(issuer));
    }
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
        let listener = match bind(args.listen, settings::SIMULATOR_LISTEN).await {
            Ok(listener) => listener,
            Err(code) => return code,
        };
        if let Ok(addr) = listener.local_addr() {
            simulator.note_listen_addr(addr);
        }
        let addr = listener
            .local_addr()
            .map_or_else(|_| args.listen.to_string(), |a| a.to_string());
        println!("IAM simulator: base URL http://{addr}/iam");
        println!("  issuer:   {}", simulator.issuer());
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

/// `demo`: the simulator and the broker in one process.
pub fn demo(args: &DemoArgs) -> ExitCode {
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
            Err(e) => return failure(e),
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
        let listener = match bind(args.listen, settings::LISTEN).await {
            Ok(listener) => listener,
            Err(code) => return code,
        };
        let id = match EntityId::parse(DEMO_ENTITY) {
            Ok(id) => id,
            Err(e) => return failure(e),
        };
        // The demo entity signs too: its key registered in the simulator's CR, the private half in a
        // private temporary file (removed when the demo ends), so `/v1/sign` and its metrics work.
        let (signing_dir, jws) = match demo_signer(&simulator, &iam_url, &id) {
            Ok(signer) => signer,
            Err(e) => return failure(e),
        };
        let settings = BrokerSettings {
            iam_url: iam_url.clone(),
            iam_timeouts: IamTimeouts::default(),
            entities: vec![EntitySettings {
                id,
                secret: SecretSource::Inline(Arc::new(SecretString::from(secret))),
                sink: None,
            }],
            listen: args.listen,
            admin_listen: None,
            guard: GuardSettings::default(),
            limits: ServerLimits::default(),
            worker_threads: config::DEFAULT_WORKER_THREADS,
            log,
            rotation: None,
            verify: crate::inbound::VerifySettings::for_iam_url(&iam_url),
            verify_listen: None,
            inbound: config::InboundLimits::defaults(config::DEFAULT_WORKER_THREADS),
        };
        let app = match Application::build(settings, listener, RefreshPolicy::default()) {
            Ok(app) => app.with_jws(jws),
            Err(e) => return failure(e),
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
        println!(
            "  curl -s -H \"Authorization: Bearer $(curl -s -H 'Metadata: true' -H 'Accept: text/plain' http://{addr}/v1/token)\" http://{addr}/v1/verify"
        );
        println!("  curl -s -H 'Metadata: true' --data-binary '{{\"ver\":\"2.0.0\"}}' http://{addr}/v1/sign");
        println!("  curl -s http://{addr}/readyz");
        println!("  curl -s http://{addr}/metrics");
        println!();
        println!("Ctrl-C stops it.");
        app.run_until(shutdown_signal()).await;
        drop(signing_dir);
        ExitCode::SUCCESS
    })
}

/// Registers the demo entity in the simulator's CR and writes its private key to a new private
/// directory: the signature settings that sign with it, and the directory (dropping it removes the key).
fn demo_signer(
    simulator: &Simulator,
    iam_url: &str,
    id: &EntityId,
) -> Result<(tempfile::TempDir, JwsSettings), String> {
    let kid = simulator.cr_register(id.as_str(), "FIU")?;
    let pem = simulator
        .cr_private_key_pem(id.as_str())
        .ok_or("the simulator holds no key for the demo entity")?;
    let dir = tempfile::Builder::new()
        .prefix("aa-token-broker-demo-")
        .tempdir()
        .map_err(|e| format!("cannot create the demo's key directory: {e}"))?;
    let path = dir.path().join("signing-key.pem");
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .and_then(|mut f| f.write_all(pem.as_bytes()))
            .map_err(|e| format!("cannot write the demo's signing key: {e}"))?;
    }
    let file = SigningKeyFile::open(&path, Some(&kid)).map_err(|e| e.to_string())?;
    let mut jws = JwsSettings::for_iam_url(iam_url);
    jws.signers = vec![(id.clone(), Arc::new(file))];
    Ok((dir, jws))
}
