"""The host firewall's rules, against an in-memory iptables: idempotence, no open window while a rule set
is replaced, removal, and the checks ``enclave doctor`` runs on a listing."""

from __future__ import annotations

import re
import subprocess

import pytest

from hub import firewall
from hub.firewall import CHAIN, Rule, bridge_rules, posture_problems

BRIDGE = "encaaaaaaaaaa"
OTHER = "encbbbbbbbbbb"
QUOTED_PREFIX = re.compile(r"--log-prefix (\S+)")


class FakeIptables:
    """Enough of iptables/ip6tables for hub/firewall.py: -N -S -C -A -I -D, with rules kept as Rule."""

    MUTATING = ("-N", "-A", "-I", "-D")

    def __init__(self):
        self.chains = {tool: {"INPUT": [], "FORWARD": []} for tool in firewall.TOOLS}
        self.log: list[tuple[str, ...]] = []
        self.after_each_change = None  # callback(fake), to check invariants at every intermediate state

    def listing(self, tool: str, chain: str) -> str:
        rules = self.chains[tool][chain]
        # iptables prints a LOG prefix in double quotes: readers must not split the line naively
        lines = ["-A " + QUOTED_PREFIX.sub(r'--log-prefix "\1"', r.text) for r in rules]
        return "\n".join([f"-N {chain}", *lines]) + "\n"

    def __call__(self, tool: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        self.log.append((tool, *args))
        op, chain, rest = args[0], args[1], list(args[2:])
        chains = self.chains[tool]
        code, out = 0, ""
        if op == "-S":
            code, out = (0, self.listing(tool, chain)) if chain in chains else (1, "")
        elif op == "-N":
            chains.setdefault(chain, [])
        elif op == "-C":
            code = 0 if Rule.parse([chain, *rest]) in chains.get(chain, []) else 1
        elif op == "-A":
            chains[chain].append(Rule.parse([chain, *rest]))
        elif op == "-I":
            chains[chain].insert(int(rest[0]) - 1, Rule.parse([chain, *rest[1:]]))
        elif op == "-D":
            if len(rest) == 1 and rest[0].isdigit():
                del chains[chain][int(rest[0]) - 1]
            elif Rule.parse([chain, *rest]) in chains[chain]:
                chains[chain].remove(Rule.parse([chain, *rest]))
            else:
                code = 1  # iptables: "Bad rule (does a matching rule exist in that chain?)"
        if check and code:
            raise firewall.FirewallError(f"{tool} {' '.join(args)} failed")
        if op in self.MUTATING and self.after_each_change:
            self.after_each_change(self)
        return subprocess.CompletedProcess([tool, *args], code, out, "")

    def tables(self) -> dict:
        return {
            (tool, chain): self.listing(tool, chain) for tool in firewall.TOOLS for chain in self.chains[tool]
        }


def verdict(fake: FakeIptables, bridge: str, port: int, state: str = "NEW") -> str:
    """What INPUT does with a tcp packet from ``bridge`` to ``port`` on the host (policy ACCEPT)."""
    for rule in fake.chains["iptables"]["INPUT"]:
        if rule.target == CHAIN:
            for r in fake.chains["iptables"][CHAIN]:
                if r.in_iface not in (None, bridge):
                    continue
                if r.ctstate and state not in r.ctstate:
                    continue
                if r.dport is not None and r.dport != str(port):
                    continue
                if r.target == "LOG":  # logs and goes on to the next rule
                    continue
                return r.target
    return "ACCEPT"


@pytest.fixture
def fake(monkeypatch, tmp_path):
    fake = FakeIptables()
    monkeypatch.setattr(firewall, "_run", fake)
    monkeypatch.setattr(firewall.shutil, "which", lambda tool: f"/usr/sbin/{tool}")
    monkeypatch.setattr(firewall, "LOCK_FILE", tmp_path / "firewall.lock")
    return fake


def mutations(fake: FakeIptables) -> list[tuple[str, ...]]:
    return [c for c in fake.log if c[1] in FakeIptables.MUTATING]


def test_bridge_is_closed_except_the_hub_and_export_ports(fake):
    firewall.ensure_bridge(BRIDGE, [8081, 8082])
    assert verdict(fake, BRIDGE, 22) == "REJECT"
    assert verdict(fake, BRIDGE, 8001) == "REJECT", "the proxy API must not be reachable"
    assert verdict(fake, BRIDGE, 8081) == verdict(fake, BRIDGE, 8082) == "ACCEPT"
    assert verdict(fake, BRIDGE, 22, state="ESTABLISHED") == "ACCEPT", "replies to the proxy's connections"
    assert verdict(fake, OTHER, 22) == "ACCEPT", "only enclave bridges are filtered"
    assert fake.chains["iptables"]["INPUT"][0].target == CHAIN, "the jump comes first in INPUT"


def test_ensure_twice_changes_nothing_the_second_time(fake):
    firewall.ensure_bridge(BRIDGE, [8081, 8082])
    fake.log.clear()
    firewall.ensure_bridge(BRIDGE, [8082, 8081, 8081])
    assert mutations(fake) == []


def test_changing_the_ports_never_leaves_the_bridge_open(fake):
    """A naive replace (delete the old rules, then add the new) opens every running container of the
    project to the host for the duration; every intermediate state here must still reject."""
    firewall.ensure_bridge(BRIDGE, [8081, 8082])
    firewall.ensure_bridge(OTHER, [8081, 8082])
    states = []

    def closed(f):
        states.append((verdict(f, BRIDGE, 22), verdict(f, BRIDGE, 8081)))

    fake.after_each_change = closed
    firewall.ensure_bridge(BRIDGE, [8081, 9000])
    assert states, "the port change was not applied"
    assert all(s == ("REJECT", "ACCEPT") for s in states), states
    assert verdict(fake, BRIDGE, 8082) == "REJECT" and verdict(fake, BRIDGE, 9000) == "ACCEPT"
    mine = [r for r in fake.chains["iptables"][CHAIN] if r.in_iface == BRIDGE]
    assert mine == [Rule.parse(r) for r in bridge_rules(BRIDGE, [8081, 9000])], "exactly one rule set"
    assert [r for r in fake.chains["iptables"][CHAIN] if r.in_iface == OTHER] == [
        Rule.parse(r) for r in bridge_rules(OTHER, [8081, 8082])
    ], "another bridge's rules are untouched"


def test_forwarding_and_ipv6_are_closed_too(fake):
    firewall.ensure_bridge(BRIDGE, [8081])
    assert (
        Rule.parse(f"-A DOCKER-USER -i {BRIDGE} ! -o {BRIDGE} -j REJECT --reject-with icmp-admin-prohibited")
        in fake.chains["iptables"]["DOCKER-USER"]
    )
    assert Rule.parse(f"-A {CHAIN} -i {BRIDGE} -j DROP") in fake.chains["ip6tables"][CHAIN]
    assert Rule.parse(f"-A FORWARD -i {BRIDGE} -j DROP") in fake.chains["ip6tables"]["FORWARD"]


def test_remove_bridge_removes_only_that_bridge(fake):
    firewall.ensure_bridge(BRIDGE, [8081])
    firewall.ensure_bridge(OTHER, [8081])
    firewall.remove_bridge(BRIDGE)
    everything = [r for tool in fake.chains.values() for rules in tool.values() for r in rules]
    assert not [r for r in everything if BRIDGE in (r.in_iface, r.out_iface)]
    assert verdict(fake, OTHER, 22) == "REJECT"


def test_rule_we_add_equals_the_rule_iptables_prints():
    added = Rule.parse([CHAIN, "-i", BRIDGE, "-p", "tcp", "--dport", "8081", "-j", "ACCEPT"])
    printed = Rule.parse(f"-A {CHAIN} -i {BRIDGE} -p tcp -m tcp --dport 8081 -j ACCEPT")
    assert added == printed
    assert Rule.parse(bridge_rules(BRIDGE, [])[0]) == Rule.parse(
        f"-A {CHAIN} -i {BRIDGE} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"
    )
    assert Rule.parse(f"-A {CHAIN} -i {BRIDGE} -s 10.0.0.0/8 -p tcp -m tcp --dport 8081 -j ACCEPT") != printed


def test_ensure_existing_closes_the_networks_of_this_installation(fake):
    class Net:
        def __init__(self, name, bridge):
            self.name = name
            self.attrs = {
                "Name": name,
                "Id": "f" * 64,
                "Driver": "bridge",
                "Options": {"com.docker.network.bridge.name": bridge} if bridge else {},
            }

    class Client:
        class networks:  # mimics docker.DockerClient.networks
            @staticmethod
            def list():
                return [Net("enclave-demo-cardio", BRIDGE), Net("other-thing", OTHER), Net("enclave-x", None)]

    assert firewall.ensure_existing("enclave-", [8081], client=Client()) == [BRIDGE, "br-ffffffffffff"]
    assert verdict(fake, BRIDGE, 22) == "REJECT" and verdict(fake, "br-ffffffffffff", 22) == "REJECT"
    assert verdict(fake, OTHER, 22) == "ACCEPT"


# ---- the checks of enclave doctor, on listings ------------------------------------------------------


@pytest.fixture
def good(fake) -> dict:
    firewall.ensure_bridge(BRIDGE, [8081, 8082])
    return fake.tables()


def test_good_rules_have_no_problems(good):
    assert posture_problems(good, [BRIDGE], [8081, 8082]) == []


def test_a_bridge_without_rules_is_reported_open(good):
    assert posture_problems(good, [BRIDGE, OTHER], [8081, 8082])[0] == (
        f"iptables: no rules for bridge {OTHER}: its containers reach every port of the host"
    )


def test_an_extra_open_port_is_named(good):
    tables = dict(good)
    tables[("iptables", CHAIN)] = good[("iptables", CHAIN)].replace(
        f"-A {CHAIN} -i {BRIDGE} -j REJECT",
        f"-A {CHAIN} -i {BRIDGE} -p tcp -m tcp --dport 22 -j ACCEPT\n-A {CHAIN} -i {BRIDGE} -j REJECT",
    )
    assert posture_problems(tables, [BRIDGE], [8081, 8082]) == [
        f"iptables: bridge {BRIDGE} also admits {CHAIN} -i {BRIDGE} -p tcp -m tcp --dport 22 -j ACCEPT"
    ]


def test_new_connections_accepted_by_conntrack_are_named(good):
    tables = dict(good)
    listing = good[("iptables", CHAIN)]
    assert "--ctstate ESTABLISHED,RELATED" in listing
    tables[("iptables", CHAIN)] = listing.replace(
        "--ctstate ESTABLISHED,RELATED", "--ctstate NEW,ESTABLISHED"
    )
    assert "also admits" in posture_problems(tables, [BRIDGE], [8081, 8082])[0]


def test_a_missing_final_reject_is_reported(good):
    tables = dict(good)
    tables[("iptables", CHAIN)] = "\n".join(
        line for line in good[("iptables", CHAIN)].splitlines() if "REJECT" not in line
    )
    assert posture_problems(tables, [BRIDGE], [8081, 8082]) == [
        f"iptables: bridge {BRIDGE} has no final REJECT: everything not listed is open"
    ]


def test_no_jump_from_input_is_reported(good):
    tables = {**good, ("iptables", "INPUT"): "-P INPUT ACCEPT\n"}
    assert posture_problems(tables, [BRIDGE], [8081, 8082]) == [f"iptables: INPUT does not jump to {CHAIN}"]


def test_an_accept_before_the_jump_is_reported(good):
    tables = {**good, ("iptables", "INPUT"): f"-P INPUT ACCEPT\n-A INPUT -j ACCEPT\n-A INPUT -j {CHAIN}\n"}
    assert posture_problems(tables, [BRIDGE], [8081, 8082]) == [
        f"iptables: INPUT accepts before the jump to {CHAIN}: INPUT -j ACCEPT"
    ]


def test_missing_ip6tables_and_forward_rules_are_reported(good):
    tables = {**good, ("ip6tables", "INPUT"): None, ("iptables", "DOCKER-USER"): "-N DOCKER-USER\n"}
    problems = posture_problems(tables, [BRIDGE], [8081, 8082])
    assert "ip6tables: cannot list INPUT (ip6tables missing or not permitted)" in problems
    assert any(p.startswith("iptables: DOCKER-USER lacks") for p in problems)
