//! The nodes `inject` adds to a pod: the broker's container, its secret volume and the variable that
//! tells the application where the broker is. The values are the Helm chart's (`helm/aa-token-broker`,
//! `values.yaml` and `_helpers.tpl`), so an injected pod and a chart-rendered one run the broker alike;
//! `helm/ci/test_chart.py` compares the two.

use super::yaml::{Node, boolean, integer, mapping, string, strings};
use super::{Iam, InjectOptions, Mode};
use crate::config::settings;

/// The container's name, in both forms; what later runs look for.
pub const CONTAINER_NAME: &str = "aa-token-broker";
/// The volume holding the entity secret.
pub const VOLUME_NAME: &str = "aa-token-broker-secret";
/// Where the Secret is mounted, as a directory, so the kubelet's update of a rotated secret reaches it.
pub const MOUNT_PATH: &str = "/var/run/secrets/aa-token-broker";
/// The volume holding the FI key-encryption key, its mount and the key in the Secret (the chart's).
pub const KEK_VOLUME_NAME: &str = "aa-token-broker-fi-kek";
pub const KEK_MOUNT_PATH: &str = "/var/run/secrets/aa-token-broker-fi";
pub const KEK_KEY: &str = "kek";
/// The admin port's name: distinct, so that a PodMonitor selecting it never scrapes an application port
/// named `metrics` too (the chart uses the same name).
pub const ADMIN_PORT_NAME: &str = "broker-metrics";
/// The pod label the chart's PodMonitor selects.
pub const POD_LABEL: (&str, &str) = ("aa-token-broker/sidecar", "true");
/// The variable each application container gets.
pub const URL_ENV: &str = "AA_TOKEN_BROKER_URL";
/// How long a regular sidecar's `postStart` hook holds the next container (the chart's
/// `sidecar.holdApplicationSeconds`).
const HOLD_SECONDS: &str = "60";
/// The Secret's files are readable by their owner (root) and group only: the pod's `fsGroup`, which the
/// broker gets as a supplementary group. 0400 is not an option: a Secret volume's files belong to root,
/// so a non-root broker could not read them; 0444 would let any user in the container read the secret
/// (and the broker warns about it). Written in decimal, which YAML 1.1 and 1.2 readers take alike (a
/// leading-zero `0440` is octal only to YAML 1.1).
const SECRET_FILE_MODE: i64 = 0o440;
/// The user and group the broker runs as (the image's `nonroot`), and the `fsGroup` a pod without one
/// gets. Not set under `--openshift`, where the platform assigns all three.
pub const BROKER_UID: i64 = 65532;
pub const BROKER_GID: i64 = 65532;
/// How [`URL_ENV`] starts when it points at the pod's own broker.
pub const LOOPBACK_URL_PREFIX: &str = "http://127.0.0.1:";

/// `http://127.0.0.1:<port>`, the value of [`URL_ENV`].
pub fn broker_url(options: &InjectOptions) -> String {
    format!("{LOOPBACK_URL_PREFIX}{}", options.port)
}

/// The `AA_TOKEN_BROKER_URL` entry of an application container's `env`.
pub fn url_env(options: &InjectOptions) -> Node<'static> {
    env(URL_ENV, &broker_url(options))
}

fn env(name: &str, value: &str) -> Node<'static> {
    mapping([("name", string(name)), ("value", string(value))])
}

fn exec(command: &[&str]) -> Node<'static> {
    mapping([("exec", mapping([("command", strings(command))]))])
}

/// A probe: `httpGet` on the admin port when there is one, else the binary's own `healthcheck`
/// (the image has no shell or curl).
fn probe(options: &InjectOptions, live: bool, period: i64, failures: i64) -> Node<'static> {
    let check = match options.admin_port {
        Some(_) => mapping([(
            "httpGet",
            mapping([
                ("path", string(if live { "/healthz" } else { "/readyz" })),
                ("port", string(ADMIN_PORT_NAME)),
            ]),
        )]),
        None if live => exec(&["aa-token-broker", "healthcheck", "--live"]),
        None => exec(&["aa-token-broker", "healthcheck"]),
    };
    let mut probe = check;
    if let Node::Mapping(map) = &mut probe {
        map.insert(string("periodSeconds"), integer(period));
        map.insert(string("failureThreshold"), integer(failures));
    }
    probe
}

