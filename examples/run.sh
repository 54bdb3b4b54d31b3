#!/usr/bin/env bash
# Runs every client example against a real broker: starts `aa-token-broker demo` (the built-in IAM simulator,
# no credentials) on a free loopback port, waits until it is ready, runs the Python, Node, Java and shell
# examples with AA_TOKEN_BROKER_URL pointing at it, checks what each prints (the entity and the token's
# length, never the token), and stops the demo. Node or Java missing: a failure under CI (CI=true), a skip
# with a message otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."

broker=target/debug/aa-token-broker
[ -x "$broker" ] || cargo build --locked --quiet --bin aa-token-broker

missing=()
for tool in python3 node java curl; do
  command -v "$tool" >/dev/null || missing+=("$tool")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ -n "${CI:-}" ]; then
    echo "examples/run.sh: missing ${missing[*]}; CI must have them" >&2
    exit 1
  fi
  echo "examples/run.sh: skipping the examples that need ${missing[*]} (not installed)"
fi
has() { ! printf '%s\n' "${missing[@]}" | grep -qx "$1"; }

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
log=$(mktemp)
"$broker" demo --listen "127.0.0.1:$port" --log-level warn >"$log" 2>&1 &
demo=$!
trap 'kill "$demo" 2>/dev/null; wait "$demo" 2>/dev/null; rm -f "$log"' EXIT

export AA_TOKEN_BROKER_URL="http://127.0.0.1:$port"
for _ in $(seq 1 150); do
  curl -sf --noproxy '*' -o /dev/null "$AA_TOKEN_BROKER_URL/readyz" && break
  kill -0 "$demo" 2>/dev/null || { cat "$log" >&2; echo "the demo exited" >&2; exit 1; }
  sleep 0.1
done
curl -sf --noproxy '*' -o /dev/null "$AA_TOKEN_BROKER_URL/readyz" || { echo "the demo did not become ready" >&2; exit 1; }

# Each example prints "<name>: entityId=FIU-DEMO tokenLength=N" and the same after a refresh.
check() {
  local name=$1; shift
  local out
  out=$("$@")
  echo "$out"
  for line in "$name: entityId=FIU-DEMO tokenLength=" "$name: refreshed entityId=FIU-DEMO tokenLength="; do
    local length
    length=$(printf '%s\n' "$out" | grep -F "$line" | sed 's/.*tokenLength=//')
    if [ -z "$length" ] || [ "$length" -lt 100 ]; then
      echo "examples/run.sh: $name did not print '$line<a JWT's length>'" >&2
      exit 1
    fi
  done
  if printf '%s\n' "$out" | grep -q 'eyJ'; then
    echo "examples/run.sh: $name printed a token" >&2
    exit 1
  fi
}

passed=0
if has python3; then check python python3 examples/python/token_client.py; passed=$((passed + 1)); fi
if has node; then check node node examples/node/token_client.mjs; passed=$((passed + 1)); fi
if has java; then check java java examples/java/TokenClient.java; passed=$((passed + 1)); fi
if has curl; then check shell sh examples/shell/token.sh; passed=$((passed + 1)); fi
echo "examples: $passed passed, 0 failed"
