"""``enclave doctor``: is this installation as locked down as docs/SECURITY.md says it is?

Each check prints one line, ``OK``, ``WARN`` or ``FAIL`` and the reason; the exit status is 3 when any check
fails (a weakness, or a broken service), 2 when there are warnings only (e.g. the disk under the state
directory is nearly full, the hub is not running), 1 when the doctor cannot run at all (an invalid policy),
0 otherwise. ``--rules`` adds the
host firewall as iptables prints it; ``--json`` gives the same as one JSON document.

Everything the checks look at is gathered once by :func:`observe` into an :class:`Observed`; the checks
are pure functions of it, so each can be unit-tested with a hand-made ``Observed`` and no root, engine
or iptables (tests/unit/test_firewall_doctor.py).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import ssl
import stat
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ground.commands import CLIError
from hub import firewall, internal_tls
from hub.paths import EnclavePaths
from hub.policy import PolicyError, Site, load_policy
from hub.security_profile import inspect_problems, lxcfs_problem
from hub.services import SERVICE_NAMES, ServiceProcess, find_services, is_current

EXIT_WEAK = 3
EXIT_WARN = 2
# CVE-2024-29018 (GHSA-mq39-4gv4-mvpx): the embedded DNS resolver of an internal network forwarded
# outside names from the host's namespace. Fixed in these release lines, from these versions on.
DNS_FIX = {(23, 0): (23, 0, 11), (25, 0): (25, 0, 5)}
DNS_FIX_FROM = (26, 0, 0)
AUDIT_KEY_FILES = ("audit-mac.key", "audit-checkpoint.ed25519")


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    reason: str
    warning: bool = False
    """Not a failure, but an operator must act soon (exit status 2 when nothing fails)."""

    def line(self) -> str:
        word = "FAIL" if not self.ok else ("WARN" if self.warning else "OK")
        return f"{word:<4}  {self.name:<10} {self.reason}"


@dataclass(frozen=True)
class NetworkView:
    name: str
    bridge: str
    gateway: str | None
    internal: bool


@dataclass(frozen=True)
class ContainerView:
    """A running container of this installation: named with its prefix, or attached to one of its networks."""

    name: str
    networks: Mapping[str, str]  # network name -> that network's gateway, as the container sees it
    dns: tuple[str, ...]  # HostConfig.Dns
    image_id: str
    image_name: str
    attrs: Mapping[str, Any] = field(repr=False, default_factory=dict)


@dataclass(frozen=True)
class FileView:
    path: str
    mode: int | None  # None: missing
    is_dir: bool = False
    is_link: bool = False
    owner: int = 0


@dataclass(frozen=True)
class Observed:
    """What the checks read: the site policy, the engine's view, the firewall, and the state directory."""

    site: Site
    engine_version: str | None = None
    engine_error: str | None = None
    networks: tuple[NetworkView, ...] = ()
    containers: tuple[ContainerView, ...] = ()
    site_image_id: str | None = None
    tables: Mapping[tuple[str, str], str | None] = field(default_factory=dict)
    secrets: tuple[FileView, ...] = ()  # the secrets directory first, then everything under it
    audit_files: tuple[FileView, ...] = ()  # the audit directory first, then its files
    proxy_token: str | None = None
    proxy_unauthenticated_status: int | None = None  # what the proxy API answers without a token
    euid: int = 0
    lxcfs_problem: str | None = None  # why lxcfs cannot serve the containers' /proc files; None: it can
    hub_pid: int | None = None  # the running hub (its pid file, alive); None: not running
    services: tuple[ServiceProcess, ...] = ()  # every managed service of this installation, any hub's
    service_answers: Mapping[str, str | None] = field(default_factory=dict)
    """Service name -> why it does not answer on its port (None: it answers)."""
    port_holders: Mapping[int, str] = field(default_factory=dict)
    """A service port -> the process listening on it that is not this hub's service (pid and command)."""
    exports_oauth: str | None = "not checked"
    """Why the exports service's OAuth client credentials fail at the hub; None: the round trip works."""
    free_bytes: int | None = None  # free space on the state directory's filesystem
    spool_problems: tuple[str, ...] = ()  # the audit spool missing, or holding records that wait for space
    reader_password: FileView | None = None  # ldap.bind_password_file, the directory reader's password
    internal_tls_problems: tuple[str, ...] = ()  # the internal CA on disk (hub/internal_tls.py)
    hub_speaks: str | None = (
        None  # what the hub's internal port answers: "tls", "http", or None (not running)
    )


