#!/bin/sh
# Helm 3: the broker as a post-renderer, given as an executable path. Helm pipes the rendered manifests in
# and installs what comes out:
#
#   AA_ENTITY_ID=FIU-EXAMPLE AA_SECRET_NAME=fiu-entity-secret AA_ENVIRONMENT=sandbox \
#     helm install fiu ./chart --post-renderer ./examples/helm/post-renderer.sh
#
# The settings come from variables because Helm 3 before 3.10 passes no arguments to the executable; from
# 3.10 on, --post-renderer-args are passed through as well (e.g. --post-renderer-args=--admin-port=9373).
# aa-token-broker must be on PATH (or AA_TOKEN_BROKER_BIN name it). CI runs the command above with Helm
# 3.17 (helm/ci/run.sh). Helm 4 takes only plugin names after --post-renderer: use
# ./aa-token-broker-inject instead.
set -eu
exec "${AA_TOKEN_BROKER_BIN:-aa-token-broker}" inject \
  --entity-id "${AA_ENTITY_ID:?set AA_ENTITY_ID (the entity id) for the post-renderer}" \
  --secret-name "${AA_SECRET_NAME:?set AA_SECRET_NAME (the Kubernetes Secret) for the post-renderer}" \
  --environment "${AA_ENVIRONMENT:-sandbox}" \
  "$@" -
