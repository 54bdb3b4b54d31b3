#!/usr/bin/env python3
"""FI data encryption: decrypt throughput over HTTP beside `openssl speed -evp aes-256-gcm`, key material per
second, the cost split, and memory per request against the ciphertext's size.

Run by bench/run.sh after jws.py (same flags: `--smoke` for a seconds-long check, `--out DIR`). On loopback,
the broker with a KEK: it makes its own key material (`POST /v1/fi/key-material`) and, as an FIP, encrypts
payloads to it (`POST /v1/fi/encrypt`), so the decrypt requests are real ones without a second
implementation. Then, side by side in one run:

1. `POST /v1/fi/decrypt` of 1 KiB (wrk, 8 connections) and of 1 MiB and 16 MiB (one request at a time,
   median of several), as plaintext MiB/s end to end — JSON, base64, ECDH, HKDF and AES-GCM included —
   against `openssl speed -evp aes-256-gcm` at 16 KiB blocks, one thread (target: 16 MiB at >= 0.1x);
2. `POST /v1/fi/key-material` per second (wrk, 16 connections) beside the in-process rate;
3. the cost split in process (`bench-fi-cost`): ECDH and HKDF per request, AES-GCM, base64 and JSON per MiB;
4. memory per request: the broker's peak RSS over its idle RSS during the 16 MiB decrypts, and the heap
   `Fi::decrypt` allocates beyond the body it is given (counted in process), against the ciphertext size.

Adds an `fi` key to results.json and a section to RESULTS.md (replacing the one of an earlier run).
"""

import argparse
import base64
import http.client
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import bench as b

COST = os.path.join(b.RELEASE, "examples", "bench-fi-cost")
POST_LUA = os.path.join(b.ROOT, "bench", "fi_post.lua")
SECTION = "## FI data encryption (`POST /v1/fi/decrypt`, `/v1/fi/key-material`)"
TARGET_RATIO = 0.1
KIB = 1024


def build():
    b.log("building the FI bench helper")
    subprocess.run(["cargo", "build", "--release", "--locked", "--example", "bench-fi-cost"], cwd=b.ROOT, check=True)
    subprocess.run(["cargo", "build", "--release", "--locked", "--bin", "aa-token-broker"], cwd=b.ROOT, check=True)


def openssl_gcm(seconds):
    """One thread's AES-256-GCM bytes per second at 16 KiB blocks (`openssl speed -evp aes-256-gcm`)."""
    out = subprocess.run(["openssl", "speed", "-seconds", str(seconds), "-bytes", "16384", "-evp", "aes-256-gcm"],
                         capture_output=True, text=True, check=True).stdout
    version = subprocess.run(["openssl", "version"], capture_output=True, text=True).stdout.strip()
    for line in out.splitlines():
        if line.lower().startswith("aes-256-gcm"):
            rate = line.split()[-1]
            return {"bytes_per_sec": float(rate.rstrip("k")) * 1000, "version": version}
    raise RuntimeError("openssl speed printed no aes-256-gcm line:\n" + out)


def post(connection, path, body):
    connection.request("POST", path, body, {"Metadata": "true", "Content-Type": "application/json"})
    response = connection.getresponse()
    data = response.read()
    if response.status != 200:
        raise RuntimeError(f"{path}: HTTP {response.status} {data[:200]}")
    return data


def decrypt_body(connection, size):
    """A real decrypt request of `size` bytes: the broker's key material, and the broker as FIP encrypting to it."""
    made = json.loads(post(connection, "/v1/fi/key-material", b"{}"))
    data = base64.b64encode(os.urandom(size))
    encrypted = json.loads(post(connection, "/v1/fi/encrypt",
                                b'{"KeyMaterial":' + json.dumps(made["KeyMaterial"]).encode() + b',"data":"' + data + b'"}'))
    return json.dumps({"keyHandle": made["keyHandle"], "KeyMaterial": encrypted["KeyMaterial"],
                       "encryptedData": encrypted["encryptedData"]}).encode()


def wrk(url, connections, duration, body_file=""):
    env = dict(os.environ, REPORT_LUA=b.REPORT_LUA, BODY_FILE=body_file)
    command = ["wrk", "-t", str(min(2, connections)), "-c", str(connections), "-d", f"{duration}s",
               "--timeout", "10s", "-s", POST_LUA, url]
    out = subprocess.run(command, capture_output=True, text=True, check=True, env=env).stdout
    for line in out.splitlines():
        if line.startswith("{"):
            result = json.loads(line)
            result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
            return result
    raise RuntimeError("wrk printed no report:\n" + out)


