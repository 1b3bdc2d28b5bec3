"""Audit records for hub actions that no spawner or authenticator hook sees: who stopped a server that is
not their own (the idle culler, an administrator, the policy enforcer), and refusals an auditor must see
(someone opening, starting or minting a token for another user's server; a form without its ``_xsrf``).

JupyterHub calls its tornado ``log_function`` once per finished request, with the handler; we keep
JupyterHub's own request log and add the audit record. Spawns and logins are recorded by the spawner and
the authenticator themselves. A stop asked for over the API (the owner, an administrator, the culler, the
enforcer) is recorded here, once, naming who asked; the spawner records only stops no request asked for
(:class:`RequestContext` tells it which). Stops take access away: their records go through the spool on a
full disk (``append_or_spool``). Refusals go through one ``RefusalAggregator`` per hub process,
flushed from a timer on the hub's event loop and at exit, so repeating them cannot flood the trail.
"""

from __future__ import annotations

import atexit
import contextvars
import json
import logging
import os
import re
from functools import cache

from jupyterhub.log import log_request
from tornado import httputil, ioloop, web

from audit.aggregate import RefusalAggregator, clip
from hub import runtime

log = logging.getLogger("enclave.audit_hooks")

SERVER_DELETE = re.compile(r"^/hub/api/users/(?P<user>[^/]+)/servers/(?P<server>[^/]+)/?$")
CULLER = "idle-culler"
"""The culler's JupyterHub service name; on the trail it is ``service:idle-culler`` (audit/vocabulary.py)."""
# Requests on someone else's server that the hub refuses, as (attempt, methods, path).
OTHERS_SERVER = [
    ("start", {"POST"}, re.compile(r"^/hub/api/users/(?P<user>[^/]+)/servers/(?P<server>[^/]*)/?$")),
    ("start", {"GET", "POST"}, re.compile(r"^/hub/spawn/(?P<user>[^/]+)(?:/(?P<server>[^/]+))?/?$")),
    ("token", {"POST"}, re.compile(r"^/hub/api/users/(?P<user>[^/]+)/tokens/?$")),
    ("open", {"GET"}, re.compile(r"^/hub/user/(?P<user>[^/]+)(?:/(?P<server>[^/]+))?(?:/.*)?$")),
]
TOKENS = re.compile(r"^/hub/api/users/[^/]+/tokens/?$")
OAUTH_AUTHORIZE = re.compile(r"^/hub/api/oauth2/authorize/?$")
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}


CURRENT_REQUEST: contextvars.ContextVar[httputil.HTTPServerRequest | None] = contextvars.ContextVar(
    "enclave_current_request", default=None
)


class RequestContext(web.OutputTransform):
    """Makes the request being served visible to code it runs, also in tasks it starts (a stop runs in one).

    Tornado builds transforms before the handler's task starts, so the task, and every task it creates,
    copies this value. Nothing is changed in the response."""

    def __init__(self, request: httputil.HTTPServerRequest) -> None:
        super().__init__(request)
        CURRENT_REQUEST.set(request)


def stop_requested_here(user: str, server: str, image_digest: str = "") -> bool:
    """True if the request being served is a DELETE of this server: audit_request records that stop, with
    the digest of the image that ran (handed over on the request: JupyterHub drops the spawner after a stop)."""
    request = CURRENT_REQUEST.get()
    if request is None or request.method != "DELETE":
        return False
    match = SERVER_DELETE.match(request.path)
    if not match or match["user"] != user or match["server"] != server:
        return False
    request.enclave_stopped_digest = image_digest
    return True


class AuditUnavailable(web.HTTPError):
    """An action that grants access was refused because its audit record could not be written first."""

    def __init__(self, what: str) -> None:
        message = (
            f"You cannot {what} right now: the enclave cannot write its audit trail (the disk is "
            "probably full), and nothing that grants access happens without its record. Your running "
            "work is not affected. Please tell the operator (enclave doctor names the problem)."
        )
        super().__init__(503, message)
        self.jupyterhub_message = message  # JupyterHub shows only messages marked as meant for users
        self.reason_text = message


def requester(handler):
    """The user or service a finished request was made by (also after logout cleared the cookie): the
    public ``current_user``, which raises if the request ended before JupyterHub looked its user up."""
    try:
        return handler.current_user
    except RuntimeError:
        return None


