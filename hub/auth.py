"""LDAP login, and the mapping from directory groups to enclave roles.

Authentication is jupyterhub-ldapauthenticator (StartTLS, certificate verified). On top of it we
(1) require membership of one of the enclave groups, (2) hand the groups to JupyterHub
(``manage_groups``) so that roles follow from ``load_roles``, (3) record every login and every
refusal, with its reason, on the audit trail, and (4) throttle guessing (hub/throttle.py): a growing
delay after failures and a temporary lockout, per username and per source address. Repeated refusals are
aggregated (``audit.aggregate.RefusalAggregator``), and the names tried are clipped and escaped.

The directory bind is blocking (ldap3), so it runs on a thread: a flood of logins, or a directory that
hangs, must not stall the hub's event loop. The delay is an asyncio sleep, not a blocked thread.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import ssl
import unicodedata
from collections.abc import Iterable

import ldap3
from jupyterhub.handlers.login import LogoutHandler
from ldap3.core.exceptions import LDAPBindError, LDAPException
from ldapauthenticator import LDAPAuthenticator
from ldapauthenticator.ldapauthenticator import TlsStrategy
from tornado import ioloop, web
from traitlets import Float, Int, Unicode, default

from audit import AuditWriteError
from audit.aggregate import RefusalAggregator, clip
from hub import runtime
from hub.audit_hooks import AuditUnavailable
from hub.paths import EnclavePaths
from hub.throttle import LoginThrottle, ThrottleSettings

RESEARCHERS = "enclave-researchers"
CHECKERS = "enclave-checkers"
ADMINS = "enclave-admins"
ENCLAVE_GROUPS = (RESEARCHERS, CHECKERS, ADMINS)


def group_dn(cn: str, groups_base: str) -> str:
    return f"cn={cn},{groups_base}"


def groups_from_dns(dns: Iterable[str]) -> list[str]:
    """['cn=enclave-checkers,ou=groups,...'] -> ['enclave-checkers'], only the enclave's own groups."""
    names = []
    for dn in dns:
        first = dn.split(",", 1)[0]
        key, _, value = first.partition("=")
        if key.strip().lower() == "cn" and value.strip() in ENCLAVE_GROUPS:
            names.append(value.strip())
    return sorted(set(names))


def suspicious_username(name: str) -> bool:
    """A name with a control, format (zero-width, bidi) or unassigned character: never a directory uid,
    and the kind of name that makes two accounts look alike."""
    return any(unicodedata.category(ch) in ("Cc", "Cf", "Co", "Cn", "Zl", "Zp") for ch in name)


def enclave_roles() -> list[dict]:
    """JupyterHub roles per enclave group: least privilege, and separation of duties.

    Researchers get their own servers only. Checkers get no servers at all, only the review scope of the
    export service. Admins may see users and servers in the admin page but never *access* a researcher's
    notebook (no ``access:servers``) and never vote on exports.
    """
    return [
        {
            "name": "user",  # JupyterHub's default role for every user: narrowed from 'self'
            "scopes": ["read:users:name!user", "read:users:groups!user", "read:servers!user",
                       "servers!user", "access:servers!user", "users:activity!user", "tokens!user"],
        },
        {"name": "enclave-researcher", "groups": [RESEARCHERS],
         "scopes": ["custom:exports:request", "access:services!service=exports"]},
        {"name": "enclave-checker", "groups": [CHECKERS],
         "scopes": ["custom:exports:review", "access:services!service=exports"]},
        {"name": "enclave-admin", "groups": [ADMINS],
         "scopes": ["admin-ui", "list:users", "read:users", "read:servers", "delete:servers",
                    "read:groups", "list:services", "custom:exports:audit", "access:services!service=exports"]},
    ]


class AuditedLogoutHandler(LogoutHandler):
    """JupyterHub's logout, recorded on the audit trail (the user is known only before the cookie goes)."""

    async def default_handle_logout(self):
        user = self.current_user
        await super().default_handle_logout()
        if user is not None:
            # The logout happened (the cookie is gone): on a full disk its record goes to the spool.
            runtime.audit_log(self.authenticator.state_dir).append_or_spool(
                actor=user.name, action="auth.logout", details={})


