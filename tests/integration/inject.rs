//! `aa-token-broker inject`, run as a user runs it: the real binary, manifests on stdin or in a file,
//! the output read back as YAML and checked for what Kubernetes would see.

use std::io::Write;
use std::process::{Command, Output, Stdio};

use aa_token_broker::inject::yaml::{self, Node};

const FIXTURE: &str = "tests/fixtures/inject/workloads.yaml";
const GOLDEN_NATIVE: &str = "tests/fixtures/inject/workloads.native.yaml";
const THIRD_PARTY: &str = "tests/fixtures/inject/third-party.yaml";
const BASE: &[&str] = &[
    "--entity-id",
    "FIU-EXAMPLE",
    "--secret-name",
    "fiu-entity-secret",
    "--environment",
    "sandbox",
];

/// Runs `inject` with the base flags plus `extra`, feeding `stdin`.
fn inject(extra: &[&str], stdin: &str) -> Output {
    inject_with(BASE, extra, stdin)
}

fn inject_with(base: &[&str], extra: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_aa-token-broker"))
        .arg("inject")
        .args(base)
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary starts");
    let mut pipe = child.stdin.take().expect("stdin is piped");
    // A run refused for its flags exits without reading stdin.
    if let Err(e) = pipe.write_all(stdin.as_bytes()) {
        assert_eq!(
            e.kind(),
            std::io::ErrorKind::BrokenPipe,
            "writing stdin: {e}"
        );
    }
    drop(pipe);
    child.wait_with_output().expect("the binary exits")
}

/// The output of a run that must succeed.
fn ok(output: &Output) -> String {
    assert!(
        output.status.success(),
        "inject failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).expect("UTF-8 output")
}

fn fixture() -> String {
    std::fs::read_to_string(FIXTURE).expect("the fixture exists")
}

fn documents(text: &str) -> Vec<Node<'_>> {
    yaml::load(text)
        .expect("valid YAML")
        .into_iter()
        .filter(|d| !yaml::is_null(d))
        .map(|d| yaml::normalize(d).expect("plain YAML"))
        .collect()
}

fn text<'n>(node: &'n Node<'_>, keys: &[&str]) -> Option<&'n str> {
    yaml::path(node, keys).and_then(yaml::text)
}

fn kind_and_name(document: &Node<'_>) -> String {
    format!(
        "{}/{}",
        text(document, &["kind"]).unwrap_or("?"),
        text(document, &["metadata", "name"]).unwrap_or("?")
    )
}

fn find<'n, 'a>(documents: &'n [Node<'a>], kind: &str) -> &'n Node<'a> {
    documents
        .iter()
        .find(|d| text(d, &["kind"]) == Some(kind))
        .unwrap_or_else(|| panic!("no {kind} in the output"))
}

fn template_path(kind: &str) -> &'static [&'static str] {
    match kind {
        "Pod" => &[],
        "CronJob" => &["spec", "jobTemplate", "spec", "template"],
        _ => &["spec", "template"],
    }
}

fn pod_spec<'n, 'a>(document: &'n Node<'a>) -> &'n Node<'a> {
    let kind = text(document, &["kind"]).expect("a kind");
    let mut keys = template_path(kind).to_vec();
    keys.push("spec");
    yaml::path(document, &keys).expect("a pod spec")
}

fn list<'n, 'a>(node: &'n Node<'a>, key: &str) -> &'n [Node<'a>] {
    match yaml::get(node, key) {
        Some(Node::Sequence(items)) => items,
        _ => &[],
    }
}

