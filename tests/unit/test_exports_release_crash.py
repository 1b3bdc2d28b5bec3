"""Crash safety of the release: kill the service's process in the middle of a release, restart, and the
request is RELEASED with exactly the approved bytes, or still APPROVED and released by the restart.
Never RELEASED with missing or wrong bytes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from exports.domain import FileDecision, RequestStatus
from exports.store import sha256_hex
from exports.testing import SAFE_CSV, checker, create_request_at_status, make_env, researcher

S = RequestStatus
FILES = {"results/a.csv": SAFE_CSV, "results/b.csv": SAFE_CSV.replace("120", "125"), "notes.md": "Methods.\n"}

# Run in a child process: finish the second review (which triggers the release) with one step of the
# release made to stop and wait, so the parent can SIGKILL it right there.
CHILD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from exports import store, workflow
    from exports.testing import make_env, checker

    root, rid, where = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    marker = root / "reached"

    def stop_here():
        marker.write_text(where)
        time.sleep(120)

    if where == "after-first-file":
        original = store.ReleaseStore.place
        calls = []
        def place(self, *args, **kwargs):
            original(self, *args, **kwargs)
            calls.append(1)
            if len(calls) == 1:
                stop_here()
        store.ReleaseStore.place = place
    elif where == "mid-write":
        original_write = store.atomic_write
        def atomic_write(path, data, mode=0o600):
            if "release" in str(path):
                tmp = path.parent / ".tmp-partial"
                tmp.write_bytes(data[: len(data) // 2])
                stop_here()
            original_write(path, data, mode)
        store.atomic_write = atomic_write
    elif where == "before-commit":
        original_place = workflow.ExportWorkflow._place
        def _place(self, request):
            released = original_place(self, request)
            stop_here()
            return released
        workflow.ExportWorkflow._place = _place

    env = make_env(root)
    env.workflow.submit_review(checker("dave"), rid)
""")

RESTART = textwrap.dedent("""
    import sys
    from pathlib import Path
    from tornado import ioloop
    from exports.service import ServiceConfig, start
    from exports.testing import make_env, FakeHubOAuth

    root = Path(sys.argv[1])
    env = make_env(root)
    config = ServiceConfig(root / "state", root, env.storage.engine.url.render_as_string(), "127.0.0.1", 0,
                           "/services/exports/", "unused")
    start(config, env.workflow, FakeHubOAuth())
    print("ready", flush=True)
    ioloop.IOLoop.current().call_later(0.2, ioloop.IOLoop.current().stop)
    ioloop.IOLoop.current().start()
""")


def run_child(tmp_path: Path, rid: str, where: str) -> None:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    child = subprocess.Popen([sys.executable, str(script), str(tmp_path), rid, where])
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / "reached").exists():
            assert child.poll() is None, f"child exited early with {child.returncode}"
            assert time.monotonic() < deadline, "child never reached the crash point"
            time.sleep(0.05)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL


def approved_but_for_the_last_review(tmp_path: Path) -> str:
    env = make_env(tmp_path)
    rid = create_request_at_status(env, S.PARTIALLY_REVIEWED, files=FILES)
    for f in env.storage.get(rid).output_files:
        env.workflow.vote(checker("dave"), rid, f.id, FileDecision.APPROVED)
    env.storage.engine.dispose()
    return rid


def assert_released_exactly(env, rid: str) -> None:
    request = env.storage.get(rid)
    assert request.status is S.RELEASED
    assert {r.path: r.sha256 for r in request.released} == {f.path: f.sha256 for f in request.output_files}
    for released in request.released:
        on_disk = (env.root / "state/exports/release" / rid / released.sha256).read_bytes()
        assert sha256_hex(on_disk) == released.sha256
        assert on_disk == FILES[released.path].encode()
    _, data = env.workflow.download(researcher("alice", in_container=False), rid, request.released[0].file_id)
    assert data == FILES[request.released[0].path].encode()


@pytest.mark.parametrize("where", ["after-first-file", "mid-write", "before-commit"])
def test_killed_mid_release_is_still_approved_and_a_retry_releases_the_right_bytes(tmp_path, where):
    rid = approved_but_for_the_last_review(tmp_path)
    run_child(tmp_path, rid, where)

    env = make_env(tmp_path)
    request = env.storage.get(rid)
    assert request.status is S.APPROVED  # the decision committed; the release did not
    assert request.released == ()
    left = sorted(p.name for p in (tmp_path / "state/exports/release" / rid).iterdir())
    expected_left = {"after-first-file": 1, "mid-write": 1, "before-commit": len(FILES)}[where]
    assert len(left) == expected_left, left  # the crash really happened part-way
    assert env.workflow.release_pending() == [rid]
    assert_released_exactly(env, rid)
    assert env.workflow.release_pending() == []  # idempotent


def test_a_restarted_service_releases_what_a_crash_left_approved(tmp_path):
    rid = approved_but_for_the_last_review(tmp_path)
    run_child(tmp_path, rid, "before-commit")
    script = tmp_path / "restart.py"
    script.write_text(RESTART)
    out = subprocess.run(
        [sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, timeout=120, check=False
    )
    assert out.returncode == 0, out.stderr
    assert "ready" in out.stdout
    assert_released_exactly(make_env(tmp_path), rid)


def test_a_tampered_quarantine_copy_is_never_released(tmp_path):
    rid = approved_but_for_the_last_review(tmp_path)
    env = make_env(tmp_path)
    victim = env.storage.get(rid).output_files[0]
    (tmp_path / "state/exports/quarantine" / victim.sha256[:2] / victim.sha256).write_bytes(b"sex,n\nF,3\n")
    request = env.workflow.submit_review(checker("dave"), rid)
    assert request.status is S.APPROVED  # refused to release; retried later
    assert any(r["action"] == "export.release" and r["outcome"] == "error" for r in env.audit.records)
