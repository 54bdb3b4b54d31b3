//! `secret read`, `secret reset` and `rotate`: the admin operations, for people and for a Kubernetes
//! CronJob. Passwords and secrets are never echoed, logged or put in errors; a reset secret is stored in
//! the sink before anything is printed. `rotate` is one site's rotator: it converges its store on the
//! IAM's current secret before anything, and resets only as its role (primary or standby) allows.
//! And `secret fingerprint`, which needs nothing but the secret: the fingerprint to compare with the
//! one the broker logs and shows in `/readyz`.

use crate::config::settings;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use secrecy::{ExposeSecret, SecretString};

use super::{config_error, current_thread_runtime, failure};
use crate::config::ConfigError;
use crate::config::cli::{
    AdminArgs, EntityArgs, IamArgs, LogArgs, RotateArgs, RotationArgs, SecretFingerprintArgs,
    SecretReadArgs, SecretResetArgs,
};
use crate::config::rotation::{AdminContext, admin_context, env_secrets};
use crate::entity::{MAX_SECRET_FILE_BYTES, fingerprint, read_secret_file, secret_from_bytes};
use crate::iam::IamClient;
use crate::secret::ledger::{Ledgered, ResetLedger};
use crate::secret::policy::sites::{Reading, SiteAction, Store, Thresholds, recheck, site_action};
use crate::secret::policy::{ExpirySource, check_expiry};
use crate::secret::rotation::{Rotated, RotationError};
use crate::secret::sink::{SinkError, read_back, write_atomically};
use crate::secret::{AdminSession, NoRecorder, Role, Rotator, SecretSink, SinkSpec, lock};
use crate::telemetry;
use crate::timefmt;

/// Attempts to store a reset secret before giving up.
const PERSIST_ATTEMPTS: u32 = 3;