def load(procs, workdir, args):
    sim = b.Simulator(procs)
    kek = os.path.join(workdir, "kek")
    with open(kek, "wb") as f:
        f.write(os.urandom(32))
    os.chmod(kek, 0o600)
    broker, url = b.start_broker(procs, sim, workdir, extra=["--fi-kek-file", kek])
    b.wait_http(url + "/readyz")
    port = int(url.rsplit(":", 1)[1])
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    out = {"http": {}}
    # 1 KiB under load.
    small = os.path.join(workdir, "small.json")
    with open(small, "wb") as f:
        f.write(decrypt_body(connection, KIB))
    wrk(url + "/v1/fi/decrypt", 8, 1, small)
    runs = [wrk(url + "/v1/fi/decrypt", 8, args.duration, small) for _ in range(args.runs)]
    rps = statistics.median(r["rps"] for r in runs)
    out["http"]["1KiB"] = {"rps": rps, "mib_per_sec": rps * KIB / b.MIB,
                           "p50_us": statistics.median(r["p50_us"] for r in runs),
                           "errors": sum(sum(r["errors"].values()) for r in runs)}
    # 1 MiB and 16 MiB, one at a time; RSS before, and its peak during the decrypts alone (the kernel's
    # high-water mark is reset once the request bodies have been made).
    # A fresh connection: the first sat idle through the wrk runs, past the broker's 5 s keep-alive.
    connection.close()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    bodies = {mib: decrypt_body(connection, mib * b.MIB) for mib in args.big_sizes}
    idle_kib = b.rss_kib(broker.pid)
    with open(f"/proc/{broker.pid}/clear_refs", "w") as f:
        f.write("5")
    for mib, body in bodies.items():
        samples = []
        for _ in range(args.big_rounds):
            started = time.perf_counter()
            post(connection, "/v1/fi/decrypt", body)
            samples.append(time.perf_counter() - started)
        seconds = statistics.median(samples)
        out["http"][f"{mib}MiB"] = {"ms": seconds * 1e3, "mib_per_sec": mib / seconds, "body_bytes": len(body)}
    peak_kib = b.rss_kib(broker.pid, "VmHWM")
    largest = max(args.big_sizes)
    ciphertext = largest * b.MIB + 16
    out["rss"] = {"idle_kib": idle_kib, "peak_kib": peak_kib, "largest_mib": largest,
                  "per_ciphertext_byte": (peak_kib - idle_kib) * 1024 / ciphertext}
    # Key material under load.
    wrk(url + "/v1/fi/key-material", 16, 1)
    runs = [wrk(url + "/v1/fi/key-material", 16, args.duration) for _ in range(args.runs)]
    out["http"]["key_material_per_sec"] = statistics.median(r["rps"] for r in runs)
    connection.close()
    procs.stop(broker)
    return out


