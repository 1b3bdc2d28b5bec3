"""Fixtures for the enclave's tests.

Unit tests (tests/unit) need nothing running. Integration tests (tests/integration) use real parts that
``deploy/test`` installs: the Docker engine, slapd, configurable-http-proxy and the notebook image.

- ``directory``  session: a slapd seeded with the demo users, StartTLS, on a free loopback port.
- ``hub``        session: a running enclave (proxy + JupyterHub + policy copy + state directory), with the
                 demo projects and their pseudonymized demo data. Its containers, networks and firewall
                 rules are removed at the end.
- ``client``     factory: ``client("alice")`` -> HubClient logged in as that demo user.
- ``fresh_hub``  factory for tests that need their own hub (restarts, a broken engine): torn down after.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import psutil
import pytest

from tests.harness import Directory, Hub, HubClient


@pytest.fixture(scope="session", autouse=True)
def no_leftover_services(tmp_path_factory):
    """After the whole run, no managed service of this run's test hubs may still run (issue 19); any found
    is killed and named, and the run fails. Only this run's own temporary directory counts: other runs on
    the same machine (other engineers, the full suite) are never touched."""
    yield
    from hub.services import SERVICE_NAMES, stop_processes

    mine = str(tmp_path_factory.getbasetemp().resolve()) + os.sep
    left: dict[int, str] = {}
    for proc in psutil.process_iter(["pid"]):
        try:
            env = proc.environ()
        except (psutil.Error, OSError):
            continue
        state = os.path.realpath(env.get("ENCLAVE_STATE_DIR", "/nonexistent"))
        if env.get("JUPYTERHUB_SERVICE_NAME") in SERVICE_NAMES and state.startswith(mine):
            left[proc.pid] = f"{env['JUPYTERHUB_SERVICE_NAME']} pid {proc.pid} ({state})"
    stop_processes(left, grace=2)
    assert not left, f"test hubs left services running (killed now): {list(left.values())}"


@pytest.fixture(scope="session")
def directory():
    # slapd drops to the openldap user, which cannot enter pytest's private (0700) temp directories.
    root = Path(tempfile.mkdtemp(prefix="enclave-test-ldap-", dir="/var/tmp"))
    root.chmod(0o755)
    d = Directory(root).start()
    yield d
    d.stop()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def hub(tmp_path_factory, directory):
    h = Hub(tmp_path_factory.mktemp("hub"), directory).prepare()
    try:
        h.start()
        yield h
    finally:
        h.teardown()


@pytest.fixture
def client(hub):
    def make(user: str, password: str | None = None) -> HubClient:
        c = HubClient(hub, user, password)
        response = c.login()
        assert response.status_code == 302, f"login as {user} failed: {response.status_code}"
        return c

    return make


@pytest.fixture
def fresh_hub(tmp_path_factory, directory):
    made: list[Hub] = []

    def make(**env) -> Hub:
        h = Hub(tmp_path_factory.mktemp("freshhub"), directory, env_extra=env).prepare()
        made.append(h)
        return h

    yield make
    for h in made:
        h.teardown()
