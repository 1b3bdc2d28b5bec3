"""Host firewall for enclave bridges.

An ``--internal`` Docker network has no route out, but the host itself still answers on every one of
its addresses from inside the network (moby/libnetwork#1151): the gateway, other projects' gateways,
the host's LAN address. Docker's DOCKER-USER chain only covers forwarded traffic, so traffic *to the
host* is ours to close. Per enclave bridge we allow the hub API (and the export API) and replies to
connections the host opened (the proxy talking to the notebook), and reject everything else.

Rules are installed idempotently (``-C`` before ``-A``) and kept when the hub stops: a bridge with no
hub behind it should stay closed, not fall open.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from collections.abc import Iterable

log = logging.getLogger("enclave.firewall")

CHAIN = "ENCLAVE-INPUT"
FORWARD_CHAIN = "DOCKER-USER"
# admin-prohibited rather than a silent drop: the refusal is immediate and unambiguous in logs and tests.
REJECT = ["-j", "REJECT", "--reject-with", "icmp-admin-prohibited"]


class FirewallError(RuntimeError):
    """The host firewall could not be put in place. Spawning must not go ahead without it."""


def _run(tool: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    if shutil.which(tool) is None:
        raise FirewallError(f"{tool} is not installed: the host firewall for enclave networks cannot be set")
    proc = subprocess.run([tool, "-w", "10", *args], capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise FirewallError(f"{tool} {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc


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


def bridge_rules(bridge: str, allowed_ports: Iterable[int]) -> list[list[str]]:
    """The INPUT rules for one bridge, in order: replies, allowed ports, then reject the rest."""
    rules = [[CHAIN, "-i", bridge, "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT"]]
    for port in sorted(set(allowed_ports)):
        rules.append([CHAIN, "-i", bridge, "-p", "tcp", "--dport", str(port), "-j", "ACCEPT"])
    rules.append([CHAIN, "-i", bridge, *REJECT])
    return rules


def ensure_bridge(bridge: str, allowed_ports: Iterable[int]) -> None:
    """Close ``bridge`` towards the host except ``allowed_ports``; also forbid forwarding off it."""
    allowed_ports = list(allowed_ports)
    _ensure_chain("iptables", CHAIN)
    _ensure("iptables", [], ["INPUT", "-j", CHAIN], position=1)
    existing = _run("iptables", "-S", CHAIN).stdout
    if f"-i {bridge} " in existing:
        # Replace, so a changed hub port cannot leave a stale ACCEPT behind.
        remove_bridge(bridge)
    for rule in bridge_rules(bridge, allowed_ports):
        _run("iptables", "-A", *rule)
    # Defence in depth on top of Docker's own isolation of internal networks.
    _ensure_chain("iptables", FORWARD_CHAIN)
    _ensure("iptables", [], [FORWARD_CHAIN, "-i", bridge, "!", "-o", bridge, *REJECT], position=1)
    _ensure("iptables", [], [FORWARD_CHAIN, "-o", bridge, "!", "-i", bridge, *REJECT], position=1)
    if shutil.which("ip6tables"):
        _ensure_chain("ip6tables", CHAIN)
        _ensure("ip6tables", [], ["INPUT", "-j", CHAIN], position=1)
        _ensure("ip6tables", [], [CHAIN, "-i", bridge, "-j", "DROP"])
        _ensure("ip6tables", [], ["FORWARD", "-i", bridge, "-j", "DROP"], position=1)
    log.info("firewall: %s closed to the host except tcp %s", bridge, allowed_ports)


def remove_bridge(bridge: str) -> None:
    """Remove the rules of one bridge (when its network is removed)."""
    for tool in ("iptables", "ip6tables"):
        if shutil.which(tool) is None:
            continue
        for chain in (CHAIN, FORWARD_CHAIN, "FORWARD"):
            listing = _run(tool, "-S", chain, check=False).stdout.splitlines()
            for line in listing:
                if line.startswith("-A ") and (f"-i {bridge} " in line + " " or f"-o {bridge} " in line + " "):
                    _run(tool, "-D", *line.split()[1:], check=False)


def listing() -> str:
    """The enclave rules as iptables prints them, for ``enclave doctor``."""
    out = []
    for tool in ("iptables", "ip6tables"):
        if shutil.which(tool) is None:
            out.append(f"# {tool}: not installed")
            continue
        for chain in (CHAIN, FORWARD_CHAIN):
            proc = _run(tool, "-S", chain, check=False)
            out.append(f"# {tool} {chain}")
            out.append(proc.stdout.strip() if proc.returncode == 0 else f"# (no chain {chain})")
    return "\n".join(out)
