"""The hub's managed services (exports, gate, enforcer, idle culler) live and die with their hub.

JupyterHub starts each service in a new session, so neither a SIGKILL of the hub nor a signal to its
process group reaches them: after a crash they keep running, hold the ports the next hub needs and answer
with the old hub's OAuth secret. Two things prevent that:

- :func:`main` (``python -m hub.services NAME -- COMMAND...``) is the wrapper every service is started
  through. It asks the kernel for SIGTERM when its parent dies (``PR_SET_PDEATHSIG``), checks the parent is
  still the hub that started it (it may have died in between), marks the process as this hub's service and
  execs the service: same pid, the parent-death signal survives ``execve``.
- :func:`clear_stale`, called by the hub at start (hub/jupyterhub_config.py), stops any service of this
  installation that another, dead hub left behind (SIGTERM, then SIGKILL) and records it as
  ``service.stop`` (reason stale) on the audit trail, through the spool so a full disk loses nothing.

:func:`find_services` is also what ``enclave doctor`` reads to say which service belongs to which hub.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import psutil

PR_SET_PDEATHSIG = 1
SERVICE_NAMES = ("idle-culler", "exports", "enclave-gate", "enclave-policy")
HUB_PID_ENV = "ENCLAVE_HUB_PID"
STATE_ENV = "ENCLAVE_STATE_DIR"
SERVICE_ENV = "JUPYTERHUB_SERVICE_NAME"
STOP_GRACE_SECONDS = 5.0


@dataclass(frozen=True)
class ServiceProcess:
    """A running process that is a managed service of one installation."""

    name: str
    pid: int
    ppid: int
    hub_pid: int | None
    """The hub the wrapper recorded at start (None: started without the wrapper, e.g. by an older hub)."""
    ports: tuple[int, ...] = field(default=())
    cmdline: tuple[str, ...] = field(default=())

    def describe(self) -> str:
        on = f" on port {', '.join(map(str, self.ports))}" if self.ports else ""
        return f"{self.name} (pid {self.pid}{on}, parent {self.ppid})"


def wrapped(name: str, command: list[str]) -> list[str]:
    """The service command, run through this module's wrapper."""
    return [sys.executable, "-m", "hub.services", name, "--", *command]


def set_parent_death_signal(sig: int = signal.SIGTERM) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_PDEATHSIG): {os.strerror(err)}")


def stop_all() -> int:
    """``python -m hub.services --stop-all``: after the hub is stopped (deploy/demo stop), stop any service of
    this installation (ENCLAVE_STATE_DIR, ENCLAVE_POLICY_DIR) still running, and record each one."""
    from hub import runtime
    from hub.paths import EnclavePaths
    from hub.policy import load_policy

    paths = EnclavePaths.from_env()
    site = load_policy(paths.policy_dir, paths.state_dir).site
    stopped = clear_stale(
        str(paths.state_dir),
        site.hub_internal_port,
        hub_pid=-1,
        audit=runtime.audit_log(str(paths.state_dir)),
    )
    for service in stopped:
        print(f"enclave: stopped {service.describe()}, left running without its hub", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args == ["--stop-all"]:
        return stop_all()
    if len(args) < 3 or args[1] != "--" or args[0] not in SERVICE_NAMES:
        print(
            f"usage: python -m hub.services {{{'|'.join(SERVICE_NAMES)}}} -- COMMAND...\n"
            "       python -m hub.services --stop-all",
            file=sys.stderr,
        )
        return 2
    name, command = args[0], args[2:]
    hub_pid = os.getppid()
    set_parent_death_signal()
    if os.getppid() != hub_pid or hub_pid == 1:
        # The hub died before the signal was armed: nobody would stop this service. Do not start it.
        print(f"enclave: service {name}: its hub (pid {hub_pid}) is gone, not starting", file=sys.stderr)
        return 1
    os.environ[HUB_PID_ENV] = str(hub_pid)
    os.execvp(command[0], command)
    return 1  # not reached


# ---- finding and stopping services ------------------------------------------------------------------


def _environ(proc: psutil.Process) -> dict[str, str]:
    try:
        return proc.environ()
    except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess, OSError):
        return {}


