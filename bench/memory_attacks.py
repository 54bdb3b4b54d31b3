#!/usr/bin/env python3
"""What hostile requests make the broker hold: peak and after-load RSS for each attack on the inbound half.

    python3 bench/memory_attacks.py [--binary PATH] [--simulator PATH] [--label NAME] [--smoke]

Starts the IAM simulator (from `--simulator`, the release build by default: a build made without the
`simulator` feature, as the image is, has none) and the broker with a signing key and a 16 MiB body cap on
loopback, then, one at a time, with RSS sampled every 5 ms from /proc:

1. one 16 MiB `POST /v1/authorize` with no token;
2. one 16 MiB `POST /v1/sign` without `Metadata: true`;
3. eight concurrent 16 MiB `POST /v1/verify-signature`s of a correctly signed body;
4. forty uploads that declare 1 MiB, send 100 bytes and stall (how long until each is cut, and RSS).

Prints one JSON object: idle RSS, and per attack the status codes, the peak RSS above idle, RSS five seconds
after, and (4) the seconds until the uploads were cut. `--binary` measures another build (an older
commit's) with the same script, so before and after come from one run. The figures are in RESULTS.md,
"Memory under hostile requests". Never part of `cargo test`.
"""

import argparse
import json
import os
import socket
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench as b  # noqa: E402

AA = "AA-BENCH"


class Sampler:
    """Samples a process's RSS in the background; `peak()` is the largest seen since `reset()`."""

    def __init__(self, pid):
        self.pid = pid
        self.top = 0
        self.running = True
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        while self.running:
            rss = b.rss_kib(self.pid) or 0
            self.top = max(self.top, rss)
            time.sleep(0.005)

    def reset(self):
        self.top = b.rss_kib(self.pid) or 0

    def peak(self):
        return self.top

    def stop(self):
        self.running = False


def raw(port, head, body_bytes, stall=0.0, chunk=b"x" * 65536, timeout=60):
    """Sends `head` and `body_bytes` of body, optionally stalls, and returns (status, seconds)."""
    started = time.monotonic()
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    status = 0
    try:
        sock.sendall(head)
        left = body_bytes
        try:
            while left > 0:
                n = min(left, len(chunk))
                sock.sendall(chunk[:n])
                left -= n
        except OSError:
            pass
        if stall:
            sock.settimeout(stall)
        data = b""
        try:
            while b"\r\n" not in data:
                more = sock.recv(4096)
                if not more:
                    break
                data += more
        except OSError:
            pass
        if data[9:12].isdigit():
            status = int(data[9:12])
    finally:
        sock.close()
    return status, time.monotonic() - started


def head(path, length, extra=b""):
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {length}\r\n").encode() + extra + b"\r\n"


def measure(binary, simulator, smoke):
    procs = b.Procs()
    workdir = tempfile.mkdtemp(prefix="aa-memory-")
    size = (2 if smoke else 16) * b.MIB
    try:
        sim_proc = procs.start([simulator, "iam-simulator", "--listen", f"127.0.0.1:{b.free_port()}",
                                "--entity", f"{b.ENTITY}={b.SECRET}", "--log-level", "warn"])
        sim = b.Simulator.__new__(b.Simulator)
        sim.proc = sim_proc
        sim.port = int(sim_proc.args[3].rsplit(":", 1)[1])
        sim.base = f"http://127.0.0.1:{sim.port}"
        b.wait_http(sim.base + "/_simulator/stats")

        def cr(method, path, body=None):
            status, answer = b.http(method, sim.base + path, body, {"Content-Type": "application/json"}, timeout=60)
            if status != 200:
                raise RuntimeError(f"{path}: HTTP {status}")
            return answer

        own_kid = json.loads(cr("POST", "/_simulator/cr/entities",
                                json.dumps({"id": b.ENTITY, "role": "FIU"}).encode()))["kid"]
        cr("POST", "/_simulator/cr/entities", json.dumps({"id": AA, "role": "AA"}).encode())
        key_file = os.path.join(workdir, "signing-key.pem")
        with open(key_file, "wb") as f:
            f.write(cr("GET", f"/_simulator/cr/entities/{b.ENTITY}/key"))
        os.chmod(key_file, 0o600)
        broker, url = b.start_broker(procs, sim, workdir, binary=binary, extra=[
            "--signing-key-file", key_file, "--signing-kid", own_kid, "--max-body-bytes", str(16 * b.MIB)])
        b.wait_http(url + "/readyz")
        port = int(url.rsplit(":", 1)[1])
        body = b"{" + b'"pad":"' + b"y" * (size - 10) + b'"}'
        signature = json.loads(cr("POST", f"/_simulator/cr/entities/{AA}/sign", body))["signature"]
        verify = f"/v1/verify-signature?sender={AA}&type=AA"
        # Warm up the CR cache and the allocator with one small check.
        small_sig = json.loads(cr("POST", f"/_simulator/cr/entities/{AA}/sign", b"{}"))["signature"]
        raw(port, head(verify, 2, f"x-jws-signature: {small_sig}\r\n".encode()), 2)
        time.sleep(1)
        sampler = Sampler(broker.pid)
        idle = b.rss_kib(broker.pid)
        out = {"binary": binary, "body_bytes": size, "idle_kib": idle}

        def attack(name, run):
            sampler.reset()
            before = b.rss_kib(broker.pid)
            result = run()
            peak = sampler.peak()
            time.sleep(5)
            out[name] = {"result": result, "peak_above_idle_mib": round((peak - before) / 1024, 1),
                         "after_5s_above_idle_mib": round((b.rss_kib(broker.pid) - idle) / 1024, 1)}
            b.log(f"{name}: {out[name]}")

        attack("authorize_no_token", lambda: raw(port, head("/v1/authorize", size), size)[0])
        attack("sign_no_metadata", lambda: raw(port, head("/v1/sign", size), size)[0])

        def concurrent_checks():
            results = [None] * 8
            sig_header = f"x-jws-signature: {signature}\r\n".encode()

            def one(i):
                results[i] = 0
                try:
                    s = socket.create_connection(("127.0.0.1", port), timeout=60)
                    s.sendall(head(verify, len(body), sig_header) + body)
                    data = s.recv(4096)
                    s.close()
                    results[i] = int(data[9:12]) if data[9:12].isdigit() else 0
                except OSError:
                    pass

            threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            return sorted(results)

        attack("eight_signature_checks", concurrent_checks)

        def stalls():
            count = 10 if smoke else 40
            results = [None] * count
            sig_header = f"x-jws-signature: {small_sig}\r\n".encode()

            def one(i):
                results[i] = raw(port, head(verify, b.MIB, sig_header), 100, stall=20 if smoke else 70)

            threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            return {"statuses": sorted({r[0] for r in results}),
                    "max_seconds_to_cut": round(max(r[1] for r in results), 1)}

        attack("stalled_uploads", stalls)
        sampler.stop()
        return out
    finally:
        procs.stop_all()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--binary", default=b.BROKER)
    parser.add_argument("--simulator", default=b.BROKER)
    parser.add_argument("--label", default="")
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    result = measure(args.binary, args.simulator, args.smoke)
    result["label"] = args.label
    print(json.dumps(result))


if __name__ == "__main__":
    main()
