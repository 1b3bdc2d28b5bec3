"""The hub API as notebook containers see it: a few routes, a rate limit, and nothing else.

Containers must reach the hub to identify tokens, finish the OAuth login and report activity. Given
the whole hub instead, code in a notebook could log in with the researcher's password (a full browser
session from inside the enclave), mint tokens with data in their notes, or create servers whose names
carry data -- all readable from outside later. So the hub listens on loopback only, and containers
reach it through this gate, on the hub port of their network's gateway (the only hub port the host
firewall admits from enclave bridges).

What the gate adds on the way:
- a token bucket per server (per source address: on an enclave bridge a container cannot forge its
  address, it has no NET_RAW or NET_ADMIN), so one container cannot slow the hub for everyone;
- activity reports are parsed and re-written: timestamps in the future become now (they would
  postpone culling), malformed bodies are refused with a message naming the field;
- every refusal goes on the audit trail through ``audit.aggregate.RefusalAggregator``, under the user
  and server the presented token belongs to (asked of the hub, cached briefly), never only an address.

    python -m hub.gate        (a hub-managed service; see hub/jupyterhub_config.py)
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import random
import re
import signal
import ssl
import time
import urllib.parse
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from tornado import httpclient, ioloop, web

from audit.aggregate import RefusalAggregator, clip

log = logging.getLogger("enclave.gate")

# (method, path): everything jupyterhub-singleuser needs, and nothing a person would use.
ALLOWED = [
    ("GET", re.compile(r"^/hub/api/?$")),  # version check at server start
    ("GET", re.compile(r"^/hub/api/user$")),  # who holds this token
    ("POST", re.compile(r"^/hub/api/users/[^/]+/activity$")),  # activity, for the idle culler
    ("POST", re.compile(r"^/hub/api/oauth2/token$")),  # OAuth code exchange when the researcher logs in
]
ACTIVITY = re.compile(r"^/hub/api/users/[^/]+/activity$")
FORWARDED_HEADERS = ("Authorization", "Content-Type", "Accept", "User-Agent")
REFUSAL = (
    "Only the notebook server's own hub calls pass here; people log in through the enclave's web address."
)
SERVER_SCOPE_PREFIX = "access:servers!server="
TOKEN_HEADER = re.compile(r"^\s*(?:token|bearer)\s+(\S+)\s*$", re.IGNORECASE)
MAX_ACTIVITY_SERVERS = 32
# A throttled request is answered after HOLD_SECONDS (its Retry-After is at least that), for at most
# MAX_HELD requests per source and MAX_HELD_TOTAL in all at once; beyond that at once. A flooding loop then
# waits instead of burning the CPU the hub needs. A held request costs one connection and a coroutine; a
# container has at most its nofile limit of connections, so the caps bound the gate's memory.
MAX_HELD = 256
MAX_HELD_TOTAL = 2048
HOLD_SECONDS = 1.0


def allowed(method: str, path: str) -> bool:
    return any(method == m and rx.match(path) for m, rx in ALLOWED)


def route_kind(method: str, path: str) -> str:
    """What a refused request was after, as the aggregation reason: different attacks from one server
    get records of their own, so a harmless first refusal cannot hide a different one in its count."""
    plain = urllib.parse.unquote(urllib.parse.unquote(path)).lower()
    for kind, rx in _KINDS:
        if rx.search(plain):
            return kind
    return "hub-api" if plain.startswith("/hub/api") else "hub-page"


_KINDS = [
    ("oauth-grant", re.compile(r"/oauth2/(authorize|approve)|/oauth_callback|/api/oauth2/(?!token$)")),
    ("login", re.compile(r"^/hub/(login|logout|signup)")),
    ("token-mint", re.compile(r"/tokens?(/|$)")),
    ("server-create", re.compile(r"/users/[^/]+/servers?(/|$)|^/hub/spawn")),
]


# ---- rate limit -------------------------------------------------------------------------------------


@dataclass
class TokenBucket:
    """``burst`` requests at once, refilled at ``rate`` per second."""

    rate: float
    burst: float
    tokens: float
    stamp: float

    def take(self, now: float) -> float:
        """Spend one token. Returns 0 if there was one, else the seconds until there will be."""
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.rate


class RateLimiter:
    """One token bucket per source, at most ``max_sources`` of them (least recently used go first: a
    bucket that has been idle long enough to be evicted would have refilled anyway)."""

    def __init__(self, rate: float, burst: float, max_sources: int = 4096, clock=time.monotonic) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError(f"gate rate limit: rate {rate} must be > 0 and burst {burst} >= 1")
        self.rate, self.burst, self.max_sources, self._clock = rate, burst, max_sources, clock
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def check(self, source: str) -> float:
        """0 if the request may go now, else how many seconds the source should wait."""
        now = self._clock()
        bucket = self._buckets.get(source)
        if bucket is None:
            bucket = self._buckets[source] = TokenBucket(self.rate, self.burst, self.burst, now)
            while len(self._buckets) > self.max_sources:
                self._buckets.popitem(last=False)
        self._buckets.move_to_end(source)
        return bucket.take(now)


def retry_after(wait: float) -> str:
    """A jittered Retry-After, so that throttled clients do not all come back in the same second."""
    return str(max(1, math.ceil(wait + random.uniform(0, 1))))


# ---- activity ---------------------------------------------------------------------------------------


class ActivityError(ValueError):
    """An activity report the gate will not pass on; the message names the field."""


def _timestamp(value: Any, field: str) -> datetime:
    if not isinstance(value, str) or len(value) > 64:
        raise ActivityError(f"activity body: {field}: must be an ISO 8601 timestamp string")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ActivityError(
            f"activity body: {field}: {clip(value, 64)} is not an ISO 8601 timestamp"
        ) from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def clamp_activity(body: bytes, now: datetime) -> tuple[bytes, list[str]]:
    """The activity report to pass on, and the fields whose future timestamps were set to ``now``.

    Only ``last_activity`` and ``servers.<name>.last_activity`` are passed on, re-serialized: a
    timestamp in the future would keep a server from being culled until then (JupyterHub accepts up
    to 59 minutes ahead). Raises ActivityError for anything malformed."""
    try:
        data = json.loads(body or b"")
    except (ValueError, UnicodeDecodeError):
        raise ActivityError("activity body: not valid JSON") from None
    if not isinstance(data, dict):
        raise ActivityError("activity body: must be a JSON object")
    out: dict[str, Any] = {}
    clamped: list[str] = []

    def keep(value: Any, field: str) -> str:
        moment = _timestamp(value, field)
        if moment > now:
            clamped.append(field)
            moment = now
        return _iso(moment)

    if data.get("last_activity") is not None:
        out["last_activity"] = keep(data["last_activity"], "last_activity")
    servers = data.get("servers")
    if servers is not None:
        if not isinstance(servers, dict) or len(servers) > MAX_ACTIVITY_SERVERS:
            raise ActivityError(
                f"activity body: servers: must be an object of at most {MAX_ACTIVITY_SERVERS} servers"
            )
        out["servers"] = {}
        for name, info in servers.items():
            field = f"servers.{clip(name, 64)}.last_activity"
            if not isinstance(info, dict):
                raise ActivityError(f"activity body: servers.{clip(name, 64)}: must be an object")
            out["servers"][name] = {"last_activity": keep(info.get("last_activity"), field)}
    if not out:
        raise ActivityError("activity body: needs last_activity or servers")
    return json.dumps(out).encode(), clamped


# ---- who is asking ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Requester:
    """Who a request is recorded under: the token's user and server, or only an address."""

    actor: str
    server: str | None  # "<user>/<project>" for a notebook server's token
    source: str  # the aggregation source: the server, the user, or the address
    how: str  # how we know, for details.identified_by

    @property
    def project(self) -> str | None:
        return self.server.split("/", 1)[1] if self.server else None


