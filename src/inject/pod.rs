//! Where each kind keeps its pod template, and what `inject` does to one.
//!
//! `inject` owns four things in a pod template and rewrites them on every run: the container named
//! `aa-token-broker` (in `initContainers` or `containers`), the volume `aa-token-broker-secret`, the
//! `AA_TOKEN_BROKER_URL` variable of the other containers, and the label `aa-token-broker/sidecar`. It
//! also sets `kubectl.kubernetes.io/default-container` when that is not set, and the pod's `fsGroup`
//! when none is set (the Secret's files are readable by that group only, see [`super::sidecar`]).
//! Running it again with the same flags therefore changes nothing, and with other flags replaces them
//! rather than adding a second copy. Everything else in the spec is left as it was.
//!
//! Which objects it touches is [`super::select`]'s choice, plus one rule of its own: a regular
//! (non-native) sidecar never exits, so in regular mode a pod meant to run to completion — a Job's, a
//! CronJob's, or any with `restartPolicy` `Never` or `OnFailure` (a `helm test` pod) — is left alone,
//! with a warning, rather than made to run for ever.

use saphyr::Yaml;

use super::sidecar::{self, CONTAINER_NAME, POD_LABEL, URL_ENV, VOLUME_NAME};
use super::yaml::{self, Node};
use super::{InjectOptions, Mode};

/// The annotation that keeps a pod template as it is when set to `"false"`.
pub const OPT_OUT_ANNOTATION: &str = "aa-token-broker/inject";
/// The annotation `kubectl logs` and `kubectl exec` use to pick a container when none is named.
pub const DEFAULT_CONTAINER_ANNOTATION: &str = "kubectl.kubernetes.io/default-container";

/// Where each kind keeps its pod template: API group, kind, and the keys leading to the template
/// (none: the object is the pod).
const POD_TEMPLATES: &[(&str, &str, &[&str])] = &[
    ("", "Pod", &[]),
    ("apps", "Deployment", &["spec", "template"]),
    ("apps", "StatefulSet", &["spec", "template"]),
    ("apps", "DaemonSet", &["spec", "template"]),
    ("apps", "ReplicaSet", &["spec", "template"]),
    ("", "ReplicationController", &["spec", "template"]),
    ("batch", "Job", &["spec", "template"]),
    (
        "batch",
        "CronJob",
        &["spec", "jobTemplate", "spec", "template"],
    ),
];

/// What happened to one object.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Not a kind with a pod template: written back as it was.
    NotAWorkload,
    /// Annotated `aa-token-broker/inject: "false"` (the workload or its pod template): written back as
    /// it was.
    OptedOut,
    /// Not chosen by the selector, or named by `--exclude`: written back as it was.
    NotChosen,
    /// Runs to completion, and the sidecar would be a regular one that never exits: left without it.
    RunsToCompletion,
    /// The sidecar is in (added, or brought up to date).
    Injected,
}

/// Where an object's pod template is, if its kind has one.
pub fn template_path(api_version: &str, kind: &str) -> Option<&'static [&'static str]> {
    let group = api_version.rsplit_once('/').map_or("", |(group, _)| group);
    POD_TEMPLATES
        .iter()
        .find(|(g, k, _)| *g == group && *k == kind)
        .map(|(_, _, path)| *path)
}

