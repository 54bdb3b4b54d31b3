//! `inject`: Kubernetes manifests in, the same manifests out with the broker added to every pod template.
//!
//! This module owns the rewrite only: [`inject`] is a pure function of the input text and the options
//! (no files, no environment, no clock), so what it writes depends on its arguments alone. It never runs
//! on the serving path and depends on nothing but the entity id type. The parts:
//!
//! - [`pod`]: which kinds have a pod template and where, and what is done to one (the one table);
//! - [`sidecar`]: the container, volume and variable added, with the Helm chart's values;
//! - [`yaml`]: loading and writing YAML without changing what Kubernetes reads.
//!
//! A `List` or a kustomize/kpt `ResourceList` has its items rewritten the same way, so `inject` also works
//! as a KRM function. Documents come out in the order they went in. Documents without a pod template, and pod templates
//! annotated `aa-token-broker/inject: "false"`, come out with the same data (comments are not kept, and
//! empty documents are dropped).

pub mod pod;
pub mod sidecar;
pub mod yaml;

use saphyr::Yaml;

use crate::entity::EntityId;
use pod::Outcome;

/// The IAM the broker talks to, as given: by environment name or by URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Iam {
    /// `sandbox`, `uat` or `production`; the broker resolves it.
    Environment(String),
    /// An IAM base URL.
    Url(String),
}

/// The two forms of the sidecar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The first init container with `restartPolicy: Always` (Kubernetes 1.29 and newer): it runs before
    /// and beside every other container, including the application's own init containers.
    Native,
    /// The first regular container, holding the next one's start with a `postStart` hook.
    Regular,
}

/// The first Kubernetes minor version (1.x) on which native sidecars are on by default.
pub const NATIVE_SIDECARS_SINCE: u32 = 29;

impl Mode {
    /// Chooses the form: `native` or `regular` as asked, or for `auto` native from Kubernetes 1.29 on —
    /// and native when no version is given, since older clusters are out of support.
    /// `kube_minor` is the minor version of the target cluster ([`kube_minor`]).
    pub fn resolve(mode: &str, kube_minor: Option<u32>) -> Result<Mode, String> {
        match (mode, kube_minor) {
            ("native", Some(minor)) if minor < NATIVE_SIDECARS_SINCE => Err(format!(
                "native sidecars need Kubernetes 1.{NATIVE_SIDECARS_SINCE} or newer; use --mode regular or auto"
            )),
            ("native", _) => Ok(Mode::Native),
            ("regular", _) => Ok(Mode::Regular),
            ("auto", Some(minor)) if minor < NATIVE_SIDECARS_SINCE => Ok(Mode::Regular),
            ("auto", _) => Ok(Mode::Native),
            (other, _) => Err(format!("{other:?} is not one of native, regular, auto")),
        }
    }
}

/// The minor version of a Kubernetes 1.x version: `1.29`, `v1.29.3`, `1.29.3-eks-abc` all give 29.
pub fn kube_minor(version: &str) -> Result<u32, String> {
    let bad = || format!("{version:?} is not a Kubernetes version such as 1.29 or v1.29.3");
    let rest = version.trim().trim_start_matches('v');
    let mut parts = rest.split(['.', '-', '+']);
    match (parts.next(), parts.next()) {
        (Some("1"), Some(minor)) => minor.parse().map_err(|_| bad()),
        _ => Err(bad()),
    }
}

/// What to inject. Built and checked by the `inject` command from its flags.
#[derive(Debug, Clone)]
pub struct InjectOptions {
    pub entity_id: EntityId,
    /// The Kubernetes Secret holding the entity secret.
    pub secret_name: String,
    /// The key of the entity secret in that Secret.
    pub secret_key: String,
    pub image: String,
    pub iam: Iam,
    /// The token API port on the pod's loopback.
    pub port: u16,
    /// Serve `/healthz`, `/readyz` and `/metrics` on the pod IP at this port (named `metrics`); the
    /// probes then use it.
    pub admin_port: Option<u16>,
    pub mode: Mode,
    /// The Kubernetes Secret holding the FI key-encryption key (key `kek`), mounted into the sidecar only.
    pub fi_kek_secret: Option<String>,
}

/// Why a stream could not be rewritten. `document` counts from 1, as a reader would.
#[derive(Debug, thiserror::Error)]
pub enum InjectError {
    #[error("document {document}: line {line}, column {column}: {reason}")]
    Syntax {
        document: usize,
        line: usize,
        column: usize,
        reason: String,
    },
    #[error("document {document}{object}: {reason}")]
    Invalid {
        document: usize,
        /// ` (Kind name)` when known.
        object: String,
        reason: String,
    },
    #[error("cannot write the output: {0}")]
    Emit(String),
}

/// The rewritten stream and what is worth telling about it.
#[derive(Debug)]
pub struct Injected {
    pub output: String,
    /// How many pod templates got the sidecar (added or brought up to date).
    pub injected: usize,
    /// Warnings, one line each, naming the document.
    pub notes: Vec<String>,
}

