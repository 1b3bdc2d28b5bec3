"""``enclave doctor`` against the real test hub: the posture is OK while a server runs, and the doctor
fails -- naming the bridge -- when that bridge's firewall rules are deleted, or a key file is loosened."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys

import pytest

from hub import firewall
from tests.harness import HubClient

pytestmark = pytest.mark.integration

PROJECT = "demo-cardio"


def doctor(hub, *args: str) -> tuple[int, str]:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "hub.cli",
            "--state-dir",
            str(hub.state),
            "--policy-dir",
            str(hub.policy),
            "doctor",
            *args,
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return proc.returncode, proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def running(hub):
    alice = HubClient(hub, "alice")
    assert alice.login().status_code == 302
    if not alice.server(PROJECT):
        alice.spawn(PROJECT)
    yield hub.network(PROJECT)
    if alice.server(PROJECT):
        alice.stop(PROJECT)


def test_posture_is_ok_while_a_server_runs(hub, running):
    code, output = doctor(hub, "--json")
    result = json.loads(output)
    assert code == 0 and result["ok"] is True, output
    reasons = {c["name"]: c["reason"] for c in result["checks"]}
    assert set(reasons) == {
        "engine",
        "firewall",
        "networks",
        "profile",
        "image",
        "keys",
        "proxy",
        "lxcfs",
        "services",
        "enforcer",
        "oauth",
        "disk",
        "identity",
        "tls",
    }
    assert "CVE-2024-29018" in reasons["engine"]
    assert f"admitting only tcp {hub.hub_port} (hub) and {hub.exports_port} (exports)" in reasons["firewall"]


def test_text_output_and_rules(hub, running):
    code, output = doctor(hub, "--rules")
    assert code == 0, output
    lines = output.splitlines()
    assert [line.split()[0] for line in lines[:12]] == ["OK"] * 12
    bridge = firewall.network_bridge(running.attrs)
    assert f"-A ENCLAVE-INPUT -i {bridge} -j REJECT --reject-with icmp-admin-prohibited" in output
    assert f"-A ENCLAVE-INPUT -i {bridge} -p tcp -m tcp --dport {hub.hub_port} -j ACCEPT" in output


def test_deleted_bridge_rules_fail_the_firewall_check(hub, running):
    bridge = firewall.network_bridge(running.attrs)
    ports = [hub.hub_port, hub.exports_port]
    rules = subprocess.run(
        ["iptables", "-S", firewall.CHAIN], capture_output=True, text=True, check=True
    ).stdout
    mine = [line for line in rules.splitlines() if f"-i {bridge} " in line]
    assert len(mine) == len(firewall.bridge_rules(bridge, ports)), rules
    try:
        for line in mine:  # shlex: iptables quotes the LOG rule's prefix
            subprocess.run(["iptables", "-w", "10", "-D", *shlex.split(line)[1:]], check=True)
        code, output = doctor(hub)
        assert code == 3, output
        firewall_line = next(line for line in output.splitlines() if line.split()[1] == "firewall")
        assert firewall_line.startswith("FAIL") and f"no rules for bridge {bridge}" in firewall_line
    finally:
        firewall.ensure_bridge(bridge, ports)
    code, output = doctor(hub)
    assert code == 0, f"the restored rules should pass again:\n{output}"


def test_a_loosened_key_file_fails_the_keys_check(hub, running):
    key = hub.state / "secrets" / "cookie_secret"
    key.chmod(0o644)
    try:
        code, output = doctor(hub)
        assert code == 3
        assert f"FAIL  keys       {key} is mode 0644, not 0600" in output
    finally:
        key.chmod(0o600)
