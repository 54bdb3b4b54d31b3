#!/usr/bin/env python3
"""Python `cryptography` against the broker's detached x-jws-signature (RFC 7797, RS256), both ways, over
loopback.

1. Ours verified by it: the broker signs bodies on POST /v1/sign with the key the simulator's Central
   Registry holds for the FIU; Python reads the FIU's public JWK from the CR (with an entity token, as a
   peer would), builds the signing input itself from the header segment and the raw body, and verifies
   with RSASSA-PKCS1-v1_5/SHA-256. RS256 is deterministic, so Python's own signature over the same header
   and body must also be byte-for-byte the broker's. The spec's golden vector verifies in Python too.
2. Its verified by ours: Python signs as a peer AA (its private key from the simulator), in the form the
   broker emits and in the lenient forms real senders use (no `crit`, no `kid`), and the broker accepts
   each on /v1/verify-signature and /v1/authorize; a changed body and a damaged signature are refused with
   the documented answers.

Usage: jws_check.py BROKER_BINARY
"""

import base64
import datetime
import json
import os
import subprocess
import sys
import tempfile

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from common import b64, check, failures, free_port, request, wait

BINARY = sys.argv[1]
AA, AA_SECRET = "AA-JWS", "aa-jws-secret"
FIU, FIU_SECRET = "FIU-JWS", "fiu-jws-secret"
BODY = b'{"ver":"2.0.0","timestamp":"2026-11-25T10:00:00.000Z","txnid":"7d1c0de0-0000-4000-8000-00000000a001","FIDataRange":{"from":"2025-01-01T00:00:00Z"}}'
GOLDEN_N = "pA2LihUAwJ4yO0IwHlY0F0N-oAr9OgCXUL4uryK39PP9f-s0aGL1Q_4sj6AR7xJDivSAlQeW6_yAEjunnNNUl45Su1m2n9LX2YyuU4-4UzCq2c-1oMcQ9ChmYZ9k2HyWxRUZjVlnIiHHXNGrVvdGRAR7Z7kMrGq1pdPv35oPKZO1YM9nmsjUOUlPgQSwOSGYokNjT96QCOWElid_C6gRwtMc6YyVLXEXYj16xR_OqDWSyEbUO7P1xrZh4b-ekvahL2so1aH6_aqyP70RG2y8zC-oREd1v3MnsMGSjlGjGSifo21hYYXW45OEp5-ygFhBOM0SMhP0O_5rM7tsgO6cZw"
GOLDEN_BODY = b'{"ver":"2.0.0","timestamp":"2023-06-26T11:33:34.509Z","txnid":"0b811819-9044-4856-b0ee-8c88035f8858"}'
GOLDEN_SIGNATURE = "eyJhbGciOiJSUzI1NiIsImtpZCI6IjQyNzE5MTNlLTdiOTMtNDlkZC05OTQ5LTFjNzZmZjVmYzVjZiIsImI2NCI6ZmFsc2UsImNyaXQiOlsiYjY0Il19..aivfdMJX22ePby6Xlky4BgrnX9eAJY5_6QquQr8fDDKx4tRqyrn93F_JoQXju9muTVa9VVnVXHUtN9J5F7MUIAyDkt0P0Z-MUiLH3sryYTw1tAfmEYWfsg-3Egd_7JxVoqDZ7R4sUjlVP_8WTBFDIR0eemNnoexrASJ5kbOV0DspZQ7nP4E0Vk_80vyY2LbU3NxKuvqoPyo0glpgFyIfd6Z40z_z5vim-s4cbZTWBQ_8cOL13L8jamQMNCvp_GXTwjqcqzYM1U8jYU9y9Y4l9g1lqkD4Lu-G-us7yoJf35g_7w7_1LT_t3SXhdVDKHCobZKf713qCicVj2acRCuxRw"

