"""Host firewall for enclave bridges.

An ``--internal`` Docker network has no route out, but the host itself still answers on every one of
its addresses from inside the network (moby/libnetwork#1151): the gateway, other projects' gateways,
the host's LAN address. Docker's DOCKER-USER chain only covers forwarded traffic, so traffic *to the
host* is ours to close. Per enclave bridge we allow the hub API (and the export API) and replies to
connections the host opened (the proxy talking to the notebook), and reject everything else.

Rules are installed idempotently -- when a project network is created, at every spawn, and at hub start
(:func:`ensure_existing`) -- and kept when the hub or a server stops: a bridge with no hub behind it
should stay closed, not fall open. They are removed only with their network (:func:`remove_bridge`).
A bridge is never left without its REJECT, not even for the moment a rule set is being replaced.
``enclave doctor`` checks the rules with :func:`posture_problems` and prints :func:`listing`.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shlex
import shutil
import subprocess
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("enclave.firewall")

CHAIN = "ENCLAVE-INPUT"
FORWARD_CHAIN = "DOCKER-USER"
# admin-prohibited rather than a silent drop: the refusal is immediate and unambiguous in logs and tests.
REJECT = ["-j", "REJECT", "--reject-with", "icmp-admin-prohibited"]
TOOLS = ("iptables", "ip6tables")
# Logging of refused packets, per source address (hashlimit): enough to see every probe of a scan's
# first seconds, too little for a flood to fill the kernel log.
LOG_RATE = "5/sec"
LOG_BURST = "10"
# Several processes change these chains (each hub's spawner, hub start, test teardown): iptables -w only
# serialises single commands, and replacing a rule set takes several.
# In /run, which only root can write: a lock file in world-writable /run/lock could be held by anyone.
LOCK_FILE = Path(os.environ.get("ENCLAVE_FIREWALL_LOCK", "/run/enclave-firewall.lock"))


class FirewallError(RuntimeError):
    """The host firewall could not be put in place. Spawning must not go ahead without it."""


# ---- rules as data ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    """One iptables rule, reduced to what decides a packet's fate here, so that the rule we add and the
    rule ``iptables -S`` prints back (with its implicit ``-m tcp``) compare equal."""

    chain: str
    in_iface: str | None = None
    in_negated: bool = False
    out_iface: str | None = None
    out_negated: bool = False
    proto: str | None = None
    dport: str | None = None
    ctstate: frozenset[str] = frozenset()
    target: str = ""
    reject_with: str | None = None
    other: tuple[str, ...] = field(default=())  # anything else (-s, -d, comments): never one of ours
    text: str = field(default="", compare=False)

    @classmethod
    def parse(cls, args: list[str] | str) -> Rule:
        """``['-A', 'CHAIN', '-i', 'br', ...]`` or the same as one ``iptables -S`` line."""
        tokens = shlex.split(args) if isinstance(args, str) else list(args)
        if tokens[:1] in (["-A"], ["-I"]):
            tokens = tokens[1:]
        values: dict = {"chain": tokens[0], "other": []}
        negate, i = False, 1
        while i < len(tokens):
            opt = tokens[i]
            val = tokens[i + 1] if i + 1 < len(tokens) else ""
            i += 2
            if opt == "!":
                negate, i = True, i - 1
                continue
            if opt in ("-i", "--in-interface"):
                values.update(in_iface=val, in_negated=negate)
            elif opt in ("-o", "--out-interface"):
                values.update(out_iface=val, out_negated=negate)
            elif opt in ("-p", "--protocol") and not negate:
                values["proto"] = val
            elif opt == "--dport" and not negate:
                values["dport"] = val
            elif opt == "--ctstate" and not negate:
                values["ctstate"] = frozenset(val.split(","))
            elif opt in ("-j", "--jump"):
                values["target"] = val
            elif opt == "--reject-with":
                values["reject_with"] = val
            elif opt == "-m" and not negate:
                pass  # the match module is implied by the options that follow it
            else:
                values["other"] += [("! " if negate else "") + opt, val]
            negate = False
        values["other"] = tuple(values["other"])
        return cls(**values, text=" ".join(tokens))

    @property
    def closes(self) -> bool:
        return self.target in ("REJECT", "DROP")


def parse_listing(text: str) -> list[Rule]:
    """The rules of an ``iptables -S CHAIN`` listing, in order (rule number = index + 1)."""
    return [Rule.parse(line) for line in text.splitlines() if line.startswith("-A ")]


def log_rule(chain: str, bridge: str, kind: str, *match: str) -> list[str]:
    """LOG what is about to be rejected, at most LOG_RATE per source address (so a flood cannot flood
    the kernel log); hub/netlog.py summarizes these lines onto the audit trail."""
    return [
        chain,
        "-i",
        bridge,
        *match,
        "-m",
        "hashlimit",
        "--hashlimit-upto",
        LOG_RATE,
        "--hashlimit-burst",
        LOG_BURST,
        "--hashlimit-mode",
        "srcip",
        "--hashlimit-name",
        f"enclave-{kind}",
        "-j",
        "LOG",
        "--log-prefix",
        f"enclave-refused-{kind}:",
    ]


def bridge_rules(bridge: str, allowed_ports: Iterable[int]) -> list[list[str]]:
    """The INPUT rules for one bridge, in order: replies, allowed ports, then log and reject the rest."""
    rules = [[CHAIN, "-i", bridge, "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT"]]
    for port in sorted(set(allowed_ports)):
        rules.append([CHAIN, "-i", bridge, "-p", "tcp", "--dport", str(port), "-j", "ACCEPT"])
    rules.append(log_rule(CHAIN, bridge, "host"))
    rules.append([CHAIN, "-i", bridge, *REJECT])
    return rules


def forward_rules(bridge: str) -> list[list[str]]:
    """DOCKER-USER: nothing is forwarded into or out of an enclave bridge (defence in depth on top of
    Docker's own isolation of internal networks). Each is inserted at the top in this order, so the
    LOG of outgoing packets, last here, ends up first."""
    return [
        [FORWARD_CHAIN, "-i", bridge, "!", "-o", bridge, *REJECT],
        [FORWARD_CHAIN, "!", "-i", bridge, "-o", bridge, *REJECT],
        log_rule(FORWARD_CHAIN, bridge, "fwd", "!", "-o", bridge),
    ]


def ipv6_rules(bridge: str) -> list[list[str]]:
    """Containers have IPv6 disabled; should an engine enable it anyway, nothing passes."""
    return [[CHAIN, "-i", bridge, "-j", "DROP"], ["FORWARD", "-i", bridge, "-j", "DROP"]]


# ---- running iptables ---------------------------------------------------------------------------------


def _run(tool: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    if shutil.which(tool) is None:
        raise FirewallError(f"{tool} is not installed: the host firewall for enclave networks cannot be set")
    proc = subprocess.run([tool, "-w", "10", *args], check=False, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise FirewallError(f"{tool} {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    LOCK_FILE.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _ensure(tool: str, table_args: list[str], rule: list[str], position: int | None = None) -> None:
    if _run(tool, *table_args, "-C", *rule, check=False).returncode == 0:
        return
    if position is None:
        _run(tool, *table_args, "-A", *rule)
    else:
        chain, rest = rule[0], rule[1:]
        _run(tool, *table_args, "-I", chain, str(position), *rest)


def _ensure_chain(tool: str, chain: str) -> None:
    if _run(tool, "-S", chain, check=False).returncode != 0:
        _run(tool, "-N", chain)


def _chain(tool: str, chain: str) -> list[Rule]:
    return parse_listing(_run(tool, "-S", chain).stdout)


def _put_bridge_rules(bridge: str, wanted: list[list[str]]) -> bool:
    """Make the bridge's rules in CHAIN exactly ``wanted``. Returns True if anything changed.

    A changed set is inserted *above* the old one and only then is the old one deleted, so at every
    instant the bridge's traffic meets a complete rule set ending in REJECT. (Deleting first, as a
    naive replace would, leaves every running container of the project open to the host meanwhile.)"""
    current = [(n, r) for n, r in enumerate(_chain("iptables", CHAIN), 1) if r.in_iface == bridge]
    if [r for _, r in current] == [Rule.parse(w) for w in wanted]:
        return False
    if not current:
        for rule in wanted:
            _run("iptables", "-A", *rule)
        return True
    for position, rule in enumerate(wanted, 1):
        _run("iptables", "-I", rule[0], str(position), *rule[1:])
    for number, _ in sorted(current, reverse=True):  # from the bottom, so numbers above stay valid
        _run("iptables", "-D", CHAIN, str(number + len(wanted)))
    return True


def ensure_bridge(bridge: str, allowed_ports: Iterable[int]) -> None:
    """Close ``bridge`` towards the host except ``allowed_ports``; also forbid forwarding off it."""
    ports = sorted(set(allowed_ports))
    with _locked():
        _ensure_chain("iptables", CHAIN)
        _ensure("iptables", [], ["INPUT", "-j", CHAIN], position=1)
        changed = _put_bridge_rules(bridge, bridge_rules(bridge, ports))
        _ensure_chain("iptables", FORWARD_CHAIN)
        for rule in forward_rules(bridge):
            _ensure("iptables", [], rule, position=1)
        if shutil.which("ip6tables"):
            _ensure_chain("ip6tables", CHAIN)
            _ensure("ip6tables", [], ["INPUT", "-j", CHAIN], position=1)
            for rule in ipv6_rules(bridge):
                _ensure("ip6tables", [], rule, position=1 if rule[0] == "FORWARD" else None)
    if changed:
        log.info("firewall: %s closed to the host except tcp %s", bridge, ports)


def remove_bridge(bridge: str) -> None:
    """Remove the rules of one bridge (when its network is removed)."""
    with _locked():
        for tool in TOOLS:
            if shutil.which(tool) is None:
                continue
            for chain in (CHAIN, FORWARD_CHAIN, "FORWARD"):
                listing = _run(tool, "-S", chain, check=False).stdout.splitlines()
                for line in listing:
                    if line.startswith("-A ") and (
                        f"-i {bridge} " in line + " " or f"-o {bridge} " in line + " "
                    ):
                        _run(tool, "-D", *shlex.split(line)[1:], check=False)  # LOG prefixes are quoted


def network_bridge(network_attrs: Mapping) -> str:
    """The Linux bridge of a Docker network, from ``docker network inspect``."""
    options = network_attrs.get("Options") or {}
    return options.get("com.docker.network.bridge.name") or "br-" + network_attrs["Id"][:12]


def ensure_existing(prefix: str, allowed_ports: Iterable[int], client=None) -> list[str]:
    """At hub start, close every project network that already exists.

    dockerd keeps networks across a reboot but iptables does not, so without this a container started
    on an existing network before the next spawn would find the host open. Returns the bridges closed.
    An unreachable engine is logged, not raised: there is then nothing running to protect, and every
    spawn installs the rules again before its container starts."""
    import docker
    import requests

    ports = list(allowed_ports)
    try:
        client = client or docker.from_env(timeout=20)
        networks = [n.attrs for n in client.networks.list() if n.name.startswith(prefix)]
    except (docker.errors.DockerException, requests.RequestException) as exc:
        log.warning("firewall: cannot list networks at hub start (%s); spawns will install the rules", exc)
        return []
    bridges = [network_bridge(attrs) for attrs in networks if attrs.get("Driver") == "bridge"]
    for bridge in bridges:
        ensure_bridge(bridge, ports)
    return bridges


# ---- checking (enclave doctor) ----------------------------------------------------------------------

Tables = Mapping[tuple[str, str], "str | None"]


def snapshot() -> dict[tuple[str, str], str | None]:
    """``iptables -S`` of every chain the checks read, per tool; None where the tool or chain is missing."""
    out: dict[tuple[str, str], str | None] = {}
    for tool in TOOLS:
        for chain in ("INPUT", CHAIN, FORWARD_CHAIN, "FORWARD"):
            if shutil.which(tool) is None:
                out[(tool, chain)] = None
                continue
            proc = _run(tool, "-S", chain, check=False)
            out[(tool, chain)] = proc.stdout if proc.returncode == 0 else None
    return out


def _chain_problems(tables: Tables, tool: str) -> list[str]:
    if tables.get((tool, "INPUT")) is None:
        return [f"{tool}: cannot list INPUT ({tool} missing or not permitted)"]
    if tables.get((tool, CHAIN)) is None:
        return [f"{tool}: chain {CHAIN} does not exist"]
    problems = []
    before: list[Rule] = []
    for rule in parse_listing(tables[(tool, "INPUT")] or ""):
        if rule.target == CHAIN and rule.in_iface is None and not rule.other:
            break
        before.append(rule)
    else:
        return [f"{tool}: INPUT does not jump to {CHAIN}"]
    problems += [
        f"{tool}: INPUT accepts before the jump to {CHAIN}: {r.text}" for r in before if r.target == "ACCEPT"
    ]
    problems += [
        f"{tool}: {CHAIN} accepts from every interface: {r.text}"
        for r in parse_listing(tables[(tool, CHAIN)] or "")
        if r.target == "ACCEPT" and (r.in_iface is None or r.in_negated)
    ]
    return problems


def _is_reply_rule(rule: Rule) -> bool:
    return bool(rule.ctstate) and rule.ctstate <= {"ESTABLISHED", "RELATED"}


def _bridge_problems(tables: Tables, bridge: str, ports: list[int]) -> list[str]:
    problems = []
    have = [
        r
        for r in parse_listing(tables.get(("iptables", CHAIN)) or "")
        if r.in_iface == bridge and not r.in_negated
    ]
    want = [Rule.parse(r) for r in bridge_rules(bridge, ports)]
    if not have:
        problems.append(
            f"iptables: no rules for bridge {bridge}: its containers reach every port of the host"
        )
    elif have != want:
        closing = [i for i, r in enumerate(have) if r.closes and r.proto is None and not r.other]
        if not closing:
            problems.append(f"iptables: bridge {bridge} has no final REJECT: everything not listed is open")
        allowed = {str(p) for p in ports}
        extra = [
            r
            for r in have[: closing[0] if closing else None]
            if r.target == "ACCEPT"
            and not _is_reply_rule(r)
            and not (r.proto == "tcp" and r.dport in allowed)
        ]
        problems += [f"iptables: bridge {bridge} also admits {r.text}" for r in extra]
        if not problems:
            problems.append(
                f"iptables: rules of bridge {bridge} differ from the expected set "
                f"(tcp {', '.join(map(str, ports))} only); run a spawn or restart the hub to repair"
            )
    forward = parse_listing(tables.get(("iptables", FORWARD_CHAIN)) or "")
    for rule in forward_rules(bridge):
        if Rule.parse(rule) not in forward:
            problems.append(f"iptables: {FORWARD_CHAIN} lacks '{' '.join(rule[1:])}'")
    for rule in ipv6_rules(bridge):
        if Rule.parse(rule) not in parse_listing(tables.get(("ip6tables", rule[0])) or ""):
            problems.append(f"ip6tables: {rule[0]} lacks '{' '.join(rule[1:])}'")
    return problems


def posture_problems(tables: Tables, bridges: Iterable[str], allowed_ports: Iterable[int]) -> list[str]:
    """Every way the rules in ``tables`` fall short for the enclave ``bridges``. Empty when the chains
    are in place, jumped to from INPUT, and each bridge admits exactly ``allowed_ports`` to the host."""
    ports = sorted(set(allowed_ports))
    problems = _chain_problems(tables, "iptables") + _chain_problems(tables, "ip6tables")
    for bridge in sorted(set(bridges)):
        problems += _bridge_problems(tables, bridge, ports)
    return problems


def listing() -> str:
    """The enclave rules as iptables prints them, for ``enclave doctor --rules``."""
    out = []
    for tool in TOOLS:
        if shutil.which(tool) is None:
            out.append(f"# {tool}: not installed")
            continue
        for chain in ("INPUT", CHAIN, FORWARD_CHAIN, "FORWARD"):
            proc = _run(tool, "-S", chain, check=False)
            lines = proc.stdout.strip().splitlines() if proc.returncode == 0 else []
            if chain in ("INPUT", "FORWARD"):  # only what concerns the enclave in the built-in chains
                lines = [
                    x for x in lines if CHAIN in x or FORWARD_CHAIN in x or " enc" in x or x.startswith("-P")
                ]
            out.append(f"# {tool} {chain}")
            out.append("\n".join(lines) if proc.returncode == 0 else f"# (no chain {chain})")
    return "\n".join(out)
