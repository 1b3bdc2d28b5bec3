"""Path attacks on the export request: each gets a clear error naming the file, and changes nothing.

The workspace is attacker-controlled, so these use real files, symlinks, FIFOs and hard links.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from exports import workspace
from exports.domain import FileRefused
from exports.storage import RequestQuery
from exports.testing import SAFE_CSV, group, make_env, researcher


@pytest.fixture
def env(tmp_path):
    return make_env(tmp_path, max_file_bytes=4096)


def attempt(env, paths, who=None):
    """Try to create a request; return the refusal message after checking nothing was recorded."""
    before = env.storage.list(RequestQuery(limit=200)).total
    quarantine = sorted(p for p in (env.root / "state/exports/quarantine").rglob("*") if p.is_file())
    with pytest.raises(FileRefused) as info:
        env.workflow.create(who or researcher("alice"), "demo-cardio", [group(paths)], submit=True)
    assert env.storage.list(RequestQuery(limit=200)).total == before
    assert sorted(p for p in (env.root / "state/exports/quarantine").rglob("*") if p.is_file()) == quarantine
    refusal = env.audit.refusals()[-1]
    assert refusal["outcome"] == "denied" and refusal["details"]["kind"] == "file_refused"
    return str(info.value)


def test_dot_dot_is_refused(env):
    env.write("x.csv", SAFE_CSV, "demo-oncology")
    message = attempt(env, ["../demo-oncology/x.csv"])
    assert "files[0].path '../demo-oncology/x.csv': '..' is refused" in message


def test_absolute_paths_are_refused(env):
    message = attempt(env, ["/etc/passwd.csv"])
    assert "absolute paths are refused" in message


def test_a_symlink_to_data_is_refused(env, tmp_path):
    data = tmp_path / "data" / "synthetic-omop"
    data.mkdir(parents=True)
    (data / "person.csv").write_text("person_id,year_of_birth\n1,1950\n")
    os.symlink(data / "person.csv", env.workspaces["demo-cardio"] / "person.csv")
    message = attempt(env, ["person.csv"])
    assert "files[0].path 'person.csv'" in message and "symbolic link" in message


def test_a_symlinked_directory_on_the_way_is_refused(env, tmp_path):
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "t.csv").write_text(SAFE_CSV)
    os.symlink(tmp_path / "outside", env.workspaces["demo-cardio"] / "results")
    assert "symbolic link" in attempt(env, ["results/t.csv"])


def test_a_symlink_inside_the_workspace_is_not_followed_either(env):
    env.write("real.csv", SAFE_CSV)
    os.symlink("real.csv", env.workspaces["demo-cardio"] / "alias.csv")
    assert "symbolic link" in attempt(env, ["alias.csv"])


def test_a_file_in_another_projects_workspace_is_refused(env):
    env.write("secret.csv", SAFE_CSV, "demo-oncology")
    os.symlink(env.workspaces["demo-oncology"] / "secret.csv", env.workspaces["demo-cardio"] / "secret.csv")
    assert "symbolic link" in attempt(env, ["secret.csv"])
    # and bob's container cannot name alice's project at all
    with pytest.raises(Exception, match="this container belongs to project demo-oncology"):
        env.workflow.create(researcher("bob", "demo-oncology"), "demo-cardio", [group(["secret.csv"])])


def test_a_fifo_is_refused_without_hanging(env):
    os.mkfifo(env.workspaces["demo-cardio"] / "pipe.csv")
    assert "not a regular file (a FIFO)" in attempt(env, ["pipe.csv"])


def test_a_directory_is_refused(env):
    (env.workspaces["demo-cardio"] / "dir.csv").mkdir()
    assert "not a regular file (a directory)" in attempt(env, ["dir.csv"])


def test_an_oversized_file_is_refused(env):
    env.write("big.csv", "n\n" + "12\n" * 2000)
    assert "is over this project's cap of 4096" in attempt(env, ["big.csv"])


@pytest.mark.parametrize(
    "name,reason",
    [
        ("figure.svg", "SVG is refused"),
        ("data.parquet", "type 'parquet' is not allowed"),
        ("notes", "type '(none)' is not allowed"),
        ("analysis.ipynb", "type 'ipynb' is not allowed"),
    ],
)
def test_wrong_types_are_refused(env, name, reason):
    env.write(name, "<svg/>")
    assert reason in attempt(env, [name])


def test_a_png_that_is_not_a_png_is_refused(env):
    env.write("fig.png", "<svg xmlns='http://www.w3.org/2000/svg'><script>alert(1)</script></svg>")
    assert "not a PNG image" in attempt(env, ["fig.png"])


def test_hard_links_are_refused(env):
    original = env.write("a.csv", SAFE_CSV)
    os.link(original, env.workspaces["demo-cardio"] / "b.csv")
    assert "hard links" in attempt(env, ["b.csv"])


def test_a_missing_file_is_named(env):
    assert "files[0].path 'results/nope.csv': no such file in the workspace" in attempt(
        env, ["results/nope.csv"]
    )


def test_one_bad_file_refuses_the_whole_request(env):
    env.write("good.csv", SAFE_CSV)
    message = attempt(env, ["good.csv", "../x.csv"])
    assert "files[1].path" in message


def test_a_symlink_swapped_in_after_the_realpath_check_is_refused_by_the_kernel(env, tmp_path, monkeypatch):
    """The race: the path is clean when checked, then a directory becomes a symlink before the open.
    O_NOFOLLOW on every component refuses it even though the first check passed."""
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "t.csv").write_text(SAFE_CSV)
    env.write("results/t.csv", SAFE_CSV)
    ws = env.workspaces["demo-cardio"]
    real_check = workspace._check_realpath

    def check_then_swap(root, relpath, label):
        real_check(root, relpath, label)
        (ws / "results" / "t.csv").unlink()
        (ws / "results").rmdir()
        os.symlink(tmp_path / "outside", ws / "results")

    monkeypatch.setattr(workspace, "_check_realpath", check_then_swap)
    message = attempt(env, ["results/t.csv"])
    assert "'results' is a symbolic link" in message


def test_the_final_component_swapped_for_a_symlink_is_refused(env, tmp_path, monkeypatch):
    (tmp_path / "target.csv").write_text(SAFE_CSV)
    env.write("t.csv", SAFE_CSV)
    ws = env.workspaces["demo-cardio"]
    real_check = workspace._check_realpath

    def check_then_swap(root, relpath, label):
        real_check(root, relpath, label)
        (ws / "t.csv").unlink()
        os.symlink(tmp_path / "target.csv", ws / "t.csv")

    monkeypatch.setattr(workspace, "_check_realpath", check_then_swap)
    assert "'t.csv' is a symbolic link" in attempt(env, ["t.csv"])


@pytest.mark.parametrize(
    "raw,expected",
    [
        ("results/table1.csv", "results/table1.csv"),
        ("./results//table1.csv", "results/table1.csv"),
        ("results/./t.csv", "results/t.csv"),
    ],
)
def test_harmless_path_spellings_are_normalised(raw, expected):
    assert workspace.normalize_relpath(raw, "p") == expected


@pytest.mark.parametrize("raw", ["", "  ", "a/../../b.csv", "a\\b.csv", "a\x00.csv", ".", "/"])
def test_path_spellings_that_are_refused(raw):
    with pytest.raises(FileRefused):
        workspace.normalize_relpath(raw, "p")


def test_the_file_is_frozen_editing_the_workspace_afterwards_changes_nothing(env):
    path: Path = env.write("results/t.csv", SAFE_CSV)
    request = env.workflow.create(researcher("alice"), "demo-cardio", [group(["results/t.csv"])], submit=True)
    frozen = request.output_files[0]
    path.write_text("sex,n\nF,3\n")  # the researcher edits the workspace copy
    again = env.workflow.get(researcher("alice"), request.id)
    assert again.output_files[0].sha256 == frozen.sha256
    assert env.workflow.quarantine.get(frozen.sha256) == SAFE_CSV.encode()
    stored = env.root / "state/exports/quarantine" / frozen.sha256[:2] / frozen.sha256
    assert stored.read_bytes() == SAFE_CSV.encode()
    assert oct(stored.stat().st_mode & 0o777) == "0o600"