def audit_request(handler, state_dir: str) -> None:
    request = handler.request
    status = handler.get_status()
    who = requester(handler)
    path = request.path
    match = SERVER_DELETE.match(path) if request.method == "DELETE" and status in (202, 204) else None
    if match is None or who is None:
        return  # not a stop
    user = handler.find_user(match["user"])
    spawner = user.spawners.get(match["server"]) if user is not None else None
    digest = (
        getattr(request, "enclave_stopped_digest", "") or getattr(spawner, "image_digest", "") or "unknown"
    )
    target = f"{match['user']}/{match['server']}"
    log = runtime.audit_log(state_dir)
    actor = f"service:{who.name}" if getattr(who, "kind", "user") == "service" else who.name
    if getattr(who, "kind", "") == "service" and who.name == CULLER:
        log.append_or_spool(
            actor=actor,
            action="server.cull",
            project=match["server"],
            target=target,
            details={"image_digest": digest, "reason": "idle"},
        )
    elif getattr(who, "kind", "user") == "user" and who.name == match["user"]:
        log.append_or_spool(
            actor=who.name,
            action="server.stop",
            project=match["server"],
            target=target,
            details={"image_digest": digest},
        )
    else:  # an administrator or a service stopped someone else's server: name who did it
        log.append_or_spool(
            actor=actor,
            action="server.stop",
            project=match["server"],
            target=target,
            details={"image_digest": digest, "stopped_by": actor},
        )


@cache
def refusals(state_dir: str) -> RefusalAggregator:
    """The hub process's refusal aggregator: summaries every 5 s once a window closes, the rest at exit."""
    window = float(os.environ.get("ENCLAVE_AUDIT_REFUSAL_WINDOW") or 60)
    aggregator = RefusalAggregator(runtime.audit_log(state_dir), window=window)
    ioloop.PeriodicCallback(aggregator.flush_due, 5000).start()
    atexit.register(aggregator.flush_all)
    return aggregator


def current_user(handler):
    """The user or service the hub identified, or None (also when the request failed before that)."""
    try:
        return handler.current_user
    except RuntimeError:  # JupyterHub: prepare() did not get as far as identifying the requester
        return None


def refused_attempt(handler) -> tuple[str, str, str | None] | None:
    """(reason, route, owner/server) if this finished request is a refusal the trail must carry."""
    request, status = handler.request, handler.get_status()
    if status not in (400, 403, 404):
        return None
    if request.method not in SAFE_METHODS and status == 403 and not _has_xsrf(handler):
        return "xsrf_missing", f"{request.method} {clip(request.path)}", None
    who = current_user(handler)
    if who is None:
        return None
    if OAUTH_AUTHORIZE.match(request.path) and status == 403:
        client = clip(handler.get_argument("client_id", "?"), 120)
        return "open_others_server", f"{request.method} {clip(request.path)} client_id={client}", None
    if TOKENS.match(request.path) and request.method == "POST" and _asks_for_server_access(request.body):
        return "token_others_server", f"{request.method} {clip(request.path)} scopes=access:servers", None
    for attempt, methods, rx in OTHERS_SERVER:
        match = rx.match(request.path)
        if match and request.method in methods and match["user"] != who.name:
            server = f"{match['user']}/{match.groupdict().get('server') or ''}".rstrip("/")
            return f"{attempt}_others_server", f"{request.method} {clip(request.path)}", clip(server, 120)
    return None


def _asks_for_server_access(body: bytes) -> bool:
    """A refused token request naming a server scope: someone trying to reach a server not theirs."""
    try:
        scopes = json.loads(body or b"{}").get("scopes") or []
    except (ValueError, AttributeError):
        return False
    return any(isinstance(s, str) and s.startswith("access:servers") for s in scopes)


def _has_xsrf(handler) -> bool:
    """A token-authenticated request needs none; a browser form or API call carries one of these."""
    headers = handler.request.headers
    if headers.get("Authorization"):
        return True
    return bool(
        handler.get_argument("_xsrf", None) or headers.get("X-Xsrftoken") or headers.get("X-Csrftoken")
    )


def audit_refusal(handler, state_dir: str) -> None:
    found = refused_attempt(handler)
    if found is None:
        return
    reason, route, target = found
    who = current_user(handler)
    if who is not None:
        actor = who.name if getattr(who, "kind", "user") == "user" else f"service:{who.name}"
        how = "hub login"
    else:
        actor, how = f"address:{handler.request.remote_ip}", "source address: not logged in"
    project = target.split("/", 1)[1] if target and "/" in target else None
    refusals(state_dir).refuse(
        actor=actor,
        action="hub.refused",
        reason=reason,
        project=project or None,
        target=target,
        details={"route": route, "status": handler.get_status(), "identified_by": how},
    )


def audited_log_function(state_dir: str):
    """A tornado log_function: JupyterHub's request log, then the audit record if the request has one."""

    def log_function(handler):
        log_request(handler)
        try:
            audit_request(handler, state_dir)
            audit_refusal(handler, state_dir)
        except Exception:  # an audit failure must be loud, but must not turn a served request into a 500
            log.exception(
                "enclave: could not write the audit record for %s %s",
                handler.request.method,
                handler.request.path,
            )

    return log_function
