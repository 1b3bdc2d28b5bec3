"""The internal CA (hub/internal_tls.py) and the doctor's TLS check, without a hub."""

from __future__ import annotations

import os
import socket
import ssl
import threading
from pathlib import Path

import pytest
from cryptography import x509

from hub import internal_tls
from hub.doctor import ContainerView, Observed, check_internal_tls
from hub.gate import listen_context
from hub.policy import Site, build_site


@pytest.fixture(scope="module")
def state(tmp_path_factory) -> Path:
    state = tmp_path_factory.mktemp("state")
    internal_tls.ensure_authorities(state)
    return state


def test_authorities_are_made_once_and_kept_private(state):
    before = internal_tls.record_files(state, "hub-ca")["cert"].read_bytes()
    internal_tls.ensure_authorities(state)  # idempotent: JupyterHub reuses the same records
    assert internal_tls.record_files(state, "hub-ca")["cert"].read_bytes() == before
    assert internal_tls.problems(state) == []
    assert oct(internal_tls.tls_dir(state).stat().st_mode & 0o777) == "0o700"
    for key in internal_tls.tls_dir(state).rglob("*.key"):
        assert key.stat().st_mode & 0o077 == 0, key


def test_problems_name_an_open_key_and_a_missing_authority(state, tmp_path):
    key = internal_tls.record_files(state, "services-ca")["key"]
    key.chmod(0o644)
    try:
        assert f"{key} is mode 0644, not 0600" in internal_tls.problems(state)
    finally:
        key.chmod(0o600)
    missing = internal_tls.problems(tmp_path)
    assert len(missing) == 1 and f"{tmp_path / 'internal-tls'} is missing" in missing[0]


def test_a_server_certificate_is_for_its_address_and_signed_by_the_notebooks_ca(state):
    internal_tls.prepare_server_dir(state, "et-alice--demo")
    folder = internal_tls.sign_server(state, "et-alice--demo", "172.30.0.7", (os.getuid(), os.getgid()))
    cert = x509.load_pem_x509_certificate((folder / "server.crt").read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "172.30.0.7" in [str(ip) for ip in names.get_values_for_type(x509.IPAddress)]
    ca = x509.load_pem_x509_certificate(internal_tls.record_files(state, "notebooks-ca")["cert"].read_bytes())
    cert.verify_directly_issued_by(ca)
    assert (folder / "server.key").stat().st_mode & 0o777 == 0o600
    internal_tls.remove_server_dir(state, "et-alice--demo")
    assert not folder.exists()


def test_proxy_args_name_existing_files(state):
    args = internal_tls.proxy_args(state)
    files = [a for a in args if not a.startswith("--")]
    assert len(files) == 6 and all(Path(f).is_file() for f in files)
    assert "--api-ssl-reject-unauthorized" in args and "--client-ssl-reject-unauthorized" in args


def _handshake(context: ssl.SSLContext, server: ssl.SSLContext) -> str:
    """One TLS exchange through a socket pair: what the client reads, or the error it gets."""
    left, right = socket.socketpair()
    result = {}

    def serve():
        try:
            with server.wrap_socket(right, server_side=True) as tls:
                tls.sendall(b"ok")
        except (ssl.SSLError, OSError) as exc:
            result["server"] = type(exc).__name__

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        with context.wrap_socket(left, server_hostname=internal_tls.GATE_HOSTNAME) as tls:
            return tls.recv(2).decode()
    except (ssl.SSLError, OSError) as exc:
        return type(exc).__name__
    finally:
        thread.join(10)


def test_the_gate_asks_for_a_notebook_certificate(state, monkeypatch):
    for name, value in internal_tls.gate_environment(state).items():
        monkeypatch.setenv(name, value)
    server = listen_context()
    client = ssl.create_default_context(cafile=str(internal_tls.trust_bundle(state, "notebooks-ca")))
    assert _handshake(client, server) != "ok", "no client certificate: refused"
    internal_tls.prepare_server_dir(state, "c1")
    folder = internal_tls.sign_server(state, "c1", "172.30.0.8", (os.getuid(), os.getgid()))
    client.load_cert_chain(folder / "server.crt", folder / "server.key")
    assert _handshake(client, server) == "ok", "a notebook server's certificate passes"
    other = ssl.create_default_context(cafile=str(internal_tls.trust_bundle(state, "notebooks-ca")))
    proxy = internal_tls.record_files(state, "proxy-client")
    other.load_cert_chain(proxy["cert"], proxy["key"])
    assert _handshake(other, server) != "ok", "a certificate of another authority is refused"


def _site() -> Site:
    ldap = {
        "server_address": "127.0.0.1",
        "ca_file": None,
        "user_dn_template": "uid={username},ou=people,dc=x",
        "groups_base": "ou=groups,dc=x",
    }
    return build_site(
        {
            "image": "enclave/notebook:0.1",
            "hub_port": 8081,
            "exports_port": 8082,
            "proxy_api_port": 8001,
            "ldap": ldap,
        },
        Path("/state"),
    )


def test_doctor_fails_on_plain_http_and_on_a_server_without_tls():
    site = _site()
    ok = check_internal_tls(Observed(site=site, hub_speaks="tls"))
    assert ok.ok, ok.reason
    plain = check_internal_tls(Observed(site=site, hub_speaks="http"))
    assert not plain.ok and "internal_ssl is off" in plain.reason
    server = ContainerView("et-bob--p", {}, (), "", "", attrs={"Config": {"Env": ["HOME=/home/jovyan"]}})
    bare = check_internal_tls(Observed(site=site, hub_speaks="tls", containers=(server,)))
    assert not bare.ok and "et-bob--p serves plain HTTP" in bare.reason
    missing = check_internal_tls(
        Observed(site=site, hub_speaks=None, internal_tls_problems=("x is missing",))
    )
    assert not missing.ok and "x is missing" in missing.reason
