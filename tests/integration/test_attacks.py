"""Hostile code in a researcher's notebook gets nowhere (issue: lockdown).

Every test here is an attack, run for real: from inside alice's spawned demo-cardio container (docker exec
as uid 1000 with the container's own environment, which is what researcher code gets), or from the
browser side through the proxy with a token scoped to alice's server. Each asserts that the attack failed
*and*, where it can be observed, that the intended control stopped it -- EHOSTUNREACH is the host
firewall's icmp-admin-prohibited (a silent DROP would time out, nothing listening would be ECONNREFUSED),
EROFS the read-only mounts, EPERM the dropped capabilities and seccomp, the 403 body the Jupyter lockdown.
docs/SECURITY.md maps each control to its tests.

Probes only target loopback, the host's own addresses, the test's Docker networks and the documentation
ranges 192.0.2.0/24 and 198.51.100.0/24 (plus, as the issue asks, one DNS query to the host's own
resolver). Every loop is bounded and every exec has a timeout.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from tests.harness import Hub, HubClient, docker_exec, py_exec, wait_for

pytestmark = pytest.mark.integration

CARDIO, ONCOLOGY = "demo-cardio", "demo-oncology"
REFUSAL = "This enclave has no download route"
UPLOAD_CAP = 10 * 1024 * 1024
REJECTED = (
    "EHOSTUNREACH"  # what a connect() gets from the firewall's REJECT --reject-with icmp-admin-prohibited
)
# RATE_LIMIT_NOTE: the kernel sends at most about one ICMP error per second to one address
# (net.ipv4.icmp_ratelimit), so a REJECT seen by many quick probes from one container shows up as a
# timeout unless the probe retries: tcp() waits for SYN retransmits, udp() resends. A scan therefore costs
# about a second per probe, and the port scan below keeps its address list to what is distinct.

# Helpers run inside the container before each probe; a probe prints one "RESULT <json>" line.
PROBE_LIB = r"""
import ctypes, errno, json, os, socket, struct, subprocess
def _err(e):
    if isinstance(e, socket.timeout): return "ETIMEDOUT"
    if isinstance(e, socket.gaierror): return "EAI" + str(e.errno)
    return errno.errorcode.get(e.errno, str(e.errno)) if e.errno else type(e).__name__
def tcp(host, port, timeout=4.0):  # long enough for SYN retransmits at 1 s and 3 s (see RATE_LIMIT_NOTE)
    s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect((host, port)); return "CONNECTED"
    except OSError as e: return _err(e)
    finally: s.close()
def udp(host, port, payload=b"enclave-probe", tries=4):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(1.2)
    try:
        s.connect((host, port))
        for _ in range(tries):  # resend: the kernel rate-limits the ICMP errors a REJECT sends back
            s.send(payload)
            try: s.recv(512); return "REPLY"
            except socket.timeout: continue
        return "ETIMEDOUT"
    except OSError as e: return _err(e)
    finally: s.close()
def dns_query(name):
    q = struct.pack("!HHHHHH", 0x4e43, 0x0100, 1, 0, 0, 0)
    for label in name.split("."): q += bytes([len(label)]) + label.encode()
    return q + b"\0" + struct.pack("!HH", 1, 1)
def dns(server, name, timeout=4.0):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(timeout)
    try:
        s.connect((server, 53)); s.send(dns_query(name)); r = s.recv(512)
        return {"rcode": r[3] & 15, "answers": struct.unpack("!H", r[6:8])[0]}
    except OSError as e: return {"error": _err(e)}
def resolve(name):
    try: return sorted({a[4][0] for a in socket.getaddrinfo(name, 80, socket.AF_INET)})
    except OSError as e: return _err(e)
def try_open(path, mode="a"):
    try:
        open(path, mode).close(); return "OK"
    except OSError as e: return _err(e)
libc = ctypes.CDLL(None, use_errno=True)
def syscall_errno(fn, *args):
    rc = fn(*args)
    return "OK" if rc == 0 else errno.errorcode.get(ctypes.get_errno(), str(ctypes.get_errno()))
