"""From inside a container the hub is only the gate: no login, no tokens, no other API; a flood is
throttled and cannot slow the hub for others; activity cannot postpone culling; and every refusal --
at the gate, the hub, the export service, Jupyter's closed routes and the host firewall -- is on the
trail, aggregated, under the user and server the token belongs to.

This module runs its own hub with a 5-second refusal window (ENCLAVE_AUDIT_REFUSAL_WINDOW) so that the
aggregated summaries can be read back within the test."""

from __future__ import annotations

import json
import statistics
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
import requests

from audit import AuditLog
from tests.harness import HUB_TLS, Hub, HubClient, docker_exec, py_exec, wait_for

pytestmark = pytest.mark.integration

CARDIO = "demo-cardio"
WINDOW = 5  # seconds: the refusal aggregation window of this module's hub

CALL = (
    HUB_TLS
    + """
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
    "oauth_grant": call("GET", "/hub/api/oauth2/authorize?client_id=jupyterhub-user-alice-demo-cardio"
                               "&response_type=code&redirect_uri=/user/alice/demo-cardio/oauth_callback"),
}))
"""
)

# A bounded flood: THREADS threads, each sending requests for SECONDS as fast as the gate answers (more
# threads than the gate holds back per source, so most 429s come at once).
FLOOD = (
    HUB_TLS
    + """
import json, os, sys, threading, time, urllib.request, urllib.error, collections
gw = os.environ["JUPYTERHUB_API_URL"].split("/hub/api")[0]
token = os.environ["JUPYTERHUB_API_TOKEN"]
path, threads, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
deadline = time.monotonic() + seconds
counts = collections.Counter()
lock = threading.Lock()
def run():
    while time.monotonic() < deadline:
        req = urllib.request.Request(gw + path, headers={"Authorization": "token " + token})
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                code = r.status
        except urllib.error.HTTPError as e:
            code = e.code
        except OSError:
            code = 0
        with lock:
            counts[code] += 1
ts = [threading.Thread(target=run) for _ in range(threads)]
[t.start() for t in ts]
[t.join() for t in ts]
print(json.dumps(counts))
"""
)


@pytest.fixture(scope="module")
def gate_hub(tmp_path_factory, directory):
    hub = Hub(
        tmp_path_factory.mktemp("gatehub"), directory, env_extra={"ENCLAVE_AUDIT_REFUSAL_WINDOW": str(WINDOW)}
    ).prepare()
    try:
        hub.start()
        alice = HubClient(hub, "alice")
        assert alice.login().status_code == 302
        alice.spawn(CARDIO)
        yield hub, alice
    finally:
        hub.teardown()


def trail(hub, **filters) -> list[dict]:
    return list(AuditLog.open(hub.state).records(**filters))


def counted(records: list[dict]) -> int:
    """Refusals a list of aggregated records stands for: each full record is one, a summary its count."""
    return sum(r["details"].get("repeated", 0) if r["details"].get("aggregated") else 1 for r in records)


def wait_for_records(hub, what: str, predicate, timeout: float = 3 * WINDOW + 15, **filters) -> list[dict]:
    def found():
        records = trail(hub, **filters)
        return records if predicate(records) else None

    return wait_for(found, timeout, what, interval=1)


def container(hub):
    return hub.container("alice", CARDIO)


# ---- the gate's routes -------------------------------------------------------------------------------


def test_only_the_servers_own_calls_pass_the_gate(gate_hub):
    hub, alice = gate_hub
    code, out = py_exec(container(hub), CALL)
    assert code == 0, out
    status = json.loads(out.strip().splitlines()[-1])
    assert status["identify"] == 200 and status["version"] == 200, "the server's own calls pass"
    for attack in ("login", "token_by_password", "new_server", "list_users", "home", "oauth_grant"):
        assert status[attack] == 403, (attack, status)
    model = alice.api("GET", "/users/alice", params={"include_stopped_servers": "1"}).json()
    assert "exfil-data-here" not in model.get("servers", {}), "no server name was stored"
    refused = wait_for_records(
        hub,
        "the gate's refusals",
        lambda rs: len({r["details"]["reason"] for r in rs}) >= 5,
        action="sidedoor.refused",
    )
    by_reason = {r["details"]["reason"]: r for r in refused if r["details"]["route"].startswith("hub-api")}
    assert {"login", "token-mint", "server-create", "hub-api", "hub-page", "oauth-grant"} <= set(by_reason)
    grant = by_reason["oauth-grant"]
    assert (grant["actor"], grant["target"], grant["project"]) == ("alice", f"alice/{CARDIO}", CARDIO), grant
    assert grant["details"]["identified_by"] == "token"
    login = by_reason["login"]  # sent without a token: only then the address, and the record says so
    assert login["actor"].startswith("address:") and "no token" in login["details"]["identified_by"]


