"""``python -m exports.service``: run the export review service as a JupyterHub-managed service.

Configuration comes from the environment. The hub sets the JUPYTERHUB_* variables for a managed
service; the enclave adds its own:

    ENCLAVE_STATE_DIR          state directory (default /var/lib/enclave); stores live in <state>/exports
    ENCLAVE_POLICY_DIR         policy directory, passed to the project directory factory
    ENCLAVE_EXPORTS_DB_URL     SQLAlchemy URL (default sqlite:///<state>/exports/exports.sqlite);
                               postgresql+psycopg://... works too (install the driver)
    ENCLAVE_EXPORTS_BIND       host:port to listen on (default 127.0.0.1:8082); containers reach the
                               service at their network gateway, so the hub sets e.g. 0.0.0.0:8082
    ENCLAVE_EXPORTS_PROJECTS   "module:function" returning a ProjectDirectory, called with
                               (state_dir, policy_dir) (default exports.enclave_policy:project_directory)
    ENCLAVE_EXPORTS_REFUSAL_WINDOW  seconds over which repeated refusals from one caller become one
                               record with a count (default ENCLAVE_AUDIT_REFUSAL_WINDOW, else 60)
    ENCLAVE_PUBLIC_URL         the site's public URL; https makes the service's cookies Secure

The service refuses to start without the audit log: nothing may leave without leaving a trace.
"""

from __future__ import annotations

import importlib
import logging
import os
import secrets
import signal
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tornado import ioloop, web
from tornado.httpserver import HTTPServer

from exports.projects import ProjectDirectory
from exports.provenance import HubImageDigests
from exports.storage import SQLStorage, default_db_url
from exports.web import MAX_BODY_BYTES, make_app
from exports.workflow import AuditSink, ExportWorkflow, ProvenanceSource

log = logging.getLogger("exports")
DEFAULT_PROJECTS_FACTORY = "exports.enclave_policy:project_directory"
AUDIT_RETRY_SECONDS = 10
REFUSAL_FLUSH_SECONDS = 10
RELEASE_RETRY_SECONDS = 60


class ConfigError(Exception):
    pass


@dataclass(frozen=True)
class ServiceConfig:
    state_dir: Path
    policy_dir: Path
    db_url: str
    host: str
    port: int
    base_url: str
    projects_factory: str
    refusal_window: float = 60.0

    @property
    def exports_dir(self) -> Path:
        return self.state_dir / "exports"

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> ServiceConfig:
        env = dict(os.environ if env is None else env)
        state = Path(env.get("ENCLAVE_STATE_DIR") or "/var/lib/enclave").resolve()
        policy = Path(env.get("ENCLAVE_POLICY_DIR") or "policies").resolve()
        host, port = _bind(env.get("ENCLAVE_EXPORTS_BIND") or "127.0.0.1:8082")
        return cls(
            state_dir=state,
            policy_dir=policy,
            db_url=env.get("ENCLAVE_EXPORTS_DB_URL") or default_db_url(state),
            host=host,
            port=port,
            base_url=env.get("JUPYTERHUB_SERVICE_PREFIX") or "/services/exports/",
            projects_factory=env.get("ENCLAVE_EXPORTS_PROJECTS") or DEFAULT_PROJECTS_FACTORY,
            # the hub's window applies when the service has none of its own (side-door reports used to
            # be aggregated under it)
            refusal_window=_seconds(
                env, "ENCLAVE_EXPORTS_REFUSAL_WINDOW", _seconds(env, "ENCLAVE_AUDIT_REFUSAL_WINDOW", 60.0)
            ),
        )


