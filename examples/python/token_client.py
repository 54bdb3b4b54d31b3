#!/usr/bin/env python3
"""Getting the entity token from the aa-token-broker sidecar with Python's standard library alone.

- One opener for the whole process (reuse it), with proxies turned off: the broker is on loopback and a
  corporate HTTP_PROXY must never see the request (set NO_PROXY=127.0.0.1,localhost for other clients).
- A timeout on every call, and the status checked.
- When a peer answers 401 for a token, POST .../refresh once and retry with the token it returns.

Run: AA_TOKEN_BROKER_URL=http://127.0.0.1:7373 python3 token_client.py
"""

import json
import os
import urllib.error
import urllib.request

BROKER = os.environ.get("AA_TOKEN_BROKER_URL", "http://127.0.0.1:7373").rstrip("/")
TIMEOUT_SECONDS = 2
# One opener, reused; no proxy for the loopback broker.
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class BrokerError(Exception):
    pass


def _broker(method, path):
    request = urllib.request.Request(BROKER + path, method=method, headers={"Metadata": "true"})
    try:
        with _opener.open(request, timeout=TIMEOUT_SECONDS) as response:
            return json.load(response)
    except urllib.error.HTTPError as e:
        # 503 token_unavailable carries Retry-After; the body says why (never a secret).
        raise BrokerError(f"broker answered {e.code}: {e.read(300).decode(errors='replace')}") from None
    except OSError as e:
        raise BrokerError(f"broker unreachable at {BROKER}: {e}") from None


def get_token():
    """The current token: {"accessToken", "tokenType", "expiresIn", "expiresAt", "entityId"}. Ask per request."""
    return _broker("GET", "/v1/token")


def refresh_token():
    """A new token, for when a peer rejected the current one (the broker rate-limits this per entity)."""
    return _broker("POST", "/v1/token/refresh")


def call_peer(url, body):
    """POSTs JSON to an AA network peer with the entity token; on 401 refreshes once and retries."""
    token = get_token()["accessToken"]
    for attempt in (1, 2):
        request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST", headers={
            "Content-Type": "application/json",
            "Authorization": f"Bearer {token}",
        })
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return json.load(response)
        except urllib.error.HTTPError as e:
            if e.code == 401 and attempt == 1:
                token = refresh_token()["accessToken"]
                continue
            raise


if __name__ == "__main__":
    token = get_token()
    # Prints facts about the token, never the token.
    print(f"python: entityId={token['entityId']} tokenLength={len(token['accessToken'])}")
    refreshed = refresh_token()
    print(f"python: refreshed entityId={refreshed['entityId']} tokenLength={len(refreshed['accessToken'])}")