# ---- flood -------------------------------------------------------------------------------------------


def median_latency(client: HubClient, n: int) -> float:
    times = []
    for _ in range(n):
        start = time.perf_counter()
        assert client.api("GET", f"/users/{client.user}").status_code == 200
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def test_a_gate_flood_is_throttled_counted_and_does_not_slow_others(gate_hub):
    """Alice's container hammers an allowed route with more threads than the gate holds back. Bob's hub API
    stays responsive, the hub sees only the rate limit's worth, and the trail holds a handful of records
    whose counts add up to every 429. Quiet and flood phases alternate so that load from elsewhere on this
    shared machine falls on both medians alike."""
    hub, _ = gate_hub
    bob = HubClient(hub, "bob")
    assert bob.login().status_code == 302
    median_latency(bob, 5)  # warm-up
    before = len(trail(hub, action="gate.throttled"))
    cmd = ["/opt/notebook/bin/python", "-c", FLOOD, "/hub/api/user", "300", "5"]
    quiet, during, counts = [], [], {}
    allowance = 5.0
    for _ in range(4):  # 20 s of flood in all
        until = time.monotonic() + 5
        while time.monotonic() < until:
            quiet.append(median_latency(bob, 1))
        result: dict = {}

        def run_flood(r: dict = result) -> None:
            start = time.monotonic()
            r["out"] = docker_exec(container(hub), cmd, timeout=120)
            r["elapsed"] = time.monotonic() - start  # at least as long as the gate saw this flood

        flood = threading.Thread(target=run_flood)
        flood.start()
        time.sleep(0.5)
        while flood.is_alive():
            during.append(median_latency(bob, 1))
        flood.join(150)
        code, out = result["out"]
        assert code == 0, out
        allowance += 20 + 5 * result["elapsed"]  # the bucket: a burst of 20, then 5 a second
        for status, n in json.loads(out.strip().splitlines()[-1]).items():
            counts[status] = counts.get(status, 0) + n
    passed, throttled = counts.get("200", 0), counts.get("429", 0)
    assert throttled > 1000 and passed + throttled == sum(counts.values()), counts
    # Under load a 5 s flood lasts longer (300 threads starting, answers in flight at its end): the bucket's
    # allowance is over each flood's measured span. Without the limit, thousands pass.
    assert passed <= allowance, f"the bucket let {passed} through, allowing {allowance:.0f}"
    assert len(during) >= 20, "bob was measured while the flood ran"
    baseline, median = statistics.median(quiet), statistics.median(during)
    assert median <= 2 * baseline, f"bob's median {median:.3f}s under flood vs {baseline:.3f}s quiet"
    records = wait_for_records(
        hub, "the flood's summaries", lambda rs: counted(rs[before:]) >= throttled, action="gate.throttled"
    )
    mine = records[before:]
    assert counted(mine) == throttled, "every refusal is counted, none twice"
    assert len(mine) <= 2 * (40 // WINDOW + 2), (
        f"{len(mine)} records for one flood (a full one and a count per window)"
    )
    assert {(r["actor"], r["target"]) for r in mine} == {("alice", f"alice/{CARDIO}")}


# ---- activity ----------------------------------------------------------------------------------------