# ---- checks (pure) ------------------------------------------------------------------------------------


def count(n: int, thing: str) -> str:
    return f"{n} {thing}" + ("" if n == 1 else "s")


def engine_version_tuple(version: str) -> tuple[int, int, int] | None:
    match = re.match(r"(\d+)\.(\d+)\.(\d+)", version)
    return tuple(int(x) for x in match.groups()) if match else None  # type: ignore[return-value]


def dns_fix_present(version: str) -> bool:
    """True if this engine release has the upstream fix for CVE-2024-29018."""
    v = engine_version_tuple(version)
    if v is None:
        return False
    if v >= DNS_FIX_FROM:
        return True
    fixed_in = DNS_FIX.get(v[:2])
    return fixed_in is not None and v >= fixed_in


def dns_mitigation_problems(obs: Observed) -> list[str]:
    """Each running container must resolve through its own network's gateway, where the firewall rejects
    DNS: the embedded resolver then cannot forward an outside name from anywhere."""
    problems = []
    for c in obs.containers:
        gateways = sorted({g for g in c.networks.values() if g})
        if list(c.dns) != gateways[:1] or len(gateways) != 1:
            problems.append(f"{c.name}: HostConfig.Dns is {list(c.dns)}, not its network gateway {gateways}")
    return problems


def check_engine(obs: Observed) -> Check:
    if obs.engine_version is None:
        return Check("engine", False, f"Docker engine unreachable: {obs.engine_error}")
    version = obs.engine_version
    if dns_fix_present(version):
        return Check("engine", True, f"Docker {version}: CVE-2024-29018 fixed in this release")
    problems = dns_mitigation_problems(obs)
    chain_missing = [p for p in firewall.posture_problems(obs.tables, [], []) if p.startswith("iptables")]
    if problems or chain_missing:
        return Check(
            "engine",
            False,
            f"Docker {version} has CVE-2024-29018 (DNS exfiltration from internal "
            f"networks) and the mitigation is not in force: {'; '.join(chain_missing + problems)}",
        )
    return Check(
        "engine",
        True,
        f"Docker {version} predates the CVE-2024-29018 fix (23.0.11/25.0.5/26.0.0); "
        f"mitigated: the firewall chain is in place and every enclave container "
        f"({len(obs.containers)}) resolves through its network gateway, which rejects DNS",
    )


def check_firewall(obs: Observed) -> Check:
    ports = [obs.site.hub_port, obs.site.exports_port]
    problems = firewall.posture_problems(obs.tables, [n.bridge for n in obs.networks], ports)
    if obs.engine_version is None:
        problems.append("enclave networks unknown (engine unreachable): their bridges were not checked")
    if problems:
        return Check("firewall", False, "; ".join(problems))
    return Check(
        "firewall",
        True,
        f"{firewall.CHAIN} jumped from INPUT (iptables and ip6tables); "
        f"{count(len(obs.networks), 'enclave bridge')} admitting only tcp {ports[0]} (hub) and {ports[1]} (exports)",
    )


def check_networks(obs: Observed) -> Check:
    if obs.engine_version is None:
        return Check("networks", False, "not checked: engine unreachable")
    open_ = [n.name for n in obs.networks if not n.internal]
    if open_:
        return Check("networks", False, f"not internal (they route out): {', '.join(open_)}")
    foreign = [
        f"{c.name} is also on {', '.join(sorted(set(c.networks) - {n.name for n in obs.networks}))}"
        for c in obs.containers
        if set(c.networks) - {n.name for n in obs.networks}
    ]
    if foreign:
        return Check("networks", False, "; ".join(foreign))
    return Check(
        "networks",
        True,
        f"{count(len(obs.networks), 'project network')}, all internal; "
        "every enclave container is on its project network only",
    )