def requester_from_model(model: dict[str, Any], ip: str, how: str) -> Requester:
    name = str(model.get("name", "?"))
    actor = f"service:{name}" if model.get("kind") == "service" else name
    servers = [
        s[len(SERVER_SCOPE_PREFIX) :] for s in model.get("scopes") or [] if s.startswith(SERVER_SCOPE_PREFIX)
    ]
    server = servers[0] if len(servers) == 1 else None
    return Requester(clip(actor, 128), server, server or actor, how)


def by_address(ip: str, how: str) -> Requester:
    return Requester(f"address:{ip}", None, f"address:{ip}", how)


def presented_token(headers: Any) -> str | None:
    match = TOKEN_HEADER.match(headers.get("Authorization", ""))
    return match.group(1) if match else None


class TokenDirectory:
    """Token -> Requester, asked of the hub through JupyterHub's own ``HubAuth`` (the gate's service
    token is its credential; ``GET /hub/api/user`` with the presented token says whose it is) and
    cached ``ttl`` seconds, invalid tokens included."""

    def __init__(self, hub_api: str, service_token: str, ttl: float = 30.0) -> None:
        from jupyterhub.services.auth import HubAuth

        self.hub_auth = HubAuth(api_url=hub_api.rstrip("/"), api_token=service_token, cache_max_age=int(ttl))
        self.ttl = ttl
        self._last_by_address: OrderedDict[str, tuple[float, Requester]] = OrderedDict()
        self._asked: dict[str, float] = {}
        self._inflight: dict[str, asyncio.Future] = {}

    async def lookup(self, token: str) -> dict | None:
        try:
            return await self.hub_auth.user_for_token(token, use_cache=True, sync=False)
        except Exception as exc:  # noqa: BLE001 -- hub down or slow: record by address, ask again next time
            log.warning("gate: could not ask the hub who holds a token: %s", exc)
            return None

    async def requester(self, headers: Any, ip: str, may_ask_hub: bool = True) -> Requester:
        """The token's owner; the address only when no token was presented (said in ``how``)."""
        token = presented_token(headers)
        if token is None:
            return by_address(ip, "source address: no token was presented")
        if may_ask_hub:
            return await self._identify(token, ip)
        # Throttled: a flood may ask the hub at most once per address and ttl, and the requests that arrive
        # while that one question is out wait for its answer rather than being recorded by address.
        expires, known = self._last_by_address.get(ip, (0.0, None))
        if known is not None and expires > time.monotonic():  # addresses are reused by new containers
            return known
        pending = self._inflight.get(ip)
        if pending is None:
            if time.monotonic() - self._asked.get(ip, -math.inf) < self.ttl:
                return by_address(ip, "source address: throttled, its token was not identified")
            self._asked[ip] = time.monotonic()
            while len(self._asked) > 4096:
                self._asked.pop(next(iter(self._asked)))
            pending = self._inflight[ip] = asyncio.ensure_future(self._identify(token, ip))
            pending.add_done_callback(lambda _: self._inflight.pop(ip, None))
        return await asyncio.shield(pending)

    async def _identify(self, token: str, ip: str) -> Requester:
        model = await self.lookup(token)
        if model is None:
            return by_address(ip, "source address: the presented token is not valid")
        found = requester_from_model(model, ip, "token")
        self._last_by_address[ip] = (time.monotonic() + self.ttl, found)
        self._last_by_address.move_to_end(ip)
        while len(self._last_by_address) > 4096:
            self._last_by_address.popitem(last=False)
        return found


