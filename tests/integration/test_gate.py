"""From inside a container the hub is only the gate: no login, no tokens, no other API."""

from __future__ import annotations

import json

import pytest

from audit import AuditLog
from tests.harness import HubClient, py_exec

pytestmark = pytest.mark.integration

CALL = """
import json, os, urllib.request
gw = os.environ["JUPYTERHUB_API_URL"].split("/hub/api")[0]
def call(method, path, body=None, token=True, form=False):
    headers = {"Authorization": "token " + os.environ["JUPYTERHUB_API_TOKEN"]} if token else {}
    data = None
    if body is not None:
        data = (urllib.parse.urlencode(body) if form else json.dumps(body)).encode()
        headers["Content-Type"] = "application/x-www-form-urlencoded" if form else "application/json"
    req = urllib.request.Request(gw + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
import urllib.parse
print(json.dumps({
    "identify": call("GET", "/hub/api/user"),
    "version": call("GET", "/hub/api/"),
    "login": call("POST", "/hub/login", {"username": "alice", "password": "demo-alice"}, token=False, form=True),
    "token_by_password": call("POST", "/hub/api/users/alice/tokens",
                              {"auth": {"username": "alice", "password": "demo-alice"}, "note": "x" * 900},
                              token=False),
    "new_server": call("POST", "/hub/api/users/alice/servers/exfil-data-here"),
    "list_users": call("GET", "/hub/api/users"),
    "home": call("GET", "/hub/home"),
}))
"""


def test_only_the_servers_own_calls_pass_the_gate(hub):
    alice = HubClient(hub, "alice")
    assert alice.login().status_code == 302
    alice.spawn("demo-cardio")
    try:
        code, out = py_exec(hub.container("alice", "demo-cardio"), CALL)
        assert code == 0, out
        status = json.loads(out.strip().splitlines()[-1])
        assert status["identify"] == 200 and status["version"] == 200, "the server's own calls pass"
        for attack in ("login", "token_by_password", "new_server", "list_users", "home"):
            assert status[attack] == 403, (attack, status)
        model = alice.api("GET", "/users/alice", params={"include_stopped_servers": "1"}).json()
        assert "exfil-data-here" not in model.get("servers", {}), "no server name was stored"
        refused = [r for r in AuditLog.open(hub.state).records(action="sidedoor.refused")
                   if r["details"]["route"].startswith("hub-api")]
        assert any("/hub/login" in r["details"]["route"] for r in refused)
    finally:
        alice.stop("demo-cardio")