def unb64(text):
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def entity_token(iam_url, entity, secret):
    status, _, body = request("POST", iam_url + "/v1/entity/token/generate",
                              f"id={entity}&secret={secret}".encode(),
                              {"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 200, body
    return json.loads(body)["accessToken"]


def public_key(jwk):
    n = int.from_bytes(unb64(jwk["n"]), "big")
    e = int.from_bytes(unb64(jwk["e"]), "big")
    return rsa.RSAPublicNumbers(e, n).public_key()


def py_verify(key, signature, body):
    """An independent RFC 7797 verifier: header segment as sent, '.', the raw body."""
    header_segment, sep, signature_segment = signature.partition("..")
    if not sep or "." in signature_segment:
        return False
    header = json.loads(unb64(header_segment))
    if header.get("alg") != "RS256" or header.get("b64") is not False:
        return False
    try:
        key.verify(unb64(signature_segment), header_segment.encode() + b"." + body,
                   padding.PKCS1v15(), hashes.SHA256())
        return True
    except (InvalidSignature, ValueError):
        return False


def py_sign(private_key, header, body):
    segment = b64(json.dumps(header, separators=(",", ":")).encode())
    signature = private_key.sign(segment.encode() + b"." + body, padding.PKCS1v15(), hashes.SHA256())
    return f"{segment}..{b64(signature)}"


def main():
    procs = []
    workdir = tempfile.mkdtemp(prefix="aa-jws-interop-")
    try:
        sim_port, broker_port, verify_port = free_port(), free_port(), free_port()
        procs.append(subprocess.Popen([BINARY, "iam-simulator", "--listen", f"127.0.0.1:{sim_port}",
                                       "--entity", f"{AA}={AA_SECRET}", "--entity", f"{FIU}={FIU_SECRET}",
                                       "--log-level", "warn"], stdout=subprocess.DEVNULL))
        base = f"http://127.0.0.1:{sim_port}"
        iam_url = base + "/iam"
        wait(base + "/_simulator/stats")
        kids = {}
        for entity, role in ((FIU, "FIU"), (AA, "AA")):
            status, _, body = request("POST", base + "/_simulator/cr/entities",
                                      json.dumps({"id": entity, "role": role}).encode(),
                                      {"Content-Type": "application/json"})
            assert status == 200, body
            kids[entity] = json.loads(body)["kid"]
        key_file = os.path.join(workdir, "fiu-key.pem")
        with open(key_file, "wb") as f:
            f.write(request("GET", f"{base}/_simulator/cr/entities/{FIU}/key")[2])
        os.chmod(key_file, 0o600)
        secret_file = os.path.join(workdir, "secret")
        with open(secret_file, "w") as f:
            f.write(FIU_SECRET)
        os.chmod(secret_file, 0o600)
        procs.append(subprocess.Popen([BINARY, "serve", "--iam-url", iam_url, "--entity-id", FIU,
                                       "--secret-file", secret_file, "--listen", f"127.0.0.1:{broker_port}",
                                       "--verify-listen", f"127.0.0.1:{verify_port}",
                                       "--signing-key-file", key_file, "--signing-kid", kids[FIU],
                                       "--log-level", "warn"]))
        broker = f"http://127.0.0.1:{broker_port}"
        wait(broker + "/readyz")

        # 1. Ours, verified by Python.
        status, headers, body = request("POST", broker + "/v1/sign", BODY, {"Metadata": "true"})
        signed = json.loads(body)
        check(status == 200 and headers["x-jws-signature"] == signed["signature"] and signed["kid"] == kids[FIU],
              "the broker signs: x-jws-signature header and JSON agree", body)
        fiu_token = entity_token(iam_url, FIU, FIU_SECRET)
        status, _, record = request("GET", f"{base}/cr/v2/entityInfo/FIU/{FIU}",
                                    headers={"Authorization": f"Bearer {fiu_token}"})
        certificate = json.loads(record)["entityinfo"]["certificate"]
        fiu_public = public_key(certificate)
        check(py_verify(fiu_public, signed["signature"], BODY),
              "Python verifies the broker's signature with the key the CR publishes")
        check(not py_verify(fiu_public, signed["signature"], BODY.replace(b"2025", b"2024")),
              "Python refuses it over a changed body")
        header = json.loads(unb64(signed["signature"].split("..")[0]))
        check(list(header) == ["alg", "kid", "b64", "crit"] and header["crit"] == ["b64"],
              "the header is {alg, kid, b64:false, crit:[b64]}", header)
        fiu_private = serialization.load_pem_private_key(open(key_file, "rb").read(), password=None)
        check(py_sign(fiu_private, header, BODY) == signed["signature"],
              "Python's own RS256 over the same header and body is byte-for-byte the broker's")
        golden_key = public_key({"n": GOLDEN_N, "e": "AQAB"})
        check(py_verify(golden_key, GOLDEN_SIGNATURE, GOLDEN_BODY)
              and not py_verify(golden_key, GOLDEN_SIGNATURE, GOLDEN_BODY.replace(b"2.0.0", b"2.0.1")),
              "the spec's golden vector verifies in Python, and not with 2.0.1")

        # 2. Python's, verified by ours.
        aa_private = serialization.load_pem_private_key(
            request("GET", f"{base}/_simulator/cr/entities/{AA}/key")[2], password=None)
        aa_token = entity_token(iam_url, AA, AA_SECRET)
        forms = {
            "the broker's form": {"alg": "RS256", "kid": kids[AA], "b64": False, "crit": ["b64"]},
            "ReBIT's FAQ form (no crit)": {"b64": False, "kid": kids[AA], "alg": "RS256"},
            "Sahamati's router form (no kid)": {"alg": "RS256", "b64": False, "crit": ["b64"]},
        }
        for label, header in forms.items():
            signature = py_sign(aa_private, header, BODY)
            for port in (broker_port, verify_port):
                status, _, body = request("POST",
                                          f"http://127.0.0.1:{port}/v1/verify-signature?sender={AA}&type=AA",
                                          BODY, {"x-jws-signature": signature})
                check(status == 200 and json.loads(body)["sender"] == AA,
                      f"the broker verifies Python's signature, {label}, on port {port}", body)
            status, headers, body = request("POST", f"http://127.0.0.1:{verify_port}/v1/authorize", BODY,
                                            {"aa_api_key": aa_token, "x-jws-signature": signature})
            check(status == 200 and headers["X-AA-Entity-Id"] == AA,
                  f"/v1/authorize accepts Python's signature with the AA's token, {label}", body)
        # Sahamati's Router scripts: compact JSON, a signature with no kid, and the token in
        # `client_api_key` with the Bearer scheme, at an FIU's notification endpoint.
        now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        notification = json.dumps({"ver": "2.0.0", "timestamp": now,
                                   "txnid": "7d1c0de0-0000-4000-8000-00000000a002",
                                   "Notifier": {"type": "AA", "id": AA}}, separators=(",", ":")).encode()
        sahamati = py_sign(aa_private, {"alg": "RS256", "b64": False, "crit": ["b64"]}, notification)
        status, headers, body = request("POST", f"http://127.0.0.1:{verify_port}/v1/authorize/FI/Notification",
                                        notification,
                                        {"client_api_key": f"Bearer {aa_token}", "x-jws-signature": sahamati})
        check(status == 200 and headers["X-AA-Entity-Id"] == AA and headers["X-AA-Role"] == "AA",
              "/v1/authorize accepts a Sahamati-style call: client_api_key: Bearer, no kid", body)
        # Its ReBIT error answers are signed by us over their exact bytes: Python verifies them.
        status, headers, body = request("POST", f"{broker}/v1/authorize", notification.replace(b'"AA-JWS"}', b'"AA-JWS" }'),
                                        {"client_api_key": f"Bearer {aa_token}", "x-jws-signature": sahamati})
        check(status == 400 and json.loads(body)["errorCode"] == "SignatureDoesNotMatch"
              and py_verify(fiu_public, headers.get("x-jws-signature", ""), body),
              "a ReBIT error from /v1/authorize carries our signature over its exact bytes", body)
        signature = py_sign(aa_private, forms["the broker's form"], BODY)
        status, _, body = request("POST", f"{broker}/v1/verify-signature?sender={AA}&type=AA",
                                  BODY + b" ", {"x-jws-signature": signature})
        check(status == 400 and json.loads(body)["error"] == "signature_mismatch",
              "a body one byte longer: signature_mismatch", body)
        status, _, body = request("POST", f"{broker}/v1/authorize", BODY.replace(b"2025", b"2024"),
                                  {"aa_api_key": aa_token, "x-jws-signature": signature})
        answer = json.loads(body)
        check(status == 400 and answer["errorCode"] == "SignatureDoesNotMatch"
              and answer["txnid"] == "7d1c0de0-0000-4000-8000-00000000a001",
              "/v1/authorize: a changed body is 400 SignatureDoesNotMatch, txnid echoed", body)
        status, _, body = request("POST", f"{broker}/v1/authorize", BODY,
                                  {"aa_api_key": aa_token, "x-jws-signature": signature[:-1]})
        check(status == 400 and json.loads(body)["errorCode"] == "SignatureDoesNotMatch",
              "/v1/authorize: one character removed from the signature is SignatureDoesNotMatch", body)
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
    print("jws interop: all checks passed", flush=True)


if __name__ == "__main__":
    main()
