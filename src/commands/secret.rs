//! `secret read`, `secret reset` and `rotate`: the admin operations, for people and for a Kubernetes
//! CronJob. Passwords and secrets are never echoed, logged or put in errors; a reset secret is stored in
//! the sink before anything is printed. And `secret fingerprint`, which needs nothing but the secret: the
//! fingerprint to compare with the one the broker logs and shows in `/readyz`.

use crate::config::settings;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use secrecy::ExposeSecret;

use super::{config_error, current_thread_runtime, failure};
use crate::config::ConfigError;
use crate::config::cli::{
    LogArgs, RotateArgs, RotationArgs, SecretFingerprintArgs, SecretReadArgs, SecretResetArgs,
};
use crate::config::rotation::{AdminContext, admin_context, env_secrets};
use crate::entity::{MAX_SECRET_FILE_BYTES, fingerprint, read_secret_file, secret_from_bytes};
use crate::iam::IamClient;
use crate::secret::policy::{RotationDecision, decide};
use crate::secret::rotation::RotationError;
use crate::secret::sink::write_atomically;
use crate::secret::{AdminSession, NoRecorder, Rotator, SecretSink, SinkSpec, lock};
use crate::telemetry;
use crate::timefmt;

/// Attempts to store a reset secret before giving up.
const PERSIST_ATTEMPTS: u32 = 3;

fn quiet_by_default(log: &LogArgs) -> LogArgs {
    LogArgs {
        log_format: log.log_format.clone(),
        log_level: Some(log.log_level.clone().unwrap_or_else(|| "warn".into())),
    }
}

/// The start every admin command shares: settings validated (exit 2 on a mistake), logging, a runtime.
fn prepare(
    settings: Result<AdminContext, ConfigError>,
) -> Result<(AdminContext, tokio::runtime::Runtime), ExitCode> {
    let ctx = settings.map_err(|e| config_error(&e))?;
    telemetry::init(&ctx.log);
    let rt = current_thread_runtime()?;
    Ok((ctx, rt))
}

fn rotator(ctx: &AdminContext, expiry_days: u32) -> Result<Rotator, ExitCode> {
    let iam = IamClient::new(&ctx.iam_url, ctx.iam_timeouts).map_err(failure)?;
    Ok(Rotator::new(
        AdminSession::new(iam, ctx.rotation.admin.clone(), Arc::new(NoRecorder)),
        expiry_days,
        ctx.rotation.reset_bound(),
    ))
}

fn sink(ctx: &AdminContext) -> Result<SecretSink, ExitCode> {
    let spec = ctx.sink.clone().ok_or_else(|| {
        config_error(&ConfigError::new(
            settings::SECRET_SINK,
            "nowhere to store a new secret: give --secret-file or --secret-sink",
        ))
    })?;
    SecretSink::new(spec, ctx.rotation.kube.as_ref())
        .map_err(|e| config_error(&ConfigError::new(settings::SECRET_SINK, e)))
}

fn describe_expiry(expires_on: Option<SystemTime>) -> String {
    match expires_on {
        Some(at) => {
            let days =
                (timefmt::unix_seconds(at) - timefmt::unix_seconds(SystemTime::now())) / 86_400.0;
            format!(
                "expires {} ({days:.1} days from now)",
                timefmt::rfc3339_seconds(at)
            )
        }
        None => "expiry not reported".into(),
    }
}

/// `secret fingerprint [FILE|-]`: the secret read as the broker reads its secret file (at most 4 KiB,
/// UTF-8, surrounding whitespace ignored), and its fingerprint on stdout. Exit 1 with the reason when it
/// cannot be read; the secret itself is never printed.
pub fn fingerprint_command(args: &SecretFingerprintArgs) -> ExitCode {
    use std::io::Read;
    let secret = if args.file == std::path::Path::new("-") {
        let mut raw = Vec::new();
        if let Err(e) = std::io::stdin()
            .lock()
            .take(MAX_SECRET_FILE_BYTES + 1)
            .read_to_end(&mut raw)
        {
            return failure(format!(
                "cannot read the secret from stdin: {}",
                crate::private_file::io_reason(&e)
            ));
        }
        if raw.len() as u64 > MAX_SECRET_FILE_BYTES {
            return failure(format!(
                "the secret on stdin is larger than {MAX_SECRET_FILE_BYTES} bytes"
            ));
        }
        secret_from_bytes(raw, std::path::Path::new("(stdin)"))
    } else {
        read_secret_file(&args.file)
    };
    match secret {
        Ok(secret) => {
            println!("{}", fingerprint(&secret));
            ExitCode::SUCCESS
        }
        Err(e) => failure(e),
    }
}

/// `secret read [--show-secret] [--output FILE]`.
pub fn read(args: &SecretReadArgs) -> ExitCode {
    let (ctx, rt) = match prepare(admin_context(
        &args.iam,
        &args.entity,
        &args.admin,
        &RotationArgs::default(),
        &quiet_by_default(&args.log),
        &env_secrets(),
    )) {
        Ok(prepared) => prepared,
        Err(code) => return code,
    };
    rt.block_on(async {
        let rotator = match rotator(&ctx, ctx.rotation.expiry_days) {
            Ok(rotator) => rotator,
            Err(code) => return code,
        };
        let current = match rotator.read_current(&ctx.entity).await {
            Ok(current) => current,
            Err(e) => return failure(e),
        };
        if let Some(path) = &args.output
            && let Err(e) = write_atomically(path, &current.secret)
        {
            return failure(e);
        }
        let summary = format!(
            "{}: secret {} {}{}",
            ctx.entity,
            fingerprint(&current.secret),
            describe_expiry(current.expires_on),
            args.output
                .as_ref()
                .map(|p| format!("; written to {}", p.display()))
                .unwrap_or_default()
        );
        if args.show_secret {
            eprintln!("{summary}");
            println!("{}", current.secret.expose_secret());
        } else {
            println!("{summary}");
        }
        ExitCode::SUCCESS
    })
}