class EnclaveAuthenticator(LDAPAuthenticator):
    """LDAPAuthenticator that admits only members of the enclave groups, and audits every attempt."""

    state_dir = Unicode(help="The enclave state directory, whose audit trail receives auth.login records.").tag(
        config=True
    )

    @default("state_dir")
    def _state_dir_default(self):
        return str(EnclavePaths.from_env().state_dir)

    @default("manage_groups")
    def _manage_groups_default(self):
        return True  # LDAP is the source of truth for group membership, refreshed at every login

    @default("group_search_filter")
    def _group_filter_default(self):
        return "(&(objectClass=groupOfNames)(member={userdn}))"

    login_failure_window = Float(
        900.0, help="Seconds over which failed logins count towards the delay and the lockout."
    ).tag(config=True)
    login_free_failures = Int(
        3, help="Failed logins (per username or per address) answered at once; later failures wait."
    ).tag(config=True)
    login_delay_base = Float(
        1.0, help="The first delay after the free failures, in seconds; it doubles with each failure."
    ).tag(config=True)
    login_delay_max = Float(
        8.0, help="The longest delay, in seconds: long enough to slow guessing, short enough for a person."
    ).tag(config=True)
    login_user_lockout_after = Int(
        10, help="Failed logins for one username, within the window, that lock it out for a while. While "
        "locked, even the correct password is refused, so guessing gains nothing."
    ).tag(config=True)
    login_source_lockout_after = Int(
        50, help="Failed logins from one address, within the window, that lock that address out. Higher "
        "than the per-user limit because an address may be shared (NAT, a proxy)."
    ).tag(config=True)
    login_lockout_seconds = Float(
        900.0, help="How long a lockout lasts, in seconds."
    ).tag(config=True)
    login_throttle_max_tracked = Int(
        10_000, help="Usernames and addresses remembered at most (each); the oldest are forgotten first, "
        "so a spray of invented names cannot grow the hub's memory."
    ).tag(config=True)
    login_refusal_window = Float(
        60.0, help="Seconds over which repeated refused logins from one source become one audit record with "
        "a count, so a guessing flood cannot flood the trail."
    ).tag(config=True)

    _throttle: LoginThrottle | None = None
    _refusals: RefusalAggregator | None = None

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._in_flight: dict[str, list] = {}

    @property
    def throttle(self) -> LoginThrottle:
        if self._throttle is None:
            self._throttle = LoginThrottle(ThrottleSettings(
                window=self.login_failure_window, free_failures=self.login_free_failures,
                base_delay=self.login_delay_base, max_delay=self.login_delay_max,
                user_lockout_after=self.login_user_lockout_after,
                source_lockout_after=self.login_source_lockout_after,
                lockout_seconds=self.login_lockout_seconds, max_tracked=self.login_throttle_max_tracked,
            ))
        return self._throttle

    @property
    def refusals(self) -> RefusalAggregator:
        """Refused logins, aggregated per source; summaries are flushed by a timer and at exit."""
        if self._refusals is None:
            self._refusals = RefusalAggregator(runtime.audit_log(self.state_dir), window=self.login_refusal_window)
            flusher = ioloop.PeriodicCallback(self._refusals.flush_due, min(10.0, self.login_refusal_window) * 1000)
            flusher.start()
            atexit.register(self._refusals.flush_all)
        return self._refusals

    def record(self, username: str, outcome: str, reason: str, groups: list[str] | None = None) -> None:
        details = {"reason": reason}
        if groups is not None:
            details["groups"] = groups
        try:
            runtime.audit_log(self.state_dir).append(
                actor=clip(username, 128) or "(blank)", action="auth.login", outcome=outcome, details=details
            )
        except AuditWriteError as exc:  # no login without its record: refuse, and say why (issue 19)
            self.log.error("login of %s refused: the audit trail cannot be written: %s", clip(username, 128), exc)
            raise AuditUnavailable("log in") from exc

    def refuse(self, username: str, source: str, reason: str, **details) -> None:
        """A refused login on the trail, aggregated per (name, address) and reason."""
        name = username or "(blank)"  # the aggregator clips and escapes actor and source itself
        self.refusals.refuse(actor=name, action="auth.login", reason=reason, source=f"{name} from {source}",
                             details={"source": clip(source, 64), **details})

    async def authenticate(self, handler, data):
        username = str((data or {}).get("username", ""))
        source = handler.request.remote_ip if handler is not None else "unknown"
        key = clip(username.strip().lower(), 128)
        async with self._one_at_a_time(key):  # concurrent guesses at one name cannot outrun the count
            model = await self._checked_login(handler, data, username, key, source)
        if model is None:
            return None
        groups = groups_from_dns(model["auth_state"].get("ldap_groups", []))
        if not groups:
            self.record(username, "denied", "not in any enclave group (not accredited)")
            return None
        model["groups"] = groups
        self.record(model["name"], "ok", "password verified by LDAP", groups)
        return model

    async def _checked_login(self, handler, data, username: str, key: str, source: str):
        """The throttled password check: refused at once while locked, delayed after failures."""
        locked = self.throttle.locked(key, source)
        if locked is not None:
            kind, left = locked
            self.refuse(username, source, "locked_out", locked=kind, seconds_left=int(left) + 1)
            raise web.HTTPError(429, f"Too many failed logins for this {'account' if kind == 'user' else 'address'}."
                                     f" Try again in {int(left) // 60 + 1} minutes.")
        if suspicious_username(username):
            model = None  # never sent to the directory; answered like any wrong name or password
        else:
            model = await self._directory_login(handler, data, username)
        if model is None:
            await self._failed(username, key, source)
            return None
        self.throttle.succeeded(key)
        return model

    @contextlib.asynccontextmanager
    async def _one_at_a_time(self, key: str):
        """Attempts at one username wait for each other. Entries live only while attempts are in flight."""
        entry = self._in_flight.setdefault(key, [asyncio.Lock(), 0])
        entry[1] += 1
        try:
            async with entry[0]:
                yield
        finally:
            entry[1] -= 1
            if entry[1] == 0:
                self._in_flight.pop(key, None)

    async def _directory_login(self, handler, data, username: str):
        """ldapauthenticator's check, on a thread (its bind blocks); a dead directory is a 503."""
        try:
            return await asyncio.to_thread(asyncio.run, LDAPAuthenticator.authenticate(self, handler, data))
        except (LDAPException, ssl.SSLError, OSError) as exc:
            where = f"{self.server_address}:{self.server_port}"
            self.log.error("LDAP directory at %s unreachable: %s", where, exc)
            self.record(username, "error", f"directory unreachable: {type(exc).__name__}")
            raise web.HTTPError(
                503, f"The login directory (LDAP at {where}) is unreachable. Try again later or tell the operator."
            ) from exc

    async def _failed(self, username: str, key: str, source: str) -> None:
        """Count the failure, audit it (aggregated), and hold the answer for the growing delay."""
        started = self.throttle.failed(key, source)
        self.refuse(username, source, "invalid username or password")
        for kind in started:
            self.refuse(username, source, "lockout_started", locked=kind,
                        seconds=int(self.login_lockout_seconds))
        delay = self.throttle.delay(key, source)
        if delay:
            await asyncio.sleep(delay)  # the event loop serves everyone else meanwhile

    def get_connection(self, userdn, password):
        """ldapauthenticator's bind, with time limits: the bind runs on the hub's event loop, so a directory
        that accepts connections and never answers must not freeze the hub."""
        use_ssl = self.tls_strategy == TlsStrategy.on_connect
        server = ldap3.Server(self.server_address, port=self.server_port, use_ssl=use_ssl,
                              tls=ldap3.Tls(**self.tls_kwargs), connect_timeout=5)
        auto_bind = ldap3.AUTO_BIND_TLS_BEFORE_BIND if self.tls_strategy == TlsStrategy.before_bind else ldap3.AUTO_BIND_NO_TLS
        try:
            return ldap3.Connection(server, user=userdn, password=password, auto_bind=auto_bind, receive_timeout=10)
        except LDAPBindError:
            return None  # wrong password or no such user: authenticate() records the refusal

    def get_handlers(self, app):
        return [*super().get_handlers(app), ("/logout", AuditedLogoutHandler)]

    async def check_allowed(self, username, auth_model):
        # authenticate() already refused everyone outside the enclave groups.
        return bool(auth_model and auth_model.get("groups"))