ACTIVITY = (
    HUB_TLS
    + """
import json, os, sys, urllib.request, urllib.error
gw = os.environ["JUPYTERHUB_API_URL"].split("/hub/api")[0]
req = urllib.request.Request(gw + "/hub/api/users/alice/activity", data=sys.argv[1].encode(), method="POST",
                             headers={"Authorization": "token " + os.environ["JUPYTERHUB_API_TOKEN"],
                                      "Content-Type": "application/json"})
try:
    with urllib.request.urlopen(req, timeout=10) as r:
        print(r.status, r.read().decode())
except urllib.error.HTTPError as e:
    print(e.code, e.read().decode())
"""
)


def test_a_future_last_activity_is_clamped_to_now(gate_hub):
    hub, alice = gate_hub
    ahead = (datetime.now(UTC) + timedelta(minutes=59)).isoformat()
    body = json.dumps({"last_activity": ahead, "servers": {CARDIO: {"last_activity": ahead}}})
    code, out = docker_exec(container(hub), ["/opt/notebook/bin/python", "-c", ACTIVITY, body])
    assert code == 0 and out.startswith("200"), out
    model = alice.api("GET", "/users/alice").json()
    now = datetime.now(UTC)
    for stamp in (model["last_activity"], model["servers"][CARDIO]["last_activity"]):
        assert datetime.fromisoformat(stamp) <= now + timedelta(seconds=5), stamp
    wait_for_records(
        hub,
        "the clamp on the trail",
        lambda rs: any(r["details"]["reason"] == "future_timestamp" and r["actor"] == "alice" for r in rs),
        action="gate.activity",
    )
    code, out = docker_exec(
        container(hub),
        ["/opt/notebook/bin/python", "-c", ACTIVITY, json.dumps({"last_activity": "tomorrow\u202e"})],
    )
    assert out.startswith("400") and "last_activity" in out and "ISO 8601" in out, out
    wait_for_records(
        hub,
        "the malformed report on the trail",
        lambda rs: any(r["details"]["reason"] == "malformed" for r in rs),
        action="gate.activity",
    )


# ---- every refusal on the trail ----------------------------------------------------------------------


def server_token(client: HubClient) -> str:
    response = client.api(
        "POST",
        f"/users/{client.user}/tokens",
        json={"scopes": [f"access:servers!server={client.user}/{CARDIO}"], "expires_in": 600},
    )
    assert response.status_code == 201, response.text
    return response.json()["token"]


def test_closed_jupyter_routes_in_every_spelling_are_on_the_trail(gate_hub):
    """/files, /FILES, /%66iles, /%2566iles and terminals (off in demo-cardio) are refused by the lockdown and
    recorded under alice and her server; repeats of one door are one record with a count."""
    hub, alice = gate_hub
    headers = {"Authorization": f"token {server_token(alice)}"}
    base = f"{hub.url}/user/alice/{CARDIO}"
    before = trail(hub, action="sidedoor.refused", actor="alice")
    spellings = [
        "files/x.csv",
        "FILES/x.csv",
        "%66iles/x.csv",
        "Fi%6Ces/x.csv",
        "%2566iles/x.csv",
        "files/x.csv",
    ]
    for spelling in spellings:
        response = requests.get(f"{base}/{spelling}", headers=headers, timeout=30)
        assert response.status_code == 403, (spelling, response.status_code)
    for method, path in (("POST", "api/terminals"), ("GET", "terminals/1"), ("GET", "API/Terminals")):
        response = requests.request(method, f"{base}/{path}", headers=headers, timeout=30)
        assert response.status_code == 403, (path, response.status_code)

    def complete(records):
        new = records[len(before) :]
        kinds = {}
        for r in new:
            kinds[r["details"]["reason"]] = kinds.get(r["details"]["reason"], 0) + (
                r["details"]["repeated"] if r["details"].get("aggregated") else 1
            )
        return kinds.get("files-download", 0) >= len(spellings) and kinds.get("terminals", 0) >= 3

    records = wait_for_records(
        hub, "the lockdown's refusals", complete, action="sidedoor.refused", actor="alice"
    )
    new = records[len(before) :]
    assert {(r["project"], r["target"]) for r in new} == {(CARDIO, f"alice/{CARDIO}")}
    assert len([r for r in new if r["details"]["reason"] == "files-download"]) <= 2, "aggregated"


