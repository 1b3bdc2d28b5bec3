import json
from datetime import UTC, datetime, timedelta

import pytest

from audit.aggregate import RefusalAggregator
from hub.gate import (
    ActivityError,
    RateLimiter,
    allowed,
    clamp_activity,
    presented_token,
    requester_from_model,
    retry_after,
    route_kind,
)
from hub.netlog import ContainerMap, DropSummarizer, container_owner, parse

NOW = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)


def test_only_the_notebook_servers_routes_are_allowed():
    assert allowed("GET", "/hub/api/user") and allowed("GET", "/hub/api/") and allowed("GET", "/hub/api")
    assert allowed("POST", "/hub/api/users/alice/activity") and allowed("POST", "/hub/api/oauth2/token")
    for method, path in [
        ("POST", "/hub/login"),
        ("POST", "/hub/api/users/alice/tokens"),
        ("GET", "/hub/api/users"),
        ("POST", "/hub/api/users/alice/servers/x"),
        ("GET", "/hub/api/user/../users"),
        ("DELETE", "/hub/api/users/alice/activity"),
        ("GET", "/hub/home"),
        ("POST", "/hub/api/users/alice/activity/x"),
        ("GET", "/hub/api/oauth2/authorize"),
    ]:
        assert not allowed(method, path), (method, path)


def test_refused_routes_are_told_apart_in_every_spelling():
    assert route_kind("GET", "/hub/api/oauth2/authorize?client_id=x") == "oauth-grant"
    assert route_kind("POST", "/hub/api/oauth2/%61uthorize") == "oauth-grant"
    assert route_kind("POST", "/HUB/LOGIN") == "login"
    assert route_kind("POST", "/hub/api/users/alice/tokens") == "token-mint"
    assert route_kind("POST", "/hub/api/users/alice/servers/exfil") == "server-create"
    assert route_kind("GET", "/hub/api/users") == "hub-api"
    assert route_kind("GET", "/hub/home") == "hub-page"


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_token_bucket_allows_the_burst_then_the_rate():
    clock = Clock()
    limiter = RateLimiter(rate=5, burst=10, clock=clock)
    assert all(limiter.check("10.0.0.2") == 0 for _ in range(10))
    wait = limiter.check("10.0.0.2")
    assert wait == pytest.approx(0.2)
    assert limiter.check("10.0.0.3") == 0, "another server has its own bucket"
    clock.now = 1.0  # five tokens back
    assert sum(limiter.check("10.0.0.2") == 0 for _ in range(20)) == 5


def test_a_flood_for_one_second_passes_at_most_burst_plus_rate():
    clock = Clock()
    limiter = RateLimiter(rate=5, burst=20, clock=clock)
    passed = 0
    for i in range(500):  # 500 requests in one second
        clock.now = i / 500
        passed += limiter.check("10.0.0.2") == 0
    assert passed <= 20 + 5 + 1


def test_the_limiter_holds_a_bounded_number_of_buckets():
    limiter = RateLimiter(rate=1, burst=1, max_sources=3)
    for i in range(10):
        limiter.check(f"10.0.0.{i}")
    assert len(limiter._buckets) == 3


def test_retry_after_is_whole_seconds_and_at_least_one():
    assert all(1 <= int(retry_after(0.2)) <= 2 for _ in range(50))
    assert int(retry_after(3.5)) >= 4


def test_rate_limits_are_checked():
    with pytest.raises(ValueError, match="rate"):
        RateLimiter(rate=0, burst=5)


# ---- activity ------------------------------------------------------------------------------------


def body(**data) -> bytes:
    return json.dumps(data).encode()


def test_future_last_activity_is_clamped_to_now():
    ahead = (NOW + timedelta(minutes=59)).isoformat()
    out, clamped = clamp_activity(
        body(last_activity=ahead, servers={"demo-cardio": {"last_activity": ahead}}), NOW
    )
    data = json.loads(out)
    assert data["last_activity"] == "2026-12-01T10:00:00.000Z"
    assert data["servers"]["demo-cardio"]["last_activity"] == "2026-12-01T10:00:00.000Z"
    assert clamped == ["last_activity", "servers.demo-cardio.last_activity"]


def test_past_activity_passes_unchanged_in_meaning():
    past = "2026-12-01T09:58:30.123456Z"
    out, clamped = clamp_activity(body(servers={"demo-cardio": {"last_activity": past}}), NOW)
    assert clamped == []
    moment = datetime.fromisoformat(json.loads(out)["servers"]["demo-cardio"]["last_activity"])
    assert abs(moment - datetime.fromisoformat(past)) < timedelta(milliseconds=1)