/// Adds the sidecar to the object's pod template. `notes` collects warnings worth a line on stderr.
/// The error is a reason without the object's name (the caller adds it).
pub fn inject_object(
    object: &mut Node<'_>,
    options: &InjectOptions,
    notes: &mut Vec<String>,
) -> Result<Outcome, String> {
    let api_version = yaml::get(object, "apiVersion").and_then(yaml::text);
    let kind = yaml::get(object, "kind").and_then(yaml::text);
    let (Some(api_version), Some(kind)) = (api_version, kind) else {
        return Ok(Outcome::NotAWorkload);
    };
    let Some(keys) = template_path(api_version, kind) else {
        return Ok(Outcome::NotAWorkload);
    };
    let is_job = matches!(kind, "Job" | "CronJob");
    let where_ = if keys.is_empty() {
        String::from("the object")
    } else {
        keys.join(".")
    };
    let opted_out = |node: &Node<'_>| {
        yaml::path(node, &["metadata", "annotations", OPT_OUT_ANNOTATION]).and_then(yaml::text)
            == Some("false")
    };
    // The workload's own metadata counts as much as its pod template's: it is where people look.
    if opted_out(object) {
        return Ok(Outcome::OptedOut);
    }
    let name = yaml::path(object, &["metadata", "name"]).and_then(yaml::text);
    if options.selection.excludes(kind, name) {
        return Ok(Outcome::NotChosen);
    }
    let kind = kind.to_string();
    let template = yaml::path_mut(object, keys)
        .filter(|t| t.is_mapping())
        .ok_or_else(|| format!("{where_} is missing or not a mapping"))?;
    if opted_out(template) {
        return Ok(Outcome::OptedOut);
    }
    if !options
        .selection
        .selects(yaml::path(template, &["metadata", "labels"]))
    {
        return Ok(Outcome::NotChosen);
    }
    let spec = yaml::get_mut(template, "spec")
        .filter(|s| s.is_mapping())
        .ok_or_else(|| format!("{where_}.spec is missing or not a mapping"))?;
    let restart_policy = yaml::get(spec, "restartPolicy")
        .and_then(yaml::text)
        .filter(|p| matches!(*p, "Never" | "OnFailure"));
    if options.mode == Mode::Regular && (is_job || restart_policy.is_some()) {
        let what = match restart_policy {
            Some(policy) => format!("its pods run to completion (restartPolicy {policy})"),
            None => format!("a {kind}'s pods run to completion"),
        };
        let removed = remove_injected(spec)?;
        notes.push(format!(
            "left without the sidecar{}: {what}, and a regular (non-native) sidecar never exits, so \
             they would never complete; use --mode native (Kubernetes 1.29 or newer), where the sidecar \
             ends with the pod",
            if removed { " (removed)" } else { "" }
        ));
        if removed {
            remove_pod_label(template);
        }
        return Ok(Outcome::RunsToCompletion);
    }
    let first_app = inject_pod_spec(spec, options)?;
    if yaml::get(spec, "hostNetwork").and_then(yaml::text) == Some("true") {
        notes.push(format!(
            "hostNetwork is on: the token port {} is on the node's loopback, reachable by every \
             host-network process on the node",
            options.port
        ));
    }
    if options.mode == Mode::Regular {
        let init = container_list(spec, "initContainers")?.map_or_else(Vec::new, |items| {
            items
                .iter()
                .filter_map(|c| yaml::get(c, "name").and_then(yaml::text))
                .map(str::to_string)
                .collect()
        });
        if !init.is_empty() {
            notes.push(format!(
                "its init containers ({}) run before a regular sidecar starts: they get no {URL_ENV} \
                 and cannot use the broker (--mode native, Kubernetes 1.29 or newer, starts it first)",
                init.join(", ")
            ));
        }
    }
    let metadata = yaml::mapping_entry(template, "metadata")
        .ok_or_else(|| format!("{where_}.metadata is not a mapping"))?;
    // Template labels may grow without touching the workload's selector, which must only be a subset.
    let labels = yaml::mapping_entry(metadata, "labels")
        .ok_or_else(|| format!("{where_}.metadata.labels is not a mapping"))?;
    yaml::set(labels, POD_LABEL.0, yaml::string(POD_LABEL.1), None);
    let metadata = yaml::get_mut(template, "metadata")
        .ok_or_else(|| format!("{where_}.metadata is not a mapping"))?;
    let annotations = yaml::mapping_entry(metadata, "annotations")
        .ok_or_else(|| format!("{where_}.metadata.annotations is not a mapping"))?;
    if yaml::get(annotations, DEFAULT_CONTAINER_ANNOTATION).is_none() {
        yaml::set(
            annotations,
            DEFAULT_CONTAINER_ANNOTATION,
            yaml::string(first_app),
            None,
        );
    }
    Ok(Outcome::Injected)
}

