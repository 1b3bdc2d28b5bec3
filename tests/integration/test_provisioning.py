"""Provisioning through the `enclave` CLI takes effect on the running hub, and is audited."""

from __future__ import annotations

import pytest
import yaml

from audit import AuditLog
from hub.cli import main as enclave
from tests.harness import HubClient, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def admin(hub, tmp_path):
    """Run `enclave` as a directory user (default adam, the administrator), against the test hub."""

    def run(*argv, user="adam", password=None):
        secret = tmp_path / f"{user}.pw"
        secret.write_text(password or f"demo-{user}")
        return enclave(
            [
                "--state-dir",
                str(hub.state),
                "--policy-dir",
                str(hub.policy),
                *argv,
                "--as",
                user,
                "--password-file",
                str(secret),
            ]
        )

    return run


@pytest.fixture(autouse=True)
def restore_policy(hub):
    saved = {p: p.read_text() for p in (hub.policy / "projects").glob("*.yaml")}
    yield
    for p in (hub.policy / "projects").glob("*.yaml"):
        if p not in saved:
            p.unlink()
    for p, text in saved.items():
        if p.read_text() != text:
            p.write_text(text)
    assert enclave(["--state-dir", str(hub.state), "--policy-dir", str(hub.policy), "policy", "reload"]) == 0


def audit(hub, target=None, **filters):
    return [r for r in AuditLog.open(hub.state).records(**filters) if target is None or r["target"] == target]


def login(hub, user):
    client = HubClient(hub, user)
    assert client.login().status_code == 302
    return client


def test_add_then_remove_a_member_without_restarting_the_hub(hub, admin, capsys):
    erin = login(hub, "erin")
    assert erin.start("demo-oncology").status_code == 403

    assert admin("member", "add", "demo-oncology", "erin") == 0
    assert "+  - uid: erin" in capsys.readouterr().out
    wait_for(lambda: erin.start("demo-oncology").status_code in (201, 202), 15, "erin's spawn to be allowed")
    erin.wait_ready("demo-oncology")

    assert admin("member", "remove", "demo-oncology", "erin") == 0
    wait_for(lambda: erin.server("demo-oncology") is None, 30, "the enforcer to stop erin's server")
    refused = erin.start("demo-oncology")
    assert refused.status_code == 403 and "erin is not a member of project demo-oncology" in refused.text

    changes = [
        (r["actor"], r["details"]["change"])
        for r in audit(hub, action="policy.change", project="demo-oncology")
    ]
    assert ("adam", "member.add") in changes and ("adam", "member.remove") in changes
    enforced = audit(hub, action="policy.enforce", project="demo-oncology")
    assert enforced[-1]["target"] == "erin/demo-oncology"
    assert "erin is not a member of project demo-oncology" in enforced[-1]["details"]["reason"]


@pytest.mark.parametrize(
    "change",
    [("project", "suspend", "demo-cardio"), ("project", "set", "demo-cardio", "expiry=2026-01-02")],
    ids=["suspend", "expire"],
)
def test_suspended_or_expired_project_stops_servers_and_says_why(hub, admin, change):
    alice = login(hub, "alice")
    alice.spawn("demo-cardio")
    assert admin(*change) == 0
    wait_for(lambda: alice.server("demo-cardio") is None, 30, "the enforcer to stop alice's server")
    reason = (
        "project demo-cardio is suspended"
        if "suspend" in change
        else "project demo-cardio expired on 2026-01-02"
    )
    page = alice.session.get(f"{hub.url}/hub/spawn/alice/demo-cardio", timeout=30)
    assert reason in page.text, page.text[-2000:]
    home = alice.session.get(f"{hub.url}/hub/home", timeout=30).text
    assert ("suspended" if "suspend" in change else "expired") in home and reason in home
    enforced = audit(hub, action="policy.enforce", target="alice/demo-cardio")
    assert enforced and reason in enforced[-1]["details"]["reason"]


