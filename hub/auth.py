"""LDAP login, and the mapping from directory groups to enclave roles.

Authentication is jupyterhub-ldapauthenticator (StartTLS, certificate verified). On top of it we
(1) require membership of one of the enclave groups, (2) hand the groups to JupyterHub
(``manage_groups``) so that roles follow from ``load_roles``, and (3) record every login and every
refusal, with its reason, on the audit trail.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterable

import ldap3
from jupyterhub.handlers.login import LogoutHandler
from ldap3.core.exceptions import LDAPBindError, LDAPException
from ldapauthenticator import LDAPAuthenticator
from ldapauthenticator.ldapauthenticator import TlsStrategy
from tornado import web
from traitlets import Unicode, default

from hub import runtime
from hub.paths import EnclavePaths

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
            runtime.audit_log(self.authenticator.state_dir).append(actor=user.name, action="auth.logout", details={})


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

    def record(self, username: str, outcome: str, reason: str, groups: list[str] | None = None) -> None:
        details = {"reason": reason}
        if groups is not None:
            details["groups"] = groups
        runtime.audit_log(self.state_dir).append(
            actor=username or "(blank)", action="auth.login", outcome=outcome, details=details
        )

    async def authenticate(self, handler, data):
        username = (data or {}).get("username", "")
        try:
            model = await super().authenticate(handler, data)
        except (LDAPException, ssl.SSLError, OSError) as exc:
            where = f"{self.server_address}:{self.server_port}"
            self.log.error("LDAP directory at %s unreachable: %s", where, exc)
            self.record(username, "error", f"directory unreachable: {type(exc).__name__}")
            raise web.HTTPError(
                503, f"The login directory (LDAP at {where}) is unreachable. Try again later or tell the operator."
            ) from exc
        if model is None:
            self.record(username, "denied", "invalid username or password")
            return None
        groups = groups_from_dns(model["auth_state"].get("ldap_groups", []))
        if not groups:
            self.record(username, "denied", "not in any enclave group (not accredited)")
            return None
        model["groups"] = groups
        self.record(model["name"], "ok", "password verified by LDAP", groups)
        return model

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
