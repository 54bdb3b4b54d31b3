#!/usr/bin/env python3
"""Writes link/hot-functions.txt: the functions a serving broker runs, hottest first, for the linker to
place together (build.rs says why).

Builds the release binary as `cargo build --release` does, with a link map (where the linker put each
function: the binary itself is stripped, and a build that kept its symbols would be another build, with
other names), runs it under callgrind against the simulator — startup and the first token, then token,
verify, health and metrics requests — and lists every function of the binary that ran: first those the
requests ran, by instructions, then those only startup ran. Needs valgrind, callgrind_control and wrk.

Run it after changes that rename or add much code on these paths, or after a toolchain or Cargo.lock
update (symbol names carry hashes that change with them); it prints how many names of the old list the
new build still has, and `cargo build --release` then links with the new list.

    python3 link/update-order.py
"""

import bisect
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORK = os.path.join(ROOT, "target", "order")
MAP = os.path.join(WORK, "link.map")
BUILT = os.path.join(ROOT, "target", "release", "aa-token-broker")
BINARY = os.path.join(WORK, "aa-token-broker")
ORDER = os.path.join(ROOT, "link", "hot-functions.txt")
SIM_PORT, BROKER_PORT = 17680, 17673
HEADER = """\
# The functions a serving broker runs, hottest first: the linker places them together (build.rs).
# Written by link/update-order.py: {count} functions, {kib} KiB of code. A name a build no longer has is
# skipped.
"""


def log(message):
    print(f"[order] {message}", file=sys.stderr, flush=True)


def get(url, headers=None, data=None):
    request = urllib.request.Request(url, headers=headers or {}, data=data)
    with urllib.request.urlopen(request, timeout=5) as response:
        return response.read()


def wait(url, headers=None):
    for _ in range(300):
        try:
            return get(url, headers)
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"no answer from {url}")


def wrk(url, header, seconds=2):
    subprocess.run(["wrk", "-t1", "-c8", f"-d{seconds}s", "-H", header, url], check=True, stdout=subprocess.DEVNULL)


def text_functions(path):
    """(start, size, name) of every function in `.text`, by start, from lld's map. Its columns: VMA, LMA,
    size and alignment, then the name, indented by what it is: an output section, an input section (the
    file and section a piece came from) or a symbol."""
    output_section, symbol = 49, 65
    functions = []
    in_text = False
    with open(path) as f:
        for line in f:
            fields = line.split()
            if len(fields) != 5 or not fields[0][0].isalnum():
                continue
            name_at = line.find(fields[4], output_section)
            if name_at == output_section:
                in_text = fields[4] == ".text"
            elif in_text and name_at == symbol:
                functions.append((int(fields[0], 16), int(fields[2], 16), fields[4]))
    functions.sort()
    return functions


def instruction_costs(path, binary):
    """Instructions per address of `binary` (as linked: callgrind takes the load address off) in one
    callgrind dump, written with --dump-instr=yes --dump-line=no --compress-pos=no --compress-strings=no."""
    current_object = None
    skip_next = False
    costs = {}
    with open(path) as f:
        for line in f:
            if line.startswith("ob="):
                current_object = line[3:].rstrip("\n")
            elif line.startswith("calls="):
                skip_next = True  # the next cost line is the call's inclusive cost
            elif line.startswith("0x"):
                if skip_next:
                    skip_next = False
                    continue
                fields = line.split()
                if current_object == binary and len(fields) >= 2:
                    address = int(fields[0], 16)
                    costs[address] = costs.get(address, 0) + int(fields[1])
    return costs


def by_function(costs, functions):
    """Instructions per function name."""
    starts = [start for start, _, _ in functions]
    out = {}
    for address, cost in costs.items():
        i = bisect.bisect_right(starts, address) - 1
        if i >= 0 and address < functions[i][0] + max(functions[i][1], 1):
            name = functions[i][2]
            out[name] = out.get(name, 0) + cost
    return out


def main():
    for tool in ("valgrind", "callgrind_control", "wrk"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is needed")
    os.makedirs(WORK, exist_ok=True)
    log("building the release binary, with a link map")
    env = dict(os.environ, AA_BROKER_LINK_MAP=MAP)
    subprocess.run(["cargo", "build", "--release", "--locked", "--bin", "aa-token-broker"], cwd=ROOT, env=env,
                   check=True)
    shutil.copy2(BUILT, BINARY)
    functions = text_functions(MAP)
    work = tempfile.mkdtemp()
    secret = os.path.join(work, "secret")
    with open(secret, "w") as f:
        f.write("order-secret")
    sim = subprocess.Popen([BINARY, "iam-simulator", "--listen", f"127.0.0.1:{SIM_PORT}", "--entity",
                            "FIU-ORDER=order-secret", "--entity", "AA-ORDER=aa-order-secret", "--log-level", "warn"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    out = os.path.join(work, "callgrind")
    broker = subprocess.Popen(["valgrind", "--tool=callgrind", "--dump-instr=yes", "--dump-line=no",
                               "--compress-pos=no", "--compress-strings=no", f"--callgrind-out-file={out}", BINARY,
                               "serve", "--listen", f"127.0.0.1:{BROKER_PORT}", "--iam-url",
                               f"http://127.0.0.1:{SIM_PORT}/iam", "--entity-id", "FIU-ORDER", "--secret-file", secret,
                               "--log-level", "warn"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def dump(name):
        subprocess.run(["callgrind_control", f"--dump={name}", str(broker.pid)], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    try:
        base = f"http://127.0.0.1:{BROKER_PORT}"
        log("startup and the first token")
        wait(base + "/v1/token", {"Metadata": "true"})
        dump("startup")
        log("requests")
        answer = get(f"http://127.0.0.1:{SIM_PORT}/iam/v1/entity/token/generate",
                     {"Content-Type": "application/x-www-form-urlencoded"}, b"id=AA-ORDER&secret=aa-order-secret")
        token = re.search(rb'"accessToken"\s*:\s*"([^"]+)"', answer).group(1).decode()
        get(base + "/v1/verify", {"Authorization": f"Bearer {token}"})
        wrk(base + "/v1/token", "Metadata: true")
        wrk(base + "/v1/verify", f"Authorization: Bearer {token}")
        for path in ("/readyz", "/healthz", "/metrics"):
            get(base + path)
        dump("requests")
    finally:
        broker.send_signal(signal.SIGTERM)
        broker.wait()
        sim.kill()
        sim.wait()
    dumps = sorted((p for p in os.listdir(work) if p.startswith("callgrind.")), key=lambda p: int(p.rsplit(".", 1)[1]))
    startup, requests = (by_function(instruction_costs(os.path.join(work, p), BINARY), functions)
                         for p in dumps[:2])
    ordered = sorted(requests, key=lambda name: -requests[name])
    ordered += sorted((name for name in startup if name not in requests), key=lambda name: -startup[name])
    names = {name for _, _, name in functions}
    if os.path.exists(ORDER):
        with open(ORDER) as f:
            old = [line.strip() for line in f if line.strip() and not line.startswith("#")]
        log(f"the old list: {sum(1 for name in old if name in names)} of {len(old)} names are in this build")
    sizes = {name: size for _, size, name in functions}
    kib = sum(sizes[name] for name in ordered) // 1024
    with open(ORDER, "w") as f:
        f.write(HEADER.format(count=len(ordered), kib=kib))
        f.write("\n".join(ordered) + "\n")
    log(f"wrote {os.path.relpath(ORDER, ROOT)}: {len(ordered)} functions ({len(requests)} run by requests), {kib} KiB")


if __name__ == "__main__":
    main()
