"""Unit tests of the Helm chart, over manifests rendered by helm/ci/run.sh (RENDERED=dir), plus a few that
run helm (schema refusals) or the broker's own `inject` (BROKER=path) themselves."""

import json
import os
import re
import socket
import subprocess
import tempfile
import time
import tomllib
import zlib

import pytest
import yaml

RENDERED = os.environ.get("RENDERED", "")
BROKER = os.environ.get("BROKER", "target/debug/aa-token-broker")
ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
CHART = os.path.join(ROOT, "helm", "aa-token-broker")


def load(values, version):
    path = os.path.join(RENDERED, f"{values}-{version}.yaml")
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def one(docs, kind, name_part=""):
    found = [d for d in docs if d["kind"] == kind and name_part in d["metadata"]["name"]]
    assert len(found) == 1, f"expected one {kind} named *{name_part}*, found {[d['metadata']['name'] for d in found]}"
    return found[0]


def pod_spec(docs):
    return one(docs, "Deployment")["spec"]["template"]["spec"]


def sidecar(spec):
    containers = spec.get("initContainers", []) + spec["containers"]
    return next(c for c in containers if c["name"] == "aa-token-broker")


def env(container):
    return {e["name"]: e.get("value") for e in container["env"]}


@pytest.mark.parametrize("values", ["minimal", "full"])
@pytest.mark.parametrize("version", ["1.29.0", "1.31.0"])
def test_native_sidecar_from_1_29(values, version):
    spec = pod_spec(load(values, version))
    init = spec["initContainers"]
    assert init[0]["name"] == "aa-token-broker"
    assert init[0]["restartPolicy"] == "Always"
    assert init[0]["startupProbe"]["httpGet"] == {"path": "/readyz", "port": "broker-metrics"}
    assert all(c["name"] != "aa-token-broker" for c in spec["containers"])


@pytest.mark.parametrize("values", ["minimal", "full"])
def test_regular_sidecar_before_1_29_holds_the_app_until_ready(values):
    spec = pod_spec(load(values, "1.28.0"))
    assert "initContainers" not in spec
    first = spec["containers"][0]
    assert first["name"] == "aa-token-broker", "the sidecar must be first so postStart can hold the app"
    assert "restartPolicy" not in first
    assert first["lifecycle"]["postStart"]["exec"]["command"][:3] == ["aa-token-broker", "healthcheck", "--wait"]
    assert [c["name"] for c in spec["containers"]] == ["aa-token-broker", "app"]


@pytest.mark.parametrize("version", ["1.28.0", "1.29.0"])
def test_restrictive_security_context(version):
    container = sidecar(pod_spec(load("full", version)))
    sc = container["securityContext"]
    assert sc["runAsNonRoot"] is True
    assert sc["runAsUser"] != 0
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert "add" not in sc["capabilities"]
    assert sc["seccompProfile"]["type"] == "RuntimeDefault"
    assert container["resources"]["requests"]["memory"]
    assert container["resources"]["limits"]["memory"]


def test_probes_use_the_admin_port_when_it_is_on():
    container = sidecar(pod_spec(load("full", "1.29.0")))
    assert container["ports"] == [{"name": "broker-metrics", "containerPort": 9373, "protocol": "TCP"}]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "broker-metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "broker-metrics"}
    assert container["startupProbe"]["httpGet"] == {"path": "/readyz", "port": "broker-metrics"}


@pytest.mark.parametrize("version", ["1.28.0", "1.29.0"])
def test_probes_use_the_binarys_own_healthcheck_without_the_admin_port(version):
    container = sidecar(pod_spec(load("openshift", version)))
    assert "ports" not in container
    assert container["livenessProbe"]["exec"]["command"] == ["aa-token-broker", "healthcheck", "--live"]
    assert container["readinessProbe"]["exec"]["command"] == ["aa-token-broker", "healthcheck"]


@pytest.mark.parametrize("version", ["1.28.0", "1.29.0"])
def test_await_off_drops_the_start_up_gate(version):
    container = sidecar(pod_spec(load("openshift", version)))
    assert "startupProbe" not in container
    assert "lifecycle" not in container