/// Adds the sidecar to every pod template in a multi-document YAML stream.
pub fn inject(input: &str, options: &InjectOptions) -> Result<String, InjectError> {
    inject_report(input, options).map(|injected| injected.output)
}

/// [`inject`], with a count and warnings.
pub fn inject_report(input: &str, options: &InjectOptions) -> Result<Injected, InjectError> {
    let documents = yaml::load(input).map_err(|e| InjectError::Syntax {
        document: e.document + 1,
        line: e.line,
        column: e.column,
        reason: e.reason,
    })?;
    let mut out = Vec::with_capacity(documents.len());
    let mut injected = 0;
    let mut notes = Vec::new();
    for (index, document) in documents.into_iter().enumerate() {
        let number = index + 1;
        if yaml::is_null(&document) {
            continue;
        }
        let mut document = yaml::normalize(document).map_err(|e| InjectError::Invalid {
            document: number,
            object: describe(None),
            reason: format!("{} is not supported", e.0),
        })?;
        let object = describe(Some(&document));
        let mut local_notes = Vec::new();
        let invalid = |reason: String| InjectError::Invalid {
            document: number,
            object: object.clone(),
            reason,
        };
        if is_list(&document) {
            let Some(Yaml::Sequence(items)) = yaml::get_mut(&mut document, "items") else {
                return Err(invalid("items is missing or not a list".into()));
            };
            for (item_index, item) in items.iter_mut().enumerate() {
                let item_object = describe(Some(item));
                let outcome = pod::inject_object(item, options, &mut local_notes)
                    .map_err(|e| invalid(format!("items[{item_index}]{item_object}: {e}")))?;
                injected += usize::from(outcome == Outcome::Injected);
            }
        } else {
            let outcome =
                pod::inject_object(&mut document, options, &mut local_notes).map_err(invalid)?;
            injected += usize::from(outcome == Outcome::Injected);
        }
        notes.extend(
            local_notes
                .into_iter()
                .map(|note| format!("document {number}{object}: {note}")),
        );
        out.push(document);
    }
    let output = yaml::emit(&out).map_err(|e| InjectError::Emit(e.to_string()))?;
    Ok(Injected {
        output,
        injected,
        notes,
    })
}

/// A `v1` `List`, or the `ResourceList` a kustomize or kpt function gets on stdin and must write back
/// (its `functionConfig` passes through untouched).
fn is_list(document: &yaml::Node<'_>) -> bool {
    let kind = yaml::get(document, "kind").and_then(yaml::text);
    let api_version = yaml::get(document, "apiVersion").and_then(yaml::text);
    matches!(
        (api_version, kind),
        (Some("v1"), Some("List")) | (Some("config.kubernetes.io/v1"), Some("ResourceList"))
    )
}

/// ` (Kind name)` for messages, as much of it as is known.
fn describe(object: Option<&yaml::Node<'_>>) -> String {
    let Some(object) = object else {
        return String::new();
    };
    let kind = yaml::get(object, "kind").and_then(yaml::text);
    let name = yaml::path(object, &["metadata", "name"])
        .or_else(|| yaml::path(object, &["metadata", "generateName"]))
        .and_then(yaml::text);
    match (kind, name) {
        (Some(kind), Some(name)) => format!(" ({kind} {name})"),
        (Some(kind), None) => format!(" ({kind})"),
        (None, Some(name)) => format!(" ({name})"),
        (None, None) => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_is_native_from_1_29_and_without_a_version() {
        let resolve =
            |mode, version: Option<&str>| Mode::resolve(mode, version.map(kube_minor).transpose()?);
        assert_eq!(resolve("auto", Some("1.28.5")), Ok(Mode::Regular));
        assert_eq!(resolve("auto", Some("v1.29.0")), Ok(Mode::Native));
        assert_eq!(resolve("auto", Some("1.31.2-eks-1")), Ok(Mode::Native));
        assert_eq!(resolve("auto", Some("1.30+k3s1")), Ok(Mode::Native));
        assert_eq!(resolve("auto", None), Ok(Mode::Native));
        assert_eq!(resolve("regular", Some("1.31")), Ok(Mode::Regular));
        assert!(resolve("native", Some("1.28")).is_err());
        assert!(resolve("auto", Some("2.0")).is_err());
        assert!(resolve("auto", Some("latest")).is_err());
        assert!(resolve("sidecar", None).is_err());
    }

    #[test]
    fn the_pod_template_table_matches_groups_not_just_kinds() {
        assert_eq!(
            pod::template_path("apps/v1", "Deployment"),
            Some(&["spec", "template"][..])
        );
        assert_eq!(
            pod::template_path("batch/v1", "CronJob"),
            Some(&["spec", "jobTemplate", "spec", "template"][..])
        );
        assert_eq!(pod::template_path("v1", "Pod"), Some(&[][..]));
        assert_eq!(pod::template_path("example.com/v1", "Deployment"), None);
        assert_eq!(pod::template_path("v1", "Service"), None);
    }
}
