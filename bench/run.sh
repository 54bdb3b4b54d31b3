#!/usr/bin/env bash
# Runs the benchmark (bench/bench.py): installs wrk, nginx-light and openssl if missing (and, for a full run, musl-tools
# and the musl target), raises the file limit for the 1024-connection and 10000-request runs, writes
# bench/results.json and bench/RESULTS.md; then bench/verify.py adds incoming-token verification to both,
# bench/jws.py signing and verifying bodies (beside `openssl speed rsa2048`), bench/fi.py FI decryption
# (beside `openssl speed -evp aes-256-gcm`), and bench/isolation.py token serving while signing is saturated
# (beside an outside process burning a core on RSA).
#   bench/run.sh            the full run (about 20 minutes on 2 cores, including a clean release build)
#   bench/run.sh --smoke    a few seconds per part; proves the bench works (CI runs this)
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
missing=()
command -v wrk >/dev/null || missing+=(wrk)
command -v nginx >/dev/null || missing+=(nginx-light)
command -v openssl >/dev/null || missing+=(openssl)
if [ ${#missing[@]} -gt 0 ]; then
  echo "[bench] installing ${missing[*]}" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# A full run also measures the static musl build the Dockerfile ships; best effort, skipped if unavailable.
if [ "${1:-}" != --smoke ]; then
  command -v musl-gcc >/dev/null || {
    $SUDO apt-get update -qq &&
      DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends musl-tools
  } >/dev/null 2>&1 || echo "[bench] musl-tools not installed; the shipped build will be skipped" >&2
  rustup target list --installed 2>/dev/null | grep -qx x86_64-unknown-linux-musl ||
    rustup target add x86_64-unknown-linux-musl >/dev/null 2>&1 ||
    echo "[bench] no musl target; the shipped build will be skipped" >&2
fi
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
python3 bench/bench.py "$@"
python3 bench/verify.py "$@"
python3 bench/jws.py "$@"
python3 bench/fi.py "$@"
exec python3 bench/isolation.py "$@"
