//! `inject`: Kubernetes manifests in, the same manifests out with the broker added to every pod template.
//!
//! This module owns the rewrite only: [`inject`] is a pure function of the input text and the options
//! (no files, no environment, no clock), so what it writes depends on its arguments alone. It never runs
//! on the serving path and depends on nothing but the entity id type. The parts:
//!
//! - [`pod`]: which kinds have a pod template and where, and what is done to one (the one table);
//! - [`select`]: which workloads a run touches (a label selector, `--exclude`);
//! - [`sidecar`]: the container, volume and variable added, with the Helm chart's values;
//! - [`yaml`]: loading and writing YAML without changing what Kubernetes reads;
//! - [`limits`]: how large, deep and alias-expanded an input may be, enforced while it is read.
//!
//! A `List` or a kustomize/kpt `ResourceList` has its items rewritten the same way, so `inject` also works
//! as a KRM function. Documents come out in the order they went in. Documents without a pod template, and
//! those not chosen ([`select`]: a selector, `--exclude`, the opt-out annotation `aa-token-broker/inject:
//! "false"`), come out with the same data (comments are not kept, and
//! empty documents are dropped). Documents are read, rewritten and written one at a time, so only one
//! tree is in memory at once.

pub mod limits;
pub mod pod;
pub mod select;
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
    /// Serve `/healthz`, `/readyz` and `/metrics` on the pod IP at this port (named `broker-metrics`);
    /// the probes then use it.
    pub admin_port: Option<u16>,
    pub mode: Mode,
    /// The Kubernetes Secret holding the FI key-encryption key (key `kek`), mounted into the sidecar only.
    pub fi_kek_secret: Option<String>,
    /// Which workloads get the sidecar.
    pub selection: select::Selection,
    /// Leave the user and group ids (the sidecar's, the pod's `fsGroup`) to the platform: OpenShift's
    /// `restricted-v2` assigns them from the namespace's range and refuses others.
    pub openshift: bool,
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
    /// The output would pass the limit given to [`inject_within`].
    #[error("document {document}: the output would be larger than {limit} bytes")]
    OutputTooLarge { document: usize, limit: usize },
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
    inject_within(input, options, limits::MAX_OUTPUT_BYTES)
}

/// [`inject_report`], writing at most `max_output` bytes. The input is held to the other limits of
/// [`limits`] (its expansion budget follows from its own length).
pub fn inject_within(
    input: &str,
    options: &InjectOptions,
    max_output: usize,
) -> Result<Injected, InjectError> {
    let mut output = String::new();
    let mut injected = 0;
    let mut notes = Vec::new();
    for (index, document) in yaml::documents(input).enumerate() {
        let number = index + 1;
        let document = document.map_err(|e| InjectError::Syntax {
            document: e.document + 1,
            line: e.line,
            column: e.column,
            reason: e.reason,
        })?;
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
        // The sidecar grows the tree: in a `List` by one sidecar per item, so the document is held to
        // the node limit again as it grows, item by item.
        let mut nodes = yaml::count_nodes(&document);
        if is_list(&document) {
            let Some(Yaml::Sequence(items)) = yaml::get_mut(&mut document, "items") else {
                return Err(invalid("items is missing or not a list".into()));
            };
            for (item_index, item) in items.iter_mut().enumerate() {
                let item_object = describe(Some(item));
                let before = yaml::count_nodes(item);
                let outcome = pod::inject_object(item, options, &mut local_notes)
                    .map_err(|e| invalid(format!("items[{item_index}]{item_object}: {e}")))?;
                grow(&mut nodes, before, yaml::count_nodes(item)).map_err(invalid)?;
                injected += usize::from(outcome == Outcome::Injected);
            }
        } else {
            let outcome =
                pod::inject_object(&mut document, options, &mut local_notes).map_err(invalid)?;
            let before = nodes;
            grow(&mut nodes, before, yaml::count_nodes(&document)).map_err(invalid)?;
            injected += usize::from(outcome == Outcome::Injected);
        }
        notes.extend(
            local_notes
                .into_iter()
                .map(|note| format!("document {number}{object}: {note}")),
        );
        yaml::emit_into(&document, &mut output, max_output).map_err(|e| match e {
            yaml::EmitError::TooLarge(limit) => InjectError::OutputTooLarge {
                document: number,
                limit,
            },
            yaml::EmitError::Emit(e) => InjectError::Emit(e.to_string()),
        })?;
    }
    Ok(Injected {
        output,
        injected,
        notes,
    })
}

