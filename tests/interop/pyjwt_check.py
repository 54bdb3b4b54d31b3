#!/usr/bin/env python3
"""PyJWT against the simulator's realm and the broker's verifier, over loopback.

1. The simulator as a stand-in for real verifiers: PyJWT starts from the issuer's discovery document,
   fetches the key set it names, and verifies an entity token (RS256, issuer, audience, exp/iat) — with the
   same issuer whether the token was asked for on 127.0.0.1 or localhost; again after a key rotation.
2. The broker's verifier against an independent signer: PyJWT signs with the realm key (the simulator's key
   is public, in the repository) and the broker accepts it, over HTTP and with the `verify` command; PyJWT
   signs `none`, HS256 with the realm's public key as secret, and RS256 with a key of its own, and the
   broker refuses each with the documented reason.

Usage: pyjwt_check.py BROKER_BINARY SIMULATOR_KEY_DER
"""

import hashlib
import hmac
import json
import os
import subprocess
import sys
import tempfile
import time

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from common import b64, check, failures, free_port, request, wait

BINARY, KEY_DER = sys.argv[1], sys.argv[2]
AA, AA_SECRET = "AA-INTEROP", "aa-interop-secret"
FIU, FIU_SECRET = "FIU-INTEROP", "fiu-interop-secret"

