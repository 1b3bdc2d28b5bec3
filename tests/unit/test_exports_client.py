"""The in-container client (images/notebook/enclave_export) against the real service on loopback.

The host-side workspace directory stands in for /workspace (ENCLAVE_WORKSPACE), and the client runs as
a separate process, as it would inside the container, with the server's token in its environment."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from exports.domain import RequestStatus
from exports.testing import SAFE_CSV, checker, make_env, researcher, serve

CLIENT_SRC = Path(__file__).resolve().parents[2] / "images" / "notebook" / "enclave_export"
S = RequestStatus


@pytest.fixture
def env(tmp_path):
    return make_env(tmp_path)


@pytest.fixture
def svc(env):
    with serve(env) as served:
        yield served


def run(svc, env, *args, cwd=None, token=None, extra_env=None):
    environ = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": str(CLIENT_SRC),
        "ENCLAVE_EXPORT_URL": svc.url,
        "JUPYTERHUB_API_TOKEN": token if token is not None else svc.token(researcher("alice")),
        "ENCLAVE_WORKSPACE": str(env.workspaces["demo-cardio"]),
        **(extra_env or {}),
    }
    return subprocess.run(
        [sys.executable, "-m", "enclave_export", *args],
        capture_output=True,
        check=False,
        text=True,
        timeout=60,
        env=environ,
        cwd=cwd or env.workspaces["demo-cardio"],
    )


def test_request_list_show(svc, env):
    env.write("results/table1.csv", SAFE_CSV)
    env.write("results/low.csv", "g,n\na,4\nb,40\n")
    out = run(
        svc,
        env,
        "request",
        "results/table1.csv",
        "results/low.csv",
        "--context",
        "Table 1 and 2",
        "--controls",
        "none",
        cwd=env.workspaces["demo-cardio"] / "results" / "..",
    )
    assert out.returncode == 0, out.stderr
    assert "status SUBMITTED" in out.stdout
    assert "FAIL   Cells below the minimum count of 10: 1 cell(s)" in out.stdout and "[row 1 n]" in out.stdout
    rid = out.stdout.split()[2]
    listed = run(svc, env, "list")
    assert rid in listed.stdout and "SUBMITTED" in listed.stdout
    shown = json.loads(run(svc, env, "show", rid, "--json").stdout)
    assert shown["status"] == "SUBMITTED" and len(shown["files"]) == 2
    assert shown["files"][0]["provenance"]["server"] == "alice/demo-cardio"


def test_paths_relative_to_the_current_directory_and_absolute_under_workspace(svc, env):
    env.write("results/table1.csv", SAFE_CSV)
    out = run(
        svc,
        env,
        "request",
        "table1.csv",
        "--context",
        "c",
        "--controls",
        "c",
        "--draft",
        cwd=env.workspaces["demo-cardio"] / "results",
    )
    assert out.returncode == 0, out.stderr
    assert "results/table1.csv" in out.stdout and "status PENDING" in out.stdout


def test_a_path_outside_the_workspace_is_refused_before_anything_is_sent(svc, env):
    out = run(svc, env, "request", "../../etc/passwd.csv", "--context", "c", "--controls", "c")
    assert out.returncode == 1
    assert "only files inside" in out.stderr


def test_the_services_refusal_is_printed_with_the_file_named(svc, env, tmp_path):
    (tmp_path / "elsewhere.csv").write_text(SAFE_CSV)
    os.symlink(tmp_path / "elsewhere.csv", env.workspaces["demo-cardio"] / "link.csv")
    out = run(svc, env, "request", "link.csv", "--context", "c", "--controls", "c")
    assert out.returncode == 1
    assert "enclave-export: 400: groups[0].files[0].path 'link.csv'" in out.stderr
    assert "symbolic link" in out.stderr


def test_withdraw_and_resubmit_with_a_new_version(svc, env):
    path = env.write("results/table1.csv", SAFE_CSV)
    draft = run(
        svc, env, "--json", "request", "results/table1.csv", "--context", "c", "--controls", "c", "--draft"
    )
    draft_id = json.loads(draft.stdout)["id"]
    assert json.loads(run(svc, env, "withdraw", draft_id, "--json").stdout)["status"] == "WITHDRAWN"

    first = json.loads(
        run(svc, env, "request", "results/table1.csv", "--context", "c", "--controls", "c", "--json").stdout
    )
    env.workflow.return_request(checker("carol"), first["id"], "please round to 5")
    path.write_text("sex,age_band,n\nF,40-49,120\nM,40-49,135\n")
    again = run(svc, env, "resubmit", first["id"], "results/table1.csv", "--json")
    assert again.returncode == 0, again.stderr
    body = json.loads(again.stdout)
    assert (body["status"], body["round"]) == ("SUBMITTED", 2)
    assert [f["version"] for f in body["files"]] == [2]
    assert [f["sha256"] for f in body["previous_versions"]] == [first["files"][0]["sha256"]]


def test_outside_an_enclave_notebook_the_error_says_so(svc, env):
    out = run(svc, env, "list", token="")
    assert out.returncode == 1 and "JUPYTERHUB_API_TOKEN is not set" in out.stderr
    out = run(svc, env, "list", token="not-a-hub-token")
    assert out.returncode == 1 and "403" in out.stderr


def test_the_python_helper_sends_paths_and_never_bytes(svc, env, monkeypatch):
    monkeypatch.syspath_prepend(str(CLIENT_SRC))
    import enclave_export
    from enclave_export import client

    env.write("results/table1.csv", SAFE_CSV)
    monkeypatch.setenv("ENCLAVE_EXPORT_URL", svc.url)
    monkeypatch.setenv("JUPYTERHUB_API_TOKEN", svc.token(researcher("alice")))
    monkeypatch.setenv("ENCLAVE_WORKSPACE", str(env.workspaces["demo-cardio"]))
    monkeypatch.setenv("JPY_SESSION_NAME", str(env.workspaces["demo-cardio"] / "analysis.ipynb"))
    monkeypatch.chdir(env.workspaces["demo-cardio"])
    sent = []
    real_call = client.call
    monkeypatch.setattr(client, "call", lambda *a, **k: sent.append(a) or real_call(*a, **k))

    request = enclave_export.request(["results/table1.csv"], context="Table 1", controls="n >= 10")
    assert request["status"] == "SUBMITTED"
    assert request["files"][0]["provenance"]["notebook"] == "analysis.ipynb"
    body = json.dumps(sent[0][2])
    assert "120" not in body and SAFE_CSV.splitlines()[0] not in body  # no file content travels
    assert sent[0][2]["groups"][0]["files"] == [{"path": "results/table1.csv", "role": "output"}]
