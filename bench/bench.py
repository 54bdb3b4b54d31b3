#!/usr/bin/env python3
"""The aa-token-broker benchmark: everything on loopback against the IAM simulator, side by side in one run.

Measures throughput and latency of GET /v1/token against a bare hyper server (the floor) and nginx serving
the same bytes from a file; memory (idle, peak under 1024 connections, after the load, with 10 and 100
entities); cold start; upstream calls for 1 to 10000 concurrent cold requests; client latency across token
rollovers; binary size and clean build time; and memory and throughput of the build the container image
ships (static, musl), when the musl target is installed. Writes bench/results.json and bench/RESULTS.md.

Run it with bench/run.sh (which installs wrk and nginx-light); `--smoke` is a seconds-long version for CI.
"""

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RELEASE = os.path.join(ROOT, "target", "release")
BROKER = os.path.join(RELEASE, "aa-token-broker")
FLOOR = os.path.join(RELEASE, "examples", "bench-floor")
LOAD = os.path.join(RELEASE, "examples", "bench-load")
MUSL_TARGET = "x86_64-unknown-linux-musl"
SHIPPED = os.path.join(ROOT, "target", MUSL_TARGET, "release", "aa-token-broker")
REPORT_LUA = os.path.join(ROOT, "bench", "report.lua")
ENTITY = "FIU-BENCH"
SECRET = "bench-secret-not-a-real-one"
MIB = 1024 * 1024


def log(message):
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(method, url, body=None, headers=None, timeout=5):
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except OSError:
        return 0, b""


def wait_http(url, status=200, timeout=15, headers=None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if http("GET", url, headers=headers)[0] == status:
            return
        time.sleep(0.01)
    raise RuntimeError(f"{url} never answered {status}")


def rss_kib(pid, field="VmRSS"):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return None


class Procs:
    """Processes started by the benchmark, stopped at the end whatever happens."""

    def __init__(self):
        self.procs = []

    def start(self, args, **kwargs):
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kwargs)
        self.procs.append(proc)
        return proc

    def stop(self, proc):
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def stop_all(self):
        for proc in self.procs:
            self.stop(proc)


class Simulator:
    def __init__(self, procs, binary=BROKER):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.proc = procs.start([binary, "iam-simulator", "--listen", f"127.0.0.1:{self.port}",
                                 "--entity", f"{ENTITY}={SECRET}", "--log-level", "warn"])
        wait_http(self.base + "/_simulator/stats")

    @property
    def iam_url(self):
        return self.base + "/iam"

    def settings(self, **changes):
        status, body = http("GET", self.base + "/_simulator/settings")
        current = json.loads(body)
        current.update(changes)
        http("PUT", self.base + "/_simulator/settings", json.dumps(current).encode(), {"Content-Type": "application/json"})

    def add_entity(self, entity_id, secret):
        body = json.dumps({"id": entity_id, "secret": secret}).encode()
        http("POST", self.base + "/_simulator/entities", body, {"Content-Type": "application/json"})

    def token_calls(self):
        return json.loads(http("GET", self.base + "/_simulator/stats")[1])["calls"]["entityToken"]


def start_broker(procs, sim, workdir, extra=(), config=None, binary=BROKER):
    port = free_port()
    args = [binary, "serve", "--listen", f"127.0.0.1:{port}", "--log-level", "warn", "--max-connections", "12000"]
    if config:
        args += ["--config", config]
    else:
        secret_file = os.path.join(workdir, "secret")
        with open(secret_file, "w") as f:
            f.write(SECRET)
        os.chmod(secret_file, 0o600)
        args += ["--iam-url", sim.iam_url, "--entity-id", ENTITY, "--secret-file", secret_file]
    args += list(extra)
    proc = procs.start(args)
    return proc, f"http://127.0.0.1:{port}"