fn names(items: &[Node<'_>]) -> Vec<String> {
    items
        .iter()
        .map(|c| text(c, &["name"]).unwrap_or("?").to_string())
        .collect()
}

fn env_values(container: &Node<'_>, name: &str) -> Vec<String> {
    list(container, "env")
        .iter()
        .filter(|e| text(e, &["name"]) == Some(name))
        .map(|e| text(e, &["value"]).unwrap_or("?").to_string())
        .collect()
}

fn emitted(document: &Node<'_>) -> String {
    yaml::emit(std::slice::from_ref(document)).expect("emits")
}

#[test]
fn every_kind_gets_the_native_sidecar_first_among_init_containers() {
    let out = ok(&inject(&[], &fixture()));
    let docs = documents(&out);
    for kind in ["Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob"] {
        let spec = pod_spec(find(&docs, kind));
        let init = list(spec, "initContainers");
        assert_eq!(
            names(init).first().map(String::as_str),
            Some("aa-token-broker"),
            "{kind}"
        );
        assert_eq!(text(&init[0], &["restartPolicy"]), Some("Always"), "{kind}");
        assert!(
            yaml::path(&init[0], &["startupProbe", "exec"]).is_some(),
            "{kind}"
        );
        assert!(
            !names(list(spec, "containers")).contains(&"aa-token-broker".to_string()),
            "{kind}: the native form is not also a regular container"
        );
    }
}

#[test]
fn the_output_for_the_fixture_is_the_reviewed_one() {
    let out = ok(&inject(&["--mode", "native"], &fixture()));
    if std::env::var_os("AA_UPDATE_GOLDEN").is_some() {
        std::fs::write(GOLDEN_NATIVE, &out).expect("golden file written");
    }
    let golden = std::fs::read_to_string(GOLDEN_NATIVE).expect("golden file exists");
    assert_eq!(
        out, golden,
        "output changed; review it and rerun with AA_UPDATE_GOLDEN=1"
    );
}

#[test]
fn documents_keep_their_order_and_objects_without_a_pod_template_keep_their_data() {
    let input = fixture();
    let out = ok(&inject(&[], &input));
    let before = documents(&input);
    let after = documents(&out);
    assert_eq!(
        before.iter().map(kind_and_name).collect::<Vec<_>>(),
        after.iter().map(kind_and_name).collect::<Vec<_>>()
    );
    for kind in ["ConfigMap", "Service", "Pod"] {
        assert_eq!(
            emitted(find(&before, kind)),
            emitted(find(&after, kind)),
            "{kind} changed"
        );
    }
    // YAML 1.1 readers (Kubernetes) must read the same values: the octal mode stays octal, the quoted
    // "on" stays a string, and the script stays a script.
    assert!(out.contains("defaultMode: 0644\n"), "{out}");
    assert!(out.contains("FEATURE_FLAG: \"on\"\n"), "{out}");
    assert!(out.contains("exec fiu-report --since yesterday\n"), "{out}");
}

#[test]
fn a_pod_annotated_inject_false_is_left_alone() {
    let out = ok(&inject(&[], &fixture()));
    let pod = find(&documents(&out), "Pod").clone();
    assert_eq!(
        names(list(yaml::get(&pod, "spec").expect("spec"), "containers")),
        ["shell"]
    );
    assert!(yaml::path(&pod, &["spec", "initContainers"]).is_none());
    assert!(!emitted(&pod).contains("AA_TOKEN_BROKER_URL"));
}

#[test]
fn injecting_its_own_output_changes_nothing() {
    for flags in [
        &["--mode", "native"][..],
        &["--mode", "regular"][..],
        &["--admin-port", "9373", "--port", "7400"][..],
    ] {
        let once = ok(&inject(flags, &fixture()));
        let twice = ok(&inject(flags, &once));
        assert_eq!(once, twice, "flags {flags:?}");
    }
}

#[test]
fn injecting_again_with_other_flags_updates_the_sidecar_instead_of_adding_one() {
    let native = ok(&inject(&["--mode", "native"], &fixture()));
    let base = [
        "--entity-id",
        "FIU-OTHER",
        "--secret-name",
        "fiu-other-secret",
        "--iam-url",
        "https://iam.example/iam/",
    ];
    let regular = ok(&inject_with(
        &base,
        &["--mode", "regular", "--secret-key", "entity-secret"],
        &native,
    ));
    let docs = documents(&regular);
    let deployment = pod_spec(find(&docs, "Deployment"));
    assert_eq!(
        names(list(deployment, "initContainers")),
        ["migrate"],
        "the native sidecar is gone from initContainers"
    );
    assert_eq!(
        names(list(deployment, "containers")),
        ["aa-token-broker", "api", "audit-shipper"]
    );
    let job = pod_spec(find(&docs, "Job"));
    assert!(
        yaml::get(job, "initContainers").is_none(),
        "a job is left without a regular sidecar, and no empty initContainers list is left"
    );
    assert!(
        !emitted(job).contains("aa-token-broker"),
        "{}",
        emitted(job)
    );
    let volumes: Vec<_> = list(deployment, "volumes")
        .iter()
        .filter(|v| text(v, &["name"]) == Some("aa-token-broker-secret"))
        .collect();
    assert_eq!(volumes.len(), 1);
    assert_eq!(
        text(volumes[0], &["secret", "secretName"]),
        Some("fiu-other-secret")
    );
    let sidecar = &list(deployment, "containers")[0];
    assert_eq!(env_values(sidecar, "AA_BROKER_ENTITY_ID"), ["FIU-OTHER"]);
    assert_eq!(
        env_values(sidecar, "AA_BROKER_IAM_URL"),
        ["https://iam.example/iam"]
    );
    assert!(env_values(sidecar, "AA_BROKER_ENVIRONMENT").is_empty());
    assert_eq!(
        env_values(sidecar, "AA_BROKER_SECRET_FILE"),
        ["/var/run/secrets/aa-token-broker/entity-secret"]
    );
}

#[test]
fn the_applications_init_containers_volumes_env_and_security_contexts_are_kept() {
    let input = fixture();
    let out = ok(&inject(&[], &input));
    let before = pod_spec(find(&documents(&input), "Deployment")).clone();
    let after = pod_spec(find(&documents(&out), "Deployment")).clone();
    assert_eq!(
        names(list(&after, "initContainers")),
        ["aa-token-broker", "migrate"]
    );
    assert_eq!(
        names(list(&after, "volumes")),
        ["settings", "aa-token-broker-secret"]
    );
    assert_eq!(
        emitted(yaml::get(&before, "securityContext").expect("pod securityContext")),
        emitted(yaml::get(&after, "securityContext").expect("pod securityContext"))
    );
    let api_before = &list(&before, "containers")[0];
    let api_after = &list(&after, "containers")[0];
    for key in ["securityContext", "volumeMounts", "ports", "image"] {
        assert_eq!(
            emitted(yaml::get(api_before, key).expect(key)),
            emitted(yaml::get(api_after, key).expect(key)),
            "{key}"
        );
    }
    assert_eq!(env_values(api_after, "LOG_LEVEL"), ["info"]);
    let migrate = &list(&after, "initContainers")[1];
    assert!(
        yaml::path(&list(migrate, "env")[1], &["valueFrom", "secretKeyRef"]).is_some(),
        "the init container's own variables stay"
    );
}

#[test]
fn every_application_container_gets_the_broker_url_once() {
    let out = ok(&inject(&["--port", "7400"], &fixture()));
    let docs = documents(&out);
    let spec = pod_spec(find(&docs, "Deployment"));
    for container in list(spec, "containers")
        .iter()
        .chain(list(spec, "initContainers"))
        .filter(|c| text(c, &["name"]) != Some("aa-token-broker"))
    {
        assert_eq!(
            env_values(container, "AA_TOKEN_BROKER_URL"),
            ["http://127.0.0.1:7400"],
            "{}",
            text(container, &["name"]).unwrap_or("?")
        );
    }
    let sidecar = &list(spec, "initContainers")[0];
    assert!(env_values(sidecar, "AA_TOKEN_BROKER_URL").is_empty());
    assert_eq!(env_values(sidecar, "AA_BROKER_LISTEN"), ["127.0.0.1:7400"]);
}

#[test]
fn the_default_container_is_the_first_application_container_unless_set() {
    let out = ok(&inject(&["--mode", "native"], &fixture()));
    let docs = documents(&out);
    let annotation = |kind| {
        let mut keys = template_path(kind).to_vec();
        keys.extend([
            "metadata",
            "annotations",
            "kubectl.kubernetes.io/default-container",
        ]);
        text(find(&docs, kind), &keys).map(str::to_string)
    };
    assert_eq!(annotation("Deployment").as_deref(), Some("api"));
    assert_eq!(annotation("StatefulSet").as_deref(), Some("store"), "kept");
    assert_eq!(annotation("CronJob").as_deref(), Some("report"));
}

#[test]
fn pod_templates_get_the_label_the_pod_monitor_selects_and_selectors_stay() {
    let input = fixture();
    let out = ok(&inject(&[], &input));
    let (before, after) = (documents(&input), documents(&out));
    for kind in ["Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob"] {
        let mut keys = template_path(kind).to_vec();
        keys.extend(["metadata", "labels", "aa-token-broker/sidecar"]);
        assert_eq!(text(find(&after, kind), &keys), Some("true"), "{kind}");
    }
    let selector = |docs: &[Node<'_>]| {
        emitted(yaml::path(find(docs, "Deployment"), &["spec", "selector"]).expect("a selector"))
    };
    assert_eq!(selector(&before), selector(&after));
}

#[test]
fn the_mode_follows_the_kubernetes_version() {
    let form = |extra: &[&str]| {
        let out = ok(&inject(extra, &fixture()));
        let docs = documents(&out);
        let spec = pod_spec(find(&docs, "DaemonSet"));
        if names(list(spec, "initContainers"))
            .first()
            .map(String::as_str)
            == Some("aa-token-broker")
        {
            "native"
        } else if names(list(spec, "containers")).first().map(String::as_str)
            == Some("aa-token-broker")
        {
            "regular"
        } else {
            "none"
        }
    };
    assert_eq!(form(&["--kube-version", "1.28.0"]), "regular");
    assert_eq!(form(&["--kube-version", "v1.29.0"]), "native");
    assert_eq!(form(&["--kube-version", "1.31.2"]), "native");
    assert_eq!(form(&[]), "native", "auto without a version");
    assert_eq!(
        form(&["--mode", "regular", "--kube-version", "1.31"]),
        "regular"
    );

    let out = ok(&inject(&["--mode", "regular"], &fixture()));
    let docs = documents(&out);
    let sidecar = &list(pod_spec(find(&docs, "Deployment")), "containers")[0];
    assert_eq!(
        yaml::path(sidecar, &["lifecycle", "postStart", "exec", "command"])
            .map(emitted)
            .as_deref(),
        Some("---\n- aa-token-broker\n- healthcheck\n- \"--wait\"\n- \"60\"\n")
    );
    assert!(yaml::get(sidecar, "restartPolicy").is_none());
    assert!(yaml::get(sidecar, "startupProbe").is_none());
}

#[test]
fn the_secret_is_mounted_whole_and_read_only_and_probes_use_the_admin_port_when_given() {
    let out = ok(&inject(
        &["--admin-port", "9373", "--secret-key", "entity-secret"],
        &fixture(),
    ));
    let docs = documents(&out);
    let spec = pod_spec(find(&docs, "Deployment"));
    let sidecar = &list(spec, "initContainers")[0];
    let mount = &list(sidecar, "volumeMounts")[0];
    assert_eq!(text(mount, &["readOnly"]), Some("true"));
    assert!(yaml::get(mount, "subPath").is_none());
    assert_eq!(
        env_values(sidecar, "AA_BROKER_SECRET_FILE"),
        [format!(
            "{}/entity-secret",
            text(mount, &["mountPath"]).expect("a mount path")
        )]
    );
    assert_eq!(
        env_values(sidecar, "AA_BROKER_ADMIN_LISTEN"),
        ["0.0.0.0:9373"]
    );
    assert_eq!(
        text(&list(sidecar, "ports")[0], &["name"]),
        Some("broker-metrics")
    );
    for (probe, path) in [
        ("startupProbe", "/readyz"),
        ("readinessProbe", "/readyz"),
        ("livenessProbe", "/healthz"),
    ] {
        assert_eq!(
            text(sidecar, &[probe, "httpGet", "path"]),
            Some(path),
            "{probe}"
        );
        assert_eq!(
            text(sidecar, &[probe, "httpGet", "port"]),
            Some("broker-metrics"),
            "{probe}"
        );
    }
    let security = yaml::get(sidecar, "securityContext").expect("a security context");
    assert_eq!(text(security, &["readOnlyRootFilesystem"]), Some("true"));
    assert_eq!(text(security, &["allowPrivilegeEscalation"]), Some("false"));
    assert_eq!(
        text(security, &["seccompProfile", "type"]),
        Some("RuntimeDefault")
    );
    assert_eq!(
        emitted(yaml::path(security, &["capabilities", "drop"]).expect("drop")),
        "---\n- ALL\n"
    );
}

#[test]
fn list_items_are_injected() {
    let input = "apiVersion: v1\nkind: List\nitems:\n  - apiVersion: apps/v1\n    kind: ReplicaSet\n    \
                 metadata: {name: rs}\n    spec:\n      selector: {matchLabels: {a: b}}\n      template:\n        \
                 metadata: {labels: {a: b}}\n        spec:\n          containers: [{name: app, image: app}]\n  \
                 - apiVersion: v1\n    kind: ConfigMap\n    metadata: {name: cm}\n";
    let out = ok(&inject(&[], input));
    let docs = documents(&out);
    let items = list(&docs[0], "items");
    assert_eq!(
        names(list(pod_spec(&items[0]), "initContainers")),
        ["aa-token-broker"]
    );
    assert_eq!(kind_and_name(&items[1]), "ConfigMap/cm");
}

#[test]
fn a_kustomize_resource_list_is_written_back_as_one_with_its_items_injected() {
    let input = "apiVersion: config.kubernetes.io/v1\nkind: ResourceList\nitems:\n  - apiVersion: batch/v1\n    \
                 kind: Job\n    metadata: {name: j}\n    spec:\n      template:\n        spec:\n          \
                 restartPolicy: Never\n          containers: [{name: app, image: app}]\nfunctionConfig:\n  \
                 apiVersion: v1\n  kind: ConfigMap\n  metadata: {name: fn}\n";
    let out = ok(&inject(&[], input));
    let docs = documents(&out);
    assert_eq!(docs.len(), 1);
    assert_eq!(text(&docs[0], &["kind"]), Some("ResourceList"));
    let job = &list(&docs[0], "items")[0];
    assert_eq!(
        names(list(pod_spec(job), "initContainers")),
        ["aa-token-broker"]
    );
    assert_eq!(
        text(&docs[0], &["functionConfig", "metadata", "name"]),
        Some("fn")
    );
}

fn third_party() -> String {
    std::fs::read_to_string(THIRD_PARTY).expect("the fixture exists")
}

/// The names of the documents whose pod template got the sidecar.
fn injected(out: &str) -> Vec<String> {
    documents(out)
        .iter()
        .filter(|d| {
            let kind = text(d, &["kind"]).unwrap_or("?");
            let mut keys = template_path(kind).to_vec();
            keys.push("spec");
            yaml::path(d, &keys).is_some_and(|spec| {
                names(list(spec, "initContainers"))
                    .iter()
                    .chain(&names(list(spec, "containers")))
                    .any(|n| n == "aa-token-broker")
            })
        })
        .map(kind_and_name)
        .collect()
}

#[test]
fn regular_mode_leaves_run_to_completion_pods_alone_with_a_warning_each() {
    let input = format!("{}---\n{}", fixture(), third_party());
    let output = inject(&["--mode", "regular"], &input);
    let out = ok(&output);
    let chosen = injected(&out);
    for left in [
        "Job/fiu-backfill",
        "CronJob/fiu-consent-report",
        "Pod/fiu-app-test-connection",
    ] {
        assert!(!chosen.contains(&left.to_string()), "{left}: {chosen:?}");
        let (before, after) = (documents(&input), documents(&out));
        let same = |docs: &[Node<'_>]| {
            docs.iter()
                .find(|d| kind_and_name(d) == left)
                .map(emitted)
                .expect("present")
        };
        assert_eq!(
            same(&before),
            same(&after),
            "{left} is written back as it was"
        );
    }
    assert!(
        chosen.contains(&"Deployment/fiu-api".to_string()),
        "{chosen:?}"
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    let warnings: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("left without the sidecar"))
        .collect();
    assert_eq!(warnings.len(), 3, "one line each: {stderr}");
    assert!(
        warnings.iter().any(|l| l.contains("(Job fiu-backfill)")
            && l.contains("restartPolicy Never")
            && l.contains("--mode native")),
        "{stderr}"
    );
    assert!(
        warnings
            .iter()
            .any(|l| l.contains("(CronJob fiu-consent-report)") && l.contains("OnFailure")),
        "{stderr}"
    );
    assert!(
        warnings
            .iter()
            .any(|l| l.contains("(Pod fiu-app-test-connection)")),
        "{stderr}"
    );

    // Native sidecars end with the pod: every one of them is injected, without a warning about it.
    let native = inject(&["--mode", "native"], &input);
    let chosen = injected(&ok(&native));
    for kind_name in [
        "Job/fiu-backfill",
        "CronJob/fiu-consent-report",
        "Pod/fiu-app-test-connection",
    ] {
        assert!(chosen.contains(&kind_name.to_string()), "{kind_name}");
    }
    let stderr = String::from_utf8_lossy(&native.stderr);
    assert!(!stderr.contains("left without"), "{stderr}");
}

#[test]
fn regular_mode_gives_init_containers_no_broker_url_and_says_so() {
    let output = inject(&["--mode", "regular"], &fixture());
    let out = ok(&output);
    let docs = documents(&out);
    let spec = pod_spec(find(&docs, "Deployment"));
    let migrate = &list(spec, "initContainers")[0];
    assert_eq!(text(migrate, &["name"]), Some("migrate"));
    assert!(env_values(migrate, "AA_TOKEN_BROKER_URL").is_empty());
    assert_eq!(
        env_values(&list(spec, "containers")[1], "AA_TOKEN_BROKER_URL"),
        ["http://127.0.0.1:7373"]
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("(Deployment fiu-api): its init containers (migrate) run before"),
        "{stderr}"
    );
    // From native output too: the URL an earlier run gave the init container is taken back.
    let native = ok(&inject(&["--mode", "native"], &fixture()));
    let regular = ok(&inject(&["--mode", "regular"], &native));
    let docs = documents(&regular);
    let migrate = &list(pod_spec(find(&docs, "Deployment")), "initContainers")[0];
    assert!(env_values(migrate, "AA_TOKEN_BROKER_URL").is_empty());
    assert_eq!(
        emitted(find(&docs, "Deployment")),
        emitted(find(&documents(&out), "Deployment")),
        "the same as injecting the original"
    );
}

#[test]
fn the_opt_out_annotation_on_the_workload_is_honoured() {
    let input = third_party();
    let out = ok(&inject(&[], &input));
    let dex = |docs: &[Node<'_>]| {
        docs.iter()
            .find(|d| kind_and_name(d) == "Deployment/argocd-dex-server")
            .map(emitted)
            .expect("dex")
    };
    assert_eq!(dex(&documents(&input)), dex(&documents(&out)));
    assert!(!injected(&out).contains(&"Deployment/argocd-dex-server".to_string()));
}

#[test]
fn a_selector_and_excludes_choose_the_workloads() {
    let input = third_party();
    let chosen = |flags: &[&str]| injected(&ok(&inject(flags, &input)));
    assert_eq!(
        chosen(&[]),
        [
            "Deployment/argocd-server",
            "Deployment/argocd-redis",
            "StatefulSet/argocd-application-controller",
            "Pod/fiu-app-test-connection"
        ]
    );
    assert_eq!(
        chosen(&["-l", "aa.example/entity-token=yes"]),
        [
            "Deployment/argocd-server",
            "StatefulSet/argocd-application-controller"
        ]
    );
    assert_eq!(
        chosen(&[
            "--selector",
            "app.kubernetes.io/part-of==argocd,app.kubernetes.io/name!=argocd-redis"
        ]),
        [
            "Deployment/argocd-server",
            "StatefulSet/argocd-application-controller"
        ]
    );
    assert_eq!(
        chosen(&[
            "--exclude",
            "deployment/argocd-redis",
            "--exclude",
            "Pod/fiu-app-test-connection",
            "--exclude",
            "statefulsets/argocd-application-controller",
        ]),
        ["Deployment/argocd-server"]
    );
    // What is not chosen comes out as it went in, including secrets: none is mounted there.
    let out = ok(&inject(&["-l", "aa.example/entity-token=yes"], &input));
    let (before, after) = (documents(&input), documents(&out));
    let redis = |docs: &[Node<'_>]| {
        docs.iter()
            .find(|d| kind_and_name(d) == "Deployment/argocd-redis")
            .map(emitted)
            .expect("redis")
    };
    assert_eq!(redis(&before), redis(&after));
    // Labels on the workload object do not count, only the pod template's.
    assert!(chosen(&["-l", "app.kubernetes.io/part-of=argocd"]).len() == 3);
    assert!(chosen(&["-l", "app.kubernetes.io/name=fiu-app"]) == ["Pod/fiu-app-test-connection"]);
}

#[test]
fn openshift_leaves_user_group_and_fs_group_to_the_platform() {
    let out = ok(&inject(&["--openshift"], &third_party()));
    let docs = documents(&out);
    for document in &docs {
        if !injected(&emitted(document)).is_empty() {
            let spec = pod_spec(document);
            let sidecar = &list(spec, "initContainers")[0];
            let security = yaml::get(sidecar, "securityContext").expect("a security context");
            assert!(yaml::get(security, "runAsUser").is_none());
            assert!(yaml::get(security, "runAsGroup").is_none());
            assert_eq!(text(security, &["runAsNonRoot"]), Some("true"));
            assert!(yaml::path(spec, &["securityContext", "fsGroup"]).is_none());
        }
    }
    // Without it, the broker's ids are set.
    let out = ok(&inject(&[], &third_party()));
    let docs = documents(&out);
    let sidecar = &list(pod_spec(&docs[0]), "initContainers")[0];
    assert_eq!(
        text(sidecar, &["securityContext", "runAsUser"]),
        Some("65532")
    );
}

#[test]
fn the_secret_is_readable_by_the_pods_fs_group_only() {
    let input = format!("{}---\n{}", fixture(), third_party());
    let out = ok(&inject(&[], &input));
    let docs = documents(&out);
    // 0440 in decimal: no bit for others, so no other user in the container reads it.
    let mode = |spec: &Node<'_>| {
        list(spec, "volumes")
            .iter()
            .find(|v| text(v, &["name"]) == Some("aa-token-broker-secret"))
            .and_then(|v| yaml::path(v, &["secret", "defaultMode"]))
            .map(emitted)
    };
    for name in [
        "Deployment/fiu-api",
        "Deployment/argocd-redis",
        "DaemonSet/fiu-node-agent",
    ] {
        let document = docs.iter().find(|d| kind_and_name(d) == name).expect(name);
        let spec = pod_spec(document);
        assert_eq!(mode(spec).as_deref(), Some("---\n288\n"), "{name}");
    }
    let fs_group = |name: &str| {
        let document = docs.iter().find(|d| kind_and_name(d) == name).expect(name);
        text(pod_spec(document), &["securityContext", "fsGroup"]).map(str::to_string)
    };
    assert_eq!(
        fs_group("Deployment/fiu-api").as_deref(),
        Some("10001"),
        "kept"
    );
    assert_eq!(
        fs_group("Deployment/argocd-redis").as_deref(),
        Some("65532"),
        "added beside the pod's own runAsUser"
    );
    assert_eq!(
        fs_group("DaemonSet/fiu-node-agent").as_deref(),
        Some("65532")
    );
    let redis = pod_spec(
        docs.iter()
            .find(|d| kind_and_name(d) == "Deployment/argocd-redis")
            .expect("redis"),
    );
    assert_eq!(text(redis, &["securityContext", "runAsUser"]), Some("999"));
}

