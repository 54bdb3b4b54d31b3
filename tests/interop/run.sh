#!/usr/bin/env bash
# An independent JOSE implementation against ours: PyJWT (with `cryptography`), installed from PyPI into a
# venv under target/, checks the simulator's tokens through its discovery document and key set, and signs
# tokens of its own that the broker's verifier must accept (RS256 with the realm key) or refuse (`none`,
# HS256 with the public key, a foreign key). Starts the simulator and a broker from the debug build on free
# loopback ports; stops them on exit. Then tests/interop/jws_check.py checks x-jws-signature both ways with
# `cryptography`, and tests/interop/fi_check.py FI data encryption both ways (300 random key pairs each way,
# sizes 0 B to 16 MiB). Run from CI (.ci/run) after `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/../.."

echo "== interop: PyJWT against the simulator and the verifier (tests/interop/run.sh)"
cargo build --locked --quiet --bin aa-token-broker
venv=target/interop-venv
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import jwt, cryptography' 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "PyJWT[crypto]==2.10.1" "cryptography>=42"
fi
"$venv/bin/python" tests/interop/pyjwt_check.py target/debug/aa-token-broker src/simulator/signing-key.der
# Detached x-jws-signature both ways, with `cryptography` (installed above as PyJWT's crypto backend).
echo "== interop: Python cryptography against /v1/sign, /v1/verify-signature and /v1/authorize"
"$venv/bin/python" tests/interop/jws_check.py target/debug/aa-token-broker
# FI data encryption both ways: a pure-Python Weierstrass Curve25519 with `cryptography`'s HKDF and AES-GCM.
echo "== interop: a pure-Python Curve25519 and Python cryptography against /v1/fi/* and /ecc/v1/*"
exec "$venv/bin/python" tests/interop/fi_check.py target/debug/aa-token-broker 300
