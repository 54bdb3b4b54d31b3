#!/usr/bin/env python3
"""Checks that every metric the chart's alerts and dashboard use is one the broker really exports.

Usage: check_metrics.py BROKER_BINARY RENDERED.yaml [RENDERED.yaml ...]

Starts `aa-token-broker demo` (the built-in IAM simulator, no credentials; its entity signs too) on a free
loopback port and scrapes /metrics once it is ready and BEFORE any request: every counter the rules and the
dashboard use must already be there (at 0), so that dashboards and `increase()` see it before its first
event. Then it verifies a token (the realm key set is fetched at first use) and scrapes again, for the
gauges that describe a key set held. Compares the metric names with those in every PrometheusRule
expression and every Grafana dashboard query found in the rendered manifests. Histogram suffixes (_bucket, _sum,
_count) and counter suffixes (_total) are accounted for. Names from kube-state-metrics are allowed only
from the explicit list below. Exits 1 listing any unknown name.
"""

import json
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import yaml

# kube-state-metrics series the rules use; anything else must come from the broker.
KUBE_STATE_METRICS = {"kube_job_status_failed", "kube_job_owner"}

PROMQL_WORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool",
    "offset", "inf", "nan",
    # Aggregation operators, which may be followed by `by (...)` rather than a parenthesis.
    "sum", "min", "max", "avg", "count", "group", "stddev", "stdvar", "topk", "bottomk", "quantile",
    "count_values",
}
# Clauses whose parenthesised lists hold label names, not metrics.
LABEL_LISTS = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")


def metric_names(expr):
    """The metric names in a PromQL expression (a small lexer: enough for the queries written here)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)            # string literals
    expr = re.sub(r"\{[^}]*\}", "", expr)                       # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)                      # range and subquery durations
    expr = LABEL_LISTS.sub(r"\1", expr)                         # by (...), on (...), group_left (...)
    expr = re.sub(r"\$\{?\w+\}?", "", expr)                     # Grafana variables
    expr = re.sub(r"label_values\(\s*([A-Za-z_:][\w:]*)\s*,\s*\w+\s*\)", r"\1", expr)
    names = set()
    for match in re.finditer(r"(?<![\w.])([A-Za-z_:][\w:]*)(\s*\()?", expr):
        name, call = match.group(1), match.group(2)
        if call or name.lower() in PROMQL_WORDS or re.fullmatch(r"\d+[smhdwy]", name):
            continue
        names.add(name)
    return names


def exported(text):
    """Every series name a scrape can show: sample names, plus the suffixes of declared families."""
    names = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, family, kind = line.split(" ", 3)
            names.add(family)
            if kind == "counter":
                names.add(family + "_total")
            if kind == "histogram":
                names.update(family + s for s in ("_bucket", "_sum", "_count"))
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(url, method="GET", headers=None):
    req = urllib.request.Request(url, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def scrape(binary):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    demo = subprocess.Popen([binary, "demo", "--listen", f"127.0.0.1:{port}", "--log-level", "warn"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                if request(f"{base}/readyz")[0] == 200:
                    break
            except OSError:
                pass
            if demo.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the demo did not become ready: {demo.stderr.read() if demo.poll() is not None else 'timeout'}")
            time.sleep(0.1)
        # No request before the scrape: what a dashboard sees on a fresh pod.
        status, at_start = request(f"{base}/metrics")
        assert status == 200, status
        # A key set held: verify the demo's own token.
        status, token = request(f"{base}/v1/token", headers={"Metadata": "true", "Accept": "text/plain"})
        assert status == 200, status
        status, body = request(f"{base}/v1/verify", headers={"Authorization": f"Bearer {token}"})
        assert status == 200, body
        status, later = request(f"{base}/metrics")
        assert status == 200, status
        return at_start, later
    finally:
        demo.terminate()
        demo.wait(timeout=15)


def queries(paths):
    """(where, expr) for every alert expression and dashboard query in the rendered manifests."""
    found = []
    for path in paths:
        with open(path) as f:
            for doc in yaml.safe_load_all(f):
                if not doc:
                    continue
                if doc.get("kind") == "PrometheusRule":
                    for group in doc["spec"]["groups"]:
                        for rule in group["rules"]:
                            found.append((f"{path}: alert {rule.get('alert')}", rule["expr"]))
                if doc.get("kind") == "ConfigMap" and doc["metadata"].get("labels", {}).get("grafana_dashboard"):
                    for name, body in doc.get("data", {}).items():
                        dashboard = json.loads(body)
                        for panel in dashboard.get("panels", []):
                            for target in panel.get("targets", []):
                                found.append((f"{path}: {name} panel {panel['title']!r}", target["expr"]))
                        for variable in dashboard.get("templating", {}).get("list", []):
                            if variable.get("type") == "query":
                                found.append((f"{path}: {name} variable {variable['name']}", variable["query"]))
    return found


def main(binary, paths):
    at_start, later = scrape(binary)
    from_start = exported(at_start)
    available = from_start | exported(later)
    found = queries(paths)
    alerts = [q for q in found if ": alert " in q[0]]
    panels = [q for q in found if ": alert " not in q[0]]
    if len(alerts) < 5 or len(panels) < 5:
        print(f"expected alerts and dashboard queries in {paths}, found {len(alerts)} and {len(panels)}")
        return 1
    unknown = []
    used = set()
    for where, expr in found:
        for name in metric_names(expr):
            used.add(name)
            if name not in available and name not in KUBE_STATE_METRICS:
                unknown.append(f"{where}: {name}")
            elif name.endswith("_total") and name not in from_start and name not in KUBE_STATE_METRICS:
                unknown.append(f"{where}: {name} (a counter with no series before its first event)")
    if unknown:
        print("metrics used but not exported by the broker:\n  " + "\n  ".join(unknown))
        return 1
    print(f"{len(used)} metric names in {len(alerts)} alert expressions and {len(panels)} dashboard queries "
          f"all exist ({len(available)} series names scraped from the demo)")
    return 0


if __name__ == "__main__":
    if len(sys.argv) < 3:
        print(__doc__)
        sys.exit(2)
    sys.exit(main(sys.argv[1], sys.argv[2:]))
