"""Policy loading: every bad file gets a message naming the file, the field and the rule."""

from __future__ import annotations

import shutil
import time
from datetime import date
from pathlib import Path

import pytest
import yaml

from hub.policy import PolicyError, PolicyStore, load_policy

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def policy_dir(tmp_path) -> Path:
    shutil.copytree(REPO / "policies", tmp_path / "policies")
    return tmp_path / "policies"


def edit(path: Path, change) -> None:
    doc = yaml.safe_load(path.read_text())
    change(doc)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))


def problems(policy_dir: Path) -> str:
    with pytest.raises(PolicyError) as info:
        load_policy(policy_dir, policy_dir.parent / "state")
    return str(info.value)


def test_demo_policy_loads(policy_dir):
    policy = load_policy(policy_dir, policy_dir.parent / "state")
    assert sorted(policy.projects) == ["demo-cardio", "demo-oncology"]
    cardio = policy.projects["demo-cardio"]
    assert [m.uid for m in cardio.members] == ["alice", "erin", "mallory"]
    assert cardio.thresholds["min_count"] == 10 and cardio.reviewers_required == 2
    assert policy.site.ldap.ca_file == str(policy_dir.parent / "state" / "ldap" / "ca.pem")


def test_unknown_field_names_file_and_path(policy_dir):
    edit(policy_dir / "projects/demo-cardio.yaml", lambda d: d["members"][1].update(role="owner"))
    message = problems(policy_dir)
    assert (
        "demo-cardio.yaml: members[1]: Additional properties are not allowed ('role' was unexpected)"
        in message
    )


def test_bad_status_value(policy_dir):
    edit(policy_dir / "projects/demo-cardio.yaml", lambda d: d.update(status="open"))
    assert "demo-cardio.yaml: status: 'open' is not one of" in problems(policy_dir)


def test_bad_date_format(policy_dir):
    edit(policy_dir / "projects/demo-cardio.yaml", lambda d: d.update(expiry="31/12/2028"))
    assert "demo-cardio.yaml: expiry: '31/12/2028' is not a 'date' (format)" in problems(policy_dir)


def test_malformed_yaml_names_line(policy_dir):
    (policy_dir / "projects/demo-cardio.yaml").write_text("id: demo-cardio\nmembers: [alice\n")
    message = problems(policy_dir)
    assert "demo-cardio.yaml: line 3, column 1: not valid YAML" in message


def test_missing_required_field(policy_dir):
    edit(policy_dir / "projects/demo-oncology.yaml", lambda d: d.pop("principal_investigator"))
    assert (
        "demo-oncology.yaml: (top level): 'principal_investigator' is a required property (required)"
        in problems(policy_dir)
    )


def test_id_must_match_file_name(policy_dir):
    edit(policy_dir / "projects/demo-oncology.yaml", lambda d: d.update(id="oncology"))
    assert "demo-oncology.yaml: id: 'oncology' must match the file name 'demo-oncology'" in problems(
        policy_dir
    )


def test_unknown_dataset_and_wrong_version(policy_dir):
    edit(
        policy_dir / "projects/demo-cardio.yaml",
        lambda d: d["datasets"].append({"id": "claims", "version": "1"}),
    )
    edit(policy_dir / "projects/demo-oncology.yaml", lambda d: d["datasets"][0].update(version="9"))
    message = problems(policy_dir)
    assert "demo-cardio.yaml: datasets[1].id: 'claims' is not in policies/datasets/" in message
    assert "demo-oncology.yaml: datasets[0].version: '9' is not the catalogued version '1'" in message


def test_duplicate_member(policy_dir):
    edit(policy_dir / "projects/demo-cardio.yaml", lambda d: d["members"].append({"uid": "alice"}))
    assert "demo-cardio.yaml: members[3].uid: 'alice' is listed twice" in problems(policy_dir)


def test_active_project_needs_drb_and_irb(policy_dir):
    edit(policy_dir / "projects/demo-cardio.yaml", lambda d: d.pop("approvals"))
    assert "demo-cardio.yaml: approvals: an active project needs DRB and IRB approval" in problems(policy_dir)


def test_thresholds_may_only_be_stricter(policy_dir):
    edit(policy_dir / "projects/demo-cardio.yaml", lambda d: d["exports"]["thresholds"].update(min_count=5))
    assert (
        "demo-cardio.yaml: exports.thresholds.min_count: 5 is less than the minimum of 10 (minimum)"
        in problems(policy_dir)
    )


def test_site_requires_image(policy_dir):
    edit(policy_dir / "site.yaml", lambda d: d.pop("image"))
    assert "site.yaml: (top level): 'image' is a required property (required)" in problems(policy_dir)


def test_access_refusals():
    policy = load_policy(REPO / "policies", Path("/nonexistent"))
    cardio = policy.projects["demo-cardio"]
    today = date(2027, 1, 1)
    assert cardio.access_refusal("alice", today) is None
    assert cardio.access_refusal("bob", today) == "bob is not a member of project demo-cardio"
    assert cardio.access_refusal("alice", date(2029, 1, 1)) == "project demo-cardio expired on 2028-12-31"
    assert cardio.access_refusal("alice", date(2025, 6, 1)) == "project demo-cardio starts on 2026-01-01"


def test_store_keeps_last_good_policy(policy_dir):
    store = PolicyStore(policy_dir, policy_dir.parent / "state")
    assert "erin" in [m.uid for m in store.current().projects["demo-cardio"].members]
    time.sleep(0.01)
    (policy_dir / "projects/demo-cardio.yaml").write_text("members: [\n")
    policy = store.current()
    assert "erin" in [m.uid for m in policy.projects["demo-cardio"].members], (
        "a bad edit must not change policy"
    )
    assert store.last_error is not None and "demo-cardio.yaml" in str(store.last_error)
    shutil.copy(REPO / "policies/projects/demo-cardio.yaml", policy_dir / "projects/demo-cardio.yaml")
    edit(policy_dir / "projects/demo-cardio.yaml", lambda d: d.update(members=[{"uid": "alice"}]))
    assert [m.uid for m in store.current().projects["demo-cardio"].members] == ["alice"]
    assert store.last_error is None