/// The start every admin command shares: settings validated (exit 2 on a mistake), logging (warnings and
/// worse unless `--log-level` says otherwise), a runtime.
fn prepare(
    iam: &IamArgs,
    entity: &EntityArgs,
    admin: &AdminArgs,
    rotation: &RotationArgs,
    log: &LogArgs,
) -> Result<(AdminContext, tokio::runtime::Runtime), ExitCode> {
    let ctx = admin_context(
        iam,
        entity,
        admin,
        rotation,
        &log.with_default_level("warn"),
        &env_secrets(),
    )
    .map_err(|e| config_error(&e))?;
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
    let (ctx, rt) = match prepare(
        &args.iam,
        &args.entity,
        &args.admin,
        &RotationArgs::default(),
        &args.log,
    ) {
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
    let (ctx, rt) = match prepare(
        &args.iam,
        &args.entity,
        &args.admin,
        &args.rotation,
        &args.log,
    ) {
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

/// `rotate [--force] [--standby]`: the CronJob's command. It reads the IAM first and converges a store
/// that differs (another site reset the secret, or a backup was restored) without resetting; it resets
/// only as its role allows ([`site_action`]); and it reads the IAM again immediately before a reset, so a
/// reset another site made moments ago is adopted, not repeated ([`recheck`]).
pub fn rotate(args: &RotateArgs) -> ExitCode {
    let (ctx, rt) = match prepare(
        &args.iam,
        &args.entity,
        &args.admin,
        &args.rotation,
        &args.log,
    ) {
        Ok(prepared) => prepared,
        Err(code) => return code,
    };
    rt.block_on(async {
        let (rotator, sink) = match (rotator(&ctx, ctx.rotation.expiry_days), sink(&ctx)) {
            (Ok(rotator), Ok(sink)) => (rotator, sink),
            (Err(code), _) | (_, Err(code)) => return code,
        };
        match rotate_site(&rotator, &ctx, &sink, args.force).await {
            Ok(message) => {
                println!("{}: {message}", ctx.entity);
                ExitCode::SUCCESS
            }
            Err(code) => code,
        }
    })
}

/// One run of a rotator at its site; the message says what it did.
async fn rotate_site(
    rotator: &Rotator,
    ctx: &AdminContext,
    sink: &SecretSink,
    force: bool,
) -> Result<String, ExitCode> {
    let role = ctx.rotation.role;
    let limits = Thresholds {
        rotate_before: ctx.rotation.rotate_before,
        granted_validity: None,
        check_interval: ctx.rotation.check_interval,
    };
    let first = rotator.read_current(&ctx.entity).await.map_err(failure)?;
    let stored = read_store(ctx, sink).await.map_err(failure)?;
    let store = match &stored {
        None => Store::Unreadable,
        Some(Some(secret)) if secret.expose_secret() == first.secret.expose_secret() => {
            Store::Current
        }
        Some(_) => Store::Differs,
    };
    // An expiry that cannot be right is no reason to reset (as in `serve`): it is taken as unknown.
    let believable = |at| check_expiry(SystemTime::now(), at, ExpirySource::Read).known();
    let reading = Reading {
        expires_at: believable(first.expires_on),
        in_grace: false,
    };
    let mut action = site_action(role, SystemTime::now(), reading, store, limits);
    let mut said = Vec::new();
    let mut lock = None;
    // What the store holds once converged: the secret the read just before a reset is compared with.
    let mut holds = fingerprint(&first.secret);
    let mut expires_on = first.expires_on;
    // A store that cannot be read back is given the IAM's current secret on every run that resets
    // nothing: writing the secret the IAM accepts is always safe, and it is the only way such a store
    // can follow a reset made elsewhere.
    let write_through = store == Store::Unreadable && !matches!(action, SiteAction::Reset(_));
    if action == SiteAction::Converge || write_through {
        lock = lock_store(sink).await?;
        let before = stored.as_ref().map(|s| s.as_ref().map(fingerprint));
        let converged = rotator
            .converge(&ctx.entity, sink, first)
            .await
            .map_err(failure)?;
        holds = fingerprint(&converged.secret);
        expires_on = converged.expires_on;
        match before {
            Some(before) => {
                tracing::info!(entity = %ctx.entity, store_was = before.as_deref().unwrap_or("none"), store_now = %holds, site = %ctx.rotation.site, role = role.as_str(), "converged: the store holds the IAM's current secret (no reset)");
                said.push(format!(
                    "converged: the store held {}, the IAM's current secret is {holds} (reset elsewhere, or restored from a backup); no reset",
                    before.as_deref().unwrap_or("no secret")
                ));
            }
            None => said.push(format!(
                "the store cannot be read back, so it was given the IAM's current secret {holds}"
            )),
        }
        action = site_action(
            role,
            SystemTime::now(),
            Reading {
                expires_at: believable(expires_on),
                in_grace: false,
            },
            Store::Current,
            limits,
        );
    }
    let reason = match action {
        SiteAction::Reset(reason) => reason,
        _ if force => "forced",
        _ => {
            said.push(not_due(ctx, sink, expires_on).await);
            return Ok(said.join("; "));
        }
    };
    if lock.is_none() {
        lock = lock_store(sink).await?;
    }
    // Immediately before the reset, read again: a reset another site made moments ago is adopted.
    if !force {
        let second = rotator.read_current(&ctx.entity).await.map_err(failure)?;
        match recheck(
            role,
            SystemTime::now(),
            &holds,
            &fingerprint(&second.secret),
            believable(second.expires_on),
            limits,
        ) {
            SiteAction::Reset(_) => {}
            SiteAction::Converge => {
                let adopted = rotator
                    .converge(&ctx.entity, sink, second)
                    .await
                    .map_err(failure)?;
                tracing::info!(entity = %ctx.entity, store_was = %holds, store_now = %fingerprint(&adopted.secret), "the IAM's secret changed just before the reset (reset elsewhere moments ago); adopted, no reset");
                said.push(format!(
                    "already rotated elsewhere moments ago: adopted {} ({}); no reset",
                    fingerprint(&adopted.secret),
                    describe_expiry(adopted.expires_on)
                ));
                return Ok(said.join("; "));
            }
            SiteAction::Wait { .. } | SiteAction::Unknown => {
                said.push(format!(
                    "no longer due after re-reading the IAM: secret {}",
                    describe_expiry(second.expires_on)
                ));
                return Ok(said.join("; "));
            }
        }
    }
    // `--force` is an operator's deliberate, one-off act: it is not held to the reset bound.
    let message = match rotator.rotate_with(&ctx.entity, sink, !force).await {
        // Another rotator of the same Secret wrote it between our read of the reset record and our
        // claim: it is resetting, so this run must not.
        Err(RotationError::Ledger(e)) if e.contended => {
            said.push(format!(
                "not reset: another rotator changed the store between the read of its reset record and this run's claim ({e}); it is rotating"
            ));
            return Ok(said.join("; "));
        }
        result => report_reset(rotator, ctx, sink, result).await?,
    };
    drop(lock);
    said.push(format!(
        "rotated ({reason}) as the {} at site {}; {message}",
        role.as_str(),
        ctx.rotation.site
    ));
    Ok(said.join("; "))
}

/// The secret the store holds (`Some(None)`: none), or `None` when it cannot be read back: an `exec:`
/// sink with no secret file named to compare with.
async fn read_store(
    ctx: &AdminContext,
    sink: &SecretSink,
) -> Result<Option<Option<SecretString>>, SinkError> {
    match sink.read().await? {
        Some(stored) => Ok(Some(stored.secret)),
        None => match &ctx.secret_file {
            Some(path) => read_back(path).map(Some),
            None => Ok(None),
        },
    }
}

/// The advisory lock of a `file:` sink, held while the store is written.
async fn lock_store(sink: &SecretSink) -> Result<Option<lock::SecretFileLock>, ExitCode> {
    match sink.spec() {
        SinkSpec::File(path) => lock::acquire(path, Duration::from_secs(60))
            .await
            .map(Some)
            .map_err(failure),
        _ => Ok(None),
    }
}

/// "not due", with the threshold this rotator's role sets and the last reset on record.
async fn not_due(ctx: &AdminContext, sink: &SecretSink, expires_on: Option<SystemTime>) -> String {
    let days = |d: Duration| d.as_secs_f64() / 86_400.0;
    let threshold = match ctx.rotation.role {
        Role::Primary => format!(
            "a primary resets within {:.1} days",
            days(ctx.rotation.rotate_before)
        ),
        role @ Role::Standby { .. } => format!(
            "a standby resets only within {:.1} days (the primary within {:.1})",
            days(role.threshold(ctx.rotation.rotate_before)),
            days(ctx.rotation.rotate_before)
        ),
    };
    let ledger = ResetLedger::for_sink(sink, &ctx.entity, &ctx.rotation.state_dir);
    let last = match ledger.read().await {
        Ok(Ledgered {
            last: Some(record), ..
        }) => format!("; the last reset recorded here: {}", record.describe()),
        _ => String::new(),
    };
    format!(
        "not due: secret {}; {threshold}{last}",
        describe_expiry(expires_on)
    )
}

/// Reset, store (retrying the sink), verify. The message says where the secret went and when it expires.
async fn rotate_and_store(
    rotator: &Rotator,
    ctx: &AdminContext,
    sink: &SecretSink,
    bounded: bool,
) -> Result<String, ExitCode> {
    let result = rotator.rotate_with(&ctx.entity, sink, bounded).await;
    report_reset(rotator, ctx, sink, result).await
}

/// What became of a reset: stored (retrying the sink), or the reason it failed.
async fn report_reset(
    rotator: &Rotator,
    ctx: &AdminContext,
    sink: &SecretSink,
    result: Result<Rotated, RotationError>,
) -> Result<String, ExitCode> {
    match result {
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