def wrk(url, connections, duration, threads=2):
    threads = min(threads, connections)
    out = subprocess.run(
        ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{duration}s", "--timeout", "5s",
         "-H", "Metadata: true", "-s", REPORT_LUA, url],
        capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        if line.startswith("{"):
            result = json.loads(line)
            result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
            return result
    raise RuntimeError("wrk printed no report:\n" + out)


def start_nginx(procs, workdir, body_file):
    port = free_port()
    conf = os.path.join(workdir, "nginx.conf")
    with open(conf, "w") as f:
        f.write(f"""
worker_processes 2;
pid {workdir}/nginx.pid;
error_log {workdir}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {workdir}/nginx-body;
    proxy_temp_path {workdir}/nginx-proxy;
    fastcgi_temp_path {workdir}/nginx-fastcgi;
    uwsgi_temp_path {workdir}/nginx-uwsgi;
    scgi_temp_path {workdir}/nginx-scgi;
    keepalive_requests 1000000;
    server {{
        listen 127.0.0.1:{port};
        location = /v1/token {{
            default_type application/json;
            add_header Cache-Control no-store;
            alias {body_file};
        }}
    }}
}}
""")
    proc = procs.start(["nginx", "-c", conf, "-g", "daemon off;"])
    wait_http(f"http://127.0.0.1:{port}/v1/token")
    return proc, f"http://127.0.0.1:{port}"


def kept_sections(path, fresh):
    """The sections of the RESULTS file at `path` that this run does not write (those other bench scripts
    add, run on their own or later), to carry over after it: a full run must not erase their figures."""
    if not os.path.exists(path):
        return ""
    with open(path) as f:
        old = f.read()
    ours = {line for line in fresh.splitlines() if line.startswith("## ")}
    kept, current = [], None
    for line in old.splitlines(keepends=True):
        if line.startswith("## "):
            current = None if line.rstrip("\n") in ours else []
            if current is not None:
                kept.append(current)
        if current is not None:
            current.append(line)
    return "".join("\n" + "".join(section).strip("\n") + "\n" for section in kept)


def median_of(runs, key):
    return statistics.median(r[key] for r in runs)


def throughput(procs, sim, workdir, args, results):
    broker, broker_url = start_broker(procs, sim, workdir)
    wait_http(broker_url + "/readyz")
    status, body = http("GET", broker_url + "/v1/token", headers={"Metadata": "true"})
    assert status == 200
    body_file = os.path.join(workdir, "token.json")
    with open(body_file, "wb") as f:
        f.write(body)
    os.chmod(body_file, 0o644)
    results["memory"]["idle_after_first_token_kib"] = rss_kib(broker.pid)
    floor_port = free_port()
    procs.start([FLOOR, f"127.0.0.1:{floor_port}", body_file])
    floor_url = f"http://127.0.0.1:{floor_port}"
    wait_http(floor_url + "/v1/token")
    _, nginx_url = start_nginx(procs, workdir, body_file)
    targets = {"broker": broker_url + "/v1/token", "floor": floor_url + "/v1/token", "nginx": nginx_url + "/v1/token"}
    for url in targets.values():
        wrk(url, 8, 1)  # warm-up
    table = {}
    for connections in args.connections:
        runs = {name: [] for name in targets}
        for run in range(args.runs):
            # Interleaved, so drift on a noisy machine hits every target alike.
            for name, url in targets.items():
                runs[name].append(wrk(url, connections, args.duration))
                log(f"{connections:>5} conns run {run + 1}/{args.runs} {name:>6}: "
                    f"{runs[name][-1]['rps']:.0f} req/s p99 {runs[name][-1]['p99_us']} us")
        row = {}
        for name, samples in runs.items():
            row[name] = {key: median_of(samples, key) for key in ("rps", "p50_us", "p99_us", "p999_us", "max_us")}
            row[name]["errors"] = sum(sum(s["errors"].values()) for s in samples)
        for ref in ("floor", "nginx"):
            row[f"broker_vs_{ref}"] = {
                key: row["broker"][key] / row[ref][key] if row[ref][key] else None
                for key in ("rps", "p50_us", "p99_us", "p999_us")
            }
        table[str(connections)] = row
        if connections == max(args.connections):
            results["memory"]["peak_during_max_connections_kib"] = rss_kib(broker.pid, "VmHWM")
    results["throughput"] = table
    log(f"waiting {args.settle}s after the load")
    time.sleep(args.settle)
    results["memory"]["after_load_kib"] = rss_kib(broker.pid)
    results["memory"]["after_load_wait_s"] = args.settle
    procs.stop(broker)