def check_containers(obs: Observed) -> Check:
    if obs.engine_version is None:
        return Check("profile", False, "not checked: engine unreachable")
    problems = [f"{c.name}: {p}" for c in obs.containers for p in inspect_problems(dict(c.attrs))]
    if problems:
        return Check("profile", False, "; ".join(problems))
    return Check(
        "profile",
        True,
        f"{count(len(obs.containers), 'running enclave container')} checked: all match the security profile",
    )


def check_images(obs: Observed) -> Check:
    if obs.engine_version is None:
        return Check("image", False, "not checked: engine unreachable")
    if obs.site_image_id is None:
        return Check(
            "image", False, f"the site image {obs.site.image} (policies/site.yaml) is not on this engine"
        )
    wrong = [
        f"{c.name} runs {c.image_name} ({c.image_id[7:19]})"
        for c in obs.containers
        if c.image_id != obs.site_image_id
    ]
    if wrong:
        return Check(
            "image",
            False,
            f"not the site image {obs.site.image} ({obs.site_image_id[7:19]}): "
            + "; ".join(wrong)
            + " (stop and start them to pick up the site image)",
        )
    return Check(
        "image",
        True,
        f"{count(len(obs.containers), 'running container')} checked: all run the site image "
        f"{obs.site.image} ({obs.site_image_id[7:19]})",
    )


def key_problems(obs: Observed) -> list[str]:
    if not obs.secrets or obs.secrets[0].mode is None:
        return ["the secrets directory is missing"]
    top, problems = obs.secrets[0], []
    if top.is_link or not top.is_dir or top.mode != 0o700:
        problems.append(f"{top.path} is mode {top.mode:04o}, not a 0700 directory")
    for f in obs.secrets[1:]:
        if f.is_link:
            problems.append(f"{f.path} is a symbolic link")
        elif f.is_dir and f.mode != 0o700:
            problems.append(f"{f.path} is mode {f.mode:04o}, not 0700")
        elif not f.is_dir and f.mode not in (0o600, 0o400):
            problems.append(f"{f.path} is mode {f.mode:04o}, not 0600")
        if f.owner != obs.euid:
            problems.append(f"{f.path} is owned by uid {f.owner}, not {obs.euid}")
    names = {Path(f.path).name for f in obs.secrets[1:]}
    audit_in_use = len(obs.audit_files) > 1
    missing = [k for k in AUDIT_KEY_FILES if k not in names]
    if audit_in_use and missing:
        problems.append(f"the audit trail has records but {', '.join(missing)} is missing from {top.path}")
    for f in obs.audit_files:
        if f.mode is not None and f.mode & 0o022:
            problems.append(f"{f.path} is mode {f.mode:04o}: others can write the audit trail")
    return problems


def check_keys(obs: Observed) -> Check:
    problems = key_problems(obs)
    if problems:
        return Check("keys", False, "; ".join(problems))
    audit = "audit keys present" if len(obs.audit_files) > 1 else "no audit records yet"
    return Check(
        "keys",
        True,
        f"{obs.secrets[0].path} is 0700 and its {count(len(obs.secrets) - 1, 'file')} 0600; {audit}",
    )


def check_lxcfs(obs: Observed) -> Check:
    """Containers read lxcfs's per-container /proc files; without lxcfs the hub refuses to spawn."""
    if obs.lxcfs_problem:
        return Check("lxcfs", False, f"{obs.lxcfs_problem}: spawns are refused until it answers")
    return Check("lxcfs", True, "per-container /proc views (meminfo, stat, loadavg, cpuinfo, uptime) answer")


def check_proxy_token(obs: Observed) -> Check:
    token = obs.proxy_token
    if token is None:
        return Check(
            "proxy", False, "secrets/proxy_auth_token is missing: the proxy's routing API would be open"
        )
    if len(token) < 32 or len(set(token)) < 10:
        return Check(
            "proxy",
            False,
            f"secrets/proxy_auth_token is trivial ({len(token)} characters, "
            f"{len(set(token))} distinct); use 32+ random characters (deploy/lib.sh ensure_secret)",
        )
    status = obs.proxy_unauthenticated_status
    if status is not None and status < 400:
        return Check(
            "proxy",
            False,
            f"the proxy API on 127.0.0.1:{obs.site.proxy_api_port} answers {status} "
            "without a token: it was started without CONFIGPROXY_AUTH_TOKEN",
        )
    running = "not running" if status is None else f"refuses requests without it ({status})"
    return Check("proxy", True, f"auth token set ({len(token)} characters); proxy API {running}")


