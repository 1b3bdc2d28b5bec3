"""No shared-kernel view between projects: covert channels and host state, attacked from real containers.

The sender is bob's notebook in demo-oncology, the receiver alice's in demo-cardio, both spawned by the
real hub, both running as uid 1000 (tests/harness.py docker_exec). The sender and receiver programs are
bench/covert.py's, so the test and the bench measure the same thing. Where the receiver must decode
nothing, the same receiver runs on the host at the same time and must decode the payload: that proves
the sender's signal was really there, and that the container's silence is the masking's doing (the
receiver in the container decoded the payload exactly, before the masking, in bench/covert.py's
"before" mode and in the attack of 2026).
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import pytest

from bench.covert import bits_of, capacity, decode, host_reader, run_channel, text_of
from tests.harness import HubClient, docker_exec, py_exec

pytestmark = pytest.mark.integration

SENDER_PROJECT, RECEIVER_PROJECT = "demo-oncology", "demo-cardio"

# The channels that stay open and are bounded by a test: (slot in seconds, the bound in bits/s that
# docs/SECURITY.md states for it), about 2x the most measured and well below the protocol's ceiling of
# 1/slot, so a channel that got wider fails the test. The page cache, the fork counter and the host disk's
# free space are not here: on a quiet host they decode at or near that ceiling, where a bound cannot fail;
# docs/SECURITY.md states them at the ceiling and bench/covert.py measures them.
OPEN_CHANNELS = {"cpu-timing": (0.3, 1.5)}


@pytest.fixture(scope="module")
def pair(hub):
    """(sender, receiver): bob's demo-oncology container and alice's demo-cardio container."""
    containers = []
    clients = []
    for user, project in (("bob", SENDER_PROJECT), ("alice", RECEIVER_PROJECT)):
        client = HubClient(hub, user)
        assert client.login().status_code == 302
        if not client.server(project):
            client.spawn(project)
        clients.append((client, project))
        containers.append(hub.container(user, project))
    yield containers
    for client, project in clients:
        if client.server(project):
            client.stop(project)


def test_loop_device_counters_carry_no_person_id_between_projects(pair):
    sender, receiver = pair
    payload = secrets.token_hex(5)  # 10 characters, as the person id of the 2026 attack
    bits = bits_of(payload)
    result = run_channel(
        sender,
        receiver,
        "block-counters",
        bits,
        slot=0.4,
        host_receiver=host_reader,
        target=f".{SENDER_PROJECT}.ext4",
    )
    # The control: the host, whose counters are not masked, decodes what bob sent.
    assert result["host_ber"] <= 0.15, f"the sender's signal did not reach the host's counters: {result}"
    # alice's container saw nothing move at all: not one counter of any block device.
    assert set(result["values"]) == {0}, result["values"]
    assert text_of(result["decoded"]) != payload and result["bits_per_s"] == 0 and result["ber"] == 0.5


def test_no_block_device_or_loop_backing_file_of_any_project_is_visible(hub, pair):
    _, receiver = pair
    host_backing = [p.read_text().strip() for p in Path("/sys/block").glob("loop*/loop/backing_file")]
    assert any("demo-oncology" in b for b in host_backing), "control: bob's workspace image is a loop device"
    _, out = docker_exec(
        receiver,
        (
            "cat /proc/partitions /proc/diskstats; find /sys/block /sys/class/block /sys/dev/block "
            "/sys/devices/virtual/block /sys/class/bdi /sys/fs/ext4 -mindepth 1; find /sys -name backing_file 2>/dev/null; "
            "grep -rsl -e demo-oncology -e .ext4 /sys/devices/virtual /sys/class /sys/fs /proc/partitions 2>/dev/null"
        ),
    )
    assert out.strip() == "", out
    disks = [os.path.realpath(p) for p in Path("/sys/block").iterdir()]
    physical = [d for d in disks if not d.startswith("/sys/devices/virtual/")]
    for disk in physical:  # the host's own disk: its I/O counters are empty inside
        _, out = docker_exec(receiver, f"cat {disk}/stat 2>/dev/null; find {disk} -mindepth 1 2>/dev/null")
        assert out.strip() == "", f"{disk}: {out}"


STATVFS = (
    "import os, json; print(json.dumps({p: list(os.statvfs(p)) for p in "
    "('/data/synthetic-omop', '/workspace')}))"
)


def test_statvfs_on_data_and_workspace_does_not_move_while_the_host_writes(hub, pair):
    import json

    _, receiver = pair
    code, before = py_exec(receiver, STATVFS)
    assert code == 0, before
    before = json.loads(before)
    assert before["/data/synthetic-omop"][3] == 0, "the dataset is its own full, read-only filesystem"
    big = hub.state / f"host-write-{secrets.token_hex(4)}"
    host_before = os.statvfs(hub.state).f_bfree
    try:
        with open(big, "wb") as fh:
            chunk = os.urandom(1 << 20)
            for _ in range(256):
                fh.write(chunk)
            fh.flush()
            os.fsync(fh.fileno())
        host_after = os.statvfs(hub.state).f_bfree
        code, after = py_exec(receiver, STATVFS)
    finally:
        big.unlink(missing_ok=True)
    assert host_before - host_after > 32_000, "control: the host's disk really filled"
    assert json.loads(after) == before


def test_the_loadavg_threads_channel_is_closed_by_lxcfs(pair):
    # Before lxcfs this carried 5 bits/s (bench/covert.py): /proc/loadavg counted every thread on the host.
    # The host's control is noisy when other work starts threads too: a run whose control did not decode is
    # repeated (at most three runs), and every run must leave the container blind.
    sender, receiver = pair
    controlled = []
    for _ in range(3):
        bits = [secrets.randbelow(2) for _ in range(24)]
        result = run_channel(sender, receiver, "threads", bits, host_receiver=host_reader)
        assert result["bits_per_s"] <= 0.5, result
        if result["host_ber"] <= 0.15:
            controlled.append(result)
            break
    assert controlled, f"control: the host never decoded bob's threads in three runs: {result}"


@pytest.mark.parametrize("channel", sorted(OPEN_CHANNELS))
def test_remaining_open_channels_stay_within_their_documented_capacity(pair, channel):
    sender, receiver = pair
    slot, bound = OPEN_CHANNELS[channel]
    bits = [secrets.randbelow(2) for _ in range(48)]
    result = run_channel(sender, receiver, channel, bits, slot=slot)
    assert result["bits_per_s"] <= bound, result


def test_decoder_is_not_blind():
    # The decoder used above is able to read a clean signal: zero capacity above means a flat view.
    bits = [1, 0, 1, 1, 0, 0, 1, 0]
    assert decode([b * 10 + 3 for b in bits]) == bits
    assert capacity(bits, bits, 0.5)[1] == 2.0
