#!/usr/bin/env python3
"""Incoming-token verification: `GET /v1/verify` under load against the floor, and the cost of a first sight.

Run by bench/run.sh after bench.py (same flags: `--smoke` for a seconds-long check, `--out DIR`). On
loopback against the simulator: the broker verifies one AA entity token, sent in `Authorization: Bearer`
on every request (an already-seen token: the answer comes from the result cache), against the floor (a bare
hyper server answering the broker's own 200 body from memory) in the same run, interleaved; then
`bench-verify-cost` times the verification of tokens never seen before, in process. Adds a `verify` key to
results.json and a section to RESULTS.md (replacing the one of an earlier run).
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

import bench as b

AA, AA_SECRET = "AA-BENCH", "aa-bench-secret"
COST = os.path.join(b.RELEASE, "examples", "bench-verify-cost")
SECTION = "## Verifying incoming tokens (`GET /v1/verify`)"
TARGET_RATIO = 0.9


def wrk(url, connections, duration, headers):
    command = ["wrk", "-t", str(min(2, connections)), "-c", str(connections), "-d", f"{duration}s",
               "--timeout", "5s", "-s", b.REPORT_LUA]
    for header in headers:
        command += ["-H", header]
    out = subprocess.run(command + [url], capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        if line.startswith("{"):
            result = json.loads(line)
            result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
            return result
    raise RuntimeError("wrk printed no report:\n" + out)


def build():
    b.log("building the verify bench helpers")
    # Examples first, the broker last and alone (see bench.py: examples switch on dev-dependency features).
    subprocess.run(["cargo", "build", "--release", "--locked", "--example", "bench-floor",
                    "--example", "bench-verify-cost"], cwd=b.ROOT, check=True)
    subprocess.run(["cargo", "build", "--release", "--locked", "--bin", "aa-token-broker"], cwd=b.ROOT, check=True)


def entity_token(sim, entity, secret):
    status, body = b.http("POST", sim.iam_url + "/v1/entity/token/generate", f"id={entity}&secret={secret}".encode(),
                          {"Content-Type": "application/x-www-form-urlencoded"})
    if status != 200:
        raise RuntimeError(f"no token for {entity}: HTTP {status}")
    return json.loads(body)["accessToken"]


def metric(url, sample):
    text = b.http("GET", url + "/metrics")[1].decode()
    for line in text.splitlines():
        if line.startswith(sample):
            return float(line[len(sample):].strip())
    return 0.0


def load(procs, workdir, args):
    sim = b.Simulator(procs)
    sim.add_entity(AA, AA_SECRET)
    broker, broker_url = b.start_broker(procs, sim, workdir)
    b.wait_http(broker_url + "/readyz")
    token = entity_token(sim, AA, AA_SECRET)
    header = f"Authorization: Bearer {token}"
    status, body = b.http("GET", broker_url + "/v1/verify", headers={"Authorization": f"Bearer {token}"})
    if status != 200:
        raise RuntimeError(f"/v1/verify answered {status}: {body[:200]}")
    body_file = os.path.join(workdir, "verified.json")
    with open(body_file, "wb") as f:
        f.write(body)
    floor_port = b.free_port()
    # The floor sends the same answer: the body and the identity headers a proxy passes upstream.
    identity = json.loads(body)
    procs.start([b.FLOOR, f"127.0.0.1:{floor_port}", body_file,
                 f"x-aa-entity-id:{identity['entityId']}", f"x-aa-role:{identity['role']}"])
    floor_url = f"http://127.0.0.1:{floor_port}"
    b.wait_http(floor_url + "/v1/verify")
    targets = {"broker": broker_url + "/v1/verify", "floor": floor_url + "/v1/verify"}
    for url in targets.values():
        wrk(url, 8, 1, [header])  # warm-up
    table = {}
    for connections in args.connections:
        runs = {name: [] for name in targets}
        for run in range(args.runs):
            for name, url in targets.items():
                runs[name].append(wrk(url, connections, args.duration, [header]))
                b.log(f"verify {connections:>3} conns run {run + 1}/{args.runs} {name:>6}: "
                      f"{runs[name][-1]['rps']:.0f} req/s p99 {runs[name][-1]['p99_us']} us")
        row = {}
        for name, samples in runs.items():
            row[name] = {key: statistics.median(s[key] for s in samples)
                         for key in ("rps", "p50_us", "p99_us", "p999_us", "max_us")}
            row[name]["errors"] = sum(sum(s["errors"].values()) for s in samples)
        row["broker_vs_floor"] = {key: row["broker"][key] / row["floor"][key] if row["floor"][key] else None
                                  for key in ("rps", "p50_us", "p99_us")}
        table[str(connections)] = row
    verified = metric(broker_url, 'aa_broker_verifications_total{outcome="valid",reason="verified"}')
    cached = metric(broker_url, 'aa_broker_verifications_total{outcome="valid",reason="cached"}')
    procs.stop(broker)
    return {"throughput": table, "signature_checks": verified, "cached_answers": cached,
            "token_bytes": len(token), "answer_bytes": len(body)}


def first_sight(args):
    out = subprocess.run([COST, str(args.tokens)], capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def markdown(verify, command, date):
    t = verify["throughput"]
    lines = [SECTION, "",
             f"Produced by `{command}` (bench/verify.py) on {date}. An AA entity token in `Authorization: Bearer` on every"
             f" request: the token was verified once ({verify['signature_checks']:.0f} signature check), every later"
             f" answer ({verify['cached_answers']:.0f}) came from the result cache. The floor answers the broker's own"
             f" {verify['answer_bytes']}-byte 200 body from memory, with the same `X-AA-Entity-Id` and `X-AA-Role`"
             f" headers; interleaved runs, medians.", "",
             "| conns | server | req/s | p50 µs | p99 µs | p99.9 µs | max µs | errors |", "|---|---|---|---|---|---|---|---|"]
    for conns, row in t.items():
        for name in ("broker", "floor"):
            r = row[name]
            lines.append(f"| {conns} | {name} | {r['rps']:.0f} | {r['p50_us']:.0f} | {r['p99_us']:.0f} | "
                         f"{r['p999_us']:.0f} | {r['max_us']:.0f} | {r['errors']} |")
    lines += ["", "| conns | broker/floor req/s | p50 | p99 |", "|---|---|---|---|"]
    for conns, row in t.items():
        r = row["broker_vs_floor"]
        lines.append(f"| {conns} | {r['rps']:.2f} | {r['p50_us']:.2f} | {r['p99_us']:.2f} |")
    target = verify["target"]
    lines += ["", f"Target: already-seen tokens at ≥ {TARGET_RATIO}× the floor's req/s at {target['connections']} connections:"
              f" **{target['ratio']:.2f}** ({'met' if target['met'] else 'missed'}).", ""]
    fs = verify["first_sight"]
    lines += [f"First sight, in process (`bench-verify-cost {fs['tokens']}`: {fs['tokens']} distinct {fs['token_bytes']}-byte"
              " tokens, each verified once, then once more):", "",
              "| | median µs | p90 µs | p99 µs | mean µs |", "|---|---|---|---|---|"]
    for key, label in (("first_sight_us", "first sight (parse, RS256, claims, cache insert)"),
                       ("signature_only_us", "RS256 signature check alone"),
                       ("repeated_sight_us", "repeated sight (SHA-256, cache hit)")):
        r = fs[key]
        lines.append(f"| {label} | {r['median']:.1f} | {r['p90']:.1f} | {r['p99']:.1f} | {r['mean']:.1f} |")
    return "\n".join(lines) + "\n"


def write_section(path, section):
    text = open(path).read() if os.path.exists(path) else ""
    at = text.find(SECTION)
    if at >= 0:
        following = text.find("\n## ", at + len(SECTION))
        text = text[:at] + section + ("" if following < 0 else text[following + 1:])
    else:
        text = text.rstrip("\n") + ("\n\n" if text else "") + section
    with open(path, "w") as f:
        f.write(text)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--out", default=os.path.join(b.ROOT, "bench"))
    args, _ = parser.parse_known_args()
    if args.smoke:
        args.runs, args.duration, args.connections, args.tokens = 1, 1, [64], 200
    else:
        args.runs, args.duration, args.connections, args.tokens = 3, 10, [1, 64], 2000
    build()
    procs = b.Procs()
    workdir = tempfile.mkdtemp(prefix="aa-broker-verify-bench-")
    os.chmod(workdir, 0o755)
    try:
        verify = load(procs, workdir, args)
    finally:
        procs.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)
    verify["first_sight"] = first_sight(args)
    row = verify["throughput"]["64"]
    verify["target"] = {"connections": 64, "ratio": row["broker_vs_floor"]["rps"], "limit": TARGET_RATIO,
                        "met": row["broker_vs_floor"]["rps"] >= TARGET_RATIO}
    command = "bench/run.sh" + (" --smoke" if args.smoke else "")
    suffix = "-smoke" if args.smoke else ""
    os.makedirs(args.out, exist_ok=True)
    results_path = os.path.join(args.out, f"results{suffix}.json")
    results = json.load(open(results_path)) if os.path.exists(results_path) else {}
    results["verify"] = verify
    with open(results_path, "w") as f:
        json.dump(results, f, indent=2)
    date = results.get("date") or subprocess.run(["date", "-u", "+%Y-%m-%d %H:%M UTC"], capture_output=True,
                                                 text=True).stdout.strip()
    section = markdown(verify, command, date)
    write_section(os.path.join(args.out, f"RESULTS{suffix}.md"), section)
    print(section)
    if not verify["target"]["met"]:
        b.log(f"target missed: verify req/s vs floor at 64 conns {verify['target']['ratio']:.2f} (limit {TARGET_RATIO})")
    # A smoke run proves the bench works; only correctness fails it: every answer a 200, one signature check.
    errors = sum(row["broker"]["errors"] for row in verify["throughput"].values())
    if args.smoke and (errors or verify["signature_checks"] != 1):
        b.log(f"verify smoke failed: {errors} broker errors, {verify['signature_checks']} signature checks")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
