"""ground/: durable writes that survive a failure half-way, one winner of a create race, and the layering
(ground imports nothing of ours; the concerns do not import the command line back)."""

from __future__ import annotations

import os
import stat
import threading
from datetime import date
from pathlib import Path

import pytest

from ground import durable
from ground.access import RESEARCHERS, Reason, work_refusal
from ground.commands import REGISTRARS
from tests.unit.test_audit_standalone import imported_modules

ROOT = Path(__file__).resolve().parents[2]
OURS = {"audit", "exports", "ground", "hub", "ingest"}


def test_atomic_write_replaces_whole_with_the_mode_asked(tmp_path: Path) -> None:
    target = tmp_path / "site.yaml"
    durable.atomic_write(target, "old\n", 0o644)
    durable.atomic_write(target, "new\n", 0o644)
    assert target.read_text() == "new\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["site.yaml"], "a temporary file was left behind"


def test_a_write_that_fails_half_way_leaves_the_old_file_and_no_debris(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "status.json"
    durable.atomic_write(target, b"good")

    def broken_fsync(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="Input/output"):
        durable.atomic_write(target, b"half")
    assert target.read_bytes() == b"good"
    assert [p.name for p in tmp_path.iterdir()] == ["status.json"]


def test_create_exclusive_has_exactly_one_winner(tmp_path: Path) -> None:
    target = tmp_path / "key"
    results: list[bool] = []
    barrier = threading.Barrier(8)

    def race(i: int) -> None:
        barrier.wait()
        results.append(durable.create_exclusive(target, f"writer {i}".encode() * 1000))

    threads = [threading.Thread(target=race, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count(True) == 1
    content = target.read_bytes()
    assert content == content[: len(content) // 1000] * 1000, "a half-written or mixed file"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["key"]


def test_ground_imports_nothing_of_ours_but_itself() -> None:
    for path in (ROOT / "ground").glob("*.py"):
        ours = {name.split(".")[0] for name in imported_modules(path)} & OURS
        assert ours <= {"ground"}, f"{path.name} imports {ours - {'ground'}}"


@pytest.mark.parametrize("module", REGISTRARS)
def test_no_concern_imports_the_command_line_back(module: str) -> None:
    path = ROOT / (module.replace(".", "/") + ".py")
    assert "hub.cli" not in imported_modules(path), (
        f"{module} imports hub.cli; take CLIError from ground.commands"
    )


class _Project:
    id = "p1"

    def access_refusal(self, uid: str, today: date) -> str | None:
        return None if uid == "alice" else f"{uid} is not a member of project p1"


@pytest.mark.parametrize(
    ("uid", "groups", "project", "reason"),
    [
        ("alice", {RESEARCHERS}, _Project(), None),
        ("alice", {RESEARCHERS}, None, Reason.NO_PROJECT),
        ("alice", {"enclave-checkers"}, _Project(), Reason.NOT_ACCREDITED),
        ("alice", set(), _Project(), Reason.NOT_ACCREDITED),
        ("mallory", {RESEARCHERS}, _Project(), Reason.AGREEMENT),
        ("alice", None, _Project(), None),  # accreditation carried by the credential (export scope)
        ("mallory", None, _Project(), Reason.AGREEMENT),
    ],
)
def test_one_rule_for_who_may_work_in_a_project_today(uid, groups, project, reason) -> None:
    refusal = work_refusal(uid, groups, project, date(2026, 1, 1))
    assert (refusal.reason if refusal else None) is reason


def test_spawner_enforcer_and_export_service_ask_the_one_rule() -> None:
    for module in ("hub/spawner.py", "hub/enforcer.py", "exports/enclave_policy.py"):
        source = (ROOT / module).read_text()
        assert "work_refusal(" in source, f"{module} does not ask ground.access.work_refusal"
        assert '"enclave-researchers"' not in source, f"{module} spells the accreditation group out again"
