"""Jupyter server extension that closes the side doors of a notebook server in the enclave.

Download routes (/files, /view, /nbconvert) -- in every case and percent-encoding spelling, e.g.
``/FILES`` or ``/%66iles`` -- and, where the project has no terminals, the terminal routes answer 403;
the attempt is logged and reported to the audit trail through the export service (the only hub-side
endpoint a container may call besides the hub API). Uploads are capped in total, including JupyterLab's
chunked uploads.
"""

import json
import os
import posixpath
import re
import urllib.parse
import urllib.request

from jupyter_server.base.handlers import JupyterHandler
from jupyter_server.services.contents.largefilemanager import LargeFileManager
from jupyter_server.utils import url_path_join
from tornado import web
from tornado.ioloop import IOLoop
from tornado.routing import Matcher, Rule
from traitlets import Integer

REFUSAL = "This enclave has no download route. Results leave only through an export request (enclave-export)."


def report_refusal(route: str, path: str) -> None:
    """Best effort: the hub-side audit record of a refused side door. Never blocks the refusal."""
    url = os.environ.get("ENCLAVE_EXPORT_URL")
    token = os.environ.get("JUPYTERHUB_API_TOKEN")
    if not url or not token:
        return
    body = json.dumps({"route": route, "path": path[:500]}).encode()
    req = urllib.request.Request(
        url_path_join(url, "api/v1/sidedoor"),
        data=body,
        method="POST",
        headers={"Authorization": f"token {token}", "Content-Type": "application/json"},
    )
    try:
        urllib.request.urlopen(req, timeout=2).close()
    except (OSError, ValueError):
        return  # the refusal stands and is in the server log; the audit record is the export service's job


class RefusedHandler(JupyterHandler):
    """Answers every method with 403 and records the attempt."""

    def initialize(self, **kwargs):  # FilesHandler is constructed with a 'path' argument
        pass

    def _refuse(self, *args, **kwargs):
        route = self.request.path
        self.log.warning("enclave: refused side-door request %s %s", self.request.method, route)
        # In a worker thread: a slow or absent export service must not stall this server's event loop.
        IOLoop.current().run_in_executor(
            None, report_refusal, self.request.method + " " + route.split("?", 1)[0], route
        )
        raise web.HTTPError(403, REFUSAL)

    get = post = put = delete = patch = head = _refuse

    def check_xsrf_cookie(self):
        return  # refuse with 403 REFUSAL rather than an xsrf error, so the log says what happened


def model_size(model: dict) -> int:
    """Bytes a contents-API save would write. A notebook is counted too: its outputs and attachments can
    carry any file as base64, so leaving it out would make "upload a notebook" a way around the cap."""
    content = model.get("content")
    if content is None:
        return 0
    if model.get("type") == "notebook" or not isinstance(content, str):
        return len(json.dumps(content))
    if model.get("format") == "base64":
        return len(content) * 3 // 4
    return len(content.encode("utf-8", errors="replace"))


class CappedContentsManager(LargeFileManager):
    """Refuses uploads larger than the cap, counting every chunk of a chunked upload."""

    upload_cap_bytes = Integer(10 * 1024 * 1024, config=True, help="Largest file a researcher may upload.")

    def save(self, model, path=""):
        size = model_size(model)
        chunk = model.get("chunk")
        if chunk is not None and chunk != 1:
            try:
                size += os.path.getsize(self._get_os_path(path))
            except OSError:
                pass
        if size > self.upload_cap_bytes:
            self.log.warning(
                "enclave: refused upload of %s (%d bytes > cap %d)", path, size, self.upload_cap_bytes
            )
            report_refusal("upload-over-cap", path)
            raise web.HTTPError(
                413,
                f"Upload refused: {path} is larger than the enclave's cap of {self.upload_cap_bytes} bytes.",
            )
        return super().save(model, path)


DOWNLOAD_ROUTES = re.compile(r"^(files|view|nbconvert)(/|$)|^api/nbconvert")
TERMINAL_ROUTES = re.compile(r"^(terminals|api/terminals)(/|$)")


def normalized(path: str) -> str:
    """The path as a server that forgave case and encoding would read it: ``/%2566iles`` -> ``/files``."""
    for _ in range(3):
        path = urllib.parse.unquote(path)
    return posixpath.normpath("/" + path.lower()).rstrip("/") + ("/" if path.endswith("/") else "")


class SideDoorMatcher(Matcher):
    """Matches every spelling of a closed route under the server's base URL; the router asks it before
    the server's own (case-sensitive) routes."""

    def __init__(self, base_url: str, terminals: bool):
        self.base = normalized(base_url).rstrip("/") + "/"
        self.terminals = terminals

    def match(self, request):
        path = normalized(request.path)
        if not path.startswith(self.base):
            return None
        rest = path[len(self.base) :]
        if DOWNLOAD_ROUTES.match(rest) or (not self.terminals and TERMINAL_ROUTES.match(rest)):
            return {"path_args": [], "path_kwargs": {}}
        return None


def _jupyter_server_extension_points():
    return [{"module": "enclave_lockdown"}]


def _load_jupyter_server_extension(serverapp):
    base = serverapp.web_app.settings["base_url"]
    terminals = bool(getattr(serverapp, "terminals_enabled", False))
    # add_handlers puts these ahead of the server's own routes (tornado's default router is searched first)
    serverapp.web_app.add_handlers(".*$", [Rule(SideDoorMatcher(base, terminals), RefusedHandler)])
    serverapp.log.info(
        "enclave_lockdown: download routes closed%s, uploads capped at %d bytes",
        "" if terminals else ", terminals closed",
        serverapp.contents_manager.upload_cap_bytes,
    )