def out(x): print("RESULT " + json.dumps(x), flush=True)
"""


def probe(container, body: str, timeout: int = 60):
    """Run ``body`` (Python, with PROBE_LIB) in the container as the researcher; its RESULT, parsed."""
    code, output = py_exec(container, PROBE_LIB + body, timeout=timeout)
    found = [line[7:] for line in output.splitlines() if line.startswith("RESULT ")]
    assert found, f"probe produced no result (exit {code}):\n{output[-3000:]}"
    return json.loads(found[-1])


# ---- fixtures ---------------------------------------------------------------------------------------


@dataclass
class Enclave:
    hub: Hub
    alice: HubClient
    bob: HubClient
    alice_token: str  # access:servers!server=alice/demo-cardio, as a browser session would have
    bob_token: str

    def alice_container(self):
        return self.hub.container("alice", CARDIO)

    def bob_container(self):
        return self.hub.container("bob", ONCOLOGY)

    def gateway(self, project: str) -> str:
        return self.hub.network(project).attrs["IPAM"]["Config"][0]["Gateway"]

    def server_url(self, user: str = "alice", project: str = CARDIO) -> str:
        return f"{self.hub.url}/user/{user}/{project}"

    def as_alice(self) -> requests.Session:
        session = requests.Session()
        session.headers["Authorization"] = f"token {self.alice_token}"
        return session


def server_token(client: HubClient, project: str) -> str:
    response = client.api(
        "POST",
        f"/users/{client.user}/tokens",
        json={"scopes": [f"access:servers!server={client.user}/{project}"], "expires_in": 3600},
    )
    assert response.status_code == 201, response.text
    return response.json()["token"]


@pytest.fixture(scope="module")
def enclave(hub):
    alice, bob = HubClient(hub, "alice"), HubClient(hub, "bob")
    assert alice.login().status_code == 302 and bob.login().status_code == 302
    # demo-oncology allows terminals while bob's server starts: it shows that the terminal switch follows
    # each project's policy (the spawner reads the policy at every spawn). Restored at once.
    project_file = hub.policy / "projects" / f"{ONCOLOGY}.yaml"
    original = project_file.read_text()
    project_file.write_text(original.replace("terminals: false", "terminals: true"))
    try:
        if bob.server(ONCOLOGY):
            bob.stop(ONCOLOGY)
        bob.spawn(ONCOLOGY)
    finally:
        project_file.write_text(original)
    if not alice.server(CARDIO):
        alice.spawn(CARDIO)
    yield Enclave(hub, alice, bob, server_token(alice, CARDIO), server_token(bob, ONCOLOGY))
    for client, project in ((alice, CARDIO), (bob, ONCOLOGY)):
        if client.server(project):
            client.stop(project)


# ---- host facts -----------------------------------------------------------------------------------


def host_addresses(family: str = "inet", enclave_bridges: bool = False) -> list[str]:
    """The host's own addresses, not loopback or link-local. Other enclave bridges' gateways (other test
    hubs running at the same time) are left out unless asked for: they are the same case as our own
    gateway and each costs a second per probed port (see RATE_LIMIT_NOTE)."""
    out = subprocess.run(["ip", "-j", "addr"], capture_output=True, text=True, check=True).stdout
    addrs = [
        a["local"]
        for iface in json.loads(out)
        for a in iface.get("addr_info", [])
        if a["family"] == family and (enclave_bridges or not iface["ifname"].startswith("enc"))
    ]
    return sorted(
        a
        for a in addrs
        if not ipaddress.ip_address(a).is_loopback and not ipaddress.ip_address(a).is_link_local
    )


def host_lan_addresses() -> list[str]:
    """The addresses of the interface that carries the default route (eth0 here)."""
    routes = json.loads(
        subprocess.run(
            ["ip", "-j", "route", "show", "default"], capture_output=True, text=True, check=True
        ).stdout
    )
    devices = {r["dev"] for r in routes}
    out = json.loads(
        subprocess.run(["ip", "-j", "-4", "addr"], capture_output=True, text=True, check=True).stdout
    )
    return sorted(
        a["local"] for iface in out if iface["ifname"] in devices for a in iface.get("addr_info", [])
    )


def host_listening_ports(proto: str = "t") -> set[int]:
    out = subprocess.run(["ss", f"-l{proto}nH"], capture_output=True, text=True, check=True).stdout
    return {int(line.split()[3].rsplit(":", 1)[1]) for line in out.splitlines() if line.strip()}


def host_nameservers() -> list[str]:
    lines = Path("/etc/resolv.conf").read_text().splitlines()
    return [line.split()[1] for line in lines if line.startswith("nameserver") and "." in line.split()[1]]


def cgroup_file(container, controller: str, name: str) -> Path:
    """A cgroup file of the container, read from the host (cgroup v1 or v2)."""
    container.reload()
    for line in Path(f"/proc/{container.attrs['State']['Pid']}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if controller in controllers.split(","):
            return Path("/sys/fs/cgroup") / controller / path.lstrip("/") / name
    v2 = Path("/sys/fs/cgroup") / path.lstrip("/") / name  # the "0::" line comes last
    assert v2.exists(), f"no {controller} cgroup for {container.name}"
    return v2


def counter(path: Path, key: str) -> int:
    """``key N`` from a cgroup events/oom_control file."""
    for line in path.read_text().splitlines():
        if line.split()[0] == key:
            return int(line.split()[1])
    raise AssertionError(f"{path} has no {key}: {path.read_text()}")


# ==== 1. egress =======================================================================================


@pytest.mark.parametrize(
    "target", [("192.0.2.1", 80), ("198.51.100.1", 443)], ids=["192.0.2.1:80", "198.51.100.1:443"]
)
def test_tcp_to_an_outside_address_is_rejected(enclave, target):
    """Control: DOCKER-USER rejects anything forwarded off an enclave bridge (and the network is internal)."""
    result = probe(enclave.alice_container(), f"out(tcp{target!r})")
    assert result == REJECTED, f"{target}: {result}"


def test_udp_dns_to_the_hosts_own_resolver_fails(enclave):
    """Control: ENCLAVE-INPUT (a resolver on the host) or DOCKER-USER (off the host): a query never arrives.

    A resolver on the host is attacked at its own address. An off-host resolver is never sent a packet
    (tests target only loopback, the host and documentation addresses): a query to 192.0.2.53 takes the
    same forwarded path off the bridge and stands in for it."""
    servers = host_nameservers()
    assert servers, "the host has no IPv4 nameserver in /etc/resolv.conf to attack"
    local = set(host_addresses(enclave_bridges=True))
    targets = [s for s in servers if s in local or ipaddress.ip_address(s).is_loopback]
    if len(targets) < len(servers):
        targets.append("192.0.2.53")
    results = probe(enclave.alice_container(), f"out({{s: dns(s, 'example.com') for s in {targets!r}}})")
    for server, result in results.items():
        if ipaddress.ip_address(server).is_loopback:  # the container's loopback is its own, not the host's
            assert result.get("error") in ("ECONNREFUSED", "ETIMEDOUT"), (server, result)
        else:
            assert result == {"error": REJECTED}, (server, result)


def test_dns_lookup_of_an_outside_name_fails_while_internal_names_resolve(enclave):
    """Control: the embedded resolver answers the project network's names and can forward nothing."""
    container = enclave.alice_container()
    result = probe(
        container, f"out([resolve('example.com'), resolve('www.debian.org'), resolve({container.name!r})])"
    )
    outside, outside2, own = result
    assert isinstance(outside, str) and outside.startswith("EAI"), f"example.com resolved: {outside}"
    assert isinstance(outside2, str) and outside2.startswith("EAI"), f"www.debian.org resolved: {outside2}"
    subnet = ipaddress.ip_network(enclave.hub.network(CARDIO).attrs["IPAM"]["Config"][0]["Subnet"])
    assert isinstance(own, list) and ipaddress.ip_address(own[0]) in subnet, (
        f"the resolver itself is broken: {own}"
    )


def test_embedded_resolver_cannot_forward_outside_names_cve_2024_29018(enclave):
    """Control: the container's DNS is its own gateway (HostConfig.Dns), where the firewall rejects port 53,
    so Docker 20.10's embedded resolver has nowhere to forward to (CVE-2024-29018 forwarded via the host)."""
    container = enclave.alice_container()
    gateway = enclave.gateway(CARDIO)
    assert container.attrs["HostConfig"]["Dns"] == [gateway]
    result = probe(container, f"out([dns({gateway!r}, 'example.com'), dns('127.0.0.11', 'example.com')])")
    direct, embedded = result
    assert direct == {"error": REJECTED}, direct
    assert embedded.get("answers", 0) == 0, f"the embedded resolver answered an outside name: {embedded}"


def test_ipv6_is_off_and_reaches_nothing(enclave):
    """Control: IPv6 disabled in the container (sysctl), and ip6tables drops enclave bridges anyway."""
    targets = [(a, 80) for a in host_addresses("inet6")] + [("2001:db8::1", 80), ("::1", 22)]
    result = probe(
        enclave.alice_container(),
        f"""
out([open('/proc/sys/net/ipv6/conf/all/disable_ipv6').read().strip(), [[h, p, tcp(h, p)] for h, p in {targets!r}]])
""",
    )
    disabled, attempts = result
    assert disabled == "1"
    assert all(r in ("EADDRNOTAVAIL", "ENETUNREACH", "EAFNOSUPPORT") for _, _, r in attempts), attempts


