"""Test doubles and factories for the export service (used by tests/unit/test_exports*.py and bench/).

In the manner of jupyterhub's ``mocking.py``: the fakes are real subclasses of the production classes
(``FakeHubOAuth`` is a ``HubOAuth`` that knows its tokens instead of asking a hub), and the factories
drive requests through the real workflow rather than writing rows behind its back.

- ``make_env(tmp_path)``      a workflow on real SQLite and real files: projects demo-cardio (alice,
                               erin) and demo-oncology (bob), each with a workspace directory
- ``researcher/checker/admin`` identities as the hub would describe them
- ``create_request_at_status`` a request moved through real operations to any status
- ``FakeHubOAuth``             token -> hub user model, for the tornado app
- ``serve(env)``               the real app on a loopback ephemeral port, in a background thread
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from exports.domain import FileDecision, RequestStatus, ReviewVerdict
from exports.inputs import FileInput, GroupInput
from exports.permissions import AUDIT_SCOPE, REQUEST_SCOPE, REVIEW_SCOPE, Identity
from exports.projects import ProjectInfo, StaticProjectDirectory, Thresholds
from exports.storage import SQLStorage
from exports.web import EnclaveHubOAuth
from exports.workflow import ExportWorkflow

SAFE_CSV = "sex,age_band,n\nF,40-49,120\nM,40-49,135\nF,50-59,140\nM,50-59,150\n"
S = RequestStatus


class RecordingAudit:
    """Stands in for audit.AuditLog: keeps every appended record in a list."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def append(self, **kwargs: Any) -> dict[str, Any]:
        self.records.append(kwargs)
        return kwargs

    def actions(self) -> list[str]:
        return [r["action"] for r in self.records]

    def refusals(self) -> list[dict[str, Any]]:
        return [r for r in self.records if r["action"] == "export.refused"]


@dataclass
class Env:
    root: Path
    workflow: ExportWorkflow
    storage: SQLStorage
    audit: RecordingAudit
    projects: StaticProjectDirectory
    workspaces: dict[str, Path] = field(default_factory=dict)

    def write(self, relpath: str, content: str | bytes, project: str = "demo-cardio") -> Path:
        path = self.workspaces[project] / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)
        return path


def make_env(
    tmp_path: Path,
    *,
    reviewers_required: int = 2,
    thresholds: Thresholds | None = None,
    max_file_bytes: int = 1 << 20,
    db_url: str | None = None,
) -> Env:
    workspaces = {p: tmp_path / "workspaces" / p for p in ("demo-cardio", "demo-oncology")}
    for path in workspaces.values():
        path.mkdir(parents=True, exist_ok=True)
    members = {"demo-cardio": frozenset({"alice", "erin"}), "demo-oncology": frozenset({"bob"})}
    projects = StaticProjectDirectory(
        ProjectInfo(
            p, members[p], workspaces[p], reviewers_required, thresholds or Thresholds(), max_file_bytes
        )
        for p in workspaces
    )
    state = tmp_path / "state"
    storage = SQLStorage.open(db_url or f"sqlite:///{state / 'exports' / 'exports.sqlite'}")
    audit = RecordingAudit()
    workflow = ExportWorkflow.at(state / "exports", storage, projects, audit)
    return Env(tmp_path, workflow, storage, audit, projects, workspaces)


def researcher(
    name: str = "alice", project: str | None = "demo-cardio", *, in_container: bool = True
) -> Identity:
    """A researcher calling from their project's notebook container (the server's token), or from a
    browser when ``in_container`` is false."""
    if in_container and project:
        scopes = frozenset(
            {REQUEST_SCOPE, f"access:servers!server={name}/{project}", f"users:activity!user={name}"}
        )
        return Identity(name, scopes, via="server", project=project)
    return Identity(name, frozenset({REQUEST_SCOPE}), via="cookie")


def checker(name: str = "carol") -> Identity:
    return Identity(name, frozenset({REVIEW_SCOPE}), via="cookie")


def admin(name: str = "adam") -> Identity:
    return Identity(name, frozenset({AUDIT_SCOPE}), via="cookie")


def hub_model(identity: Identity) -> dict[str, Any]:
    """What the hub's /api/user would answer for this identity's token."""
    return {
        "kind": "user",
        "name": identity.name,
        "admin": identity.hub_admin,
        "groups": [],
        "scopes": sorted(identity.scopes),
    }


def group(
    paths: list[str],
    name: str = "main",
    context: str = "Table 1 of the cohort paper",
    controls: str = "counts below 10 suppressed",
    **file_kw: Any,
) -> GroupInput:
    return GroupInput(
        name,
        context,
        controls,
        tuple(FileInput(p, label=f"files[{i}].path", **file_kw) for i, p in enumerate(paths)),
    )


