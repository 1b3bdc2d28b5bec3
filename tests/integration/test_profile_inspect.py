"""The security profile as the engine applied it: ``docker inspect`` of a real spawned container, field by
field (CIS Docker Benchmark section 5), and the kernel's view from inside it. tests/unit/test_security_profile.py
checks what we ask for; this checks what we got."""

from __future__ import annotations

import base64
import json
import os
import time
from pathlib import Path

import pytest

from hub.dataset_images import mount_point
from hub.security_profile import (
    ENGINE_DEFAULT_MASKED_PATHS,
    ENGINE_DEFAULT_READONLY_PATHS,
    LXCFS_FILES,
    NPROC_ALL_NOTEBOOKS,
    SHARED_KERNEL_MASKED_PATHS,
    inspect_problems,
)
from tests.harness import IMAGE, HubClient, docker_exec

pytestmark = pytest.mark.integration

PROJECT = "demo-cardio"
GIB = 1 << 30


@pytest.fixture(scope="module")
def spawned(hub):
    alice = HubClient(hub, "alice")
    assert alice.login().status_code == 302
    if not alice.server(PROJECT):
        alice.spawn(PROJECT)
    container = hub.container("alice", PROJECT)
    container.reload()
    yield container, hub.network(PROJECT)
    if alice.server(PROJECT):
        alice.stop(PROJECT)


@pytest.fixture
def host_config(spawned):
    return spawned[0].attrs["HostConfig"]


# ---- CIS 5.x, one field at a time ---------------------------------------------------------------------


def test_runs_the_site_image_as_uid_1000(hub, spawned):
    container, _ = spawned
    config = container.attrs["Config"]
    assert config["Image"] == hub.site_image
    assert container.attrs["Image"] == container.client.images.get(hub.site_image).id
    assert config["User"] == "1000:1000"  # CIS 4.1
    assert config["WorkingDir"] == "/workspace"
    assert config["Labels"]["org.enclave.role"] == "notebook"
    assert set(config["ExposedPorts"]) == {"8888/tcp"}


def test_capabilities_all_dropped(host_config):
    assert host_config["CapDrop"] == ["ALL"]  # CIS 5.3
    assert not host_config["CapAdd"]
    assert host_config["Privileged"] is False  # CIS 5.4


def test_no_new_privileges_with_the_default_seccomp_profile(spawned, host_config):
    assert host_config["SecurityOpt"] == ["no-new-privileges:true"]  # CIS 5.25; no seccomp=unconfined (5.21)
    apparmor_on = (
        Path("/sys/module/apparmor/parameters/enabled").exists()
        and Path("/sys/module/apparmor/parameters/enabled").read_text().strip() == "Y"
    )
    assert spawned[0].attrs["AppArmorProfile"] == ("docker-default" if apparmor_on else "")  # CIS 5.1


def test_read_only_root_with_capped_noexec_scratch(host_config):
    assert host_config["ReadonlyRootfs"] is True  # CIS 5.12
    assert host_config["Tmpfs"] == {
        "/tmp": "rw,noexec,nosuid,nodev,size=512m,mode=1777",
        "/home/jovyan": "rw,noexec,nosuid,nodev,size=128m,uid=1000,gid=1000,mode=0700",
    }


def test_resource_limits(host_config):
    assert host_config["Memory"] == host_config["MemorySwap"] == 2 * GIB  # CIS 5.10; no swap beyond memory
    assert host_config["CpuPeriod"] == 100_000 and host_config["CpuQuota"] == 100_000  # CIS 5.11: 1.0 CPU
    assert host_config["PidsLimit"] == 512  # CIS 5.28
    assert {u["Name"]: (u["Soft"], u["Hard"]) for u in host_config["Ulimits"]} == {
        "nofile": (4096, 4096),
        "nproc": (NPROC_ALL_NOTEBOOKS, NPROC_ALL_NOTEBOOKS),
        "core": (0, 0),
    }
    assert host_config["OomKillDisable"] is False
    assert host_config["RestartPolicy"] == {
        "Name": "no",
        "MaximumRetryCount": 0,
    }  # CIS 5.14: no restart loops


def test_cpu_shares_below_a_host_daemons(host_config):
    # CIS 5.11 (docker-bench 5.12): a CPU priority is set; 512 per CPU of quota, a host daemon has 1024.
    assert host_config["CpuShares"] == 512


