"""Process-wide objects of the hub: one policy store and one audit log per installation.

Traitlets deep-copies configuration values, so the hub's config passes only paths, and the spawner,
authenticator and home page look the shared objects up here.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from hub.policy import PolicyStore


@cache
def policy_store(policy_dir: str, state_dir: str) -> PolicyStore:
    return PolicyStore(Path(policy_dir), Path(state_dir))


@cache
def audit_log(state_dir: str):
    """The installation's audit.AuditLog."""
    from audit import AuditLog

    return AuditLog.open(Path(state_dir))
