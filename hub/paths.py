"""Where the enclave keeps things on the host: defined in ground/paths.py, named here for the hub's code."""

from ground.paths import DEFAULT_STATE_DIR, REPO_ROOT, EnclavePaths

__all__ = ["DEFAULT_STATE_DIR", "REPO_ROOT", "EnclavePaths"]