def entity_token(iam_url, entity, secret):
    status, _, body = request("POST", iam_url + "/v1/entity/token/generate",
                              f"id={entity}&secret={secret}".encode(),
                              {"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 200, body
    return json.loads(body)["accessToken"]


def main():
    procs = []
    workdir = tempfile.mkdtemp(prefix="aa-interop-")
    try:
        sim_port, broker_port, verify_port = free_port(), free_port(), free_port()
        procs.append(subprocess.Popen([BINARY, "iam-simulator", "--listen", f"127.0.0.1:{sim_port}",
                                       "--entity", f"{AA}={AA_SECRET}", "--entity", f"{FIU}={FIU_SECRET}",
                                       "--log-level", "warn"], stdout=subprocess.DEVNULL))
        base = f"http://127.0.0.1:{sim_port}"
        iam_url = base + "/iam"
        wait(base + "/_simulator/stats")
        secret_file = os.path.join(workdir, "secret")
        with open(secret_file, "w") as f:
            f.write(FIU_SECRET)
        os.chmod(secret_file, 0o600)
        procs.append(subprocess.Popen([BINARY, "serve", "--iam-url", iam_url, "--entity-id", FIU,
                                       "--secret-file", secret_file, "--listen", f"127.0.0.1:{broker_port}",
                                       "--verify-listen", f"127.0.0.1:{verify_port}", "--log-level", "warn"]))
        wait(f"http://127.0.0.1:{broker_port}/readyz")

        # 1. PyJWT verifies the simulator's tokens, starting from the issuer.
        issuer = f"http://127.0.0.1:{sim_port}/auth/realms/sahamati"
        status, _, body = request("GET", issuer + "/.well-known/openid-configuration")
        discovery = json.loads(body)
        check(status == 200 and discovery["issuer"] == issuer, "discovery document names the issuer")
        token = entity_token(iam_url, AA, AA_SECRET)
        via_localhost = entity_token(f"http://localhost:{sim_port}/iam", AA, AA_SECRET)
        for label, t in (("127.0.0.1", token), ("localhost", via_localhost)):
            key = jwt.PyJWKClient(discovery["jwks_uri"]).get_signing_key_from_jwt(t)
            claims = jwt.decode(t, key, algorithms=["RS256"], issuer=discovery["issuer"], audience="account",
                                options={"require": ["exp", "iat", "iss"]})
            check(claims["azp"] == AA and claims["roles"] == "AA",
                  f"PyJWT verifies a token asked for on {label} against the discovered key set")

        def verify(t, port=verify_port, header="Authorization"):
            value = f"Bearer {t}" if header == "Authorization" else t
            status, headers, body = request("GET", f"http://127.0.0.1:{port}/v1/verify", headers={header: value})
            return status, headers, json.loads(body or b"null")

        # After a rotation, PyJWT follows the new kid; so does the broker, with one refetch. (Before the
        # forgeries below: each unknown kid may trigger a refetch, at most one per 10 s.)
        rotated = json.loads(request("POST", base + "/_simulator/realm/rotate")[2])
        token = entity_token(iam_url, AA, AA_SECRET)
        key = jwt.PyJWKClient(discovery["jwks_uri"]).get_signing_key_from_jwt(token)
        check(key.key_id == rotated["kid"] and jwt.decode(token, key, algorithms=["RS256"], audience="account",
                                                          issuer=issuer)["azp"] == AA,
              "PyJWT verifies a token signed after a key rotation")
        status, _, body = verify(token)
        check(status == 200 and body["entityId"] == AA, "the broker verifies it too (one refetch)", body)

        # 2. The broker accepts what PyJWT signs with the realm key, and refuses PyJWT's forgeries.
        with open(KEY_DER, "rb") as f:
            realm_key = serialization.load_der_private_key(f.read(), password=None)
        jwks = json.loads(request("GET", discovery["jwks_uri"])[2])
        realm_n = b64(realm_key.public_key().public_numbers().n.to_bytes(256, "big"))
        kid = next(k["kid"] for k in jwks["keys"] if k["n"] == realm_n)
        now = int(time.time())
        claims = {"iss": issuer, "exp": now + 600, "iat": now, "aud": "account", "azp": FIU, "clientId": FIU,
                  "roles": "FIU", "typ": "Bearer"}
        pyjwt_token = jwt.encode(claims, realm_key, algorithm="RS256", headers={"kid": kid})

        status, headers, body = verify(pyjwt_token)
        check(status == 200 and body["entityId"] == FIU and headers.get("X-AA-Role") == "FIU",
              "the broker verifies a token PyJWT signed with the realm key (verify listener)")
        status, _, body = verify(pyjwt_token, port=broker_port, header="client_api_key")
        check(status == 200, "... and on the token port, from client_api_key")
        cli = subprocess.run([BINARY, "verify", "--iam-url", iam_url, "--role", "FIU"], input=pyjwt_token,
                             capture_output=True, text=True)
        check(cli.returncode == 0 and json.loads(cli.stdout)["azp"] == FIU, "the verify command agrees")

        none_token = jwt.encode(claims, None, algorithm="none")
        status, headers, body = verify(none_token)
        check(status == 401 and body["message"] == "algorithm not allowed"
              and headers.get("WWW-Authenticate") == 'Bearer error="invalid_token"', "alg none is refused")
        pem = realm_key.public_key().public_bytes(serialization.Encoding.PEM,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo)
        header = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": kid}).encode())
        payload = b64(json.dumps(claims).encode())
        mac = hmac.new(pem, f"{header}.{payload}".encode(), hashlib.sha256).digest()
        status, _, body = verify(f"{header}.{payload}.{b64(mac)}")
        check(status == 401 and body["message"] == "algorithm not allowed",
              "HS256 with the realm's public key (PEM) as secret is refused")
        own_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        status, _, body = verify(jwt.encode(claims, own_key, algorithm="RS256", headers={"kid": kid}))
        check(status == 401 and body["message"] == "bad signature", "a foreign key under the realm's kid is refused")
        status, _, body = verify(jwt.encode(claims, own_key, algorithm="RS256", headers={"kid": "someone-else"}))
        check(status == 401 and body["message"] == "unknown key", "a foreign key under its own kid is refused")
        expired = dict(claims, exp=now - 3600, iat=now - 7200)
        expired_token = jwt.encode(expired, realm_key, algorithm="RS256", headers={"kid": kid})
        try:
            jwt.decode(expired_token, realm_key.public_key(), algorithms=["RS256"], audience="account")
            pyjwt_refuses = False
        except jwt.ExpiredSignatureError:
            pyjwt_refuses = True
        status, _, body = verify(expired_token)
        check(pyjwt_refuses and status == 401 and body["message"] == "expired", "both refuse an expired token")
        foreign_issuer = jwt.encode(dict(claims, iss="https://evil.example/auth/realms/sahamati"), realm_key,
                                    algorithm="RS256", headers={"kid": kid})
        status, _, body = verify(foreign_issuer)
        check(status == 401 and body["message"] == "issuer not allowed", "an issuer off the allow-list is refused")

    finally:
        for proc in procs:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
    if failures:
        print(f"{len(failures)} interop check(s) failed", file=sys.stderr)
        return 1
    print("interop: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