/// A failed run: exit 2, one line on stderr, nothing on stdout.
fn assert_refused(output: &Output) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    assert_eq!(output.status.code(), Some(2), "stderr: {stderr}");
    assert!(
        output.stdout.is_empty(),
        "stdout: {}",
        String::from_utf8_lossy(&output.stdout)
    );
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    stderr
}

#[test]
fn malformed_yaml_is_refused_with_one_line_naming_the_document_and_nothing_on_stdout() {
    let input = format!(
        "{}\n---\napiVersion: v1\nkind: ConfigMap\n  data: x\n",
        fixture()
    );
    let stderr = assert_refused(&inject(&[], &input));
    assert!(stderr.contains("stdin: document 9: line"), "{stderr}");

    let input = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec:\n  template:\n    spec:\n      containers: nope\n";
    let stderr = assert_refused(&inject(&[], input));
    assert!(stderr.contains("document 1 (Deployment web)"), "{stderr}");
    assert!(stderr.contains("spec.containers is not a list"), "{stderr}");

    let input = "apiVersion: batch/v1\nkind: Job\nmetadata: {name: j}\nspec: {}\n";
    let stderr = assert_refused(&inject(&[], input));
    assert!(
        stderr.contains("(Job j): spec.template is missing"),
        "{stderr}"
    );

    let stderr = assert_refused(&inject(&[], "a: 1\na: 2\n"));
    assert!(stderr.contains("duplicated key"), "{stderr}");

    let deep = format!("a: {}{}\n", "[".repeat(100_000), "]".repeat(100_000));
    let stderr = assert_refused(&inject(&[], &deep));
    assert!(stderr.contains("recursion limit"), "{stderr}");

    let stderr = assert_refused(&inject(&[], "a: !vault secret/path\n"));
    assert!(stderr.contains("tag !vault"), "{stderr}");
}

