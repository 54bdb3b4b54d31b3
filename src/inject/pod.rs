//! Where each kind keeps its pod template, and what `inject` does to one.
//!
//! `inject` owns four things in a pod template and rewrites them on every run: the container named
//! `aa-token-broker` (in `initContainers` or `containers`), the volume `aa-token-broker-secret`, the
//! `AA_TOKEN_BROKER_URL` variable of the other containers, and the label `aa-token-broker/sidecar`. It
//! also sets `kubectl.kubernetes.io/default-container` when that is not set. Running it again with the same flags
//! therefore changes nothing, and with other flags replaces them rather than adding a second copy.
//! Everything else in the spec is left as it was.

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
    /// Annotated `aa-token-broker/inject: "false"`: written back as it was.
    OptedOut,
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
    let template = yaml::path_mut(object, keys)
        .filter(|t| t.is_mapping())
        .ok_or_else(|| format!("{where_} is missing or not a mapping"))?;
    let opted_out = yaml::path(template, &["metadata", "annotations", OPT_OUT_ANNOTATION])
        .and_then(yaml::text)
        == Some("false");
    if opted_out {
        return Ok(Outcome::OptedOut);
    }
    let spec = yaml::get_mut(template, "spec")
        .filter(|s| s.is_mapping())
        .ok_or_else(|| format!("{where_}.spec is missing or not a mapping"))?;
    let first_app = inject_pod_spec(spec, options)?;
    if yaml::get(spec, "hostNetwork").and_then(yaml::text) == Some("true") {
        notes.push(format!(
            "hostNetwork is on: the token port {} is on the node's loopback, reachable by every \
             host-network process on the node",
            options.port
        ));
    }
    if is_job && options.mode == Mode::Regular {
        notes.push(
            "a regular (non-native) sidecar keeps running after the job's containers finish, so the \
             job never completes; use --mode native (Kubernetes 1.29 or newer)"
                .into(),
        );
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
        if let Some(items) = container_list(spec, list)? {
            for (index, container) in items.iter_mut().enumerate() {
                set_url_env(container, &url).map_err(|e| format!("spec.{list}[{index}].{e}"))?;
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
