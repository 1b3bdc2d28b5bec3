"""Covert channels between two projects through the shared kernel: a real sender container and a real
receiver container, before and after the enclave's masking, lxcfs and per-dataset filesystems.

    .venv/bin/python bench/covert.py                       # every channel, before and after (~5 min)
    .venv/bin/python bench/covert.py --channels block-counters,threads --bits 48 --mode after

Each channel is one way for code running as uid 1000 in one project to move something another project's
container can read. The sender sends known random bits, one per time slot (both sides slot on the host
clock they share); the receiver reads one number per slot and decodes by the best threshold between the
two clusters (it does not see the bits). The figure is the capacity of the binary symmetric channel
measured: (1 - H(bit error rate)) / slot, in bits/s. 0 means the receiver's view carries no information.

"before" is the profile as it was (no masked counters, no lxcfs, datasets a bind mount of the host
disk); "after" is hub/security_profile.py as it is. Both run the site image with sleep as the command,
network "none", and a quota'd workspace each (hub/workspace.py loop-mounted ext4, as the demo projects
have). The same sender and receiver code is used by tests/integration/test_attacks_covert.py against a
real hub. Figures go in docs/SECURITY.md (covert-channel table) and docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import secrets
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

# The program both containers run (the notebook image's Python, stdlib only). argv[1] is a JSON config.
AGENT = r"""
import glob, json, math, os, sys, threading, time
cfg = json.loads(sys.argv[1])
role, ch, T, t0, bits = cfg["role"], cfg["channel"], cfg["slot"], cfg["t0"], cfg["bits"]
pages = cfg.get("pages") or []

def until(t):
    d = t - time.time()
    if d > 0:
        time.sleep(d)

def ints(path, pick):
    try:
        with open(path) as fh:
            return pick(fh.read())
    except (OSError, ValueError, IndexError, StopIteration):  # masked: an empty file reads as 0
        return 0

def sender_devices():
    # As in the 2026 attack: loop backing files name each project's workspace image, so the receiver
    # reads the sender's own device. Without them it falls back to every device it can see.
    found = set()
    for p in glob.glob("/sys/block/loop*/loop/backing_file"):
        if cfg.get("target") and cfg["target"] in ints(p, lambda t: t):
            found.add(p.split("/")[3])
    return found

def block_counters():
    mine = sender_devices()
    wanted = lambda name: not mine or name in mine
    total = ints("/proc/diskstats", lambda t: sum(
        int(l.split()[9]) for l in t.splitlines() if len(l.split()) > 9 and wanted(l.split()[2])))
    for p in glob.glob("/sys/block/*/stat") + glob.glob("/sys/devices/virtual/block/*/stat"):
        if wanted(p.split("/")[-2]):
            total += ints(p, lambda t: int(t.split()[6]))
    for p in glob.glob("/sys/fs/ext4/*/session_write_kbytes"):
        if wanted(p.split("/")[-2]):
            total += ints(p, lambda t: int(t))
    return total

def meminfo(key):
    return ints("/proc/meminfo", lambda t: int(next(l.split()[1] for l in t.splitlines() if l.startswith(key))))

def stat_field(key):
    return ints("/proc/stat", lambda t: int(next(l.split()[1] for l in t.splitlines() if l.startswith(key))))

def host_free():
    s = os.statvfs("/")
    return s.f_bfree * s.f_frsize

def cached(page):
    path, off = page
    # overlayfs refuses RWF_NOWAIT (EOPNOTSUPP), so time one read of the page instead: a page in the cache
    # comes back in microseconds, one from the disk takes far longer. (The read then caches it: one-shot.)
    fd = os.open(path, os.O_RDONLY)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
    try:
        start = time.perf_counter_ns()
        os.pread(fd, 1, off)
        return -math.log10(time.perf_counter_ns() - start)  # log: disk reads vary over decades
    finally:
        os.close(fd)

