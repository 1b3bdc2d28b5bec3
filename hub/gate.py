"""The hub API as notebook containers see it: a few routes, and nothing else.

Containers must reach the hub to identify tokens, finish the OAuth login and report activity. Given
the whole hub instead, code in a notebook could log in with the researcher's password (a full browser
session from inside the enclave), mint tokens with data in their notes, or create servers whose names
carry data -- all readable from outside later. So the hub listens on loopback only, and containers
reach it through this gate, on the hub port of their network's gateway (the only hub port the host
firewall admits from enclave bridges).

    python -m hub.gate        (a hub-managed service; see hub/jupyterhub_config.py)
"""

from __future__ import annotations

import logging
import os
import re

from tornado import httpclient, ioloop, web

from hub import runtime

log = logging.getLogger("enclave.gate")

# (method, path): everything jupyterhub-singleuser needs, and nothing a person would use.
ALLOWED = [
    ("GET", re.compile(r"^/hub/api/?$")),  # version check at server start
    ("GET", re.compile(r"^/hub/api/user$")),  # who holds this token
    ("POST", re.compile(r"^/hub/api/users/[^/]+/activity$")),  # activity, for the idle culler
    ("POST", re.compile(r"^/hub/api/oauth2/token$")),  # OAuth code exchange when the researcher logs in
]
FORWARDED_HEADERS = ("Authorization", "Content-Type", "Accept", "User-Agent")
REFUSAL = "Only the notebook server's own hub calls pass here; people log in through the enclave's web address."


def allowed(method: str, path: str) -> bool:
    return any(method == m and rx.match(path) for m, rx in ALLOWED)


class GateHandler(web.RequestHandler):
    SUPPORTED_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS")

    async def _handle(self, *args) -> None:
        method, path = self.request.method, self.request.path
        if not allowed(method, path) or "Cookie" in self.request.headers:
            self._refuse(method, path)
            return
        headers = {k: v for k, v in self.request.headers.items() if k in FORWARDED_HEADERS}
        upstream = self.settings["upstream"] + self.request.uri
        response = await httpclient.AsyncHTTPClient().fetch(
            upstream, method=method, headers=headers, body=self.request.body if method == "POST" else None,
            raise_error=False, follow_redirects=False, request_timeout=30,
        )
        self.set_status(response.code, response.reason)
        for name in ("Content-Type",):
            if name in response.headers:
                self.set_header(name, response.headers[name])
        self.finish(response.body or b"")

    def _refuse(self, method: str, path: str) -> None:
        log.warning("refused %s %s from %s", method, path, self.request.remote_ip)
        runtime.audit_log(self.settings["state_dir"]).append(
            actor=f"container@{self.request.remote_ip}", action="sidedoor.refused", outcome="denied",
            target=path[:200], details={"route": f"hub-api {method} {path[:200]}", "reason": "not a server route"},
        )
        self.set_status(403)
        self.finish({"status": 403, "message": REFUSAL})

    get = post = put = patch = delete = head = options = _handle


def make_app(upstream: str, state_dir: str) -> web.Application:
    return web.Application([(r".*", GateHandler)], upstream=upstream.rstrip("/"), state_dir=state_dir)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="[%(levelname)1.1s %(asctime)s enclave-gate] %(message)s")
    bind = os.environ["ENCLAVE_GATE_BIND"]
    host, port = bind.rsplit(":", 1)
    app = make_app(os.environ["ENCLAVE_HUB_UPSTREAM"], os.environ["ENCLAVE_STATE_DIR"])
    app.listen(int(port), address=host, xheaders=False, max_body_size=1024 * 1024)
    log.info("hub gate on %s -> %s", bind, os.environ["ENCLAVE_HUB_UPSTREAM"])
    ioloop.IOLoop.current().start()


if __name__ == "__main__":
    main()
