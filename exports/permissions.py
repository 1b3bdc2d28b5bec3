"""Who may do what to an export request, as pure functions that raise PermissionDenied with a reason.

Roles come from JupyterHub scopes on the caller's token (see ``Identity.from_hub_model``):

- ``custom:exports:request``  researchers: create, revise, submit, withdraw their own requests
- ``custom:exports:review``   output checkers: vote, review, return, comment, revoke
- ``custom:exports:audit``    administrators: read everything, revoke; never vote (separation of duties)

A call from inside a notebook container carries the server's own token. Its user and project come only
from that token's ``access:servers!server=<user>/<project>`` scope, never from request parameters.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from exports.domain import ExportRequest, PermissionDenied, RequestStatus
from exports.projects import ProjectInfo

REQUEST_SCOPE = "custom:exports:request"
REVIEW_SCOPE = "custom:exports:review"
AUDIT_SCOPE = "custom:exports:audit"
SERVER_SCOPE_PREFIX = "access:servers!server="


@dataclass(frozen=True)
class Identity:
    """The authenticated caller of one HTTP request."""

    name: str
    scopes: frozenset[str]
    via: str
    """"cookie" (a browser, after OAuth), "token" (an API token) or "server" (a notebook container)."""
    hub_admin: bool = False
    project: str | None = None
    """Only for ``via == "server"``: the project whose server's token authenticated the call."""

    @classmethod
    def from_hub_model(cls, model: Mapping[str, Any], *, token_authenticated: bool) -> Identity:
        """Build an identity from the hub's /api/user answer. A token whose scopes name exactly one of
        its owner's servers is that server's token: the caller is inside that project's container."""
        name = str(model["name"])
        scopes = frozenset(str(s) for s in model.get("scopes", ()))
        admin = bool(model.get("admin", False))
        if model.get("kind", "user") != "user":
            return cls(name=name, scopes=scopes, via="token", hub_admin=admin)
        servers = server_names(name, scopes)
        if token_authenticated and len(servers) == 1:
            return cls(name=name, scopes=scopes, via="server", hub_admin=admin, project=servers[0])
        return cls(
            name=name, scopes=scopes, via="token" if token_authenticated else "cookie", hub_admin=admin
        )

    @property
    def can_request(self) -> bool:
        return REQUEST_SCOPE in self.scopes

    @property
    def is_checker(self) -> bool:
        return REVIEW_SCOPE in self.scopes

    @property
    def is_auditor(self) -> bool:
        return AUDIT_SCOPE in self.scopes

    @property
    def is_admin(self) -> bool:
        """Admins read and revoke but never vote; a hub admin counts as one whatever their scopes."""
        return self.is_auditor or self.hub_admin

    @property
    def in_container(self) -> bool:
        return self.via == "server"


def server_names(user: str, scopes: Iterable[str]) -> list[str]:
    """Names of ``user``'s servers that the scopes grant access to (``access:servers!server=user/name``)."""
    names = set()
    for scope in scopes:
        if scope.startswith(SERVER_SCOPE_PREFIX):
            owner, _, server = scope[len(SERVER_SCOPE_PREFIX) :].partition("/")
            if owner == user and server:
                names.add(server)
    return sorted(names)


def _deny(identity: Identity, what: str, why: str, reason: str) -> PermissionDenied:
    return PermissionDenied(f"{identity.name} cannot {what}: {why}", reason)


def check_can_request(identity: Identity, project_id: str, project: ProjectInfo | None) -> None:
    """Create a request in ``project_id``: an accredited researcher who is a member of it."""
    what = f"create an export request in project {project_id}"
    if not identity.can_request:
        why = f"the token lacks scope {REQUEST_SCOPE}"
        if identity.in_container:
            why += " (the hub must grant it to researchers and list it in Spawner.server_token_scopes)"
        raise _deny(identity, what, why, "not_accredited")
    if identity.in_container and identity.project != project_id:
        raise _deny(identity, what, f"this container belongs to project {identity.project}", "wrong_project")
    if project is None:
        raise _deny(identity, what, "there is no such project", "no_such_project")
    if identity.name not in project.members:
        why = f"{identity.name} is not a member of project {project_id}" + (
            "" if identity.name not in project.listed else " any more (or the project is not active)"
        )
        raise _deny(identity, what, why, "not_member")


def check_is_author(
    identity: Identity, request: ExportRequest, project: ProjectInfo | None, what: str
) -> None:
    """Change one's own request: the author, still a member, and from the right project's container."""
    what = f"{what} request {request.id}"
    if identity.name != request.author:
        raise _deny(identity, what, f"only its author, {request.author}, may", "not_author")
    check_can_request(identity, request.project, project)


def check_can_view(identity: Identity, request: ExportRequest) -> None:
    """See a request: its author (from their browser, or from a container of its project), any output
    checker, or an admin."""
    if identity.name == request.author and (not identity.in_container or identity.project == request.project):
        return
    if not identity.in_container and (identity.is_checker or identity.is_auditor):
        return
    raise PermissionDenied(f"{identity.name} may not see request {request.id}", "not_allowed")


def check_can_review(identity: Identity, request: ExportRequest, project: ProjectInfo | None) -> None:
    """Vote on, review, return or comment as a checker on a request: an output checker who is not an
    admin, did not make the request and is not a member of its project."""
    what = f"review request {request.id}"
    if identity.in_container:
        raise _deny(
            identity, what, "reviews are not accepted from inside a notebook container", "in_container"
        )
    if identity.is_admin:
        raise _deny(identity, what, "administrators cannot vote (separation of duties)", "admin_cannot_vote")
    if not identity.is_checker:
        raise _deny(
            identity, what, f"the token lacks scope {REVIEW_SCOPE} (output checkers only)", "not_checker"
        )
    if identity.name == request.author:
        raise _deny(identity, what, "nobody may review their own request", "self_review")
    if project is None:
        raise _deny(identity, what, f"project {request.project} is not in the policy", "no_such_project")
    if identity.name in project.conflicted:
        raise _deny(
            identity, what, f"{identity.name} is a member of project {request.project}", "member_of_project"
        )


def check_can_revoke(identity: Identity, request: ExportRequest) -> None:
    """Revoke a release: an output checker or an admin, from a browser or API token."""
    if identity.in_container or not (identity.is_checker or identity.is_auditor):
        raise _deny(
            identity, f"revoke request {request.id}", "only output checkers and admins may", "not_checker"
        )


def check_can_download(identity: Identity, request: ExportRequest, project: ProjectInfo | None) -> None:
    """Download released bytes: only the requester, still a member, from the export service page in a
    browser (never with an API token, so never from inside a container), only while RELEASED."""
    what = f"download from request {request.id}"
    if identity.via != "cookie":
        why = "downloads are only possible from the export service page (a browser session through the hub)"
        raise _deny(identity, what, why, "not_browser")
    if identity.name != request.author:
        raise _deny(
            identity, what, f"released files go to the requester, {request.author}, alone", "not_requester"
        )
    if project is None or identity.name not in project.members:
        raise _deny(
            identity,
            what,
            f"{identity.name} is no longer a member of project {request.project}",
            "not_member",
        )
    if request.status is not RequestStatus.RELEASED:
        raise _deny(identity, what, f"the request is {request.status.value}, not RELEASED", "not_released")


def check_can_see_queue(identity: Identity) -> None:
    if identity.in_container or not (identity.is_checker or identity.is_auditor):
        raise PermissionDenied(
            f"{identity.name} may not see the review queue: output checkers and admins only", "not_checker"
        )
