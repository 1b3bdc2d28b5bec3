"""A full workspace fails inside its own project only, and a larger quota applies at the next spawn."""

from __future__ import annotations

import pytest

from tests.harness import HubClient, docker_exec

pytestmark = pytest.mark.integration

PROJECT = """\
id: demo-quota
title: Workspace quota check
principal_investigator: bob
status: active
start: 2026-01-01
expiry: 2028-12-31
approvals: {{drb: {{id: DRB-Q}}, irb: {{id: IRB-Q}}}}
members:
  - uid: bob
datasets: []
resources: {{cpu: 0.5, memory: 1G, pids: 256, workspace_quota: {quota}}}
"""


def df_bytes(container) -> int:
    code, out = docker_exec(container, "df -B1 --output=size /workspace | tail -1")
    assert code == 0, out
    return int(out.strip())


def test_full_workspace_is_enospc_in_that_project_only(hub):
    path = hub.policy / "projects/demo-quota.yaml"
    path.write_text(PROJECT.format(quota="64M"))
    bob = HubClient(hub, "bob")
    assert bob.login().status_code == 302
    try:
        bob.spawn("demo-quota")
        container = hub.container("bob", "demo-quota")
        assert df_bytes(container) < 64 * 1024**2
        code, out = docker_exec(
            container, "cp /bin/true /workspace/t && chmod +x /workspace/t && /workspace/t"
        )
        assert code != 0 and "Permission denied" in out, "the quota'd workspace is mounted noexec"
        code, out = docker_exec(container, "dd if=/dev/zero of=/workspace/big bs=1M count=200 status=none")
        assert code != 0 and "No space left on device" in out
        image = hub.state / "workspaces/.demo-quota.ext4"
        assert image.stat().st_size == 64 * 1024**2, "the workspace image never grows past its quota"
        assert hub.log_tail() and HubClient(hub, "alice").login().status_code == 302, (
            "the hub keeps answering"
        )
        bob.stop("demo-quota")

        path.write_text(PROJECT.format(quota="128M"))
        bob.spawn("demo-quota")
        container = hub.container("bob", "demo-quota")
        assert df_bytes(container) > 100 * 1024**2, "a larger quota applies at the next spawn"
        assert docker_exec(container, "test -f /workspace/big")[0] == 0, "growing keeps the files"
    finally:
        if bob.server("demo-quota"):
            bob.stop("demo-quota")
        path.unlink()
