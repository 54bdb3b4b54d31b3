"""What the interoperability checks share: the pass/fail record, free loopback ports, plain HTTP requests
with the standard library, waiting for a server, and base64url without padding."""

import base64
import socket
import time
import urllib.error
import urllib.request

failures = []


def check(condition, what, detail=None):
    print(("ok   " if condition else "FAIL ") + what, flush=True)
    if not condition:
        if detail is not None:
            print(f"     {detail}", flush=True)
        failures.append(what)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(method, url, body=None, headers=None):
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def wait(url, status=200):
    deadline = time.time() + 20
    while time.time() < deadline:
        try:
            if request("GET", url)[0] == status:
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{url} never answered {status}")


def b64(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()
