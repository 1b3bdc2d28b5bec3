"""The real hub writes the audit trail: logins, refusals, spawns, mounts, stops, culls, logouts."""

from __future__ import annotations

import pytest

from audit import AuditLog
from hub.cli import main as enclave
from tests.harness import HubClient, wait_for

pytestmark = pytest.mark.integration


def records(hub, **filters):
    return list(AuditLog.open(hub.state).records(**filters))


def test_login_spawn_stop_are_on_a_verifiable_trail(hub, capsys):
    HubClient(hub, "alice", "not-her-password").login()
    HubClient(hub, "mallory").login()
    bob = HubClient(hub, "bob")
    bob.login()
    bob.start("demo-cardio")
    alice = HubClient(hub, "alice")
    alice.login()
    alice.spawn("demo-cardio")
    alice.stop("demo-cardio")
    alice.session.get(f"{hub.url}/hub/logout", timeout=10)

    logins = [(r["actor"], r["outcome"], r["details"]["reason"]) for r in records(hub, action="auth.login")]
    assert ("alice", "denied", "invalid username or password") in logins
    assert ("mallory", "denied", "not in any enclave group (not accredited)") in logins
    assert ("alice", "ok", "password and second factor verified") in logins

    # A spawn the hub answers 202 for (slow under load) is refused in the background: wait for its record.
    refused = wait_for(
        lambda: [r for r in records(hub, action="server.spawn", actor="bob") if r["outcome"] == "denied"],
        60,
        "bob's refused spawn on the trail",
    )
    assert refused and "bob is not a member of project demo-cardio" in refused[-1]["details"]["reason"]

    started = [r for r in records(hub, action="server.start", actor="alice", project="demo-cardio")]
    assert started and started[-1]["details"]["image_digest"].startswith("sha256:")
    assert started[-1]["target"] == "alice/demo-cardio"
    mounts = records(hub, action="dataset.mount", actor="alice")
    assert (
        mounts and mounts[-1]["target"] == "synthetic-omop@1" and mounts[-1]["details"]["read_only"] is True
    )
    stopped = records(hub, action="server.stop", actor="alice")
    assert stopped and stopped[-1]["details"]["image_digest"] == started[-1]["details"]["image_digest"]
    assert records(hub, action="auth.logout", actor="alice")

    assert enclave(["--state-dir", str(hub.state), "--policy-dir", str(hub.policy), "audit", "verify"]) == 0
    assert "audit log verified" in capsys.readouterr().out


def test_idle_cull_is_audited(fresh_hub):
    import yaml

    h = fresh_hub()
    site = yaml.safe_load((h.policy / "site.yaml").read_text())
    site["idle_timeout_seconds"] = 60
    (h.policy / "site.yaml").write_text(yaml.safe_dump(site))
    h.env_extra["ENCLAVE_CULL_EVERY"] = "5"
    h.start()
    alice = HubClient(h, "alice")
    alice.login()
    alice.spawn("demo-cardio")
    culled = wait_for(
        lambda: records(h, action="server.cull"), 150, "the idle culler to stop alice's server", 2
    )
    assert culled[-1]["actor"] == "service:idle-culler" and culled[-1]["target"] == "alice/demo-cardio"
    assert alice.server("demo-cardio") is None