#[test]
fn a_missing_or_wrong_flag_is_refused_naming_it() {
    let fixture = fixture();
    let cases: &[(&[&str], &str)] = &[
        (
            &["--secret-name", "s", "--environment", "sandbox"],
            "--entity-id",
        ),
        (
            &["--entity-id", "FIU-X", "--environment", "sandbox"],
            "--secret-name",
        ),
        (&["--entity-id", "FIU-X", "--secret-name", "s"], "--iam-url"),
        (
            &[
                "--entity-id",
                "FIU-X",
                "--secret-name",
                "s",
                "--environment",
                "mars",
            ],
            "--environment",
        ),
        (
            &[
                "--entity-id",
                "FIU-X",
                "--secret-name",
                "Not_A_Name",
                "--environment",
                "uat",
            ],
            "--secret-name",
        ),
        (
            &[
                "--entity-id",
                "FIU-X",
                "--secret-name",
                "s",
                "--environment",
                "uat",
                "--mode",
                "native",
                "--kube-version",
                "1.28",
            ],
            "--mode",
        ),
        (
            &[
                "--entity-id",
                "FIU-X",
                "--secret-name",
                "s",
                "--environment",
                "uat",
                "--kube-version",
                "latest",
            ],
            "--kube-version",
        ),
        (
            &[
                "--entity-id",
                "FIU-X",
                "--secret-name",
                "s",
                "--environment",
                "uat",
                "--admin-port",
                "7373",
            ],
            "--admin-port",
        ),
        (
            &[
                "--entity-id",
                "FIU-X",
                "--secret-name",
                "s",
                "--environment",
                "uat",
                "-l",
                "app in (a,b)",
            ],
            "--selector",
        ),
        (
            &[
                "--entity-id",
                "FIU-X",
                "--secret-name",
                "s",
                "--environment",
                "uat",
                "--exclude",
                "service/redis",
            ],
            "--exclude",
        ),
    ];
    for (flags, named) in cases {
        let stderr = assert_refused(&inject_with(flags, &[], &fixture));
        assert!(stderr.contains(named), "{flags:?}: {stderr}");
    }
}