def shipped_build(procs, sim, workdir, args, results):
    """The static musl build the Dockerfile ships: its allocator is musl's, not glibc's, so its memory and
    CPU differ from the build measured above. Same load, the broker alone, against the same floor."""
    reason = None
    if shutil.which("musl-gcc") is None:
        reason = "musl-gcc not installed (Debian package musl-tools)"
    elif MUSL_TARGET not in subprocess.run(["rustup", "target", "list", "--installed"], capture_output=True,
                                           text=True).stdout:
        reason = f"rust target {MUSL_TARGET} not installed"
    if reason:
        log(f"skipping the shipped (musl) build: {reason}")
        results["shipped"] = {"skipped": reason}
        return
    log("building the shipped (static musl, no simulator) binary")
    # As the Dockerfile builds it: without the simulator. `sim` runs from the development build.
    subprocess.run(["cargo", "build", "--release", "--locked", "--no-default-features", "--target", MUSL_TARGET,
                    "--bin", "aa-token-broker"], cwd=ROOT, check=True)
    broker, broker_url = start_broker(procs, sim, workdir, binary=SHIPPED)
    wait_http(broker_url + "/readyz")
    http("GET", broker_url + "/v1/token", headers={"Metadata": "true"})
    shipped = {"stripped_bytes": os.path.getsize(SHIPPED), "idle_after_first_token_kib": rss_kib(broker.pid)}
    floor_port = free_port()
    procs.start([FLOOR, f"127.0.0.1:{floor_port}", os.path.join(workdir, "token.json")])
    floor_url = f"http://127.0.0.1:{floor_port}/v1/token"
    wait_http(floor_url)
    runs = {"broker": [], "floor": []}
    for run in range(args.runs):
        for name, url in (("broker", broker_url + "/v1/token"), ("floor", floor_url)):
            runs[name].append(wrk(url, 64, args.duration))
            log(f"   64 conns run {run + 1}/{args.runs} musl broker vs floor, {name:>6}: {runs[name][-1]['rps']:.0f} req/s")
    shipped["rps_64"] = {name: median_of(samples, "rps") for name, samples in runs.items()}
    shipped["rps_64"]["broker_vs_floor"] = shipped["rps_64"]["broker"] / shipped["rps_64"]["floor"]
    for run in range(args.runs):
        wrk(broker_url + "/v1/token", max(args.connections), args.duration)
    shipped["peak_during_max_connections_kib"] = rss_kib(broker.pid, "VmHWM")
    shipped["max_connections"] = max(args.connections)
    log(f"waiting {args.settle}s after the load")
    time.sleep(args.settle)
    shipped["after_load_kib"] = rss_kib(broker.pid)
    procs.stop(broker)
    results["shipped"] = shipped


def many_entities(procs, sim, workdir, results):
    for count in (10, 100):
        lines = [f'iam_url = "{sim.iam_url}"', 'listen = "127.0.0.1:0"', ""]
        for i in range(count):
            entity_id = f"FIU-MANY-{i:03d}"
            secret = f"secret-{i:03d}"
            sim.add_entity(entity_id, secret)
            path = os.path.join(workdir, f"secret-{count}-{i}")
            with open(path, "w") as f:
                f.write(secret)
            lines += ["[[entities]]", f'id = "{entity_id}"', f'secret_file = "{path}"', ""]
        config = os.path.join(workdir, f"entities-{count}.toml")
        with open(config, "w") as f:
            f.write("\n".join(lines))
        port = free_port()
        proc = procs.start([BROKER, "serve", "--config", config, "--listen", f"127.0.0.1:{port}", "--log-level", "warn"])
        wait_http(f"http://127.0.0.1:{port}/readyz")
        time.sleep(0.5)
        results["memory"][f"idle_{count}_entities_kib"] = rss_kib(proc.pid)
        procs.stop(proc)