def test_a_real_health_check_reports_the_jupyter_server_healthy(spawned):
    # CIS 5.26 (docker-bench 5.27): the engine itself probes the Jupyter server, and it answers.
    container, _ = spawned
    test = container.attrs["Config"]["Healthcheck"]["Test"]
    # TLS inside: the check makes a TLS handshake with the server on 127.0.0.1:8888 (it holds no client
    # certificate the server would accept, so it cannot ask more than that).
    assert (
        test[:2] == ["CMD", "/opt/notebook/bin/python"]
        and "('127.0.0.1',8888)" in test[-1]
        and "ssl" in test[-1]
    )
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        container.reload()
        health = container.attrs["State"]["Health"]
        if health["Status"] != "starting":
            break
        time.sleep(2)
    assert health["Status"] == "healthy", json.dumps(health["Log"][-2:])
    assert health["Log"][-1]["ExitCode"] == 0 and health["FailingStreak"] == 0


def test_masked_paths_are_the_engines_defaults_plus_every_shared_kernel_counter(host_config):
    masked = host_config["MaskedPaths"]
    assert masked[: len(ENGINE_DEFAULT_MASKED_PATHS)] == list(ENGINE_DEFAULT_MASKED_PATHS)
    assert set(SHARED_KERNEL_MASKED_PATHS) <= set(masked)
    host_disks = [os.path.realpath(p) for p in Path("/sys/block").iterdir()]
    assert {p for p in host_disks if not p.startswith("/sys/devices/virtual/")} <= set(masked)
    assert host_config["ReadonlyPaths"] == list(ENGINE_DEFAULT_READONLY_PATHS)


def test_the_engines_own_defaults_are_still_masked_inside(spawned):
    # The engine's list, as a plain container on this engine gets it: ours must mask at least the same.
    container, _ = spawned
    plain = container.client.containers.run(
        IMAGE, ["sh", "-c", "cat /proc/self/mountinfo"], entrypoint=[], network_mode="none", remove=True
    ).decode()
    _, ours = docker_exec(container, "cat /proc/self/mountinfo")

    def hidden(mountinfo: str) -> set[str]:
        return {
            line.split()[4]
            for line in mountinfo.splitlines()
            if line.split()[4].startswith(("/proc/", "/sys/")) and "cgroup" not in line
        }

    assert hidden(plain) <= hidden(ours)
    assert {"/proc/partitions", "/sys/block", "/proc/diskstats", "/proc/meminfo"} <= hidden(ours)


def test_doctor_finds_nothing_wrong_with_the_running_container(spawned):
    assert inspect_problems(spawned[0].attrs) == []


def test_no_host_namespaces_devices_or_ports(hub, spawned, host_config):
    assert host_config["NetworkMode"] == f"{hub.prefix}{PROJECT}"  # CIS 5.9: not host
    assert host_config["PidMode"] == ""  # CIS 5.15
    assert host_config["IpcMode"] == "private"  # CIS 5.16
    assert host_config["UTSMode"] == ""  # CIS 5.20
    assert host_config["UsernsMode"] == ""  # CIS 5.30: not host
    assert host_config["CgroupnsMode"] == "private"
    assert not host_config["Devices"] and not host_config["DeviceRequests"]  # CIS 5.17
    assert not host_config["DeviceCgroupRules"]
    assert not host_config["PortBindings"] and host_config["PublishAllPorts"] is False  # CIS 5.7, 5.8
    # The one extra name: the gate, at this network's gateway (its TLS certificate is for that name).
    gateway = spawned[1].attrs["IPAM"]["Config"][0]["Gateway"]
    assert host_config["ExtraHosts"] == [f"enclave-hub:{gateway}"]
    assert not host_config["Links"] and not host_config["VolumesFrom"]
    assert host_config["Runtime"] == "runc"
    assert host_config["Sysctls"] == {
        "net.ipv6.conf.all.disable_ipv6": "1",
        "net.ipv6.conf.default.disable_ipv6": "1",
    }


