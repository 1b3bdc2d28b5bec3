"""The one place that says what a researcher's container may do.

Everything the engine is told about a notebook container comes from :func:`security_profile`, as
plain data, so a security reviewer can read it in a minute and check it against CIS Docker Benchmark
section 5. Nothing here comes from the user: the image is the site's, the network and mounts are
derived from the project policy, and the limits from the project's resources.
"""

from __future__ import annotations

import os
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

# RLIMIT_NPROC is counted per *uid across the whole host*, not per container: every notebook runs as
# uid 1000, so an nproc equal to one container's pids limit let a fork bomb in one project stop every other
# project's notebooks from forking (found by tests/integration/test_attacks.py::test_fork_bomb_...).
# The per-container bound is the pids cgroup (pids_limit); nproc is only a host-wide backstop for all
# notebooks together, well below the kernel's pid_max, so the host's own daemons can always fork.
NPROC_ALL_NOTEBOOKS = 16384

# Settings a site may not override through DockerSpawner.extra_host_config / extra_create_kwargs:
# DockerSpawner only setdefault()s network_mode, so an override there would silently win.
PROTECTED_HOST_CONFIG = frozenset(
    {
        "network_mode",
        "binds",
        "mounts",
        "volumes_from",
        "tmpfs",
        "read_only",
        "cap_add",
        "cap_drop",
        "security_opt",
        "privileged",
        "devices",
        "device_requests",
        "pid_mode",
        "ipc_mode",
        "uts_mode",
        "userns_mode",
        "cgroupns",
        "pids_limit",
        "mem_limit",
        "memswap_limit",
        "cpu_quota",
        "cpu_period",
        "ulimits",
        "sysctls",
        "dns",
        "extra_hosts",
        "port_bindings",
        "publish_all_ports",
        "runtime",
        "cpu_shares",
        "healthcheck",
        "MaskedPaths",
        "ReadonlyPaths",
    }
)


# The engine's own default masked and read-only paths (moby oci/defaults.go, as Docker 20.10 applies them;
# /sys/devices/virtual/powercap is masked by later engines). A client that sets HostConfig.MaskedPaths or
# ReadonlyPaths REPLACES these lists, so they are repeated here and ours are added after them.
ENGINE_DEFAULT_MASKED_PATHS = (
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
)
ENGINE_DEFAULT_READONLY_PATHS = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")

# Host-wide kernel state that every container could read and another project could move: each one is a
# covert channel between projects, or a view of the host (docs/SECURITY.md, covert-channel table).
# Masked: an empty file (/dev/null) or an empty read-only directory. The /proc files a program really
# needs (meminfo, stat, cpuinfo, loadavg, uptime) are replaced by lxcfs's per-container
# views instead (LXCFS_FILES), not masked.
SHARED_KERNEL_MASKED_PATHS = (
    # block devices: names of every loop device (= every project's workspace image) and their I/O counters.
    # Masked, not lxcfs's diskstats: on this kernel (cgroup v1 blkio without the old CFQ statistics files)
    # lxcfs served the host's whole file, and bench/covert.py measured 0.9 bits/s through it.
    "/proc/diskstats",
    "/proc/partitions",
    "/sys/block",
    "/sys/class/block",
    "/sys/dev/block",
    "/sys/devices/virtual/block",
    "/sys/class/bdi",
    "/sys/devices/virtual/bdi",
    "/sys/fs/ext4",
    "/sys/fs/btrfs",
    "/sys/fs/xfs",
    "/sys/kernel/mm/ksm",
    # host-wide memory, interrupt and scheduler counters
    "/proc/vmstat",
    "/proc/zoneinfo",
    "/proc/buddyinfo",
    "/proc/pagetypeinfo",
    "/proc/interrupts",
    "/proc/softirqs",
    "/proc/schedstat",
    "/proc/pressure",
    "/sys/devices/system/node",
    # host-wide tables that count other containers' objects
    "/proc/locks",
    "/proc/key-users",
    "/proc/sys/fs/file-nr",
    "/proc/sys/fs/inode-nr",
    "/proc/sys/fs/inode-state",
    "/proc/sys/fs/dentry-state",
    "/proc/sys/kernel/random/entropy_avail",
)