QUEUE_AND_RAW = """
import json, os, subprocess, urllib.request, urllib.error
url = os.environ["ENCLAVE_EXPORT_URL"]
def get(path):
    req = urllib.request.Request(url + path, headers={"Authorization": "token " + os.environ["JUPYTERHUB_API_TOKEN"]})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
os.makedirs("/workspace/results", exist_ok=True)
open("/workspace/results/t.csv", "w").write("group,count\\nA,120\\nB,45\\n")
made = json.loads(subprocess.run(["enclave-export", "--json", "request", "results/t.csv", "--context", "c",
                                  "--controls", "c"], capture_output=True, text=True, check=True).stdout)
file_id = made["files"][0]["id"]
print(json.dumps({"queue": get("api/requests?scope=queue"), "raw": get(f"api/requests/{made['id']}/files/{file_id}/content"),
                  "id": made["id"]}))
"""


def test_the_queue_from_a_container_and_raw_content_of_a_table_are_refused_on_the_trail(gate_hub):
    hub, _ = gate_hub
    code, out = docker_exec(container(hub), ["/opt/notebook/bin/python", "-c", QUEUE_AND_RAW])
    assert code == 0, out
    result = json.loads(out.strip().splitlines()[-1])
    assert result["queue"] == 403 and result["raw"] == 404, result
    refused = wait_for_records(
        hub,
        "the export refusals",
        lambda rs: {"queue_from_container", "not_served_raw"} <= {r["details"]["reason"] for r in rs},
        action="export.refused",
        actor="alice",
    )
    queue = next(r for r in refused if r["details"]["reason"] == "queue_from_container")
    assert queue["project"] == CARDIO and queue["details"]["server"] == f"alice/{CARDIO}"
    views = [r for r in trail(hub, action="export.view") if r["target"] == result["id"]]
    assert not any(r["details"].get("file") for r in views), "a refused raw read is not an export.view ok"


def test_an_administrator_on_a_researchers_server_is_on_the_trail(gate_hub):
    hub, _ = gate_hub
    adam = HubClient(hub, "adam")
    assert adam.login().status_code == 302
    opened = adam.session.get(f"{hub.url}/user/alice/{CARDIO}/lab", timeout=60)  # follows the OAuth dance
    assert opened.status_code == 403, opened.status_code
    assert adam.api("POST", "/users/alice/tokens", json={}).status_code == 403
    assert (
        adam.api(
            "POST", "/users/adam/tokens", json={"scopes": [f"access:servers!server=alice/{CARDIO}"]}
        ).status_code
        == 400
    )
    assert adam.api("POST", "/users/alice/servers/demo-oncology").status_code in (403, 404)
    refused = wait_for_records(
        hub,
        "adam's attempts",
        lambda rs: (
            {"open_others_server", "token_others_server", "start_others_server"}
            <= {r["details"]["reason"] for r in rs}
        ),
        action="hub.refused",
        actor="adam",
    )
    start = next(r for r in refused if r["details"]["reason"] == "start_others_server")
    assert start["target"] == "alice/demo-oncology"


def test_forms_without_xsrf_are_on_the_trail(gate_hub):
    hub, alice = gate_hub
    anonymous = requests.post(
        f"{hub.url}/hub/login",
        data={"username": "alice", "password": "demo-alice"},
        timeout=30,
        allow_redirects=False,
    )
    assert anonymous.status_code == 403, anonymous.status_code
    # The export service: alice logs in to it through the hub (OAuth), then posts a form without _xsrf.
    page = alice.session.get(f"{hub.url}/services/exports/mine", timeout=60)
    assert page.status_code == 200, page.status_code
    form = alice.session.post(
        f"{hub.url}/services/exports/requests/new",
        data={"project": CARDIO},
        timeout=30,
        allow_redirects=False,
    )
    assert form.status_code == 403, form.status_code

    def hub_login(records):
        return any(
            r["details"]["route"].startswith("POST /hub/login")
            for r in records
            if r["details"]["reason"] == "xsrf_missing"
        )

    # the export service records it as its own refusal, under the user whose browser sent the form
    exports = wait_for_records(
        hub, "the export form without _xsrf", lambda rs: rs, action="export.refused", actor="alice"
    )
    assert any(r["details"]["reason"] == "xsrf_missing" for r in exports)
    refused = wait_for_records(hub, "the hub form without _xsrf", hub_login, action="hub.refused")
    hub_form = next(r for r in refused if r["details"]["route"].startswith("POST /hub/login"))
    assert (
        hub_form["actor"].startswith("address:") and "not logged in" in hub_form["details"]["identified_by"]
    )


