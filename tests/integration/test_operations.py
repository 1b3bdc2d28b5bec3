"""Operations under faults (issue 19), on a real hub, engine and services:

- a hub killed with SIGKILL takes its services with it, and ``deploy/demo`` (the same start path as the
  demo, on this test's state directory and ports) brings a working enclave back within 60 s;
- a stale exports service holding its port with the dead hub's secret is named by ``enclave doctor`` and
  cleared, on the trail, by ``deploy/demo``;
- the exports service restarting mid-request answers with a page that says what may have been saved;
- on a real full disk (a small loop-mounted ext4 under the audit directory) a stop still happens and its
  record lands in order through the spool, a login is refused with a clear message, the doctor warns.

Needs root, the Docker engine, the notebook image, configurable-http-proxy, mkfs.ext4 and loop devices.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest
import requests
import yaml

from hub.services import find_services
from tests.harness import CHP, HUB_TLS, PYTHON, REPO, Hub, HubClient, docker_exec, wait_for

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (deploy/demo, mount, iptables)")
ENCLAVE = str(Path(PYTHON).parent / "enclave")


def env_of(h: Hub, **extra: str) -> dict:
    return dict(h.env(), ENCLAVE_AUDIT_WITNESS=str(h.root / "witness.jsonl"), **extra)


def demo(h: Hub, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    """``deploy/demo`` on this hub's state directory and ports: only its processes (the installation,
    directory and data exist already), so the real demo on this machine is not touched."""
    env = env_of(h, ENCLAVE_DEMO_PROCESSES_ONLY="1", ENCLAVE_NODE_PREFIX=str(Path(CHP).parents[2]))
    return subprocess.run(
        [str(REPO / "deploy/demo"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def doctor(h: Hub) -> tuple[int, dict]:
    proc = subprocess.run(
        [ENCLAVE, "--state-dir", str(h.state), "--policy-dir", str(h.policy), "doctor", "--json"],
        env=env_of(h),
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    return proc.returncode, json.loads(proc.stdout)


def checks(report: dict) -> dict[str, dict]:
    return {c["name"]: c for c in report["checks"]}


def hub_pid(h: Hub) -> int:
    return int((h.state / "hub" / "jupyterhub.pid").read_text())


def services_of_running_hub(h: Hub) -> list:
    """All four managed services, children of the running hub, with exports and the gate listening."""
    pid = hub_pid(h)
    found = [
        s for s in find_services(str(h.state), h.hub_internal_port) if s.ppid == pid and s.hub_pid == pid
    ]
    names = {s.name for s in found}
    ports = {p for s in found for p in s.ports}
    ok = (
        names == {"exports", "enclave-gate", "enclave-policy", "idle-culler"}
        and {h.exports_port, h.hub_port} <= ports
    )
    return found if ok else []


def queue_page(h: Hub, user: str = "carol") -> requests.Response:
    client = HubClient(h, user)
    assert client.login().status_code == 302, f"{user} cannot log in"
    return client.session.get(f"{h.url}/services/exports/queue", timeout=30)


def trail(h: Hub) -> list[dict]:
    return [
        json.loads(line) for p in sorted((h.state / "audit").glob("audit-*.jsonl")) for line in p.open("rb")
    ]


def verify(h: Hub) -> subprocess.CompletedProcess:
    return subprocess.run(
        [ENCLAVE, "--state-dir", str(h.state), "audit", "verify"],
        env=env_of(h),
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def gone(pids: list[int], timeout: float = 15) -> bool:
    def none_left():
        return not [
            p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE
        ]

    try:
        return wait_for(none_left, timeout, "the old hub's processes to go")
    except TimeoutError:
        return False


def stop_demo_hub(h: Hub) -> None:
    """The hub deploy/demo started is not the harness's: stop its group, as ``deploy/demo stop`` does."""
    for name in ("hub.pid", "audit-checkpoint.pid"):
        pid_file = h.state / "hub" / name
        try:
            pid = int(pid_file.read_text())
            os.killpg(pid, signal.SIGTERM)
        except (OSError, ValueError):
            continue
        if not gone([pid], 30):
            os.killpg(pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def installation(tmp_path_factory, directory):
    h = Hub(tmp_path_factory.mktemp("ops"), directory).prepare()
    try:
        h.start()
        # deploy/demo keeps pid files; the harness's proxy is this installation's proxy.
        (h.state / "hub" / "proxy.pid").write_text(str(h.procs["proxy"].pid))
        yield h
    finally:
        stop_demo_hub(h)
        h.teardown()


def test_a_killed_hub_takes_its_services_and_deploy_demo_brings_the_enclave_back(installation):
    h = installation
    old = wait_for(lambda: services_of_running_hub(h), 60, "the hub's four services")
    old_pids = [hub_pid(h), *(s.pid for s in old)]
    h.procs["hub"].send_signal(signal.SIGKILL)  # a crash: no cleanup code runs
    h.procs.pop("hub").wait(10)
    assert gone(old_pids), (
        f"processes of the killed hub remain: {[p for p in old_pids if psutil.pid_exists(p)]}"
    )

    started = time.monotonic()
    result = demo(h)
    assert result.returncode == 0, result.stderr
    assert queue_page(h).status_code == 200
    elapsed = time.monotonic() - started
    assert elapsed < 60, f"the enclave came back only after {elapsed:.0f} s"
    new = wait_for(lambda: services_of_running_hub(h), 30, "the new hub's services")
    assert not {s.pid for s in new} & set(old_pids)
    assert int((h.state / "hub" / "hub.pid").read_text()) == hub_pid(h)  # deploy/demo's pid is the hub
    assert verify(h).returncode == 0, verify(h).stdout + verify(h).stderr
    print(f"hub SIGKILL -> checker's queue page 200 in {elapsed:.1f} s")


def stale_exports_from(h: Hub) -> subprocess.Popen:
    """What a crashed hub without the wrapper left behind: its exports service, with its environment (the
    old API token and OAuth secret), in its own session, holding the exports port."""
    current = next(s for s in services_of_running_hub(h) if s.name == "exports")
    env = psutil.Process(current.pid).environ()
    env.pop("ENCLAVE_HUB_PID", None)
    os.killpg(int((h.state / "hub" / "hub.pid").read_text()), signal.SIGKILL)
    assert gone([current.pid]), "the exports service outlived its hub"
    (h.state / "hub" / "hub.pid").write_text("999999")  # the dead hub's pid file stays behind
    stale = subprocess.Popen(
        [PYTHON, "-m", "exports.service"],
        cwd=REPO,
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for(
        lambda: (
            requests.get(
                f"http://127.0.0.1:{h.exports_port}/services/exports/", timeout=2, allow_redirects=False
            ).status_code
            < 500
        ),
        30,
        "the stale exports service",
    )
    return stale


def test_a_stale_exports_service_is_named_by_the_doctor_and_cleared_by_deploy_demo(installation):
    h = installation
    if not (h.state / "hub" / "hub.pid").exists() or not services_of_running_hub(h):
        assert demo(h).returncode == 0
        wait_for(lambda: services_of_running_hub(h), 60, "the hub's services")
    stale = stale_exports_from(h)
    try:
        code, report = doctor(h)
        services = checks(report)["services"]
        assert code == 3 and not services["ok"], report
        assert f"stale exports (pid {stale.pid} on port {h.exports_port}" in services["reason"]
        # deploy/demo status runs the same checks, and says so with its exit status
        status = demo(h, "status")
        assert status.returncode == 3 and f"stale exports (pid {stale.pid}" in status.stdout

        result = demo(h)
        assert result.returncode == 0, result.stderr
        assert stale.wait(20) is not None
        assert queue_page(h).status_code == 200  # the new service answers with the new hub's secret
        stops = [r for r in trail(h) if r["action"] == "service.stop"]
        assert stops and stops[-1]["target"] == "exports" and stops[-1]["details"]["pid"] == stale.pid
        assert stops[-1]["details"]["reason"] == "stale" and h.exports_port in stops[-1]["details"]["ports"]
        wait_for(lambda: services_of_running_hub(h), 30, "the new hub's services")
        code, report = doctor(h)
        after = checks(report)
        assert all(after[n]["ok"] and not after[n]["warning"] for n in ("services", "enforcer", "oauth")), (
            report
        )
        assert verify(h).returncode == 0
    finally:
        if stale.poll() is None:
            stale.kill()
            stale.wait()


def test_an_exports_restart_mid_request_answers_with_a_page_that_says_what_may_be_saved(installation):
    h = installation
    if not services_of_running_hub(h):
        assert demo(h).returncode == 0
    carol = HubClient(h, "carol")
    assert carol.login().status_code == 302
    assert carol.session.get(f"{h.url}/services/exports/queue", timeout=30).status_code == 200
    exports = next(
        s for s in wait_for(lambda: services_of_running_hub(h), 30, "services") if s.name == "exports"
    )
    os.kill(exports.pid, signal.SIGKILL)  # the service dies mid-request; the hub restarts it
    page = carol.session.post(
        f"{h.url}/services/exports/requests/x1/review",
        data={"verdict": "votes"},
        timeout=30,
        allow_redirects=False,
    )
    assert page.status_code == 503
    assert "it may already have been saved" in page.text and "/services/exports/mine" in page.text
    assert "Submitting the same review again is safe" in page.text
    # ... and the hub brings the service back
    wait_for(
        lambda: carol.session.get(f"{h.url}/services/exports/queue", timeout=10).status_code == 200,
        90,
        "the exports service to be restarted by the hub",
    )


def test_deploy_demo_stop_leaves_no_process_of_the_installation(installation):
    h = installation
    if not services_of_running_hub(h):
        assert demo(h).returncode == 0
    pids = [hub_pid(h), *(s.pid for s in wait_for(lambda: services_of_running_hub(h), 30, "services"))]
    result = demo(h, "stop", timeout=240)
    assert result.returncode == 0, result.stderr
    assert gone(pids), f"left running after deploy/demo stop: {[p for p in pids if psutil.pid_exists(p)]}"
    assert find_services(str(h.state), h.hub_internal_port) == []
    h.procs.pop("proxy", None)  # deploy/demo stop stopped the proxy too (its pid file)


# ---- a real full disk ------------------------------------------------------------------------------------

needs_loop = pytest.mark.skipif(
    not shutil.which("mkfs.ext4") or not os.path.exists("/dev/loop-control"),
    reason="needs mkfs.ext4 and loop devices",
)


def fill(disk: Path) -> Path:
    """Fill the filesystem to the last block, as a runaway process would."""
    filler = disk / "filler"
    with filler.open("wb", buffering=0) as f:
        for chunk in (1024 * 1024, 64 * 1024, 1024, 1):
            while True:
                try:
                    f.write(b"x" * chunk)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC
                    break
    return filler


@pytest.fixture
def full_disk_hub(tmp_path_factory, directory):
    """A hub whose audit directory is a 24 MiB ext4 filesystem of its own (site disk.min_free_mib: 8)."""
    h = Hub(tmp_path_factory.mktemp("enospc"), directory).prepare()
    site = yaml.safe_load((h.policy / "site.yaml").read_text())
    site["disk"] = {"min_free_mib": 8}
    (h.policy / "site.yaml").write_text(yaml.safe_dump(site, sort_keys=False))
    image, mount = h.root / "audit.img", h.state / "audit"
    with image.open("wb") as f:
        f.truncate(24 * 1024 * 1024)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-m", "0", "-b", "1024", str(image)], check=True)
    # The demo data's ingest already wrote the trail: move it onto the small filesystem, as it is.
    moved = h.state / "audit.before"
    mount.rename(moved)
    mount.mkdir(mode=0o750)
    subprocess.run(["mount", "-o", "loop", str(image), str(mount)], check=True)
    (mount / "lost+found").rmdir()
    subprocess.run(["cp", "-a", f"{moved}/.", str(mount)], check=True)
    shutil.rmtree(moved)
    try:
        yield h
    finally:
        h.teardown()
        subprocess.run(["umount", str(mount)], check=False)  # -o loop detaches the loop device with it


@needs_loop
def test_on_a_full_disk_stops_are_spooled_logins_and_spawns_refused_clearly_the_doctor_warns(full_disk_hub):
    h = full_disk_hub
    h.start()
    alice = HubClient(h, "alice")
    assert alice.login().status_code == 302
    alice.spawn("demo-cardio")
    _, report = doctor(h)
    assert not checks(report)["disk"]["warning"], report

    filler = fill(h.state / "audit")

    # The last block of the segment may still take a record or two; then the kernel says no.
    def refused_login():
        page = HubClient(h, "bob").login()
        return [page] if page.status_code == 503 else None  # (a Response of a 503 is falsy itself)

    [page] = wait_for(refused_login, 60, "a login to be refused on the full disk", interval=0.1)
    assert "cannot write its audit trail" in page.text and "tell the operator" in page.text
    written = len(trail(h))
    # The gate's refusals stay refusals (their records are written off the request, and aggregated): asked
    # from alice's container, over the gate's TLS with her server's pair, as code in a notebook would.
    code, out = docker_exec(
        h.container("alice", "demo-cardio"),
        [
            "/opt/notebook/bin/python",
            "-c",
            HUB_TLS + "import os, urllib.error\n"
            "gw = os.environ['JUPYTERHUB_API_URL'].split('/hub/api')[0]\n"
            "try:\n    urllib.request.urlopen(gw + '/hub/admin', timeout=10); print(200)\n"
            "except urllib.error.HTTPError as e:\n    print(e.code)\n",
        ],
    )
    assert code == 0 and out.strip().splitlines()[-1] == "403", out

    # A stop takes access away: it happens, and its record goes to the spool.
    alice.stop("demo-cardio")
    assert not [c for c in h.containers() if c.name.endswith("alice--demo-cardio")]
    # A spawn grants access: its record comes first, so it is refused, with the reason, and nothing starts.
    response = alice.start("demo-cardio")
    if response.status_code in (201, 202):  # a slow spawn fails in the background: ask its progress
        message = alice.progress_message("demo-cardio")
    else:
        message = response.json().get("message", "")
    assert "cannot write its audit trail" in message, (response.status_code, message)
    assert not [c for c in h.containers() if c.name.endswith("alice--demo-cardio")]
    _, report = doctor(h)
    disk = checks(report)["disk"]
    assert disk["ok"] and disk["warning"] and "below disk.min_free_mib (8 MiB)" in disk["reason"], report

    filler.unlink()  # space returns: the next record drains the spool first, in order
    assert HubClient(h, "carol").login().status_code == 302
    records = trail(h)[written:]
    actions = [(r["actor"], r["action"]) for r in records]
    stop = actions.index(("alice", "server.stop"))
    spooled = actions.index(("service:audit", "audit.spooled"))
    assert stop < spooled < actions.index(("carol", "auth.login")), actions
    assert records[stop]["target"] == "alice/demo-cardio" and records[stop]["details"][
        "image_digest"
    ].startswith("sha256:")
    assert len([a for a in actions if a == ("alice", "server.stop")]) == 1, "the stop was recorded twice"
    result = verify(h)
    assert result.returncode == 0, result.stdout + result.stderr
