# System-level Jupyter server configuration of the enclave notebook image.
# It lives on the read-only root filesystem, and user config is disabled
# (JUPYTERHUB_DISABLE_USER_CONFIG=1), so nothing a researcher writes can override it.
import os

from jupyter_server.serverapp import ServerApp

c = get_config()  # noqa: F821

c.ServerApp.root_dir = "/workspace"
c.ServerApp.jpserver_extensions = {"enclave_lockdown": True}

# No side doors: these routes are not registered at all, and enclave_lockdown answers them with a
# logged 403 (and reports the attempt to the audit trail through the export service).
ServerApp.default_services = tuple(
    s for s in ServerApp.default_services if s not in {"files", "nbconvert", "view"}
)
c.ContentsManager.files_handler_class = "enclave_lockdown.RefusedHandler"
c.ServerApp.contents_manager_class = "enclave_lockdown.CappedContentsManager"

# Uploads: one request body, and the sum of a chunked upload, are capped.
UPLOAD_CAP = int(os.environ.get("ENCLAVE_UPLOAD_CAP_BYTES", str(10 * 1024 * 1024)))
# The body limit must leave room for base64 (4/3) and JSON framing: below that, tornado drops the
# connection before CappedContentsManager sees the upload, so the researcher gets a proxy 503 instead of
# the 413 below and nothing is logged (found by tests/integration/test_attacks.py).
c.ServerApp.max_body_size = UPLOAD_CAP * 4 // 3 + 1024 * 1024
c.CappedContentsManager.upload_cap_bytes = UPLOAD_CAP

# Terminals only where the project policy allows them (set by the spawner, not the user).
c.ServerApp.terminals_enabled = os.environ.get("ENCLAVE_TERMINALS") == "1"

# Nothing to the outside: no update checks, no extension manager, no news.
c.LabApp.extension_manager = "readonly"
c.LabApp.news_url = None
c.LabApp.check_for_updates_class = "jupyterlab.NeverCheckForUpdate"
c.ServerApp.allow_remote_access = True
