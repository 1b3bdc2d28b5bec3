"""Directory groups -> enclave roles (pure mapping; the real directory is exercised in integration)."""

from hub.auth import enclave_roles, groups_from_dns


def test_only_enclave_groups_are_taken():
    dns = [
        "cn=enclave-checkers,ou=groups,dc=enclave,dc=test",
        "CN=enclave-researchers,ou=groups,dc=enclave,dc=test",
        "cn=staff,ou=groups,dc=enclave,dc=test",
        "uid=alice,ou=people,dc=enclave,dc=test",
    ]
    assert groups_from_dns(dns) == ["enclave-checkers", "enclave-researchers"]
    assert groups_from_dns([]) == []


def test_roles_follow_separation_of_duties():
    roles = {r["name"]: r for r in enclave_roles()}
    admin = set(roles["enclave-admin"]["scopes"])
    checker = set(roles["enclave-checker"]["scopes"])
    researcher = set(roles["enclave-researcher"]["scopes"])
    assert not any(s.startswith(("access:servers", "admin:", "servers")) for s in admin), (
        "admins never open notebooks"
    )
    assert "custom:exports:review" not in admin, "admins never vote on exports"
    assert "custom:exports:review" in checker and "custom:exports:request" not in checker
    assert "custom:exports:request" in researcher and "custom:exports:review" not in researcher
    assert all(s.endswith("!user") for s in roles["user"]["scopes"]), (
        "the base role reaches only the user's own things"
    )
    assert roles["enclave-admin"]["groups"] == ["enclave-admins"]