READ = {
    "block-counters": ("counter", block_counters),
    "host-disk-free": ("counter", lambda: -host_free()),
    "data-disk-free": ("counter", lambda: -os.statvfs(cfg.get("data_path", "/data/d")).f_bfree),
    "memory": ("level", lambda: -meminfo("MemAvailable")),
    "threads": ("level", lambda: ints("/proc/loadavg", lambda t: int(t.split()[3].split("/")[1]))),
    "forks": ("counter", lambda: stat_field("processes")),
    "cpu-stat": ("counter", lambda: ints("/proc/stat", lambda t: sum(int(x) for x in t.splitlines()[0].split()[1:4]))),
    "interrupts": ("counter", lambda: ints("/proc/interrupts", lambda t: sum(
        int(x) for l in t.splitlines()[1:] for x in l.split()[1:3] if x.isdigit()))),
    "vmstat": ("counter", lambda: ints("/proc/vmstat", lambda t: int(next(
        l.split()[1] for l in t.splitlines() if l.startswith("pgpgout"))))),
    "pressure": ("counter", lambda: ints("/proc/pressure/cpu", lambda t: int(t.split("total=")[1].split()[0]))),
}

def send_write(k, end):
    os.makedirs("/workspace/.covert", exist_ok=True)
    chunk = os.urandom(1 << 20)
    with open(f"/workspace/.covert/{k}", "wb") as fh:  # a new file each slot: fresh blocks on the host too
        for _ in range(cfg.get("mib", 8)):
            if time.time() > end:
                break
            fh.write(chunk)
            fh.flush()
            os.fsync(fh.fileno())

def send_memory(k, end):
    block = bytearray(256 << 20)
    for i in range(0, len(block), 4096):
        block[i] = 1
    until(end)

def send_threads(k, end):
    stop = threading.Event()
    ts = [threading.Thread(target=stop.wait) for _ in range(200)]
    for t in ts:
        t.start()
    until(end)
    stop.set()
    for t in ts:
        t.join()

def send_forks(k, end):
    for _ in range(60):
        if time.time() > end:
            break
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)

def send_cpu(k, end):
    while time.time() < end:
        pass

def send_page(k, end):
    path, off = pages[k]
    fd = os.open(path, os.O_RDONLY)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
    os.pread(fd, 1, off)
    os.close(fd)

SEND = {"block-counters": send_write, "host-disk-free": send_write, "data-disk-free": send_write,
        "memory": send_memory, "threads": send_threads, "forks": send_forks, "cpu-stat": send_cpu,
        "cpu-timing": send_cpu, "interrupts": send_write, "vmstat": send_write, "pressure": send_cpu,
        "page-cache": send_page}

def receive(k):
    start, end = t0 + k * T, t0 + (k + 1) * T
    if ch == "page-cache":
        until(end - 0.05 * T)
        return cached(pages[k])
    if ch == "cpu-timing":
        until(start + 0.1 * T)
        n = 0
        while time.time() < end - 0.1 * T:
            n += 1
        return -n
    kind, read = READ[ch]
    if kind == "counter":
        until(start + 0.05 * T)
        v0 = read()
        until(end - 0.05 * T)
        return read() - v0
    until(start + 0.1 * T)
    baseline = read()
    until(start + 0.6 * T)
    samples = [read()]
    until(start + 0.85 * T)
    samples.append(read())
    return sum(samples) / len(samples) - baseline

if role == "send":
    for k, bit in enumerate(bits):
        start, end = t0 + k * T, t0 + (k + 1) * T
        until(start + 0.25 * T)  # the receiver takes its baseline first
        if bit:
            SEND[ch](k, end - 0.1 * T)
    until(t0 + len(bits) * T)
    if os.path.isdir("/workspace/.covert"):
        for name in os.listdir("/workspace/.covert"):
            os.unlink(f"/workspace/.covert/{name}")
else:
    print(json.dumps([receive(k) for k in range(len(bits))]))
