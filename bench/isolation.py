#!/usr/bin/env python3
"""Token serving under signing load: does `POST /v1/sign` take `GET /v1/token` down with it?

Run by bench/run.sh after jws.py (same flags: `--smoke` for a seconds-long check, `--out DIR`). On loopback
against the simulator, for each broker binary measured (the release build of this tree by default; `--binary
LABEL=PATH`, repeatable, names others, e.g. the build before a change): `GET /v1/token` with wrk (8
connections, keep-alive, `Metadata: true`)

  (a) alone;
  (b) while `POST /v1/sign` is saturated by a second wrk (8 connections, 1 KiB body, jws_post.lua), started a
      second before the token run and stopped after it; every sign answer is counted by status (a full
      crypto queue answers 503);
  (c) while an outside process burns one core on RSA (`openssl speed rsa2048`), the same work done where
      the broker's scheduling cannot touch it: what a token caller gets when signing costs a core and no more;

and, for what the isolation costs the signers, `POST /v1/sign` alone under the same load as in (b).

Rounds are interleaved (every binary, every condition, then the next round), so drift on a shared machine
hits all alike; medians are reported, with the ratios req/s (b)/(a) (target >= 0.5) and p99 (b)/(c) (target
<= 2). Adds an `isolation` key to results.json and a section to RESULTS.md (replacing the one of an earlier
run).
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import bench as b
import jws as j

SECTION = "## Token serving under signing load"
SIGN_LUA = os.path.join(b.ROOT, "bench", "isolation_sign.lua")
CONNECTIONS = 8
RPS_TARGET = 0.5  # req/s while signing is saturated, over req/s alone: at least this
P99_TARGET = 2.0  # p99 while signing is saturated, over p99 while an outside process burns a core: at most this
CONDITIONS = ("alone", "sign", "burn")  # of the token runs; "sign_alone" is the signing load without them


def parse_binaries(values):
    binaries = []
    for value in values:
        label, sep, path = value.partition("=")
        if not sep or not label or not path:
            raise SystemExit(f"--binary: expected LABEL=PATH, got {value!r}")
        if not os.access(path, os.X_OK):
            raise SystemExit(f"--binary: {path} is not an executable file")
        binaries.append((label, os.path.abspath(path)))
    return binaries


def reports(out):
    """Merges the JSON lines a wrk script printed (report.lua's, and isolation_sign.lua's statuses)."""
    merged = {}
    for line in out.splitlines():
        if line.startswith("{"):
            merged.update(json.loads(line))
    if "requests" not in merged:
        raise RuntimeError("wrk printed no report:\n" + out)
    merged["rps"] = merged["requests"] / (merged["duration_us"] / 1e6)
    return merged


def start_sign_load(url, seconds):
    env = dict(os.environ, REPORT_LUA=b.REPORT_LUA, POST_LUA=j.POST_LUA, BODY_BYTES=str(len(j.BODY)), JWS="")
    command = ["wrk", "-t", "2", "-c", str(CONNECTIONS), "-d", f"{seconds}s", "--timeout", "5s", "-s", SIGN_LUA,
               url + "/v1/sign"]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def sign_report(load, seconds):
    out, err = load.communicate(timeout=seconds + 30)
    if load.returncode != 0:
        raise RuntimeError(f"sign wrk failed ({load.returncode}): {err}")
    sign = reports(out)
    sign["statuses"] = {str(k): v for k, v in sign.get("statuses", {}).items()}
    # Let queued signatures finish before the next run measures anything.
    time.sleep(0.5)
    return sign


def measure(procs, url, condition, args):
    """One token run under one condition; the sign load's own figures come back with it for (b)."""
    if condition == "sign_alone":
        return {"sign": sign_report(start_sign_load(url, args.duration), args.duration)}
    if condition == "alone":
        return {"token": b.wrk(url + "/v1/token", CONNECTIONS, args.duration)}
    span = args.lead + args.duration + args.tail
    if condition == "sign":
        load = start_sign_load(url, span)
        time.sleep(args.lead)
        token = b.wrk(url + "/v1/token", CONNECTIONS, args.duration)
        return {"token": token, "sign": sign_report(load, span)}
    burn = procs.start(["openssl", "speed", "-seconds", str(span), "rsa2048"])
    time.sleep(args.lead)
    token = b.wrk(url + "/v1/token", CONNECTIONS, args.duration)
    still_running = burn.poll() is None
    procs.stop(burn)
    if not still_running:
        raise RuntimeError("openssl speed ended before the token run did")
    return {"token": token}


