#!/usr/bin/env bash
# Fuzzes each target for a bounded time: fuzz/run.sh [SECONDS_PER_TARGET] (default 60).
# Installs cargo-fuzz if missing. The toolchain here is stable: RUSTC_BOOTSTRAP lets cargo-fuzz pass the
# -Z flags libFuzzer instrumentation needs. A crash is saved under fuzz/artifacts/TARGET/; make it a
# regression test in the crate before fixing it.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-60}"
command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz
export RUSTC_BOOTSTRAP=1
for target in iam_response config_toml secret_file text_inputs inbound_token jws_parse txnid_scan inject_yaml; do
  echo "== fuzzing $target for ${seconds}s"
  cargo fuzz run --sanitizer none "$target" -- -max_total_time="$seconds" -rss_limit_mb=1024
done
