"""LDAP login, and the mapping from directory groups to enclave roles.

Authentication is jupyterhub-ldapauthenticator (StartTLS, certificate verified). On top of it we
(1) require membership of one of the enclave groups, (2) hand the groups to JupyterHub
(``manage_groups``) so that roles follow from ``load_roles``, (3) record every login and every
refusal, with its reason, on the audit trail, and (4) throttle guessing (hub/throttle.py): a growing
delay after failures and a temporary lockout, per username and per source address. Repeated refusals are
aggregated (``audit.aggregate.RefusalAggregator``), and the names tried are clipped and escaped.

The directory bind is blocking (ldap3), so it runs on a thread: a flood of logins, or a directory that
hangs, must not stall the hub's event loop. The delay is an asyncio sleep, not a blocked thread.

A second factor follows the password (hub/mfa.py): JupyterHub's own OTP field (``request_otp``). A user
without one is sent, after a correct password, to the first-login enrolment page (``/hub/mfa/enrol``).

Accreditation is re-read from the directory (hub/accreditation.py) at most every ``auth_refresh_age``
seconds per user and before every spawn: a user removed from the enclave groups, disabled or deleted
loses their cookie at once (``refresh_user`` returns False), and the enforcer ends their servers and
tokens. While the directory is unreachable, logins and spawns are refused; sessions continue for
``outage_grace_seconds``. A browser session idle for ``idle_logout_seconds`` must log in again.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import json
import ssl
import time
import unicodedata
from collections.abc import Iterable

import ldap3
from jupyterhub import orm
from jupyterhub.handlers.base import BaseHandler
from jupyterhub.handlers.login import LogoutHandler
from jupyterhub.utils import url_path_join
from ldap3.core.exceptions import LDAPBindError, LDAPException
from ldapauthenticator import LDAPAuthenticator
from ldapauthenticator.ldapauthenticator import TlsStrategy
from tornado import ioloop, web
from traitlets import Bool, Float, Int, Unicode, default

from audit import AuditWriteError
from audit.aggregate import RefusalAggregator, clip
from hub import runtime
from hub.accreditation import (
    ADMINS,
    CHECKERS,
    ENCLAVE_GROUPS,
    RESEARCHERS,
    AccreditationReader,
    DirectoryUnreachable,
    Standing,
)
from hub.audit_hooks import AuditUnavailable
from hub.mfa import MfaSettings, MfaStore, Outcome, provisioning_uri, qr_svg
from hub.paths import EnclavePaths
from hub.throttle import LoginThrottle, ThrottleSettings

ENROL_COOKIE = "enclave-mfa-enrol"


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
            "scopes": [
                "read:users:name!user",
                "read:users:groups!user",
                "read:servers!user",
                "servers!user",
                "access:servers!user",
                "users:activity!user",
                "tokens!user",
            ],
        },
        {
            "name": "enclave-researcher",
            "groups": [RESEARCHERS],
            "scopes": ["custom:exports:request", "access:services!service=exports"],
        },
        {
            "name": "enclave-checker",
            "groups": [CHECKERS],
            "scopes": ["custom:exports:review", "access:services!service=exports"],
        },
        {
            "name": "enclave-admin",
            "groups": [ADMINS],
            "scopes": [
                "admin-ui",
                "list:users",
                "read:users",
                "read:servers",
                "delete:servers",
                "read:groups",
                "list:services",
                "custom:exports:audit",
                "access:services!service=exports",
            ],
        },
    ]


def revoke_tokens(db, user, keep_servers: bool = True) -> int:
    """Delete the user's API and OAuth tokens, except (``keep_servers``) those of their running servers,
    which the servers need to talk to the hub until they stop. Returns how many went."""
    keep = set()
    if keep_servers:
        for spawner in user.spawners.values():
            token = spawner.api_token and orm.APIToken.find(db, spawner.api_token)
            if token is not None and spawner.active:
                keep.add(token.id)
    gone = 0
    for token in list(user.orm_user.api_tokens):
        if token.id not in keep:
            db.delete(token)
            gone += 1
    db.commit()
    return gone


class AuditedLogoutHandler(LogoutHandler):
    """JupyterHub's logout, which also revokes the user's tokens (a token copied out of a session must not
    outlive it), recorded on the audit trail (the user is known only before the cookie goes)."""

    async def default_handle_logout(self):
        user = self.current_user
        tokens = revoke_tokens(self.db, user) if user is not None else 0
        await super().default_handle_logout()
        if user is not None:
            # The logout happened (the cookie is gone): on a full disk its record goes to the spool.
            runtime.audit_log(self.authenticator.state_dir).append_or_spool(
                actor=user.name, action="auth.logout", details={"tokens_revoked": tokens}
            )


class MfaEnrolHandler(BaseHandler):
    """First-login enrolment: shows the QR code of a new secret and asks for a first code to confirm.

    Reached only after a correct password (``EnclaveAuthenticator`` sets the signed, short-lived
    ``enclave-mfa-enrol`` cookie that binds this browser to the pending secret). The form carries the
    hub's xsrf token; a confirmed code logs the user in."""

    def pending(self) -> tuple[str, str] | None:
        raw = self.get_secure_cookie(ENROL_COOKIE, max_age_days=1)
        try:
            value = json.loads(raw) if raw else None
            return (value["uid"], value["nonce"]) if value else None
        except (ValueError, KeyError, TypeError):
            return None

    async def get(self):
        pending = self.pending()
        found = pending and await asyncio.to_thread(self.authenticator.mfa.pending, *pending)
        if not found:
            return self.redirect(url_path_join(self.hub.base_url, "login"))
        self.finish(await self._page(pending[0], found[0]))

    async def _page(self, uid: str, secret: str, error: str = "") -> str:
        uri = provisioning_uri(secret, uid)
        self.set_header("Cache-Control", "no-store")  # the page shows the secret: never kept by a cache
        return await self.render_template(
            "mfa_enrol.html",
            uid=uid,
            qr_svg=qr_svg(uri),
            secret=secret,
            error=error,
            xsrf=self.xsrf_token.decode("ascii"),
        )

    async def post(self):
        auth: EnclaveAuthenticator = self.authenticator
        pending = self.pending()
        found = pending and await asyncio.to_thread(auth.mfa.pending, *pending)
        if not found:
            raise web.HTTPError(403, "No enrolment is pending for this browser (expired?). Log in again.")
        uid, nonce = pending
        verdict = await asyncio.to_thread(auth.mfa.confirm, uid, nonce, self.get_body_argument("code", ""))
        if verdict.outcome != Outcome.OK:
            reason = "wrong_code" if verdict.outcome == Outcome.FAILED else "enrolment_ended"
            auth.record_mfa(uid, "enrol_failed", "denied", reason=reason)
            if verdict.outcome != Outcome.FAILED:
                raise web.HTTPError(403, "Too many wrong codes for this enrolment. Log in again.")
            self.set_status(400)
            return self.finish(
                await self._page(
                    uid, found[0], "That code is not right. Check the app's clock and enter the current code."
                )
            )
        auth.record_mfa(uid, "enrol")
        groups = found[1].get("groups", [])
        auth.record(uid, "ok", "password verified by LDAP; second factor enrolled", groups)
        user = await self.auth_to_user({"name": uid, "groups": groups})
        self.clear_cookie(ENROL_COOKIE, path=self.hub.base_url)
        self.set_login_cookie(user)
        user._auth_refreshed = auth._seen[uid] = time.monotonic()
        self.redirect(self.get_next_url(user))