def test_openshift_values_leave_user_and_group_unset():
    spec = pod_spec(load("openshift", "1.29.0"))
    assert "runAsUser" not in spec["securityContext"] and "fsGroup" not in spec["securityContext"]
    sc = sidecar(spec)["securityContext"]
    assert "runAsUser" not in sc and "runAsGroup" not in sc
    assert sc["runAsNonRoot"] is True


def test_the_secret_is_mounted_whole_and_read_only():
    spec = pod_spec(load("full", "1.29.0"))
    container = sidecar(spec)
    volume = next(v for v in spec["volumes"] if v["name"] == "aa-token-broker-secret")
    assert volume["secret"]["secretName"] == "fiu-example-entity-secret"
    mount = next(m for m in container["volumeMounts"] if m["name"] == "aa-token-broker-secret")
    assert mount["readOnly"] is True
    assert "subPath" not in mount, "a subPath mount would never see a rotated secret"
    assert env(container)["AA_BROKER_SECRET_FILE"] == mount["mountPath"] + "/entity-secret"
    app = next(c for c in spec["containers"] if c["name"] == "app")
    assert not any(m["name"] == "aa-token-broker-secret" for m in app.get("volumeMounts", [])), "only the sidecar sees the secret"


def test_tokens_stay_on_loopback_and_only_metrics_are_exposed():
    docs = load("full", "1.29.0")
    container = sidecar(pod_spec(docs))
    assert env(container)["AA_BROKER_LISTEN"].startswith("127.0.0.1:")
    assert env(container)["AA_BROKER_ADMIN_LISTEN"] == "0.0.0.0:9373"
    service = one(docs, "Service")
    assert [p["port"] for p in service["spec"]["ports"]] == [9373]


def test_rotation_rbac_is_limited_to_the_one_secret():
    docs = load("full", "1.29.0")
    role = one(docs, "Role")
    assert role["rules"] == [{
        "apiGroups": [""],
        "resources": ["secrets"],
        "resourceNames": ["fiu-example-entity-secret"],
        "verbs": ["get", "patch"],
    }]
    binding = one(docs, "RoleBinding")
    account = one(docs, "ServiceAccount")
    assert binding["subjects"][0]["name"] == account["metadata"]["name"]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]


def test_rotation_cronjob_runs_one_rotator_with_the_kubernetes_sink():
    docs = load("full", "1.29.0")
    cron = one(docs, "CronJob")
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    assert cron["spec"]["jobTemplate"]["spec"]["activeDeadlineSeconds"] == 600
    assert cron["spec"]["jobTemplate"]["spec"]["ttlSecondsAfterFinished"] == 259200
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == one(docs, "ServiceAccount")["metadata"]["name"]
    container = pod["containers"][0]
    assert container["args"] == ["rotate", "--secret-sink", "kubernetes-secret:fiu/fiu-example-entity-secret/entity-secret"]
    assert env(container)["AA_BROKER_ADMIN_PASSWORD_FILE"].startswith("/var/run/secrets/aa-token-broker-admin/")
    assert container["securityContext"]["readOnlyRootFilesystem"] is True


