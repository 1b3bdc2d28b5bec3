"""Benchmark of spawning: the locked-down EnclaveSpawner against plain DockerSpawner, same image, one run.

    .venv/bin/python bench/spawn.py                              # 5 spawns each, then 20 concurrent
    .venv/bin/python bench/spawn.py --rounds 3 --concurrent 5    # a quicker look

It starts its own slapd (the demo users plus bench01..benchNN, from a bench-only seed), a proxy and two
hubs on free loopback ports (tests/harness.py), and removes all of it afterwards:

- the enclave hub: hub/jupyterhub_config.py as deployed, with a bench-only copy of the policy in which
  demo-cardio also lists the bench users;
- the baseline hub: bench/plain_jupyterhub_config.py, dockerspawner.DockerSpawner with default options on
  Docker's default bridge network, same image.

Figures:
1. median API-to-ready time of one spawn (POST .../servers/demo-cardio until the hub reports the server
   ready), alternating between the two hubs after one warm-up spawn each (the first enclave spawn also
   creates the project network and its firewall rules, which later spawns reuse);
2. their ratio: target <= 1.10 (the profile, policy checks, audit records and firewall cost at most 10 %);
3. N concurrent EnclaveSpawner spawns by N different users: how many became ready, and the wall time,
   next to the same N concurrent spawns on the baseline hub (on 2 cores the notebook servers' own start-up
   dominates both).
DESIGN.md section 8 has the reference: about 2.5 s per plain spawn and 36 s for 20 concurrent on 2 cores.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import docker
import requests
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.harness import PYTHON, REPO, Directory, Hub, HubClient, wait_for

PROJECT = "demo-cardio"
RATIO_TARGET = 1.10
READY_TIMEOUT = 300.0
POLL = 0.05  # both hubs are polled the same way, so the polling cost cancels out in the ratio


# ---- the parts ----------------------------------------------------------------------------------------


@dataclass
class SeededDirectory(Directory):
    """slapd seeded from a given file rather than the demo directory."""

    seed: Path | None = None

    def start(self) -> SeededDirectory:
        subprocess.run(
            [
                PYTHON,
                REPO / "deploy/localldap.py",
                "start",
                "--dir",
                self.dir,
                "--port",
                str(self.port),
                "--seed",
                self.seed,
            ],
            check=True,
        )
        return self


@contextlib.contextmanager
def stdout_to_stderr():
    """Set-up chatter (the demo data pipeline's progress) goes to stderr: stdout carries only the figures."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def bench_users(n: int) -> list[str]:
    return [f"bench{i:02d}" for i in range(1, n + 1)]


def write_seed(root: Path, users: list[str]) -> Path:
    seed = yaml.safe_load((REPO / "deploy/demo-directory.yaml").read_text())
    seed["users"] += [
        {"uid": u, "cn": f"Bench User{u[5:]}", "groups": ["enclave-researchers"]} for u in users
    ]
    path = root / "bench-directory.yaml"
    path.write_text(yaml.safe_dump(seed))
    return path


def add_members(hub: Hub, users: list[str]) -> None:
    """The bench-only policy copy: demo-cardio also lists the bench users."""
    path = hub.policy / "projects" / f"{PROJECT}.yaml"
    doc = yaml.safe_load(path.read_text())
    doc["members"] += [{"uid": u} for u in users]
    path.write_text(yaml.safe_dump(doc, sort_keys=False))


def docker0_address() -> str:
    """The host's address on Docker's default bridge (the default network's IPAM often omits it)."""
    out = subprocess.run(
        ["ip", "-j", "-4", "addr", "show", "dev", "docker0"], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout)[0]["addr_info"][0]["local"]


class PlainHub(Hub):
    """The baseline: bench/plain_jupyterhub_config.py, driven through the API with a service token."""

    def prepare(self) -> PlainHub:
        (self.state / "hub").mkdir(parents=True)
        (self.state / "logs").mkdir()
        secrets_dir = self.state / "secrets"
        secrets_dir.mkdir(mode=0o700)
        for name in ("cookie_secret", "proxy_auth_token"):
            (secrets_dir / name).write_text(secrets.token_hex(32))
            (secrets_dir / name).chmod(0o600)
        self.token = secrets.token_hex(32)
        self.site_image = os.environ.get("ENCLAVE_TEST_IMAGE", "enclave/notebook:0.1")
        return self

    def env(self) -> dict:
        docker0 = docker0_address()
        return dict(
            os.environ,
            BENCH_STATE=str(self.state),
            BENCH_PUBLIC_PORT=str(self.public_port),
            BENCH_HUB_PORT=str(self.hub_port),
            BENCH_API_PORT=str(self.api_port),
            BENCH_DOCKER0=docker0,
            BENCH_TOKEN=self.token,
            BENCH_IMAGE=self.site_image,
            BENCH_PREFIX=self.prefix.rstrip("-"),
        )

    def start(self, timeout: float = 60) -> PlainHub:
        self.start_proxy()
        with open(self.state / "logs" / "hub.log", "ab") as log:  # the child keeps its own copy of the fd
            self.procs["hub"] = subprocess.Popen(
                [
                    str(Path(PYTHON).parent / "jupyterhub"),
                    "-f",
                    str(REPO / "bench/plain_jupyterhub_config.py"),
                ],
                cwd=self.state / "hub",
                env=self.env(),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_for(self._healthy, timeout, f"the plain hub to answer (log: {self.state}/logs/hub.log)")
        return self

    def api(self, method: str, path: str, **kwargs) -> requests.Response:
        return requests.request(
            method,
            f"{self.url}/hub/api{path}",
            timeout=60,
            headers={"Authorization": f"token {self.token}"},
            **kwargs,
        )


# ---- one spawn, timed the same way on both hubs ------------------------------------------------------


class Spawns:
    """Start, wait until ready, stop: one user's server on one hub, through the REST API."""

    def __init__(self, api, user: str):
        self.api, self.user = api, user

    def server(self) -> dict | None:
        return self.api("GET", f"/users/{self.user}").json().get("servers", {}).get(PROJECT)

    def spawn(self) -> float:
        """Seconds from the API call to the hub reporting the server ready."""
        t0 = time.perf_counter()
        response = self.api("POST", f"/users/{self.user}/servers/{PROJECT}")
        if response.status_code not in (201, 202):
            raise RuntimeError(f"{self.user}: spawn refused: {response.status_code} {response.text[:300]}")
        deadline = t0 + READY_TIMEOUT
        while time.perf_counter() < deadline:
            server = self.server()
            if server is None:
                raise RuntimeError(f"{self.user}: the spawn failed (no server in the user model)")
            if server.get("ready"):
                return time.perf_counter() - t0
            time.sleep(POLL)
        raise TimeoutError(f"{self.user}: not ready after {READY_TIMEOUT:.0f} s")

    def stop(self) -> None:
        self.api("DELETE", f"/users/{self.user}/servers/{PROJECT}")
        wait_for(lambda: self.server() is None, 120, f"{self.user}'s server to stop")


def enclave_spawns(hub: Hub, user: str) -> Spawns:
    client = HubClient(hub, user)
    if client.login().status_code != 302:
        raise RuntimeError(f"cannot log in as {user} on the enclave hub")
    return Spawns(client.api, user)


def plain_spawns(hub: PlainHub, user: str) -> Spawns:
    if hub.api("POST", f"/users/{user}").status_code not in (201, 409):
        raise RuntimeError(f"cannot create {user} on the plain hub")
    return Spawns(hub.api, user)


# ---- the measurements --------------------------------------------------------------------------------


def sequential(enclave: Spawns, plain: Spawns, rounds: int) -> tuple[list[float], list[float]]:
    for spawns in (enclave, plain):  # warm-up: network, firewall, page cache of the image
        spawns.spawn()
        spawns.stop()
    times: dict[str, list[float]] = {"enclave": [], "plain": []}
    for i in range(rounds):
        order = (
            (("enclave", enclave), ("plain", plain))
            if i % 2 == 0
            else (("plain", plain), ("enclave", enclave))
        )
        for name, spawns in order:
            times[name].append(spawns.spawn())
            spawns.stop()
            print(f"  round {i + 1}/{rounds}: {name:<7} {times[name][-1]:.2f} s", file=sys.stderr)
    return times["enclave"], times["plain"]


def concurrent(all_spawns: list[Spawns]) -> tuple[int, float, list[str]]:
    """Start every server at once; (how many became ready, wall time until the last one did, errors)."""
    t0 = time.perf_counter()
    with ThreadPoolExecutor(len(all_spawns)) as pool:
        futures = [pool.submit(s.spawn) for s in all_spawns]
        errors = []
        for f in futures:
            try:
                f.result()
            except Exception as exc:  # noqa: BLE001 -- a failed spawn is a figure here, not a crash
                errors.append(str(exc))
    wall = time.perf_counter() - t0
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda s: s.server() and s.stop(), all_spawns))
    return len(all_spawns) - len(errors), wall, errors


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--rounds", type=int, default=5, help="timed sequential spawns per spawner (default 5)"
    )
    parser.add_argument(
        "--concurrent", type=int, default=20, help="concurrent EnclaveSpawner spawns (default 20)"
    )
    args = parser.parse_args(argv)

    root = Path(tempfile.mkdtemp(prefix="enclave-bench-spawn-", dir="/var/tmp"))
    root.chmod(0o755)  # slapd drops to the openldap user
    users = bench_users(args.concurrent)
    directory = SeededDirectory(root, seed=write_seed(root, users))
    hubs: list[Hub] = []
    interrupted = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        directory.start()
        enclave = Hub(root, directory)
        hubs.append(enclave)
        with stdout_to_stderr():
            enclave.prepare()
        add_members(enclave, users)
        enclave.start()
        plain = PlainHub(root, directory).prepare()
        hubs.append(plain)
        plain.start()
        image = docker.from_env().images.get(enclave.site_image)
        print(
            f"spawn benchmark: {enclave.site_image} ({image.id[7:19]}) on both hubs, {os.cpu_count()} CPUs",
            file=sys.stderr,
        )

        enclave_times, plain_times = sequential(
            enclave_spawns(enclave, "alice"), plain_spawns(plain, "bench00"), args.rounds
        )
        ok, wall, errors = concurrent([enclave_spawns(enclave, u) for u in users])
        plain_ok, plain_wall, plain_errors = concurrent([plain_spawns(plain, u) for u in users])

        med_e, med_p = statistics.median(enclave_times), statistics.median(plain_times)
        ratio = med_e / med_p
        print(
            f"EnclaveSpawner (locked down) median API-to-ready {med_e:.2f} s  "
            f"(min {min(enclave_times):.2f}, max {max(enclave_times):.2f}, n={len(enclave_times)})"
        )
        print(
            f"DockerSpawner (defaults)     median API-to-ready {med_p:.2f} s  "
            f"(min {min(plain_times):.2f}, max {max(plain_times):.2f}, n={len(plain_times)})"
        )
        print(
            f"ratio                        {ratio:.2f}  (target <= {RATIO_TARGET:.2f}: "
            f"{'met' if ratio <= RATIO_TARGET else 'NOT met'})"
        )
        n = args.concurrent
        print(f"{n} concurrent EnclaveSpawner spawns: {ok}/{n} ready, wall time {wall:.1f} s")
        print(
            f"{n} concurrent DockerSpawner spawns:  {plain_ok}/{n} ready, wall time {plain_wall:.1f} s "
            f"(ratio {wall / plain_wall:.2f})"
        )
        for error in errors + plain_errors:
            print(f"  failed: {error}")
        return 0 if not errors else 1
    finally:
        for hub in reversed(hubs):
            hub.teardown()
        directory.stop()
        shutil.rmtree(root, ignore_errors=True)
        signal.signal(signal.SIGTERM, interrupted)


if __name__ == "__main__":
    sys.exit(main())