"""


@dataclass(frozen=True)
class Channel:
    name: str
    slot: float  # seconds per bit
    what: str


CHANNELS = (
    Channel(
        "block-counters", 0.5, "/proc/diskstats, /sys/block/*/stat, /sys/fs/ext4/*: writes to the workspace"
    ),
    Channel(
        "host-disk-free", 0.5, "statvfs('/') (the host disk under the overlay root): workspace image growth"
    ),
    Channel("data-disk-free", 0.5, "statvfs('/data/<dataset>'): workspace image growth on the host disk"),
    Channel("memory", 1.0, "/proc/meminfo MemAvailable: 256 MiB touched"),
    Channel("threads", 0.2, "/proc/loadavg threads field: 200 threads"),
    Channel("forks", 0.2, "/proc/stat 'processes': 60 forks"),
    Channel("cpu-stat", 0.3, "/proc/stat cpu line: a busy loop"),
    Channel("interrupts", 0.5, "/proc/interrupts: disk writes"),
    Channel("vmstat", 0.5, "/proc/vmstat pgpgout: disk writes"),
    Channel("pressure", 0.5, "/proc/pressure/cpu: a busy loop"),
    Channel("cpu-timing", 0.3, "the receiver's own loop speed: a busy loop (CPU contention)"),
    Channel(
        "page-cache",
        0.05,
        "a timed read of one page of a large file of the shared image: the sender read it or not",
    ),
)
BY_NAME = {c.name: c for c in CHANNELS}
PYTHON = "/opt/notebook/bin/python"


def entropy(p: float) -> float:
    return 0.0 if p <= 0 or p >= 1 else -(p * math.log2(p) + (1 - p) * math.log2(1 - p))


def decode(values: list[float], threshold: float | None = None) -> list[int]:
    """Bits from one number per slot, by the threshold that best splits them in two (Otsu): what a
    receiver does without knowing the bits. A constant view decodes to all zeros. A channel whose
    threshold the attacker knows in advance (page-cache: a cached page reads in under 25 us) passes it."""
    if threshold is not None:
        return [1 if v > threshold else 0 for v in values]
    ordered = sorted(set(values))
    if len(ordered) < 2:
        return [0] * len(values)
    best, threshold = -1.0, ordered[0]
    for cut in ordered[:-1]:
        low = [v for v in values if v <= cut]
        high = [v for v in values if v > cut]
        score = len(low) * len(high) * (sum(high) / len(high) - sum(low) / len(low)) ** 2
        if score > best:
            best, threshold = score, cut
    return [1 if v > threshold else 0 for v in values]


def capacity(sent: list[int], got: list[int], slot: float) -> tuple[float, float]:
    """(bit error rate, bits/s) of a binary symmetric channel with that error rate."""
    errors = sum(a != b for a, b in zip(sent, got, strict=True))
    ber = min(errors / len(sent), 0.5)
    return ber, max(0.0, 1 - entropy(ber)) / slot


def _exec(container, config: dict) -> str:
    result = container.exec_run([PYTHON, "-c", AGENT, json.dumps(config)], user="1000:1000")
    if result.exit_code != 0:
        raise RuntimeError(
            f"{config['role']} in {container.name} failed: {result.output.decode(errors='replace')}"
        )
    return result.output.decode()


def run_channel(
    sender, receiver, name: str, bits: list[int], slot: float | None = None, host_receiver=None, **extra
) -> dict:
    """Send ``bits`` over channel ``name`` from container ``sender`` to container ``receiver``; return the
    receiver's readings, decoded bits, error rate and capacity. ``host_receiver(config)`` (optional) reads
    the same channel on the host at the same time: a control that the sender's signal is real."""
    slot = slot or BY_NAME[name].slot
    config = {"channel": name, "slot": slot, "bits": bits, **extra}
    if name == "page-cache":
        config["pages"] = probe_pages(receiver, len(bits))
        if len(config["pages"]) < len(bits):
            raise RuntimeError(
                f"page-cache: only {len(config['pages'])} uncached pages in the image's large files"
            )
    config["t0"] = time.time() + 3.0  # both exec calls start well before the first slot
    out: dict = {}
    threads = [
        threading.Thread(target=lambda: out.update(send=_exec(sender, {**config, "role": "send"}))),
        threading.Thread(target=lambda: out.update(receive=_exec(receiver, {**config, "role": "receive"}))),
    ]
    if host_receiver is not None:
        threads.append(
            threading.Thread(target=lambda: out.update(host=host_receiver({**config, "role": "receive"})))
        )
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    values = json.loads(out["receive"])
    threshold = -math.log10(25_000) if name == "page-cache" else None
    got = decode(values, threshold)
    ber, bps = capacity(bits, got, slot)
    if len(set(values)) == 1:  # a view that never moved carries nothing, whatever the bits' balance
        ber, bps = 0.5, 0.0
    result = {"channel": name, "slot": slot, "values": values, "decoded": got, "ber": ber, "bits_per_s": bps}
    if host_receiver is not None:
        host_got = decode(json.loads(out["host"]))
        result["host_ber"], result["host_bits_per_s"] = capacity(bits, host_got, slot)
    return result