#[test]
fn files_are_read_in_order_and_a_missing_one_is_refused() {
    let output = inject(
        &[FIXTURE, "-"],
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: fiu}\n",
    );
    let out = ok(&output);
    let docs = documents(&out);
    assert_eq!(docs.len(), 9);
    assert_eq!(kind_and_name(&docs[8]), "Namespace/fiu");
    let stderr = assert_refused(&inject(&["no/such/file.yaml"], ""));
    assert!(
        stderr.contains("no/such/file.yaml: cannot read: no such file"),
        "{stderr}"
    );
    assert!(!stderr.contains("entity"), "{stderr}");
}

/// A 250 KB manifest: one 100 KB anchored string and 50 000 aliases to it, 5 GB once written out.
fn alias_bomb() -> String {
    let aliases = vec!["*a"; 50_000].join(",");
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: bomb\ndata:\n  big: &a \"{}\"\n  list: [{aliases}]\n",
        "x".repeat(100_000)
    )
}

#[test]
fn an_alias_bomb_is_refused_before_it_is_expanded() {
    let bomb = alias_bomb();
    assert!((249_000..251_000).contains(&bomb.len()));
    let started = std::time::Instant::now();
    let stderr = assert_refused(&inject(&[], &bomb));
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    assert!(stderr.contains("stdin: document 1: line 7"), "{stderr}");
    assert!(stderr.contains("alias bomb"), "{stderr}");

    // Nested anchors, each nine aliases of the one before: 9^9 "lol"s from 400 bytes.
    let mut laughs = String::from("a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
    let names = ["a", "b", "c", "d", "e", "f", "g", "h", "i"];
    for pair in names.windows(2) {
        let aliases = vec![format!("*{}", pair[0]); 9].join(", ");
        laughs.push_str(&format!("{}: &{} [{aliases}]\n", pair[1], pair[1]));
    }
    let stderr = assert_refused(&inject(&[], &laughs));
    assert!(stderr.contains("alias bomb"), "{stderr}");
}

#[test]
fn an_input_past_10_mib_is_refused_from_stdin_and_from_a_file() {
    const MAX: usize = 10 * 1024 * 1024;
    let mut input = String::from("apiVersion: v1\nkind: Namespace\nmetadata: {name: big}\n");
    let line = format!("# {}\n", "x".repeat(1021));
    while input.len() + line.len() <= MAX {
        input.push_str(&line);
    }
    input.push('#');
    input.extend(std::iter::repeat_n('x', MAX - input.len()));
    assert_eq!(input.len(), MAX);
    let out = ok(&inject(&[], &input));
    assert_eq!(kind_and_name(&documents(&out)[0]), "Namespace/big");

    input.push('x');
    let stderr = assert_refused(&inject(&[], &input));
    assert!(stderr.contains("stdin: larger than 10 MiB"), "{stderr}");
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("big.yaml");
    std::fs::write(&path, &input).expect("the file is written");
    let path = path.to_str().expect("a UTF-8 path");
    let stderr = assert_refused(&inject(&[path], ""));
    assert!(
        stderr.contains(&format!("{path}: larger than 10 MiB")),
        "{stderr}"
    );
}

#[test]
fn tags_on_sequences_and_mappings_are_refused_like_tags_on_scalars() {
    let head = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: tagged}\n";
    for (body, named) in [
        ("data: !!set {a, b}\n", "the YAML tag !!set on a mapping"),
        (
            "data: !!omap\n  - a: b\n",
            "the YAML tag !!omap on a sequence",
        ),
        ("data: !!map [a]\n", "the YAML tag !!map on a sequence"),
        ("data: !!seq {a: b}\n", "the YAML tag !!seq on a mapping"),
        (
            "data: !custom {a: b}\n",
            "the YAML tag !custom on a mapping",
        ),
        ("binaryData: !!binary aGk=\n", "the YAML tag !!binary"),
    ] {
        let stderr = assert_refused(&inject(&[], &format!("{head}{body}")));
        assert!(stderr.contains("stdin: document 1"), "{body}: {stderr}");
        assert!(stderr.contains(named), "{body}: {stderr}");
    }
    // A collection's own type spelled out changes nothing, as `!!str` on a string does not.
    let out = ok(&inject(
        &[],
        &format!("{head}data: !!map {{a: !!str 1, b: c}}\nitems: !!seq [x]\n"),
    ));
    assert!(out.contains("a: \"1\""), "{out}");
    assert!(!out.contains("!!"), "{out}");
}

