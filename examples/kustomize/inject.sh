#!/bin/sh
# A kustomize exec function: ResourceList in, ResourceList out (inject rewrites its items).
set -eu
exec "${AA_TOKEN_BROKER_BIN:-aa-token-broker}" inject \
  --entity-id FIU-EXAMPLE --secret-name fiu-entity-secret --environment sandbox -