/// The broker's container, in the form `options.mode` asks for.
pub fn container(options: &InjectOptions) -> Node<'static> {
    // In the chart's order, so that the two render the same container.
    let mut env_list = vec![
        env(settings::ENTITY_ID.env, options.entity_id.as_str()),
        env(
            settings::SECRET_FILE.env,
            &format!("{MOUNT_PATH}/{}", options.secret_key),
        ),
    ];
    env_list.push(match &options.iam {
        Iam::Environment(name) => env(settings::ENVIRONMENT.env, name),
        Iam::Url(url) => env(settings::IAM_URL.env, url),
    });
    env_list.push(env(
        settings::LISTEN.env,
        &format!("127.0.0.1:{}", options.port),
    ));
    if let Some(admin) = options.admin_port {
        env_list.push(env(settings::ADMIN_LISTEN.env, &format!("0.0.0.0:{admin}")));
    }
    env_list.push(env(settings::LOG_FORMAT.env, "json"));
    env_list.push(env(settings::LOG_LEVEL.env, "info"));
    if options.fi_kek_secret.is_some() {
        env_list.push(env(
            settings::FI_KEK_FILE.env,
            &format!("{KEK_MOUNT_PATH}/{KEK_KEY}"),
        ));
    }

    let mut fields: Vec<(&'static str, Node<'static>)> = vec![
        ("name", string(CONTAINER_NAME)),
        ("image", string(options.image.as_str())),
        ("imagePullPolicy", string("IfNotPresent")),
    ];
    if options.mode == Mode::Native {
        fields.push(("restartPolicy", string("Always")));
    }
    fields.push(("args", strings(&["serve"])));
    fields.push(("env", Node::Sequence(env_list)));
    if let Some(admin) = options.admin_port {
        fields.push((
            "ports",
            Node::Sequence(vec![mapping([
                ("name", string(ADMIN_PORT_NAME)),
                ("containerPort", integer(i64::from(admin))),
                ("protocol", string("TCP")),
            ])]),
        ));
    }
    match options.mode {
        // The kubelet starts the next containers only once this probe passes: a token exists.
        Mode::Native => fields.push(("startupProbe", probe(options, false, 1, 120))),
        // The kubelet starts the next container only when this hook returns.
        Mode::Regular => fields.push((
            "lifecycle",
            mapping([(
                "postStart",
                exec(&["aa-token-broker", "healthcheck", "--wait", HOLD_SECONDS]),
            )]),
        )),
    }
    fields.push(("livenessProbe", probe(options, true, 10, 3)));
    fields.push(("readinessProbe", probe(options, false, 5, 2)));
    fields.push((
        "resources",
        mapping([
            (
                "requests",
                mapping([("cpu", string("10m")), ("memory", string("16Mi"))]),
            ),
            ("limits", mapping([("memory", string("48Mi"))])),
        ]),
    ));
    let mut security = vec![("runAsNonRoot", boolean(true))];
    if !options.openshift {
        security.push(("runAsUser", integer(BROKER_UID)));
        security.push(("runAsGroup", integer(BROKER_GID)));
    }
    security.extend([
        ("readOnlyRootFilesystem", boolean(true)),
        ("allowPrivilegeEscalation", boolean(false)),
        ("capabilities", mapping([("drop", strings(&["ALL"]))])),
        (
            "seccompProfile",
            mapping([("type", string("RuntimeDefault"))]),
        ),
    ]);
    fields.push(("securityContext", mapping(security)));
    let mut mounts = vec![mapping([
        ("name", string(VOLUME_NAME)),
        ("mountPath", string(MOUNT_PATH)),
        ("readOnly", boolean(true)),
    ])];
    // The FI key-encryption key: in this container only, never in the application's.
    if options.fi_kek_secret.is_some() {
        mounts.push(mapping([
            ("name", string(KEK_VOLUME_NAME)),
            ("mountPath", string(KEK_MOUNT_PATH)),
            ("readOnly", boolean(true)),
        ]));
    }
    fields.push(("volumeMounts", Node::Sequence(mounts)));
    mapping(fields)
}

/// The Secret volume: the whole Secret as a directory (no `subPath`, which the kubelet never updates).
pub fn volume(options: &InjectOptions) -> Node<'static> {
    mapping([
        ("name", string(VOLUME_NAME)),
        (
            "secret",
            mapping([
                ("secretName", string(options.secret_name.as_str())),
                ("defaultMode", integer(SECRET_FILE_MODE)),
                (
                    "items",
                    Node::Sequence(vec![mapping([
                        ("key", string(options.secret_key.as_str())),
                        ("path", string(options.secret_key.as_str())),
                    ])]),
                ),
            ]),
        ),
    ])
}

/// The FI key-encryption key's Secret volume, when one is named.
pub fn kek_volume(options: &InjectOptions) -> Option<Node<'static>> {
    let name = options.fi_kek_secret.as_deref()?;
    Some(mapping([
        ("name", string(KEK_VOLUME_NAME)),
        (
            "secret",
            mapping([
                ("secretName", string(name)),
                ("defaultMode", integer(SECRET_FILE_MODE)),
                (
                    "items",
                    Node::Sequence(vec![mapping([
                        ("key", string(KEK_KEY)),
                        ("path", string(KEK_KEY)),
                    ])]),
                ),
            ]),
        ),
    ]))
}
