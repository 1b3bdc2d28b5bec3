"""Where the enclave keeps things on the host.

Everything secret or stateful lives under one state directory (default ``/var/lib/enclave``) so that an
operator can back it up, put it on encrypted storage, and know that nothing under it is ever mounted
into a researcher's container except the workspaces and published datasets, which are mounted one
project at a time by the spawner.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_STATE_DIR = Path("/var/lib/enclave")


@dataclass(frozen=True)
class EnclavePaths:
    """The host-side layout of one enclave installation."""

    state_dir: Path
    policy_dir: Path

    @classmethod
    def from_env(
        cls, state_dir: str | os.PathLike | None = None, policy_dir: str | os.PathLike | None = None
    ):
        """Resolve paths from explicit arguments, then ENCLAVE_STATE_DIR / ENCLAVE_POLICY_DIR, then defaults."""
        state = state_dir or os.environ.get("ENCLAVE_STATE_DIR") or DEFAULT_STATE_DIR
        policy = policy_dir or os.environ.get("ENCLAVE_POLICY_DIR") or REPO_ROOT / "policies"
        return cls(Path(state).resolve(), Path(policy).resolve())

    @property
    def secrets_dir(self) -> Path:
        """Mode 700; every file in it mode 600. Never mounted into a container."""
        return self.state_dir / "secrets"

    @property
    def audit_dir(self) -> Path:
        return self.state_dir / "audit"

    @property
    def workspaces_dir(self) -> Path:
        return self.state_dir / "workspaces"

    @property
    def data_dir(self) -> Path:
        """Published, pseudonymized datasets: ``data/<project>/<dataset>/<version>/``."""
        return self.state_dir / "data"

    @property
    def exports_dir(self) -> Path:
        """Quarantine and release stores of the export service. Never mounted into a container."""
        return self.state_dir / "exports"

    @property
    def hub_dir(self) -> Path:
        return self.state_dir / "hub"

    @property
    def policy_applied_dir(self) -> Path:
        """A copy of the last policy the enforcer applied: the hub falls back to it on a bad edit, and
        ``enclave policy diff`` compares against it."""
        return self.hub_dir / "policy-applied"

    @property
    def policy_status_file(self) -> Path:
        """The enforcer's verdict on the policy files it saw last (``enclave policy apply`` waits on it)."""
        return self.hub_dir / "policy-status.json"

    def workspace(self, project: str) -> Path:
        return self.workspaces_dir / project

    def secret(self, name: str) -> Path:
        return self.secrets_dir / name
