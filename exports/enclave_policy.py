"""The export service's view of the enclave's project policy (hub/policy.py).

Read at every request through the hub's PolicyStore, so a membership change applies to exports as soon
as it applies to notebooks, and an invalid policy edit leaves the last good policy in force.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path

from exports.canonical import Limits
from exports.projects import ProjectInfo, Thresholds
from ground.access import work_refusal
from ground.paths import EnclavePaths
from hub.policy import PolicyStore, Project


def project_info(
    project: Project, paths: EnclavePaths, today: date, canonical: Limits | None = None
) -> ProjectInfo:
    listed = frozenset(m.uid for m in project.members)
    return ProjectInfo(
        id=project.id,
        # accreditation is the request scope the hub grants to researchers only (ground.access)
        members=frozenset(uid for uid in listed if work_refusal(uid, None, project, today) is None),
        listed=listed,
        workspace=paths.workspace(project.id),
        reviewers_required=project.reviewers_required,
        thresholds=Thresholds(**project.thresholds),
        max_file_bytes=project.max_file_bytes,
        canonical=canonical or Limits(),
    )


class PolicyProjects:
    """exports.projects.ProjectDirectory backed by the policy files."""

    def __init__(self, state_dir: Path, policy_dir: Path):
        self.paths = EnclavePaths(Path(state_dir), Path(policy_dir))
        self.store = PolicyStore(self.paths.policy_dir, self.paths.state_dir)

    def get(self, project_id: str) -> ProjectInfo | None:
        policy = self.store.current()
        project = policy.projects.get(project_id)
        limits = Limits.from_mapping(policy.site.canonical_outputs)
        return None if project is None else project_info(project, self.paths, date.today(), limits)

    def all(self) -> list[ProjectInfo]:
        today, policy = date.today(), self.store.current()
        limits = Limits.from_mapping(policy.site.canonical_outputs)
        return [project_info(p, self.paths, today, limits) for p in policy.projects.values()]


def project_directory(state_dir, policy_dir) -> PolicyProjects:
    return PolicyProjects(state_dir, policy_dir)