#[test]
fn a_manifest_with_a_few_anchors_and_aliases_is_injected_with_them_written_out() {
    let input = "\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  labels: &labels
    app.kubernetes.io/name: web
spec:
  selector:
    matchLabels: *labels
  template:
    metadata:
      labels: *labels
    spec:
      containers:
        - name: api
          image: registry.example/api:1
          env: &env
            - name: REGION
              value: ap-south-1
            - name: MODE
              value: live
        - name: worker
          image: registry.example/worker:1
          env: *env
";
    let out = ok(&inject(&[], input));
    assert!(!out.contains('&') && !out.contains('*'), "{out}");
    let docs = documents(&out);
    let deployment = &docs[0];
    // Each alias became its own copy: the sidecar's label went into the template's labels only.
    assert_eq!(
        text(
            deployment,
            &[
                "spec",
                "template",
                "metadata",
                "labels",
                "aa-token-broker/sidecar"
            ]
        ),
        Some("true")
    );
    assert_eq!(
        yaml::path(deployment, &["spec", "selector", "matchLabels"]).map(|labels| yaml::get(
            labels,
            "aa-token-broker/sidecar"
        )
        .is_none()),
        Some(true)
    );
    assert_eq!(
        text(
            deployment,
            &["metadata", "labels", "app.kubernetes.io/name"]
        ),
        Some("web")
    );
    let spec = pod_spec(deployment);
    assert_eq!(names(list(spec, "initContainers")), ["aa-token-broker"]);
    let containers = list(spec, "containers");
    assert_eq!(names(containers), ["api", "worker"]);
    for container in containers {
        assert_eq!(env_values(container, "REGION"), ["ap-south-1"]);
        assert_eq!(env_values(container, "MODE"), ["live"]);
        assert_eq!(
            env_values(container, "AA_TOKEN_BROKER_URL"),
            ["http://127.0.0.1:7373"]
        );
    }
}