# ---- the gate ---------------------------------------------------------------------------------------


class Gate:
    """The gate's shared state: rate limiter, token directory and the refusal trail."""

    def __init__(
        self,
        upstream: str,
        refusals: RefusalAggregator,
        limiter: RateLimiter,
        tokens: TokenDirectory,
        upstream_tls: ssl.SSLContext | None = None,
    ) -> None:
        self.upstream, self.refusals, self.limiter, self.tokens = (
            upstream.rstrip("/"),
            refusals,
            limiter,
            tokens,
        )
        self.upstream_tls = upstream_tls  # the gate's own client certificate, for a hub on https
        # One writer thread: a slow fsync must not stall the event loop that answers every container.
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gate-audit")
        self.held: dict[str, int] = {}  # throttled requests being held back, per source address

    @staticmethod
    def entry(who: Requester, action: str, reason: str, route: str, **details: Any) -> dict[str, Any]:
        details = {"route": route, "identified_by": who.how, **details}
        if who.server:
            details["server"] = who.server
        return {
            "actor": who.actor,
            "source": who.source,
            "action": action,
            "reason": reason,
            "project": who.project,
            "target": who.server,
            "details": details,
        }

    def record(self, who: Requester, action: str, reason: str, route: str, **details: Any) -> None:
        entry = self.entry(who, action, reason, route, **details)
        self._writer.submit(lambda: self.refusals.refuse(**entry)).add_done_callback(_log_failure)

    def flush_due(self) -> None:
        self._writer.submit(self.refusals.flush_due).add_done_callback(_log_failure)

    def close(self) -> None:
        self._writer.submit(self.refusals.flush_all).result(timeout=30)


