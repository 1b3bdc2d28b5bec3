"""The export service's tornado application: the REST API, the server-rendered pages, and identity.

Identity comes from JupyterHub only (``HubOAuth``):

- browsers log in through the hub's OAuth and carry a cookie; their POSTs must carry the ``_xsrf``
  token of the page (JupyterHub's xsrf rules), or they are not authenticated at all;
- notebook containers and scripts send ``Authorization: token <token>``; the hub's answer for the
  token gives its scopes, and a server's token names its project (see ``permissions.Identity``).

Every operation runs on a small thread pool (the database and file checks are blocking), and every
refusal comes back as JSON ``{"status", "error", "message"}`` from the API, or as a plain error page.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import json
import logging
import os
import urllib.parse
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import jinja2
from jupyterhub._xsrf_utils import _needs_check_xsrf
from jupyterhub.services.auth import HubOAuth, HubOAuthCallbackHandler, HubOAuthenticated
from tornado import web
from traitlets import Unicode, default

from exports import inputs, preview, trail
from exports.domain import (
    UNDER_REVIEW_STATES,
    BadRequest,
    ExportError,
    FileRole,
    PermissionDenied,
    RequestStatus,
)
from exports.openapi import openapi_document
from exports.permissions import Identity, check_can_see_queue
from exports.projects import ProjectDirectory, projects_of
from exports.storage import RequestQuery
from exports.store import StoreCorrupted
from exports.views import request_view, summary_view
from exports.workflow import ExportWorkflow

log = logging.getLogger("exports.web")
HERE = Path(__file__).parent
MAX_BODY_BYTES = 1 << 20
MAX_PAGE = 200
CSP = (
    "default-src 'none'; img-src 'self'; style-src 'self'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}
XSRF_MAX_AGE_DAYS = 1
"""A page's form token outlives the page by this much; after that the form asks to reload."""


class EnclaveHubOAuth(HubOAuth):
    """HubOAuth with the enclave's cookie rules.

    The session cookie is SameSite=Strict: no other site can make a browser send it, on any method. The
    short-lived OAuth state cookie stays Lax, because the hub's redirect back to ``oauth_callback`` is a
    top-level navigation that must carry it. Both are Secure whenever the public URL is https."""

    public_url = Unicode(
        help="The site's public URL as browsers see it; https makes every cookie Secure. From "
        "ENCLAVE_PUBLIC_URL or JUPYTERHUB_PUBLIC_URL."
    ).tag(config=True)

    @default("public_url")
    def _public_url_default(self) -> str:
        return os.environ.get("ENCLAVE_PUBLIC_URL") or os.environ.get("JUPYTERHUB_PUBLIC_URL") or ""

    @default("cookie_options")
    def _cookie_options_default(self) -> dict[str, Any]:
        options: dict[str, Any] = {"samesite": "Lax"}
        if self.public_url.startswith("https:"):
            options["secure"] = True
        return options

    def set_cookie(self, handler: web.RequestHandler, access_token: str) -> None:
        lax = self.cookie_options
        self.cookie_options = {**lax, "samesite": "Strict"}  # tornado runs one handler at a time
        try:
            super().set_cookie(handler, access_token)
        finally:
            self.cookie_options = lax


