"""Who counts as no longer accredited (hub/accreditation.py), and the site settings that drive identity."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from hub.accreditation import Standing, disabled
from hub.policy import PolicyError, load_policy

REPO = Path(__file__).resolve().parents[2]


def test_refusals_deleted_disabled_unaccredited():
    assert Standing("a", exists=False).refusal() == "deleted"
    assert Standing("a", True, disabled=True, groups=("enclave-researchers",)).refusal() == "disabled"
    assert Standing("a", True, groups=()).refusal() == "not_accredited"
    assert Standing("a", True, groups=("enclave-checkers",)).refusal() is None


def test_disabled_by_ppolicy_lock_or_a_past_shadow_expiry():
    today = 20_000
    assert disabled({"pwdAccountLockedTime": ["20260101000000Z"]}, today)
    assert disabled({"shadowExpire": [today]}, today) and disabled({"shadowExpire": 1}, today)
    assert not disabled({"shadowExpire": [today + 1]}, today)
    assert not disabled({"shadowExpire": -1}, today), "-1 means: never expires"
    assert not disabled({}, today)
    assert disabled({"shadowExpire": ["soon"]}, today), "an unreadable expiry fails closed"


@pytest.fixture
def policy(tmp_path):
    shutil.copytree(REPO / "policies", tmp_path / "policies")
    return tmp_path / "policies"


def edit_site(policy: Path, change) -> None:
    site = yaml.safe_load((policy / "site.yaml").read_text())
    change(site)
    (policy / "site.yaml").write_text(yaml.safe_dump(site))


def test_identity_settings_load_with_the_state_dir_expanded(policy, tmp_path):
    site = load_policy(policy, tmp_path / "state").site
    assert site.ldap.bind_dn.startswith("cn=enclave-reader,")
    assert site.ldap.bind_password_file == str(tmp_path / "state/ldap/reader.pw")
    assert site.ldap.outage_grace_seconds == 900
    assert (site.session.max_hours, site.session.idle_logout_minutes) == (12, 60)
    assert (site.mfa.lockout_after, site.mfa.lockout_seconds) == (5, 300)


@pytest.mark.parametrize(
    "change, where",
    [
        (lambda s: s["session"].update(max_hours=0), "session.max_hours"),
        (lambda s: s["session"].update(idle_minutes=5), "session"),
        (lambda s: s["mfa"].update(lockout_after=0), "mfa.lockout_after"),
        (lambda s: s["ldap"].update(outage_grace_seconds=-1), "ldap.outage_grace_seconds"),
    ],
)
def test_bad_identity_settings_are_refused_naming_the_field(policy, tmp_path, change, where):
    edit_site(policy, change)
    with pytest.raises(PolicyError) as err:
        load_policy(policy, tmp_path)
    assert f"site.yaml: {where}" in str(err.value)