def _log_failure(future) -> None:
    if future.exception() is not None:
        log.error("gate: could not write an audit record: %s", future.exception())


class GateHandler(web.RequestHandler):
    SUPPORTED_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS")

    @property
    def gate(self) -> Gate:
        return self.settings["gate"]

    async def _handle(self, *args) -> None:
        method, path = self.request.method, self.request.path
        route = f"hub-api {method} {clip(path)}"
        wait = self.gate.limiter.check(self.request.remote_ip)
        if wait:
            await self._throttle(route, wait)
            return
        if not allowed(method, path) or "Cookie" in self.request.headers:
            kind = "cookie" if "Cookie" in self.request.headers else route_kind(method, path)
            await self._refuse("sidedoor.refused", kind, route, 403, REFUSAL)
            return
        body = self.request.body if method == "POST" else None
        if ACTIVITY.match(path):
            body = await self._activity(route)
            if body is None:
                return
        await self._forward(method, body)

    async def _activity(self, route: str) -> bytes | None:
        try:
            body, clamped = clamp_activity(self.request.body, datetime.now(UTC))
        except ActivityError as exc:
            await self._refuse("gate.activity", "malformed", route, 400, str(exc))
            return None
        if clamped:
            who = await self.gate.tokens.requester(self.request.headers, self.request.remote_ip)
            self.gate.record(who, "gate.activity", "future_timestamp", route, clamped=clamped[:8])
        return body

    async def _forward(self, method: str, body: bytes | None) -> None:
        headers = {k: v for k, v in self.request.headers.items() if k in FORWARDED_HEADERS}
        response = await httpclient.AsyncHTTPClient().fetch(
            self.gate.upstream + self.request.uri,
            method=method,
            headers=headers,
            body=body,
            raise_error=False,
            follow_redirects=False,
            request_timeout=30,
            ssl_options=self.gate.upstream_tls,
        )
        self.set_status(response.code, response.reason)
        if "Content-Type" in response.headers:
            self.set_header("Content-Type", response.headers["Content-Type"])
        self.finish(response.body or b"")

    async def _refuse(self, action: str, reason: str, route: str, status: int, message: str) -> None:
        who = await self.gate.tokens.requester(self.request.headers, self.request.remote_ip)
        self.gate.record(who, action, reason, route)
        self.set_status(status)
        self.finish({"status": status, "message": message})

    async def _throttle(self, route: str, wait: float) -> None:
        ip = self.request.remote_ip
        who = await self.gate.tokens.requester(self.request.headers, ip, may_ask_hub=False)
        # Counted here, not on the writer thread: a repeat is only a count in memory, and a thread hand-off
        # per throttled request would cost more CPU than the count (the first of a window waits for fsync).
        self.gate.refusals.refuse(**self.gate.entry(who, "gate.throttled", "rate_limited", route))
        held = self.gate.held
        if held.get(ip, 0) < MAX_HELD and sum(held.values()) < MAX_HELD_TOTAL:  # tarpit: the loop waits
            held[ip] = held.get(ip, 0) + 1
            try:
                await asyncio.sleep(HOLD_SECONDS)
            finally:
                held[ip] -= 1
                if not held[ip]:
                    del held[ip]
        self.set_status(429)
        self.set_header("Retry-After", retry_after(wait))
        self.finish({"status": 429, "message": "Too many hub requests from this server; retry later."})

    get = post = put = patch = delete = head = options = _handle


def _access_log(handler: web.RequestHandler) -> None:
    """Refusals are on the audit trail (aggregated); an access line per throttled request would let one
    container flood the service log instead."""
    if handler.get_status() < 400:
        log.debug("%d %s %s", handler.get_status(), handler.request.method, handler.request.path)


def make_app(gate: Gate) -> web.Application:
    return web.Application([(r".*", GateHandler)], gate=gate, log_function=_access_log)


def make_gate(
    upstream: str,
    state_dir: str,
    service_token: str,
    *,
    rate: float,
    burst: float,
    window: float,
    ttl: float = 30.0,
) -> Gate:
    from pathlib import Path

    from audit import AuditLog

    refusals = RefusalAggregator(AuditLog.open(Path(state_dir)), window=window)
    tokens = TokenDirectory(upstream.rstrip("/") + "/hub/api", service_token, ttl=ttl)
    return Gate(upstream, refusals, RateLimiter(rate, burst), tokens, upstream_tls=upstream_context(upstream))


