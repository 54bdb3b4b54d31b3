//! One function per subcommand. Each validates its settings (exit 2 with one line on a mistake), builds
//! its runtime, and runs. Exit codes: 0 success, 1 runtime failure, 2 configuration error.
//!
//! - [`serve`]: `serve` and `token`;
//! - `local`: `iam-simulator` and `demo`, in builds with the `simulator` feature (without it, both exit 2
//!   saying so);
//! - [`secret`]: `secret read`, `secret reset` and `rotate`;
//! - [`healthcheck`]: `healthcheck`, the probe for images without curl;
//! - [`verify`]: `verify`, one incoming token checked from the command line;
//! - [`jws`]: `sign` and `verify-signature`, one body on stdin;
//! - [`fi`]: `fi key-material|decrypt|encrypt`, FI data encryption, JSON on stdin;
//! - [`certify`]: `certify`, the sidecar-decidable certification cases against an ingress.

pub mod certify;
pub mod fi;
pub mod healthcheck;
pub mod inject;
pub mod jws;
#[cfg(feature = "simulator")]
pub mod local;
pub mod secret;
pub mod serve;
pub mod verify;

use std::process::ExitCode;

use tokio::net::TcpListener;

use crate::config::cli::{Command, LogArgs, SecretCommand};
use crate::config::{self, ConfigError, LogSettings};

/// Runs a parsed command to completion.
pub fn run(command: Command) -> ExitCode {
    match command {
        Command::Serve(args) => serve::serve_command(&args),
        Command::Token(args) => serve::token(&args),
        #[cfg(feature = "simulator")]
        Command::IamSimulator(args) => local::iam_simulator(&args),
        #[cfg(feature = "simulator")]
        Command::Demo(args) => local::demo(&args),
        #[cfg(not(feature = "simulator"))]
        Command::IamSimulator(_) => no_simulator("iam-simulator"),
        #[cfg(not(feature = "simulator"))]
        Command::Demo(_) => no_simulator("demo"),
        Command::Secret(SecretCommand::Read(args)) => secret::read(&args),
        Command::Secret(SecretCommand::Reset(args)) => secret::reset(&args),
        Command::Secret(SecretCommand::Fingerprint(args)) => secret::fingerprint_command(&args),
        Command::Rotate(args) => secret::rotate(&args),
        Command::Healthcheck(args) => healthcheck::run(&args),
        Command::Inject(args) => inject::run(&args),
        Command::Verify(args) => verify::run(&args),
        Command::Sign(args) => jws::sign(&args),
        Command::VerifySignature(args) => jws::verify_signature(&args),
        Command::Fi(args) => fi::run(&args),
        Command::Certify(args) => certify::run(&args),
    }
}

/// Prints a configuration error as one line and returns exit code 2.
pub fn config_error(error: &ConfigError) -> ExitCode {
    eprintln!("aa-token-broker: {error}");
    ExitCode::from(2)
}

/// `command` needs the simulator, which this build leaves out (the image is built without it): one line,
/// exit code 2, like any setting this build cannot honour.
#[cfg(not(feature = "simulator"))]
fn no_simulator(command: &str) -> ExitCode {
    eprintln!(
        "aa-token-broker: `{command}` needs the built-in simulator, and this build has none (built without the `simulator` feature)"
    );
    ExitCode::from(2)
}

/// Prints a runtime failure as one line and returns exit code 1.
pub fn failure(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("aa-token-broker: {message}");
    ExitCode::FAILURE
}

fn runtime(worker_threads: usize) -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(worker_threads)
        .enable_all()
        .build()
        .map_err(|e| failure(format!("cannot start the runtime: {e}")))
}

fn current_thread_runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| failure(format!("cannot start the runtime: {e}")))
}

async fn bind(
    addr: std::net::SocketAddr,
    setting: crate::config::settings::Setting,
) -> Result<TcpListener, ExitCode> {
    TcpListener::bind(addr).await.map_err(|e| {
        config_error(&ConfigError::new(
            setting,
            format!("cannot listen on {addr}: {e}"),
        ))
    })
}

fn log_or_exit(args: &LogArgs) -> Result<LogSettings, ExitCode> {
    config::log_settings(args).map_err(|e| config_error(&e))
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