def test_cloud_metadata_address_is_unreachable(enclave):
    """Control: DOCKER-USER rejects forwarding off the bridge."""
    assert probe(enclave.alice_container(), "out(tcp('169.254.169.254', 80))") == REJECTED


def test_icmp_echo_out_gets_no_reply(enclave):
    """Control: nothing is forwarded off the bridge (ICMP datagram sockets are allowed by the kernel)."""
    result = probe(
        enclave.alice_container(),
        r"""
res = {}
for host in ("192.0.2.1", "198.51.100.1"):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP); s.settimeout(2)
    try:
        s.sendto(struct.pack("!BBHHH", 8, 0, 0, 1, 1) + b"enclave", (host, 0)); s.recvfrom(128); res[host] = "REPLY"
    except OSError as e: res[host] = _err(e)
out(res)
""",
    )
    assert all(r in ("ETIMEDOUT", REJECTED) for r in result.values()), result


# ==== 2. the host =====================================================================================


def test_only_the_hub_and_export_ports_answer_on_any_host_address(enclave):
    """Every port the host listens on, on every host address (the gateway, other networks' gateways, eth0):
    only the hub API connects; the export API port is admitted (nothing may listen). Control: ENCLAVE-INPUT."""
    hub = enclave.hub
    addresses = sorted(set(host_addresses()) | {enclave.gateway(CARDIO), enclave.gateway(ONCOLOGY)})
    ports = sorted(
        host_listening_ports()
        | {22, 2375, 2376, hub.api_port, hub.public_port, hub.hub_port, hub.exports_port}
    )
    targets = [(a, p) for a in addresses for p in ports]
    results = probe(
        enclave.alice_container(), f"out([[h, p, tcp(h, p)] for h, p in {targets!r}])", timeout=600
    )
    wrong = []
    for host, port, result in results:
        expected = (
            {"CONNECTED"}
            if port == hub.hub_port
            else ({"CONNECTED", "ECONNREFUSED"} if port == hub.exports_port else {REJECTED})
        )
        if result not in expected:
            wrong.append(f"{host}:{port} -> {result}")
    assert not wrong, "host ports reachable from a notebook:\n" + "\n".join(wrong)
    assert any(r == "CONNECTED" for _, p, r in results if p == hub.hub_port), "the hub must stay reachable"


def test_host_udp_ports_are_closed(enclave):
    """Control: ENCLAVE-INPUT rejects every protocol but tcp to the two admitted ports."""
    addresses = [enclave.gateway(CARDIO), *host_lan_addresses()]
    ports = sorted(host_listening_ports("u") | {53, 67, 123, 161, 514, enclave.hub.hub_port})
    results = probe(
        enclave.alice_container(),
        f"out([[h, p, udp(h, p)] for h in {addresses!r} for p in {ports!r}])",
        timeout=300,
    )
    assert all(r == REJECTED for _, _, r in results), [x for x in results if x[2] != REJECTED]


def test_the_docker_engine_is_out_of_reach(enclave):
    """Control: no socket is mounted (profile), and the engine's TCP ports are behind ENCLAVE-INPUT."""
    container = enclave.alice_container()
    gateway = enclave.gateway(CARDIO)
    result = probe(
        container,
        f"""
socks = ["/var/run/docker.sock", "/run/docker.sock", "/run/containerd/containerd.sock", "/var/run/docker/docker.sock"]
out([[p for p in socks if os.path.exists(p)], "docker.sock" in open("/proc/self/mountinfo").read(),
     os.environ.get("DOCKER_HOST"), tcp({gateway!r}, 2375), tcp({gateway!r}, 2376)])
""",
    )
    assert result == [[], False, None, REJECTED, REJECTED]
    assert not [m for m in container.attrs["Mounts"] if "docker" in m["Source"]]


def test_the_proxy_api_is_unreachable(enclave):
    """The proxy's routing API would let a notebook hijack other users' routes. It listens on the host's
    loopback only, and ENCLAVE-INPUT rejects its port on every host address."""
    port = enclave.hub.api_port
    addresses = [enclave.gateway(CARDIO), *host_addresses()]
    result = probe(
        enclave.alice_container(), f"out([tcp('127.0.0.1', {port}), [tcp(a, {port}) for a in {addresses!r}]])"
    )
    own_loopback, host = result
    assert own_loopback == "ECONNREFUSED", "the container's loopback is its own"
    assert set(host) == {REJECTED}, host


# ==== 3. another project ==============================================================================


def test_another_projects_container_is_unreachable(enclave):
    """Control: each project has its own internal network; DOCKER-USER rejects forwarding between them."""
    bob = enclave.bob_container()
    bob_ip = bob.attrs["NetworkSettings"]["Networks"][enclave.hub.network(ONCOLOGY).name]["IPAddress"]
    result = probe(
        enclave.alice_container(), f"out([tcp({bob_ip!r}, 8888), tcp({bob_ip!r}, 22), udp({bob_ip!r}, 53)])"
    )
    assert result == [REJECTED, REJECTED, REJECTED], result
    code, _ = docker_exec(bob, "true")  # bob's server is there and listening: it is the path that is closed
    assert code == 0


def test_another_projects_container_name_does_not_resolve(enclave):
    """Control: the embedded resolver only knows the container's own network."""
    name = enclave.bob_container().name
    result = probe(enclave.alice_container(), f"out(resolve({name!r}))")
    assert isinstance(result, str) and result.startswith("EAI"), result


def test_another_projects_data_is_not_in_the_container(enclave):
    """Control: the spawner mounts only the project's own published datasets, read-only, under /data."""
    result = probe(
        enclave.alice_container(),
        """
mounts = [line.split() for line in open("/proc/self/mountinfo")]
out([sorted(os.listdir("/data")), [[m[3], m[4]] for m in mounts if m[4].startswith("/data")], open("/proc/self/mountinfo").read()])
""",
    )
    listing, data_mounts, mountinfo = result
    assert listing == ["synthetic-omop"]
    assert [m[1] for m in data_mounts] == ["/data/synthetic-omop"]
    # Its own read-only squashfs, mounted whole (hub/dataset_images.py), built from demo-cardio's version.
    assert data_mounts[0][0] == "/", data_mounts
    assert " - squashfs " in next(line for line in mountinfo.splitlines() if " /data/synthetic-omop " in line)
    sources = [
        m["Source"] for m in enclave.alice_container().attrs["Mounts"] if m["Destination"].startswith("/data")
    ]
    assert len(sources) == 1 and f"/data-images/{CARDIO}/synthetic-omop/" in sources[0], sources
    assert ONCOLOGY not in mountinfo, "nothing of demo-oncology is mounted"


