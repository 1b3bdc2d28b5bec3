"""A local OpenLDAP (Debian's slapd) for the demo and the tests: own CA, StartTLS, seeded users.

    python deploy/localldap.py start --dir STATE/ldap --port 3890 --seed deploy/demo-directory.yaml
    python deploy/localldap.py stop  --dir STATE/ldap

It is a real directory: slapd with the mdb backend, simple binds refused without TLS, anonymous reads
refused, passwords stored salted (SSHA). A real site points policies/site.yaml at its own directory.

It also holds the enclave's read-only service account, cn=enclave-reader,ou=services,<base> (password in
``<dir>/reader.pw``, mode 600): the hub and the enforcer re-check users' groups with it
(hub/accreditation.py). The ACL lets it read people and groups and write nothing.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import hashlib
import ipaddress
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

SCHEMAS = ["core", "cosine", "inetorgperson", "nis"]


def ssha(password: str) -> str:
    salt = os.urandom(8)
    digest = hashlib.sha1(password.encode() + salt).digest()
    return "{SSHA}" + base64.b64encode(digest + salt).decode()


def _cert(subject: str, key, issuer_name, issuer_key, *, ca: bool, sans=()):
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(issuer_name or x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=825))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
    return builder.sign(issuer_key or key, hashes.SHA256())


def _write(path: Path, data: bytes, mode: int = 0o600) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def make_tls(directory: Path) -> None:
    """A private CA and a server certificate for 127.0.0.1/localhost (created once)."""
    if (directory / "server.pem").exists():
        return
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("enclave demo LDAP CA", ca_key, None, None, ca=True)
    key = ec.generate_private_key(ec.SECP256R1())
    sans = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    cert = _cert("localhost", key, ca.subject, ca_key, ca=False, sans=sans)
    pem = serialization.Encoding.PEM
    raw = serialization.PrivateFormat.PKCS8
    _write(directory / "ca.pem", ca.public_bytes(pem), 0o644)
    _write(directory / "server.pem", cert.public_bytes(pem), 0o644)
    _write(directory / "server.key", key.private_bytes(pem, raw, serialization.NoEncryption()), 0o600)


def slapd_conf(directory: Path, base_dn: str, root_pw: str) -> str:
    includes = "\n".join(f"include /etc/ldap/schema/{s}.schema" for s in SCHEMAS)
    return f"""{includes}
