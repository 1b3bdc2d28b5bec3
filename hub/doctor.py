"""``enclave doctor``: is this installation as locked down as docs/SECURITY.md says it is?

Each check prints one line, ``OK`` or ``FAIL`` and the reason; the exit status is 3 when any check fails
(a weakness), 1 when the doctor cannot run at all (an invalid policy), 0 otherwise. ``--rules`` adds the
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
import socket
import ssl
import stat
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hub import firewall, internal_tls
from hub.cli import CLIError
from hub.paths import EnclavePaths
from hub.policy import PolicyError, Site, load_policy
from hub.security_profile import inspect_problems, lxcfs_problem

EXIT_WEAK = 3
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

    def line(self) -> str:
        return f"{'OK' if self.ok else 'FAIL':<4}  {self.name:<10} {self.reason}"


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
        internal_tls_problems=tuple(internal_tls.problems(paths.state_dir)),
        hub_speaks=_hub_speaks(site),
        **_observe_engine(site),
    )


# ---- command ------------------------------------------------------------------------------------------


def register(subparsers: argparse._SubParsersAction) -> None:
    doctor = subparsers.add_parser(
        "doctor",
        help="check the security posture: engine, firewall, networks, containers, image, keys, proxy token, "
        "internal TLS",
        description="Check that this installation is locked down as docs/SECURITY.md describes. One line per "
        "check: OK or FAIL and why. Run as root (it reads iptables and the state directory).",
        epilog="exit status: 0 all checks OK; 3 a check failed (a weakness); 1 could not check (invalid policy)",
    )
    doctor.add_argument("--rules", action="store_true", help="also print the enclave's host firewall rules")
    doctor.add_argument("--json", action="store_true", help="print the result as JSON")
    doctor.set_defaults(handler=_doctor)


def _doctor(args: argparse.Namespace, paths: EnclavePaths) -> int:
    checks = diagnose(observe(paths))
    ok = all(c.ok for c in checks)
    if args.json:
        doc: dict[str, Any] = {"ok": ok, "checks": [asdict(c) for c in checks]}
        if args.rules:
            doc["rules"] = firewall.listing()
        print(json.dumps(doc, indent=2))
    else:
        for c in checks:
            print(c.line())
        if args.rules:
            print()
            print(firewall.listing())
    return 0 if ok else EXIT_WEAK
