"""TLS inside: on a project's bridge, the hub's traffic with a notebook server is TLS, never HTTP; the gate and
the server refuse plain HTTP and callers without a certificate; ``enclave doctor`` checks it."""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import threading
import time
from contextlib import contextmanager

import pytest
import requests

from hub import internal_tls
from hub.spawner import bridge_name
from tests.harness import py_exec

pytestmark = pytest.mark.integration

PROJECT = "demo-cardio"
SERVER_PORT = 8888  # DockerSpawner's port inside the container


# ---- capture ---------------------------------------------------------------------------------------


@contextmanager
def capture(interface: str):
    """Debian's tcpdump on ``interface``; yields a list that holds the TCP segments with payload afterwards.

    Its output is read as it comes (a full pipe would stall tcpdump, and what the kernel still holds when it
    is stopped is lost), and --immediate-mode hands it each packet at once rather than in blocks."""
    proc = subprocess.Popen(
        ["tcpdump", "-i", interface, "--immediate-mode", "-U", "-n", "-w", "-", "tcp"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    chunks: list[bytes] = []
    reader = threading.Thread(
        target=lambda: chunks.extend(iter(lambda: proc.stdout.read(65536), b"")), daemon=True
    )
    reader.start()
    segments: list[tuple[str, int, str, int, bytes]] = []
    try:
        line = proc.stderr.readline().decode()  # "listening on <if>, ..." once it captures
        assert "listening on" in line, f"tcpdump did not start on {interface}: {line}"
        yield segments
    finally:
        time.sleep(1.5)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
        reader.join(timeout=30)
    segments.extend(tcp_payloads(b"".join(chunks)))


def tcp_payloads(pcap: bytes):
    """(source, sport, destination, dport, payload) of every IPv4 TCP segment with a payload in a pcap."""
    assert pcap[:4] == b"\xd4\xc3\xb2\xa1", "a little-endian microsecond pcap from tcpdump"
    offset = 24
    while offset + 16 <= len(pcap):
        length = struct.unpack_from("<I", pcap, offset + 8)[0]
        frame = pcap[offset + 16 : offset + 16 + length]
        offset += 16 + length
        if len(frame) < 34 or frame[12:14] != b"\x08\x00" or frame[23] != 6:
            continue
        ip = frame[14:]
        ihl = (ip[0] & 0x0F) * 4
        total = struct.unpack_from(">H", ip, 2)[0]
        tcp = ip[ihl:total]
        sport, dport = struct.unpack_from(">HH", tcp, 0)
        payload = tcp[(tcp[12] >> 4) * 4 :]
        if payload:
            yield ".".join(map(str, ip[12:16])), sport, ".".join(map(str, ip[16:20])), dport, bytes(payload)


def is_tls_record(payload: bytes, content_type: int) -> bool:
    """A TLS record header: content type, version 3.x (handshake 22, application data 23)."""
    return len(payload) >= 5 and payload[0] == content_type and payload[1] == 3


@pytest.fixture
def alice(hub, client):
    alice = client("alice")
    if alice.server(PROJECT):
        alice.stop(PROJECT)
    yield alice
    if alice.server(PROJECT):
        alice.stop(PROJECT)


def test_hub_proxy_and_server_speak_only_tls_on_the_project_bridge(hub, alice):
    alice.spawn(PROJECT)  # the project's network and bridge exist from here on
    alice.stop(PROJECT)
    token = alice.api(
        "POST", "/users/alice/tokens", json={"scopes": [f"access:servers!server=alice/{PROJECT}"]}
    ).json()["token"]
    with capture(bridge_name(f"{hub.prefix}{PROJECT}")) as segments:
        alice.spawn(PROJECT)  # the hub waits for the server, the server asks the hub (gate) who it is
        for _ in range(3):
            response = requests.get(
                f"{hub.url}/user/alice/{PROJECT}/api/status",
                headers={"Authorization": f"token {token}"},
                timeout=10,
            )
            assert response.status_code == 200, response.text
    to_server = [s for s in segments if s[3] == SERVER_PORT]
    from_server = [s for s in segments if s[1] == SERVER_PORT]
    to_gate = [s for s in segments if s[3] == hub.hub_port]
    print(
        f"captured {len(segments)} segments with payload: {len(to_server)} to the server, "
        f"{len(from_server)} from it, {len(to_gate)} to the gate"
    )
    for name, flow in (
        ("proxy/hub -> server", to_server),
        ("server -> proxy/hub", from_server),
        ("server -> gate", to_gate),
    ):
        assert flow, f"no {name} traffic was captured"
        assert any(is_tls_record(p[4], 22) for p in flow), f"{name}: no TLS handshake"
        assert any(is_tls_record(p[4], 23) for p in flow), f"{name}: no TLS application data"
    for *_, payload in segments:
        for plain in (b"HTTP/1.1", b"GET /", b"POST /", token.encode()):
            assert plain not in payload, f"plaintext {plain[:12]!r} on the bridge: {payload[:80]!r}"


PLAIN_AND_NO_CERT = """
import os, socket, ssl
host, port = "enclave-hub", int(os.environ["JUPYTERHUB_API_URL"].split(":")[2].split("/")[0])
request = b"GET /hub/api/ HTTP/1.1\\r\\nHost: enclave-hub\\r\\n\\r\\n"
def answer(sock):
    try:
        sock.sendall(request)
        return sock.recv(64)
    except (ssl.SSLError, OSError) as exc:
        return type(exc).__name__.encode()
plain = answer(socket.create_connection((host, port), 5))
context = ssl.create_default_context(cafile=os.environ["JUPYTERHUB_SSL_CLIENT_CA"])
try:
    no_cert = answer(context.wrap_socket(socket.create_connection((host, port), 5), server_hostname=host))
except (ssl.SSLError, OSError) as exc:
    no_cert = type(exc).__name__.encode()
context.load_cert_chain(os.environ["JUPYTERHUB_SSL_CERTFILE"], os.environ["JUPYTERHUB_SSL_KEYFILE"])
with_cert = answer(context.wrap_socket(socket.create_connection((host, port), 5), server_hostname=host))
print(repr(plain), repr(no_cert), repr(with_cert))
"""


def test_plain_http_and_callers_without_a_certificate_are_refused(hub, alice):
    """From the container: the gate answers neither plain HTTP nor TLS without a notebook certificate. From
    the host: the server and the hub answer no plain HTTP either."""
    alice.spawn(PROJECT)
    container = hub.container("alice", PROJECT)
    code, out = py_exec(container, PLAIN_AND_NO_CERT)
    assert code == 0, out
    plain, no_cert, with_cert = out.strip().splitlines()[-1].split(" ", 2)
    assert "HTTP/" not in plain and "HTTP/" not in no_cert, out
    assert "HTTP/1.1 200" in with_cert, f"the server's own certificate passes: {out}"
    container.reload()
    address = container.attrs["NetworkSettings"]["Networks"][f"{hub.prefix}{PROJECT}"]["IPAddress"]
    for where in (
        f"http://{address}:{SERVER_PORT}/user/alice/{PROJECT}/api/status",
        f"http://127.0.0.1:{hub.hub_internal_port}/hub/api/",
    ):
        with pytest.raises(requests.ConnectionError):
            requests.get(where, timeout=5)
    with pytest.raises(requests.ConnectionError):  # TLS, but no client certificate: refused in the handshake
        requests.get(
            f"https://{address}:{SERVER_PORT}/user/alice/{PROJECT}/api/status", timeout=5, verify=False
        )


def doctor(hub) -> dict:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "hub.cli",
            "--state-dir",
            str(hub.state),
            "--policy-dir",
            str(hub.policy),
            "doctor",
            "--json",
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return {c["name"]: c for c in json.loads(proc.stdout)["checks"]}


def test_doctor_checks_tls_inside_and_the_ca_modes(hub, alice):
    alice.spawn(PROJECT)
    tls = doctor(hub)["tls"]
    assert tls["ok"] is True and "the hub answers TLS only" in tls["reason"], tls
    assert "1 running server with TLS" in tls["reason"], tls
    key = internal_tls.record_files(hub.state, "notebooks-ca")["key"]
    os.chmod(key, 0o644)  # an operator's slip: the authority's key readable by everyone
    try:
        tls = doctor(hub)["tls"]
        assert tls["ok"] is False and f"{key} is mode 0644, not 0600" in tls["reason"], tls
    finally:
        os.chmod(key, 0o600)
    top = internal_tls.tls_dir(hub.state)
    os.chmod(top, 0o755)
    try:
        tls = doctor(hub)["tls"]
        assert tls["ok"] is False and f"{top} is mode 0755" in tls["reason"], tls
    finally:
        os.chmod(top, 0o700)


def test_a_server_key_stays_with_its_server(hub, alice):
    """Each server's key is its own, owned by the notebook uid with mode 0600, and goes when it stops."""
    alice.spawn(PROJECT)
    folder = internal_tls.server_dir(hub.state, hub.container("alice", PROJECT).name)
    key = folder / "server.key"
    assert oct(key.stat().st_mode & 0o777) == "0o600" and key.stat().st_uid == 1000
    alice.stop(PROJECT)
    assert not folder.exists(), "the key of a stopped server is removed"
