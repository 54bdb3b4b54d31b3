#!/bin/sh
# Getting the entity token from the aa-token-broker sidecar with curl.
#
# --noproxy keeps a corporate HTTP_PROXY away from the loopback broker (or set NO_PROXY=127.0.0.1,localhost);
# --max-time bounds every call; --fail makes a non-2xx answer an error (the token is never printed here).
# When a peer answers 401 for a token, POST .../refresh once and retry with the token it returns.
#
# Run: AA_TOKEN_BROKER_URL=http://127.0.0.1:7373 sh token.sh
set -eu

broker=${AA_TOKEN_BROKER_URL:-http://127.0.0.1:7373}
broker_curl() {
  curl --silent --show-error --fail --noproxy '*' --max-time 2 -H 'Metadata: true' "$@"
}

# The bare token (Accept: text/plain), for an Authorization header.
token=$(broker_curl -H 'Accept: text/plain' "$broker/v1/token")
# The JSON answer names the entity.
entity=$(broker_curl "$broker/v1/token" | sed -n 's/.*"entityId":"\([^"]*\)".*/\1/p')
echo "shell: entityId=$entity tokenLength=${#token}"

# Calling a peer: on 401, refresh once and retry.
#   status=$(curl -s -o body.json -w '%{http_code}' -H "Authorization: Bearer $token" "$PEER_URL" ...)
#   if [ "$status" = 401 ]; then
#     token=$(broker_curl -X POST -H 'Accept: text/plain' "$broker/v1/token/refresh")
#     status=$(curl ... -H "Authorization: Bearer $token" "$PEER_URL" ...)
#   fi
token=$(broker_curl -X POST -H 'Accept: text/plain' "$broker/v1/token/refresh")
echo "shell: refreshed entityId=$entity tokenLength=${#token}"