# lxcfs (Debian's package, a FUSE filesystem on the host) answers these per container, from the reading
# process's own cgroups: its memory, its CPU time, its load, its block I/O. Bound read-only over the
# kernel's host-wide files.
LXCFS_DIR = Path("/var/lib/lxcfs")
LXCFS_FILES = (
    ("proc/cpuinfo", "/proc/cpuinfo"),
    ("proc/loadavg", "/proc/loadavg"),
    ("proc/meminfo", "/proc/meminfo"),
    ("proc/stat", "/proc/stat"),
    ("proc/swaps", "/proc/swaps"),
    ("proc/uptime", "/proc/uptime"),
    ("sys/devices/system/cpu/online", "/sys/devices/system/cpu/online"),
)

# CIS 5.11/5.12: a notebook gets half the CPU weight of a host daemon (1024) per CPU of its quota, so
# under contention the hub, the engine and the audit trail keep their share.
CPU_SHARES_PER_CPU = 512

# CIS 5.27: the engine asks the Jupyter server itself; -I -S keeps the check to a ~20 ms interpreter
# start. /api answers without a token and is not counted as activity (it does not postpone culling).
HEALTHCHECK_CODE = (
    "import os,urllib.request as u;"
    "u.urlopen('http://127.0.0.1:%d'+os.environ.get('JUPYTERHUB_SERVICE_PREFIX','/')+'api',timeout=5)"
)
# With TLS inside, the server asks every client for a certificate of the hub's or the proxy's authority,
# which the container does not hold: the check is then a TLS 1.3 handshake, which the server completes
# before it looks at the (absent) client certificate. A hung or plain-HTTP server fails it.
HEALTHCHECK_TLS_CODE = (
    "import socket,ssl;c=ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT);c.check_hostname=False;"
    "c.verify_mode=ssl.CERT_NONE;c.minimum_version=ssl.TLSVersion.TLSv1_3;"
    "c.wrap_socket(socket.create_connection(('127.0.0.1',%d),timeout=5)).close()"
)
SECOND_NS = 1_000_000_000
# Where the container finds its TLS key, certificate and CA (hub/internal_tls.py), bound read-only.
TLS_DIR = "/etc/enclave-tls"


def host_block_device_dirs(sysfs: Path = Path("/sys")) -> list[str]:
    """The sysfs directories of the host's physical disks (e.g. /sys/devices/pci.../block/vda): their
    ``stat`` files count the host disk's I/O. Loop and other virtual devices are under
    /sys/devices/virtual/block, masked whole. Read on the host at each spawn, so a new disk is covered."""
    found = []
    for entry in sorted((sysfs / "block").glob("*")) if (sysfs / "block").is_dir() else []:
        real = os.path.realpath(entry)
        if not real.startswith(f"{sysfs}/devices/virtual/"):
            found.append("/sys/" + os.path.relpath(real, sysfs))
    return found


