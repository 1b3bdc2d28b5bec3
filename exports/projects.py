"""What the export service needs to know about a project, and the Protocol it asks through.

The hub's policy store (hub/policy.py) owns projects; the lead engineer adapts it to
``ProjectDirectory``. The service asks on every request, so a membership change applies at once.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from exports.canonical import Limits

DEFAULT_MAX_FILE_BYTES = 16 * 1024 * 1024
"""16 MiB: a table of a million cells fits; a dataset extract should not."""


@dataclass(frozen=True)
class Thresholds:
    """Disclosure-control thresholds. The defaults are ACRO's; a project may only make them stricter."""

    min_count: int = 10
    nk_n: int = 2
    nk_k: float = 0.9
    p_percent: float = 0.1
    min_dof: int = 10
    zeros_disclosive: bool = True


@dataclass(frozen=True)
class ProjectInfo:
    id: str
    members: frozenset[str]
    """Who may work in the project today: create requests, and download what was released to them.
    Empty for a project that is not active (expired, suspended): its requests can still be reviewed."""
    workspace: Path
    """Host-side path of the project's workspace (mounted at /workspace in its containers)."""
    reviewers_required: int = 2
    thresholds: Thresholds = field(default_factory=Thresholds)
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES
    canonical: Limits = field(default_factory=Limits)
    """Site caps on canonical outputs (rows, columns, cell length, lines, pixels...)."""
    listed: frozenset[str] = frozenset()
    """Everyone the project's policy lists, including expired memberships: none of them may review the
    project's requests (a conflict of interest does not expire with the membership)."""

    @property
    def conflicted(self) -> frozenset[str]:
        return self.members | self.listed

    def __post_init__(self) -> None:
        if self.reviewers_required < 1:
            raise ValueError(f"project {self.id}: reviewers_required must be at least 1")


class ProjectDirectory(Protocol):
    """Looks projects up. Implementations must be cheap: they are called on every API request."""

    def get(self, project_id: str) -> ProjectInfo | None:
        """The project, whatever its status, or None if the policy does not know it."""
        ...

    def all(self) -> Iterable[ProjectInfo]:
        """Every project (used to offer a researcher the projects they may work in)."""
        ...


class StaticProjectDirectory:
    """A fixed set of projects: for tests, benchmarks and a single-project deployment."""

    def __init__(self, projects: Iterable[ProjectInfo]):
        self._projects = {p.id: p for p in projects}

    def get(self, project_id: str) -> ProjectInfo | None:
        return self._projects.get(project_id)

    def all(self) -> Iterable[ProjectInfo]:
        return list(self._projects.values())


def projects_of(directory: ProjectDirectory, user: str) -> list[ProjectInfo]:
    """Projects ``user`` may work in today."""
    return sorted((p for p in directory.all() if user in p.members), key=lambda p: p.id)