def test_naive_and_offset_timestamps_are_utc():
    out, clamped = clamp_activity(body(last_activity="2026-12-01T18:30:00+09:00"), NOW)  # 09:30Z
    assert clamped == [] and json.loads(out)["last_activity"] == "2026-12-01T09:30:00.000Z"
    _, clamped = clamp_activity(body(last_activity="2026-12-01T10:00:01"), NOW)  # naive is UTC: ahead
    assert clamped == ["last_activity"]


def test_only_the_activity_fields_are_passed_on():
    out, _ = clamp_activity(body(last_activity="2026-12-01T09:00:00Z", note="x" * 5000), NOW)
    assert json.loads(out) == {"last_activity": "2026-12-01T09:00:00.000Z"}


@pytest.mark.parametrize(
    "raw, field",
    [
        (b"not json", "not valid JSON"),
        (b"[1]", "must be a JSON object"),
        (body(), "needs last_activity or servers"),
        (body(last_activity="yesterday"), "last_activity: yesterday is not an ISO 8601"),
        (body(last_activity=12), "last_activity: must be an ISO 8601 timestamp string"),
        (body(servers=[]), "servers: must be an object"),
        (body(servers={"a": "2026-12-01T09:00:00Z"}), "servers.a: must be an object"),
        (body(servers={"a": {}}), "servers.a.last_activity: must be"),
        (body(servers={str(i): {"last_activity": "2026-12-01T09:00:00Z"} for i in range(40)}), "at most"),
        (body(last_activity="2026-12-01T09:00:00Z\u202e" + "x" * 30), "is not an ISO 8601"),
    ],
)
def test_malformed_activity_is_refused_naming_the_field(raw, field):
    with pytest.raises(ActivityError, match=field.replace("(", r"\(")) as err:
        clamp_activity(raw, NOW)
    assert "\u202e" not in str(err.value)


# ---- who is recorded -----------------------------------------------------------------------------


def test_the_actor_is_the_tokens_user_and_server():
    model = {
        "kind": "user",
        "name": "alice",
        "scopes": ["users:activity!user=alice", "access:servers!server=alice/demo-cardio"],
    }
    who = requester_from_model(model, "10.1.0.2", "token")
    assert (who.actor, who.server, who.project, who.source) == (
        "alice",
        "alice/demo-cardio",
        "demo-cardio",
        "alice/demo-cardio",
    )
    service = requester_from_model({"kind": "service", "name": "exports", "scopes": []}, "10.1.0.2", "token")
    assert service.actor == "service:exports" and service.server is None


def test_token_header_parsing():
    assert presented_token({"Authorization": "token abc"}) == "abc"
    assert presented_token({"Authorization": "Bearer abc"}) == "abc"
    assert presented_token({"Authorization": "Basic abc"}) is None
    assert presented_token({}) is None


# ---- firewall drops ------------------------------------------------------------------------------

LINE = (
    "4,2211,6174155001,-;enclave-refused-host:IN=encab12 OUT= MAC=02:42 SRC=10.7.0.2 DST=10.7.0.1 LEN=60 "
    "TOS=0x00 PREC=0x00 TTL=64 ID=1 DF PROTO=TCP SPT=39130 DPT=22 WINDOW=65495 RES=0x00 SYN URGP=0 \n"
)


def test_kernel_log_lines_of_the_firewall_are_parsed():
    drop = parse(LINE)
    assert (drop.kind, drop.bridge, drop.src, drop.dst, drop.proto, drop.dport) == (
        "host",
        "encab12",
        "10.7.0.2",
        "10.7.0.1",
        "tcp",
        "22",
    )
    fwd = parse("enclave-refused-fwd:IN=encab12 OUT=eth0 SRC=10.7.0.2 DST=192.0.2.1 PROTO=ICMP TYPE=8")
    assert fwd.kind == "forward" and fwd.dport is None
    assert parse("4,1,1,-;some other kernel message SRC=1.2.3.4 IN=x") is None


def test_container_names_give_user_and_project():
    assert container_owner("et12ab-alice--demo-cardio", "et12ab-") == ("alice", "demo-cardio")
    assert container_owner("other-alice--demo-cardio", "et12ab-") is None


class FakeLog:
    def __init__(self):
        self.records = []

    def append(self, **entry):
        self.records.append(entry)