/// Puts the sidecar, its volume and the application's variable into a pod spec. Returns the name of
/// the first application container.
fn inject_pod_spec(spec: &mut Node<'_>, options: &InjectOptions) -> Result<String, String> {
    let removed_init = remove_sidecar(spec, "initContainers")?;
    remove_sidecar(spec, "containers")?;
    let containers = container_list(spec, "containers")?
        .ok_or("spec.containers is missing: a pod needs at least one container")?;
    let first_app = match containers.first() {
        Some(first) => name_of(first, "containers", 0)?.to_string(),
        None => return Err("spec.containers has no application container".into()),
    };
    let url = sidecar::url_env(options);
    for list in ["initContainers", "containers"] {
        // A regular sidecar starts after the init containers: the URL would lead them nowhere.
        let reaches = list == "containers" || options.mode == Mode::Native;
        if let Some(items) = container_list(spec, list)? {
            for (index, container) in items.iter_mut().enumerate() {
                let set = if reaches {
                    set_url_env(container, &url)
                } else {
                    remove_url_env(container)
                };
                set.map_err(|e| format!("spec.{list}[{index}].{e}"))?;
            }
        }
    }
    match options.mode {
        Mode::Native => {
            if container_list(spec, "initContainers")?.is_none() {
                yaml::set(
                    spec,
                    "initContainers",
                    Yaml::Sequence(Vec::new()),
                    Some("containers"),
                );
            }
            if let Some(init) = container_list(spec, "initContainers")? {
                init.insert(0, sidecar::container(options));
            }
        }
        Mode::Regular => {
            if let Some(containers) = container_list(spec, "containers")? {
                containers.insert(0, sidecar::container(options));
            }
            // The list existed only for the sidecar (injected natively before): leave no empty list.
            if removed_init && container_list(spec, "initContainers")?.is_some_and(|l| l.is_empty())
            {
                yaml::remove(spec, "initContainers");
            }
        }
    }
    if !options.openshift {
        // The Secret's files are readable by their group only: the pod's fsGroup, which every
        // container gets as a supplementary group. One already set is kept (the broker reads through
        // it just as well); on OpenShift the platform assigns it.
        let context = yaml::mapping_entry(spec, "securityContext")
            .ok_or("spec.securityContext is not a mapping")?;
        if yaml::get(context, "fsGroup").is_none_or(yaml::is_null) {
            yaml::set(context, "fsGroup", yaml::integer(sidecar::BROKER_GID), None);
        }
    }
    let volume = sidecar::volume(options);
    if yaml::get(spec, "volumes").is_none_or(yaml::is_null) {
        yaml::set(spec, "volumes", Yaml::Sequence(Vec::new()), None);
    }
    let Some(Yaml::Sequence(volumes)) = yaml::get_mut(spec, "volumes") else {
        return Err("spec.volumes is not a list".into());
    };
    let kek = sidecar::kek_volume(options).map(|v| (sidecar::KEK_VOLUME_NAME, v));
    for (name, volume) in std::iter::once((VOLUME_NAME, volume)).chain(kek) {
        match volumes
            .iter()
            .position(|v| yaml::get(v, "name").and_then(yaml::text) == Some(name))
        {
            Some(at) => volumes[at] = volume,
            None => volumes.push(volume),
        }
    }
    Ok(first_app)
}

/// The list of containers under `key`: `None` when absent or null, an error when not a list.
fn container_list<'n, 'a>(
    spec: &'n mut Node<'a>,
    key: &str,
) -> Result<Option<&'n mut Vec<Node<'a>>>, String> {
    match yaml::get_mut(spec, key) {
        None => Ok(None),
        Some(node) if yaml::is_null(node) => Ok(None),
        Some(Yaml::Sequence(items)) => Ok(Some(items)),
        Some(_) => Err(format!("spec.{key} is not a list")),
    }
}

fn name_of<'n>(container: &'n Node<'_>, list: &str, index: usize) -> Result<&'n str, String> {
    yaml::get(container, "name")
        .and_then(yaml::text)
        .ok_or_else(|| format!("spec.{list}[{index}] has no name"))
}

