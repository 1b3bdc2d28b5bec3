"""Real components for integration tests: a slapd directory, a proxy and a hub, each on free loopback
ports with their own state directory, network prefix and firewall rules, all removed afterwards.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import docker
import requests
import yaml

from hub import internal_tls
from hub.dataset_images import release_dataset_filesystems

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable

IMAGE = os.environ.get("ENCLAVE_TEST_IMAGE", "enclave/notebook:0.1")
CHP = os.environ.get("ENCLAVE_CHP", "/opt/enclave/node/node_modules/.bin/configurable-http-proxy")
BASE_DN = "dc=enclave,dc=test"


# TLS inside: the gate is https://enclave-hub:<port> and asks for a notebook server's certificate. Code in the
# container has everything the server has (docker exec inherits JUPYTERHUB_SSL_*), so the attacks below use it.
HUB_TLS = """
import os, ssl, urllib.request
_ctx = ssl.create_default_context(cafile=os.environ["JUPYTERHUB_SSL_CLIENT_CA"])
_ctx.load_cert_chain(os.environ["JUPYTERHUB_SSL_CERTFILE"], os.environ["JUPYTERHUB_SSL_KEYFILE"])
urllib.request.install_opener(urllib.request.build_opener(urllib.request.HTTPSHandler(context=_ctx)))
"""


def release_workspaces(workspaces_dir: Path) -> None:
    """Unmount every quota'd workspace under ``workspaces_dir``, at a test hub's teardown."""
    if not workspaces_dir.exists():
        return
    for path in workspaces_dir.iterdir():
        if path.is_dir() and os.path.ismount(path):
            subprocess.run(["umount", str(path)], check=False)


def ssha(password: str) -> str:
    """A salted SHA-1 userPassword, as deploy/localldap.py stores them."""
    salt = os.urandom(8)
    return "{SSHA}" + base64.b64encode(hashlib.sha1(password.encode() + salt).digest() + salt).decode()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ProcessExited(RuntimeError):
    """A process we were waiting on has died: waiting longer cannot help."""


def wait_for(predicate, timeout: float, what: str, interval: float = 0.25):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            result = predicate()
            if result:
                return result
        except ProcessExited:
            raise
        except Exception as exc:  # noqa: BLE001 -- keep polling, report the last error
            last = exc
        time.sleep(interval)
    raise TimeoutError(
        f"timed out after {timeout:.0f}s waiting for {what}" + (f" (last error: {last!r})" if last else "")
    )


@dataclass
class Directory:
    """slapd from Debian on a loopback port, seeded with the demo users (deploy/demo-directory.yaml)."""

    root: Path
    port: int = field(default_factory=free_port)

    @property
    def dir(self) -> Path:
        return self.root / "ldap"

    def start(self) -> Directory:
        subprocess.run(
            [PYTHON, REPO / "deploy/localldap.py", "start", "--dir", self.dir, "--port", str(self.port)],
            check=True,
        )
        return self

    def stop(self) -> None:
        subprocess.run([PYTHON, REPO / "deploy/localldap.py", "stop", "--dir", self.dir], check=False)

    # ---- what a directory administrator does (as the rootdn, over StartTLS) ----------------------
    @property
    def reader_password_file(self) -> Path:
        return self.dir / "reader.pw"

    def modify(self, ldif: str) -> None:
        """ldapmodify as the directory's administrator; raises with ldapmodify's message on failure."""
        result = subprocess.run(
            [
                "ldapmodify",
                "-x",
                "-ZZ",
                "-H",
                f"ldap://127.0.0.1:{self.port}/",
                "-D",
                f"cn=admin,{BASE_DN}",
                "-y",
                str(self.dir / "rootpw"),
            ],
            input=ldif,
            text=True,
            capture_output=True,
            check=False,
            env=dict(os.environ, LDAPTLS_CACERT=str(self.dir / "ca.pem")),
        )
        if result.returncode != 0:
            raise RuntimeError(f"ldapmodify failed ({result.returncode}): {result.stderr.strip()}\n{ldif}")

    def user_dn(self, uid: str) -> str:
        return f"uid={uid},ou=people,{BASE_DN}"

    def add_user(self, uid: str, groups: list[str] = (), password: str | None = None) -> None:
        self.modify(
            f"dn: {self.user_dn(uid)}\nchangetype: add\nobjectClass: inetOrgPerson\nuid: {uid}\n"
            f"cn: Test {uid}\nsn: {uid}\nuserPassword: {ssha(password or f'demo-{uid}')}\n"
        )
        for group in groups:
            self.add_to_group(uid, group)

    def add_to_group(self, uid: str, group: str) -> None:
        self.modify(
            f"dn: cn={group},ou=groups,{BASE_DN}\nchangetype: modify\nadd: member\n"
            f"member: {self.user_dn(uid)}\n"
        )

    def remove_from_group(self, uid: str, group: str) -> None:
        self.modify(
            f"dn: cn={group},ou=groups,{BASE_DN}\nchangetype: modify\ndelete: member\n"
            f"member: {self.user_dn(uid)}\n"
        )

    def delete_user(self, uid: str, groups: list[str] = ()) -> None:
        for group in groups:
            self.remove_from_group(uid, group)
        self.modify(f"dn: {self.user_dn(uid)}\nchangetype: delete\n")

    def disable(self, uid: str) -> None:
        """Suspend the account as hub/accreditation.py defines it: shadowExpire in the past."""
        self.modify(
            f"dn: {self.user_dn(uid)}\nchangetype: modify\nadd: objectClass\nobjectClass: shadowAccount\n"
            f"-\nadd: shadowExpire\nshadowExpire: 1\n"
        )


@dataclass
class Hub:
    """One enclave installation: policy copy, state directory, proxy and hub processes."""

    root: Path
    directory: Directory
    name: str = field(default_factory=lambda: "et" + secrets.token_hex(3))
    env_extra: dict = field(default_factory=dict)
    hub_args: list = field(default_factory=list)
    """Extra command-line configuration, e.g. ``--EnclaveAuthenticator.login_lockout_seconds=5``."""

    def __post_init__(self):
        self.state = self.root / f"state-{self.name}"
        self.policy = self.root / f"policy-{self.name}"
        ports = set()
        while len(ports) < 5:  # five distinct free ports
            ports.add(free_port())
        self.public_port, self.hub_port, self.hub_internal_port, self.api_port, self.exports_port = ports
        self.prefix = f"{self.name}-"
        self.procs: dict[str, subprocess.Popen] = {}

    # ---- set-up ---------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.public_port}"

    def env(self) -> dict:
        env = dict(os.environ, ENCLAVE_STATE_DIR=str(self.state), ENCLAVE_POLICY_DIR=str(self.policy))
        env.update(self.env_extra)
        return env

    def prepare(self) -> Hub:
        shutil.copytree(REPO / "policies", self.policy, dirs_exist_ok=True)
        site = yaml.safe_load((self.policy / "site.yaml").read_text())
        self.site_image = IMAGE if ":" in IMAGE else f"{IMAGE}:latest"
        site.update(
            image=self.site_image,
            network_prefix=self.prefix,
            public_url=self.url,
            hub_port=self.hub_port,
            hub_internal_port=self.hub_internal_port,
            proxy_api_port=self.api_port,
            exports_port=self.exports_port,
        )
        site["ldap"].update(
            server_port=self.directory.port,
            ca_file=str(self.directory.dir / "ca.pem"),
            bind_password_file=str(self.directory.reader_password_file),
        )
        (self.policy / "site.yaml").write_text(yaml.safe_dump(site, sort_keys=False))
        (self.state / "hub").mkdir(parents=True)
        (self.state / "logs").mkdir()
        secrets_dir = self.state / "secrets"
        secrets_dir.mkdir(mode=0o700)
        for name in ("cookie_secret", "proxy_auth_token"):
            path = secrets_dir / name
            path.write_text(secrets.token_hex(32))
            path.chmod(0o600)
        publish_demo_data(self.state, self.policy)
        self.enrol_demo_users()
        return self

    # ---- the second factor ----------------------------------------------------------------------
    def enrol_demo_users(self) -> None:
        """What deploy/demo does: every demo user enrolled, secrets in state/demo-totp/<uid>."""
        seed = getattr(self.directory, "seed", None) or REPO / "deploy/demo-directory.yaml"  # bench: its own
        subprocess.run(
            [PYTHON, "-m", "hub.mfa", "enrol-demo", str(self.state), "--seed", str(seed)],
            check=True,
            cwd=REPO,
            env=self.env(),
            stdout=subprocess.DEVNULL,
        )

    def totp_secret(self, user: str) -> str:
        return (self.state / "demo-totp" / user).read_text().strip()

    def totp_code(self, user: str, secret: str | None = None) -> str:
        """A code the hub accepts now: for the current 30 s step, or the next one if the current step was
        used already (a code is good once). Waits if even the next step is used."""
        import pyotp

        from hub.mfa import STEP, MfaStore

        totp = pyotp.TOTP(secret or self.totp_secret(user))
        while True:
            last = MfaStore(self.state).last_step(user)
            now_step = int(time.time() // STEP)
            step = max(now_step, (last if last is not None else -1) + 1)
            if step <= now_step + 1:
                return totp.at(step * STEP)
            time.sleep((step - 1) * STEP - time.time() + 0.2)

    def start(self, timeout: float = 60) -> Hub:
        if "proxy" not in self.procs or self.procs["proxy"].poll() is not None:
            self.start_proxy()
        log = open(self.state / "logs" / "hub.log", "ab")  # noqa: SIM115 -- the hub process keeps it
        self.procs["hub"] = subprocess.Popen(
            [
                str(Path(PYTHON).parent / "jupyterhub"),
                "-f",
                str(REPO / "hub/jupyterhub_config.py"),
                *self.hub_args,
            ],
            cwd=self.state / "hub",
            env=self.env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_for(
            self._healthy, timeout, f"hub {self.name} to answer /hub/health (log: {self.state}/logs/hub.log)"
        )
        return self

    def start_proxy(self) -> None:
        token = (self.state / "secrets" / "proxy_auth_token").read_text()
        log = open(self.state / "logs" / "proxy.log", "ab")  # noqa: SIM115 -- the proxy process keeps it
        internal_tls.ensure_authorities(self.state)  # TLS inside: the proxy starts before the hub makes them
        self.procs["proxy"] = subprocess.Popen(
            [
                CHP,
                "--ip",
                "127.0.0.1",
                "--port",
                str(self.public_port),
                "--api-ip",
                "127.0.0.1",
                "--api-port",
                str(self.api_port),
                "--error-target",
                f"https://127.0.0.1:{self.hub_internal_port}/hub/error",
                "--log-level",
                "warn",
                *internal_tls.proxy_args(self.state),
            ],
            env=dict(os.environ, CONFIGPROXY_AUTH_TOKEN=token),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def _healthy(self) -> bool:
        if self.procs["hub"].poll() is not None:
            raise ProcessExited(f"hub exited with {self.procs['hub'].returncode}: {self.log_tail()}")
        return requests.get(f"{self.url}/hub/health", timeout=2).status_code == 200

    def log_tail(self, n: int = 40) -> str:
        path = self.state / "logs" / "hub.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:]) if path.exists() else ""

    def log_text(self) -> str:
        return (self.state / "logs" / "hub.log").read_text(errors="replace")

    def stop_hub(self, sig=signal.SIGTERM) -> None:
        proc = self.procs.pop("hub", None)
        if proc and proc.poll() is None:
            os.killpg(proc.pid, sig)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    def teardown(self) -> None:
        self.stop_hub()
        proxy = self.procs.pop("proxy", None)
        if proxy and proxy.poll() is None:
            os.killpg(proxy.pid, signal.SIGTERM)
            proxy.wait(10)
        leftovers = self.leftover_services()
        remove_docker_objects(self.prefix)
        release_workspaces(self.state / "workspaces")
        release_dataset_filesystems(self.state)
        assert not leftovers, f"hub {self.name} left processes running (killed now): {leftovers}"

    def leftover_services(self, wait: float = 10) -> list[str]:
        """Managed services of this hub still running after it stopped (issue 19): each is killed, and named."""
        from hub.services import find_services, stop_processes

        deadline = time.monotonic() + wait  # a service may still be finishing its SIGTERM
        while (
            found := find_services(str(self.state), self.hub_internal_port)
        ) and time.monotonic() < deadline:
            time.sleep(0.2)
        stop_processes([s.pid for s in found], grace=2)
        return [s.describe() for s in found]

    # ---- docker views -------------------------------------------------------------------------
    def container(self, user: str, project: str):
        return docker.from_env().containers.get(f"{self.prefix}{user}--{project}")

    def containers(self) -> list:
        return [c for c in docker.from_env().containers.list(all=True) if c.name.startswith(self.prefix)]

    def network(self, project: str):
        return docker.from_env().networks.get(f"{self.prefix}{project}")


def remove_docker_objects(prefix: str) -> None:
    """Remove containers and networks (and their firewall rules) that a test hub created."""
    from hub import firewall

    client = docker.from_env()
    for container in client.containers.list(all=True):
        if container.name.startswith(prefix):
            container.remove(force=True)
    for network in client.networks.list():
        if network.name.startswith(prefix):
            bridge = firewall.network_bridge(network.attrs)  # the real bridge, also for a br-<id> network
            network.remove()
            firewall.remove_bridge(bridge)


def publish_demo_data(state: Path, policy: Path) -> None:
    """The same demo data deploy/demo publishes, small, for every project in the policy copy."""
    subprocess.run(
        [str(REPO / "deploy/demo-data"), str(state), str(policy), "--persons", "300"],
        check=True,
        env=dict(os.environ, PATH=f"{Path(PYTHON).parent}:{os.environ['PATH']}"),
    )


class HubClient:
    """A browser-like session of one user against a hub: form login, then the REST API with xsrf."""

    def __init__(self, hub: Hub, user: str, password: str | None = None, otp: str | None = None):
        self.hub, self.user = hub, user
        self.password = password if password is not None else f"demo-{user}"
        self.otp = otp
        """A fixed one-time code; None: compute the right one from the user's demo secret."""
        self.session = requests.Session()

    def login(self) -> requests.Response:
        page = self.session.get(f"{self.hub.url}/hub/login", timeout=10)
        xsrf = re.search(r'name="_xsrf" value="([^"]+)"', page.text)
        otp = self.otp
        if otp is None:
            otp = self.hub.totp_code(self.user) if (self.hub.state / "demo-totp" / self.user).exists() else ""
        data = {"username": self.user, "password": self.password, "otp": otp}
        if xsrf:
            data["_xsrf"] = xsrf.group(1)
        return self.session.post(f"{self.hub.url}/hub/login", data=data, allow_redirects=False, timeout=30)

    def logged_in(self) -> bool:
        return self.login().status_code == 302

    def api(self, method: str, path: str, **kwargs) -> requests.Response:
        headers = kwargs.pop("headers", {})
        xsrf = self.session.cookies.get("_xsrf", path="/hub/")
        if xsrf:
            headers["X-XSRFToken"] = xsrf
        return self.session.request(
            method, f"{self.hub.url}/hub/api{path}", headers=headers, timeout=60, **kwargs
        )

    def start(self, project: str, **kwargs) -> requests.Response:
        return self.api("POST", f"/users/{self.user}/servers/{project}", **kwargs)

    def server(self, project: str) -> dict | None:
        model = self.api("GET", f"/users/{self.user}").json()
        return model.get("servers", {}).get(project)

    def wait_ready(self, project: str, timeout: float = 120) -> dict:
        def ready():
            server = self.server(project)
            if server is None:
                raise RuntimeError(f"{self.user}/{project} is not running (spawn failed?)")
            return server if server.get("ready") else None

        return wait_for(ready, timeout, f"{self.user}/{project} to be ready")

    def spawn(self, project: str, timeout: float = 120) -> dict:
        response = self.start(project)
        assert response.status_code in (201, 202), (
            f"spawn {self.user}/{project}: {response.status_code} {response.text}"
        )
        return self.wait_ready(project, timeout)

    def stop(self, project: str) -> None:
        response = self.api("DELETE", f"/users/{self.user}/servers/{project}")
        assert response.status_code in (202, 204), response.text
        wait_for(lambda: self.server(project) is None, 60, f"{self.user}/{project} to stop")

    def progress_message(self, project: str) -> str:
        """The last message of the spawn progress stream, as the spawn page shows it."""
        resp = self.api("GET", f"/users/{self.user}/servers/{project}/progress", stream=True)
        message = ""
        for line in resp.iter_lines(decode_unicode=True):
            if line and line.startswith("data:"):
                event = json.loads(line[5:])
                message = event.get("message", message)
                if event.get("failed") or event.get("ready"):
                    break
        return message


def docker_exec(
    container, cmd: list[str] | str, user: str = "1000:1000", timeout: int = 60
) -> tuple[int, str]:
    """Run a command in a notebook container as the researcher would (same uid, same environment)."""
    if isinstance(cmd, str):
        cmd = ["/bin/bash", "-c", cmd]
    result = container.exec_run(["timeout", str(timeout), *cmd], user=user, demux=False)
    return result.exit_code, result.output.decode(errors="replace")


def py_exec(container, code: str, timeout: int = 60) -> tuple[int, str]:
    return docker_exec(container, ["/opt/notebook/bin/python", "-c", code], timeout=timeout)