def test_drops_are_one_record_per_container_and_window_with_a_count():
    trail = FakeLog()
    clock = Clock()
    refusals = RefusalAggregator(trail, window=60, clock=clock)
    containers = ContainerMap("et12ab-", client=object())
    containers.refresh = lambda force=False: None
    containers.bridges = {"encab12"}
    containers.addresses = {"10.7.0.2": ("alice", "demo-cardio")}
    summarizer = DropSummarizer(containers, refusals)
    for port in range(20, 120):
        summarizer.handle(parse(LINE.replace("DPT=22", f"DPT={port}")))
    summarizer.handle(parse(LINE.replace("IN=encab12", "IN=encother")))  # another hub's bridge
    assert len(trail.records) == 1
    first = trail.records[0]
    assert (first["actor"], first["project"], first["target"]) == (
        "alice",
        "demo-cardio",
        "alice/demo-cardio",
    )
    assert first["details"]["destination"] == "10.7.0.1:20/tcp"
    clock.now = 61
    refusals.flush_due()
    assert len(trail.records) == 2 and trail.records[1]["details"]["repeated"] == 99


# ---- the export service's and the hub's refusal kinds ------------------------------------------------


def test_side_door_reports_are_classified_in_every_spelling():
    from exports.trail import route_kind as door

    for route in (
        "GET /user/alice/demo-cardio/files/x",
        "GET /user/a/p/FILES/x",
        "GET /user/a/p/%66iles/x",
        "GET /user/a/p/%2566iles/x?download=1",
    ):
        assert door(route) == "files-download", route
    assert door("POST /user/a/p/api/terminals") == "terminals"
    assert door("GET /user/a/p/Nbconvert/html/x.ipynb") == "nbconvert"
    assert door("upload-over-cap") == "upload-over-cap"
    assert door("GET /user/a/p/lab") == "other"


class FakeRequest:
    def __init__(self, method, path, body=b"", headers=None):
        self.method, self.path, self.body, self.headers = method, path, body, headers or {}
        self.remote_ip = "127.0.0.1"


class FakeUser:
    kind = "user"

    def __init__(self, name):
        self.name = name


class FakeHandler:
    def __init__(self, method, path, status, user=None, body=b"", headers=None, args=None):
        self.request = FakeRequest(method, path, body, headers)
        self._status, self._user, self._args = status, user, args or {}

    def get_status(self):
        return self._status

    @property
    def current_user(self):
        return self._user

    def get_argument(self, name, default=None):
        return self._args.get(name, default)


def test_the_hub_refusals_that_go_on_the_trail():
    from hub.audit_hooks import refused_attempt

    adam = FakeUser("adam")
    auth = {"Authorization": "token x"}
    assert refused_attempt(
        FakeHandler("POST", "/hub/api/users/alice/servers/demo-cardio", 403, adam, headers=auth)
    ) == ("start_others_server", "POST /hub/api/users/alice/servers/demo-cardio", "alice/demo-cardio")
    assert refused_attempt(FakeHandler("POST", "/hub/api/users/alice/tokens", 403, adam, headers=auth))[
        0
    ] == ("token_others_server")
    mint = FakeHandler(
        "POST",
        "/hub/api/users/adam/tokens",
        400,
        adam,
        headers=auth,
        body=b'{"scopes": ["access:servers!server=alice/demo-cardio"]}',
    )
    assert refused_attempt(mint)[0] == "token_others_server"
    grant = FakeHandler(
        "GET", "/hub/api/oauth2/authorize", 403, adam, args={"client_id": "jupyterhub-user-alice"}
    )
    assert refused_attempt(grant)[0] == "open_others_server"
    assert refused_attempt(FakeHandler("POST", "/hub/login", 403))[0] == "xsrf_missing"
    with_xsrf = FakeHandler("POST", "/hub/login", 403, args={"_xsrf": "t"})
    assert refused_attempt(with_xsrf) is None
    own = FakeHandler("POST", "/hub/api/users/adam/servers/x", 403, adam, headers=auth)
    assert refused_attempt(own) is None, "one's own server is not someone else's"
    assert (
        refused_attempt(FakeHandler("POST", "/hub/api/users/alice/tokens", 201, adam, headers=auth)) is None
    )


def test_a_throttled_flood_asks_the_hub_once_and_every_record_names_the_tokens_user():
    import asyncio

    from hub.gate import TokenDirectory

    directory = TokenDirectory("http://127.0.0.1:1/hub/api", "service-token", ttl=30)
    asked = []

    async def lookup(token):
        asked.append(token)
        await asyncio.sleep(0.05)
        return {"kind": "user", "name": "alice", "scopes": ["access:servers!server=alice/demo-cardio"]}

    directory.lookup = lookup

    async def flood():
        headers = {"Authorization": "token t"}
        return await asyncio.gather(
            *(directory.requester(headers, "10.1.0.2", may_ask_hub=False) for _ in range(50))
        )

    found = asyncio.run(flood())
    assert len(asked) == 1
    assert {(w.actor, w.server) for w in found} == {("alice", "alice/demo-cardio")}
    no_token = asyncio.run(directory.requester({}, "10.1.0.2"))
    assert no_token.actor == "address:10.1.0.2" and "no token" in no_token.how