def lxcfs_problem(lxcfs_dir: Path = LXCFS_DIR) -> str | None:
    """Why lxcfs cannot serve the containers' /proc files, or None when it can."""
    if not os.path.ismount(lxcfs_dir):
        return f"lxcfs is not mounted at {lxcfs_dir} (deploy/lib.sh ensure_lxcfs starts it)"
    try:
        (lxcfs_dir / "proc" / "meminfo").read_bytes()
    except OSError as exc:
        return (
            f"lxcfs at {lxcfs_dir} does not answer ({exc.strerror}): restart it (deploy/lib.sh ensure_lxcfs)"
        )
    return None


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
    port: int = 8888,
    lxcfs_dir: Path = LXCFS_DIR,
    host_block_devices: tuple[str, ...] | list[str] = (),
    tls: Path | None = None,
    hub_hostname: str | None = None,
) -> dict[str, Any]:
    """Everything the engine is told about one notebook container, as create_host_config kwargs
    (``host_config``), create_container kwargs (``create``) and HostConfig fields docker-py has no
    keyword for (``engine_host_config``, merged into the host config as they are).

    ``tls``: the host directory with this server's TLS key, certificate and CA, bound read-only at
    :data:`TLS_DIR`. ``hub_hostname``: the name the server calls the hub by, resolved to the network's
    gateway (``dns``) in the container's /etc/hosts: the gate's certificate is for that name."""
    mem = memory_bytes(memory)
    lxcfs = [f"{lxcfs_dir / source}:{target}:ro" for source, target in LXCFS_FILES]
    if tls is not None:
        mounts = [*mounts, Mount(tls, TLS_DIR, read_only=True)]
    host_config: dict[str, Any] = {
        # Network: the project's internal network only. DNS points at the network's own gateway,
        # where the host firewall drops it: Docker's embedded resolver then has nowhere to forward
        # outside names to (CVE-2024-29018 forwarded via host loopback resolvers).
        "network_mode": network,
        "dns": [dns],
        "dns_search": [],
        "extra_hosts": {hub_hostname: dns} if hub_hostname else {},
        "sysctls": {"net.ipv6.conf.all.disable_ipv6": "1", "net.ipv6.conf.default.disable_ipv6": "1"},
        # Filesystem: read-only root, data read-only, workspace the only persistent writable place.
        "read_only": True,
        "binds": [m.bind() for m in mounts] + lxcfs,
        "tmpfs": dict(TMPFS),
        # Privilege (CIS 5.3, 5.4, 5.25): no capabilities, no setuid escalation, default seccomp.
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges:true"],
        "privileged": False,
        "ipc_mode": "private",
        # Own cgroup namespace: the container does not see the host's cgroup tree (or its container ids).
        "cgroupns": "private",
        # Resources (CIS 5.10, 5.11, 5.28): memory+swap equal so there is no swap to hide in; the pids
        # cgroup bounds a fork bomb to its own container.
        "mem_limit": mem,
        "memswap_limit": mem,
        "cpu_period": 100_000,
        "cpu_quota": int(cpu * 100_000),
        "cpu_shares": max(2, int(cpu * CPU_SHARES_PER_CPU)),
        "pids_limit": pids,
        "ulimits": [
            Ulimit(name="nofile", soft=4096, hard=4096),
            Ulimit(name="nproc", soft=NPROC_ALL_NOTEBOOKS, hard=NPROC_ALL_NOTEBOOKS),
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
        "healthcheck": {
            "test": [
                "CMD",
                "/opt/notebook/bin/python",
                "-I",
                "-S",
                "-c",
                (HEALTHCHECK_TLS_CODE if tls is not None else HEALTHCHECK_CODE) % port,
            ],
            "interval": 15 * SECOND_NS,
            "timeout": 10 * SECOND_NS,
            "retries": 3,
            "start_period": 60 * SECOND_NS,
        },
    }
    # No shared-kernel view: the engine's defaults, then every host-wide counter another project moves.
    engine_host_config = {
        "MaskedPaths": [*ENGINE_DEFAULT_MASKED_PATHS, *SHARED_KERNEL_MASKED_PATHS, *host_block_devices],
        "ReadonlyPaths": list(ENGINE_DEFAULT_READONLY_PATHS),
    }
    return {"host_config": host_config, "create": create, "engine_host_config": engine_host_config}


def inspect_problems(attrs: dict[str, Any]) -> list[str]:
    """What is wrong with a running notebook container, read from ``docker inspect``: the engine's view
    checked against the profile above (``enclave doctor`` runs it on every enclave container). Empty when
    the container is as locked down as :func:`security_profile` says. Each entry is a sentence fragment
    naming the field, for example ``"HostConfig.Privileged is true"``."""
    hc = attrs.get("HostConfig") or {}
    config = attrs.get("Config") or {}
    problems: list[str] = []

    def want(ok: bool, problem: str) -> None:
        if not ok:
            problems.append(problem)

    user = config.get("User") or "root (the image default)"
    want(
        user == f"{NOTEBOOK_UID}:{NOTEBOOK_GID}", f"Config.User is {user}, not {NOTEBOOK_UID}:{NOTEBOOK_GID}"
    )
    want(hc.get("CapDrop") == ["ALL"], f"HostConfig.CapDrop is {hc.get('CapDrop')}, not ['ALL']")
    want(not hc.get("CapAdd"), f"HostConfig.CapAdd adds {hc.get('CapAdd')}")
    want(hc.get("Privileged") is False, "HostConfig.Privileged is true")
    want(
        hc.get("ReadonlyRootfs") is True,
        "HostConfig.ReadonlyRootfs is false: the root filesystem is writable",
    )
    options = hc.get("SecurityOpt") or []
    want(
        any(o in ("no-new-privileges", "no-new-privileges:true", "no-new-privileges=true") for o in options),
        "HostConfig.SecurityOpt lacks no-new-privileges",
    )
    unconfined = [o for o in options if o.replace(":", "=") in ("seccomp=unconfined", "apparmor=unconfined")]
    want(not unconfined, f"HostConfig.SecurityOpt has {unconfined}: the engine's default profile is off")
    for key in ("PidMode", "UTSMode", "UsernsMode"):
        want(not hc.get(key), f"HostConfig.{key} is {hc.get(key)!r}: a host namespace is shared")
    want(
        hc.get("IpcMode") in ("private", "none"), f"HostConfig.IpcMode is {hc.get('IpcMode')!r}, not private"
    )
    want(
        hc.get("CgroupnsMode") == "private",
        f"HostConfig.CgroupnsMode is {hc.get('CgroupnsMode')!r}, not private",
    )
    network = str(hc.get("NetworkMode") or "")
    want(
        network not in ("", "default", "bridge", "host", "none") and not network.startswith("container:"),
        f"HostConfig.NetworkMode is {network!r}, not a project network",
    )
    want(not hc.get("Devices"), f"HostConfig.Devices passes {hc.get('Devices')}")
    want(not hc.get("PortBindings") and not hc.get("PublishAllPorts"), "ports are published on the host")
    memory = hc.get("Memory") or 0
    want(
        memory > 0 and hc.get("MemorySwap") == memory, "HostConfig.Memory is unset or differs from MemorySwap"
    )
    want((hc.get("PidsLimit") or 0) > 0, "HostConfig.PidsLimit is unset: a fork bomb is unbounded")
    want((hc.get("CpuQuota") or 0) > 0 or (hc.get("NanoCpus") or 0) > 0, "no CPU quota")
    ulimits = {u["Name"]: u for u in hc.get("Ulimits") or []}
    want(set(ulimits) >= {"nofile", "nproc", "core"}, f"HostConfig.Ulimits sets only {sorted(ulimits)}")
    want(ulimits.get("core", {}).get("Hard") == 0, "core dumps are allowed (ulimit core is not 0)")
    for path, opts in (hc.get("Tmpfs") or {}).items():
        flags = set(opts.split(","))
        want(
            {"noexec", "nosuid", "nodev"} <= flags and any(f.startswith("size=") for f in flags),
            f"tmpfs {path} is not noexec,nosuid,nodev with a size cap",
        )
    want(
        (hc.get("CpuShares") or 0) not in (0, 1024),
        "HostConfig.CpuShares is the default: no CPU priority set",
    )
    health = (config.get("Healthcheck") or {}).get("Test") or ["NONE"]
    want(health[0] != "NONE", "Config.Healthcheck is unset")
    masked = set(hc.get("MaskedPaths") or [])
    missing = [p for p in (*ENGINE_DEFAULT_MASKED_PATHS, *SHARED_KERNEL_MASKED_PATHS) if p not in masked]
    want(not missing, f"HostConfig.MaskedPaths lacks {missing[:4]}{' ...' if len(missing) > 4 else ''}")
    readonly = set(hc.get("ReadonlyPaths") or [])
    want(
        set(ENGINE_DEFAULT_READONLY_PATHS) <= readonly, "HostConfig.ReadonlyPaths lacks the engine's defaults"
    )
    lxcfs_targets = {target for _, target in LXCFS_FILES}
    bound = {str(m.get("Destination")) for m in attrs.get("Mounts") or []}
    want(lxcfs_targets <= bound, f"lxcfs files are not bound over {sorted(lxcfs_targets - bound)}")
    for mount in attrs.get("Mounts") or []:
        source, dest = str(mount.get("Source", "")), str(mount.get("Destination", ""))
        if "docker.sock" in source or "docker.sock" in dest:
            problems.append(f"the Docker socket is mounted ({source} at {dest})")
        elif dest == WORKSPACE:
            continue
        elif dest == TLS_DIR:
            want(mount.get("RW") is False, f"the TLS key directory {dest} is writable")
        elif dest in lxcfs_targets:
            want(mount.get("RW") is False, f"lxcfs file {dest} is writable")
        elif dest.startswith(DATA_ROOT + "/"):
            want(mount.get("RW") is False, f"data mount {dest} is writable")
        else:
            problems.append(f"unexpected mount {source} at {dest}")
    return problems