#[test]
fn deep_nesting_is_refused_instead_of_overflowing_the_stack() {
    let stderr = assert_refused(&inject(&[], &format!("{}x\n", "- ".repeat(100_000))));
    assert!(
        stderr.contains("nested more than 128 levels deep"),
        "{stderr}"
    );
    let stderr = assert_refused(&inject(&[], &format!("{}x\n", "- ".repeat(129))));
    assert!(
        stderr.contains("nested more than 128 levels deep"),
        "{stderr}"
    );
    let out = ok(&inject(&[], &format!("{}x\n", "- ".repeat(128))));
    assert_eq!(out, format!("---\n{}x\n", "- ".repeat(128)));
}

#[test]
fn the_output_is_bounded_even_when_the_input_is_not_large() {
    // A string of 270 000 short lines, 127 mappings deep: 800 KB in; written out as a literal block,
    // each line indented 256 spaces.
    let mut input: String = (0..126)
        .map(|level| format!("{}k:\n", "  ".repeat(level)))
        .collect();
    input.push_str(&format!(
        "{}k: \"{}\"\n",
        "  ".repeat(126),
        "a\\n".repeat(270_000)
    ));
    let stderr = assert_refused(&inject(&[], &input));
    assert!(
        stderr.contains("stdin: document 1: the output would be larger than 64 MiB"),
        "{stderr}"
    );
}