class ExportHTTPError(web.HTTPError):
    """An ExportError on its way to the client, keeping its status, code and readable message."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(status, log_message=message.replace("%", "%%"))
        self.code = code
        self.message = message


def _to_http(exc: Exception) -> ExportHTTPError:
    if isinstance(exc, ExportError):
        return ExportHTTPError(exc.http_status, exc.code, str(exc))
    if isinstance(exc, StoreCorrupted):
        log.error("store verification failed: %s", exc)
        return ExportHTTPError(
            500, "store_corrupted", "stored bytes failed verification; tell the administrators"
        )
    raise exc


class SecurityHeaders(web.RequestHandler):
    """The same security headers on every answer: pages, API, errors, the default 404 and static files."""

    def set_default_headers(self) -> None:
        for name, value in SECURITY_HEADERS.items():
            self.set_header(name, value)


class BaseHandler(HubOAuthenticated, SecurityHeaders):
    identity: Identity | None = None
    _xsrf_refusal: str | None = None

    @property
    def hub_auth(self) -> HubOAuth:
        return self.settings["hub_auth"]

    @hub_auth.setter
    def hub_auth(self, value: HubOAuth) -> None:  # HubAuthenticated defines a setter; ours is fixed
        raise AttributeError("hub_auth comes from the application settings")

    def check_hub_user(self, model: dict[str, Any]) -> dict[str, Any]:
        """Every hub user is identified; what they may do is decided per action (exports.permissions)."""
        return model

    @property
    def workflow(self) -> ExportWorkflow:
        return self.settings["workflow"]

    @property
    def projects(self) -> ProjectDirectory:
        return self.settings["projects"]

    @property
    def base(self) -> str:
        return self.settings["base_url"]

    def set_default_headers(self) -> None:
        super().set_default_headers()
        self.set_header("Cache-Control", "no-store")

    # -- xsrf, bound to the OAuth session ------------------------------------------------------------
    # JupyterHub's rule compares the form's token with an ``_xsrf`` cookie, and takes the first valid
    # cookie it finds. Any page on the same host (another port counts) can plant its own validly signed
    # ``_xsrf`` on a narrower path, which then comes first: every POST of the victim fails until they
    # clear cookies. Here the cookie plays no part. The token is this session's id (the hash of the OAuth
    # token in the Strict session cookie), signed with the service's secret; a POST is accepted when its
    # token is a valid signature of the session it arrives with. A forger needs the secret.

    @property
    def xsrf_token(self) -> bytes:
        if not hasattr(self, "_session_xsrf"):
            signed = self.create_signed_value("_xsrf", self._xsrf_token_id)
            self._session_xsrf = base64.urlsafe_b64encode(signed).rstrip(b"=")
        return self._session_xsrf

    def check_xsrf_cookie(self) -> None:
        if not _needs_check_xsrf(self):
            return
        token = self.get_argument("_xsrf", None) or self.request.headers.get("X-XSRFToken")
        if not token:
            self._xsrf_refusal = "xsrf_missing"
            raise web.HTTPError(403, "'_xsrf' argument missing")
        if self._xsrf_session_of(token) != self._xsrf_token_id:
            self._xsrf_refusal = "xsrf_invalid"
            raise web.HTTPError(403, "'_xsrf' argument is not this session's")

    def _xsrf_session_of(self, token: str) -> bytes | None:
        try:
            raw = base64.urlsafe_b64decode(token.encode("ascii") + b"=" * (-len(token) % 4))
        except (UnicodeEncodeError, binascii.Error, ValueError):
            return None
        return web.decode_signed_value(
            self.settings["cookie_secret"], "_xsrf", raw, max_age_days=XSRF_MAX_AGE_DAYS
        )

    async def prepare(self) -> None:
        model = await self.hub_auth.get_user(self, sync=False)
        token = bool(getattr(self, "_token_authenticated", False))
        self.identity = Identity.from_hub_model(model, token_authenticated=token) if model else None
        self.current_user = model
        if model is None and self._xsrf_refusal:
            await self._refuse_forged_post(self._xsrf_refusal)

    async def _refuse_forged_post(self, reason: str) -> None:
        """A cookie-authenticated POST without this session's token: refuse it, and put it on the trail
        under the user whose browser sent it (the victim of a forged form, or a stale page)."""
        cookie = self.hub_auth._get_token_cookie(self)
        model = (
            await self.hub_auth.user_for_token(
                cookie, session_id=self.hub_auth.get_session_id(self), sync=False
            )
            if cookie
            else None
        )
        message = (
            f"{self.request.method} {self.request.path}: the form's _xsrf token is missing or not this "
            "session's (a stale page, or a form from another site); reload the page and try again"
        )
        if model is not None:
            who = Identity.from_hub_model(model, token_authenticated=False)
            refusal = PermissionDenied(message, reason)
            await self.run(self.workflow.refuse, who, f"{self.request.method} {self.request.path}", refusal)
        raise ExportHTTPError(403, "xsrf", message)

    def require(self) -> Identity:
        if self.identity is None:
            raise ExportHTTPError(
                403,
                "not_authenticated",
                "authentication required: log in through the hub, or send "
                "'Authorization: token <JUPYTERHUB_API_TOKEN>'",
            )
        return self.identity

    async def run(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run a blocking workflow call on the pool; translate its refusals into HTTP errors."""
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(
                self.settings["executor"], functools.partial(fn, *args, **kwargs)
            )
        except (ExportError, StoreCorrupted) as exc:
            raise _to_http(exc) from None

    def reviewers_required(self, project_id: str) -> int | None:
        project = self.projects.get(project_id)
        return project.reviewers_required if project else None

    def _error_parts(self, status_code: int, kwargs: dict[str, Any]) -> tuple[str, str]:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, ExportHTTPError):
            return exc.code, exc.message
        if isinstance(exc, web.HTTPError) and exc.log_message:
            return "http_error", exc.log_message % exc.args if exc.args else exc.log_message
        return "http_error", self._reason


