//! `inject`: check the flags, read every input, rewrite it with [`crate::inject`], and only then write
//! the whole result to stdout. A mistake in a flag or in any input prints one line and exits 2 with
//! nothing on stdout, so a pipeline never applies half a set of manifests.
//!
//! Inputs are held to [`crate::inject::limits`] while they are read. One cost escapes that account:
//! saphyr's scanner reads a whole flow collection (`[...]`, `{...}`, a JSON document) that could be a
//! mapping key before it yields its first event, a few hundred bytes per token. So the rewrite runs on a
//! worker thread while this one watches the process's resident memory and stops the run, with exit 2,
//! past [`MAX_MEMORY_BYTES`].

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use super::{config_error, failure};
use crate::config::cli::InjectArgs;
use crate::config::{ConfigError, resolve_iam_url};
use crate::inject::limits::{MAX_INPUT_BYTES, MAX_OUTPUT_BYTES};
use crate::inject::select::Selection;
use crate::inject::{self, Iam, InjectError, InjectOptions, Mode};

/// Where the published images are; the chart's `image.repository`.
pub const IMAGE_REPOSITORY: &str = "ghcr.io/aa-token-broker/aa-token-broker";
/// The resident memory past which a run is stopped: under the 256 MiB promised, with room for what is
/// allocated between two looks.
pub const MAX_MEMORY_BYTES: u64 = 200 * 1024 * 1024;
/// How often the memory is looked at. The scanner allocates at most about 1.5 GB/s here, so a run
/// overshoots the limit by a few MiB at most before it is stopped.
const MEMORY_POLL: Duration = Duration::from_millis(2);
/// The worker's stack, set rather than inherited: nesting is bounded ([`crate::inject::limits::MAX_DEPTH`])
/// and saphyr's emitter, drop and clone recurse once per level, so this is far more than they use.
const WORKER_STACK_BYTES: usize = 32 * 1024 * 1024;

/// What the worker hands back: every input's output, the warnings; or the line to print.
type Rewritten = Result<(Vec<String>, Vec<String>), String>;

pub fn run(args: &InjectArgs) -> ExitCode {
    let options = match options(args) {
        Ok(options) => options,
        Err(e) => return config_error(&e),
    };
    let sources: Vec<PathBuf> = if args.files.is_empty() {
        vec![PathBuf::from("-")]
    } else {
        args.files.clone()
    };
    let names: Vec<String> = sources.iter().map(|s| source_name(s)).collect();
    let current = Arc::new(AtomicUsize::new(0));
    let (done, finished) = mpsc::channel();
    let worker_current = Arc::clone(&current);
    let worker = std::thread::Builder::new()
        .name("inject".into())
        .stack_size(WORKER_STACK_BYTES)
        .spawn(move || {
            // The receiver is gone only once the run was stopped; nothing is left to tell.
            let _ = done.send(rewrite_all(&sources, &options, &worker_current));
        });
    if let Err(e) = worker {
        return failure(format!("cannot start the inject worker: {e}"));
    }
    let rewritten = loop {
        match finished.recv_timeout(MEMORY_POLL) {
            Ok(rewritten) => break rewritten,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if resident_bytes().is_some_and(|rss| rss > MAX_MEMORY_BYTES) {
                    let name = names
                        .get(current.load(Ordering::Relaxed))
                        .map_or("input", String::as_str);
                    // Returning ends the process, worker included, before it allocates much more.
                    return usage_error(&format!(
                        "{name}: reading it needs more than {} MiB of memory; refused (a document or a \
                         flow collection such as JSON too large: split it)",
                        MAX_MEMORY_BYTES / (1024 * 1024)
                    ));
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                return failure("inject stopped unexpectedly");
            }
        }
    };
    let (outputs, notes) = match rewritten {
        Ok(rewritten) => rewritten,
        Err(line) => return usage_error(&line),
    };
    for note in notes {
        eprintln!("aa-token-broker: warning: {note}");
    }
    let mut stdout = std::io::stdout().lock();
    let written = outputs
        .iter()
        .try_for_each(|output| stdout.write_all(output.as_bytes()))
        .and_then(|()| stdout.flush());
    match written {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => failure(format!("cannot write to stdout: {e}")),
    }
}

/// Reads and rewrites every source in turn, keeping each output (together at most
/// [`MAX_OUTPUT_BYTES`]) and dropping each input as soon as it is done. `current` tells the watcher
/// which source is being read.
fn rewrite_all(sources: &[PathBuf], options: &InjectOptions, current: &AtomicUsize) -> Rewritten {
    let mut outputs = Vec::with_capacity(sources.len());
    let mut notes = Vec::new();
    let mut written = 0usize;
    for (index, source) in sources.iter().enumerate() {
        current.store(index, Ordering::Relaxed);
        let name = source_name(source);
        let input = read(source).map_err(|reason| format!("{name}: {reason}"))?;
        let injected = inject::inject_within(
            &input,
            options,
            MAX_OUTPUT_BYTES.saturating_sub(written),
        )
        .map_err(|e| match e {
            InjectError::OutputTooLarge { document, .. } => format!(
                "{name}: document {document}: the output would be larger than {} MiB in all; \
                     split the input",
                MAX_OUTPUT_BYTES / (1024 * 1024)
            ),
            e => format!("{name}: {e}"),
        })?;
        written = written.saturating_add(injected.output.len());
        outputs.push(injected.output);
        notes.extend(injected.notes.into_iter().map(|n| format!("{name}: {n}")));
    }
    Ok((outputs, notes))
}

fn source_name(source: &Path) -> String {
    if source == Path::new("-") {
        "stdin".to_string()
    } else {
        source.display().to_string()
    }
}

/// The process's resident memory, from `/proc` (Linux); `None` where that cannot be read.
fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line
        .trim_start_matches("VmRSS:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    kib.checked_mul(1024)
}

fn usage_error(line: &str) -> ExitCode {
    eprintln!("aa-token-broker: {}", line.replace('\n', " "));
    ExitCode::from(2)
}

/// Reads at most [`MAX_INPUT_BYTES`] and one more, to tell a full-size input from a larger one without
/// trusting a size reported before reading (a pipe has none, a file may grow).
fn read(source: &Path) -> Result<String, String> {
    let mut bytes = Vec::new();
    let cap = u64::try_from(MAX_INPUT_BYTES)
        .unwrap_or(u64::MAX)
        .saturating_add(1);
    let limited = if source == Path::new("-") {
        std::io::stdin().lock().take(cap).read_to_end(&mut bytes)
    } else {
        std::fs::File::open(source).and_then(|f| f.take(cap).read_to_end(&mut bytes))
    };
    limited.map_err(|e| format!("cannot read: {}", crate::private_file::io_reason(&e)))?;
    if bytes.len() > MAX_INPUT_BYTES {
        return Err(format!(
            "larger than {} MiB; split it",
            MAX_INPUT_BYTES / (1024 * 1024)
        ));
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
    let mut selection = Selection::default();
    if let Some(selector) = &args.selector {
        selection = selection
            .with_selector(selector)
            .map_err(|e| ConfigError::new("--selector", e))?;
    }
    for exclude in &args.exclude {
        selection = selection
            .with_exclude(exclude)
            .map_err(|e| ConfigError::new("--exclude", e))?;
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
        selection,
        openshift: args.openshift,
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