#[cfg(target_os = "linux")]
#[test]
fn input_that_needs_too_much_memory_to_read_is_stopped() {
    // A flow sequence that could be a mapping key: the scanner reads all of it before its first event,
    // a few hundred bytes per item; 4 million items would take over a gigabyte.
    let input = format!("- [{}]\n", vec!["a"; 4_000_000].join(","));
    let stderr = assert_refused(&inject(&[], &input));
    assert!(
        stderr.contains("stdin: reading it needs more than 200 MiB of memory"),
        "{stderr}"
    );
}

#[test]
fn a_list_that_the_sidecar_would_grow_past_the_node_limit_is_refused() {
    // 5 000 small pods in one List: 100 000 nodes in, over 700 000 with a sidecar in each.
    let pod = "  - {apiVersion: v1, kind: Pod, metadata: {name: p}, spec: {containers: [{name: a, image: b}]}}\n";
    let input = format!("apiVersion: v1\nkind: List\nitems:\n{}", pod.repeat(5_000));
    let stderr = assert_refused(&inject(&[], &input));
    assert!(
        stderr.contains("document 1 (List): more than 400000 YAML nodes once the sidecar is added"),
        "{stderr}"
    );
    // As separate documents they are fine: each is held to the limit on its own.
    let documents = pod.replace("  - ", "---\n").repeat(5_000);
    let out = ok(&inject(&[], &documents));
    assert_eq!(out.matches("name: aa-token-broker\n").count(), 5_000);
}

#[test]
fn the_fi_kek_is_mounted_into_the_sidecar_only() {
    let out = ok(&inject(&["--fi-kek-secret", "fiu-fi-kek"], &fixture()));
    let docs = documents(&out);
    let spec = pod_spec(find(&docs, "Deployment"));
    let sidecar = &list(spec, "initContainers")[0];
    assert_eq!(
        env_values(sidecar, "AA_BROKER_FI_KEK_FILE"),
        ["/var/run/secrets/aa-token-broker-fi/kek"]
    );
    assert!(names(list(sidecar, "volumeMounts")).contains(&"aa-token-broker-fi-kek".to_string()));
    for app in list(spec, "containers") {
        assert!(env_values(app, "AA_BROKER_FI_KEK_FILE").is_empty());
        if yaml::get(app, "volumeMounts").is_some() {
            assert!(
                !names(list(app, "volumeMounts")).contains(&"aa-token-broker-fi-kek".to_string())
            );
        }
    }
    let volumes = list(spec, "volumes");
    let kek = volumes
        .iter()
        .find(|v| text(v, &["name"]) == Some("aa-token-broker-fi-kek"))
        .expect("the KEK volume");
    assert_eq!(text(kek, &["secret", "secretName"]), Some("fiu-fi-kek"));
    // Without the flag nothing of it appears.
    assert!(!ok(&inject(&[], &fixture())).contains("fi-kek"));
    let bad = inject(&["--fi-kek-secret", "Not_A_Name"], &fixture());
    assert_eq!(bad.status.code(), Some(2));
}

#[test]
fn the_help_names_the_flags_and_the_admin_port_as_it_is_named() {
    let output = Command::new(env!("CARGO_BIN_EXE_aa-token-broker"))
        .args(["inject", "--help"])
        .output()
        .expect("the binary runs");
    let help = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{help}");
    assert!(help.contains("port name `broker-metrics`"), "{help}");
    for flag in ["--selector", "-l", "--exclude", "--openshift"] {
        assert!(help.contains(flag), "{flag}: {help}");
    }
}