def derived_schedule(namespace, fullname, standby=False):
    """What the chart's rotationSchedule helper computes: adler32 of NAMESPACE/FULLNAME picks minute and hour."""
    h = zlib.adler32(f"{namespace}/{fullname}".encode())
    minute, hour = h % 60, (h // 60) % 24
    if standby:
        first = hour % 6
        return f"{(minute + 30) % 60} {first},{first + 6},{first + 12},{first + 18} * * *"
    return f"{minute} {hour} * * *"


def cron_of(docs):
    return one(docs, "CronJob")["spec"]["schedule"]


def test_the_default_schedule_is_derived_from_the_release_not_one_fixed_time():
    assert cron_of(load("full", "1.29.0")) == derived_schedule("fiu", "aa-aa-token-broker")
    rendered = {}
    for namespace, release in [("fiu", "aa"), ("fiu", "payments"), ("fiu-dr", "aa"), ("lending", "broker")]:
        result = subprocess.run(["helm", "template", release, CHART, "--namespace", namespace, "-f",
                                 os.path.join(ROOT, "helm/ci/full-values.yaml")], capture_output=True, text=True, check=True)
        docs = [d for d in yaml.safe_load_all(result.stdout) if d]
        fullname = one(docs, "CronJob")["metadata"]["name"].removesuffix("-rotator")
        rendered[(namespace, release)] = cron_of(docs)
        assert cron_of(docs) == derived_schedule(namespace, fullname)
    assert len(set(rendered.values())) == len(rendered), rendered
    assert "17 3 * * *" not in rendered.values()
    result = helm_template("--set", "rotation.enabled=true", "--set", "rotation.adminEmail=a@b",
                           "--set", "rotation.adminPasswordSecret=p", "--set", "rotation.schedule=5 4 * * *")
    assert cron_of([d for d in yaml.safe_load_all(result.stdout) if d]) == "5 4 * * *"


def test_a_standby_site_converges_four_times_a_day_and_names_itself():
    docs = load("standby", "1.29.0")
    cron = one(docs, "CronJob")
    assert cron_of(docs) == derived_schedule("fiu", "aa-aa-token-broker", standby=True)
    primary_minute = int(derived_schedule("fiu", "aa-aa-token-broker").split()[0])
    assert int(cron_of(docs).split()[0]) == (primary_minute + 30) % 60, "never at the primary's minute"
    container = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    assert env(container)["AA_BROKER_ROTATION_STANDBY"] == "true"
    assert env(container)["AA_BROKER_STANDBY_RESET_DAYS"] == "2"
    assert env(container)["AA_BROKER_SITE"] == "chennai-dr"
    full = one(load("full", "1.29.0"), "CronJob")["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    assert "AA_BROKER_ROTATION_STANDBY" not in env(full), "without rotation.standby a rotator is a primary"


@pytest.mark.parametrize("values", ["full", "standby"])
def test_the_rotation_job_keeps_no_state_of_its_own(values):
    pod = one(load(values, "1.29.0"), "CronJob")["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert [v["name"] for v in pod["volumes"]] == ["admin-password"], "the reset record lives on the Secret"
    assert "AA_BROKER_STATE_DIR" not in env(pod["containers"][0])


def test_sidecars_never_get_write_access():
    spec = pod_spec(load("full", "1.29.0"))
    assert spec["automountServiceAccountToken"] is False
    assert "serviceAccountName" not in spec
    assert all("AA_BROKER_ADMIN_EMAIL" not in env(c) for c in spec.get("initContainers", []) + spec["containers"] if "env" in c)


def test_monitoring_objects():
    docs = load("full", "1.29.0")
    monitor = one(docs, "ServiceMonitor")
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    rules = [r for g in one(docs, "PrometheusRule")["spec"]["groups"] for r in g["rules"]]
    alerts = {r["alert"]: r for r in rules}
    assert {"AaTokenBrokerSecretExpiringSoon", "AaTokenBrokerSecretInGracePeriod", "AaTokenBrokerRefreshFailing",
            "AaTokenBrokerNoValidToken", "AaTokenBrokerAbsent", "AaTokenBrokerStaleTokenExpiring",
            "AaTokenBrokerRotationJobFailed", "AaTokenBrokerSecretNotStored",
            "AaTokenBrokerSecretStoreDiverged",
            "AaTokenBrokerSigningKeyUnavailable", "AaTokenBrokerKeySetUnavailable", "AaTokenBrokerKeySetStale",
            "AaTokenBrokerSignatureChecksUnavailable", "AaTokenBrokerAuthorizeUnavailable",
            "AaTokenBrokerAuthorizeRefusingMost", "AaTokenBrokerCentralRegistryFailing",
            "AaTokenBrokerCrLookupBudgetSpent"} <= set(alerts)
    diverged = alerts["AaTokenBrokerSecretStoreDiverged"]["expr"]
    assert "aa_broker_secret_store_diverged_seconds - aa_broker_secret_check_interval_seconds" in diverged
    assert "< 604800" in alerts["AaTokenBrokerSecretExpiringSoon"]["expr"]
    assert alerts["AaTokenBrokerAbsent"]["expr"].startswith("absent(")
    stale = alerts["AaTokenBrokerStaleTokenExpiring"]
    assert stale["labels"]["severity"] == "critical" and "< 14400" in stale["expr"]
    rotation = alerts["AaTokenBrokerRotationJobFailed"]["expr"]
    assert "kube_job_status_failed" in rotation and 'owner_name="aa-aa-token-broker-rotator"' in rotation
    for name, rule in alerts.items():
        for by in re.findall(r"by \(([^)]*)\)", rule["expr"]):
            if "entity" in by:
                assert {"cluster", "namespace"} <= {label.strip() for label in by.split(",")}, name


def test_every_alert_links_to_its_runbook_section():
    with open(os.path.join(ROOT, "docs", "runbook.md")) as f:
        anchors = {re.sub(r"[^a-z0-9 -]", "", line[3:].strip().lower()).replace(" ", "-")
                   for line in f if line.startswith("## ")}
    rules = [r for g in one(load("full", "1.29.0"), "PrometheusRule")["spec"]["groups"] for r in g["rules"]]
    assert len(rules) >= 16
    for rule in rules:
        url = rule["annotations"]["runbook_url"]
        assert url.split("#")[0].endswith("/docs/runbook.md"), url
        assert url.split("#")[1] in anchors, f"{rule['alert']}: no section {url.split('#')[1]} in docs/runbook.md"


def test_the_pod_monitor_finds_every_pod_with_the_sidecar_in_the_chosen_namespaces():
    docs = load("full", "1.29.0")
    monitor = one(docs, "PodMonitor")
    assert monitor["spec"]["namespaceSelector"] == {"any": True}
    assert monitor["spec"]["podMetricsEndpoints"][0]["port"] == "broker-metrics"
    labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
    # Without the example Deployment too.
    monitor = one(load("entities", "1.29.0"), "PodMonitor")
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["fiu-one", "fiu-two"]}


def test_the_dashboard_is_an_opt_in_config_map_for_grafanas_sidecar():
    board = one(load("full", "1.29.0"), "ConfigMap", "dashboard")
    assert board["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(board["data"]["aa-token-broker.json"])
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p["targets"])
    for metric in ["aa_broker_token_valid", "aa_broker_token_expires_in_seconds", "aa_broker_refresh_consecutive_failures",
                   "aa_broker_secret_expires_in_seconds", "aa_broker_token_requests_total",
                   "aa_broker_sign_requests_total", "aa_broker_signing_key_valid", "aa_broker_jwks_fetches_total",
                   "aa_broker_signature_checks_total", "aa_broker_authorize_total", "aa_broker_cr_requests_total",
                   "aa_broker_verifications_total"]:
        assert metric in exprs, metric
    assert not [d for d in load("minimal", "1.29.0") if d["kind"] == "ConfigMap"]


def test_minimal_values_render_no_optional_objects():
    kinds = sorted(d["kind"] for d in load("minimal", "1.29.0"))
    assert kinds == ["Deployment", "Pod"], kinds


def test_helm_test_hook_checks_a_token_without_printing_it():
    docs = load("minimal", "1.29.0")
    pod = one(docs, "Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert pod["spec"]["containers"][0]["args"] == ["token", "--check"]


def test_several_entities_go_into_the_toml_file_and_each_secret_is_mounted():
    docs = load("entities", "1.29.0")
    config = tomllib.loads(one(docs, "ConfigMap", "config")["data"]["config.toml"])
    assert [e["id"] for e in config["entities"]] == ["FIU-ONE", "FIU-TWO"]
    assert set(config) == {"entities"}
    pod = one(docs, "Pod")["spec"]
    mounts = {m["mountPath"]: m["name"] for m in pod["containers"][0]["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    for entity, secret in zip(config["entities"], ["fiu-one-entity-secret", "fiu-two-entity-secret"]):
        directory, key = entity["secret_file"].rsplit("/", 1)
        volume = volumes[mounts[directory]]
        assert volume["secret"]["secretName"] == secret
        assert volume["secret"]["items"] == [{"key": key, "path": key}]
    assert volumes[mounts["/etc/aa-token-broker"]]["configMap"]["name"] == one(docs, "ConfigMap", "config")["metadata"]["name"]
    assert env(pod["containers"][0])["AA_BROKER_CONFIG"] == "/etc/aa-token-broker/config.toml"


def helm_template(*args):
    return subprocess.run(["helm", "template", "aa", CHART, "-f", os.path.join(ROOT, "helm/ci/minimal-values.yaml"), *args],
                          capture_output=True, text=True)


@pytest.mark.parametrize("args, reason", [
    (["--set", "rotaton.enabled=true"], "additional properties 'rotaton'"),
    (["--set", "sidecar.adminport=1"], "additional properties 'adminport'"),
    (["--set", "monitoring.podMonitor.namespaceSelecter.any=true"], "namespaceSelecter"),
    (["--set", "secret.create=true", "--set", "secret.value=x", "--set", "rotation.enabled=true",
      "--set", "rotation.adminEmail=a@b", "--set", "rotation.adminPasswordSecret=p"], "not"),
    (["--set", "entities[0].id=FIU-ONE", "--set", "entities[0].existingSecret=one"], "entityId"),
    (["--set", "rotation.standby=true"], "enabled"),
    (["--set", "rotation.enabled=true", "--set", "rotation.adminEmail=a@b", "--set", "rotation.adminPasswordSecret=p",
      "--set", "rotation.site=two words"], "site"),
])
def test_the_schema_refuses_unknown_keys_and_conflicting_settings(args, reason):
    result = helm_template(*args)
    assert result.returncode != 0, result.stdout[:300]
    assert reason in result.stderr, result.stderr


def test_the_schema_accepts_what_it_should():
    assert helm_template("--set", "sidecar.securityContext.runAsUser=null").returncode == 0


@pytest.mark.parametrize("version", ["1.28.0", "1.29.0", "1.31.0"])
def test_a_parent_chart_gets_the_sidecar_from_its_own_values_only(version):
    docs = load("fiu-app", version)
    spec = pod_spec(docs)
    container = sidecar(spec)
    # The parent's own .Values.image and .Values.sidecar (mode regular, port 9999) must not leak in.
    assert container["image"] == "ghcr.io/aa-token-broker/aa-token-broker:0.1.0"
    assert env(container)["AA_BROKER_LISTEN"] == "127.0.0.1:7373"
    native = version != "1.28.0"
    assert ("restartPolicy" in container) == native
    assert (spec.get("initContainers", [{}])[0].get("name") == "aa-token-broker") == native
    if not native:
        assert spec["containers"][0]["name"] == "aa-token-broker"
    app = next(c for c in spec["containers"] if c["name"] == "app")
    assert env(app)["AA_TOKEN_BROKER_URL"] == "http://127.0.0.1:7373"
    volume = next(v for v in spec["volumes"] if v["name"] == "aa-token-broker-secret")
    assert volume["secret"]["secretName"] == "fiu-entity-secret"
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == ["Deployment", "Pod", "PodMonitor", "PrometheusRule"], kinds


def run_inject(*flags):
    manifest = ("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: app}\nspec:\n  selector: {matchLabels: {a: b}}\n"
                "  template:\n    metadata: {labels: {a: b}}\n    spec:\n      containers: [{name: app, image: app}]\n")
    result = subprocess.run([BROKER, "inject", "--entity-id", "FIU-EXAMPLE", "--secret-name", "fiu-example-entity-secret",
                             "--environment", "sandbox", *flags], input=manifest, capture_output=True, text=True, check=True)
    return yaml.safe_load(result.stdout)["spec"]["template"]["spec"]


@pytest.mark.parametrize("version, mode", [("1.28.0", "regular"), ("1.29.0", "native")])
def test_inject_and_the_chart_render_the_same_sidecar(version, mode):
    chart = pod_spec(load("minimal", version))
    injected = run_inject("--mode", mode, "--admin-port", "9373")
    assert sidecar(injected) == sidecar(chart)
    volume = lambda spec: next(v for v in spec["volumes"] if v["name"] == "aa-token-broker-secret")
    assert volume(injected) == volume(chart)


def test_versions_agree():
    with open(os.path.join(CHART, "Chart.yaml")) as f:
        chart = yaml.safe_load(f)
    with open(os.path.join(CHART, "values.yaml")) as f:
        values = yaml.safe_load(f)
    with open(os.path.join(ROOT, "Cargo.toml"), "rb") as f:
        cargo = tomllib.load(f)
    assert chart["appVersion"] == values["image"]["tag"] == cargo["package"]["version"]


def test_the_fi_kek_is_mounted_into_the_sidecar_only():
    rendered = helm_template("--set", "fi.kekSecret.create=true",
                             "--set", "fi.kekSecret.value=c2l4dHktZm91ci1ieXRlcy1vZi1rZXk=")
    assert rendered.returncode == 0, rendered.stderr
    docs = [d for d in yaml.safe_load_all(rendered.stdout) if d]
    spec = pod_spec(docs)
    broker = sidecar(spec)
    assert env(broker)["AA_BROKER_FI_KEK_FILE"] == "/var/run/secrets/aa-token-broker-fi/kek"
    assert {"name": "aa-token-broker-fi-kek", "mountPath": "/var/run/secrets/aa-token-broker-fi",
            "readOnly": True} in broker["volumeMounts"]
    for container in spec.get("initContainers", []) + spec["containers"]:
        if container["name"] != "aa-token-broker":
            assert all(m["name"] != "aa-token-broker-fi-kek" for m in container.get("volumeMounts", []))
            assert all(e["name"] != "AA_BROKER_FI_KEK_FILE" for e in container.get("env", []))
    secret = one(docs, "Secret", "fi-kek")
    assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert "AA_BROKER_FI_KEK_FILE" not in env(sidecar(pod_spec(load("minimal", "1.29.0"))))


@pytest.mark.parametrize("version", ["1.28.0", "1.29.0", "1.31.0"])
def test_a_parent_charts_own_init_containers_are_kept_at_every_version(version):
    spec = pod_spec(load("fiu-app", version))
    init = [c["name"] for c in spec["initContainers"]]
    native = version != "1.28.0"
    assert init == (["aa-token-broker", "migrate"] if native else ["migrate"]), init
    migrate = next(c for c in spec["initContainers"] if c["name"] == "migrate")
    # A regular sidecar starts after the init containers: its URL would lead nowhere.
    assert ("AA_TOKEN_BROKER_URL" in env(migrate)) == native
    assert env(migrate)["DB_URL"] is None and migrate["env"][-1]["valueFrom"]["secretKeyRef"]["name"] == "fiu-db"


SECRET_VOLUMES = re.compile(r"^aa-token-broker-secret(-\d+)?$")


@pytest.mark.parametrize("rendered", ["minimal-1.28.0", "full-1.29.0", "entities-1.31.0", "fiu-app-1.28.0",
                                      "fiu-app-1.31.0", "openshift-1.29.0"])
def test_the_secret_is_readable_by_the_pods_fs_group_and_no_one_else(rendered):
    values, version = rendered.rsplit("-", 1)
    docs = load(values, version)
    pods = [d["spec"]["template"]["spec"] for d in docs if d["kind"] == "Deployment"]
    pods += [d["spec"] for d in docs if d["kind"] == "Pod"]
    assert pods
    for spec in pods:
        volumes = [v for v in spec["volumes"] if SECRET_VOLUMES.match(v["name"])]
        assert volumes
        for volume in volumes:
            # 0440: root's, readable by its group (the pod's fsGroup), nothing for others. 0400 would lock
            # the non-root broker out; 0444 lets every user in the container read the secret.
            assert volume["secret"]["defaultMode"] == 0o440, volume
        if values == "openshift":
            assert "fsGroup" not in spec["securityContext"], "restricted-v2 assigns it"
        else:
            assert spec["securityContext"]["fsGroup"] == 65532, spec["securityContext"]


def serve_log(secret, timeout=10):
    """The broker's start-up log, run as the chart's uid and group, until it says whether rotation is on
    (the last start-up line, after every file warning)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    broker = subprocess.Popen(
        [os.path.abspath(BROKER), "serve", "--entity-id", "FIU-EXAMPLE", "--secret-file", str(secret),
         "--iam-url", "http://127.0.0.1:9/iam", "--listen", f"127.0.0.1:{port}", "--log-format", "text"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, user=65532, group=65532, extra_groups=[65532])
    lines = []
    try:
        deadline = time.monotonic() + timeout
        for line in broker.stderr:
            lines.append(line)
            if "automatic secret rotation" in line or time.monotonic() > deadline:
                break
    finally:
        broker.terminate()
        broker.wait(timeout=15)
    return "".join(lines)


def test_the_mounted_secret_is_read_without_a_warning_as_the_kubelet_lays_it_out():
    """The kubelet writes a Secret volume's files as root, group fsGroup, mode defaultMode (0440). Lay a
    file out like that and start the broker on it as the chart's uid and group (fsGroup 65532): no mode
    warning. The 0444 the chart used before is warned about. Needs root to chown; skipped otherwise."""
    if os.geteuid() != 0:
        pytest.skip("needs root to lay the file out as the kubelet does")
    # Not pytest's tmp_path: its parents are private to root, and the broker runs as 65532.
    with tempfile.TemporaryDirectory(dir="/tmp") as directory:
        os.chmod(directory, 0o755)
        secret = os.path.join(directory, "secret")
        with open(secret, "w") as f:
            f.write("not-a-real-secret")
        os.chown(secret, 0, 65532)
        os.chmod(secret, 0o440)
        log = serve_log(secret)
        assert "entity configured" in log, log
        assert "has mode" not in log, log
        os.chmod(secret, 0o444)
        log = serve_log(secret)
        assert "has mode 0444" in log, log


def run_inject_file(path, *flags):
    result = subprocess.run([BROKER, "inject", "--entity-id", "FIU-EXAMPLE", "--secret-name", "fiu-example-entity-secret",
                             "--environment", "sandbox", *flags, path], capture_output=True, text=True, check=True)
    return [d for d in yaml.safe_load_all(result.stdout) if d], result.stderr


def injected_names(docs):
    names = []
    for d in docs:
        spec = {"Pod": lambda d: d["spec"], "CronJob": lambda d: d["spec"]["jobTemplate"]["spec"]["template"]["spec"]}.get(
            d["kind"], lambda d: d.get("spec", {}).get("template", {}).get("spec"))(d)
        if spec and any(c["name"] == "aa-token-broker" for c in spec.get("initContainers", []) + spec["containers"]):
            names.append(f"{d['kind']}/{d['metadata']['name']}")
    return names


THIRD_PARTY = os.path.join(ROOT, "tests", "fixtures", "inject", "third-party.yaml")
WORKLOADS = os.path.join(ROOT, "tests", "fixtures", "inject", "workloads.yaml")


def test_inject_chooses_workloads_by_selector_and_exclude_and_honours_the_workload_annotation():
    docs, _ = run_inject_file(THIRD_PARTY)
    assert "Deployment/argocd-dex-server" not in injected_names(docs)
    docs, _ = run_inject_file(THIRD_PARTY, "-l", "aa.example/entity-token=yes", "--exclude", "statefulset/argocd-application-controller")
    assert injected_names(docs) == ["Deployment/argocd-server"]


def test_inject_in_regular_mode_leaves_run_to_completion_pods_alone():
    docs, stderr = run_inject_file(WORKLOADS, "--mode", "regular")
    names = injected_names(docs)
    assert "Job/fiu-backfill" not in names and "CronJob/fiu-consent-report" not in names
    assert "Deployment/fiu-api" in names
    assert stderr.count("left without the sidecar") == 2, stderr


def test_inject_openshift_sets_no_ids():
    docs, _ = run_inject_file(THIRD_PARTY, "--openshift")
    for d in docs:
        if f"{d['kind']}/{d['metadata']['name']}" in injected_names([d]):
            spec = d["spec"] if d["kind"] == "Pod" else d["spec"]["template"]["spec"]
            side = sidecar(spec)["securityContext"]
            assert "runAsUser" not in side and "runAsGroup" not in side
            assert "fsGroup" not in spec.get("securityContext", {})
