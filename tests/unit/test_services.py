"""hub/services.py with real processes: a wrapped service dies with its parent, even on SIGKILL; a
service whose hub is gone is found, stopped and recorded; nothing else is touched."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from audit import AuditLog
from hub import services

REPO = Path(__file__).resolve().parents[2]


def wait_gone(pid: int, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    return False


def fake_hub(state: Path, name: str = "exports") -> tuple[subprocess.Popen, int]:
    """A parent that starts one wrapped service the way JupyterHub does (new session), prints its pid."""
    code = textwrap.dedent(f"""
        import os, subprocess, sys, time
        from hub.services import wrapped
        env = dict(os.environ, JUPYTERHUB_SERVICE_NAME={name!r}, ENCLAVE_STATE_DIR={str(state)!r})
        p = subprocess.Popen(wrapped({name!r}, [sys.executable, "-c", "import time; time.sleep(120)"]),
                             env=env, start_new_session=True)
        print(p.pid, flush=True)
        time.sleep(120)
    """)
    parent = subprocess.Popen(
        [sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    pid = int(parent.stdout.readline())
    return parent, pid


def test_a_wrapped_service_dies_when_its_hub_is_killed(tmp_path):
    parent, child = fake_hub(tmp_path)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not any(
            s.hub_pid for s in services.find_services(str(tmp_path), 1)
        ):
            time.sleep(0.05)  # until the wrapper has exec'd into the service
        found = services.find_services(str(tmp_path), 1)
        assert [(s.name, s.pid, s.ppid, s.hub_pid) for s in found] == [
            ("exports", child, parent.pid, parent.pid)
        ]
        assert services.stale_services(str(tmp_path), 1, parent.pid) == []
        os.kill(parent.pid, signal.SIGKILL)  # a crash: no cleanup code of the parent runs
        parent.wait(5)
        assert wait_gone(child), "the service outlived its hub"
    finally:
        for pid in (parent.pid, child):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_the_wrapper_refuses_to_start_an_orphan():
    # Started by a parent that is already gone (ppid 1 after reparenting): the wrapper must not run it.
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            textwrap.dedent("""
            import os, subprocess, sys
            if os.fork() == 0:
                import time; time.sleep(0.5)  # the parent exits meanwhile: we are reparented
                os.execv(sys.executable, [sys.executable, "-m", "hub.services", "exports", "--", "true"])
            os._exit(0)
        """),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    assert result.returncode == 0  # the outer parent; the orphan's refusal goes to the shared stderr
    time.sleep(1.5)


def test_a_stale_service_is_stopped_and_recorded(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    env = dict(os.environ, JUPYTERHUB_SERVICE_NAME="enclave-policy", ENCLAVE_STATE_DIR=str(state))
    # Ignores SIGTERM, as a hung service would: it must be killed after the grace period.
    stale = subprocess.Popen(
        [
            sys.executable,
            "-c",
            (
                "import signal, time; signal.signal(signal.SIGTERM, "
                "signal.SIG_IGN); print('ready', flush=True); time.sleep(120)"
            ),
        ],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    other = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(120)"],
        env=dict(env, ENCLAVE_STATE_DIR=str(tmp_path / "another")),
        start_new_session=True,
    )
    try:
        assert stale.stdout.readline().strip() == "ready"
        with AuditLog.open(state) as log:
            # A new hub (not the test process, which started the stale one) clears it.
            cleared = services.clear_stale(str(state), 1, -1, log)
            records = [r for r in log.records() if r["action"] == "service.stop"]
        assert [s.pid for s in cleared] == [stale.pid]
        assert wait_gone(stale.pid) and other.poll() is None  # (psutil reaped our child: no status left)
        assert len(records) == 1 and records[0]["target"] == "enclave-policy"
        assert records[0]["details"]["reason"] == "stale" and records[0]["details"]["signal"] == "SIGKILL"
    finally:
        for p in (stale, other):
            p.kill()
            p.wait()


@pytest.mark.parametrize("argv", [[], ["exports"], ["nosuch", "--", "true"], ["exports", "true"]])
def test_the_wrapper_refuses_bad_usage(argv):
    assert services.main(argv) == 2


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: a process of another uid and PID namespace")
@pytest.mark.parametrize("how", ["another uid", "another pid namespace"])
def test_a_process_dressed_up_as_a_service_from_a_container_is_not_ours(tmp_path, how):
    """A researcher's process (uid 1000, in its container's PID namespace) is visible in the host's /proc
    and can carry any environment. Dressed as this installation's exports service, it is neither reported
    nor signalled."""
    state = tmp_path / "state"
    state.mkdir()
    env = dict(os.environ, JUPYTERHUB_SERVICE_NAME="exports", ENCLAVE_STATE_DIR=str(state))
    sleeper = [sys.executable, "-c", "import time; time.sleep(120)"]
    if how == "another uid":
        dressed = subprocess.Popen(sleeper, env=env, user=1000, group=1000, start_new_session=True)
    else:
        # Only the process inside the new namespace carries the disguise, as in a container (unshare itself,
        # on our side, is the engine's shim there).
        disguise = [f"JUPYTERHUB_SERVICE_NAME={env['JUPYTERHUB_SERVICE_NAME']}", f"ENCLAVE_STATE_DIR={state}"]
        dressed = subprocess.Popen(
            ["unshare", "--pid", "--fork", "--", "env", *disguise, *sleeper], start_new_session=True
        )
    try:
        deadline = time.monotonic() + 10
        pids = set()
        while time.monotonic() < deadline and not pids:
            pids = {p.pid for p in psutil.Process(dressed.pid).children(recursive=True)} | {dressed.pid}
            pids = {
                pid
                for pid in pids
                if psutil.Process(pid).environ().get("JUPYTERHUB_SERVICE_NAME") == "exports"
                and "time.sleep" in " ".join(psutil.Process(pid).cmdline())
            }
        assert pids, "control: the dressed-up process is running with the service's environment"
        # The control that the disguise is good: without the namespace and uid test it would be found.
        assert all(services.belongs_to(psutil.Process(pid).environ(), str(state), 1) for pid in pids)
        assert services.find_services(str(state), 1) == []
        with AuditLog.open(state) as log:
            assert services.clear_stale(str(state), 1, -1, log) == []
        assert dressed.poll() is None
    finally:
        os.killpg(dressed.pid, signal.SIGKILL)
        dressed.wait()