def start(procs, sim, workdir, binary, key_file, kid):
    broker, url = b.start_broker(procs, sim, workdir, binary=binary,
                                 extra=["--signing-key-file", key_file, "--signing-kid", kid])
    b.wait_http(url + "/readyz")
    status, _ = b.http("GET", url + "/v1/token", headers={"Metadata": "true"})
    if status != 200:
        raise RuntimeError(f"{binary}: /v1/token answered {status}")
    status, _ = b.http("POST", url + "/v1/sign", j.BODY, {"Metadata": "true"})
    if status != 200:
        raise RuntimeError(f"{binary}: /v1/sign answered {status}")
    return broker, url


def load(procs, workdir, binaries, args):
    sim = b.Simulator(procs, binary=binaries[0][1])
    kid = json.loads(j.cr(sim, "POST", "/_simulator/cr/entities",
                          json.dumps({"id": b.ENTITY, "role": "FIU"}).encode()))["kid"]
    key_file = os.path.join(workdir, "signing-key.pem")
    with open(key_file, "wb") as f:
        f.write(j.cr(sim, "GET", f"/_simulator/cr/entities/{b.ENTITY}/key"))
    os.chmod(key_file, 0o600)
    brokers = {}
    for label, binary in binaries:
        brokers[label] = start(procs, sim, workdir, binary, key_file, kid)
        b.wrk(brokers[label][1] + "/v1/token", CONNECTIONS, 1)  # warm-up
    samples = {label: {c: [] for c in CONDITIONS + ("sign_alone",)} for label, _ in binaries}
    for run in range(args.runs):
        # Interleaved: every binary under every condition in each round. The binaries take turns going first.
        order = binaries[run % len(binaries):] + binaries[:run % len(binaries)]
        for label, _ in order:
            for condition in CONDITIONS + ("sign_alone",):
                result = measure(procs, brokers[label][1], condition, args)
                samples[label][condition].append(result)
                line = []
                if "token" in result:
                    t = result["token"]
                    line.append(f"token {t['rps']:.0f} req/s p50 {t['p50_us']} us p99 {t['p99_us']} us")
                if "sign" in result:
                    s = result["sign"]
                    line.append(f"sign {s['rps']:.0f} req/s p99 {s['p99_us']} us, statuses {s['statuses']}")
                b.log(f"isolation run {run + 1}/{args.runs} {label} {condition:>10}: " + "; ".join(line))
    for broker, _ in brokers.values():
        procs.stop(broker)
    return {label: summarise(s) for label, s in samples.items()}


