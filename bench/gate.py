"""Benchmark of the hub gate under a flood: does one container slow the hub down for everyone else?

    .venv/bin/python bench/gate.py                     # the gate as deployed (5 req/s per server, burst 20)
    .venv/bin/python bench/gate.py --threads 64 --seconds 60
    .venv/bin/python bench/gate.py --also-unlimited    # and again with the limit lifted, for comparison

It starts its own slapd, proxy and hub on free loopback ports (tests/harness.py), spawns alice's
demo-cardio, and removes all of it afterwards. Then, in the same run:

1. baseline: the median latency of bob's hub API calls (``GET /hub/api/users/bob`` through the proxy, his
   browser session), timed back to back while alice's container is quiet;
2. under flood: the same while ``--threads`` threads in alice's container send requests, each as fast as
   the gate answers, to an allowed gate route (``GET /hub/api/user`` with its server token). Quiet and
   flood phases alternate (``--rounds``, ``--seconds`` of flood in all), so that load from elsewhere on
   the machine falls on both;
3. the ratio under flood / baseline (target <= 2), the flood's rate and answers (200 passed to the hub,
   429 throttled at the gate), and how many audit records the flood left (aggregated).

Bounded request loops only; the flood goes from the container to its own network's gateway.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from audit import AuditLog
from tests.harness import Directory, Hub, HubClient, docker_exec

RATIO_TARGET = 2.0
FLOOD = """
import json, os, sys, threading, time, urllib.request, urllib.error, collections
gw = os.environ["JUPYTERHUB_API_URL"].split("/hub/api")[0]
token = os.environ["JUPYTERHUB_API_TOKEN"]
threads, seconds = int(sys.argv[1]), float(sys.argv[2])
deadline = time.monotonic() + seconds
counts = collections.Counter()
lock = threading.Lock()
def run():
    while time.monotonic() < deadline:
        req = urllib.request.Request(gw + "/hub/api/user", headers={"Authorization": "token " + token})
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                code = r.status
        except urllib.error.HTTPError as e:
            code = e.code
        except OSError:
            code = 0
        with lock:
            counts[code] += 1
start = time.monotonic()
ts = [threading.Thread(target=run) for _ in range(threads)]
[t.start() for t in ts]
[t.join() for t in ts]
print(json.dumps({"counts": counts, "seconds": time.monotonic() - start}))
"""


def timed_call(client: HubClient) -> float:
    start = time.perf_counter()
    response = client.api("GET", f"/users/{client.user}")
    assert response.status_code == 200, response.status_code
    return time.perf_counter() - start


def run(directory: Directory, args: argparse.Namespace, env: dict, label: str) -> dict:
    hub = Hub(Path(tempfile.mkdtemp(prefix="enclave-bench-gate-")), directory, env_extra=env).prepare()
    try:
        hub.start()
        alice, bob = HubClient(hub, "alice"), HubClient(hub, "bob")
        assert alice.login().status_code == 302 and bob.login().status_code == 302
        alice.spawn("demo-cardio", timeout=300)
        for _ in range(5):
            timed_call(bob)  # warm-up
        container = hub.container("alice", "demo-cardio")
        cmd = ["/opt/notebook/bin/python", "-c", FLOOD, str(args.threads), str(args.seconds / args.rounds)]
        baseline: list[float] = []
        during: list[float] = []
        floods = []
        # Quiet and flood phases alternate, so that the load of whatever else runs on the machine falls on
        # both alike; bob's calls are timed back to back in each phase.
        for _ in range(args.rounds):
            quiet_until = time.monotonic() + args.seconds / args.rounds
            while time.monotonic() < quiet_until:
                baseline.append(timed_call(bob))
            result: dict = {}
            flood = threading.Thread(
                target=lambda r=result: r.update(out=docker_exec(container, cmd, timeout=600))
            )
            flood.start()
            time.sleep(0.5)
            while flood.is_alive():
                during.append(timed_call(bob))
            flood.join()
            code, out = result["out"]
            assert code == 0, out
            floods.append(json.loads(out.strip().splitlines()[-1]))
        summary = {"counts": {}, "seconds": sum(f["seconds"] for f in floods)}
        for f in floods:
            for k, v in f["counts"].items():
                summary["counts"][k] = summary["counts"].get(k, 0) + v
        time.sleep(float(env.get("ENCLAVE_AUDIT_REFUSAL_WINDOW", 5)) + 6)  # the last window's summary
        records = list(AuditLog.open(hub.state).records(action="gate.throttled"))
        return report(label, baseline, during, summary, records)
    finally:
        hub.teardown()
        shutil.rmtree(hub.root, ignore_errors=True)


def report(label: str, baseline: list[float], during: list[float], flood: dict, records: list[dict]) -> dict:
    base, under = statistics.median(baseline), statistics.median(during)
    counts = flood["counts"]
    total = sum(counts.values())
    counted = sum(r["details"].get("repeated", 0) if r["details"].get("aggregated") else 1 for r in records)
    print(f"\n== {label}  (load average {os.getloadavg()[0]:.1f})")
    print(f"bob's hub API median, baseline:    {base * 1000:7.1f} ms  ({len(baseline)} calls)")
    print(f"bob's hub API median, under flood: {under * 1000:7.1f} ms  ({len(during)} calls)")
    print(f"ratio:                             {under / base:7.2f}   (target <= {RATIO_TARGET})")
    print(
        f"flood: {total} requests in {flood['seconds']:.1f} s = {total / flood['seconds']:.0f} req/s; "
        f"answers {dict(sorted(counts.items()))}"
    )
    print(f"audit: {len(records)} gate.throttled record(s) standing for {counted} throttled requests")
    return {"baseline": base, "under": under, "ratio": under / base, "records": len(records)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, default=32, help="flooding threads in alice's container")
    parser.add_argument("--seconds", type=float, default=30, help="how long the flood lasts in all")
    parser.add_argument("--rounds", type=int, default=6, help="quiet and flood phases, alternating")
    parser.add_argument("--also-unlimited", action="store_true", help="run again with the limit lifted")
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="enclave-bench-ldap-", dir="/var/tmp"))
    root.chmod(0o755)  # slapd drops to the openldap user
    directory = Directory(root).start()
    try:
        env = {"ENCLAVE_AUDIT_REFUSAL_WINDOW": "5"}
        limited = run(directory, args, env, "gate as deployed (5 req/s per server, burst 20)")
        if args.also_unlimited:
            run(
                directory,
                args,
                {**env, "ENCLAVE_GATE_RATE": "1000000", "ENCLAVE_GATE_BURST": "1000000"},
                "limit lifted (for comparison only)",
            )
    finally:
        directory.stop()
        shutil.rmtree(root, ignore_errors=True)
    return 0 if limited["ratio"] <= RATIO_TARGET else 3


if __name__ == "__main__":
    sys.exit(main())
