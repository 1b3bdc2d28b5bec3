"""``enclave doctor`` on hand-made observations: every check passes on a sound installation and names
the fault on each kind of weakness; the command prints one line per check and exits 3 on a weakness."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from hub import doctor, firewall
from hub.cli import main
from hub.doctor import ContainerView, FileView, NetworkView, Observed
from hub.policy import build_site
from hub.security_profile import (
    ENGINE_DEFAULT_MASKED_PATHS,
    ENGINE_DEFAULT_READONLY_PATHS,
    LXCFS_FILES,
    SHARED_KERNEL_MASKED_PATHS,
)

BRIDGE = "enc0123456789"
GATEWAY = "172.30.0.1"
IMAGE_ID = "sha256:" + "a" * 64
SITE = build_site(
    {
        "image": "enclave/notebook:0.1",
        "hub_port": 8081,
        "exports_port": 8082,
        "proxy_api_port": 8001,
        "ldap": {
            "server_address": "127.0.0.1",
            "ca_file": None,
            "user_dn_template": "uid={username},ou=people,dc=x",
            "groups_base": "ou=groups,dc=x",
            "bind_dn": "cn=enclave-reader,ou=services,dc=x",
            "bind_password_file": "{state}/ldap/reader.pw",
        },
    },
    Path("/state"),
)


def tables() -> dict:
    """The listings iptables prints for one correctly closed bridge."""
    chain = "\n".join(f"-A {' '.join(r)}" for r in firewall.bridge_rules(BRIDGE, [8081, 8082]))
    forward = "\n".join(f"-A {' '.join(r)}" for r in firewall.forward_rules(BRIDGE))
    v6 = firewall.ipv6_rules(BRIDGE)
    return {
        ("iptables", "INPUT"): f"-P INPUT ACCEPT\n-A INPUT -j {firewall.CHAIN}\n",
        ("iptables", firewall.CHAIN): f"-N {firewall.CHAIN}\n{chain}\n",
        ("iptables", "DOCKER-USER"): f"-N DOCKER-USER\n{forward}\n-A DOCKER-USER -j RETURN\n",
        ("ip6tables", "INPUT"): f"-P INPUT ACCEPT\n-A INPUT -j {firewall.CHAIN}\n",
        ("ip6tables", firewall.CHAIN): f"-N {firewall.CHAIN}\n-A {' '.join(v6[0])}\n",
        ("ip6tables", "FORWARD"): f"-P FORWARD ACCEPT\n-A {' '.join(v6[1])}\n",
    }


def locked_down_attrs() -> dict:
    return {
        "Config": {
            "User": "1000:1000",
            "Image": "enclave/notebook:0.1",
            "Healthcheck": {"Test": ["CMD", "true"]},
            "Env": ["JUPYTERHUB_SSL_KEYFILE=/etc/enclave-tls/server.key"],
        },
        "HostConfig": {
            "CapDrop": ["ALL"],
            "CapAdd": None,
            "Privileged": False,
            "ReadonlyRootfs": True,
            "SecurityOpt": ["no-new-privileges:true"],
            "PidMode": "",
            "UTSMode": "",
            "UsernsMode": "",
            "IpcMode": "private",
            "CgroupnsMode": "private",
            "NetworkMode": "enclave-demo-cardio",
            "Devices": None,
            "PortBindings": None,
            "PublishAllPorts": False,
            "Memory": 2 << 30,
            "MemorySwap": 2 << 30,
            "PidsLimit": 512,
            "CpuQuota": 100000,
            "Dns": [GATEWAY],
            "Ulimits": [
                {"Name": "nofile", "Hard": 4096},
                {"Name": "nproc", "Hard": 16384},
                {"Name": "core", "Hard": 0},
            ],
            "Tmpfs": {"/tmp": "rw,noexec,nosuid,nodev,size=512m"},
            "CpuShares": 512,
            "MaskedPaths": [*ENGINE_DEFAULT_MASKED_PATHS, *SHARED_KERNEL_MASKED_PATHS],
            "ReadonlyPaths": list(ENGINE_DEFAULT_READONLY_PATHS),
        },
        "Mounts": [
            {"Source": "/s/data/p/d/1", "Destination": "/data/d", "RW": False},
            {"Source": "/s/workspaces/p", "Destination": "/workspace", "RW": True},
            *({"Source": f"/var/lib/lxcfs/{s}", "Destination": d, "RW": False} for s, d in LXCFS_FILES),
        ],
    }


def container(**changes) -> ContainerView:
    base = ContainerView(
        name="enclave-alice--demo-cardio",
        networks={"enclave-demo-cardio": GATEWAY},
        dns=(GATEWAY,),
        image_id=IMAGE_ID,
        image_name="enclave/notebook:0.1",
        attrs=locked_down_attrs(),
    )
    return dataclasses.replace(base, **changes)


def secrets(mode_of: dict | None = None) -> tuple[FileView, ...]:
    modes = {
        "secrets": 0o700,
        "proxy_auth_token": 0o600,
        "cookie_secret": 0o600,
        "audit-mac.key": 0o600,
        "audit-checkpoint.ed25519": 0o600,
        **(mode_of or {}),
    }
    return tuple(
        FileView(
            f"/state/secrets/{name}" if name != "secrets" else "/state/secrets",
            mode,
            is_dir=name == "secrets",
        )
        for name, mode in modes.items()
    )


def sound(**changes) -> Observed:
    obs = Observed(
        site=SITE,
        engine_version="20.10.24+dfsg1",
        networks=(NetworkView("enclave-demo-cardio", BRIDGE, GATEWAY, True),),
        containers=(container(),),
        site_image_id=IMAGE_ID,
        tables=tables(),
        secrets=secrets(),
        audit_files=(
            FileView("/state/audit", 0o750, is_dir=True),
            FileView("/state/audit/audit-00000001.jsonl", 0o640),
        ),
        proxy_token="0123456789abcdef" * 4,
        proxy_unauthenticated_status=403,
        **running_services(),
        reader_password=FileView("/state/ldap/reader.pw", 0o600),
    )
    return dataclasses.replace(obs, **changes)


HUB_PID = 4242


def running_services() -> dict:
    """A running hub with each managed service once, its children, answering (hub/services.py)."""
    from hub.services import SERVICE_NAMES, ServiceProcess

    return {
        "hub_pid": HUB_PID,
        "services": tuple(
            ServiceProcess(name, 5000 + i, HUB_PID, HUB_PID) for i, name in enumerate(SERVICE_NAMES)
        ),
        "service_answers": {"exports": None, "enclave-gate": None},
        "exports_oauth": None,
        "free_bytes": 10 * 1024**3,
    }


def test_identity_needs_the_directory_reader_and_a_private_password():
    no_reader = dataclasses.replace(SITE, ldap=dataclasses.replace(SITE.ldap, bind_dn=None))
    assert "next login" in failing(sound(site=no_reader))["identity"]
    assert "missing" in failing(sound(reader_password=FileView("/state/ldap/reader.pw", None)))["identity"]
    assert "0600" in failing(sound(reader_password=FileView("/state/ldap/reader.pw", 0o644)))["identity"]


def failing(obs: Observed) -> dict[str, str]:
    return {c.name: c.reason for c in doctor.diagnose(obs) if not c.ok}


def test_a_sound_installation_passes_every_check():
    assert failing(sound()) == {}


@pytest.mark.parametrize(
    "version,fixed",
    [
        ("20.10.24+dfsg1", False),
        ("23.0.10", False),
        ("23.0.11", True),
        ("24.0.9", False),
        ("25.0.4", False),
        ("25.0.5", True),
        ("26.0.0", True),
        ("28.2.2", True),
        ("garbage", False),
    ],
)
def test_cve_2024_29018_fix_by_engine_version(version, fixed):
    assert doctor.dns_fix_present(version) is fixed


def test_old_engine_without_the_dns_mitigation_fails():
    obs = sound(containers=(container(dns=()),))
    assert "CVE-2024-29018" in failing(obs)["engine"]
    assert "HostConfig.Dns is [], not its network gateway ['172.30.0.1']" in failing(obs)["engine"]


def test_old_engine_without_the_firewall_chain_fails():
    obs = sound(tables={**tables(), ("iptables", firewall.CHAIN): None})
    assert "chain ENCLAVE-INPUT does not exist" in failing(obs)["engine"]


def test_fixed_engine_needs_no_mitigation():
    assert "engine" not in failing(sound(engine_version="26.1.4", containers=(container(dns=()),)))


def test_unreachable_engine_fails_every_engine_check():
    obs = sound(engine_version=None, engine_error="ConnectionError: no socket", networks=(), containers=())
    reasons = failing(obs)
    assert reasons["engine"] == "Docker engine unreachable: ConnectionError: no socket"
    assert set(reasons) == {"engine", "firewall", "networks", "profile", "image"}


def test_a_bridge_without_rules_fails_the_firewall_check():
    obs = sound(tables={**tables(), ("iptables", firewall.CHAIN): f"-N {firewall.CHAIN}\n"})
    assert f"no rules for bridge {BRIDGE}" in failing(obs)["firewall"]


def test_a_network_that_routes_out_fails():
    obs = sound(networks=(NetworkView("enclave-demo-cardio", BRIDGE, GATEWAY, False),))
    assert failing(obs)["networks"] == "not internal (they route out): enclave-demo-cardio"


def test_a_container_also_on_another_network_fails():
    obs = sound(containers=(container(networks={"enclave-demo-cardio": GATEWAY, "bridge": "172.17.0.1"}),))
    assert failing(obs)["networks"] == "enclave-alice--demo-cardio is also on bridge"


def test_a_privileged_container_fails_the_profile_check():
    attrs = locked_down_attrs()
    attrs["HostConfig"].update(Privileged=True, CapAdd=["SYS_ADMIN"])
    attrs["Mounts"].append(
        {"Source": "/var/run/docker.sock", "Destination": "/var/run/docker.sock", "RW": True}
    )
    reason = failing(sound(containers=(container(attrs=attrs),)))["profile"]
    assert "HostConfig.Privileged is true" in reason
    assert "HostConfig.CapAdd adds ['SYS_ADMIN']" in reason
    assert "the Docker socket is mounted" in reason


def test_a_container_on_another_image_fails():
    other = container(
        name="enclave-bob--demo-oncology", image_id="sha256:" + "b" * 64, image_name="debian:bookworm"
    )
    reason = failing(sound(containers=(container(), other)))["image"]
    assert "enclave-bob--demo-oncology runs debian:bookworm (bbbbbbbbbbbb)" in reason


def test_a_missing_site_image_fails():
    assert "is not on this engine" in failing(sound(site_image_id=None))["image"]


@pytest.mark.parametrize(
    "modes,expected",
    [
        ({"secrets": 0o755}, "/state/secrets is mode 0755, not a 0700 directory"),
        ({"cookie_secret": 0o644}, "/state/secrets/cookie_secret is mode 0644, not 0600"),
        ({"audit-mac.key": 0o640}, "/state/secrets/audit-mac.key is mode 0640, not 0600"),
    ],
)
def test_loose_key_modes_fail(modes, expected):
    assert expected in failing(sound(secrets=secrets(modes)))["keys"]


def test_audit_records_without_their_keys_fail():
    files = tuple(f for f in secrets() if not f.path.endswith("audit-mac.key"))
    assert "audit-mac.key is missing" in failing(sound(secrets=files))["keys"]


def test_a_world_writable_audit_file_fails():
    obs = sound(
        audit_files=(FileView("/state/audit", 0o750, True), FileView("/state/audit/checkpoints.jsonl", 0o666))
    )
    assert "others can write the audit trail" in failing(obs)["keys"]


def test_a_symlinked_secret_fails():
    files = secrets() + (FileView("/state/secrets/evil", 0o777, is_link=True),)
    assert "/state/secrets/evil is a symbolic link" in failing(sound(secrets=files))["keys"]


@pytest.mark.parametrize(
    "token,status,expected",
    [
        (None, None, "proxy_auth_token is missing"),
        ("changeme", 403, "is trivial (8 characters"),
        ("a" * 64, 403, "is trivial (64 characters, 1 distinct)"),
        ("0123456789abcdef" * 4, 200, "answers 200 without a token"),
    ],
)
def test_proxy_token_weaknesses(token, status, expected):
    assert expected in failing(sound(proxy_token=token, proxy_unauthenticated_status=status))["proxy"]


def test_the_command_prints_one_line_per_check_and_exits_3_on_a_weakness(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(doctor, "observe", lambda paths: sound(site_image_id=None))
    assert main(["--state-dir", str(tmp_path), "doctor"]) == doctor.EXIT_WEAK
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[:2] for line in lines] == [
        ["OK", "engine"],
        ["OK", "firewall"],
        ["OK", "networks"],
        ["OK", "profile"],
        ["FAIL", "image"],
        ["OK", "keys"],
        ["OK", "proxy"],
        ["OK", "lxcfs"],
        ["OK", "services"],
        ["OK", "enforcer"],
        ["OK", "oauth"],
        ["OK", "disk"],
        ["OK", "identity"],
        ["OK", "tls"],
    ]


def test_the_command_exits_0_and_speaks_json(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(doctor, "observe", lambda paths: sound())
    monkeypatch.setattr(firewall, "listing", lambda: "# iptables ENCLAVE-INPUT\n-A ...")
    assert main(["--state-dir", str(tmp_path), "doctor", "--json", "--rules"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] is True and len(doc["checks"]) == 14 and doc["rules"].startswith("# iptables")


def test_lxcfs_down_is_a_weakness_that_says_what_to_do():
    reasons = failing(
        sound(lxcfs_problem="lxcfs is not mounted at /var/lib/lxcfs (deploy/lib.sh ensure_lxcfs starts it)")
    )
    assert list(reasons) == ["lxcfs"] and "ensure_lxcfs" in reasons["lxcfs"] and "refused" in reasons["lxcfs"]


def test_a_container_without_the_masked_counters_fails_the_profile_check():
    attrs = locked_down_attrs()
    attrs["HostConfig"]["MaskedPaths"] = None  # the engine's defaults only: /proc/diskstats readable
    reasons = failing(sound(containers=(container(attrs=attrs),)))
    assert "MaskedPaths lacks" in reasons["profile"]
