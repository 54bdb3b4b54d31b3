#!/usr/bin/env bash
# Instructions per `GET /v1/token` in user space, for the broker and the floor, counted by callgrind.
# Unlike requests per second, the count repeats from run to run whatever else the machine is doing, so
# it shows what a change to the hot path costs. Needs valgrind, wrk and the two release binaries:
#   cargo build --release --examples && cargo build --release --bin aa-token-broker
#   bench/instructions.sh             # one line per server
#   bench/instructions.sh --annotate  # and the broker's most expensive functions
# Function names need symbols: build with CARGO_PROFILE_RELEASE_STRIP=false CARGO_PROFILE_RELEASE_DEBUG=1.
set -euo pipefail
cd "$(dirname "$0")/.."
broker=${BROKER:-target/release/aa-token-broker}
floor=${FLOOR:-target/release/examples/bench-floor}
out=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$out"' EXIT

"$broker" iam-simulator --listen 127.0.0.1:17480 --entity FIU-BENCH=bench-secret >/dev/null 2>&1 &
printf %s bench-secret >"$out/secret"

get() { curl -sf -H 'Metadata: true' "http://127.0.0.1:$1/v1/token"; }
wait_for() { for _ in $(seq 150); do get "$1" >/dev/null && return; sleep 0.2; done; echo "no answer on :$1" >&2; exit 1; }

# measure NAME PORT COMMAND...: warm up, zero the counters, then count 8 s of load on 8 connections.
measure() {
  local name=$1 port=$2
  shift 2
  valgrind --tool=callgrind --callgrind-out-file="$out/$name" "$@" >/dev/null 2>"$out/$name.log" &
  local vg=$!
  wait_for "$port"
  get "$port" >"$out/$name.answer"
  wrk -t1 -c8 -d2s -H 'Metadata: true' "http://127.0.0.1:$port/v1/token" >/dev/null
  callgrind_control -z "$vg" >/dev/null
  local requests
  requests=$(wrk -t1 -c8 -d8s -H 'Metadata: true' -s bench/report.lua "http://127.0.0.1:$port/v1/token" |
    grep '^{' | python3 -c 'import json, sys; print(json.load(sys.stdin)["requests"])')
  callgrind_control -d "$vg" >/dev/null
  sleep 1
  kill "$vg"
  wait "$vg" 2>/dev/null || true
  local instructions
  instructions=$(awk '/^summary:/ {print $2}' "$out/$name.1")
  echo "$name: $((instructions / requests)) instructions per request ($requests requests)"
}

measure broker 17473 "$broker" serve --listen 127.0.0.1:17473 --iam-url http://127.0.0.1:17480/iam \
  --entity-id FIU-BENCH --secret-file "$out/secret" --log-level warn
# The floor answers the broker's own answer, so both send the same bytes.
measure floor 17474 "$floor" 127.0.0.1:17474 "$out/broker.answer"

if [ "${1:-}" = --annotate ]; then
  callgrind_annotate --auto=no --inclusive=no "$out/broker.1" 2>/dev/null | sed -n '/file:function/,+27p'
fi