/// Adds to a document's node count what injecting one object added (`before` and `after` are its
/// own counts), refusing past [`limits::MAX_DOCUMENT_NODES`].
fn grow(nodes: &mut u64, before: u64, after: u64) -> Result<(), String> {
    *nodes = nodes.saturating_add(after.saturating_sub(before));
    if *nodes > limits::MAX_DOCUMENT_NODES {
        return Err(format!(
            "more than {} YAML nodes once the sidecar is added; split it",
            limits::MAX_DOCUMENT_NODES
        ));
    }
    Ok(())
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

/// Arbitrary anchor and alias structures through the whole rewrite: it never panics, and refuses exactly
/// the inputs whose expansion, counted independently here, passes the budget.
#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    /// One item of an anchored sequence: a plain scalar of so many bytes, or an alias to an earlier
    /// anchor (any number, taken modulo the anchors before it).
    #[derive(Debug, Clone)]
    enum Item {
        Scalar(usize),
        Alias(usize),
    }

    fn item() -> impl Strategy<Value = Item> {
        prop_oneof![
            (1usize..40).prop_map(Item::Scalar),
            any::<usize>().prop_map(Item::Alias),
        ]
    }

    fn options() -> InjectOptions {
        InjectOptions {
            entity_id: EntityId::parse("FIU-EXAMPLE").expect("a valid id"),
            secret_name: "fiu-entity-secret".into(),
            secret_key: "secret".into(),
            image: "example/broker:1".into(),
            iam: Iam::Environment("sandbox".into()),
            port: 7373,
            admin_port: None,
            mode: Mode::Native,
            fi_kek_secret: None,
            selection: select::Selection::default(),
            openshift: false,
        }
    }

    /// The document `- &a0 [...]` per anchor, then a sequence of `fan` aliases to the last anchor; and
    /// what it builds, in bytes and nodes, by the rule of [`limits::Budget`]: every node once, each
    /// alias its anchor's size, each anchor once more for the loader's copy.
    fn document(anchors: &[Vec<Item>], fan: usize) -> (String, u64, u64) {
        let mut text = String::new();
        let mut sizes: Vec<(u64, u64)> = Vec::new();
        let (mut bytes, mut nodes) = (1u64, 1u64);
        for (index, items) in anchors.iter().enumerate() {
            let mut written = Vec::new();
            let (mut own_bytes, mut own_nodes) = (1u64, 1u64);
            for item in items {
                let (b, n) = match item {
                    Item::Alias(to) if index > 0 => {
                        let to = to % index;
                        written.push(format!("*a{to}"));
                        sizes[to]
                    }
                    Item::Alias(_) => {
                        written.push("x".into());
                        (2, 1)
                    }
                    Item::Scalar(len) => {
                        written.push("x".repeat(*len));
                        (*len as u64 + 1, 1)
                    }
                };
                own_bytes = own_bytes.saturating_add(b);
                own_nodes = own_nodes.saturating_add(n);
            }
            text.push_str(&format!("- &a{index} [{}]\n", written.join(", ")));
            sizes.push((own_bytes, own_nodes));
            // In the tree, and copied by the loader.
            bytes = bytes.saturating_add(own_bytes.saturating_mul(2));
            nodes = nodes.saturating_add(own_nodes.saturating_mul(2));
        }
        if let Some(&(last_bytes, last_nodes)) = sizes.last() {
            let last = sizes.len() - 1;
            text.push_str(&format!(
                "- [{}]\n",
                vec![format!("*a{last}"); fan].join(", ")
            ));
            bytes = bytes.saturating_add(1 + last_bytes.saturating_mul(fan as u64));
            nodes = nodes.saturating_add(1 + last_nodes.saturating_mul(fan as u64));
        }
        (text, bytes, nodes)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn aliases_past_the_budget_are_refused_and_nothing_panics(
            anchors in proptest::collection::vec(proptest::collection::vec(item(), 0..12), 1..10),
            fan in 0usize..64,
        ) {
            let (input, bytes, nodes) = document(&anchors, fan);
            let budget = limits::expansion_budget(input.len());
            let over = bytes > budget || nodes > limits::MAX_DOCUMENT_NODES;
            match inject_report(&input, &options()) {
                Ok(injected) => {
                    prop_assert!(!over, "{bytes} bytes passed a budget of {budget}");
                    prop_assert!(!injected.output.contains('*'));
                }
                Err(InjectError::Syntax { reason, .. }) => {
                    prop_assert!(over, "refused within the budget ({bytes} of {budget}): {reason}");
                    prop_assert!(reason.contains("alias bomb") || reason.contains("YAML nodes"), "{reason}");
                }
                Err(other) => prop_assert!(false, "unexpected error: {other}"),
            }
        }
    }
}