def _listening_ports(proc: psutil.Process) -> tuple[int, ...]:
    try:
        conns = proc.net_connections(kind="inet")
    except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess, OSError):
        return ()
    return tuple(sorted({c.laddr.port for c in conns if c.status == psutil.CONN_LISTEN}))


def belongs_to(env: dict[str, str], state_dir: str, hub_internal_port: int) -> bool:
    """A service of this installation: its state directory, or (the idle culler, which has none) the API
    of this installation's hub."""
    if env.get(SERVICE_ENV) not in SERVICE_NAMES:
        return False
    if env.get(STATE_ENV):
        return os.path.realpath(env[STATE_ENV]) == os.path.realpath(state_dir)
    api = env.get("JUPYTERHUB_API_URL", "")
    return f"127.0.0.1:{hub_internal_port}/" in api


def on_our_side(proc: psutil.Process) -> bool:
    """Run by our user in our PID namespace. A notebook container's processes are visible in the host's
    /proc too, and a researcher chooses their environment: without this, one could dress a process up as
    a stale exports service or a second enforcer, and make the doctor fail or the hub signal it."""
    try:
        same_ns = os.readlink(f"/proc/{proc.pid}/ns/pid") == os.readlink("/proc/self/ns/pid")
        return same_ns and proc.uids().real == os.getuid()
    except (OSError, psutil.Error):
        return False


def find_services(state_dir: str, hub_internal_port: int) -> list[ServiceProcess]:
    """Every running managed service of this installation, whichever hub started it."""
    found = []
    for proc in psutil.process_iter(["pid", "ppid", "cmdline"]):
        if not on_our_side(proc):
            continue
        env = _environ(proc)
        if not belongs_to(env, state_dir, hub_internal_port):
            continue
        hub = env.get(HUB_PID_ENV)
        found.append(
            ServiceProcess(
                name=env[SERVICE_ENV],
                pid=proc.info["pid"],
                ppid=proc.info["ppid"] or 0,
                hub_pid=int(hub) if hub and hub.isdigit() else None,
                ports=_listening_ports(proc),
                cmdline=tuple(proc.info["cmdline"] or ()),
            )
        )
    return sorted(found, key=lambda s: (s.name, s.pid))


def is_current(service: ServiceProcess, hub_pid: int | None) -> bool:
    """Started by the running hub: its parent is that hub (and, with the wrapper, it says so too)."""
    return hub_pid is not None and service.ppid == hub_pid and service.hub_pid in (None, hub_pid)


def stale_services(state_dir: str, hub_internal_port: int, hub_pid: int | None) -> list[ServiceProcess]:
    return [s for s in find_services(state_dir, hub_internal_port) if not is_current(s, hub_pid)]


def stop_processes(pids: Iterable[int], grace: float = STOP_GRACE_SECONDS) -> list[int]:
    """SIGTERM, then SIGKILL what is still there after ``grace`` seconds. Returns the pids killed hard."""
    procs = []
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            proc.terminate()
            procs.append(proc)
        except psutil.NoSuchProcess:
            continue
    _, alive = psutil.wait_procs(procs, timeout=grace)
    for proc in alive:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            continue
    psutil.wait_procs(alive, timeout=grace)
    return [p.pid for p in alive]


def clear_stale(state_dir: str, hub_internal_port: int, hub_pid: int, audit=None) -> list[ServiceProcess]:
    """Stop the services of this installation that a previous hub left running, and record each one.

    Called by a starting hub before its own services start: they would fail on "Address already in use"
    while the stale ones answer with the dead hub's OAuth secret."""
    stale = stale_services(state_dir, hub_internal_port, hub_pid)
    if not stale:
        return []
    started = time.monotonic()
    killed = set(stop_processes(s.pid for s in stale))
    for service in stale:
        if audit is None:
            continue
        audit.append_or_spool(
            actor="service:hub",
            action="service.stop",
            target=service.name,
            details={
                "reason": "stale",
                "pid": service.pid,
                "ports": list(service.ports),
                "started_by_hub": service.hub_pid,
                "parent": service.ppid,
                "signal": "SIGKILL" if service.pid in killed else "SIGTERM",
                "seconds": round(time.monotonic() - started, 2),
            },
        )
    return stale


if __name__ == "__main__":
    sys.exit(main())