PORTED_SERVICES = {"exports": "exports_port", "enclave-gate": "hub_port"}
ENFORCER = "enclave-policy"


def service_problems(obs: Observed) -> list[str]:
    problems = []
    for service in obs.services:
        if not is_current(service, obs.hub_pid):
            hub = "no hub runs" if obs.hub_pid is None else f"the running hub is pid {obs.hub_pid}"
            problems.append(
                f"stale {service.describe()}: not started by the running hub ({hub}); "
                "deploy/demo (or restarting the hub) stops it"
            )
    for port, holder in sorted(obs.port_holders.items()):
        problems.append(f"port {port} is held by {holder}, not by this hub's service")
    if obs.hub_pid is None:
        return problems
    current = [s for s in obs.services if is_current(s, obs.hub_pid)]
    for name in SERVICE_NAMES:
        mine = [s for s in current if s.name == name]
        if not mine:
            problems.append(f"{name} is not running under the hub (pid {obs.hub_pid}): see logs/hub.log")
        elif len(mine) > 1 and name != ENFORCER:
            problems.append(f"{len(mine)} {name} services run: " + ", ".join(s.describe() for s in mine))
    for name, why in sorted(obs.service_answers.items()):
        if why:
            problems.append(f"{name} does not answer: {why}")
    return problems


def check_services(obs: Observed) -> Check:
    """Every managed service runs once, was started by the running hub, and answers (hub/services.py)."""
    problems = service_problems(obs)
    if problems:
        return Check("services", False, "; ".join(problems))
    if obs.hub_pid is None:
        return Check(
            "services",
            True,
            "the hub is not running (deploy/demo starts it); no service left behind",
            warning=True,
        )
    return Check(
        "services", True, f"{', '.join(SERVICE_NAMES)} run under the hub (pid {obs.hub_pid}) and answer"
    )


def check_enforcer(obs: Observed) -> Check:
    """Exactly one policy enforcer: two would both stop servers and both write the trail."""
    enforcers = [s for s in obs.services if s.name == ENFORCER]
    if len(enforcers) > 1:
        return Check(
            "enforcer",
            False,
            f"{len(enforcers)} policy enforcers run: " + ", ".join(s.describe() for s in enforcers),
        )
    if not enforcers:
        if obs.hub_pid is None:
            return Check("enforcer", True, "not running (the hub is not running)", warning=True)
        return Check(
            "enforcer", False, "no policy enforcer runs: policy changes do not reach running servers"
        )
    return Check("enforcer", True, f"exactly one runs: {enforcers[0].describe()}")


def check_oauth(obs: Observed) -> Check:
    """The exports service's OAuth client credentials are the ones the running hub knows."""
    if obs.hub_pid is None:
        return Check("oauth", True, "not checked: the hub is not running", warning=True)
    if obs.exports_oauth:
        return Check("oauth", False, f"the exports service's OAuth round trip fails: {obs.exports_oauth}")
    return Check("oauth", True, "the exports service's token and OAuth client secret are accepted by the hub")


def check_disk(obs: Observed) -> Check:
    """Free space under the state directory, against site policy disk.min_free_mib."""
    if obs.free_bytes is None:
        return Check("disk", True, "not checked: the state directory does not exist", warning=True)
    free_mib, floor = obs.free_bytes // (1024 * 1024), obs.site.disk_min_free_mib
    if free_mib < floor:
        return Check(
            "disk",
            True,
            f"{free_mib} MiB free under the state directory, below disk.min_free_mib "
            f"({floor} MiB): on a full disk logins and spawns are refused and stops are spooled "
            "(docs/OPERATIONS.md)" + "".join(f"; {p}" for p in obs.spool_problems),
            warning=True,
        )
    if obs.spool_problems:
        return Check("disk", True, f"{free_mib} MiB free; " + "; ".join(obs.spool_problems), warning=True)
    return Check("disk", True, f"{free_mib} MiB free under the state directory (warning below {floor} MiB)")