# ---- TLS on either side --------------------------------------------------------------------------------


def upstream_context(upstream: str) -> ssl.SSLContext | None:
    """For a hub on https: the gate's service pair (``JUPYTERHUB_SSL_*``, given by the hub to a managed
    service; the hub asks every client for a certificate of its authorities) and the authorities it trusts."""
    if not upstream.startswith("https:"):
        return None
    from jupyterhub.utils import make_ssl_context

    names = ("JUPYTERHUB_SSL_KEYFILE", "JUPYTERHUB_SSL_CERTFILE", "JUPYTERHUB_SSL_CLIENT_CA")
    missing = [n for n in names if not os.environ.get(n)]
    if missing:
        raise SystemExit(
            f"enclave-gate: the hub {upstream} is https but {', '.join(missing)} is not set "
            "(the hub sets them for a managed service when internal_ssl is on)"
        )
    key, cert, ca = (os.environ[n] for n in names)
    return make_ssl_context(key, cert, cafile=ca)


def listen_context() -> ssl.SSLContext | None:
    """TLS towards the containers when ``ENCLAVE_GATE_TLS_CERT``/``_KEY`` are set: the gate's pair (signed
    by hub-ca, which notebooks trust) and, with ``ENCLAVE_GATE_TLS_CLIENT_CA``, a client certificate of
    that authority required of every caller (each notebook server has one; nothing else on a bridge does)."""
    cert, key = os.environ.get("ENCLAVE_GATE_TLS_CERT"), os.environ.get("ENCLAVE_GATE_TLS_KEY")
    if not cert and not key:
        return None
    if not (cert and key):
        raise SystemExit("enclave-gate: set both ENCLAVE_GATE_TLS_CERT and ENCLAVE_GATE_TLS_KEY, or neither")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    client_ca = os.environ.get("ENCLAVE_GATE_TLS_CLIENT_CA")
    if client_ca:
        context.load_verify_locations(cafile=client_ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    try:
        return float(raw) if raw else default
    except ValueError:
        raise SystemExit(f"enclave-gate: {name}={raw!r} is not a number") from None


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="[%(levelname)1.1s %(asctime)s enclave-gate] %(message)s")
    bind = os.environ["ENCLAVE_GATE_BIND"]
    host, port = bind.rsplit(":", 1)
    gate = make_gate(
        os.environ["ENCLAVE_HUB_UPSTREAM"],
        os.environ["ENCLAVE_STATE_DIR"],
        os.environ.get("JUPYTERHUB_API_TOKEN", ""),
        rate=_env_float("ENCLAVE_GATE_RATE", 5.0),
        burst=_env_float("ENCLAVE_GATE_BURST", 20.0),
        window=_env_float("ENCLAVE_AUDIT_REFUSAL_WINDOW", 60.0),
    )
    # The gate's own work (answering and counting refusals) must not take CPU from the hub under a flood;
    # the few calls it forwards wait a little longer instead.
    os.nice(int(_env_float("ENCLAVE_GATE_NICE", 5)))
    app = make_app(gate)
    tls = listen_context()
    app.listen(int(port), address=host, xheaders=False, max_body_size=1024 * 1024, ssl_options=tls)
    ioloop.PeriodicCallback(gate.flush_due, 5000).start()
    start_network_summarizer(gate)
    loop = asyncio.get_event_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: _shutdown(gate))
    log.info(
        "hub gate on %s (%s) -> %s, %.1f req/s per server (burst %d)",
        bind,
        "TLS" if tls else "plain HTTP",
        gate.upstream,
        gate.limiter.rate,
        gate.limiter.burst,
    )
    ioloop.IOLoop.current().start()


def start_network_summarizer(gate: Gate) -> None:
    """Firewall drops from enclave bridges onto the trail (hub/netlog.py), in this process: the gate
    runs as long as the hub does and is restarted with it."""
    prefix = os.environ.get("ENCLAVE_NETWORK_PREFIX")
    if not prefix:
        return
    from hub import netlog

    netlog.start(prefix, gate.refusals)


def _shutdown(gate: Gate) -> None:
    try:
        gate.close()  # the counts of open windows go on the trail before we exit
    finally:
        ioloop.IOLoop.current().stop()


if __name__ == "__main__":
    main()
