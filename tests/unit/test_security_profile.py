"""The container profile, field by field (the engine's view is asserted in tests/integration)."""

from pathlib import Path

import pytest

from hub.security_profile import (
    ENGINE_DEFAULT_MASKED_PATHS,
    ENGINE_DEFAULT_READONLY_PATHS,
    NPROC_ALL_NOTEBOOKS,
    PROTECTED_HOST_CONFIG,
    Mount,
    host_block_device_dirs,
    inspect_problems,
    lxcfs_problem,
    memory_bytes,
    security_profile,
)
from hub.spawner import EnclaveSpawner


def profile():
    return security_profile(
        image="enclave/notebook:0.1",
        network="enclave-demo-cardio",
        dns="172.30.0.1",
        mounts=[Mount(Path("/s/data/p/d/1"), "/data/d", True), Mount(Path("/s/ws/p"), "/workspace", False)],
        cpu=1.5,
        memory="2G",
        pids=256,
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
    assert {u["Name"]: u["Hard"] for u in hc["ulimits"]} == {
        "nofile": 4096,
        "nproc": NPROC_ALL_NOTEBOOKS,
        "core": 0,
    }
    assert hc["binds"][:2] == ["/s/data/p/d/1:/data/d:ro", "/s/ws/p:/workspace:rw"]
    assert all(
        "noexec" in o and "nosuid" in o and "nodev" in o and "size=" in o for o in hc["tmpfs"].values()
    )
    assert hc["network_mode"] == "enclave-demo-cardio" and hc["dns"] == ["172.30.0.1"]
    assert not any(
        k in hc for k in ("devices", "pid_mode", "userns_mode", "port_bindings", "device_requests")
    )


def test_container_runs_as_uid_1000():
    assert profile()["create"]["user"] == "1000:1000"


def test_gpu_renders_a_device_request():
    hc = security_profile(image="i:1", network="n", dns="d", mounts=[], cpu=1, memory="1G", pids=64, gpus=1)[
        "host_config"
    ]
    assert hc["device_requests"][0]["Count"] == 1


def test_memory_units():
    assert memory_bytes("512M") == 512 * 1024**2 and memory_bytes("1K") == 1024


@pytest.mark.parametrize("key", ["network_mode", "binds", "privileged", "cap_add", "security_opt"])
def test_extra_host_config_cannot_override_profile(key):
    with pytest.raises(Exception, match=key):
        EnclaveSpawner(extra_host_config={key: "x"})


def test_protected_keys_cover_profile():
    assert set(profile()["host_config"]) - PROTECTED_HOST_CONFIG <= {
        "restart_policy",
        "auto_remove",
        "dns_search",
    }
    assert set(profile()["engine_host_config"]) <= PROTECTED_HOST_CONFIG


def test_masked_paths_keep_the_engines_defaults_and_hide_shared_kernel_counters():
    masked = profile()["engine_host_config"]["MaskedPaths"]
    # Setting MaskedPaths replaces the engine's list: every default must still be there (Docker 20.10).
    assert masked[: len(ENGINE_DEFAULT_MASKED_PATHS)] == list(ENGINE_DEFAULT_MASKED_PATHS)
    assert {"/proc/kcore", "/proc/keys", "/proc/timer_list", "/sys/firmware"} <= set(masked)
    assert {
        "/proc/partitions",
        "/sys/block",
        "/sys/devices/virtual/block",
        "/sys/class/block",
        "/sys/dev/block",
        "/sys/fs/ext4",
        "/proc/vmstat",
        "/proc/interrupts",
        "/proc/pressure",
    } <= set(masked)
    assert profile()["engine_host_config"]["ReadonlyPaths"] == list(ENGINE_DEFAULT_READONLY_PATHS)


def test_lxcfs_files_replace_the_host_wide_proc_files_read_only():
    binds = profile()["host_config"]["binds"]
    assert not [
        b for b in binds if "diskstats" in b
    ]  # masked instead: lxcfs falls back to the host file here
    assert "/var/lib/lxcfs/proc/meminfo:/proc/meminfo:ro" in binds
    assert "/var/lib/lxcfs/proc/loadavg:/proc/loadavg:ro" in binds
    assert all(b.endswith(":ro") for b in binds if b.startswith("/var/lib/lxcfs/"))


def test_cpu_shares_and_a_health_check_cis_5_11_5_26():
    p = security_profile(image="i:1", network="n", dns="d", mounts=[], cpu=2, memory="1G", pids=64, port=9999)
    assert p["host_config"]["cpu_shares"] == 1024  # 512 per CPU: below a host daemon's 1024 per CPU of quota
    health = p["create"]["healthcheck"]
    assert health["test"][0] == "CMD" and "127.0.0.1:9999" in health["test"][-1]
    assert health["interval"] == 15 * 10**9 and health["retries"] == 3


def test_host_block_devices_are_found_through_sysfs(tmp_path):
    (tmp_path / "devices/pci0000:00/0000:00:02.0/virtio1/block/vda").mkdir(parents=True)
    (tmp_path / "devices/virtual/block/loop0").mkdir(parents=True)
    (tmp_path / "block").mkdir()
    (tmp_path / "block/vda").symlink_to(tmp_path / "devices/pci0000:00/0000:00:02.0/virtio1/block/vda")
    (tmp_path / "block/loop0").symlink_to(tmp_path / "devices/virtual/block/loop0")
    assert host_block_device_dirs(tmp_path) == ["/sys/devices/pci0000:00/0000:00:02.0/virtio1/block/vda"]


def test_inspect_problems_name_a_missing_mask_and_lxcfs():
    attrs = {
        "Config": {"User": "1000:1000", "Healthcheck": {"Test": ["NONE"]}},
        "HostConfig": {"MaskedPaths": list(ENGINE_DEFAULT_MASKED_PATHS), "CpuShares": 0},
        "Mounts": [],
    }
    problems = "\n".join(inspect_problems(attrs))
    assert "MaskedPaths lacks ['/proc/diskstats', '/proc/partitions'" in problems
    assert "lxcfs files are not bound" in problems and "Healthcheck is unset" in problems
    assert "CpuShares is the default" in problems


def test_lxcfs_not_mounted_is_named_with_what_to_do(tmp_path):
    problem = lxcfs_problem(tmp_path)
    assert problem and str(tmp_path) in problem and "ensure_lxcfs" in problem
