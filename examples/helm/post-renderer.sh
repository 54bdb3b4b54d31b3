#!/bin/sh
# Helm 3: the broker as a post-renderer, given as an executable path. Helm pipes the rendered manifests in
# and installs what comes out:
#
#   AA_ENTITY_ID=FIU-EXAMPLE AA_SECRET_NAME=fiu-entity-secret \
#     helm install fiu ./chart --post-renderer ./examples/helm/post-renderer.sh
#
# Helm 4 takes only plugin names after --post-renderer: use ./aa-token-broker-inject instead.
# The settings come from variables because Helm 3 passes no arguments to the executable (before 3.10).
set -eu
exec aa-token-broker inject \
  --entity-id "${AA_ENTITY_ID:?set AA_ENTITY_ID}" \
  --secret-name "${AA_SECRET_NAME:?set AA_SECRET_NAME}" \
  --environment "${AA_ENVIRONMENT:-sandbox}" \
  -