/// `secret reset [--expiry-days N]`.
pub fn reset(args: &SecretResetArgs) -> ExitCode {
    // The validity is checked before anything else, like every other setting.
    let expiry_days = match args.expiry_days {
        Some(days) if !(1..=180).contains(&days) => {
            return config_error(&ConfigError::new(
                "--expiry-days",
                "must be between 1 and 180",
            ));
        }
        days => days,
    };
    let (ctx, rt) = match prepare(admin_context(
        &args.iam,
        &args.entity,
        &args.admin,
        &args.rotation,
        &quiet_by_default(&args.log),
        &env_secrets(),
    )) {
        Ok(prepared) => prepared,
        Err(code) => return code,
    };
    let expiry_days = expiry_days.unwrap_or(ctx.rotation.expiry_days);
    rt.block_on(async {
        let (rotator, sink) = match (rotator(&ctx, expiry_days), sink(&ctx)) {
            (Ok(rotator), Ok(sink)) => (rotator, sink),
            (Err(code), _) | (_, Err(code)) => return code,
        };
        match rotate_and_store(&rotator, &ctx, &sink, false).await {
            Ok(message) => {
                println!("{}: secret reset; {message}", ctx.entity);
                ExitCode::SUCCESS
            }
            Err(code) => code,
        }
    })
}

/// `rotate [--force]`: the CronJob's command.
pub fn rotate(args: &RotateArgs) -> ExitCode {
    let (ctx, rt) = match prepare(admin_context(
        &args.iam,
        &args.entity,
        &args.admin,
        &args.rotation,
        &quiet_by_default(&args.log),
        &env_secrets(),
    )) {
        Ok(prepared) => prepared,
        Err(code) => return code,
    };
    rt.block_on(async {
        let (rotator, sink) = match (rotator(&ctx, ctx.rotation.expiry_days), sink(&ctx)) {
            (Ok(rotator), Ok(sink)) => (rotator, sink),
            (Err(code), _) | (_, Err(code)) => return code,
        };
        let before = match rotator.read_current(&ctx.entity).await {
            Ok(current) => current,
            Err(e) => return failure(e),
        };
        let decision = decide(
            SystemTime::now(),
            before.expires_on,
            false,
            ctx.rotation.rotate_before,
            None,
            ctx.rotation.check_interval,
        );
        let reason = match decision {
            RotationDecision::Due(reason) => reason,
            _ if args.force => "forced",
            _ => {
                println!(
                    "{}: not due: secret {}; the threshold is {:.1} days",
                    ctx.entity,
                    describe_expiry(before.expires_on),
                    ctx.rotation.rotate_before.as_secs_f64() / 86_400.0
                );
                return ExitCode::SUCCESS;
            }
        };
        let _lock = match sink.spec() {
            SinkSpec::File(path) => match lock::acquire(path, Duration::from_secs(60)).await {
                Ok(held) => Some(held),
                Err(e) => return failure(e),
            },
            _ => None,
        };
        // Another rotator may have finished while we waited for the lock.
        if let Ok(now) = rotator.read_current(&ctx.entity).await
            && now.secret.expose_secret() != before.secret.expose_secret()
            && !args.force
        {
            println!(
                "{}: already rotated by another process; secret {}",
                ctx.entity,
                describe_expiry(now.expires_on)
            );
            return ExitCode::SUCCESS;
        }
        // `--force` is an operator's deliberate, one-off act: it is not held to the reset bound.
        match rotate_and_store(&rotator, &ctx, &sink, !args.force).await {
            Ok(message) => {
                println!("{}: rotated ({reason}); {message}", ctx.entity);
                ExitCode::SUCCESS
            }
            Err(code) => code,
        }
    })
}

/// Reset, store (retrying the sink), verify. The message says where the secret went and when it expires.
async fn rotate_and_store(
    rotator: &Rotator,
    ctx: &AdminContext,
    sink: &SecretSink,
    bounded: bool,
) -> Result<String, ExitCode> {
    match rotator.rotate_with(&ctx.entity, sink, bounded).await {
        Ok(rotated) => Ok(format!(
            "stored in {}; {}",
            sink.spec(),
            describe_expiry(rotated.expires_on)
        )),
        Err(RotationError::Persist { rotated, error }) => {
            let mut last = error;
            for attempt in 1..PERSIST_ATTEMPTS {
                tokio::time::sleep(Duration::from_secs(u64::from(attempt))).await;
                match rotator.persist(&ctx.entity, sink, &rotated.secret).await {
                    Ok(_) => {
                        return Ok(format!(
                            "stored in {} (attempt {}); {}",
                            sink.spec(),
                            attempt + 1,
                            describe_expiry(rotated.expires_on)
                        ));
                    }
                    Err(e) => last = e,
                }
            }
            Err(failure(format!(
                "the secret was reset but could not be stored in {}: {last}. The IAM has revoked the old secret; recover the new one with `aa-token-broker secret read --output FILE`",
                sink.spec()
            )))
        }
        Err(e) => Err(failure(e)),
    }
}