def cold_start(procs, sim, workdir, args, results):
    samples = []
    for _ in range(args.runs * 2 + 1):
        port = free_port()
        secret_file = os.path.join(workdir, "secret")
        out = subprocess.run(
            [LOAD, "coldstart", f"http://127.0.0.1:{port}/", BROKER, "serve", "--listen", f"127.0.0.1:{port}",
             "--iam-url", sim.iam_url, "--entity-id", ENTITY, "--secret-file", secret_file, "--log-level", "warn"],
            capture_output=True, text=True, check=True).stdout
        samples.append(json.loads(out))
    # One IAM round trip on this machine, for the target "ready within 20 ms plus one round trip".
    round_trips = []
    for _ in range(20):
        t = time.perf_counter()
        http("POST", sim.iam_url + "/v1/entity/token/generate", f"id={ENTITY}&secret={SECRET}".encode(),
             {"Content-Type": "application/x-www-form-urlencoded"})
        round_trips.append((time.perf_counter() - t) * 1e3)
    results["cold_start"] = {
        "ready_ms": statistics.median(s["ready_ms"] for s in samples),
        "first_token_ms": statistics.median(s["first_token_ms"] for s in samples),
        "iam_round_trip_ms": statistics.median(round_trips),
        "samples": len(samples),
    }


def coalescing(procs, sim, workdir, args, results):
    sim.settings(latencyMs=500)
    table = {}
    for n in args.coalesce:
        before = sim.token_calls()
        broker, url = start_broker(procs, sim, workdir)
        # The first fetch is in flight for 500 ms; every request below arrives while it is.
        wait_http(url + "/healthz")
        out = subprocess.run([LOAD, "cold", url + "/v1/token", str(n)], capture_output=True, text=True, check=True).stdout
        load = json.loads(out)
        calls = sim.token_calls() - before
        table[str(n)] = {"upstream_calls": calls, "statuses": load["statuses"], "slowest_ms": load["slowest_ms"]}
        log(f"coalescing {n:>5} cold requests: {calls} upstream call(s), statuses {load['statuses']}")
        procs.stop(broker)
    sim.settings(latencyMs=0)
    results["coalescing"] = table


def rollover(procs, sim, workdir, args, results):
    out = {}
    for label, lifetime in (("steady", 86400), ("rollover", 6)):
        sim.settings(tokenLifetimeSecs=lifetime, latencyMs=0)
        broker, url = start_broker(procs, sim, workdir)
        wait_http(url + "/readyz")
        sim.settings(latencyMs=1000)
        calls_before = sim.token_calls()
        result = wrk(url + "/v1/token", 64, args.rollover_duration)
        result["upstream_calls"] = sim.token_calls() - calls_before
        out[label] = result
        log(f"{label}: {result['rps']:.0f} req/s p99 {result['p99_us']} us max {result['max_us']} us, "
            f"{result['upstream_calls']} upstream calls, errors {result['errors']}")
        procs.stop(broker)
        sim.settings(tokenLifetimeSecs=86400, latencyMs=0)
    out["token_lifetime_s"] = 6
    out["iam_latency_ms"] = 1000
    out["p99_ratio"] = out["rollover"]["p99_us"] / out["steady"]["p99_us"]
    out["max_ratio"] = out["rollover"]["max_us"] / out["steady"]["max_us"]
    results["rollover"] = out


