"""The one rule "may this user work in this project today", and the directory groups it rests on.

Three places ask it: the spawner before a server starts (hub/spawner.py), the enforcer about every
running server (hub/enforcer.py), and the export service about every request it is asked to create or
download (exports/enclave_policy.py). Each words its refusal for its own reader, from the same reason.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import date
from enum import StrEnum
from typing import Protocol

RESEARCHERS = "enclave-researchers"
"""Accreditation: only members of this directory group may work in any project."""
CHECKERS = "enclave-checkers"
ADMINS = "enclave-admins"
ENCLAVE_GROUPS = (RESEARCHERS, CHECKERS, ADMINS)


class Agreement(Protocol):
    """A project's data-access agreement (hub.policy.Project): who may work in it, from when to when."""

    id: str

    def access_refusal(self, uid: str, today: date) -> str | None: ...


class Reason(StrEnum):
    NO_PROJECT = "no_project"
    NOT_ACCREDITED = "not_accredited"
    AGREEMENT = "agreement"
    """The project is not active, not started, expired, or the user is not (or no longer) a member."""


@dataclass(frozen=True)
class WorkRefusal:
    reason: Reason
    message: str


def work_refusal(
    uid: str, groups: Collection[str] | None, project: Agreement | None, today: date
) -> WorkRefusal | None:
    """Why ``uid`` may not work in ``project`` today, or None if they may.

    ``groups`` are the user's directory groups. None means the caller's credential already carries the
    accreditation: the export service's request scope is granted by the hub to RESEARCHERS only
    (hub/auth.py roles), so there the agreement is what remains to check."""
    if project is None:
        return WorkRefusal(Reason.NO_PROJECT, "there is no such project")
    if groups is not None and RESEARCHERS not in groups:
        return WorkRefusal(Reason.NOT_ACCREDITED, f"{uid} is not an accredited researcher ({RESEARCHERS})")
    why = project.access_refusal(uid, today)
    return WorkRefusal(Reason.AGREEMENT, why) if why else None