def probe_pages(container, wanted: int) -> list[tuple[str, int]]:
    """Pages no one has read lately of the image's large files (over 8 MiB, under /opt or /usr), as
    (path in the container, offset): one per bit, the code book both sides share. Any large file of the
    shared image will do."""
    lower = container.attrs["GraphDriver"]["Data"]["LowerDir"].split(":")
    found: list[tuple[str, int]] = []
    for layer in lower:
        for host_path in (
            p for top in ("opt", "usr") if Path(layer, top).is_dir() for p in Path(layer, top).rglob("*")
        ):
            if host_path.is_file() and not host_path.is_symlink() and host_path.stat().st_size > 8 << 20:
                path = "/" + str(host_path.relative_to(layer))
                found += [(path, off) for off in uncached_pages(container, path)]
                if len(found) >= wanted:
                    return found[:wanted]
    return found


def uncached_pages(container, path: str, stride: int = 1 << 20) -> list[int]:
    """Offsets (one per MiB, beyond any readahead window) of the image file ``path`` that are not in the page cache now: the code book
    both sides share. Probed on the host, on the image layer's own file (the same inode and page cache the
    containers read through overlayfs), with mincore(2), which reads nothing in (RWF_NOWAIT would start
    readahead on a miss)."""
    import ctypes
    import mmap

    lower = container.attrs["GraphDriver"]["Data"]["LowerDir"].split(":")
    host_file = next(Path(d + path) for d in lower if Path(d + path).is_file())
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [
        ctypes.c_void_p,
        ctypes.c_size_t,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_long,
    ]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    fd = os.open(host_file, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        addr = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        vec = ctypes.create_string_buffer((size + mmap.PAGESIZE - 1) // mmap.PAGESIZE)
        if libc.mincore(addr, size, vec) != 0:
            raise OSError(ctypes.get_errno(), f"mincore {host_file}")
        libc.munmap(addr, size)
    finally:
        os.close(fd)
    return [off for off in range(stride, size - stride, stride) if not vec.raw[off // mmap.PAGESIZE] & 1]


def host_reader(config: dict) -> str:
    """The agent's receiver run on the host itself (unmasked /proc): the control for the tests."""
    import subprocess

    return subprocess.run(
        [sys.executable, "-c", AGENT, json.dumps(config)],
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    ).stdout


def bits_of(text: str) -> list[int]:
    return [int(b) for byte in text.encode() for b in f"{byte:08b}"]


def text_of(bits: list[int]) -> str:
    data = bytes(int("".join(map(str, bits[i : i + 8])), 2) for i in range(0, len(bits) - 7, 8))
    return data.decode(errors="replace")


# ---- the bench: two containers per mode, outside any hub ------------------------------------------------


def _containers(client, image: str, state: Path, mode: str) -> list:
    from hub.dataset_images import ensure_dataset_filesystem
    from hub.security_profile import Mount, host_block_device_dirs, security_profile
    from hub.workspace import ensure_workspace

    made = []
    for project in ("covert-a", "covert-b"):
        workspace = ensure_workspace(state / "workspaces", f"{project}-{mode}", "1G")
        data = state / "published" / project
        data.mkdir(parents=True, exist_ok=True)
        (data / "manifest.json").write_text("{}")
        data.chmod(0o755)
        if mode == "after":
            data = ensure_dataset_filesystem(state, data, project, "d", "1")
        profile = security_profile(
            image=image,
            network="none",
            dns="127.0.0.1",
            mounts=[Mount(data, "/data/d", True), Mount(workspace, "/workspace", False)],
            cpu=1.0,
            memory="2G",
            pids=512,
            host_block_devices=host_block_device_dirs(),
        )
        host_config = dict(profile["host_config"])
        for key in ("dns", "dns_search", "sysctls"):
            host_config.pop(key)
        if mode == "before":  # the profile before: no lxcfs views, no masked counters
            host_config["binds"] = host_config["binds"][:2]
        hc = client.api.create_host_config(**host_config)
        if mode == "after":
            hc.update(profile["engine_host_config"])
        create = {k: v for k, v in profile["create"].items() if k != "healthcheck"}
        cid = client.api.create_container(
            **{**create, "network_disabled": True},
            host_config=hc,
            entrypoint=["/bin/sleep", "infinity"],
            name=f"covert-{mode}-{project}-{secrets.token_hex(3)}",
        )["Id"]
        client.api.start(cid)
        made.append(client.containers.get(cid))
    return made


def main(argv: list[str] | None = None) -> int:
    import docker

    from hub.dataset_images import release_dataset_filesystems
    from tests.harness import release_workspaces

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--channels", default=",".join(c.name for c in CHANNELS))
    parser.add_argument("--bits", type=int, default=32)
    parser.add_argument("--mode", choices=("before", "after", "both"), default="both")
    parser.add_argument(
        "--image", default=os.environ.get("ENCLAVE_TEST_IMAGE") or os.environ.get("NOTEBOOK_IMAGE")
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    names = [n for n in args.channels.split(",") if n]
    unknown = [n for n in names if n not in BY_NAME]
    if unknown:
        parser.error(f"--channels: unknown {unknown}; known: {sorted(BY_NAME)}")
    client = docker.from_env()
    # The newest notebook image (images/build tags each build with its input hash) unless one is named.
    newest = max(client.images.list("enclave/notebook"), key=lambda i: i.attrs["Created"], default=None)
    image = args.image or (
        newest.tags[0] if newest else parser.error("no enclave/notebook image: run images/build")
    )
    state = Path(tempfile.mkdtemp(prefix="enclave-covert-", dir="/var/tmp"))
    rows: dict[str, dict] = {}
    made: list = []
    try:
        for mode in ("before", "after") if args.mode == "both" else (args.mode,):
            sender, receiver = _containers(client, image, state, mode)
            made += [sender, receiver]
            for name in names:
                bits = [secrets.randbelow(2) for _ in range(args.bits)]
                result = run_channel(sender, receiver, name, bits, target=f".covert-a-{mode}.ext4")
                rows.setdefault(name, {})[mode] = result
                print(
                    f"{mode:6} {name:15} slot {result['slot']:.2f}s  BER {result['ber']:.2f}  "
                    f"{result['bits_per_s']:6.2f} bits/s",
                    file=sys.stderr,
                )
    finally:
        for c in made:
            c.remove(force=True)
        release_dataset_filesystems(state)
        release_workspaces(state / "workspaces")
        shutil.rmtree(state, ignore_errors=True)
    print(f"\n{'channel':15} {'before bits/s':>14} {'after bits/s':>13}  what")
    for name in names:
        r = rows[name]
        cells = [f"{r[m]['bits_per_s']:.2f}" if m in r else "-" for m in ("before", "after")]
        print(f"{name:15} {cells[0]:>14} {cells[1]:>13}  {BY_NAME[name].what}")
    if args.json:
        print(
            json.dumps(
                {
                    n: {m: {k: v for k, v in r.items() if k != "values"} for m, r in rows[n].items()}
                    for n in names
                }
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