def test_another_projects_server_refuses_alice(enclave):
    """Browser side. Control: JupyterHub scopes (alice has access:servers!user=alice only)."""
    response = enclave.as_alice().get(
        f"{enclave.server_url('bob', ONCOLOGY)}/api/contents", allow_redirects=False
    )
    assert response.status_code in (302, 403), response.status_code
    assert '"content"' not in response.text
    minted = enclave.alice.api(
        "POST", "/users/alice/tokens", json={"scopes": [f"access:servers!server=bob/{ONCOLOGY}"]}
    )
    assert minted.status_code == 400 and "Not assigning requested scopes" in minted.json()["message"]
    started = enclave.alice.api("POST", f"/users/bob/servers/{ONCOLOGY}")
    assert started.status_code in (403, 404), started.text


# ==== 4. the filesystem and privilege ================================================================


def test_data_is_read_only(enclave):
    """Control: the dataset bind mount is read-only (and /data itself is on the read-only root). Published
    files are also owned by root, so rewriting one is refused by permissions first (EACCES); creating a
    file shows the mount itself refusing (EROFS)."""
    result = probe(
        enclave.alice_container(),
        """
opts = {l.split()[4]: l.split()[5] for l in open("/proc/self/mountinfo")}
out([try_open("/data/synthetic-omop/person.parquet", "r+b"), try_open("/data/synthetic-omop/new.csv", "w"),
     try_open("/data/new.csv", "w"), try_open("/data/synthetic-omop/person.parquet", "rb"),
     opts["/data/synthetic-omop"].split(",")[0]])
""",
    )
    rewrite, create, create_top, read, mount_option = result
    assert rewrite in ("EACCES", "EROFS") and create == create_top == "EROFS", result
    assert read == "OK" and mount_option == "ro", result


def test_mount_and_remount_are_refused(enclave):
    """Control: no CAP_SYS_ADMIN (cap_drop ALL) and no-new-privileges; the kernel says EPERM."""
    result = probe(
        enclave.alice_container(),
        """
MS_REMOUNT, MS_BIND = 32, 4096
out([syscall_errno(libc.mount, b"none", b"/tmp", b"tmpfs", 0, None),
     syscall_errno(libc.mount, None, b"/", None, MS_REMOUNT, None),
     syscall_errno(libc.mount, None, b"/data/synthetic-omop", None, MS_REMOUNT, None),
     syscall_errno(libc.mount, b"/workspace", b"/tmp", None, MS_BIND, None)])
""",
    )
    assert result == ["EPERM"] * 4, result
    code, output = docker_exec(enclave.alice_container(), "mount -o remount,rw /")
    assert code != 0 and "must be superuser" in output


def test_root_filesystem_is_read_only(enclave):
    """Control: read_only root. Nothing can be created anywhere on it -- not even in the image's
    world-writable /var/tmp, where permissions would allow it -- and the image's code and Jupyter system
    config cannot be changed (root-owned, so permissions refuse first, EACCES; the mount backs them up)."""
    result = probe(
        enclave.alice_container(),
        """
created = [try_open(p, "w") for p in ("/var/tmp/evil", "/usr/local/bin/evil", "/opt/notebook/bin/evil", "/evil",
                                      "/etc/jupyter/jupyter_server_config.d.py")]
changed = [try_open(p) for p in ("/etc/passwd", "/etc/jupyter/jupyter_server_config.py",
                                 "/opt/notebook/lib/python3.11/site-packages/enclave_lockdown.py")]
out([created, changed, os.stat("/var/tmp").st_mode & 0o777, open("/proc/self/mountinfo").readline().split()[5]])
""",
    )
    created, changed, var_tmp_mode, root_options = result
    assert created == ["EROFS"] * 5, created
    assert set(changed) <= {"EACCES", "EROFS"}, changed
    assert var_tmp_mode == 0o777 and root_options.split(",")[0] == "ro"


@pytest.mark.parametrize("where", ["/tmp", "/home/jovyan", "/dev/shm"])
def test_nothing_runs_from_scratch_space(enclave, where):
    """Control: the writable tmpfs mounts are noexec (a copied or downloaded binary cannot be run)."""
    container = enclave.alice_container()
    code, output = docker_exec(
        container, f"cp /bin/true {where}/true && chmod +x {where}/true && {where}/true"
    )
    assert code == 126 and "Permission denied" in output, (code, output)
    assert "noexec" in docker_exec(container, f"findmnt -no OPTIONS -T {where}")[1]


def test_no_setuid_route_to_root(enclave):
    """Control: the image has no setuid/setgid files, no-new-privileges is set, the bounding set is empty;
    a setuid bit the researcher sets on their own file runs as themselves."""
    container = enclave.alice_container()
    code, found = docker_exec(container, "find / -xdev -perm /6000 -type f 2>/dev/null", timeout=120)
    assert found.strip() == "", f"setuid/setgid files in the image: {found}"
    code, output = docker_exec(
        container,
        "cp /usr/bin/id /workspace/.suid-id && chmod u+s /workspace/.suid-id "
        "&& /workspace/.suid-id -u; rm -f /workspace/.suid-id; "
        "grep -E '^(NoNewPrivs|CapBnd|CapEff)' /proc/self/status",
    )
    # The quota'd workspace is noexec (the copy does not run at all); without it, it would run as 1000.
    first = output.split("\n")[0]
    assert first == "1000" or first.endswith("/workspace/.suid-id: Permission denied"), output
    assert (
        "NoNewPrivs:\t1" in output
        and "CapBnd:\t0000000000000000" in output
        and "CapEff:\t0000000000000000" in output
    )
    code, output = docker_exec(container, "setpriv --reuid=0 --regid=0 --clear-groups id")
    assert code != 0 and "Operation not permitted" in output, output


def test_user_namespaces_are_refused(enclave):
    """Control: the engine's default seccomp profile refuses unshare(CLONE_NEWUSER) without CAP_SYS_ADMIN."""
    container = enclave.alice_container()
    code, output = docker_exec(container, "unshare -r id")
    assert code != 0 and "Operation not permitted" in output, output
    CLONE_NEWUSER, CLONE_NEWNS, CLONE_NEWNET = 0x10000000, 0x00020000, 0x40000000
    result = probe(
        container,
        f"out([syscall_errno(libc.unshare, f) for f in ({CLONE_NEWUSER}, {CLONE_NEWNS}, {CLONE_NEWNET})])",
    )
    assert result == ["EPERM"] * 3, result