/// Removes the sidecar from a container list; true when it was there.
fn remove_sidecar(spec: &mut Node<'_>, key: &str) -> Result<bool, String> {
    let Some(items) = container_list(spec, key)? else {
        return Ok(false);
    };
    for (index, container) in items.iter().enumerate() {
        name_of(container, key, index)?;
    }
    let before = items.len();
    items.retain(|c| yaml::get(c, "name").and_then(yaml::text) != Some(CONTAINER_NAME));
    Ok(items.len() != before)
}

/// Takes out of a pod spec what an earlier run put in (the sidecar in either list, its volume, the
/// broker URL of the other containers); true when there was a sidecar. A spec without one is untouched.
fn remove_injected(spec: &mut Node<'_>) -> Result<bool, String> {
    let from_init = remove_sidecar(spec, "initContainers")?;
    let from_containers = remove_sidecar(spec, "containers")?;
    if !(from_init || from_containers) {
        return Ok(false);
    }
    if from_init && container_list(spec, "initContainers")?.is_some_and(|l| l.is_empty()) {
        yaml::remove(spec, "initContainers");
    }
    for list in ["initContainers", "containers"] {
        if let Some(items) = container_list(spec, list)? {
            for (index, container) in items.iter_mut().enumerate() {
                remove_url_env(container).map_err(|e| format!("spec.{list}[{index}].{e}"))?;
            }
        }
    }
    if let Some(Yaml::Sequence(volumes)) = yaml::get_mut(spec, "volumes") {
        volumes.retain(|v| yaml::get(v, "name").and_then(yaml::text) != Some(VOLUME_NAME));
        if volumes.is_empty() {
            yaml::remove(spec, "volumes");
        }
    }
    Ok(true)
}

/// Removes the label the PodMonitor selects from a pod template.
fn remove_pod_label(template: &mut Node<'_>) {
    if let Some(labels) = yaml::path_mut(template, &["metadata", "labels"]) {
        yaml::remove(labels, POD_LABEL.0);
        if matches!(labels, Yaml::Mapping(map) if map.is_empty())
            && let Some(metadata) = yaml::get_mut(template, "metadata")
        {
            yaml::remove(metadata, "labels");
        }
    }
}

/// Removes an `AA_TOKEN_BROKER_URL` that points at the pod's loopback (an earlier run's; one pointing
/// elsewhere is the application's own), and an `env` list left empty by that.
fn remove_url_env(container: &mut Node<'_>) -> Result<(), String> {
    let Some(node) = yaml::get_mut(container, "env") else {
        return Ok(());
    };
    let Yaml::Sequence(env) = node else {
        return if yaml::is_null(node) {
            Ok(())
        } else {
            Err("env is not a list".into())
        };
    };
    let before = env.len();
    env.retain(|e| {
        let ours = yaml::get(e, "name").and_then(yaml::text) == Some(URL_ENV)
            && yaml::get(e, "value")
                .and_then(yaml::text)
                .is_some_and(|v| v.starts_with(sidecar::LOOPBACK_URL_PREFIX));
        !ours
    });
    if before != env.len() && env.is_empty() {
        yaml::remove(container, "env");
    }
    Ok(())
}

/// Sets `AA_TOKEN_BROKER_URL` in a container's `env`: replaces an entry of that name (keeping its
/// place), or puts it first, so later entries can refer to it as `$(AA_TOKEN_BROKER_URL)`.
fn set_url_env(container: &mut Node<'_>, url: &Node<'static>) -> Result<(), String> {
    if yaml::get(container, "env").is_none_or(yaml::is_null) {
        yaml::set(container, "env", Yaml::Sequence(Vec::new()), None);
    }
    let Some(Yaml::Sequence(env)) = yaml::get_mut(container, "env") else {
        return Err("env is not a list".into());
    };
    match env
        .iter()
        .position(|e| yaml::get(e, "name").and_then(yaml::text) == Some(URL_ENV))
    {
        Some(at) => env[at] = url.clone(),
        None => env.insert(0, url.clone()),
    }
    Ok(())
}