def markdown(fi, command, date):
    o, c, h = fi["openssl"], fi["in_process"], fi["http"]
    openssl_mib = o["bytes_per_sec"] / b.MIB
    lines = [SECTION, "",
             f"Produced by `{command}` (bench/fi.py) on {date}. The broker with 2 worker threads and one crypto thread;"
             f" `openssl speed -evp aes-256-gcm -bytes 16384` ({o['version']}), one thread, in the same run:"
             f" **{openssl_mib:.0f} MiB/s**.", "",
             "| decrypt over HTTP (JSON, base64, ECDH, HKDF, AES-GCM) | plaintext MiB/s | ÷ openssl | detail |",
             "|---|---|---|---|"]
    small = h["1KiB"]
    lines.append(f"| 1 KiB, wrk 8 connections | {small['mib_per_sec']:.1f} | {small['mib_per_sec'] / openssl_mib:.3f} |"
                 f" {small['rps']:.0f} req/s, p50 {small['p50_us']:.0f} µs, {small['errors']} errors |")
    for key in sorted((k for k in h if k.endswith("MiB")), key=lambda k: int(k[:-3])):
        r = h[key]
        lines.append(f"| {key[:-3]} MiB, one at a time | {r['mib_per_sec']:.0f} | **{r['mib_per_sec'] / openssl_mib:.2f}** |"
                     f" {r['ms']:.1f} ms per request, body {r['body_bytes'] / b.MIB:.1f} MiB |")
    t = fi["target"]
    lines += ["", f"Target (the largest payload, end to end, ≥ {TARGET_RATIO}× openssl's AES-256-GCM): **{t['ratio']:.2f}**"
              f" ({'met' if t['met'] else 'missed'}).", "",
              f"Key material: **{h['key_material_per_sec']:.0f}/s** over HTTP (wrk, 16 connections; a key pair, a nonce,"
              f" the handle sealed under the KEK), {c['key_material_per_sec']:.0f}/s in process on one thread.", "",
              "Cost split (in process, one thread):", "",
              "| step | cost |", "|---|---|",
              f"| ECDH (one unclamped scalar multiplication and the shift to Weierstrass x) | {c['ecdh_us']:.1f} µs per request |",
              f"| HKDF-SHA256 and the AES key schedule | {c['hkdf_us']:.1f} µs per request |",
              f"| AES-256-GCM (ring) | {c['aes_gcm_mib_per_sec']:.0f} MiB/s |",
              f"| base64 decode, in place | {c['base64_decode_mib_per_sec']:.0f} MiB/s of data |",
              f"| base64 encode, in place | {c['base64_encode_mib_per_sec']:.0f} MiB/s of data |",
              f"| JSON parse around the payload (serde_json) | {c['json_parse_mib_per_sec']:.0f} MiB/s of data |", "",
              "Memory per request (ciphertext = plaintext + 16-byte tag):", "",
              "| payload | request body | heap beyond the body (counted) | held ÷ ciphertext | in process ms |", "|---|---|---|---|---|"]
    for d in c["decrypt_in_process"]:
        lines.append(f"| {d['plaintext_bytes']} B | {d['body_bytes']} B | {d['extra_heap_bytes']} B |"
                     f" {d['held_per_ciphertext_byte']:.2f} | {d['ms']:.2f} |")
    r = fi["rss"]
    lines += ["", f"Over HTTP, the broker's RSS rose from {r['idle_kib'] / 1024:.1f} MiB before the decrypts to a peak of"
              f" {r['peak_kib'] / 1024:.1f} MiB during the {r['largest_mib']} MiB decrypts:"
              f" {r['per_ciphertext_byte']:.2f} bytes per ciphertext byte (the body buffer, which the answer reuses,"
              " plus hyper's read buffers and the allocator's slack)."]
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--out", default=os.path.join(b.ROOT, "bench"))
    args, _ = parser.parse_known_args()
    if args.smoke:
        args.runs, args.duration, args.seconds = 1, 1, 1
        args.big_sizes, args.big_rounds, args.cost_mib = [1, 2], 2, 2
    else:
        args.runs, args.duration, args.seconds = 3, 5, 3
        args.big_sizes, args.big_rounds, args.cost_mib = [1, 16], 7, 16
    build()
    procs = b.Procs()
    workdir = tempfile.mkdtemp(prefix="aa-broker-fi-bench-")
    try:
        fi = load(procs, workdir, args)
    finally:
        procs.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)
    fi["openssl"] = openssl_gcm(args.seconds)
    fi["in_process"] = json.loads(subprocess.run([COST, str(args.cost_mib)], capture_output=True, text=True,
                                                 check=True).stdout)
    largest = f"{max(args.big_sizes)}MiB"
    ratio = fi["http"][largest]["mib_per_sec"] / (fi["openssl"]["bytes_per_sec"] / b.MIB)
    fi["target"] = {"payload": largest, "ratio": ratio, "limit": TARGET_RATIO, "met": ratio >= TARGET_RATIO}
    command = "bench/run.sh" + (" --smoke" if args.smoke else "")
    suffix = "-smoke" if args.smoke else ""
    os.makedirs(args.out, exist_ok=True)
    results_path = os.path.join(args.out, f"results{suffix}.json")
    results = json.load(open(results_path)) if os.path.exists(results_path) else {}
    results["fi"] = fi
    with open(results_path, "w") as f:
        json.dump(results, f, indent=2)
    date = subprocess.run(["date", "-u", "+%Y-%m-%d %H:%M UTC"], capture_output=True, text=True).stdout.strip()
    section = markdown(fi, command, date)
    path = os.path.join(args.out, f"RESULTS{suffix}.md")
    text = open(path).read() if os.path.exists(path) else ""
    at = text.find(SECTION)
    if at >= 0:
        following = text.find("\n## ", at + len(SECTION))
        text = text[:at] + section + ("" if following < 0 else text[following + 1:])
    else:
        text = text.rstrip("\n") + ("\n\n" if text else "") + section
    with open(path, "w") as f:
        f.write(text)
    print(section)
    if fi["http"]["1KiB"]["errors"]:
        b.log(f"fi bench: {fi['http']['1KiB']['errors']} errors")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
