"""Audit records for hub actions that no spawner or authenticator hook sees: culls.

JupyterHub calls its tornado ``log_function`` once per finished request, with the handler; we keep
JupyterHub's own request log and add the audit record. Spawns, stops and logins are recorded by the
spawner and the authenticator themselves.
"""

from __future__ import annotations

import logging
import re

from jupyterhub.log import log_request

from hub import runtime

log = logging.getLogger("enclave.audit_hooks")

SERVER_DELETE = re.compile(r"^/hub/api/users/(?P<user>[^/]+)/servers/(?P<server>[^/]+)/?$")
CULLER = "idle-culler"


def requester(handler):
    """The user or service a finished request was made by (also after logout cleared the cookie)."""
    return getattr(handler, "_jupyterhub_user", None)


def audit_request(handler, state_dir: str) -> None:
    request = handler.request
    status = handler.get_status()
    who = requester(handler)
    path = request.path
    if request.method == "DELETE" and status in (202, 204) and who is not None and getattr(who, "kind", "") == "service":
        match = SERVER_DELETE.match(path)
        if match and who.name == CULLER:
            user = handler.find_user(match["user"])
            spawner = user.spawners.get(match["server"]) if user is not None else None
            runtime.audit_log(state_dir).append(
                actor=CULLER, action="server.cull", project=match["server"],
                target=f"{match['user']}/{match['server']}",
                details={"image_digest": getattr(spawner, "image_digest", "") or "unknown", "reason": "idle"},
            )


def audited_log_function(state_dir: str):
    """A tornado log_function: JupyterHub's request log, then the audit record if the request has one."""

    def log_function(handler):
        log_request(handler)
        try:
            audit_request(handler, state_dir)
        except Exception:  # an audit failure must be loud, but must not turn a served request into a 500
            log.exception("enclave: could not write the audit record for %s %s",
                          handler.request.method, handler.request.path)

    return log_function