def create_request_at_status(
    env: Env,
    status: RequestStatus,
    *,
    author: str = "alice",
    project: str = "demo-cardio",
    files: dict[str, str | bytes] | None = None,
    reviewers: tuple[str, ...] = ("carol", "dave"),
) -> str:
    """A request that reached ``status`` through the real operations. Returns its id."""
    files = files if files is not None else {"results/table1.csv": SAFE_CSV}
    for path, content in files.items():
        env.write(path, content, project)
    who = researcher(author, project)
    wf = env.workflow
    request = wf.create(who, project, [group(list(files))], submit=status is not S.PENDING)
    rid = request.id
    if status in (S.PENDING, S.SUBMITTED):
        return rid
    if status is S.WITHDRAWN:
        wf.withdraw(who, rid)
        return rid
    if status is S.RETURNED:
        wf.return_request(checker(reviewers[0]), rid, "please explain the age bands")
        return rid
    decision = FileDecision.APPROVED
    verdict = ReviewVerdict.REJECT if status is S.REJECTED else ReviewVerdict.VOTES
    needed = env.projects.get(project).reviewers_required  # type: ignore[union-attr]
    for i, name in enumerate(reviewers[:needed]):
        for f in wf.get(checker(name), rid).output_files:
            wf.vote(checker(name), rid, f.id, decision)
        wf.submit_review(checker(name), rid, verdict)
        if status is S.PARTIALLY_REVIEWED and i == 0:
            return rid
    if status is S.APPROVED:
        raise ValueError("APPROVED is transient: the release follows at once (use release_pending tests)")
    if status is S.REVOKED:
        wf.revoke(checker(reviewers[0]), rid, "released by mistake")
    return rid


class FakeHubOAuth(EnclaveHubOAuth):
    """The service's HubOAuth that knows its tokens instead of asking a hub: token -> user model (or None)."""

    def __init__(self, tokens: dict[str, dict[str, Any]] | None = None, **kwargs: Any):
        kwargs.setdefault("api_token", "service-token")
        kwargs.setdefault("oauth_client_id", "service-exports")
        kwargs.setdefault("base_url", "/services/exports/")
        kwargs.setdefault("api_url", "http://127.0.0.1:9/hub/api")
        kwargs.setdefault("oauth_redirect_uri", "http://127.0.0.1/services/exports/oauth_callback")
        kwargs.setdefault("cache_max_age", 0)
        super().__init__(**kwargs)
        self.tokens = dict(tokens or {})

    async def _check_hub_authorization(
        self, url: str, api_token: str, cache_key: str | None = None, use_cache: bool = True
    ) -> dict[str, Any] | None:
        model = self.tokens.get(api_token)
        return dict(model) if model is not None else None


@dataclass
class Served:
    url: str
    hub_auth: FakeHubOAuth
    cookie_secret: bytes

    def token(self, identity: Identity) -> str:
        """A hub token for ``identity``: a notebook server's own token when it is in a container."""
        token = f"tok-{identity.name}-{identity.via}-{identity.project or ''}"
        self.hub_auth.tokens[token] = hub_model(identity)
        return token

    def browser(self, identity: Identity) -> Any:
        """A requests session holding the OAuth cookie the hub's login would have left."""
        import requests
        from tornado.web import create_signed_value

        session = requests.Session()
        session.headers["Sec-Fetch-Mode"] = (
            "navigate"  # as a browser sends it; JupyterHub's xsrf rules use it
        )
        cookie = create_signed_value(self.cookie_secret, self.hub_auth.cookie_name, self.token(identity))
        session.cookies.set(self.hub_auth.cookie_name, cookie.decode(), path=self.hub_auth.base_url)
        return session


@contextlib.contextmanager
def serve(env: Env, base_url: str = "/services/exports/") -> Iterator[Served]:
    """Run the app on 127.0.0.1 (never another address) on a free port until the block ends."""
    from tornado.httpserver import HTTPServer
    from tornado.ioloop import IOLoop
    from tornado.netutil import bind_sockets

    from exports.web import MAX_BODY_BYTES, make_app

    hub_auth = FakeHubOAuth(base_url=base_url)
    secret = b"test-cookie-secret-0123456789abcdef"
    started = threading.Event()
    state: dict[str, Any] = {}

    def run() -> None:
        asyncio.set_event_loop(asyncio.new_event_loop())
        loop = IOLoop.current()
        app = make_app(env.workflow, env.projects, hub_auth, base_url=base_url, cookie_secret=secret)
        server = HTTPServer(app, max_body_size=MAX_BODY_BYTES)
        sock = bind_sockets(0, "127.0.0.1")[0]
        server.add_sockets([sock])
        state.update(loop=loop, server=server, port=sock.getsockname()[1], app=app)
        started.set()
        loop.start()
        server.stop()
        app.settings["executor"].shutdown(wait=True)
        loop.close(all_fds=True)

    thread = threading.Thread(target=run, name="exports-test-server", daemon=True)
    thread.start()
    if not started.wait(30):
        raise RuntimeError("the export service did not start")
    try:
        yield Served(f"http://127.0.0.1:{state['port']}{base_url}", hub_auth, secret)
    finally:
        state["loop"].add_callback(state["loop"].stop)
        thread.join(30)
