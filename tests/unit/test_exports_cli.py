"""``enclave export``: list, show, and the release retry, on the state directory the service uses."""

from __future__ import annotations

import argparse
import sys

import pytest

from exports import cli
from exports.domain import FileDecision, RequestStatus
from exports.testing import checker, create_request_at_status, make_env

hub_cli = pytest.importorskip("hub.cli")
hub_paths = pytest.importorskip("hub.paths")
S = RequestStatus


def enclave(capsys, tmp_path, *args):
    """``enclave export ...`` as hub/cli.py runs it: our registrar, its handler, CLIError to stderr."""
    parser = argparse.ArgumentParser(prog="enclave")
    cli.register(parser.add_subparsers(dest="command"))
    parsed = parser.parse_args(["export", *args])
    paths = hub_paths.EnclavePaths(tmp_path / "state", tmp_path)
    try:
        code = parsed.handler(parsed, paths) or 0
    except hub_cli.CLIError as exc:
        print(f"enclave: {exc}", file=sys.stderr)
        code = 1
    out = capsys.readouterr()
    return code, out.out, out.err


def test_list_and_show(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("ENCLAVE_EXPORTS_DB_URL", raising=False)
    env = make_env(tmp_path)
    rid = create_request_at_status(env, S.RELEASED)
    code, out, _ = enclave(capsys, tmp_path, "list", "--status", "RELEASED")
    assert code == 0 and rid in out and "RELEASED" in out
    code, out, _ = enclave(capsys, tmp_path, "show", rid)
    assert code == 0 and "results/table1.csv v1" in out and "-> RELEASED" in out
    code, _, err = enclave(capsys, tmp_path, "show", "r-nope")
    assert code == 1 and "request 'r-nope': no such export request" in err
    code, _, err = enclave(capsys, tmp_path, "list", "--status", "DONE")
    assert code == 1 and "--status 'DONE'" in err


def test_retry_releases_what_was_left_approved(tmp_path, capsys, monkeypatch):
    pytest.importorskip("audit")
    monkeypatch.delenv("ENCLAVE_EXPORTS_DB_URL", raising=False)
    env = make_env(tmp_path)
    rid = create_request_at_status(env, S.PARTIALLY_REVIEWED)
    for f in env.storage.get(rid).output_files:
        env.workflow.vote(checker("dave"), rid, f.id, FileDecision.APPROVED)
    monkeypatch.setattr(env.workflow, "release", lambda request_id: False)  # as if the process died here
    env.workflow.submit_review(checker("dave"), rid)
    assert env.storage.get(rid).status is S.APPROVED
    code, out, _ = enclave(capsys, tmp_path, "retry")
    assert code == 0 and f"released: {rid}" in out
    assert env.storage.get(rid).status is S.RELEASED