def build(args, results):
    log("building the release binary and the bench helpers")
    # The helpers first, the broker last and alone: building examples switches on dev-dependency features
    # (tokio's test-util), and the broker measured must be the one users run.
    subprocess.run(["cargo", "build", "--release", "--locked", "--example", "bench-floor", "--example", "bench-load"],
                   cwd=ROOT, check=True)
    subprocess.run(["cargo", "build", "--release", "--locked", "--bin", "aa-token-broker"], cwd=ROOT, check=True)
    results["binary"] = {"stripped_bytes": os.path.getsize(BROKER)}
    if args.clean_build:
        target = tempfile.mkdtemp(prefix="aa-broker-clean-build-")
        log("timing a clean release build (this takes minutes)")
        t = time.time()
        subprocess.run(["cargo", "build", "--release", "--locked", "--bin", "aa-token-broker"], cwd=ROOT, check=True,
                       env=dict(os.environ, CARGO_TARGET_DIR=target), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        results["binary"]["clean_release_build_s"] = time.time() - t
        shutil.rmtree(target, ignore_errors=True)


def check_targets(results):
    t = results["throughput"].get("64")
    m = results["memory"]
    checks = []

    def add(name, value, limit, ok):
        checks.append({"target": name, "value": value, "limit": limit, "met": bool(ok)})

    if t:
        add("req/s at 64 conns vs floor", t["broker_vs_floor"]["rps"], ">= 0.9", t["broker_vs_floor"]["rps"] >= 0.9)
        add("req/s at 64 conns vs nginx", t["broker_vs_nginx"]["rps"], ">= 1.5", t["broker_vs_nginx"]["rps"] >= 1.5)
        add("p99 at 64 conns vs floor", t["broker_vs_floor"]["p99_us"], "<= 1.2", t["broker_vs_floor"]["p99_us"] <= 1.2)
    idle = m.get("idle_after_first_token_kib")
    if idle:
        add("idle RSS (MiB)", idle / 1024, "<= 8", idle <= 8 * 1024)
    peak = m.get("peak_during_max_connections_kib")
    if peak:
        add("peak RSS under 1024 conns (MiB)", peak / 1024, "<= 16", peak <= 16 * 1024)
    after = m.get("after_load_kib")
    if after and idle:
        add("RSS after load minus idle (MiB)", (after - idle) / 1024, "<= 1", after - idle <= 1024)
    cs = results.get("cold_start")
    if cs:
        add("ready after exec minus one IAM round trip (ms)", cs["ready_ms"] - cs["iam_round_trip_ms"], "<= 20",
            cs["ready_ms"] - cs["iam_round_trip_ms"] <= 20)
    co = results.get("coalescing")
    if co:
        worst = max(v["upstream_calls"] for v in co.values())
        add("upstream calls per cold burst (worst)", worst, "== 1", worst == 1)
    shipped = results.get("shipped", {})
    if "after_load_kib" in shipped:
        idle, peak, after = (shipped[k] for k in ("idle_after_first_token_kib", "peak_during_max_connections_kib",
                                                  "after_load_kib"))
        add("shipped (musl) build: idle RSS (MiB)", idle / 1024, "<= 8", idle <= 8 * 1024)
        add("shipped (musl) build: peak RSS under 1024 conns (MiB)", peak / 1024, "<= 16", peak <= 16 * 1024)
        add("shipped (musl) build: RSS after load minus idle (MiB)", (after - idle) / 1024, "<= 1", after - idle <= 1024)
    size = results["binary"]["stripped_bytes"]
    add("stripped binary (MB)", size / 1e6, "<= 10", size <= 10e6)
    results["targets"] = checks


def markdown(results):
    lines = [
        "# Benchmark results",
        "",
        f"Produced by `{results['command']}` on {results['date']} ({results['machine']}).",
        f"Medians of {results['runs']} interleaved runs of {results['duration_s']} s each; wrk with 2 threads,"
        " keep-alive, `Metadata: true`; all servers on loopback with 2 worker threads.",
        "",
        "## Targets",
        "",
        "| target | measured | limit | met |",
        "|---|---|---|---|",
    ]
    for c in results["targets"]:
        value = c["value"]
        shown = f"{value:.2f}" if isinstance(value, float) else str(value)
        lines.append(f"| {c['target']} | {shown} | {c['limit']} | {'yes' if c['met'] else '**no**'} |")
    lines += ["", "## Throughput and latency of `GET /v1/token`", "",
              "| conns | server | req/s | p50 µs | p99 µs | p99.9 µs | max µs | errors |", "|---|---|---|---|---|---|---|---|"]
    for conns, row in results["throughput"].items():
        for name in ("broker", "floor", "nginx"):
            r = row[name]
            lines.append(f"| {conns} | {name} | {r['rps']:.0f} | {r['p50_us']:.0f} | {r['p99_us']:.0f} | "
                         f"{r['p999_us']:.0f} | {r['max_us']:.0f} | {r['errors']} |")
    lines += ["", "| conns | ratio | req/s | p50 | p99 | p99.9 |", "|---|---|---|---|---|---|"]
    for conns, row in results["throughput"].items():
        for ref in ("floor", "nginx"):
            r = row[f"broker_vs_{ref}"]
            lines.append(f"| {conns} | broker/{ref} | {r['rps']:.2f} | {r['p50_us']:.2f} | {r['p99_us']:.2f} | {r['p999_us']:.2f} |")
    m = results["memory"]
    lines += ["", "## Memory (RSS)", "", "| when | MiB |", "|---|---|"]
    for key, label in (("idle_after_first_token_kib", "idle, after the first token"),
                       ("peak_during_max_connections_kib", "peak (VmHWM) after the 1024-connection runs"),
                       ("after_load_kib", f"{m.get('after_load_wait_s', 0)} s after the load stopped"),
                       ("idle_10_entities_kib", "idle with 10 entities"),
                       ("idle_100_entities_kib", "idle with 100 entities")):
        if key in m:
            lines.append(f"| {label} | {m[key] / 1024:.1f} |")
    cs = results.get("cold_start", {})
    if cs:
        lines += ["", "## Cold start", "",
                  f"Exec to `/readyz` 200: **{cs['ready_ms']:.1f} ms**; to the first token served: {cs['first_token_ms']:.1f} ms"
                  f" (one IAM round trip here: {cs['iam_round_trip_ms']:.1f} ms; median of {cs['samples']})."]
    co = results.get("coalescing", {})
    if co:
        lines += ["", "## Coalescing", "", "Concurrent cold requests while the first fetch is in flight (IAM latency 500 ms):", "",
                  "| requests | upstream calls | statuses | slowest ms |", "|---|---|---|---|"]
        for n, row in co.items():
            lines.append(f"| {n} | {row['upstream_calls']} | {row['statuses']} | {row['slowest_ms']:.0f} |")
    ro = results.get("rollover")
    if ro:
        lines += ["", "## Rollover", "",
                  f"64 connections, IAM latency {ro['iam_latency_ms']} ms; tokens of {ro['token_lifetime_s']} s (rolling over"
                  " every ~4 s) against 24 h tokens:", "",
                  "| run | req/s | p99 µs | max µs | upstream calls | errors |", "|---|---|---|---|---|---|"]
        for label in ("steady", "rollover"):
            r = ro[label]
            lines.append(f"| {label} | {r['rps']:.0f} | {r['p99_us']} | {r['max_us']} | {r['upstream_calls']} | {sum(r['errors'].values())} |")
        lines.append(f"\np99 ratio rollover/steady: {ro['p99_ratio']:.2f}; max ratio: {ro['max_ratio']:.2f}.")
    sh = results.get("shipped", {})
    if "skipped" in sh:
        lines += ["", "## Shipped build (static musl)", "", f"Not measured: {sh['skipped']}."]
    elif sh:
        lines += ["", "## Shipped build (static musl)", "",
                  "The binary the Dockerfile builds: statically linked against musl, whose allocator returns freed",
                  "memory to the system and costs more CPU per allocation than glibc's.", "",
                  "| | measured |", "|---|---|",
                  f"| req/s at 64 conns (median), broker / glibc floor | {sh['rps_64']['broker']:.0f} / {sh['rps_64']['floor']:.0f}"
                  f" ({sh['rps_64']['broker_vs_floor']:.2f}) |",
                  f"| RSS idle after the first token | {sh['idle_after_first_token_kib'] / 1024:.1f} MiB |",
                  f"| RSS peak (VmHWM) after the {sh['max_connections']}-connection runs"
                  f" | {sh['peak_during_max_connections_kib'] / 1024:.1f} MiB |",
                  f"| RSS {results['memory'].get('after_load_wait_s', 0)} s after the load stopped | {sh['after_load_kib'] / 1024:.1f} MiB |",
                  f"| stripped binary | {sh['stripped_bytes'] / 1e6:.2f} MB |"]
    b = results["binary"]
    lines += ["", "## Binary", "", f"Stripped release binary: {b['stripped_bytes'] / 1e6:.2f} MB."]
    if "clean_release_build_s" in b:
        lines.append(f"Clean release build: {b['clean_release_build_s']:.0f} s.")
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="a seconds-long run that only proves the bench works")
    parser.add_argument("--out", default=os.path.join(ROOT, "bench"), help="where results.json and RESULTS.md go")
    parser.add_argument("--shipped", action=argparse.BooleanOptionalAction, default=None,
                        help="also measure the static musl build (default: in full runs only)")
    args = parser.parse_args()
    if args.smoke:
        args.runs, args.duration, args.connections, args.settle = 1, 1, [1, 64], 1
        args.coalesce, args.rollover_duration, args.clean_build = [1, 100], 3, False
    else:
        args.runs, args.duration, args.connections, args.settle = 3, 10, [1, 64, 1024], 60
        args.coalesce, args.rollover_duration, args.clean_build = [1, 100, 1000, 10000], 30, True
    if args.shipped is None:
        args.shipped = not args.smoke
    results = {
        "command": "bench/run.sh" + (" --smoke" if args.smoke else ""),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.release()}",
        "runs": args.runs,
        "duration_s": args.duration,
        "memory": {},
    }
    build(args, results)
    procs = Procs()
    workdir = tempfile.mkdtemp(prefix="aa-broker-bench-")
    # nginx's workers drop root and must read token.json; the secret files inside stay 0600.
    os.chmod(workdir, 0o755)
    try:
        sim = Simulator(procs)
        throughput(procs, sim, workdir, args, results)
        many_entities(procs, sim, workdir, results)
        cold_start(procs, sim, workdir, args, results)
        coalescing(procs, sim, workdir, args, results)
        rollover(procs, sim, workdir, args, results)
        if args.shipped:
            shipped_build(procs, sim, workdir, args, results)
    finally:
        procs.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)
    check_targets(results)
    suffix = "-smoke" if args.smoke else ""
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, f"results{suffix}.json"), "w") as f:
        json.dump(results, f, indent=2)
    path = os.path.join(args.out, f"RESULTS{suffix}.md")
    text = markdown(results)
    kept = kept_sections(path, text)
    with open(path, "w") as f:
        f.write(text + kept)
    print(text)
    failures = [c for c in results["targets"] if not c["met"]]
    for c in failures:
        log(f"target missed: {c['target']}: {c['value']} (limit {c['limit']})")
    # A smoke run proves the bench works; only correctness (coalescing, no errors) fails it.
    if args.smoke:
        broken = [n for n, row in results["coalescing"].items() if row["upstream_calls"] != 1]
        errors = sum(row["broker"]["errors"] for row in results["throughput"].values())
        if broken or errors:
            log(f"smoke failed: coalescing broken for {broken}, {errors} broker errors")
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
