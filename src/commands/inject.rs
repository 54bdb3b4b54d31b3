//! `inject`: check the flags, read every input, rewrite it with [`crate::inject`], and only then write
//! the whole result to stdout. A mistake in a flag or in any input prints one line and exits 2 with
//! nothing on stdout, so a pipeline never applies half a set of manifests.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use super::{config_error, failure};
use crate::config::cli::InjectArgs;
use crate::config::{ConfigError, resolve_iam_url};
use crate::inject::{self, Iam, InjectOptions, Mode};

/// Where the published images are; the chart's `image.repository`.
pub const IMAGE_REPOSITORY: &str = "ghcr.io/aa-token-broker/aa-token-broker";
/// Largest input read, per file: far above any set of manifests, low enough to fail cleanly.
const MAX_INPUT_BYTES: u64 = 64 * 1024 * 1024;

pub fn run(args: &InjectArgs) -> ExitCode {
    let options = match options(args) {
        Ok(options) => options,
        Err(e) => return config_error(&e),
    };
    let sources: Vec<&Path> = if args.files.is_empty() {
        vec![Path::new("-")]
    } else {
        args.files.iter().map(PathBuf::as_path).collect()
    };
    let mut output = String::new();
    let mut notes = Vec::new();
    for source in sources {
        let name = if source == Path::new("-") {
            "stdin".to_string()
        } else {
            source.display().to_string()
        };
        let input = match read(source) {
            Ok(input) => input,
            Err(reason) => return usage_error(&format!("{name}: {reason}")),
        };
        match inject::inject_report(&input, &options) {
            Ok(injected) => {
                output.push_str(&injected.output);
                notes.extend(injected.notes.into_iter().map(|n| format!("{name}: {n}")));
            }
            Err(e) => return usage_error(&format!("{name}: {e}")),
        }
    }
    for note in notes {
        eprintln!("aa-token-broker: warning: {note}");
    }
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(output.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => failure(format!("cannot write to stdout: {e}")),
    }
}

fn usage_error(line: &str) -> ExitCode {
    eprintln!("aa-token-broker: {}", line.replace('\n', " "));
    ExitCode::from(2)
}

fn read(source: &Path) -> Result<String, String> {
    let mut bytes = Vec::new();
    let limited = if source == Path::new("-") {
        std::io::stdin()
            .lock()
            .take(MAX_INPUT_BYTES + 1)
            .read_to_end(&mut bytes)
    } else {
        std::fs::File::open(source)
            .and_then(|f| f.take(MAX_INPUT_BYTES + 1).read_to_end(&mut bytes))
    };
    limited.map_err(|e| format!("cannot read: {}", e.kind()))?;
    if bytes.len() as u64 > MAX_INPUT_BYTES {
        return Err("larger than 64 MiB".into());
    }
    String::from_utf8(bytes).map_err(|_| "not UTF-8 text".into())
}

/// Checks the flags, naming the one that is wrong.
fn options(args: &InjectArgs) -> Result<InjectOptions, ConfigError> {
    // Its grammar was checked by clap.
    let entity_id = args
        .entity_id
        .clone()
        .ok_or_else(|| ConfigError::new("--entity-id", "required"))?;
    let secret_name = args
        .secret_name
        .as_deref()
        .ok_or_else(|| ConfigError::new("--secret-name", "required"))?;
    if !is_dns_subdomain(secret_name) {
        return Err(ConfigError::new(
            "--secret-name",
            format!(
                "{secret_name:?} is not a Kubernetes object name (lower-case letters, digits, '-' and '.')"
            ),
        ));
    }
    let key = &args.secret_key;
    if key.is_empty()
        || key.len() > 253
        || !key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err(ConfigError::new(
            "--secret-key",
            format!("{key:?} is not a Secret key (letters, digits, '-', '_' and '.')"),
        ));
    }
    let image = args
        .image
        .clone()
        .unwrap_or_else(|| format!("{IMAGE_REPOSITORY}:{}", env!("CARGO_PKG_VERSION")));
    if image.is_empty() || image.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(ConfigError::new(
            "--image",
            "must be an image reference without spaces",
        ));
    }
    // The same check and the same messages as `serve`; the flag is named without its variable, which
    // `inject` does not read.
    let url = resolve_iam_url(args.iam_url.as_deref(), args.environment.as_deref(), true)
        .map_err(|e| ConfigError::new(e.setting.split(' ').next().unwrap_or_default(), e.reason))?;
    let iam = match &args.environment {
        Some(name) if args.iam_url.is_none() => Iam::Environment(name.trim().to_string()),
        _ => Iam::Url(url),
    };
    if args.port == 0 {
        return Err(ConfigError::new("--port", "must be between 1 and 65535"));
    }
    match args.admin_port {
        Some(0) => {
            return Err(ConfigError::new(
                "--admin-port",
                "must be between 1 and 65535",
            ));
        }
        Some(admin) if admin == args.port => {
            return Err(ConfigError::new("--admin-port", "must differ from --port"));
        }
        _ => {}
    }
    let minor = args
        .kube_version
        .as_deref()
        .map(inject::kube_minor)
        .transpose()
        .map_err(|e| ConfigError::new("--kube-version", e))?;
    let mode = Mode::resolve(&args.mode, minor).map_err(|e| ConfigError::new("--mode", e))?;
    if let Some(name) = args
        .fi_kek_secret
        .as_deref()
        .filter(|n| !is_dns_subdomain(n))
    {
        return Err(ConfigError::new(
            "--fi-kek-secret",
            format!(
                "{name:?} is not a Kubernetes object name (lower-case letters, digits, '-' and '.')"
            ),
        ));
    }
    Ok(InjectOptions {
        entity_id,
        secret_name: secret_name.to_string(),
        secret_key: key.clone(),
        image,
        iam,
        port: args.port,
        admin_port: args.admin_port,
        mode,
        fi_kek_secret: args.fi_kek_secret.clone(),
    })
}

/// A DNS-1123 subdomain, what Kubernetes accepts as a Secret's name.
fn is_dns_subdomain(name: &str) -> bool {
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    !name.is_empty()
        && name.len() <= 253
        && name.bytes().all(|b| alnum(b) || b == b'-' || b == b'.')
        && name.bytes().next().is_some_and(alnum)
        && name.bytes().last().is_some_and(alnum)
}