def test_chown_and_setgid_are_refused(enclave):
    """Control: no CAP_CHOWN/CAP_FOWNER; the researcher can only give away nothing and gain nothing."""
    container = enclave.alice_container()
    result = probe(
        container,
        """
path = "/workspace/.chown-probe"; open(path, "w").close()
res = []
for args in ((path, 0, 0), (path, -1, 0), (path, 0, -1)):
    try: os.chown(*args); res.append("OK")
    except OSError as e: res.append(_err(e))
os.chmod(path, 0o2755); res.append(oct(os.stat(path).st_mode & 0o7777))  # her own file and group: allowed, grants nothing
os.unlink(path)
try: os.chmod("/opt/notebook/bin/python3", 0o4755); res.append("OK")
except OSError as e: res.append(_err(e))
out(res)
""",
    )
    assert result[:3] == ["EPERM"] * 3, result
    assert result[3] == "0o2755", result
    assert result[4] in ("EPERM", "EROFS"), result


def test_other_processes_reveal_nothing_new(enclave):
    """What /proc protects. Every process in the container runs as the same uid 1000, so /proc is not
    mounted hidepid and alice can read her own server's /proc/1/environ -- which holds nothing she does not
    already have (docker exec gets the same environment). What matters is that no process of the host,
    the hub or another container is visible at all (own PID namespace)."""
    container = enclave.alice_container()
    result = probe(
        container,
        """
pids = [int(p) for p in os.listdir("/proc") if p.isdigit()]
procs = {}
for p in pids:
    try:
        st = dict(l.split(":\\t", 1) for l in open(f"/proc/{p}/status").read().splitlines() if ":\\t" in l)
        procs[p] = [st["Uid"].split()[0], open(f"/proc/{p}/cmdline", "rb").read().replace(b"\\0", b" ").decode()]
    except OSError: pass
env1 = dict(l.split("=", 1) for l in open("/proc/1/environ", "rb").read().decode().split("\\0") if "=" in l)
out([procs, sorted(set(env1.items()) - set(os.environ.items()))])
""",
    )
    procs, only_in_pid1 = result
    assert {uid for uid, _ in procs.values()} == {"1000"}, procs
    commands = " ".join(cmd for _, cmd in procs.values())
    assert (
        "dockerd" not in commands
        and "jupyterhub -f" not in commands
        and "configurable-http-proxy" not in commands
    )
    assert len(procs) < 20, f"more processes than one notebook server has: {procs}"
    assert only_in_pid1 == [], f"PID 1 holds environment the researcher lacks: {[k for k, _ in only_in_pid1]}"


def test_raw_and_packet_sockets_are_refused(enclave):
    """Control: no CAP_NET_RAW, so no forged packets, no sniffing, no ARP games on the project network."""
    result = probe(
        enclave.alice_container(),
        """
res = []
for fam, typ, proto in ((socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP), (socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP),
                        (socket.AF_PACKET, socket.SOCK_RAW, 0x0300)):
    try: socket.socket(fam, typ, proto).close(); res.append("OK")
    except OSError as e: res.append(_err(e))
out(res)
""",
    )
    assert result == ["EPERM"] * 3, result


# ==== 5. resources ====================================================================================

FORK_BOMB = r"""
import json, os, time
os.setsid()
kids, err = 0, None
for _ in range(4000):                      # bounded: well above any pids limit we set
    try:
        pid = os.fork()
    except OSError as e:
        err = e.errno; break
    if pid == 0:
        time.sleep(20); os._exit(0)        # children hold their pid for 20 s, then go
    kids += 1
json.dump({"forked": kids, "errno": err}, open("/tmp/forkbomb.json", "w"))
while True:
    try: os.wait()
    except ChildProcessError: break
"""


