#!/bin/sh
# Rendered manifests on stdin, the same with the sidecar on stdout; the flags are --post-renderer-args.
set -eu
exec "${AA_TOKEN_BROKER_BIN:-aa-token-broker}" inject "$@" -