def test_member_expiry_is_enforced(hub, admin):
    doc = yaml.safe_load((hub.policy / "projects/demo-cardio.yaml").read_text())
    assert doc["members"][1]["uid"] == "erin"
    erin = login(hub, "erin")
    erin.spawn("demo-cardio")
    # A hand edit (policy files are also reviewed and merged like code).
    path = hub.policy / "projects/demo-cardio.yaml"
    path.write_text(path.read_text().replace("  - uid: erin\n", "  - uid: erin\n    expiry: 2026-01-01\n"))
    wait_for(lambda: erin.server("demo-cardio") is None, 30, "the enforcer to stop erin's server")
    response = erin.start("demo-cardio")
    assert "erin's membership of project demo-cardio expired on 2026-01-01" in response.text


def test_invalid_hand_edit_keeps_the_last_good_policy(hub, capsys):
    alice = login(hub, "alice")
    path = hub.policy / "projects/demo-cardio.yaml"
    path.write_text(path.read_text().replace("status: active", "status: [active"))
    code = enclave(["--state-dir", str(hub.state), "--policy-dir", str(hub.policy), "policy", "reload"])
    assert code == 1 and "keeps the last good one" in capsys.readouterr().err
    alice.spawn("demo-cardio")  # still allowed under the last good policy
    alice.stop("demo-cardio")
    assert "policy change refused, keeping the last good policy" in hub.log_text()
    refused = audit(hub, action="policy.change", outcome="error")
    assert refused and "projects/demo-cardio.yaml" in refused[-1]["details"]["files"]


def test_non_admin_cannot_change_policy(hub, admin, capsys):
    assert (
        admin(
            "project",
            "create",
            "sneaky",
            "--title",
            "x",
            "--pi",
            "alice",
            "--start",
            "2026-01-01",
            "--expiry",
            "2027-01-01",
            user="alice",
        )
        == 1
    )
    assert "alice is not in enclave-admins" in capsys.readouterr().err
    assert not (hub.policy / "projects/sneaky.yaml").exists()
    assert admin("member", "add", "demo-cardio", "bob", password="wrong") == 1
    assert "refused adam's password" in capsys.readouterr().err
    denied = audit(hub, action="policy.change", outcome="denied")
    assert {r["actor"] for r in denied} >= {"alice", "adam"}


def test_create_validates_and_dry_run_writes_nothing(hub, admin, capsys):
    args = [
        "project",
        "create",
        "demo-renal",
        "--title",
        "Renal outcomes",
        "--pi",
        "bob",
        "--start",
        "2026-01-01",
        "--expiry",
        "2027-12-31",
        "--dataset",
        "synthetic-omop",
    ]
    assert admin(*args, "--dry-run") == 0
    assert "dry run: nothing was written" in capsys.readouterr().out
    assert not (hub.policy / "projects/demo-renal.yaml").exists()
    assert admin(*args, "--status", "active") == 1
    assert "an active project needs DRB and IRB approval" in capsys.readouterr().err
    assert admin(*args, "--member", "zed") == 1
    assert "members: 'zed' not found in directory" in capsys.readouterr().err
    assert admin(*args) == 0
    created = yaml.safe_load((hub.policy / "projects/demo-renal.yaml").read_text())
    assert created["status"] == "proposed" and created["members"] == [{"uid": "bob"}]
    assert admin("project", "set", "demo-renal", "resources.memory=lots") == 1
    assert "resources.memory: 'lots' does not match" in capsys.readouterr().err


def test_policy_validate_reports_unaccredited_members(hub, tmp_path, capsys):
    secret = tmp_path / "adam.pw"
    secret.write_text("demo-adam")
    code = enclave(
        [
            "--state-dir",
            str(hub.state),
            "--policy-dir",
            str(hub.policy),
            "policy",
            "validate",
            "--directory",
            "--as",
            "adam",
            "--password-file",
            str(secret),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "WARN" in out and "members[2].uid: 'mallory' is not accredited" in out
