"""The container profile, field by field (the engine's view is asserted in tests/integration)."""

from pathlib import Path

import pytest

from hub.security_profile import (
    NPROC_ALL_NOTEBOOKS,
    PROTECTED_HOST_CONFIG,
    Mount,
    memory_bytes,
    security_profile,
)
from hub.spawner import EnclaveSpawner


def profile():
    return security_profile(
        image="enclave/notebook:0.1", network="enclave-demo-cardio", dns="172.30.0.1",
        mounts=[Mount(Path("/s/data/p/d/1"), "/data/d", True), Mount(Path("/s/ws/p"), "/workspace", False)],
        cpu=1.5, memory="2G", pids=256,
    )


def test_host_config_is_locked_down():
    hc = profile()["host_config"]
    assert hc["cap_drop"] == ["ALL"] and "cap_add" not in hc
    assert hc["security_opt"] == ["no-new-privileges:true"]
    assert hc["read_only"] is True and hc["privileged"] is False
    assert hc["mem_limit"] == hc["memswap_limit"] == 2 * 1024**3
    assert hc["cpu_quota"] == 150_000 and hc["cpu_period"] == 100_000
    assert hc["pids_limit"] == 256
    # nproc counts every uid-1000 process on the host, so it is a host-wide backstop; pids_limit is per container
    assert {u["Name"]: u["Hard"] for u in hc["ulimits"]} == {"nofile": 4096, "nproc": NPROC_ALL_NOTEBOOKS, "core": 0}
    assert hc["binds"] == ["/s/data/p/d/1:/data/d:ro", "/s/ws/p:/workspace:rw"]
    assert all("noexec" in o and "nosuid" in o and "nodev" in o and "size=" in o for o in hc["tmpfs"].values())
    assert hc["network_mode"] == "enclave-demo-cardio" and hc["dns"] == ["172.30.0.1"]
    assert not any(k in hc for k in ("devices", "pid_mode", "userns_mode", "port_bindings", "device_requests"))


def test_container_runs_as_uid_1000():
    assert profile()["create"]["user"] == "1000:1000"


def test_gpu_renders_a_device_request():
    hc = security_profile(image="i:1", network="n", dns="d", mounts=[], cpu=1, memory="1G", pids=64, gpus=1)["host_config"]
    assert hc["device_requests"][0]["Count"] == 1


def test_memory_units():
    assert memory_bytes("512M") == 512 * 1024**2 and memory_bytes("1K") == 1024


@pytest.mark.parametrize("key", ["network_mode", "binds", "privileged", "cap_add", "security_opt"])
def test_extra_host_config_cannot_override_profile(key):
    with pytest.raises(Exception, match=key):
        EnclaveSpawner(extra_host_config={key: "x"})


def test_protected_keys_cover_profile():
    assert set(profile()["host_config"]) - PROTECTED_HOST_CONFIG <= {"restart_policy", "auto_remove", "dns_search"}
