"""Unit tests of the Helm chart, over manifests rendered by helm/ci/run.sh (RENDERED=dir)."""

import os

import pytest
import yaml

RENDERED = os.environ.get("RENDERED", "")


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
    assert init[0]["startupProbe"]["exec"]["command"] == ["aa-token-broker", "healthcheck"]
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


def test_probes_use_the_binarys_own_healthcheck():
    container = sidecar(pod_spec(load("full", "1.29.0")))
    assert container["livenessProbe"]["exec"]["command"] == ["aa-token-broker", "healthcheck", "--live"]
    assert container["readinessProbe"]["exec"]["command"] == ["aa-token-broker", "healthcheck"]


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
        "verbs": ["get", "update", "patch"],
    }]
    binding = one(docs, "RoleBinding")
    account = one(docs, "ServiceAccount")
    assert binding["subjects"][0]["name"] == account["metadata"]["name"]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]


def test_rotation_cronjob_runs_one_rotator_with_the_kubernetes_sink():
    docs = load("full", "1.29.0")
    cron = one(docs, "CronJob")
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == one(docs, "ServiceAccount")["metadata"]["name"]
    container = pod["containers"][0]
    assert container["args"] == ["rotate", "--secret-sink", "kubernetes-secret:fiu/fiu-example-entity-secret/entity-secret"]
    assert env(container)["AA_BROKER_ADMIN_PASSWORD_FILE"].startswith("/var/run/secrets/aa-token-broker-admin/")
    assert container["securityContext"]["readOnlyRootFilesystem"] is True


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
    rules = one(docs, "PrometheusRule")["spec"]["groups"][0]["rules"]
    alerts = {r["alert"]: r for r in rules}
    assert {"AaTokenBrokerSecretExpiringSoon", "AaTokenBrokerSecretInGracePeriod", "AaTokenBrokerRefreshFailing",
            "AaTokenBrokerNoValidToken"} <= set(alerts)
    assert "< 604800" in alerts["AaTokenBrokerSecretExpiringSoon"]["expr"]


def test_minimal_values_render_no_optional_objects():
    kinds = sorted(d["kind"] for d in load("minimal", "1.29.0"))
    assert kinds == ["Deployment", "Pod"], kinds


def test_helm_test_hook_checks_a_token_without_printing_it():
    docs = load("minimal", "1.29.0")
    pod = one(docs, "Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert pod["spec"]["containers"][0]["args"] == ["token", "--check"]
