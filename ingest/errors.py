"""What can go wrong in an ingest, as exceptions whose message an administrator can act on.

Every message names the file, the table and column, or the field at fault. The CLI prints the message and
exits 1; nothing is published when any of these is raised.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class IngestError(Exception):
    """Base class: the ingest stopped and published nothing."""

    reason = "error"
    """Short machine-readable reason, recorded in the audit trail (``details.reason``)."""
    outcome = "error"
    """Audit outcome: ``error`` when input or environment is broken, ``denied`` when a privacy gate refused."""


class SpecError(IngestError):
    """The pseudonymization spec is malformed or contradicts the preset."""

    reason = "bad_spec"

    def __init__(self, problems: list[str] | str):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


class SourceError(IngestError):
    """The raw source does not match the spec: a missing table, an unknown column, an unreadable value."""

    reason = "bad_source"

    def __init__(self, problems: list[str] | str):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


class InvalidNameError(IngestError):
    """A project, dataset or version id that cannot safely become a path component."""

    reason = "bad_name"


class KeyFileError(IngestError):
    """The master key or its directory is missing, malformed or readable by others."""

    reason = "bad_key_file"


class RefusedError(IngestError):
    """A privacy gate refused publication. ``report`` says which gate and why (never raw identifier values)."""

    outcome = "denied"

    def __init__(self, message: str, reason: str, report: Mapping[str, Any] | None = None):
        super().__init__(message)
        self.reason = reason
        self.report = dict(report or {})


class AlreadyPublishedError(RefusedError):
    """A published dataset version is immutable: the same version cannot be published twice."""

    def __init__(self, message: str):
        super().__init__(message, "version_exists")