# ---- the host firewall --------------------------------------------------------------------------------

PROBES = """
import os, socket, sys
gw = socket.gethostbyname(os.environ["JUPYTERHUB_API_URL"].split("//")[1].split(":")[0])
for host, port in ((gw, 22), (gw, 2375), ("192.0.2.1", 80)):
    for _ in range(3):
        s = socket.socket()
        s.settimeout(3)
        try:
            s.connect((host, port))
            print("OPEN", host, port)
        except OSError as exc:
            print("refused", host, port, exc.errno)
        finally:
            s.close()
print("gateway", gw)
"""


def test_firewall_drops_become_network_refused_records_with_counts(gate_hub):
    hub, _ = gate_hub
    code, out = docker_exec(container(hub), ["/opt/notebook/bin/python", "-c", PROBES], timeout=90)
    assert code == 0 and "OPEN" not in out, out
    gateway = out.strip().splitlines()[-1].split()[-1]

    def enough(records):
        kinds = {}
        for r in records:
            kinds[r["details"]["reason"]] = kinds.get(r["details"]["reason"], 0) + (
                r["details"]["repeated"] if r["details"].get("aggregated") else 1
            )
        return kinds.get("to-host", 0) >= 6 and kinds.get("forward", 0) >= 3

    records = wait_for_records(hub, "network.refused records", enough, action="network.refused")
    host = [r for r in records if r["details"]["reason"] == "to-host"]
    forward = [r for r in records if r["details"]["reason"] == "forward"]
    assert {(r["actor"], r["project"], r["target"]) for r in records} == {
        ("alice", CARDIO, f"alice/{CARDIO}")
    }
    assert host[0]["details"]["destination"].startswith(f"{gateway}:")
    assert forward[0]["details"]["destination"] == "192.0.2.1:80/tcp"
    assert any(r["details"].get("aggregated") and r["details"]["repeated"] >= 2 for r in records), (
        "repeats are counted, not written one by one"
    )


POISON = """
import json, os, urllib.request, urllib.error
url = os.environ["ENCLAVE_EXPORT_URL"] + "api/v1/sidedoor"
codes = {}
for i in range(200):
    body = {"route": "GET /user/alice/demo-cardio/files/" + "\\u202e\\n\\x1b[2J" * 50 + str(i), "path": "A" * 100000}
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Authorization": "token " + os.environ["JUPYTERHUB_API_TOKEN"],
                                          "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            codes[r.status] = codes.get(r.status, 0) + 1
    except urllib.error.HTTPError as e:
        codes[e.code] = codes.get(e.code, 0) + 1
print(json.dumps(codes))
"""


def test_a_flood_of_poisoned_side_door_reports_is_counted_clipped_and_escaped(gate_hub):
    """The attacker's own reports, 200 of them with control characters and 100 kB of text: the trail gets
    one full record and a count, the text clipped and escaped, and the actor is still alice."""
    hub, _ = gate_hub
    before = len(trail(hub, action="sidedoor.refused", actor="alice"))
    code, out = docker_exec(container(hub), ["/opt/notebook/bin/python", "-c", POISON], timeout=120)
    assert code == 0 and json.loads(out.strip().splitlines()[-1]) == {"201": 200}, out
    records = wait_for_records(
        hub,
        "the reports' summary",
        lambda rs: counted(rs[before:]) >= 200,
        action="sidedoor.refused",
        actor="alice",
    )
    mine = records[before:]
    assert counted(mine) == 200 and len(mine) <= 2 * (60 // WINDOW + 2)
    for record in mine:
        text = json.dumps(record["details"], ensure_ascii=False)
        assert "\u202e" not in text and "\x1b" not in text and "\n" not in record["details"]["route"]
        assert len(record["details"]["route"]) <= 220 and len(record["details"]["path"]) <= 220
        assert record["target"] == f"alice/{CARDIO}"