def check_identity(obs: Observed) -> Check:
    """Revocation within a minute needs the directory reader (hub/accreditation.py); its password is a secret."""
    ldap, session = obs.site.ldap, obs.site.session
    if not (ldap.bind_dn and ldap.bind_password_file):
        return Check(
            "identity",
            False,
            "site.yaml ldap.bind_dn / ldap.bind_password_file are not set: a "
            "revocation in the directory takes effect only at the user's next login",
        )
    f = obs.reader_password
    if f is None or f.mode is None:
        return Check(
            "identity",
            False,
            f"{ldap.bind_password_file} (ldap.bind_password_file) is missing: "
            "accreditation cannot be re-read, so logins and spawns are refused",
        )
    if f.is_link or f.mode & 0o077:
        return Check(
            "identity",
            False,
            f"{f.path} is mode {f.mode:04o}{' (a link)' if f.is_link else ''}: "
            "the directory reader's password must be 0600",
        )
    return Check(
        "identity",
        True,
        f"second factor required; accreditation re-read as {ldap.bind_dn}; "
        f"sessions {session.max_hours:g} h, idle logout {session.idle_logout_minutes} min",
    )


def tls_problems(obs: Observed) -> list[str]:
    problems = list(obs.internal_tls_problems)
    if obs.hub_speaks == "http":
        problems.append(
            f"the hub answers plain HTTP on 127.0.0.1:{obs.site.hub_internal_port}: internal_ssl is off"
        )
    for c in obs.containers:
        env = {e.split("=", 1)[0] for e in (c.attrs.get("Config") or {}).get("Env") or []}
        if "JUPYTERHUB_SSL_KEYFILE" not in env:
            problems.append(f"{c.name} serves plain HTTP (no JUPYTERHUB_SSL_KEYFILE): stop and start it")
    return problems


def check_internal_tls(obs: Observed) -> Check:
    """Hub, proxy and servers speak TLS to each other (internal_ssl), from a CA only root can read."""
    problems = tls_problems(obs)
    if problems:
        return Check("tls", False, "; ".join(problems))
    hub = {"tls": "the hub answers TLS only", None: "the hub is not running"}[obs.hub_speaks]
    return Check(
        "tls",
        True,
        f"internal_ssl on: the internal CA is 0700 with 0600 keys; {hub}; "
        f"{count(len(obs.containers), 'running server')} with TLS",
    )


CHECKS: tuple[Callable[[Observed], Check], ...] = (
    check_engine,
    check_firewall,
    check_networks,
    check_containers,
    check_images,
    check_keys,
    check_proxy_token,
    check_lxcfs,
    check_services,
    check_enforcer,
    check_oauth,
    check_disk,
    check_identity,
    check_internal_tls,
)


def diagnose(obs: Observed) -> list[Check]:
    return [check(obs) for check in CHECKS]


# ---- observing (impure) -------------------------------------------------------------------------------


def _file_view(path: Path) -> FileView:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return FileView(str(path), None)
    return FileView(
        str(path), stat.S_IMODE(st.st_mode), stat.S_ISDIR(st.st_mode), stat.S_ISLNK(st.st_mode), st.st_uid
    )


def _tree(root: Path) -> tuple[FileView, ...]:
    top = _file_view(root)
    if not top.is_dir or top.is_link:
        return (top,)
    return (top, *(_file_view(p) for p in sorted(root.rglob("*"))))