def summarise(samples):
    row = {}
    for condition in CONDITIONS:
        runs = [s["token"] for s in samples[condition]]
        row[condition] = {key: statistics.median(r[key] for r in runs) for key in ("rps", "p50_us", "p99_us", "max_us")}
        row[condition]["errors"] = sum(sum(r["errors"].values()) for r in runs)
        row[condition]["runs_rps"] = [r["rps"] for r in runs]
        row[condition]["runs_p99_us"] = [r["p99_us"] for r in runs]
    for key, condition in (("sign_load", "sign"), ("sign_alone", "sign_alone")):
        signs = [s["sign"] for s in samples[condition]]
        statuses = {}
        for s in signs:
            for status, n in s["statuses"].items():
                statuses[status] = statuses.get(status, 0) + n
        row[key] = {
            "rps": statistics.median(s["rps"] for s in signs),
            "ok_per_sec": statistics.median(s["statuses"].get("200", 0) / (s["duration_us"] / 1e6) for s in signs),
            "p50_us": statistics.median(s["p50_us"] for s in signs),
            "p99_us": statistics.median(s["p99_us"] for s in signs),
            "statuses": statuses,
            "socket_errors": sum(v for s in signs for k, v in s["errors"].items() if k != "status"),
        }
    rps_ratio = row["sign"]["rps"] / row["alone"]["rps"]
    p99_ratio = row["sign"]["p99_us"] / row["burn"]["p99_us"]
    row["ratios"] = {
        "rps_sign_vs_alone": rps_ratio,
        "p99_sign_vs_burn": p99_ratio,
        # p50 moves far less than p99 with the machine's outside load: a second view of the same question.
        "p50_sign_vs_burn": row["sign"]["p50_us"] / row["burn"]["p50_us"],
        "rps_burn_vs_alone": row["burn"]["rps"] / row["alone"]["rps"],
        # The same ratios round by round, to show how far the noise moves them.
        "runs_rps_sign_vs_alone": [s["token"]["rps"] / a["token"]["rps"]
                                   for s, a in zip(samples["sign"], samples["alone"])],
        "runs_p99_sign_vs_burn": [s["token"]["p99_us"] / c["token"]["p99_us"]
                                  for s, c in zip(samples["sign"], samples["burn"])],
    }
    row["targets"] = {
        "rps_sign_vs_alone": {"ratio": rps_ratio, "limit": f">= {RPS_TARGET}", "met": rps_ratio >= RPS_TARGET},
        "p99_sign_vs_burn": {"ratio": p99_ratio, "limit": f"<= {P99_TARGET}", "met": p99_ratio <= P99_TARGET},
    }
    return row


def rounds(n):
    return "one round" if n == 1 else f"medians of {n} rounds"