class EnclaveAuthenticator(LDAPAuthenticator):
    """LDAPAuthenticator that admits only members of the enclave groups, and audits every attempt."""

    state_dir = Unicode(
        help="The enclave state directory, whose audit trail receives auth.login records."
    ).tag(config=True)

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
        10,
        help="Failed logins for one username, within the window, that lock it out for a while. While "
        "locked, even the correct password is refused, so guessing gains nothing.",
    ).tag(config=True)
    login_source_lockout_after = Int(
        50,
        help="Failed logins from one address, within the window, that lock that address out. Higher "
        "than the per-user limit because an address may be shared (NAT, a proxy).",
    ).tag(config=True)
    login_lockout_seconds = Float(900.0, help="How long a lockout lasts, in seconds.").tag(config=True)
    login_throttle_max_tracked = Int(
        10_000,
        help="Usernames and addresses remembered at most (each); the oldest are forgotten first, "
        "so a spray of invented names cannot grow the hub's memory.",
    ).tag(config=True)
    login_refusal_window = Float(
        60.0,
        help="Seconds over which repeated refused logins from one source become one audit record with "
        "a count, so a guessing flood cannot flood the trail.",
    ).tag(config=True)

    mfa_lockout_after = Int(
        5,
        help="Wrong one-time codes in a row that lock a user's second factor (site.yaml mfa.lockout_after).",
    ).tag(config=True)
    mfa_lockout_seconds = Float(
        300.0, help="How long the second factor stays locked after too many wrong codes, in seconds."
    ).tag(config=True)
    reader_bind_dn = Unicode(
        "",
        help="The directory's read-only service account (site.yaml ldap.bind_dn). Without it, accreditation "
        "is read only at login and a revocation waits for the next one.",
    ).tag(config=True)
    reader_password_file = Unicode(help="File holding the read-only account's password.").tag(config=True)
    groups_base = Unicode(
        help="Where the enclave groups live in the directory (site.yaml ldap.groups_base)."
    ).tag(config=True)
    user_dn_template = Unicode(help="A user's DN, with {username} (site.yaml ldap.user_dn_template).").tag(
        config=True
    )
    ca_file = Unicode(help="The CA that signs the directory's certificate.").tag(config=True)
    outage_grace_seconds = Float(
        900.0,
        help="While the directory is unreachable, existing sessions continue this long (new logins "
        "and spawns are refused at once): an outage must not end a day's analysis, nor last for ever.",
    ).tag(config=True)
    outage_retry_seconds = Float(
        10.0,
        help="After a failed directory check, answer from that failure for this long instead of waiting "
        "for another connect timeout on every request.",
    ).tag(config=True)
    idle_logout_seconds = Float(
        3600.0,
        help="A browser session with no request for this long must log in again (site.yaml "
        "session.idle_logout_minutes).",
    ).tag(config=True)
    require_mfa = Bool(True, help="Ask for the second factor. Only tests of other parts switch it off.").tag(
        config=True
    )

    @default("request_otp")
    def _request_otp_default(self):
        return True

    @default("otp_prompt")
    def _otp_prompt_default(self):
        return "One-time code (authenticator app; leave empty at your first login):"

    @default("auth_refresh_age")
    def _auth_refresh_age_default(self):
        return 30  # with the enforcer's 15 s directory pass: a revocation ends a session within a minute

    @default("refresh_pre_spawn")
    def _refresh_pre_spawn_default(self):
        return True

    @default("auth_refresh_strict")
    def _auth_refresh_strict_default(self):
        return True  # a revoked user's API tokens stop working too, not only their cookie

    _throttle: LoginThrottle | None = None
    _refusals: RefusalAggregator | None = None
    _mfa: MfaStore | None = None

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._in_flight: dict[str, list] = {}
        self._seen: dict[str, float] = {}  # user -> monotonic time of their last cookie request seen
        self._outage_since: float | None = None
        self._last_failure = 0.0

    @property
    def mfa(self) -> MfaStore:
        if self._mfa is None:
            self._mfa = MfaStore(
                self.state_dir, MfaSettings(self.mfa_lockout_after, self.mfa_lockout_seconds)
            )
        return self._mfa

    @property
    def reader(self) -> AccreditationReader:
        from hub.policy import LdapSettings

        return AccreditationReader(
            LdapSettings(
                server_address=self.server_address,
                server_port=self.server_port,
                tls_strategy=self.tls_strategy.name,
                ca_file=self.ca_file or None,
                user_dn_template=self.user_dn_template,
                groups_base=self.groups_base,
                bind_dn=self.reader_bind_dn or None,
                bind_password_file=self.reader_password_file or None,
            )
        )

    @property
    def throttle(self) -> LoginThrottle:
        if self._throttle is None:
            self._throttle = LoginThrottle(
                ThrottleSettings(
                    window=self.login_failure_window,
                    free_failures=self.login_free_failures,
                    base_delay=self.login_delay_base,
                    max_delay=self.login_delay_max,
                    user_lockout_after=self.login_user_lockout_after,
                    source_lockout_after=self.login_source_lockout_after,
                    lockout_seconds=self.login_lockout_seconds,
                    max_tracked=self.login_throttle_max_tracked,
                )
            )
        return self._throttle

    @property
    def refusals(self) -> RefusalAggregator:
        """Refused logins, aggregated per source; summaries are flushed by a timer and at exit."""
        if self._refusals is None:
            self._refusals = RefusalAggregator(
                runtime.audit_log(self.state_dir), window=self.login_refusal_window
            )
            flusher = ioloop.PeriodicCallback(
                self._refusals.flush_due, min(10.0, self.login_refusal_window) * 1000
            )
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
            self.log.error(
                "login of %s refused: the audit trail cannot be written: %s", clip(username, 128), exc
            )
            raise AuditUnavailable("log in") from exc

    def record_mfa(self, uid: str, event: str, outcome: str = "ok", **details) -> None:
        try:
            runtime.audit_log(self.state_dir).append(
                actor=clip(uid, 128),
                action="auth.mfa",
                target=clip(uid, 128),
                outcome=outcome,
                details={"event": event, **details},
            )
        except AuditWriteError as exc:  # as record(): no second-factor step without its record
            self.log.error(
                "second factor of %s refused: the audit trail cannot be written: %s", clip(uid, 128), exc
            )
            raise AuditUnavailable("log in") from exc

    def refuse(self, username: str, source: str, reason: str, **details) -> None:
        """A refused login on the trail, aggregated per (name, address) and reason."""
        name = username or "(blank)"  # the aggregator clips and escapes actor and source itself
        self.refusals.refuse(
            actor=name,
            action="auth.login",
            reason=reason,
            source=f"{name} from {source}",
            details={"source": clip(source, 64), **details},
        )

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
        try:
            standing = await self._standing(model["name"], for_login=True)
        except DirectoryUnreachable as exc:
            self.record(model["name"], "error", "directory unreachable (reader)")
            raise web.HTTPError(
                503, f"The login directory cannot be read now ({exc}). Try again later or tell the operator."
            ) from exc
        if standing is not None and standing.refusal():
            self.record(model["name"], "denied", f"directory: {standing.refusal()}")
            return None
        if self.require_mfa and not await self._second_factor(handler, model["name"], data, groups, source):
            return None
        self.record(
            model["name"],
            "ok",
            "password and second factor verified" if self.require_mfa else "password verified by LDAP",
            groups,
        )
        self._seen[model["name"]] = time.monotonic()
        return model

    async def _second_factor(self, handler, uid: str, data, groups: list[str], source: str) -> bool:
        """The one-time code of an enrolled user, or the start of enrolment (which ends this request)."""
        verdict = await asyncio.to_thread(self.mfa.verify, uid, str((data or {}).get("otp", "")))
        if verdict.outcome == Outcome.OK:
            self.record_mfa(uid, "ok")
            return True
        if verdict.outcome == Outcome.NOT_ENROLLED:
            await self._begin_enrolment(handler, uid, groups)
        if verdict.outcome == Outcome.LOCKED:
            self.refuse(uid, source, "mfa_locked", seconds_left=int(verdict.locked_for) + 1)
            raise web.HTTPError(
                429,
                "Too many wrong one-time codes for this account. Try again in "
                f"{int(verdict.locked_for) // 60 + 1} minutes.",
            )
        reason = {"failed": "wrong_code", "replay": "replayed_code", "lockout": "wrong_code"}[
            verdict.outcome.value
        ]
        self.record_mfa(
            uid,
            "replay" if verdict.outcome == Outcome.REPLAY else "failed",
            "denied",
            reason=reason,
            failures=verdict.failures,
        )
        if verdict.outcome == Outcome.LOCKOUT:
            self.record_mfa(
                uid, "lockout", "denied", reason="too_many_wrong_codes", seconds=int(self.mfa_lockout_seconds)
            )
        return False

    async def _begin_enrolment(self, handler, uid: str, groups: list[str]):
        """After a correct password, a user without a second factor enrols: a pending secret bound to this
        browser by a signed cookie, and a redirect to the enrolment page. Ends the login request."""
        nonce, _ = await asyncio.to_thread(self.mfa.begin, uid, {"groups": groups})
        self.record_mfa(uid, "enrol_pending")
        options = {k: v for k, v in handler.settings.get("cookie_options", {}).items() if k != "expires_days"}
        handler.set_secure_cookie(
            ENROL_COOKIE,
            json.dumps({"uid": uid, "nonce": nonce}),
            expires_days=None,
            path=handler.hub.base_url,
            httponly=True,
            **options,
        )
        handler.redirect(url_path_join(handler.hub.base_url, "mfa/enrol"))
        raise web.Finish()

    # ---- accreditation after login: refresh_user, pre-spawn ------------------------------------------
    async def _standing(self, uid: str, for_login: bool = False) -> Standing | None:
        """The user's standing now, read on a thread. None: no reader configured. Raises
        DirectoryUnreachable (remembered for ``outage_retry_seconds``)."""
        reader = self.reader
        if not reader.configured:
            return None
        now = time.monotonic()
        if not for_login and now - self._last_failure < self.outage_retry_seconds:
            raise DirectoryUnreachable(f"the directory at {reader.where} was unreachable moments ago")
        try:
            standing = await asyncio.to_thread(reader.one, uid)
        except DirectoryUnreachable:
            self._last_failure = now
            if self._outage_since is None:
                self._outage_since = now
            raise
        self._outage_since = None
        return standing

    async def refresh_user(self, user, handler=None):
        """Re-read the user's accreditation (every ``auth_refresh_age`` seconds, and before each spawn).

        False (log in again; token requests refused) when they are deleted, disabled, out of every
        enclave group, or idle too long in the browser; their groups when they changed; True otherwise.
        With the directory unreachable, True during ``outage_grace_seconds``, then False."""
        if (
            handler is not None
            and not getattr(handler, "_token_authenticated", False)
            and self._idle(user.name)
        ):
            self.log.warning("%s: idle for more than %ds, log in again", user.name, self.idle_logout_seconds)
            runtime.audit_log(self.state_dir).append(
                actor=user.name, action="auth.logout", details={"reason": "idle"}
            )
            return False
        try:
            standing = await self._standing(user.name)
        except DirectoryUnreachable as exc:
            within = time.monotonic() - (self._outage_since or time.monotonic()) < self.outage_grace_seconds
            self.log.warning(
                "accreditation of %s not re-read (%s); %s",
                user.name,
                exc,
                "grace period" if within else "grace expired",
            )
            return within
        if standing is None:
            return True
        if standing.refusal():
            self.log.warning("%s: no longer accredited (%s)", user.name, standing.refusal())
            return False
        if sorted(g.name for g in user.groups) != list(standing.groups):
            return {"name": user.name, "groups": list(standing.groups)}
        return True

    def _idle(self, name: str) -> bool:
        """Record a cookie request; True if the one before it was longer ago than the idle limit. Requests
        between refreshes are not seen, so the limit holds to within ``auth_refresh_age``."""
        now = time.monotonic()
        last = self._seen.get(name)
        self._seen[name] = now
        return last is not None and now - last > self.idle_logout_seconds

    async def pre_spawn_start(self, user, spawner):
        """Fail closed: no spawn without a directory that says, now, that the user is accredited."""
        try:
            standing = await self._standing(user.name)
        except DirectoryUnreachable as exc:
            spawner.record("server.spawn", "denied", reason="directory_unreachable")
            raise web.HTTPError(
                503,
                f"Cannot start a server now: {exc}. Running servers keep going; "
                "try again later or tell the operator.",
            ) from exc
        if standing is not None and standing.refusal():
            spawner.record("server.spawn", "denied", reason=f"directory: {standing.refusal()}")
            raise web.HTTPError(403, f"{user.name} is no longer accredited in the directory.")

    async def _checked_login(self, handler, data, username: str, key: str, source: str):
        """The throttled password check: refused at once while locked, delayed after failures."""
        locked = self.throttle.locked(key, source)
        if locked is not None:
            kind, left = locked
            self.refuse(username, source, "locked_out", locked=kind, seconds_left=int(left) + 1)
            raise web.HTTPError(
                429,
                f"Too many failed logins for this {'account' if kind == 'user' else 'address'}."
                f" Try again in {int(left) // 60 + 1} minutes.",
            )
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
                503,
                f"The login directory (LDAP at {where}) is unreachable. Try again later or tell the operator.",
            ) from exc

    async def _failed(self, username: str, key: str, source: str) -> None:
        """Count the failure, audit it (aggregated), and hold the answer for the growing delay."""
        started = self.throttle.failed(key, source)
        self.refuse(username, source, "invalid username or password")
        for kind in started:
            self.refuse(
                username, source, "lockout_started", locked=kind, seconds=int(self.login_lockout_seconds)
            )
        delay = self.throttle.delay(key, source)
        if delay:
            await asyncio.sleep(delay)  # the event loop serves everyone else meanwhile

    def get_connection(self, userdn, password):
        """ldapauthenticator's bind, with time limits: the bind runs on the hub's event loop, so a directory
        that accepts connections and never answers must not freeze the hub."""
        use_ssl = self.tls_strategy == TlsStrategy.on_connect
        server = ldap3.Server(
            self.server_address,
            port=self.server_port,
            use_ssl=use_ssl,
            tls=ldap3.Tls(**self.tls_kwargs),
            connect_timeout=5,
        )
        auto_bind = (
            ldap3.AUTO_BIND_TLS_BEFORE_BIND
            if self.tls_strategy == TlsStrategy.before_bind
            else ldap3.AUTO_BIND_NO_TLS
        )
        try:
            return ldap3.Connection(
                server, user=userdn, password=password, auto_bind=auto_bind, receive_timeout=10
            )
        except LDAPBindError:
            return None  # wrong password or no such user: authenticate() records the refusal

    def get_handlers(self, app):
        return [
            *super().get_handlers(app),
            ("/logout", AuditedLogoutHandler),
            ("/mfa/enrol", MfaEnrolHandler),
        ]

    async def check_allowed(self, username, auth_model):
        # authenticate() already refused everyone outside the enclave groups.
        return bool(auth_model and auth_model.get("groups"))
