"""TLS inside the enclave: the certipy-made authorities of JupyterHub's ``internal_ssl``, kept in the state
directory, and the certificates of the parts JupyterHub does not make itself.

JupyterHub (``internal_ssl = True``) signs the hub's, the proxy's and the managed services' certificates
from five authorities (hub-ca, notebooks-ca, proxy-api-ca, proxy-client-ca, services-ca). We create the
same authorities and the proxy's pairs *before* the hub starts, with the same record names, because the
proxy runs on its own (deploy/, tests/harness.py) and must be started with its certificates before the hub
is up; JupyterHub then finds the records and reuses them.

What we sign ourselves:
- ``enclave-gate``: the gate's server certificate (hub/gate.py), signed by hub-ca, for the name
  ``enclave-hub`` that every notebook container resolves to its network's gateway. A notebook trusts
  hub-ca, so it accepts the gate; the gate never holds the hub's own key.
- each notebook server's pair, signed by notebooks-ca for the container's *address* on its project
  network (the proxy and the hub verify the name they connect to, and they connect to the address). The
  address exists only once the container runs, so the container waits for its certificate
  (:data:`WAIT_FOR_CERTIFICATE`) and the spawner signs it right after the engine says the address.

Layout: ``<state>/internal-tls/`` (mode 0700, root) holds the certipy store ``ca/`` and the per-server
directories ``servers/<container>/`` that are bound read-only into the containers. Private keys are 0600.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import os
import shutil
import stat
import sys
import tempfile
from pathlib import Path

AUTHORITIES = ("hub-ca", "notebooks-ca", "proxy-api-ca", "proxy-client-ca", "services-ca")
# Who trusts whom: the same graph as JupyterHub 6's init_internal_ssl (it rewrites these bundles at start).
TRUST = {
    "hub-ca": list(AUTHORITIES),
    "proxy-api-ca": ["hub-ca", "services-ca", "notebooks-ca"],
    "proxy-client-ca": ["hub-ca", "notebooks-ca"],
    "notebooks-ca": ["hub-ca", "proxy-client-ca"],
    "services-ca": ["hub-ca", "proxy-api-ca"],
}
LOCAL_NAMES = ["IP:127.0.0.1", "IP:0:0:0:0:0:0:0:1", "DNS:localhost"]
GATE_HOSTNAME = "enclave-hub"  # what containers call the gate; /etc/hosts in the container maps it
GATE_RECORD = "enclave-gate"
CONTAINER_TLS_DIR = "/etc/enclave-tls"  # where a notebook container finds its key, certificate and CA
SERVER_FILES = {"keyfile": "server.key", "certfile": "server.crt", "cafile": "ca.crt"}
SERVER_CERT_DAYS = 90  # a server runs for hours: a short life bounds a copied key's use
# The container's command runs behind this: it waits for its certificate, which is signed for its address
# after it started (see above), and gives up plainly rather than serve without TLS.
WAIT_FOR_CERTIFICATE = (
    f'for i in $(seq 600); do [ -s {CONTAINER_TLS_DIR}/ca.crt ] && exec "$@"; sleep 0.1; done; '
    f'echo "enclave: no TLS certificate appeared in {CONTAINER_TLS_DIR} after 60 s" >&2; exit 78'
)


class InternalTLSError(RuntimeError):
    """The internal certificates could not be made or read; the message names the file."""


def tls_dir(state_dir: Path) -> Path:
    return Path(state_dir) / "internal-tls"


def ca_dir(state_dir: Path) -> Path:
    """JupyterHub's ``internal_certs_location``: certipy's store of authorities and signed pairs."""
    return tls_dir(state_dir) / "ca"


def servers_dir(state_dir: Path) -> Path:
    return tls_dir(state_dir) / "servers"


def record_files(state_dir: Path, name: str) -> dict[str, Path]:
    folder = ca_dir(state_dir) / name
    return {"key": folder / f"{name}.key", "cert": folder / f"{name}.crt"}


def trust_bundle(state_dir: Path, component: str) -> Path:
    return ca_dir(state_dir) / f"{component}_trust.crt"


def ensure_authorities(state_dir: Path) -> Path:
    """Create (once) the authorities, the proxy's pairs, the gate's pair and the trust bundles; return the
    store. Idempotent, and safe to run before every hub start."""
    from certipy import Certipy, CertNotFoundError

    top = tls_dir(state_dir)
    top.mkdir(mode=0o700, parents=True, exist_ok=True)
    top.chmod(0o700)  # certipy opens its own folders 0755; this one keeps everybody but root out
    certipy = Certipy(store_dir=str(ca_dir(state_dir)))
    certipy.trust_from_graph(TRUST)  # creates the missing authorities, then the bundles

    def pair(name: str, ca: str, alt_names: list[str]) -> None:
        try:
            certipy.store.get_record(name)
        except CertNotFoundError:
            certipy.create_signed_pair(name, ca, alt_names=alt_names)

    pair("proxy-api", "proxy-api-ca", LOCAL_NAMES)
    pair("proxy-client", "proxy-client-ca", LOCAL_NAMES)
    pair(GATE_RECORD, "hub-ca", [f"DNS:{GATE_HOSTNAME}", *LOCAL_NAMES])
    servers_dir(state_dir).mkdir(mode=0o700, exist_ok=True)
    harden(state_dir)
    return ca_dir(state_dir)


def harden(state_dir: Path) -> None:
    """Private keys 0600 wherever certipy or JupyterHub left them."""
    for key in ca_dir(state_dir).rglob("*.key"):
        if not key.is_symlink():
            key.chmod(0o600)


def proxy_args(state_dir: Path) -> list[str]:
    """configurable-http-proxy's TLS options: what JupyterHub passes when it starts the proxy itself.
    The API asks for a client certificate and refuses without one; so do the servers it proxies to."""
    api, client = record_files(state_dir, "proxy-api"), record_files(state_dir, "proxy-client")
    return [
        "--api-ssl-key",
        str(api["key"]),
        "--api-ssl-cert",
        str(api["cert"]),
        "--api-ssl-ca",
        str(trust_bundle(state_dir, "proxy-api-ca")),
        "--api-ssl-request-cert",
        "--api-ssl-reject-unauthorized",
        "--client-ssl-key",
        str(client["key"]),
        "--client-ssl-cert",
        str(client["cert"]),
        "--client-ssl-ca",
        str(trust_bundle(state_dir, "proxy-client-ca")),
        "--client-ssl-request-cert",
        "--client-ssl-reject-unauthorized",
    ]


def gate_environment(state_dir: Path) -> dict[str, str]:
    """The gate's listening certificate, and whose clients it accepts: notebook servers' certificates only."""
    files = record_files(state_dir, GATE_RECORD)
    return {
        "ENCLAVE_GATE_TLS_CERT": str(files["cert"]),
        "ENCLAVE_GATE_TLS_KEY": str(files["key"]),
        "ENCLAVE_GATE_TLS_CLIENT_CA": str(record_files(state_dir, "notebooks-ca")["cert"]),
    }


# ---- per-server certificates -------------------------------------------------------------------------


def server_dir(state_dir: Path, container: str) -> Path:
    return servers_dir(state_dir) / container


def container_paths() -> dict[str, str]:
    """Where the container finds its files (``JUPYTERHUB_SSL_*``)."""
    return {kind: f"{CONTAINER_TLS_DIR}/{name}" for kind, name in SERVER_FILES.items()}


def prepare_server_dir(state_dir: Path, container: str) -> Path:
    """An empty directory for the container's certificate: a previous server's files must not be served."""
    folder = server_dir(state_dir, container)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(mode=0o755, parents=True)
    return folder


def remove_server_dir(state_dir: Path, container: str) -> None:
    shutil.rmtree(server_dir(state_dir, container), ignore_errors=True)


def sign_server(state_dir: Path, container: str, address: str, owner: tuple[int, int]) -> Path:
    """Sign a key pair for the notebook server at ``address`` with notebooks-ca and put it, with the trust
    bundle a notebook uses, in its directory; the key is owned by the notebook uid, mode 0600. ``ca.crt``
    is written last: the container starts its server when it appears."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    ca = record_files(state_dir, "notebooks-ca")
    try:
        ca_cert = x509.load_pem_x509_certificate(ca["cert"].read_bytes())
        ca_key = serialization.load_pem_private_key(ca["key"].read_bytes(), password=None)
        bundle = trust_bundle(state_dir, "notebooks-ca").read_bytes()
    except OSError as exc:
        raise InternalTLSError(
            f"cannot read the notebooks authority ({exc.filename}): {exc.strerror}"
        ) from exc
    key = ec.generate_private_key(ec.SECP256R1())  # fast to make at every spawn, unlike RSA
    now = dt.datetime.now(dt.UTC)
    names = [
        x509.IPAddress(ipaddress.ip_address(address)),
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
    ]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, container)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=SERVER_CERT_DAYS))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=True,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    folder = server_dir(state_dir, container)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    _write(folder / SERVER_FILES["keyfile"], key_pem, 0o600, owner)
    _write(folder / SERVER_FILES["certfile"], cert.public_bytes(serialization.Encoding.PEM), 0o644, owner)
    _write(folder / SERVER_FILES["cafile"], bundle, 0o644, owner)
    return folder


