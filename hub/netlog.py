"""Firewall drops from enclave bridges, summarized onto the audit trail as ``network.refused``.

The host firewall (hub/firewall.py) puts an iptables ``LOG`` rule, limited per source address with
``hashlimit``, just before each enclave REJECT. The kernel writes those lines to its ring buffer; this
module reads them from ``/dev/kmsg`` (root only; on this kernel LOG works in the host's network
namespace, where the enclave bridges live), maps the source address to the container, and hands each
drop to the gate's ``RefusalAggregator``: one full record per container, kind and window, then a count.

Counts are of *logged* packets, and logging is rate limited (``LOG_RATE`` per source), so a count is a
lower bound on what was dropped; the drop itself never depends on the log. Lines of other hubs'
bridges on the same host are ignored. It runs in the gate process (hub/gate.py), which the hub starts
and stops with itself; a read error restarts the reader after a pause rather than ending it.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import threading
import time
from dataclasses import dataclass

from audit.aggregate import RefusalAggregator, clip

log = logging.getLogger("enclave.netlog")

KMSG = os.environ.get("ENCLAVE_KMSG", "/dev/kmsg")
# iptables --log-prefix: at most 29 characters, and no space, so that ``iptables -S`` prints it back
# unquoted and the rule compares equal (hub/firewall.py). The word after "enclave-refused-" is the chain.
LOG_PREFIX_HOST = "enclave-refused-host:"
LOG_PREFIX_FORWARD = "enclave-refused-fwd:"
FIELDS = re.compile(r"\b(IN|OUT|SRC|DST|PROTO|DPT)=(\S*)")
REFRESH_EVERY = 5.0  # seconds between engine look-ups for an unknown bridge or address


@dataclass(frozen=True)
class Drop:
    kind: str  # "host" (to a host address) or "forward" (towards anywhere else)
    bridge: str
    src: str
    dst: str
    proto: str
    dport: str | None


def parse(record: str) -> Drop | None:
    """A /dev/kmsg record ("pri,seq,usec,flags;message") or a bare message, if it is one of ours."""
    message = record.split(";", 1)[1] if ";" in record.split(" ", 1)[0] else record
    for prefix, kind in ((LOG_PREFIX_HOST, "host"), (LOG_PREFIX_FORWARD, "forward")):
        if message.startswith(prefix):
            fields = dict(FIELDS.findall(message))
            if "IN" in fields and "SRC" in fields:
                return Drop(
                    kind,
                    fields["IN"],
                    fields["SRC"],
                    fields.get("DST", "?"),
                    fields.get("PROTO", "?").lower(),
                    fields.get("DPT"),
                )
    return None


class ContainerMap:
    """Bridge and address -> (user, project) of this hub's containers, from the engine, refreshed when
    something unknown turns up (at most every REFRESH_EVERY seconds)."""

    def __init__(self, network_prefix: str, client=None) -> None:
        self.prefix, self._client = network_prefix, client
        self.bridges: set[str] = set()
        self.addresses: dict[str, tuple[str, str]] = {}
        self._refreshed = -REFRESH_EVERY

    def client(self):
        if self._client is None:
            import docker

            self._client = docker.from_env(timeout=10)
        return self._client

    def refresh(self, force: bool = False) -> None:
        if not force and time.monotonic() - self._refreshed < REFRESH_EVERY:
            return
        self._refreshed = time.monotonic()
        from hub.firewall import network_bridge

        client = self.client()
        networks = [n for n in client.networks.list() if n.name.startswith(self.prefix)]
        self.bridges = {network_bridge(n.attrs) for n in networks}
        addresses = {}
        for container in client.containers.list(filters={"name": self.prefix}):
            owner = container_owner(container.name, self.prefix)
            for net in (container.attrs.get("NetworkSettings", {}).get("Networks") or {}).values():
                if owner and net.get("IPAddress"):
                    addresses[net["IPAddress"]] = owner
        self.addresses = addresses

    def ours(self, bridge: str) -> bool:
        if bridge not in self.bridges:
            self.refresh()
        return bridge in self.bridges

    def owner(self, address: str) -> tuple[str, str] | None:
        if address not in self.addresses:
            self.refresh()
        return self.addresses.get(address)


def container_owner(name: str, prefix: str) -> tuple[str, str] | None:
    """(user, project) from ``<prefix><user>--<project>`` (hub/jupyterhub_config.py name_template)."""
    if not name.startswith(prefix) or "--" not in name[len(prefix) :]:
        return None
    user, project = name[len(prefix) :].split("--", 1)
    return user, project


class DropSummarizer:
    """Turns drops into aggregated ``network.refused`` records."""

    def __init__(self, containers: ContainerMap, refusals: RefusalAggregator) -> None:
        self.containers, self.refusals = containers, refusals

    def handle(self, drop: Drop) -> None:
        if not self.containers.ours(drop.bridge):
            return
        owner = self.containers.owner(drop.src)
        actor, project = owner if owner else (f"address:{drop.src}", None)
        server = f"{actor}/{project}" if owner else None
        destination = f"{drop.dst}:{drop.dport}/{drop.proto}" if drop.dport else f"{drop.dst}/{drop.proto}"
        self.refusals.refuse(
            actor=actor,
            source=server or actor,
            action="network.refused",
            reason="to-host" if drop.kind == "host" else "forward",
            project=project,
            target=server,
            details={
                "destination": clip(destination, 80),
                "bridge": drop.bridge,
                "source_address": drop.src,
                "identified_by": "container address on its project network" if owner else "unknown address",
                "counted": "packets logged by the firewall (rate limited per container: a lower bound)",
            },
        )


def read_kmsg(handle, path: str = KMSG, stop: threading.Event | None = None) -> None:
    """Feed every new kernel log record to ``handle`` until ``stop`` (from now on: old ones were
    summarized by whoever ran before us, or are lost with the restart; see the module doc)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.lseek(fd, 0, os.SEEK_END)
        while stop is None or not stop.is_set():
            try:
                record = os.read(fd, 8192)
            except OSError as exc:
                if exc.errno == errno.EPIPE:  # the ring buffer overwrote records we had not read yet
                    log.warning("netlog: kernel log records were overwritten before they were read")
                    continue
                raise
            drop = parse(record.decode(errors="replace"))
            if drop is None:
                continue
            try:
                handle(drop)
            except Exception:  # e.g. the engine is unreachable: this record is lost, the reader goes on
                log.exception("netlog: could not summarize a drop from %s", drop.src)
    finally:
        os.close(fd)


def run(summarizer: DropSummarizer, path: str = KMSG, stop: threading.Event | None = None) -> None:
    """Read forever; an error pauses and starts the reader again instead of ending the summary."""
    pause = 5.0
    while stop is None or not stop.is_set():
        try:
            read_kmsg(summarizer.handle, path, stop)
        except Exception:  # keep summarizing: the trail must not silently stop
            log.exception("netlog: reading %s failed; starting again in %.0f s", path, pause)
            time.sleep(pause)
            pause = min(pause * 2, 300)  # a lasting failure (no permission) is logged, not spammed


def start(network_prefix: str, refusals: RefusalAggregator) -> threading.Thread:
    summarizer = DropSummarizer(ContainerMap(network_prefix), refusals)
    thread = threading.Thread(target=run, args=(summarizer,), name="netlog", daemon=True)
    thread.start()
    log.info("netlog: summarizing firewall drops of %s* bridges from %s", network_prefix, KMSG)
    return thread