class APIHandler(BaseHandler):
    def body(self) -> dict[str, Any]:
        if not self.request.body:
            return {}
        try:
            data = json.loads(self.request.body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ExportHTTPError(400, "bad_request", f"body: not valid JSON ({exc})") from None
        if not isinstance(data, dict):
            raise ExportHTTPError(400, "bad_request", "body: must be a JSON object")
        return data

    def send(self, data: Any, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.finish(json.dumps(data, indent=1, sort_keys=True))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        code, message = self._error_parts(status_code, kwargs)
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.finish(json.dumps({"status": status_code, "error": code, "message": message}))

    def view(self, request: Any) -> dict[str, Any]:
        identity = self.require()
        return request_view(request, identity, self.projects.get(request.project), self.base)


def _int_arg(handler: web.RequestHandler, name: str, default: int, low: int, high: int) -> int:
    raw = handler.get_argument(name, None)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ExportHTTPError(400, "bad_request", f"{name} {raw!r}: must be a whole number") from None
    if not low <= value <= high:
        raise ExportHTTPError(400, "bad_request", f"{name} {value}: must be between {low} and {high}")
    return value


def _statuses(raw: str | None) -> tuple[RequestStatus, ...]:
    if not raw:
        return ()
    try:
        return tuple(RequestStatus(s.strip().upper()) for s in raw.split(",") if s.strip())
    except ValueError:
        valid = ", ".join(s.value for s in RequestStatus)
        raise ExportHTTPError(400, "bad_request", f"status {raw!r}: use one or more of {valid}") from None


def list_query(handler: BaseHandler, identity: Identity, scope: str | None) -> RequestQuery:
    """The list a caller asked for: their own requests ("mine"), or the checkers' queue."""
    scope = scope or (
        "queue" if not identity.in_container and (identity.is_checker or identity.is_auditor) else "mine"
    )
    statuses = _statuses(handler.get_argument("status", None))
    offset = _int_arg(handler, "offset", 0, 0, 10**9)
    limit = _int_arg(handler, "limit", 50, 1, MAX_PAGE)
    newest = handler.get_argument("order", "oldest" if scope == "queue" else "newest") == "newest"
    if scope == "mine":
        project = identity.project if identity.in_container else handler.get_argument("project", None)
        return RequestQuery(statuses, project, identity.name, not newest, offset, limit)
    if scope != "queue":
        raise ExportHTTPError(400, "bad_request", f"scope {scope!r}: must be 'mine' or 'queue'")
    try:
        check_can_see_queue(identity)
    except ExportError as exc:
        if identity.in_container:  # a notebook asking for other projects' requests: on the trail
            handler.workflow.refused.refuse(**trail.queue_from_container(identity))
        raise _to_http(exc) from None
    return RequestQuery(
        statuses or tuple(UNDER_REVIEW_STATES),
        handler.get_argument("project", None) or None,
        None,
        not newest,
        offset,
        limit,
    )


# ------------------------------------------------------------------------------------------------
# REST API


class RequestsAPI(APIHandler):
    async def get(self) -> None:
        identity = self.require()
        query = list_query(self, identity, self.get_argument("scope", None))
        page = await self.run(self.workflow.list_requests, query)
        self.send(
            {
                "items": [summary_view(s, self.base, self.reviewers_required(s.project)) for s in page.items],
                "total": page.total,
                "offset": page.offset,
                "limit": page.limit,
            }
        )

    async def post(self) -> None:
        identity = self.require()
        request = await self.run(create_from_body, self.workflow, identity, self.body())
        self.send(self.view(request), status=201)


def create_from_body(workflow: ExportWorkflow, identity: Identity, body: dict[str, Any]) -> Any:
    """Create a request from an API body or a page form. A container's project is its own, always."""
    chosen = body.get("project")
    with workflow.refusals(identity, "export.create", None, chosen if isinstance(chosen, str) else None):
        if identity.in_container:
            if chosen not in (None, identity.project):
                raise BadRequest(
                    f"project: this container belongs to {identity.project}; it cannot be chosen"
                )
            chosen = identity.project
        if not isinstance(chosen, str) or not chosen:
            raise BadRequest("project: is required (one of your projects)")
        groups = inputs.parse_groups(body)
        claims = inputs.parse_provenance(body)
        submit = inputs.parse_bool(body, "submit", default=False)
    return workflow.create(identity, chosen, groups, claims, submit=submit)


class RequestAPI(APIHandler):
    async def get(self, request_id: str) -> None:
        identity = self.require()
        request = await self.run(self.workflow.get, identity, request_id)
        self.send(self.view(request))


class RequestActionAPI(APIHandler):
    """POST api/requests/<id>/<action> with a JSON body; the action names map onto the workflow."""

    async def post(self, request_id: str, action: str) -> None:
        identity = self.require()
        body = self.body()
        request = await self.run(perform, self.workflow, identity, request_id, action, body)
        self.send(self.view(request))


def _file_id(request: Any, body: dict[str, Any]) -> int:
    """A file named by ``file_id``, or by ``path`` (its current version)."""
    if "file_id" in body:
        try:
            return int(body["file_id"])
        except (TypeError, ValueError):
            raise BadRequest(f"file_id {body['file_id']!r}: must be a whole number") from None
    path = body.get("path")
    current = request.current_file(path) if isinstance(path, str) else None
    if current is None:
        raise BadRequest(
            f"request {request.id}: give 'file_id', or the 'path' of a current file (got {path!r})"
        )
    return current.id


def own_review(request: Any, identity: Identity) -> Any:
    """This checker's review of the request's current round, or None."""
    return next((r for r in request.reviews_in_round() if r.reviewer == identity.name), None)


def review_already_saved(
    workflow: ExportWorkflow, identity: Identity, request_id: str, body: dict[str, Any]
) -> bool:
    """True if this checker's review of the current round is saved with the verdict being posted again."""
    try:
        request = workflow._visible(identity, request_id)  # unrecorded: perform() records any refusal
        verdict = inputs.parse_verdict(body.get("verdict"))
    except Exception:  # noqa: BLE001 -- not visible, or a bad verdict: perform() refuses and records it
        return False
    mine = own_review(request, identity)
    return mine is not None and mine.verdict is verdict


def perform(
    workflow: ExportWorkflow, identity: Identity, request_id: str, action: str, body: dict[str, Any]
) -> Any:
    """One action on one request, from a JSON body or a form. Input errors are refused and audited."""
    with workflow.refusals(identity, f"export.{action}", request_id):
        # a request the caller may not see answers as one that does not exist, whatever the action
        workflow.get(identity, request_id)
        if action in ("files", "add_files"):
            return workflow.add_files(
                identity, request_id, inputs.parse_groups(body), inputs.parse_provenance(body)
            )
        if action == "remove_file":
            path = inputs.parse_comment(body.get("path"), "path")
            return workflow.remove_file(identity, request_id, path or "")
        if action in ("submit", "resubmit"):
            return workflow.submit(identity, request_id)
        if action == "withdraw":
            return workflow.withdraw(identity, request_id)
        if action in ("votes", "vote"):
            request = workflow.get(identity, request_id)
            return workflow.vote(
                identity,
                request_id,
                _file_id(request, body),
                inputs.parse_decision(body.get("decision")),
                inputs.parse_comment(body.get("comment"), "comment", required=False),
                inputs.parse_visibility(body.get("visibility")),
            )
        if action == "review":
            return workflow.submit_review(identity, request_id, inputs.parse_verdict(body.get("verdict")))
        if action == "return":
            return workflow.return_request(
                identity, request_id, inputs.parse_comment(body.get("reason"), "reason") or ""
            )
        if action in ("comments", "comment"):
            path = inputs.parse_comment(body.get("path"), "path", required=False) or None
            return workflow.comment(
                identity,
                request_id,
                inputs.parse_comment(body.get("text")) or "",
                inputs.parse_visibility(body.get("visibility")),
                path,
            )
        if action == "revoke":
            return workflow.revoke(
                identity, request_id, inputs.parse_comment(body.get("reason"), "reason") or ""
            )
        raise BadRequest(f"action {action!r}: unknown")


class FileContentAPI(APIHandler):
    """The frozen bytes of an image, for the request page. Other types are shown rendered, never raw."""

    async def get(self, request_id: str, file_id: str) -> None:
        identity = self.require()
        request = await self.run(self.workflow.get, identity, request_id)
        wanted = request.file_by_id(int(file_id))
        if wanted is not None and wanted.filetype != "png":  # refused before file_content records a view
            await trail.record(
                self.settings["executor"],
                self.workflow.refused,
                **trail.raw_content_refused(identity, request.project, request_id, file_id),
            )
            raise ExportHTTPError(
                404, "not_found", f"file {file_id}: only images are served raw; see the request page"
            )
        requested, data = await self.run(self.workflow.file_content, identity, request_id, int(file_id))
        self.set_header("Content-Type", "image/png")
        self.set_header("Content-Security-Policy", "default-src 'none'; sandbox")
        self.set_header("Content-Disposition", _disposition("inline", requested.name))
        self.finish(data)


class OpenAPIHandler(APIHandler):
    async def prepare(self) -> None:
        pass  # the API description is public

    def get(self) -> None:
        self.send(openapi_document(self.base))


class WhoAmIAPI(APIHandler):
    def get(self) -> None:
        identity = self.require()
        self.send(
            {
                "name": identity.name,
                "via": identity.via,
                "project": identity.project,
                "can_request": identity.can_request,
                "is_checker": identity.is_checker,
                "is_admin": identity.is_admin,
            }
        )


def _disposition(kind: str, filename: str) -> str:
    ascii_name = "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in filename) or "file"
    return f"{kind}; filename=\"{ascii_name}\"; filename*=UTF-8''{urllib.parse.quote(filename)}"


# ------------------------------------------------------------------------------------------------
# Pages


class SideDoorAPI(APIHandler):
    """A notebook server reports a refused way out (a download route in any spelling, terminals where the
    project has none, an oversized upload).

    The route is closed in the container whatever happens here; this only puts the attempt on the audit
    trail, under the identity the hub gives the server's token. Repeats from one server are counted into
    one record per kind and window (exports/trail.py), so a hostile notebook cannot flood the trail."""

    async def post(self) -> None:
        identity = self.require()
        if not identity.in_container:
            raise ExportHTTPError(
                403, "not_container", "only a notebook server's own token reports side doors"
            )
        entry = trail.sidedoor(identity, self.body())
        written = await trail.record(self.settings["executor"], self.workflow.refused, **entry)
        self.send({"recorded": True, "aggregated": not written}, status=201)


class PageHandler(BaseHandler):
    def render_page(self, template: str, **context: Any) -> None:
        env: jinja2.Environment = self.settings["templates"]
        context.update(base=self.base, identity=self.identity, xsrf=self.xsrf_token.decode("ascii"))
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.finish(env.get_template(template).render(**context))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        code, message = self._error_parts(status_code, kwargs)
        back = self.request.headers.get("Referer") or self.base
        env: jinja2.Environment = self.settings["templates"]
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.finish(
            env.get_template("error.html").render(
                base=self.base,
                identity=self.identity,
                status=status_code,
                code=code,
                message=message,
                back=back if back.startswith(self.base) else self.base,
                xsrf="",
            )
        )

    def page_identity(self) -> Identity | None:
        """The browser user, or None after redirecting an anonymous visitor to the hub's login."""
        if self.identity is None:
            self.redirect(self.get_login_url())
            return None
        return self.require()


class RootPage(PageHandler):
    def get(self) -> None:
        identity = self.page_identity()
        if identity is not None:
            target = (
                "queue"
                if (identity.is_checker or identity.is_auditor) and not identity.in_container
                else "mine"
            )
            self.redirect(self.base + target)


class QueuePage(PageHandler):
    async def get(self) -> None:
        identity = self.page_identity()
        if identity is None:
            return
        query = list_query(self, identity, "queue")
        page = await self.run(self.workflow.list_requests, query)
        items = [summary_view(s, self.base, self.reviewers_required(s.project)) for s in page.items]
        projects = sorted({p.id for p in self.projects.all()})
        self.render_page(
            "queue.html",
            items=items,
            page=page,
            statuses=[s.value for s in RequestStatus],
            selected=[s.value for s in query.statuses],
            project=query.project or "",
            projects=projects,
            order="oldest" if query.oldest_first else "newest",
        )


class MinePage(PageHandler):
    async def get(self) -> None:
        identity = self.page_identity()
        if identity is None:
            return
        query = list_query(self, identity, "mine")
        page = await self.run(self.workflow.list_requests, query)
        items = [summary_view(s, self.base, self.reviewers_required(s.project)) for s in page.items]
        mine = [p.id for p in projects_of(self.projects, identity.name)]
        self.render_page("mine.html", items=items, page=page, projects=mine)


class NewRequestForm(PageHandler):
    async def post(self) -> None:
        identity = self.require()
        body = form_body(self, "new")
        request = await self.run(create_from_body, self.workflow, identity, body)
        self.redirect(f"{self.base}requests/{request.id}")


def form_body(handler: web.RequestHandler, action: str) -> dict[str, Any]:
    """Turn a page form into the JSON body the API takes, so both paths share one parser."""
    arg = functools.partial(handler.get_body_argument, default=None)
    if action in ("new", "add_files"):
        paths = [
            p.strip().removeprefix("/workspace/") for p in (arg("paths") or "").splitlines() if p.strip()
        ]
        supporting = [
            p.strip().removeprefix("/workspace/") for p in (arg("supporting") or "").splitlines() if p.strip()
        ]
        body: dict[str, Any] = {
            "groups": [
                {
                    "name": (arg("group") or inputs.DEFAULT_GROUP).strip(),
                    "context": arg("context") if action == "new" or (arg("context") or "").strip() else None,
                    "controls": arg("controls")
                    if action == "new" or (arg("controls") or "").strip()
                    else None,
                    "files": [{"path": p} for p in paths]
                    + [{"path": p, "role": FileRole.SUPPORTING.value} for p in supporting],
                }
            ],
            "project": arg("project"),
            "submit": arg("submit") == "1",
        }
        return body
    fields = ("decision", "comment", "visibility", "verdict", "reason", "text", "path", "file_id")
    return {k: v for k in fields if (v := arg(k)) not in (None, "")}


class RequestPage(PageHandler):
    async def get(self, request_id: str) -> None:
        identity = self.page_identity()
        if identity is None:
            return
        request = await self.run(self.workflow.view, identity, request_id)
        view = request_view(request, identity, self.projects.get(request.project), self.base)
        previews = await self.run(self._previews, identity, request)
        self.render_page(
            "request.html", r=view, previews=previews, saved=self._saved_notice(identity, request)
        )

    def _saved_notice(self, identity: Identity, request: Any) -> str | None:
        """After a review form was posted again (the first answer was lost, e.g. to a service restart): say
        that the review is saved, when, and with which verdict, rather than leave the checker guessing."""
        if self.get_query_argument("saved", None) != "review":
            return None
        mine = own_review(request, identity)
        if mine is None:
            return None
        return f"Your review of round {mine.round} ({mine.verdict.value}) is saved; it was recorded at {mine.at}."

    def _previews(self, identity: Identity, request: Any) -> dict[int, dict[str, Any]]:
        """The first page of every current file; the rest are a link away (FilePage)."""
        shown = {}
        for f in request.current_files:
            data = b"" if f.filetype == "png" else self.workflow.quarantine.get(f.sha256)
            shown[f.id] = preview.file_preview(data, f.filetype, f.checks)
        return shown


class FilePage(PageHandler):
    """Any page of one frozen file, so checkers can see every row and line that can leave (audited)."""

    async def get(self, request_id: str, file_id: str) -> None:
        identity = self.page_identity()
        if identity is None:
            return
        page = _int_arg(self, "page", 1, 1, 10**6)
        requested, data = await self.run(self.workflow.file_content, identity, request_id, int(file_id))
        request = await self.run(self.workflow.get, identity, request_id)
        view = request_view(request, identity, self.projects.get(request.project), self.base)
        f = next(v for v in view["files"] + view["previous_versions"] if v["id"] == requested.id)
        p = preview.file_preview(data, requested.filetype, requested.checks, page)
        self.render_page("file.html", r=view, f=f, p=p)


class RequestFormAction(PageHandler):
    async def post(self, request_id: str, action: str) -> None:
        identity = self.require()
        body = form_body(self, action)
        if action == "review" and await self.run(
            review_already_saved, self.workflow, identity, request_id, body
        ):
            # The same review posted again: the first one was saved, its answer lost (a service restart
            # answers 503). Show the saved state instead of refusing a second review (issue 19).
            self.redirect(f"{self.base}requests/{request_id}?saved=review")
            return
        await self.run(perform, self.workflow, identity, request_id, action, body)
        anchor = {"vote": "#file-" + str(body.get("file_id", "")), "comment": "#comments"}.get(action, "")
        self.redirect(f"{self.base}requests/{request_id}{anchor}")


class DownloadHandler(PageHandler):
    """Released bytes, to the requester alone, from the export service page (through the proxy)."""

    async def get(self, request_id: str, file_id: str) -> None:
        identity = self.require()
        released, data = await self.run(self.workflow.download, identity, request_id, int(file_id))
        self.set_header("Content-Type", "application/octet-stream")
        self.set_header("Content-Disposition", _disposition("attachment", released.path.rsplit("/", 1)[-1]))
        self.set_header("X-Export-SHA256", released.sha256)
        self.finish(data)


class StaticFiles(SecurityHeaders, web.StaticFileHandler):
    """The stylesheet, with the same security headers as every page."""


class NotFoundPage(PageHandler):
    """Every path no route matches: an error page with the security headers, and no hub round trip."""

    async def prepare(self) -> None:
        raise ExportHTTPError(404, "not_found", f"{self.request.path}: no such page")


class OAuthCallback(HubOAuthCallbackHandler):
    @property
    def hub_auth(self) -> HubOAuth:
        return self.settings["hub_auth"]

    @hub_auth.setter
    def hub_auth(self, value: HubOAuth) -> None:
        raise AttributeError("hub_auth comes from the application settings")


# ------------------------------------------------------------------------------------------------


def make_app(
    workflow: ExportWorkflow,
    projects: ProjectDirectory,
    hub_auth: HubOAuth,
    *,
    base_url: str = "/services/exports/",
    cookie_secret: bytes,
    executor: ThreadPoolExecutor | None = None,
) -> web.Application:
    base = "/" + base_url.strip("/") + "/" if base_url.strip("/") else "/"
    templates = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    rid = r"([A-Za-z0-9_-]{1,40})"
    routes = [
        (base + r"api/requests", RequestsAPI),
        (base + rf"api/requests/{rid}", RequestAPI),
        (base + rf"api/requests/{rid}/files/(\d+)/content", FileContentAPI),
        (base + rf"api/requests/{rid}/([a-z_]+)", RequestActionAPI),
        (base + r"api/openapi.json", OpenAPIHandler),
        (base + r"api/whoami", WhoAmIAPI),
        (base + r"api/v1/sidedoor", SideDoorAPI),
        (base + r"oauth_callback", OAuthCallback),
        (base + r"queue", QueuePage),
        (base + r"mine", MinePage),
        (base + r"requests/new", NewRequestForm),
        (base + rf"requests/{rid}", RequestPage),
        (base + rf"requests/{rid}/download/(\d+)", DownloadHandler),
        (base + rf"requests/{rid}/files/(\d+)", FilePage),
        (base + rf"requests/{rid}/([a-z_]+)", RequestFormAction),
        (base + r"static/(.*)", StaticFiles, {"path": str(HERE / "static")}),
        (base.rstrip("/") or "/", RootPage),
        (base, RootPage),
    ]
    return web.Application(
        routes,
        workflow=workflow,
        projects=projects,
        hub_auth=hub_auth,
        base_url=base,
        templates=templates,
        executor=executor or ThreadPoolExecutor(max_workers=4, thread_name_prefix="exports"),
        cookie_secret=cookie_secret,
        xsrf_cookies=False,  # HubOAuth checks _xsrf (BaseHandler.check_xsrf_cookie) before it accepts a cookie
        default_handler_class=NotFoundPage,
    )
