"""The host firewall's life cycle on a real hub: rules follow the network's real bridge, come back at hub
start (as after a reboot, when dockerd still has the networks but iptables is empty), and ``enclave
doctor`` sees a bridge that has none.
"""

from __future__ import annotations

import subprocess
import sys

import docker
import pytest

from hub import firewall
from tests.harness import HubClient
from tests.integration.test_attacks import REJECTED, probe

pytestmark = pytest.mark.integration

PROJECT = "demo-cardio"


def doctor_firewall_line(hub) -> str:
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
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return next(line for line in proc.stdout.splitlines() if line.split()[1] == "firewall")


def test_a_network_made_elsewhere_is_closed_on_its_real_bridge(fresh_hub):
    """An internal network with the project's name but Docker's own bridge name (br-<id>): made by hand,
    restored, or left by an older version. The spawner accepts it (it is internal), so it must firewall
    the bridge the network really has."""
    hub = fresh_hub()
    net = docker.from_env().networks.create(f"{hub.prefix}{PROJECT}", driver="bridge", internal=True)
    bridge = firewall.network_bridge(docker.from_env().api.inspect_network(net.id))
    assert bridge.startswith("br-")
    try:
        hub.start()
        alice = HubClient(hub, "alice")
        assert alice.login().status_code == 302
        alice.spawn(PROJECT)
        line = doctor_firewall_line(hub)
        gateway = hub.network(PROJECT).attrs["IPAM"]["Config"][0]["Gateway"]
        result = probe(hub.container("alice", PROJECT), f"out(tcp({gateway!r}, 22))")
        assert result == REJECTED, (
            f"the host answers on {gateway}:22 from a container on {bridge}: {result}; {line}"
        )
        assert line.startswith("OK"), line
    finally:
        firewall.remove_bridge(bridge)  # the harness removes rules by our own bridge names only


def test_doctor_sees_a_bridge_without_rules(fresh_hub):
    """Whatever the spawner does, the doctor checks the bridges networks really have."""
    hub = fresh_hub()
    net = docker.from_env().networks.create(f"{hub.prefix}{PROJECT}", driver="bridge", internal=True)
    bridge = firewall.network_bridge(docker.from_env().api.inspect_network(net.id))
    try:
        line = doctor_firewall_line(hub)
        assert line.startswith("FAIL") and f"no rules for bridge {bridge}" in line, line
    finally:
        net.remove()


def test_hub_start_closes_existing_networks_again(fresh_hub):
    hub = fresh_hub().start()
    alice = HubClient(hub, "alice")
    assert alice.login().status_code == 302
    alice.spawn(PROJECT)
    alice.stop(PROJECT)
    bridge = firewall.network_bridge(hub.network(PROJECT).attrs)
    hub.stop_hub()
    firewall.remove_bridge(bridge)  # what a reboot does to iptables; the network itself survives in dockerd
    assert firewall.posture_problems(firewall.snapshot(), [bridge], [hub.hub_port, hub.exports_port])
    hub.start()
    assert firewall.posture_problems(firewall.snapshot(), [bridge], [hub.hub_port, hub.exports_port]) == []