def _observe_engine(site: Site) -> dict[str, Any]:
    import docker
    import requests

    try:
        client = docker.from_env(timeout=20)
        version = client.version()["Version"]
    except (docker.errors.DockerException, requests.RequestException) as exc:
        return {"engine_error": f"{type(exc).__name__}: {exc}"}
    networks = []
    for net in client.networks.list():
        if not net.name.startswith(site.network_prefix) or net.attrs.get("Driver") != "bridge":
            continue
        attrs = client.api.inspect_network(net.id)
        gateway = next(
            (c.get("Gateway") for c in (attrs.get("IPAM") or {}).get("Config") or [] if c.get("Gateway")),
            None,
        )
        networks.append(
            NetworkView(net.name, firewall.network_bridge(attrs), gateway, bool(attrs.get("Internal")))
        )
    names = {n.name for n in networks}
    containers = []
    for c in client.containers.list():  # running only: a stopped container has no network presence
        attrs = c.attrs
        nets = (attrs.get("NetworkSettings") or {}).get("Networks") or {}
        if not c.name.startswith(site.network_prefix) and not names & set(nets):
            continue
        containers.append(
            ContainerView(
                name=c.name,
                networks={k: v.get("Gateway", "") for k, v in nets.items()},
                dns=tuple((attrs.get("HostConfig") or {}).get("Dns") or ()),
                image_id=attrs.get("Image", ""),
                image_name=(attrs.get("Config") or {}).get("Image", ""),
                attrs=attrs,
            )
        )
    try:
        site_image_id = client.images.get(site.image).id
    except docker.errors.ImageNotFound:
        site_image_id = None
    return {
        "engine_version": version,
        "networks": tuple(networks),
        "containers": tuple(containers),
        "site_image_id": site_image_id,
    }


CERTIFICATE_REQUIRED = 496  # nginx's "SSL Certificate Required": refused in the TLS handshake


def _proxy_status(site: Site) -> int | None:
    """What the proxy API answers a caller with no token (and, on TLS, no client certificate)."""
    insecure = ssl.create_default_context()
    insecure.check_hostname, insecure.verify_mode = False, ssl.CERT_NONE  # we ask, we don't trust the answer
    for scheme in ("https", "http"):
        try:
            with urllib.request.urlopen(
                f"{scheme}://127.0.0.1:{site.proxy_api_port}/api/routes",
                timeout=5,
                context=insecure if scheme == "https" else None,
            ) as resp:
                return resp.status
        except urllib.error.HTTPError as exc:
            return exc.code
        except urllib.error.URLError as exc:
            if (
                scheme == "https"
                and isinstance(exc.reason, ssl.SSLError)
                and "CERTIFICATE_REQUIRED" in str(exc.reason)
            ):
                return CERTIFICATE_REQUIRED
        except ssl.SSLError as exc:  # TLS 1.3: the refusal comes after the handshake, on the first read
            if "CERTIFICATE_REQUIRED" in str(exc):
                return CERTIFICATE_REQUIRED
        except OSError:
            pass
    return None  # not running


