//! Which workloads `inject` touches. Third-party manifests (an operator's `install.yaml`, a vendor's
//! chart) hold workloads that must not get the entity secret — a cache, an identity provider — so a run
//! can narrow itself:
//!
//! - a label selector on the **pod template's** labels, in kubectl's equality-based syntax (`-l
//!   app=api,tier!=cache`): what the pods will carry, not what the workload object happens to;
//! - `--exclude KIND/NAME`, repeatable, kind in any case (`deployment/redis`, `StatefulSet/dex`);
//! - the opt-out annotation `aa-token-broker/inject: "false"`, on the workload's own metadata or on its
//!   pod template (see [`super::pod`]).
//!
//! Objects not chosen come out as they went in.

use super::yaml::{self, Node};

/// One `key=value`, `key==value` or `key!=value` of a selector.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Requirement {
    key: String,
    value: String,
    equal: bool,
}

/// What a run is limited to. The default chooses every workload.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selection {
    requirements: Vec<Requirement>,
    /// (kind in lower case, name)
    excluded: Vec<(String, String)>,
}

/// The kinds `--exclude` may name: those with a pod template.
const KINDS: &[&str] = &[
    "Pod",
    "Deployment",
    "StatefulSet",
    "DaemonSet",
    "ReplicaSet",
    "ReplicationController",
    "Job",
    "CronJob",
];

impl Selection {
    /// Adds a selector in kubectl's equality-based syntax: comma-separated `key=value`, `key==value` or
    /// `key!=value`; all must hold. Set-based forms (`in`, `notin`, `key`, `!key`) are refused by name.
    pub fn with_selector(mut self, text: &str) -> Result<Self, String> {
        for part in text.split(',') {
            let part = part.trim();
            if part.is_empty() {
                return Err(format!("{text:?} has an empty requirement"));
            }
            let (key, value, equal) = if let Some((k, v)) = part.split_once("!=") {
                (k, v, false)
            } else if let Some((k, v)) = part.split_once("==") {
                (k, v, true)
            } else if let Some((k, v)) = part.split_once('=') {
                (k, v, true)
            } else {
                return Err(format!(
                    "{part:?}: only equality-based requirements are supported (key=value, key==value, \
                     key!=value)"
                ));
            };
            let (key, value) = (key.trim(), value.trim());
            if !is_label_key(key) {
                return Err(format!("{key:?} is not a label key"));
            }
            if !is_label_value(value) {
                return Err(format!(
                    "{value:?} is not a label value (at most 63 letters, digits, '-', '_' and '.'; \
                     set-based forms such as `in (...)` are not supported)"
                ));
            }
            self.requirements.push(Requirement {
                key: key.to_string(),
                value: value.to_string(),
                equal,
            });
        }
        Ok(self)
    }

    /// Adds one `KIND/NAME` to leave alone.
    pub fn with_exclude(mut self, text: &str) -> Result<Self, String> {
        let Some((kind, name)) = text.trim().split_once('/') else {
            return Err(format!("{text:?} is not KIND/NAME, e.g. deployment/redis"));
        };
        let kind = kind.trim().to_ascii_lowercase();
        // kubectl's plural forms too: deployments/redis.
        let known = KINDS.iter().find(|k| {
            let k = k.to_ascii_lowercase();
            kind == k || kind.strip_suffix('s') == Some(k.as_str())
        });
        let Some(known) = known else {
            return Err(format!(
                "{kind:?} is not a kind with a pod template ({})",
                KINDS.join(", ")
            ));
        };
        let name = name.trim();
        if name.is_empty() || name.contains('/') {
            return Err(format!("{text:?} is not KIND/NAME, e.g. deployment/redis"));
        }
        self.excluded
            .push((known.to_ascii_lowercase(), name.to_string()));
        Ok(self)
    }

    /// True when `--exclude` names this object.
    pub fn excludes(&self, kind: &str, name: Option<&str>) -> bool {
        let Some(name) = name else {
            return false;
        };
        let kind = kind.to_ascii_lowercase();
        self.excluded.iter().any(|(k, n)| *k == kind && n == name)
    }

    /// True when the pod template's `labels` (a mapping, or absent) satisfy every requirement. As in
    /// Kubernetes, `key!=value` holds when the label is absent.
    pub fn selects(&self, labels: Option<&Node<'_>>) -> bool {
        self.requirements.iter().all(|r| {
            let actual = labels
                .and_then(|l| yaml::get(l, &r.key))
                .and_then(yaml::text);
            (actual == Some(r.value.as_str())) == r.equal
        })
    }
}

/// A label key: an optional DNS-subdomain prefix and `/`, then a name of at most 63 characters.
fn is_label_key(key: &str) -> bool {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    let prefix_ok = prefix.is_none_or(|p| {
        !p.is_empty()
            && p.len() <= 253
            && p.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
    });
    prefix_ok && !name.is_empty() && is_label_value(name)
}

/// A label value: empty, or at most 63 of letters, digits, `-`, `_`, `.`, starting and ending with a
/// letter or digit.
fn is_label_value(value: &str) -> bool {
    value.is_empty()
        || (value.len() <= 63
            && value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            && value
                .bytes()
                .next()
                .is_some_and(|b| b.is_ascii_alphanumeric())
            && value
                .bytes()
                .last()
                .is_some_and(|b| b.is_ascii_alphanumeric()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(text: &str) -> Node<'_> {
        yaml::normalize(yaml::load(text).unwrap().remove(0)).unwrap()
    }

    #[test]
    fn equality_requirements_all_hold_and_not_equal_holds_when_absent() {
        let pod = labels("app: api\ntier: web\n");
        let select = |s: &str| Selection::default().with_selector(s).unwrap();
        assert!(select("app=api").selects(Some(&pod)));
        assert!(select("app==api, tier=web").selects(Some(&pod)));
        assert!(!select("app=api,tier=cache").selects(Some(&pod)));
        assert!(select("tier!=cache").selects(Some(&pod)));
        assert!(select("absent!=x").selects(Some(&pod)));
        assert!(!select("app!=api").selects(Some(&pod)));
        assert!(!select("app=api").selects(None));
        assert!(
            Selection::default().selects(None),
            "no selector: everything"
        );
        assert!(
            select("app.kubernetes.io/name=api")
                .selects(Some(&labels("app.kubernetes.io/name: api\n")))
        );
    }

    #[test]
    fn set_based_and_malformed_selectors_are_refused() {
        for bad in [
            "app in (a,b)",
            "app",
            "!app",
            "app=a b",
            "=x",
            "a,,b=c",
            "Bad_Prefix/x=y",
        ] {
            assert!(Selection::default().with_selector(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn excludes_match_kind_in_any_case_and_plural_and_the_exact_name() {
        let selection = Selection::default()
            .with_exclude("deployment/argocd-redis")
            .unwrap()
            .with_exclude("StatefulSets/dex")
            .unwrap();
        assert!(selection.excludes("Deployment", Some("argocd-redis")));
        assert!(selection.excludes("StatefulSet", Some("dex")));
        assert!(!selection.excludes("Deployment", Some("argocd-redis-ha")));
        assert!(!selection.excludes("StatefulSet", Some("argocd-redis")));
        assert!(!selection.excludes("Deployment", None));
        for bad in ["redis", "service/redis", "deployment/", "deployment/a/b"] {
            assert!(Selection::default().with_exclude(bad).is_err(), "{bad}");
        }
    }
}
