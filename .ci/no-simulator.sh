#!/usr/bin/env bash
# Checks a binary built without the `simulator` feature (the image's): none of the simulator's fixed keys
# is inside it, in DER (as src/simulator holds them) or as a PEM private key, and `demo` and
# `iam-simulator` refuse with one line and exit code 2.
#   bash .ci/no-simulator.sh BINARY
set -euo pipefail
cd "$(dirname "$0")/.."
binary=${1:?usage: .ci/no-simulator.sh BINARY}

python3 - "$binary" src/simulator/*.der <<'PY'
import sys
binary = open(sys.argv[1], "rb").read()
inside = [path for path in sys.argv[2:] if open(path, "rb").read() in binary]
if inside:
    sys.exit(f"{sys.argv[1]} holds the simulator's keys: {', '.join(inside)}")
print(f"none of the {len(sys.argv) - 2} simulator keys is inside {sys.argv[1]}")
PY

# A PEM private key is its BEGIN line followed by base64; the parser's own "PRIVATE KEY" words are not one.
# (grep -c, not -q: an early exit would break the pipe, and pipefail would read that as "not found".)
pem=$(strings -n 8 "$binary" | grep -A1 -E -- '-----BEGIN ([A-Z]+ )?PRIVATE KEY-----' |
  grep -cE '^[A-Za-z0-9+/]{60,}={0,2}$' || true)
if [ "$pem" != 0 ]; then
  echo "$binary holds a PEM private key" >&2
  exit 1
fi
echo "no PEM private key inside $binary"

for command in demo iam-simulator; do
  set +e
  message=$("$binary" "$command" 2>&1 >/dev/null)
  code=$?
  set -e
  if [ "$code" != 2 ] || [ "$(printf '%s\n' "$message" | wc -l)" != 1 ]; then
    echo "$binary $command: expected one line and exit code 2, got $code: $message" >&2
    exit 1
  fi
  echo "$command: $message (exit 2)"
done
