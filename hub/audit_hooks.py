"""Audit records for hub actions that no spawner or authenticator hook sees: who stopped a server that is
not their own (the idle culler, an administrator, the policy enforcer).

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
    match = SERVER_DELETE.match(path) if request.method == "DELETE" and status in (202, 204) else None
    if match is None or who is None or (getattr(who, "kind", "user") == "user" and who.name == match["user"]):
        return  # not a stop, or the owner's own (the spawner records that one)
    user = handler.find_user(match["user"])
    spawner = user.spawners.get(match["server"]) if user is not None else None
    digest = getattr(spawner, "image_digest", "") or "unknown"
    target = f"{match['user']}/{match['server']}"
    if getattr(who, "kind", "") == "service" and who.name == CULLER:
        runtime.audit_log(state_dir).append(actor=CULLER, action="server.cull", project=match["server"],
                                            target=target, details={"image_digest": digest, "reason": "idle"})
    else:  # an administrator or a service stopped someone else's server: name who did it
        runtime.audit_log(state_dir).append(actor=who.name, action="server.stop", project=match["server"],
                                            target=target, details={"image_digest": digest, "stopped_by": who.name})


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
