"""An independent reference of the FI data scheme, for the interoperability check: BouncyCastle's short
Weierstrass form of Curve25519 in plain Python integers (affine formulas, unclamped scalars), the X.509
SubjectPublicKeyInfo rahasya emits, and Python `cryptography` for HKDF-SHA256 and AES-256-GCM.

Nothing here shares code with the broker: the curve constants are the ones BouncyCastle publishes for
`CustomNamedCurves.getByName("Curve25519")`, the arithmetic is the textbook chord-and-tangent law, and the
encodings are written out byte for byte. It is slow (variable time, Python integers), which is fine for a
test and wrong for anything else.
"""

import base64
import datetime
import secrets

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

P = 2**255 - 19
A_WEI = 0x2AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA984914A144
B_WEI = 0x7B425ED097B425ED097B425ED097B425ED097B425ED097B4260B5E9C7710C864
GX = 0x2AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAD245A
GY = 0x20AE19A1B8A086B4E01EDD2C7748D14C923D4D7E6D7C61B229E9C5A27ECED3D9
N = 2**252 + 0x14DEF9DEA2F79CD65812631A5CF5D3ED
G = (GX, GY)

# The DER of rahasya's public keys up to the point: SEQUENCE, AlgorithmIdentifier with explicit curve
# parameters, BIT STRING header, and the 0x04 of an uncompressed point.
SPKI_PREFIX = base64.b64decode(
    "MIIBMTCB6gYHKoZIzj0CATCB3gIBATArBgcqhkjOPQEBAiB/////////////////////////////////////////7TBEBCAq"
    "qqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqYSRShRAQge0Je0Je0Je0Je0Je0Je0Je0Je0Je0Je0JgtenHcQyGQEQQQqqqqq"
    "qqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqq0kWiCuGaG4oIa04B7dLHdI0UySPU1+bXxhsinpxaJ+ztPZAiAQAAAAAAAAAAAA"
    "AAAAAAAAFN753qL3nNZYEmMaXPXT7QIBCANCAAQ=")


def on_curve(point):
    x, y = point
    return (y * y - (x * x * x + A_WEI * x + B_WEI)) % P == 0


def add(p1, p2):
    if p1 is None:
        return p2
    if p2 is None:
        return p1
    (x1, y1), (x2, y2) = p1, p2
    if x1 == x2 and (y1 + y2) % P == 0:
        return None
    if p1 == p2:
        slope = (3 * x1 * x1 + A_WEI) * pow(2 * y1, -1, P) % P
    else:
        slope = (y2 - y1) * pow(x2 - x1, -1, P) % P
    x3 = (slope * slope - x1 - x2) % P
    return (x3, (slope * (x1 - x3) - y1) % P)


def mul(k, point):
    result = None
    while k:
        if k & 1:
            result = add(result, point)
        point = add(point, point)
        k >>= 1
    return result


def keypair():
    d = secrets.randbelow(N - 1) + 1
    return d, mul(d, G)


def point_bytes(point):
    return b"\x04" + point[0].to_bytes(32, "big") + point[1].to_bytes(32, "big")


def public_pem(point):
    """rahasya's KeyValue: armour lines with no newlines around base64 of the SPKI."""
    der = SPKI_PREFIX + point_bytes(point)[1:]
    return "-----BEGIN PUBLIC KEY-----" + base64.b64encode(der).decode() + "-----END PUBLIC KEY-----"


def parse_public(key_value):
    text = key_value.replace("-----BEGIN PUBLIC KEY-----", "").replace("-----END PUBLIC KEY-----", "")
    der = base64.b64decode("".join(text.split()))
    assert len(der) == len(SPKI_PREFIX) + 64 and der.startswith(SPKI_PREFIX), "not a rahasya public key"
    point = (int.from_bytes(der[-64:-32], "big"), int.from_bytes(der[-32:], "big"))
    assert on_curve(point)
    return point


def expiry(hours=24):
    t = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=hours)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


def key_material(point, nonce, hours=24):
    return {"cryptoAlg": "ECDH", "curve": "Curve25519",
            "params": "cipher=AES/GCM/NoPadding;KeyPairGenerator=ECDH",
            "DHPublicKey": {"expiry": expiry(hours), "Parameters": "", "KeyValue": public_pem(point)},
            "Nonce": base64.b64encode(nonce).decode()}


def shared_secret(d, point):
    """BouncyCastle's ECDH: the x-coordinate of d·Q, 32 bytes big-endian."""
    return mul(d, point)[0].to_bytes(32, "big")


def session(d, remote_point, our_nonce, remote_nonce):
    """The AES-256-GCM key and IV: HKDF-SHA256 over the shared secret, salt and IV from the XOR of the nonces."""
    x = bytes(a ^ b for a, b in zip(our_nonce, remote_nonce))
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=x[:20], info=None).derive(shared_secret(d, remote_point))
    return AESGCM(key), x[20:32]


def encrypt(d, remote_point, our_nonce, remote_nonce, data):
    aes, iv = session(d, remote_point, our_nonce, remote_nonce)
    return aes.encrypt(iv, data, None)


def decrypt(d, remote_point, our_nonce, remote_nonce, ciphertext):
    aes, iv = session(d, remote_point, our_nonce, remote_nonce)
    return aes.decrypt(iv, ciphertext, None)
