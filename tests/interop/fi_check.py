#!/usr/bin/env python3
"""An independent implementation against the broker's FI data encryption, both ways, over loopback.

The reference (tests/interop/fi_ref.py) is BouncyCastle's Weierstrass Curve25519 in plain Python integers
with Python `cryptography` for HKDF-SHA256 and AES-256-GCM; it shares no code with the broker.

1. The spec's golden vector: the broker decrypts it on rahasya's /ecc/v1/decrypt, the FIU's private key
   given as the PKCS#8 PEM rahasya would have handed out (built here byte for byte).
2. Theirs decrypted by ours: for each of N rounds the broker makes key material (POST /v1/fi/key-material);
   Python, as an FIP with a fresh random key and nonce, encrypts random data of random size to it; the
   broker decrypts it with the key handle (POST /v1/fi/decrypt), byte for byte. Every tenth round is a batch.
3. Ours decrypted by theirs: Python, as an FIU with a fresh key and nonce, asks the broker to encrypt random
   data (POST /v1/fi/encrypt) and decrypts the answer with the broker's KeyMaterial.
4. Large payloads: 1 MiB and 16 MiB, both ways. And a tampered byte is refused (decryption_failed).

Usage: fi_check.py BROKER_BINARY [ROUNDS]
"""

import base64
import json
import os
import random
import secrets
import subprocess
import sys
import tempfile
import time

import fi_ref as ref
from common import check, failures, free_port, request, wait

BINARY = sys.argv[1]
ROUNDS = int(sys.argv[2]) if len(sys.argv) > 2 else 300
ENTITY, SECRET = "FIU-FI", "fi-interop-secret"
MIB = 1024 * 1024
GOLDEN = {
    "fiu_private": "DMxHPri8d7IT23KgLk281zZenMfVHSdeamq0RhwlIBk=",
    "fiu_nonce": "6uj1RdDUbcpI3lVMZvijkMC8Te20O4Bcyz0SyivX8Eg=",
    "fip_point": "BABVt+mpRLMXiQpIfEq6bj8hlXsdtXIxLsspmMgLNI1SR5mHgDVbjHO2A+U4QlMddGzqyEidzm1AkhtSxSO2Ahg=",
    "fip_nonce": "lmXgblZwotx+DfBgKJF0lZXtAXgBEYr5khh79Zytr2Y=",
    "ciphertext": "pzMvVZNNVtJzqPkkxcCbBUWgDEBy/mBXIeT2dJWI16ZAQnnXUb9lI+S4k8XK6mgZSKKSRIHkcNvJpllnBg548wUgavBa0vCRRwdL6kY6Yw==",
    "plaintext": b"Wormtail should never have been Potter cottage's secret keeper.",
}
b64 = lambda data: base64.b64encode(data).decode()
unb64 = base64.b64decode


def pkcs8_pem(d):
    """The PKCS#8 DER BouncyCastle writes for a Curve25519 key: PrivateKeyInfo with the explicit parameters
    and an ECPrivateKey holding d and the public point."""
    algorithm = ref.SPKI_PREFIX[4:241]
    point = ref.point_bytes(ref.mul(d, ref.G))
    ec = b"\x02\x01\x01\x04\x20" + d.to_bytes(32, "big") + b"\xa1\x44\x03\x42\x00" + point
    body = b"\x02\x01\x00" + algorithm + b"\x04" + bytes([len(ec) + 2]) + b"\x30" + bytes([len(ec)]) + ec
    der = b"\x30\x82" + len(body).to_bytes(2, "big") + body
    return "-----BEGIN PRIVATE KEY-----" + b64(der) + "-----END PRIVATE KEY-----"


def post(base, path, body, guarded=True):
    headers = {"Content-Type": "application/json"}
    if guarded:
        headers["Metadata"] = "true"
    status, _, answer = request("POST", base + path, json.dumps(body).encode(), headers)
    try:
        return status, json.loads(answer)
    except ValueError:
        return status, {"raw": answer[:200]}


def random_size(rng):
    return rng.choice([0, 1, 2, 3, 15, 16, 17, rng.randrange(0, 4096), rng.randrange(0, 70_000)])


def theirs_decrypted_by_ours(base, rng, size, batch=False):
    status, made = post(base, "/v1/fi/key-material", {"expiryHours": 1})
    if status != 200:
        return False, made
    ours_km, handle = made["KeyMaterial"], made["keyHandle"]
    ours_point = ref.parse_public(ours_km["DHPublicKey"]["KeyValue"])
    ours_nonce = unb64(ours_km["Nonce"])
    items, expected = [], []
    for _ in range(3 if batch else 1):
        d, point = ref.keypair()
        nonce = secrets.token_bytes(32)
        data = rng.randbytes(size)
        encrypted = ref.encrypt(d, ours_point, nonce, ours_nonce, data)
        items.append({"KeyMaterial": ref.key_material(point, nonce, 1), "encryptedData": b64(encrypted)})
        expected.append(data)
    if batch:
        status, answer = post(base, "/v1/fi/decrypt", {"keyHandle": handle, "items": items})
        got = [unb64(item.get("data", "")) if "data" in item else None for item in answer.get("items", [])]
    else:
        status, answer = post(base, "/v1/fi/decrypt", dict(items[0], keyHandle=handle))
        got = [unb64(answer["data"])] if "data" in answer else [None]
    return status == 200 and got == expected, answer if status != 200 else f"size {size}"


