"""The platform end to end on the real engine, directory and hub (issue: enclave platform)."""

from __future__ import annotations

import shutil
from pathlib import Path

import docker
import pytest
import requests

from hub import internal_tls
from hub.security_profile import LXCFS_FILES
from tests.harness import HubClient, ProcessExited, docker_exec, py_exec

pytestmark = pytest.mark.integration


# ---- login --------------------------------------------------------------------------------------


@pytest.mark.parametrize("user", ["alice", "carol", "adam"])
def test_directory_users_in_an_enclave_group_log_in(hub, user):
    response = HubClient(hub, user).login()
    assert response.status_code == 302 and response.headers["location"].endswith("/hub/home")


@pytest.mark.parametrize(
    "user,password",
    [("alice", "wrong-password"), ("mallory", "demo-mallory"), ("nobody", "demo-nobody"), ("alice", " ")],
    ids=["wrong-password", "no-group-mallory", "unknown-user", "blank-password"],
)
def test_login_refused(hub, user, password):
    response = HubClient(hub, user, password).login()
    assert response.status_code == 403
    assert "Invalid username or password" in response.text


def test_ldap_injection_in_username_is_refused(hub):
    response = HubClient(hub, "alice)(uid=*", "demo-alice").login()
    assert response.status_code == 403


# ---- spawn ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def alice_server(hub):
    alice = HubClient(hub, "alice")
    assert alice.login().status_code == 302
    alice.spawn("demo-cardio")
    yield alice, hub.container("alice", "demo-cardio")
    if alice.server("demo-cardio"):
        alice.stop("demo-cardio")


def test_spawned_container_matches_the_contract(hub, alice_server):
    _, container = alice_server
    container.reload()
    attrs = container.attrs
    network = hub.network("demo-cardio")
    assert network.attrs["Internal"] is True, "the project network must have no route out"
    assert list(attrs["NetworkSettings"]["Networks"]) == [network.name], "one network only: the project's"
    assert attrs["Config"]["User"] == "1000:1000"
    assert attrs["Config"]["Image"] == hub.site_image
    mounts = {m["Destination"]: m for m in attrs["Mounts"]}
    assert mounts["/data/synthetic-omop"]["RW"] is False
    # The published version as its own read-only squashfs (hub/dataset_images.py), not the host directory.
    assert mounts["/data/synthetic-omop"]["Source"] == str(
        hub.state / "data-images/demo-cardio/synthetic-omop/1"
    )
    assert mounts["/workspace"]["RW"] is True
    assert mounts["/workspace"]["Source"] == str(hub.state / "workspaces/demo-cardio")
    lxcfs = {target for _, target in LXCFS_FILES}  # lxcfs's per-container /proc views, read-only
    assert all(mounts[t]["RW"] is False and mounts[t]["Source"].startswith("/var/lib/lxcfs/") for t in lxcfs)
    # TLS inside: the server's own key, certificate and trust bundle, read-only; never an authority's key.
    tls = mounts["/etc/enclave-tls"]
    assert tls["RW"] is False and tls["Source"] == str(hub.state / "internal-tls/servers" / container.name)
    assert sorted(p.name for p in Path(tls["Source"]).iterdir()) == ["ca.crt", "server.crt", "server.key"]
    assert set(mounts) == {"/data/synthetic-omop", "/workspace", "/etc/enclave-tls", *lxcfs}, (
        "nothing else from the host is mounted"
    )
    assert docker_exec(container, "id -u")[1].strip() == "1000"


def test_data_is_readable_and_read_only(alice_server):
    _, container = alice_server
    # os._exit: pyarrow's thread pool can abort the interpreter's own shutdown ("terminate called without an
    # active exception", exit 134) on a loaded host after the read has succeeded; the read is what is tested.
    code, out = py_exec(
        container,
        "import os, sys, pandas as pd; "
        "print(len(pd.read_parquet('/data/synthetic-omop/person.parquet'))); "
        "sys.stdout.flush(); os._exit(0)",
    )
    assert code == 0 and int(out.strip()) > 0, out
    code, out = docker_exec(container, "echo x > /data/synthetic-omop/person.parquet")
    assert code != 0 and "Read-only file system" in out
    code, out = docker_exec(container, "touch /data/new-file")
    assert code != 0 and "Read-only file system" in out


def test_members_share_the_workspace_and_it_outlives_the_container(hub, alice_server):
    _, alice_container = alice_server
    erin = HubClient(hub, "erin")
    assert erin.login().status_code == 302
    erin.spawn("demo-cardio")
    erin_container = hub.container("erin", "demo-cardio")
    assert docker_exec(alice_container, "echo from-alice > /workspace/shared.txt")[0] == 0
    assert docker_exec(erin_container, "cat /workspace/shared.txt")[1].strip() == "from-alice"
    erin.stop("demo-cardio")
    with pytest.raises(docker.errors.NotFound):
        hub.container("erin", "demo-cardio")
    assert (hub.state / "workspaces/demo-cardio/shared.txt").read_text() == "from-alice\n"


def test_bob_cannot_start_demo_cardio(hub):
    bob = HubClient(hub, "bob")
    assert bob.login().status_code == 302
    response = bob.start("demo-cardio")
    assert response.status_code == 403
    assert "bob is not a member of project demo-cardio" in response.json()["message"]
    assert not [c for c in hub.containers() if "bob" in c.name]