def _seconds(env: dict[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 < value <= 86400:
        raise ConfigError(f"{name} {raw!r}: expected a number of seconds between 0 and 86400")
    return value


def _bind(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"ENCLAVE_EXPORTS_BIND {value!r}: expected host:port, e.g. 0.0.0.0:8082")
    return host.strip("[]") or "0.0.0.0", int(port)


def load_factory(spec: str) -> Callable[..., Any]:
    module_name, _, attr = spec.partition(":")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"ENCLAVE_EXPORTS_PROJECTS {spec!r}: cannot load it ({exc})") from None


def open_audit_log(state_dir: Path) -> AuditSink:
    try:
        from audit import AuditLog
    except ImportError as exc:
        raise ConfigError(f"the audit log is not available ({exc}); refusing to run without it") from None
    return AuditLog.open(state_dir)


def build_workflow(
    config: ServiceConfig,
    projects: ProjectDirectory,
    sink: AuditSink,
    provenance: ProvenanceSource | None = None,
) -> ExportWorkflow:
    config.exports_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    storage = SQLStorage.open(config.db_url)
    return ExportWorkflow.at(
        config.exports_dir, storage, projects, sink, provenance, refusal_window=config.refusal_window
    )


def hub_oauth() -> Any:
    """HubOAuth configured from the JUPYTERHUB_* environment the hub gives a managed service."""
    from exports.web import EnclaveHubOAuth

    # A short cache: a stopped server's token, or the token of a user the directory no longer accredits
    # (deleted by hub/enforcer.py within 15 s), stops working here within 20 s more; well inside a minute.
    return EnclaveHubOAuth(cache_max_age=20, allow_token_in_url=False)


def start(
    config: ServiceConfig, workflow: ExportWorkflow, hub_auth: Any, executor: ThreadPoolExecutor | None = None
) -> tuple[web.Application, HTTPServer]:
    """Recover, then listen. Returns the app and server; the caller runs the IOLoop."""
    workflow.deliver_audit()
    released = workflow.release_pending()
    if released:
        log.info("released after restart: %s", ", ".join(released))
    executor = executor or ThreadPoolExecutor(max_workers=4, thread_name_prefix="exports")
    app = make_app(
        workflow,
        workflow.projects,
        hub_auth,
        base_url=config.base_url,
        cookie_secret=secrets.token_bytes(32),
        executor=executor,
    )
    # no xheaders: containers reach this port directly and could forge X-Forwarded-* headers
    server = HTTPServer(app, max_body_size=MAX_BODY_BYTES)
    server.listen(config.port, config.host)
    loop = ioloop.IOLoop.current()

    def in_background(fn: Callable[[], Any]) -> Callable[[], None]:
        return lambda: loop.run_in_executor(executor, fn) and None

    ioloop.PeriodicCallback(in_background(workflow.deliver_audit), AUDIT_RETRY_SECONDS * 1000).start()
    ioloop.PeriodicCallback(in_background(workflow.release_pending), RELEASE_RETRY_SECONDS * 1000).start()
    # the counts of repeated refusals reach the trail when their window closes, at the latest one
    # flush period later
    flush_every = min(REFUSAL_FLUSH_SECONDS, config.refusal_window) * 1000
    ioloop.PeriodicCallback(in_background(workflow.flush_refusals), flush_every).start()
    log.info("export service listening on %s:%d%s", config.host, config.port, config.base_url)
    return app, server


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.umask(0o077)  # the database, quarantine and release files are for this service alone
    try:
        config = ServiceConfig.from_env()
        projects = load_factory(config.projects_factory)(config.state_dir, config.policy_dir)
        digests = None
        if os.environ.get("JUPYTERHUB_API_URL") and os.environ.get("JUPYTERHUB_API_TOKEN"):
            digests = HubImageDigests(os.environ["JUPYTERHUB_API_URL"], os.environ["JUPYTERHUB_API_TOKEN"])
        workflow = build_workflow(config, projects, open_audit_log(config.state_dir), digests)
        start(config, workflow, hub_oauth())
    except ConfigError as exc:
        print(f"exports.service: {exc}", file=sys.stderr)
        return 2
    loop = ioloop.IOLoop.current()
    for sig in (signal.SIGTERM, signal.SIGINT):  # the hub stops its services with SIGTERM
        signal.signal(sig, lambda *_: loop.add_callback_from_signal(loop.stop))
    try:
        loop.start()
    finally:
        written = workflow.flush_refusals(everything=True)  # no counted refusal is lost at shutdown
        log.info("export service stopped; %d refusal summaries written", written)
    return 0


if __name__ == "__main__":
    sys.exit(main())