pidfile {directory}/slapd.pid
modulepath /usr/lib/ldap
moduleload back_mdb
TLSCACertificateFile {directory}/ca.pem
TLSCertificateFile {directory}/server.pem
TLSCertificateKeyFile {directory}/server.key
# Passwords never cross in clear: simple binds need TLS (StartTLS on this port).
security simple_bind=128
disallow bind_anon
require authc
database mdb
maxsize 104857600
suffix "{base_dn}"
rootdn "cn=admin,{base_dn}"
rootpw {root_pw}
directory {directory}/db
access to attrs=userPassword by self =w by anonymous auth by * none
access to * by dn.exact="{reader_dn(base_dn)}" read by users read by * none
"""


def reader_dn(base_dn: str) -> str:
    return f"cn=enclave-reader,ou=services,{base_dn}"


def ensure_reader(directory: Path, port: int, base_dn: str) -> None:
    """The read-only service account, created (or its password set again from reader.pw) as the rootdn,
    over StartTLS: idempotent, so an older demo directory gains it on the next start."""
    pw_file = directory / "reader.pw"
    if not pw_file.exists():
        _write(pw_file, base64.urlsafe_b64encode(os.urandom(24)).rstrip(b"=") + b"\n")
    password = pw_file.read_text().strip()
    ldif = (
        f"dn: ou=services,{base_dn}\nchangetype: add\nobjectClass: organizationalUnit\nou: services\n\n"
        f"dn: {reader_dn(base_dn)}\nchangetype: add\nobjectClass: organizationalRole\n"
        f"objectClass: simpleSecurityObject\ncn: enclave-reader\nuserPassword: {ssha(password)}\n"
        "description: read-only account of the research enclave hub (hub/accreditation.py)\n\n"
        f"dn: {reader_dn(base_dn)}\nchangetype: modify\nreplace: userPassword\n"
        f"userPassword: {ssha(password)}\n"
    )
    env = dict(os.environ, LDAPTLS_CACERT=str(directory / "ca.pem"))
    # -y: the root password from its file, never on a command line that `ps` shows
    result = subprocess.run(
        [
            "ldapmodify",
            "-c",
            "-x",
            "-ZZ",
            "-H",
            f"ldap://127.0.0.1:{port}/",
            "-D",
            f"cn=admin,{base_dn}",
            "-y",
            str(directory / "rootpw"),
        ],
        input=ldif,
        text=True,
        env=env,
        capture_output=True,
        check=False,
    )
    if "modifying entry" not in result.stdout or result.returncode not in (0, 68):  # 68: already exists
        raise SystemExit(f"cannot create the directory reader {reader_dn(base_dn)}: {result.stderr.strip()}")


def seed_ldif(seed: dict) -> str:
    base = seed["base_dn"]
    dc = base.split(",")[0].split("=")[1]
    entries = [
        f"dn: {base}\nobjectClass: top\nobjectClass: dcObject\nobjectClass: organization\no: enclave\ndc: {dc}",
        f"dn: ou=people,{base}\nobjectClass: organizationalUnit\nou: people",
        f"dn: ou=groups,{base}\nobjectClass: organizationalUnit\nou: groups",
    ]
    for n, user in enumerate(seed["users"]):
        uid = user["uid"]
        password = user.get("password", f"demo-{uid}")
        entries.append(
            f"dn: uid={uid},ou=people,{base}\nobjectClass: inetOrgPerson\nobjectClass: posixAccount\n"
            f"uid: {uid}\ncn: {user['cn']}\nsn: {user['cn'].split()[-1]}\nuidNumber: {20000 + n}\n"
            f"gidNumber: 20000\nhomeDirectory: /nonexistent\nuserPassword: {ssha(password)}"
        )
    for group in seed["groups"]:
        members = [u["uid"] for u in seed["users"] if group in u.get("groups", [])]
        # groupOfNames needs at least one member; the base DN stands in for "nobody".
        member_lines = "\n".join(f"member: uid={m},ou=people,{base}" for m in members) or f"member: {base}"
        entries.append(
            f"dn: cn={group},ou=groups,{base}\nobjectClass: groupOfNames\ncn: {group}\n{member_lines}"
        )
    return "\n\n".join(entries) + "\n"


def wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise SystemExit(f"slapd did not answer on 127.0.0.1:{port} within {timeout:.0f}s")


def running_pid(directory: Path) -> int | None:
    try:
        pid = int((directory / "slapd.pid").read_text().strip())
        os.kill(pid, 0)
        return pid
    except (OSError, ValueError):
        return None


def start(directory: Path, port: int, seed_path: Path) -> None:
    if shutil.which("slapd") is None and not Path("/usr/sbin/slapd").exists():
        raise SystemExit("slapd is not installed (apt-get install slapd ldap-utils)")
    directory.mkdir(parents=True, exist_ok=True)
    seed = yaml.safe_load(seed_path.read_text())
    if running_pid(directory):
        wait_port(port)
        ensure_reader(directory, port, seed["base_dn"])  # a directory started by an older version gains it
        return
    make_tls(directory)
    root_pw_file = directory / "rootpw"
    if not root_pw_file.exists():
        _write(root_pw_file, base64.b64encode(os.urandom(24)))
    conf = directory / "slapd.conf"
    _write(conf, slapd_conf(directory, seed["base_dn"], ssha(root_pw_file.read_text())).encode(), 0o640)
    db = directory / "db"
    if not (db / "data.mdb").exists():
        db.mkdir(exist_ok=True)
        ldif = directory / "seed.ldif"
        _write(ldif, seed_ldif(seed).encode())
        subprocess.run(["/usr/sbin/slapadd", "-q", "-f", str(conf), "-l", str(ldif)], check=True)
    owner = pwd.getpwnam("openldap") if _has_user("openldap") else None
    args = ["/usr/sbin/slapd", "-f", str(conf), "-h", f"ldap://127.0.0.1:{port}/"]
    if owner:
        for path in [directory, db, *db.iterdir(), *directory.iterdir()]:
            os.chown(path, owner.pw_uid, owner.pw_gid)
        args += ["-u", "openldap", "-g", "openldap"]
    subprocess.run(args, check=True)
    wait_port(port)
    ensure_reader(directory, port, seed["base_dn"])


def _has_user(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


def stop(directory: Path) -> None:
    pid = running_pid(directory)
    if pid is None:
        return
    os.kill(pid, signal.SIGTERM)
    for _ in range(100):
        try:
            os.kill(pid, 0)
        except OSError:
            return
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["start", "stop"])
    parser.add_argument("--dir", required=True, type=Path)
    parser.add_argument("--port", type=int, default=3890)
    parser.add_argument("--seed", type=Path, default=Path(__file__).with_name("demo-directory.yaml"))
    args = parser.parse_args(argv)
    if args.action == "start":
        start(args.dir.resolve(), args.port, args.seed)
    else:
        stop(args.dir.resolve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