def markdown(iso, command, date):
    lines = [SECTION, "",
             f"Produced by `{command}` (bench/isolation.py) on {date} ({iso['machine']}; load average"
             f" {iso['loadavg_before']:.1f} before, {iso['loadavg_after']:.1f} after). `GET /v1/token` with wrk"
             f" (2 threads, {CONNECTIONS} connections, {iso['duration_s']} s): (a) alone, (b) while `POST /v1/sign` is"
             f" saturated by a second wrk (2 threads, {CONNECTIONS} connections, 1 KiB body, a 2048-bit key), (c) while"
             " `openssl speed rsa2048` burns one core outside the broker. Brokers with their default worker threads"
             f" (one per core); {rounds(iso['runs'])}, interleaved across conditions and builds.", "",
             "| build | req/s (a) | req/s (b) | req/s (c) | p50 µs (a / b / c) | p99 µs (a) | p99 µs (b) | p99 µs (c) |"
             " **req/s b/a** (≥ 0.5) | **p99 b/c** (≤ 2) | p50 b/c |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for label, row in iso["builds"].items():
        a, s, c, r = row["alone"], row["sign"], row["burn"], row["ratios"]
        lines.append(f"| {label} | {a['rps']:.0f} | {s['rps']:.0f} | {c['rps']:.0f} |"
                     f" {a['p50_us']:.0f} / {s['p50_us']:.0f} / {c['p50_us']:.0f} |"
                     f" {a['p99_us']:.0f} | {s['p99_us']:.0f} | {c['p99_us']:.0f} |"
                     f" {r['rps_sign_vs_alone']:.2f} | {r['p99_sign_vs_burn']:.2f} | {r['p50_sign_vs_burn']:.2f} |")
    lines += ["", "The signers' side: `POST /v1/sign` during (b), and alone (the same wrk, no token load).", "",
              "| build | answers during (b): 200 / 503 / other | sign req/s (b) | sign p99 µs (b) |"
              " sign req/s alone | sign p99 µs alone |", "|---|---|---|---|---|---|"]
    for label, row in iso["builds"].items():
        sl, sa = row["sign_load"], row["sign_alone"]
        other = sum(n for status, n in sl["statuses"].items() if status not in ("200", "503")) + sl["socket_errors"]
        lines.append(f"| {label} | {sl['statuses'].get('200', 0)} / {sl['statuses'].get('503', 0)} / {other} |"
                     f" {sl['ok_per_sec']:.0f} | {sl['p99_us']:.0f} | {sa['ok_per_sec']:.0f} | {sa['p99_us']:.0f} |")
    lines += ["", "Round by round (req/s b/a; p99 b/c):", ""]
    for label, row in iso["builds"].items():
        r = row["ratios"]
        lines.append(f"- {label}: " + ", ".join(f"{x:.2f}" for x in r["runs_rps_sign_vs_alone"]) + "; "
                     + ", ".join(f"{x:.2f}" for x in r["runs_p99_sign_vs_burn"]))
    errors = {label: sum(row[c]["errors"] for c in CONDITIONS) for label, row in iso["builds"].items()}
    lines += ["", "Token errors (all conditions): " + ", ".join(f"{k} {v}" for k, v in errors.items()) + "."]
    return "\n".join(lines) + "\n"


def write_section(path, section):
    """Replaces this bench's section of RESULTS.md (from its title to the next `## `), or appends it."""
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
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--out", default=os.path.join(b.ROOT, "bench"))
    parser.add_argument("--binary", action="append", default=[], metavar="LABEL=PATH",
                        help="a broker binary to measure (repeatable); default: this tree's release build")
    parser.add_argument("--runs", type=int, help="rounds (default 3; 1 with --smoke)")
    args, _ = parser.parse_known_args()
    if args.smoke:
        runs, args.duration, args.lead, args.tail = 1, 1, 1, 1
    else:
        runs, args.duration, args.lead, args.tail = 3, 5, 1, 1
    args.runs = args.runs or runs
    binaries = parse_binaries(args.binary)
    if not binaries:
        b.log("building the release binary")
        subprocess.run(["cargo", "build", "--release", "--locked", "--bin", "aa-token-broker"], cwd=b.ROOT, check=True)
        binaries = [("this build", b.BROKER)]
    for tool in ("wrk", "openssl"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed (bench/run.sh installs wrk; openssl is Debian's openssl)")
    iso = {"runs": args.runs, "duration_s": args.duration, "connections": CONNECTIONS,
           "machine": f"{os.uname().machine}, {os.cpu_count()} cores",
           "binaries": dict(binaries), "loadavg_before": os.getloadavg()[0]}
    procs = b.Procs()
    workdir = tempfile.mkdtemp(prefix="aa-broker-isolation-bench-")
    try:
        iso["builds"] = load(procs, workdir, binaries, args)
    finally:
        procs.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)
    iso["loadavg_after"] = os.getloadavg()[0]
    command = "bench/run.sh" + (" --smoke" if args.smoke else "")
    if args.binary:
        command = "python3 bench/isolation.py" + (" --smoke" if args.smoke else "") + "".join(
            f" --binary {label}=…" for label, _ in binaries)
    suffix = "-smoke" if args.smoke else ""
    os.makedirs(args.out, exist_ok=True)
    results_path = os.path.join(args.out, f"results{suffix}.json")
    results = json.load(open(results_path)) if os.path.exists(results_path) else {}
    results["isolation"] = iso
    with open(results_path, "w") as f:
        json.dump(results, f, indent=2)
    date = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    section = markdown(iso, command, date)
    write_section(os.path.join(args.out, f"RESULTS{suffix}.md"), section)
    print(section)
    for label, row in iso["builds"].items():
        for name, t in row["targets"].items():
            if not t["met"]:
                b.log(f"target missed: {label} {name} {t['ratio']:.2f} (limit {t['limit']})")
    # A smoke run proves the bench works; only correctness fails it: no token errors, and every sign answer a
    # 200 or a 503 (busy), nothing else.
    if args.smoke:
        bad = {}
        for label, row in iso["builds"].items():
            token_errors = sum(row[c]["errors"] for c in CONDITIONS)
            sl = row["sign_load"]
            odd = sum(n for status, n in sl["statuses"].items() if status not in ("200", "503")) + sl["socket_errors"]
            if token_errors or odd or not sl["statuses"].get("200"):
                bad[label] = {"token_errors": token_errors, "sign_statuses": sl["statuses"],
                              "sign_socket_errors": sl["socket_errors"]}
        if bad:
            b.log(f"isolation smoke failed: {bad}")
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