def test_mounts_are_the_projects_data_read_only_and_its_workspace(hub, spawned, host_config):
    container, _ = spawned
    data = mount_point(hub.state, PROJECT, "synthetic-omop", "1")  # the dataset's own read-only squashfs
    workspace = hub.state / "workspaces" / PROJECT
    tls = hub.state / "internal-tls" / "servers" / container.name
    lxcfs = [(f"/var/lib/lxcfs/{source}", target, False) for source, target in LXCFS_FILES]
    assert host_config["Binds"] == [
        f"{data}:/data/synthetic-omop:ro",
        f"{workspace}:/workspace:rw",
        f"{tls}:/etc/enclave-tls:ro",  # TLS inside: this server's own key and certificate
        *(f"{source}:{target}:ro" for source, target, _ in lxcfs),
    ]  # CIS 5.5
    assert sorted((m["Source"], m["Destination"], m["RW"]) for m in container.attrs["Mounts"]) == sorted(
        [
            (str(data), "/data/synthetic-omop", False),
            (str(workspace), "/workspace", True),
            (str(tls), "/etc/enclave-tls", False),
            *lxcfs,
        ]
    )
    assert os.path.ismount(data) and "squashfs" in Path("/proc/mounts").read_text().split(f" {data} ")[1][:9]
    assert not [m for m in container.attrs["Mounts"] if "docker.sock" in m["Source"]]  # CIS 5.31
    assert not host_config.get("Mounts")


def test_one_internal_network_and_dns_at_its_gateway(spawned, host_config):
    container, network = spawned
    assert list(container.attrs["NetworkSettings"]["Networks"]) == [network.name]
    assert network.attrs["Internal"] is True and network.attrs["Driver"] == "bridge"
    assert network.attrs["Options"]["com.docker.network.bridge.enable_ip_masquerade"] == "false"
    assert network.attrs["Labels"]["org.enclave.role"] == "project-network"
    gateway = network.attrs["IPAM"]["Config"][0]["Gateway"]
    assert host_config["Dns"] == [gateway]
    assert not host_config["DnsSearch"]


def test_environment_carries_no_host_secrets(hub, spawned):
    env = dict(e.split("=", 1) for e in spawned[0].attrs["Config"]["Env"])
    assert env["JUPYTERHUB_DISABLE_USER_CONFIG"] == "1" and env["JUPYTER_CONFIG_DIR"] == "/etc/jupyter"
    assert env["ENCLAVE_PROJECT"] == PROJECT and env["ENCLAVE_TERMINALS"] == "0"
    assert not [k for k in env if k.startswith("DOCKER")]
    values = "\n".join(env.values())
    for secret in (hub.state / "secrets").iterdir():  # cookie secret, proxy token, audit keys
        raw = secret.read_bytes().strip()
        if not raw:
            continue  # a lock file (.mfa.lock) holds nothing to leak, and "" is in every string
        # Text secrets as they are; binary keys (mfa_key) in the spellings an environment could carry them.
        spellings = {raw.hex(), base64.b64encode(raw).decode(), base64.urlsafe_b64encode(raw).decode()}
        try:
            spellings.add(raw.decode())
        except UnicodeDecodeError:
            pass
        for spelling in spellings:
            assert spelling not in values, f"{secret.name} is in the container's environment"


# ---- the same, as the kernel enforces it inside ------------------------------------------------------


def test_the_kernel_view_from_inside(spawned):
    container, _ = spawned
    code, status = docker_exec(
        container, "grep -E '^(Uid|Cap[A-Za-z]+|NoNewPrivs|Seccomp):' /proc/self/status"
    )
    assert code == 0
    fields = {line.split(":")[0]: line.split(":", 1)[1].split() for line in status.splitlines()}
    assert fields["Uid"] == ["1000"] * 4
    for cap in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert fields[cap] == ["0000000000000000"], cap
    assert fields["NoNewPrivs"] == ["1"] and fields["Seccomp"] == ["2"]  # 2: a seccomp filter is in force
    _, limits = docker_exec(container, "ulimit -c; ulimit -n; ulimit -u")
    assert limits.split() == ["0", "4096", str(NPROC_ALL_NOTEBOOKS)]
    _, mounts = docker_exec(container, "findmnt -rno TARGET,OPTIONS")
    options = dict(line.split(" ", 1) for line in mounts.splitlines())
    assert options["/"].startswith("ro,")
    assert options["/data/synthetic-omop"].startswith("ro,")
    for scratch in ("/tmp", "/home/jovyan", "/dev/shm"):
        assert {"nosuid", "nodev", "noexec"} <= set(options[scratch].split(",")), scratch
    _, pids_max = docker_exec(
        container, "cat /sys/fs/cgroup/pids/pids.max 2>/dev/null || cat /sys/fs/cgroup/pids.max"
    )
    assert pids_max.strip() == "512"