def _write(path: Path, data: bytes, mode: int, owner: tuple[int, int]) -> None:
    """Atomically: the container must never read half a key."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)
        os.fchown(fd, *owner)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


# ---- checks (for enclave doctor) -----------------------------------------------------------------------


def problems(state_dir: Path) -> list[str]:
    """What is wrong with the internal CA on disk: missing authorities, open folders, readable keys."""
    top = tls_dir(state_dir)
    if not top.is_dir():
        return [f"{top} is missing: the hub has not made its internal CA (internal_ssl)"]
    found = []
    mode = stat.S_IMODE(top.lstat().st_mode)
    if top.is_symlink() or mode != 0o700:
        found.append(f"{top} is mode {mode:04o}, not a 0700 directory")
    for name in AUTHORITIES:
        for kind, path in record_files(state_dir, name).items():
            if not path.is_file():
                found.append(f"the {name} {kind} {path} is missing")
    for key in sorted(top.rglob("*.key")):
        key_mode = stat.S_IMODE(key.lstat().st_mode)
        if key.is_symlink() or key_mode & 0o077:
            found.append(f"{key} is mode {key_mode:04o}, not 0600")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hub.internal_tls", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "command",
        choices=["ensure", "proxy-args"],
        help="ensure: make the internal CA and pairs (idempotent); proxy-args: print the "
        "proxy's TLS options, one per line",
    )
    parser.add_argument("state_dir", type=Path)
    args = parser.parse_args(argv)
    ensure_authorities(args.state_dir)
    if args.command == "proxy-args":
        print("\n".join(proxy_args(args.state_dir)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