def _hub_speaks(site: Site) -> str | None:
    """Plain HTTP, TLS, or nothing on the hub's internal port: a plain request either gets an HTTP answer
    (internal_ssl is off) or is not understood."""
    try:
        with socket.create_connection(("127.0.0.1", site.hub_internal_port), timeout=5) as sock:
            sock.sendall(b"GET /hub/api/ HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            answer = sock.recv(16)
    except OSError:
        return None if not _port_open(site.hub_internal_port) else "tls"
    return "http" if answer.startswith(b"HTTP/") else "tls"


def _port_open(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
        return True
    except OSError:
        return False


def _hub_pid(paths: EnclavePaths) -> int | None:
    """The running hub, from the pid file JupyterHub writes (hub/jupyterhub_config.py); None if not alive."""
    try:
        pid = int((paths.hub_dir / "jupyterhub.pid").read_text().strip())
    except (OSError, ValueError):
        return None
    import psutil

    try:
        proc = psutil.Process(pid)
        alive = proc.status() != psutil.STATUS_ZOMBIE and "jupyterhub" in " ".join(proc.cmdline())
    except psutil.Error:
        return None
    return pid if alive else None


def _http_problem(url: str) -> str | None:
    """None if something answers HTTP at ``url`` (any status below 500), else why not."""
    try:
        with urllib.request.urlopen(url, timeout=5):
            return None
    except urllib.error.HTTPError as exc:
        return None if exc.code < 500 else f"{url} answers {exc.code}"
    except OSError as exc:
        return f"{url}: {getattr(exc, 'reason', exc)}"


def _tls_problem(port: int) -> str | None:
    """None if a TLS server answers the handshake on 127.0.0.1:``port``, else why not. A gate that asks for
    a client certificate (internal_ssl) answers the handshake and then refuses us: that is an answer."""
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE  # we ask, we don't trust the answer
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
            context.wrap_socket(raw, server_hostname="enclave-hub"),
        ):
            return None
    except ssl.SSLError as exc:
        if "CERTIFICATE_REQUIRED" in str(exc) or "certificate required" in str(exc):
            return None
        return f"127.0.0.1:{port}: no TLS handshake ({exc})"
    except OSError as exc:
        return f"127.0.0.1:{port}: {exc}"


def _port_holders(site: Site, services: tuple[ServiceProcess, ...], hub_pid: int | None) -> dict[int, str]:
    import psutil

    ours = {s.pid for s in services if is_current(s, hub_pid)}
    stale = {s.pid for s in services} - ours
    wanted = {site.exports_port, site.hub_port}
    holders = {}
    try:
        conns = psutil.net_connections(kind="inet")
    except (psutil.Error, OSError):
        return {}
    for conn in conns:
        if conn.status != psutil.CONN_LISTEN or conn.laddr.port not in wanted or conn.pid in ours | stale:
            continue
        try:
            what = " ".join(psutil.Process(conn.pid).cmdline())[:160] if conn.pid else "?"
        except psutil.Error:
            what = "?"
        holders[conn.laddr.port] = f"pid {conn.pid} ({what})"
    return holders


def _exports_oauth(site: Site, services: tuple[ServiceProcess, ...], hub_pid: int | None) -> str | None:
    """Use the running exports service's own credentials against the hub, as its OAuth callback does.

    The service's API token must identify it at the hub, and its OAuth client secret (the same token) must
    be accepted at the token endpoint: a made-up code then fails with invalid_grant (the client is known),
    a stale secret with invalid_client. That is the step where a stale service's logins turn into 500s."""
    import psutil

    current = [s for s in services if s.name == "exports" and is_current(s, hub_pid)]
    if not current:
        return "no exports service of the running hub"
    try:
        env = psutil.Process(current[0].pid).environ()
    except psutil.Error as exc:
        return f"cannot read the exports service's environment: {exc}"
    token, client = env.get("JUPYTERHUB_API_TOKEN", ""), env.get("JUPYTERHUB_CLIENT_ID", "service-exports")
    # With internal_ssl the hub asks for a client certificate: present the service's own pair, as it does.
    context = None
    if env.get("JUPYTERHUB_SSL_CERTFILE"):
        context = ssl.create_default_context(cafile=env.get("JUPYTERHUB_SSL_CLIENT_CA"))
        context.check_hostname = False  # the hub's pair names the hub, not 127.0.0.1; the CA is checked
        try:
            context.load_cert_chain(env["JUPYTERHUB_SSL_CERTFILE"], env.get("JUPYTERHUB_SSL_KEYFILE"))
        except OSError as exc:
            return f"cannot read the exports service's TLS pair: {exc}"
    scheme = "https" if context is not None else "http"
    api = f"{scheme}://127.0.0.1:{site.hub_internal_port}/hub/api"
    who = urllib.request.Request(f"{api}/user", headers={"Authorization": f"token {token}"})
    try:
        with urllib.request.urlopen(who, timeout=10, context=context) as resp:
            name = json.loads(resp.read()).get("name")
    except (OSError, ValueError) as exc:
        return f"the hub refuses the service's API token ({exc})"
    if name != "exports":
        return f"the service's API token belongs to {name!r}, not to the exports service"
    form = urllib.parse.urlencode(
        {
            "grant_type": "authorization_code",
            "code": "enclave-doctor-probe",
            "client_id": client,
            "client_secret": token,
            "redirect_uri": env.get("JUPYTERHUB_OAUTH_CALLBACK_URL", ""),
        }
    ).encode()
    try:
        token_request = urllib.request.Request(f"{api}/oauth2/token", data=form)
        with urllib.request.urlopen(token_request, timeout=10, context=context):
            return "the hub's token endpoint accepted a made-up code"
    except urllib.error.HTTPError as exc:
        body = exc.read().decode(errors="replace")
        if "invalid_grant" in body:
            return None
        return f"the hub's token endpoint refuses the service's client {client!r}: {exc.code} {body[:200]}"
    except OSError as exc:
        return f"the hub's token endpoint: {exc}"


def _observe_services(paths: EnclavePaths, site: Site) -> dict[str, Any]:
    hub_pid = _hub_pid(paths)
    services = tuple(find_services(str(paths.state_dir), site.hub_internal_port))
    answers = {}
    if hub_pid is not None:
        answers = {
            "exports": _http_problem(f"http://127.0.0.1:{site.exports_port}/services/exports/"),
            # The gate speaks TLS when the hub does (internal_ssl, checked by `tls`), plain HTTP otherwise.
            "enclave-gate": _tls_problem(site.hub_port)
            and _http_problem(f"http://127.0.0.1:{site.hub_port}/hub/api/")
            and _tls_problem(site.hub_port),
        }
    # The trail may live on its own filesystem (a mount at STATE/audit): the fuller of the two counts.
    frees = []
    for where in (paths.state_dir, paths.audit_dir):
        try:
            frees.append(shutil.disk_usage(where).free)
        except OSError:
            continue
    free = min(frees) if frees else None
    spool: tuple[str, ...] = ()
    if paths.audit_dir.is_dir():
        from audit.log import AuditHealth

        spool = tuple(
            p for p in AuditHealth.of(paths.audit_dir).problems(0) if "spool" in p or "spool.bin" in p
        )
    return {
        "hub_pid": hub_pid,
        "services": services,
        "service_answers": answers,
        "port_holders": _port_holders(site, services, hub_pid),
        "exports_oauth": _exports_oauth(site, services, hub_pid)
        if hub_pid is not None
        else "hub not running",
        "free_bytes": free,
        "spool_problems": spool,
    }


def observe(paths: EnclavePaths) -> Observed:
    try:
        site = load_policy(paths.policy_dir, paths.state_dir).site
    except PolicyError as exc:
        raise CLIError(f"the policy in {paths.policy_dir} is invalid, nothing was checked:\n{exc}") from None
    token_file = paths.secret("proxy_auth_token")
    try:
        token = token_file.read_text().strip()
    except FileNotFoundError:
        token = None
    return Observed(
        site=site,
        tables=firewall.snapshot(),
        secrets=_tree(paths.secrets_dir),
        audit_files=_tree(paths.audit_dir) if paths.audit_dir.exists() else (),
        proxy_token=token,
        proxy_unauthenticated_status=_proxy_status(site),
        euid=os.geteuid(),
        lxcfs_problem=lxcfs_problem(),
        reader_password=_file_view(Path(site.ldap.bind_password_file))
        if site.ldap.bind_password_file
        else None,
        internal_tls_problems=tuple(internal_tls.problems(paths.state_dir)),
        hub_speaks=_hub_speaks(site),
        **_observe_engine(site),
        **_observe_services(paths, site),
    )


# ---- command ------------------------------------------------------------------------------------------


def register(subparsers: argparse._SubParsersAction) -> None:
    doctor = subparsers.add_parser(
        "doctor",
        help="check the security posture and operations: engine, firewall, networks, containers, image, keys, "
        "proxy token, lxcfs, managed services, enforcer, exports OAuth, free disk, identity, internal TLS",
        description="Check that this installation is locked down as docs/SECURITY.md describes. One line per "
        "check: OK or FAIL and why. Run as root (it reads iptables and the state directory).",
        epilog="exit status: 0 all checks OK; 2 warnings only (disk nearly full, hub not running); 3 a check "
        "failed (a weakness, a stale or broken service); 1 could not check (invalid policy)",
    )
    doctor.add_argument("--rules", action="store_true", help="also print the enclave's host firewall rules")
    doctor.add_argument("--json", action="store_true", help="print the result as JSON")
    doctor.set_defaults(handler=_doctor)


def _doctor(args: argparse.Namespace, paths: EnclavePaths) -> int:
    checks = diagnose(observe(paths))
    ok = all(c.ok for c in checks)
    warned = any(c.warning for c in checks)
    if args.json:
        doc: dict[str, Any] = {"ok": ok, "warnings": warned, "checks": [asdict(c) for c in checks]}
        if args.rules:
            doc["rules"] = firewall.listing()
        print(json.dumps(doc, indent=2))
    else:
        for c in checks:
            print(c.line())
        if args.rules:
            print()
            print(firewall.listing())
    if not ok:
        return EXIT_WEAK
    return EXIT_WARN if warned else 0
