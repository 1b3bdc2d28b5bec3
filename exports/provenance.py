"""Where the image digest of a notebook server comes from: the hub, not the container.

The spawner records the digest of the image it started in the server's state (``image_digest``). The
export service reads it back through the hub's REST API with its own token, which needs the
``admin:server_state`` scope (plus ``read:servers``) on users. Without that scope, or if the hub does not
answer, the digest the container reported is kept and labelled as reported by the container.
"""

from __future__ import annotations

import json
import logging
import os
import re
import urllib.error
import urllib.parse
import urllib.request

log = logging.getLogger("exports.provenance")
DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")


def hub_tls_context():
    """The service's own pair and trust bundle when the hub speaks TLS inside (``internal_ssl``): the hub
    then asks every client for a certificate. None (plain HTTP or system trust) otherwise."""
    if not os.environ.get("JUPYTERHUB_SSL_CERTFILE"):
        return None
    from jupyterhub.utils import make_ssl_context

    return make_ssl_context(
        os.environ["JUPYTERHUB_SSL_KEYFILE"],
        os.environ["JUPYTERHUB_SSL_CERTFILE"],
        cafile=os.environ.get("JUPYTERHUB_SSL_CLIENT_CA"),
    )


class HubImageDigests:
    def __init__(self, api_url: str, token: str, timeout: float = 5.0):
        self.api_url = api_url.rstrip("/")
        self.token = token
        self.timeout = timeout

    def image_digest(self, user: str, server: str) -> str | None:
        url = f"{self.api_url}/users/{urllib.parse.quote(user, safe='')}"
        request = urllib.request.Request(url, headers={"Authorization": f"token {self.token}"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout, context=hub_tls_context()) as response:
                model = json.loads(response.read())
        except (urllib.error.URLError, OSError, ValueError) as exc:
            log.warning("cannot read the image digest of %s/%s from the hub: %s", user, server, exc)
            return None
        state = ((model.get("servers") or {}).get(server) or {}).get("state") or {}
        digest = state.get("image_digest")
        return digest if isinstance(digest, str) and DIGEST.match(digest) else None
