"""The one place that says what a researcher's container may do.

Everything the engine is told about a notebook container comes from :func:`security_profile`, as
plain data, so a security reviewer can read it in a minute and check it against CIS Docker Benchmark
section 5. Nothing here comes from the user: the image is the site's, the network and mounts are
derived from the project policy, and the limits from the project's resources.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from docker.types import DeviceRequest, Ulimit

NOTEBOOK_UID = 1000
NOTEBOOK_GID = 1000
HOME = "/home/jovyan"
WORKSPACE = "/workspace"
DATA_ROOT = "/data"

# Writable scratch space on a read-only root (jupyterlab#6535): small, and never executable, so a
# downloaded or generated binary cannot be run from it.
TMPFS = {
    "/tmp": "rw,noexec,nosuid,nodev,size=512m,mode=1777",
    HOME: f"rw,noexec,nosuid,nodev,size=128m,uid={NOTEBOOK_UID},gid={NOTEBOOK_GID},mode=0700",
}

# Settings a site may not override through DockerSpawner.extra_host_config / extra_create_kwargs:
# DockerSpawner only setdefault()s network_mode, so an override there would silently win.
PROTECTED_HOST_CONFIG = frozenset(
    {
        "network_mode", "binds", "mounts", "volumes_from", "tmpfs", "read_only", "cap_add", "cap_drop",
        "security_opt", "privileged", "devices", "device_requests", "pid_mode", "ipc_mode", "uts_mode",
        "userns_mode", "cgroupns", "pids_limit", "mem_limit", "memswap_limit", "cpu_quota", "cpu_period",
        "ulimits", "sysctls", "dns", "extra_hosts", "port_bindings", "publish_all_ports", "runtime",
    }
)


@dataclass(frozen=True)
class Mount:
    host_path: Path
    container_path: str
    read_only: bool

    def bind(self) -> str:
        return f"{self.host_path}:{self.container_path}:{'ro' if self.read_only else 'rw'}"


def memory_bytes(text: str) -> int:
    """'2G' -> 2147483648, as the project schema writes sizes."""
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    return int(text[:-1]) * units[text[-1]]


def security_profile(
    *,
    image: str,
    network: str,
    dns: str,
    mounts: list[Mount],
    cpu: float,
    memory: str,
    pids: int,
    gpus: int = 0,
) -> dict[str, Any]:
    """Everything the engine is told about one notebook container, as create_host_config kwargs
    (``host_config``) and create_container kwargs (``create``)."""
    mem = memory_bytes(memory)
    host_config: dict[str, Any] = {
        # Network: the project's internal network only. DNS points at the network's own gateway,
        # where the host firewall drops it: Docker's embedded resolver then has nowhere to forward
        # outside names to (CVE-2024-29018 forwarded via host loopback resolvers).
        "network_mode": network,
        "dns": [dns],
        "dns_search": [],
        "sysctls": {"net.ipv6.conf.all.disable_ipv6": "1", "net.ipv6.conf.default.disable_ipv6": "1"},
        # Filesystem: read-only root, data read-only, workspace the only persistent writable place.
        "read_only": True,
        "binds": [m.bind() for m in mounts],
        "tmpfs": dict(TMPFS),
        # Privilege (CIS 5.3, 5.4, 5.25): no capabilities, no setuid escalation, default seccomp.
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges:true"],
        "privileged": False,
        "ipc_mode": "private",
        # Resources (CIS 5.10, 5.11, 5.28): memory+swap equal so there is no swap to hide in.
        "mem_limit": mem,
        "memswap_limit": mem,
        "cpu_period": 100_000,
        "cpu_quota": int(cpu * 100_000),
        "pids_limit": pids,
        "ulimits": [
            Ulimit(name="nofile", soft=4096, hard=4096),
            Ulimit(name="nproc", soft=pids, hard=pids),
            Ulimit(name="core", soft=0, hard=0),
        ],
        "restart_policy": {"Name": "no"},
        "auto_remove": False,
    }
    if gpus:
        host_config["device_requests"] = [DeviceRequest(count=gpus, capabilities=[["gpu"]])]
    create = {
        "image": image,
        "user": f"{NOTEBOOK_UID}:{NOTEBOOK_GID}",
        "working_dir": WORKSPACE,
        "network_disabled": False,
        "labels": {"org.enclave.role": "notebook"},
    }
    return {"host_config": host_config, "create": create}