def test_unknown_project_and_default_server_are_refused(hub):
    alice = HubClient(hub, "alice")
    alice.login()
    response = alice.start("no-such-project")
    assert response.status_code == 404 and "Unknown project 'no-such-project'" in response.json()["message"]
    response = alice.api("POST", "/users/alice/server")
    assert response.status_code == 403 and "Choose a project" in response.json()["message"]


def test_user_options_cannot_choose_image_mounts_or_network(hub):
    alice = HubClient(hub, "alice")
    alice.login()
    response = alice.start("demo-oncology", json={"image": "debian:bookworm", "volumes": {"/": "/host"}})
    assert response.status_code == 400
    assert "Spawn options are not accepted (image, volumes)" in response.json()["message"]


def test_no_route_out(alice_server):
    _, container = alice_server
    _, out = py_exec(
        container,
        """
import socket
s = socket.socket(); s.settimeout(5)
try:
    s.connect(("192.0.2.1", 80)); print("CONNECTED")
except OSError as e:
    print("blocked", e)
""",
    )
    assert "blocked" in out and "CONNECTED" not in out


def test_stop_removes_container_and_keeps_workspace(hub, alice_server):
    alice, container = alice_server
    assert docker_exec(container, "echo kept > /workspace/kept.txt")[0] == 0
    alice.stop("demo-cardio")
    with pytest.raises(docker.errors.NotFound):
        hub.container("alice", "demo-cardio")
    assert (hub.state / "workspaces/demo-cardio/kept.txt").read_text() == "kept\n"


# ---- faults --------------------------------------------------------------------------------------


def test_hub_restart_keeps_running_servers_and_routes(fresh_hub):
    h = fresh_hub().start()
    alice = HubClient(h, "alice")
    alice.login()
    alice.spawn("demo-cardio")
    token = alice.api(
        "POST", "/users/alice/tokens", json={"scopes": ["access:servers!server=alice/demo-cardio"]}
    ).json()["token"]
    through_proxy = f"{h.url}/user/alice/demo-cardio/api/status"
    assert (
        requests.get(through_proxy, headers={"Authorization": f"token {token}"}, timeout=10).status_code
        == 200
    )
    before = {c.id for c in h.containers()}

    h.stop_hub()
    h.start()

    assert (
        requests.get(through_proxy, headers={"Authorization": f"token {token}"}, timeout=10).status_code
        == 200
    )
    assert {c.id for c in h.containers()} == before, "no orphaned or duplicated containers"
    proxy_token = (h.state / "secrets/proxy_auth_token").read_text()
    # TLS inside: the proxy's API asks for a certificate of the enclave's authorities (the hub's here).
    hub_pair = internal_tls.record_files(h.state, "hub-internal")
    routes = requests.get(
        f"https://127.0.0.1:{h.api_port}/api/routes",
        headers={"Authorization": f"token {proxy_token}"},
        timeout=10,
        cert=(str(hub_pair["cert"]), str(hub_pair["key"])),
        verify=str(internal_tls.record_files(h.state, "proxy-api-ca")["cert"]),
    ).json()
    assert routes["/user/alice/demo-cardio"]["server_name"] == "demo-cardio"
    alice = HubClient(h, "alice")
    alice.login()
    assert alice.server("demo-cardio")["ready"] is True
    alice.stop("demo-cardio")


def test_engine_unreachable_gives_clear_error_and_creates_nothing(fresh_hub):
    h = fresh_hub(DOCKER_HOST="unix:///run/enclave-no-engine.sock").start()
    alice = HubClient(h, "alice")
    alice.login()
    response = alice.start("demo-cardio")
    assert response.status_code == 503
    assert "container engine is unreachable" in response.json()["message"]
    assert "Nothing was created" in response.json()["message"]
    assert not [n for n in docker.from_env().networks.list() if n.name.startswith(h.prefix)]
    assert not (h.state / "workspaces/demo-cardio").exists()


def test_invalid_policy_stops_the_hub_from_starting_with_a_clear_error(fresh_hub):
    h = fresh_hub()
    (h.policy / "projects/demo-cardio.yaml").write_text("id: demo-cardio\nstatus: [\n")
    with pytest.raises(ProcessExited) as info:
        h.start(timeout=30)
    assert "demo-cardio.yaml: line 3, column 1: not valid YAML" in str(info.value)


def test_directory_unreachable_gives_clear_login_error(fresh_hub, directory):
    h = fresh_hub()
    import yaml

    site = yaml.safe_load((h.policy / "site.yaml").read_text())
    site["ldap"]["server_port"] = 1  # nothing listens there
    (h.policy / "site.yaml").write_text(yaml.safe_dump(site))
    h.start()
    response = HubClient(h, "alice").login()
    assert response.status_code == 503
    assert "The login directory (LDAP at 127.0.0.1:1) is unreachable" in response.text


def test_starttls_certificate_is_verified(fresh_hub, tmp_path):
    """A directory whose certificate is not signed by the configured CA is refused, not trusted."""
    h = fresh_hub()
    import yaml

    from tests.harness import REPO  # noqa: F401

    other_ca = tmp_path / "other-ca.pem"
    shutil.copy("/etc/ssl/certs/ca-certificates.crt", other_ca)
    site = yaml.safe_load((h.policy / "site.yaml").read_text())
    site["ldap"]["ca_file"] = str(other_ca)
    (h.policy / "site.yaml").write_text(yaml.safe_dump(site))
    h.start()
    response = HubClient(h, "alice").login()
    assert response.status_code == 503, "a login over an unverified TLS connection must not succeed"
