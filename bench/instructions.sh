#!/usr/bin/env bash
# Instructions per `GET /v1/token` and per `GET /v1/verify` of an already-seen token (an AA entity token in
# `Authorization: Bearer`, answered from the result cache) in user space, for the broker and the floor
# (which answers each route's bytes as the broker sent them, to the same request headers), counted by
# callgrind.
# Unlike requests per second, the count repeats from run to run whatever else the machine is doing, so
# it shows what a change to the hot path costs. Needs valgrind, wrk and the two release binaries:
#   cargo build --release --examples && cargo build --release --bin aa-token-broker
#   bench/instructions.sh             # one line per server
#   bench/instructions.sh --annotate  # and the broker's most expensive functions, per route
# Function names need symbols: build with CARGO_PROFILE_RELEASE_STRIP=false CARGO_PROFILE_RELEASE_DEBUG=1.
set -euo pipefail
cd "$(dirname "$0")/.."
broker=${BROKER:-target/release/aa-token-broker}
floor=${FLOOR:-target/release/examples/bench-floor}
out=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$out"' EXIT

"$broker" iam-simulator --listen 127.0.0.1:17480 --entity FIU-BENCH=bench-secret \
  --entity AA-BENCH=aa-bench-secret >/dev/null 2>&1 &
printf %s bench-secret >"$out/secret"

get() { curl -sf -H 'Metadata: true' "http://127.0.0.1:$1/v1/token"; }
wait_for() { for _ in $(seq 150); do get "$1" >/dev/null && return; sleep 0.2; done; echo "no answer on :$1" >&2; exit 1; }
for _ in $(seq 50); do
  token=$(curl -sf -d 'id=AA-BENCH&secret=aa-bench-secret' http://127.0.0.1:17480/iam/v1/entity/token/generate |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["accessToken"])' 2>/dev/null) && break
  sleep 0.2
done
bearer="Authorization: Bearer $token"

# count NAME PID PORT PATH HEADER: warm up, zero the counters, count 8 s of load on 8 connections, dump.
count() {
  local name=$1 vg=$2 port=$3 path=$4 header=$5
  wrk -t1 -c8 -d2s -H "$header" "http://127.0.0.1:$port$path" >/dev/null
  callgrind_control -z "$vg" >/dev/null 2>&1
  local requests
  requests=$(wrk -t1 -c8 -d8s -H "$header" -s bench/report.lua "http://127.0.0.1:$port$path" |
    grep '^{' | python3 -c 'import json, sys; print(json.load(sys.stdin)["requests"])')
  callgrind_control --dump="$name" "$vg" >/dev/null 2>&1
  sleep 1
  local instructions
  instructions=$(awk '/^summary:/ {print $2}' "$(ls -t "$out/$port".[0-9]* | head -1)")
  echo "$name: $((instructions / requests)) instructions per request ($requests requests)"
}

# start PORT COMMAND...: the server under callgrind, once it answers; its pid in $vg.
start() {
  local port=$1
  shift
  valgrind --tool=callgrind --callgrind-out-file="$out/$port" "$@" >/dev/null 2>"$out/$port.log" &
  vg=$!
}
stop() { kill "$1"; wait "$1" 2>/dev/null || true; }

start 17473 "$broker" serve --listen 127.0.0.1:17473 --iam-url http://127.0.0.1:17480/iam \
  --entity-id FIU-BENCH --secret-file "$out/secret" --log-level warn
wait_for 17473
get 17473 >"$out/token.answer"
# The first verification checks the signature (and fetches the realm's keys); the rest hit the cache.
curl -sf -H "$bearer" http://127.0.0.1:17473/v1/verify >"$out/verify.answer"
count "broker /v1/token" "$vg" 17473 /v1/token 'Metadata: true'
count "broker /v1/verify" "$vg" 17473 /v1/verify "$bearer"
stop "$vg"
broker_out=$out/17473
# The floor answers the broker's own answers, so both send the same bytes.
start 17474 "$floor" 127.0.0.1:17474 "$out/token.answer"
wait_for 17474
count "floor /v1/token" "$vg" 17474 /v1/token 'Metadata: true'
stop "$vg"
identity=$(python3 -c 'import json, sys; a = json.load(open(sys.argv[1])); print(a["entityId"], a["role"])' "$out/verify.answer")
start 17475 "$floor" 127.0.0.1:17475 "$out/verify.answer" "x-aa-entity-id:${identity% *}" "x-aa-role:${identity#* }"
wait_for 17475
count "floor /v1/verify" "$vg" 17475 /v1/verify "$bearer"
stop "$vg"

if [ "${1:-}" = --annotate ]; then
  for dump in $(ls -tr "$broker_out".[0-9]*); do
    echo "== $(awk '/^desc: Trigger:/ {$1=$2=""; print}' "$dump")"
    callgrind_annotate --auto=no --inclusive=no "$dump" 2>/dev/null | sed -n '/file:function/,+27p'
  done
fi