def ours_decrypted_by_theirs(base, rng, size):
    d, point = ref.keypair()
    nonce = secrets.token_bytes(32)
    data = rng.randbytes(size)
    status, answer = post(base, "/v1/fi/encrypt", {"KeyMaterial": ref.key_material(point, nonce, 1), "data": b64(data)})
    if status != 200:
        return False, answer
    theirs = answer["KeyMaterial"]
    try:
        plain = ref.decrypt(d, ref.parse_public(theirs["DHPublicKey"]["KeyValue"]), nonce, unb64(theirs["Nonce"]),
                            unb64(answer["encryptedData"]))
    except Exception as e:  # InvalidTag or a malformed answer
        return False, repr(e)
    return plain == data, f"size {size}"


def main():
    rng = random.Random(int.from_bytes(os.urandom(8), "big"))
    procs = []
    workdir = tempfile.mkdtemp(prefix="aa-fi-interop-")
    try:
        sim_port, broker_port = free_port(), free_port()
        procs.append(subprocess.Popen([BINARY, "iam-simulator", "--listen", f"127.0.0.1:{sim_port}",
                                       "--entity", f"{ENTITY}={SECRET}", "--log-level", "warn"],
                                      stdout=subprocess.DEVNULL))
        wait(f"http://127.0.0.1:{sim_port}/_simulator/stats")
        secret_file = os.path.join(workdir, "secret")
        kek_file = os.path.join(workdir, "kek")
        with open(secret_file, "w") as f:
            f.write(SECRET)
        with open(kek_file, "w") as f:
            f.write(b64(secrets.token_bytes(32)) + "\n")
        for path in (secret_file, kek_file):
            os.chmod(path, 0o600)
        procs.append(subprocess.Popen([BINARY, "serve", "--iam-url", f"http://127.0.0.1:{sim_port}/iam",
                                       "--entity-id", ENTITY, "--secret-file", secret_file,
                                       "--listen", f"127.0.0.1:{broker_port}", "--fi-kek-file", kek_file,
                                       "--log-level", "warn"]))
        base = f"http://127.0.0.1:{broker_port}"
        wait(base + "/readyz")

        # 1. The golden vector, through rahasya's route and a PKCS#8 key built here.
        d = int.from_bytes(unb64(GOLDEN["fiu_private"]), "big")
        fip_point = (int.from_bytes(unb64(GOLDEN["fip_point"])[1:33], "big"),
                     int.from_bytes(unb64(GOLDEN["fip_point"])[33:], "big"))
        check(ref.decrypt(d, fip_point, unb64(GOLDEN["fiu_nonce"]), unb64(GOLDEN["fip_nonce"]),
                          unb64(GOLDEN["ciphertext"])) == GOLDEN["plaintext"],
              "the reference decrypts the golden vector")
        status, answer = post(base, "/ecc/v1/decrypt", {
            "remoteKeyMaterial": ref.key_material(fip_point, unb64(GOLDEN["fip_nonce"])),
            "ourPrivateKey": pkcs8_pem(d), "base64YourNonce": GOLDEN["fiu_nonce"],
            "base64RemoteNonce": GOLDEN["fip_nonce"], "base64Data": GOLDEN["ciphertext"]}, guarded=False)
        check(status == 200 and unb64(answer.get("base64Data", "")) == GOLDEN["plaintext"],
              "the broker decrypts the golden vector on /ecc/v1/decrypt with a PKCS#8 key", answer)

        # 2 and 3. Random keys, nonces and sizes, both ways.
        started = time.time()
        ok_in = ok_out = 0
        for round_ in range(ROUNDS):
            good, detail = theirs_decrypted_by_ours(base, rng, random_size(rng), batch=round_ % 10 == 9)
            ok_in += good
            if not good:
                check(False, f"round {round_}: the broker decrypts Python's encryption", detail)
            good, detail = ours_decrypted_by_theirs(base, rng, random_size(rng))
            ok_out += good
            if not good:
                check(False, f"round {round_}: Python decrypts the broker's encryption", detail)
        check(ok_in == ROUNDS, f"{ok_in}/{ROUNDS} rounds: the broker decrypts what Python encrypted (random keys, nonces, sizes)")
        check(ok_out == ROUNDS, f"{ok_out}/{ROUNDS} rounds: Python decrypts what the broker encrypted")
        print(f"     {2 * ROUNDS} exchanges in {time.time() - started:.1f} s", flush=True)

        # 4. Large payloads, both ways, and a tampered byte.
        for size in (MIB, 16 * MIB):
            good, detail = theirs_decrypted_by_ours(base, rng, size)
            check(good, f"{size // MIB} MiB: the broker decrypts Python's encryption", detail)
            good, detail = ours_decrypted_by_theirs(base, rng, size)
            check(good, f"{size // MIB} MiB: Python decrypts the broker's encryption", detail)
        status, made = post(base, "/v1/fi/key-material", {})
        ours_point = ref.parse_public(made["KeyMaterial"]["DHPublicKey"]["KeyValue"])
        d, point = ref.keypair()
        nonce = secrets.token_bytes(32)
        encrypted = bytearray(ref.encrypt(d, ours_point, nonce, unb64(made["KeyMaterial"]["Nonce"]), b"statement"))
        encrypted[2] ^= 1
        status, answer = post(base, "/v1/fi/decrypt", {"keyHandle": made["keyHandle"],
                                                      "KeyMaterial": ref.key_material(point, nonce),
                                                      "encryptedData": b64(bytes(encrypted))})
        check(status == 400 and answer.get("error") == "decryption_failed",
              "a tampered byte is 400 decryption_failed", answer)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
    if failures:
        print(f"{len(failures)} check(s) failed", flush=True)
        sys.exit(1)
    print("fi interop: all checks passed", flush=True)


if __name__ == "__main__":
    main()