def test_fork_bomb_is_stopped_by_the_pids_limit_in_its_own_container(enclave):
    """Control: the pids cgroup (pids_limit). While alice's container is full, bob's notebook still forks
    (RLIMIT_NPROC counts per uid across the host, so an nproc equal to pids_limit used to stop every
    other project too), the hub answers, and bob's server answers through the proxy."""
    alice, bob = enclave.alice_container(), enclave.bob_container()
    limit = alice.attrs["HostConfig"]["PidsLimit"]
    events, current = cgroup_file(alice, "pids", "pids.events"), cgroup_file(alice, "pids", "pids.current")
    before = counter(events, "max")
    docker_exec(alice, "rm -f /tmp/forkbomb.json")
    alice.exec_run(
        ["timeout", "90", "/opt/notebook/bin/python", "-c", FORK_BOMB], user="1000:1000", detach=True
    )
    try:
        wait_for(
            lambda: int(current.read_text()) >= limit - 1 and counter(events, "max") > before,
            45,
            "alice's container to reach its pids limit",
        )
        code, output = py_exec(
            bob, "import os\npid = os.fork()\nif pid == 0: os._exit(0)\nos.waitpid(pid, 0); print('forked')"
        )
        assert code == 0 and "forked" in output, f"bob's notebook cannot fork while alice's is full: {output}"
        assert requests.get(f"{enclave.hub.url}/hub/health", timeout=10).status_code == 200
        status = requests.get(
            f"{enclave.server_url('bob', ONCOLOGY)}/api/status",
            timeout=20,
            headers={"Authorization": f"token {enclave.bob_token}"},
        )
        assert status.status_code == 200
    finally:
        wait_for(lambda: int(current.read_text()) < limit // 2, 60, "the fork bomb's children to exit")
    result = json.loads(docker_exec(alice, "cat /tmp/forkbomb.json")[1])
    assert result["errno"] == 11 and result["forked"] < limit, result  # EAGAIN, at the limit
    assert (
        requests.get(
            f"{enclave.server_url()}/api/status",
            timeout=20,
            headers={"Authorization": f"token {enclave.alice_token}"},
        ).status_code
        == 200
    )


MEMORY_BOMB = r"""
chunks = []
for _ in range(64):                        # bounded: 4 GiB, twice the project's 2 GiB limit
    chunks.append(b"\x01" * (64 << 20))    # written, so the pages are really used
print("NOT KILLED", flush=True)
"""


def test_memory_bomb_is_oom_killed_in_its_own_container_only(enclave):
    """Control: mem_limit == memswap_limit. The kernel kills the bomb inside alice's cgroup; her notebook
    server, bob's, and the hub go on answering."""
    alice, bob = enclave.alice_container(), enclave.bob_container()
    assert alice.attrs["HostConfig"]["Memory"] == alice.attrs["HostConfig"]["MemorySwap"] == 2 << 30
    oom_file = lambda c: cgroup_file(c, "memory", "memory.oom_control")
    alice_before, bob_before = counter(oom_file(alice), "oom_kill"), counter(oom_file(bob), "oom_kill")
    code, output = docker_exec(alice, ["/opt/notebook/bin/python", "-c", MEMORY_BOMB], timeout=120)
    assert code == 137 and "NOT KILLED" not in output, (code, output)  # 128 + SIGKILL
    assert counter(oom_file(alice), "oom_kill") > alice_before, "not the OOM killer"
    assert counter(oom_file(bob), "oom_kill") == bob_before
    alice.reload()
    assert alice.status == "running", "the container itself survives: only the bomb was killed"
    for user, project, token in (
        ("alice", CARDIO, enclave.alice_token),
        ("bob", ONCOLOGY, enclave.bob_token),
    ):
        response = requests.get(
            f"{enclave.server_url(user, project)}/api/status",
            timeout=20,
            headers={"Authorization": f"token {token}"},
        )
        assert response.status_code == 200, f"{user}'s server: {response.status_code}"
    assert requests.get(f"{enclave.hub.url}/hub/health", timeout=10).status_code == 200


# ==== 6. Jupyter, from the browser side ================================================================

NOTEBOOK = {
    "cells": [{"cell_type": "markdown", "metadata": {}, "source": "results"}],
    "metadata": {},
    "nbformat": 4,
    "nbformat_minor": 5,
}


@pytest.fixture(scope="module")
def workspace_files(enclave):
    session = enclave.as_alice()
    for path, model in (
        ("attack.ipynb", {"type": "notebook", "content": NOTEBOOK}),
        ("results.csv", {"type": "file", "format": "text", "content": "age,n\n40,12\n"}),
    ):
        response = session.put(f"{enclave.server_url()}/api/contents/{path}", json=model, timeout=30)
        assert response.status_code in (200, 201), response.text
    return session


def assert_refused_side_door(enclave, response, route: str):
    """A 403 from enclave_lockdown (its message, not some other refusal) and its line in the server log."""
    assert response.status_code == 403, f"{route}: {response.status_code}"
    assert REFUSAL in response.text, f"{route}: not refused by the enclave lockdown: {response.text[:300]}"
    logged = re.compile(rf"enclave: refused side-door request \w+ /user/alice/{CARDIO}/{re.escape(route)}")

    def log_line():
        return logged.search(enclave.alice_container().logs(tail=300).decode(errors="replace"))

    wait_for(log_line, 10, f"the refusal of {route} in the notebook server's log")


@pytest.mark.parametrize("route", ["files/results.csv?download=1", "files/attack.ipynb", "view/results.csv"])
def test_file_download_routes_are_refused(enclave, workspace_files, route):
    """Control: enclave_lockdown answers /files and /view with a logged 403."""
    response = workspace_files.get(f"{enclave.server_url()}/{route}", timeout=30)
    assert_refused_side_door(enclave, response, route.split("?")[0])
    assert "age,n" not in response.text


def test_nbconvert_download_is_refused(enclave, workspace_files):
    """Control: enclave_lockdown answers /nbconvert with a logged 403 (no 'Download as' / 'Export')."""
    response = workspace_files.get(
        f"{enclave.server_url()}/nbconvert/html/attack.ipynb?download=true", timeout=30
    )
    assert_refused_side_door(enclave, response, "nbconvert/html/attack.ipynb")


def test_nbconvert_post_is_refused(enclave, workspace_files):
    """Control: the POST form of nbconvert (convert a notebook sent in the body) is closed too."""
    response = workspace_files.post(f"{enclave.server_url()}/nbconvert/html", json=NOTEBOOK, timeout=30)
    assert_refused_side_door(enclave, response, "nbconvert/html")
    response = workspace_files.get(f"{enclave.server_url()}/api/nbconvert", timeout=30)
    assert response.status_code == 403 and REFUSAL in response.text


@pytest.mark.parametrize("fmt", ["text", "base64", "notebook"])
def test_oversized_upload_is_refused(enclave, workspace_files, fmt):
    """Control: CappedContentsManager counts every format, including a notebook (which can carry any file
    as base64 in its outputs). A small upload of the same kind goes through: the route is open."""
    url = f"{enclave.server_url()}/api/contents"
    big, small = b"y" * (UPLOAD_CAP + 10), b"y" * 1024

    def model(data: bytes) -> dict:
        if fmt == "notebook":
            return {
                "type": "notebook",
                "content": {
                    **NOTEBOOK,
                    "cells": [{"cell_type": "markdown", "metadata": {}, "source": data.decode()}],
                },
            }
        content = base64.b64encode(data).decode() if fmt == "base64" else data.decode()
        return {"type": "file", "format": fmt, "content": content}

    name = f"upload-{fmt}.{'ipynb' if fmt == 'notebook' else 'bin'}"
    assert workspace_files.put(f"{url}/small-{name}", json=model(small), timeout=60).status_code == 201
    response = workspace_files.put(f"{url}/{name}", json=model(big), timeout=120)
    assert response.status_code == 413, (response.status_code, response.text[:300])
    assert (
        f"Upload refused: {name} is larger than the enclave's cap of {UPLOAD_CAP} bytes"
        in response.json()["message"]
    )
    assert workspace_files.get(f"{url}/{name}", params={"content": 0}, timeout=30).status_code == 404
    assert f"enclave: refused upload of {name}" in enclave.alice_container().logs(tail=100).decode(
        errors="replace"
    )


def test_grossly_oversized_request_is_cut_off(enclave, workspace_files):
    """A body far beyond any legitimate upload never reaches the server (tornado's max_body_size)."""
    url = f"{enclave.server_url()}/api/contents/huge.txt"
    response = workspace_files.put(
        url, json={"type": "file", "format": "text", "content": "z" * (3 * UPLOAD_CAP)}, timeout=120
    )
    assert response.status_code >= 400
    assert workspace_files.get(url, params={"content": 0}, timeout=30).status_code == 404


def test_chunked_upload_is_capped_in_total(enclave, workspace_files):
    """Control: each chunk counts the bytes already written, so many small chunks cannot pass the cap."""
    url = f"{enclave.server_url()}/api/contents/chunked.bin"
    chunk = base64.b64encode(b"c" * (4 * 1024 * 1024)).decode()
    statuses = [
        workspace_files.put(
            url, json={"type": "file", "format": "base64", "content": chunk, "chunk": n}, timeout=60
        ).status_code
        for n in (1, 2, 3, -1)
    ]
    assert statuses == [201, 200, 413, 413], statuses
    size = workspace_files.get(url, params={"content": 0}, timeout=30).json()["size"]
    assert size <= UPLOAD_CAP


def test_terminals_follow_the_project_policy(enclave):
    """demo-cardio has terminals: false, so the route is refused (403 from the lockdown, on the trail);
    demo-oncology's copy allowed them when bob's server started (see the enclave fixture). Control:
    ENCLAVE_TERMINALS from the spawner, enclave_lockdown for the refusal."""
    response = enclave.as_alice().post(f"{enclave.server_url()}/api/terminals", timeout=30)
    assert response.status_code == 403 and REFUSAL in response.text, response.status_code
    assert "ENCLAVE_TERMINALS=0" in enclave.alice_container().attrs["Config"]["Env"]
    bob = requests.post(
        f"{enclave.server_url('bob', ONCOLOGY)}/api/terminals",
        timeout=30,
        headers={"Authorization": f"token {enclave.bob_token}"},
    )
    assert bob.status_code == 200, "a project that allows terminals gets them"
    requests.delete(
        f"{enclave.server_url('bob', ONCOLOGY)}/api/terminals/{bob.json()['name']}",
        timeout=30,
        headers={"Authorization": f"token {enclave.bob_token}"},
    )


def test_contents_api_stays_inside_the_workspace(enclave, workspace_files):
    """Control: Jupyter's root is /workspace; /data is outside it and '..' is refused."""
    for path in ("../data/synthetic-omop/person.parquet", "%2e%2e/data", "..%2fdata/synthetic-omop", "/data"):
        response = workspace_files.get(f"{enclave.server_url()}/api/contents/{path}", timeout=30)
        assert response.status_code in (400, 404), (path, response.status_code)


# ==== 7. the hub API with the server's own token =====================================================

HUB_API_ATTACKS = [
    ("GET", "/users", None, 403, "requires any of [list:users]"),
    ("POST", f"/users/bob/servers/{ONCOLOGY}", {}, 403, "requires any of [start:servers]"),
    ("POST", "/users/alice/servers/demo-oncology", {}, 403, "requires any of [start:servers]"),
    ("POST", "/users/alice/tokens", {"scopes": ["admin-ui"]}, 403, "no permissions to generate tokens"),
    ("GET", "/users/bob", None, 404, "No access to resources"),
    ("GET", "/info", None, 403, "requires any of [read:hub]"),
    ("GET", "/proxy", None, 403, "requires any of [proxy]"),
    ("GET", "/groups", None, 403, "requires any of [list:groups]"),
    ("DELETE", f"/users/bob/servers/{ONCOLOGY}", None, 403, "requires any of [delete:servers]"),
]


def test_server_token_is_minimal_from_inside_the_container(enclave):
    """The token every process in the container can read (JUPYTERHUB_API_TOKEN) calls the hub API at
    JUPYTERHUB_API_URL. Controls: the hub gate (hub/gate.py) refuses every route but the server's own,
    and behind it server_token_scopes and the hub's scope checks (asserted from the host below)."""
    container = enclave.alice_container()
    results = probe(
        container,
        f"""
import ssl, urllib.request, urllib.error
api, token = os.environ["JUPYTERHUB_API_URL"], os.environ["JUPYTERHUB_API_TOKEN"]
# TLS inside: the gate asks for the server's certificate, which code in the container can read too.
ctx = ssl.create_default_context(cafile=os.environ["JUPYTERHUB_SSL_CLIENT_CA"])
ctx.load_cert_chain(os.environ["JUPYTERHUB_SSL_CERTFILE"], os.environ["JUPYTERHUB_SSL_KEYFILE"])
urllib.request.install_opener(urllib.request.build_opener(urllib.request.HTTPSHandler(context=ctx)))
res = []
for method, path, body, _, _ in {HUB_API_ATTACKS!r}:
    req = urllib.request.Request(api + path, method=method, headers={{"Authorization": "token " + token}},
                                 data=json.dumps(body).encode() if body is not None else None)
    try:
        with urllib.request.urlopen(req, timeout=15) as r: res.append([r.status, r.read().decode()[:300]])
    except urllib.error.HTTPError as e: res.append([e.code, e.read().decode()[:300]])
with urllib.request.urlopen(urllib.request.Request(api + "/user", headers={{"Authorization": "token " + token}}), timeout=15) as r:
    res.append([r.status, json.load(r)])
out(res)
""",
    )
    *attacks, (whoami_status, whoami) = results
    for (method, path, _, status, message), (got, body) in zip(HUB_API_ATTACKS, attacks):
        assert got == 403 and "Only the notebook server's own hub calls pass here" in body, (
            f"{method} {path}: {got} {body}"
        )
    assert whoami_status == 200 and whoami["name"] == "alice", "the token works: it is the scopes that refuse"
    # Every scope is alice's own (filtered to her, or her own server), except the export client's request
    # scope, which the export service itself limits to her own projects.
    broad = [
        s
        for s in whoami["scopes"]
        if "!user=alice" not in s and f"!server=alice/{CARDIO}" not in s and s != "custom:exports:request"
    ]
    assert not broad, f"the server token holds scopes beyond alice's own: {broad}"
    assert enclave.bob.server(ONCOLOGY)["ready"] is True, "bob's server is untouched"


def test_server_token_is_minimal_from_the_host_via_the_public_url(enclave):
    env = dict(e.split("=", 1) for e in enclave.alice_container().attrs["Config"]["Env"])
    headers = {"Authorization": f"token {env['JUPYTERHUB_API_TOKEN']}"}
    for method, path, body, status, message in HUB_API_ATTACKS:
        response = requests.request(
            method, f"{enclave.hub.url}/hub/api{path}", json=body, headers=headers, timeout=30
        )
        assert response.status_code == status and message in response.text, (
            f"{method} {path}: {response.status_code}"
        )
    # ... nor another project's notebook (it does open alice's own: access:servers!server, by design)
    response = requests.get(
        f"{enclave.server_url('bob', ONCOLOGY)}/api/contents",
        headers=headers,
        timeout=30,
        allow_redirects=False,
    )
    assert response.status_code == 403, response.status_code


def test_an_administrator_cannot_open_a_researchers_notebook(enclave):
    """Separation of duties. Control: the enclave-admin role has no access:servers (hub/auth.py)."""
    adam = HubClient(enclave.hub, "adam")
    assert adam.login().status_code == 302
    assert adam.api("GET", "/users").status_code == 200, "adam is an administrator (positive control)"
    minted = adam.api(
        "POST", "/users/adam/tokens", json={"scopes": [f"access:servers!server=alice/{CARDIO}"]}
    )
    assert minted.status_code == 400 and "Not assigning requested scopes" in minted.json()["message"]
    token = adam.api("POST", "/users/adam/tokens", json={"expires_in": 600}).json()["token"]
    response = requests.get(
        f"{enclave.server_url()}/api/contents",
        headers={"Authorization": f"token {token}"},
        timeout=30,
        allow_redirects=False,
    )
    assert response.status_code == 403
    assert adam.api("POST", f"/users/alice/servers/{ONCOLOGY}").status_code in (403, 404)
    assert adam.api("POST", "/users/alice/tokens", json={}).status_code == 403


def test_a_checker_gets_no_servers_at_all(enclave):
    carol = HubClient(enclave.hub, "carol")
    assert carol.login().status_code == 302
    assert carol.start(CARDIO).status_code == 403
    assert carol.api("GET", "/users").status_code == 403
    token = carol.api("POST", "/users/carol/tokens", json={"expires_in": 600}).json()["token"]
    response = requests.get(
        f"{enclave.server_url()}/api/contents",
        headers={"Authorization": f"token {token}"},
        timeout=30,
        allow_redirects=False,
    )
    assert response.status_code == 403


# ==== 8. user options ===============================================================================


@pytest.mark.parametrize(
    "options",
    [
        {"image": "debian:bookworm"},
        {
            "image": "enclave/notebook:0.1",
            "volumes": {"/var/lib/enclave/data/demo-oncology/synthetic-omop/1": "/data/x"},
        },
        {"binds": ["/:/host:rw"]},
        {"mounts": [{"Type": "bind", "Source": "/etc", "Target": "/host-etc"}]},
        {"network": "bridge", "network_mode": "host"},
        {"extra_host_config": {"privileged": True}},
    ],
    ids=["another-image", "another-projects-data", "host-root", "host-etc", "host-network", "privileged"],
)
def test_user_options_cannot_change_the_container(enclave, options):
    """Control: EnclaveSpawner.authorize() refuses any option; everything comes from the policy."""
    erin = HubClient(enclave.hub, "erin")
    assert erin.login().status_code == 302
    response = erin.start(CARDIO, json=options)
    assert response.status_code == 400, response.text
    message = response.json()["message"]
    assert (
        message.startswith("Spawn options are not accepted (") and "come from the project policy" in message
    )
    assert all(key in message for key in options)
    assert not [c for c in enclave.hub.containers() if c.name.endswith(f"erin--{CARDIO}")]


# ==== 6 (end). user config, across a restart -------------------------------------------------------
# Last in the module: it restarts alice's server.

USER_CONFIG_PY = """print("ENCLAVE-TEST-USER-CONFIG-LOADED", flush=True)
c = get_config()
c.ServerApp.jpserver_extensions = {"enclave_lockdown": False}
c.ContentsManager.files_handler_class = "jupyter_server.files.handlers.FilesHandler"
c.ServerApp.contents_manager_class = "jupyter_server.services.contents.largefilemanager.LargeFileManager"
c.ServerApp.terminals_enabled = True
"""
USER_CONFIG_JSON = json.dumps(
    {"ServerApp": {"jpserver_extensions": {"enclave_lockdown": False}, "terminals_enabled": True}}
)
LAB_CONFIG_JSON = json.dumps(
    {
        "disabledExtensions": {
            "@jupyterlab/docmanager-extension:download": False,
            "@jupyterlab/filebrowser-extension:download": False,
        }
    }
)
USER_CONFIG_DIRS = [
    "/home/jovyan/.jupyter",
    "/home/jovyan/.local/etc/jupyter",
    "/workspace/.jupyter",
    "/workspace",
]


def test_user_config_cannot_reopen_downloads_even_after_a_restart(enclave, workspace_files):
    """A config dropped where Jupyter would look for user config, re-enabling /files, terminals and Lab's
    download commands. Controls: JUPYTER_CONFIG_DIR=/etc/jupyter and JUPYTERHUB_DISABLE_USER_CONFIG=1 keep
    every user-writable directory off the config path; HOME is a tmpfs that a restart empties; the system
    config lives on the read-only root."""
    container = enclave.alice_container()
    try:
        assert (
            probe(
                container,
                f"""
for d in {USER_CONFIG_DIRS!r}:
    os.makedirs(d + "/labconfig", exist_ok=True)
    for name in ("jupyter_server_config.py", "jupyter_config.py"):
        open(os.path.join(d, name), "w").write({USER_CONFIG_PY!r})
    open(d + "/jupyter_server_config.json", "w").write({USER_CONFIG_JSON!r})
    open(d + "/labconfig/page_config.json", "w").write({LAB_CONFIG_JSON!r})
out("planted")
""",
            )
            == "planted"
        )
        paths = probe(
            container,
            """
from jupyter_server.serverapp import ServerApp
from jupyterhub.singleuser import make_singleuser_app
from jupyter_core.paths import jupyter_config_path
out([make_singleuser_app(ServerApp)().config_file_paths, jupyter_config_path()])
""",
        )
        for searched in paths:
            assert not [p for p in searched if p.startswith(("/home", "/workspace"))], searched

        enclave.alice.stop(CARDIO)
        enclave.alice.spawn(CARDIO)
        container = enclave.alice_container()
        logs = container.logs().decode(errors="replace")
        assert "ENCLAVE-TEST-USER-CONFIG-LOADED" not in logs, "a user config file was loaded"
        assert "enclave_lockdown: download routes closed" in logs
        assert docker_exec(container, "test -f /workspace/.jupyter/jupyter_server_config.py")[0] == 0, (
            "the planted config survived the restart (the workspace persists), so the attack was real"
        )
        assert docker_exec(container, "test -e /home/jovyan/.jupyter")[0] != 0, "HOME is emptied by a restart"

        response = workspace_files.get(f"{enclave.server_url()}/files/results.csv?download=1", timeout=30)
        assert_refused_side_door(enclave, response, "files/results.csv")
        assert workspace_files.post(f"{enclave.server_url()}/api/terminals", timeout=30).status_code == 403
        lab = workspace_files.get(f"{enclave.server_url()}/lab", timeout=30)
        page = json.loads(
            re.search(
                r'<script id="jupyter-config-data" type="application/json">(.*?)</script>',
                lab.text,
                re.DOTALL,
            ).group(1)
        )
        disabled = page["disabledExtensions"]
        assert "@jupyterlab/docmanager-extension:download" in disabled
        assert "@jupyterlab/filebrowser-extension:download" in disabled
    finally:
        docker_exec(
            enclave.alice_container(),
            "rm -rf /workspace/.jupyter /workspace/jupyter_server_config.* "
            "/workspace/jupyter_config.py /workspace/labconfig",
        )


def test_after_all_attacks_the_hub_and_both_servers_still_answer(enclave):
    assert requests.get(f"{enclave.hub.url}/hub/health", timeout=10).status_code == 200
    for user, project, token in (
        ("alice", CARDIO, enclave.alice_token),
        ("bob", ONCOLOGY, enclave.bob_token),
    ):
        assert (
            requests.get(
                f"{enclave.server_url(user, project)}/api/status",
                timeout=20,
                headers={"Authorization": f"token {token}"},
            ).status_code
            == 200
        )
