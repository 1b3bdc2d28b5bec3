"""Is a user still accredited? The directory answers, read through a read-only service account.

The hub (``EnclaveAuthenticator.refresh_user``, at most every ``auth_refresh_age`` seconds per user and
before every spawn) and the enforcer (hub/enforcer.py, every ``ENCLAVE_DIRECTORY_EVERY`` seconds) ask
here, so that a researcher removed from ``enclave-researchers``, disabled or deleted in LDAP loses
access within a minute instead of at their next login.

"Disabled" means, in the directory: the ppolicy overlay locked the account (operational attribute
``pwdAccountLockedTime`` present), or the account's ``shadowExpire`` (days since 1970-01-01, from the
nis schema's shadowAccount) is today or earlier. Either is how an OpenLDAP administrator suspends an
account without deleting it.

The account is ``ldap.bind_dn`` with its password in ``ldap.bind_password_file`` (policies/site.yaml):
it only reads. Calls block (ldap3), so the hub runs them on a thread.
"""

from __future__ import annotations

import ssl
import time
from dataclasses import dataclass
from pathlib import Path

import ldap3
from ldap3.core.exceptions import LDAPBindError, LDAPException
from ldap3.utils.conv import escape_filter_chars
from ldap3.utils.dn import escape_rdn

# The group names are defined once, in ground.access; hub.auth and hub.directory still take them from here.
from ground.access import ADMINS, CHECKERS, ENCLAVE_GROUPS, RESEARCHERS  # noqa: F401
from hub.policy import LdapSettings


class DirectoryUnreachable(Exception):
    """The directory did not answer, or refused the reader account. The message says where."""


@dataclass(frozen=True)
class Standing:
    """One user as the directory sees them now."""

    uid: str
    exists: bool
    disabled: bool = False
    groups: tuple[str, ...] = ()

    def refusal(self) -> str | None:
        """Why this user may no longer use the enclave at all, or None."""
        if not self.exists:
            return "deleted"
        if self.disabled:
            return "disabled"
        if not self.groups:
            return "not_accredited"
        return None


def disabled(attributes: dict, today_days: int) -> bool:
    """The account is locked by ppolicy, or its shadowExpire day has come."""
    if attributes.get("pwdAccountLockedTime"):
        return True
    expire = attributes.get("shadowExpire")
    if isinstance(expire, list):
        expire = expire[0] if expire else None
    try:
        return expire is not None and int(expire) >= 0 and int(expire) <= today_days
    except (TypeError, ValueError):
        return True  # an unreadable expiry is not a reason to let someone in


class AccreditationReader:
    """Reads users' standing with the read-only service account, over StartTLS (or LDAPS), verified."""

    def __init__(self, settings: LdapSettings):
        self.settings = settings

    @property
    def configured(self) -> bool:
        return bool(self.settings.bind_dn and self.settings.bind_password_file)

    @property
    def where(self) -> str:
        return f"{self.settings.server_address}:{self.settings.server_port}"

    def connect(self) -> ldap3.Connection:
        s = self.settings
        try:
            password = Path(s.bind_password_file).read_text().strip()
        except OSError as exc:
            raise DirectoryUnreachable(
                f"{s.bind_password_file}: cannot read the reader password: {exc.strerror}"
            ) from exc
        tls = ldap3.Tls(validate=ssl.CERT_REQUIRED, version=ssl.PROTOCOL_TLS_CLIENT, ca_certs_file=s.ca_file)
        server = ldap3.Server(
            s.server_address,
            port=s.server_port,
            use_ssl=s.tls_strategy == "on_connect",
            tls=tls,
            connect_timeout=5,
            get_info=ldap3.NONE,
        )
        auto_bind = (
            ldap3.AUTO_BIND_TLS_BEFORE_BIND if s.tls_strategy == "before_bind" else ldap3.AUTO_BIND_NO_TLS
        )
        try:
            return ldap3.Connection(
                server,
                user=s.bind_dn,
                password=password,
                auto_bind=auto_bind,
                receive_timeout=10,
                raise_exceptions=False,
            )
        except LDAPBindError as exc:
            raise DirectoryUnreachable(
                f"the directory at {self.where} refused the reader {s.bind_dn}"
            ) from exc
        except (LDAPException, ssl.SSLError, OSError) as exc:
            raise DirectoryUnreachable(
                f"the directory at {self.where} is unreachable: {type(exc).__name__}"
            ) from exc

    def standing(self, conn: ldap3.Connection, uid: str) -> Standing:
        dn = self.settings.user_dn_template.format(username=escape_rdn(uid))
        try:
            found = conn.search(
                dn,
                "(objectClass=*)",
                search_scope=ldap3.BASE,
                attributes=["shadowExpire", "pwdAccountLockedTime"],
            )
            if not found:
                if conn.result.get("result") == 32:  # noSuchObject: deleted
                    return Standing(uid, exists=False)
                raise DirectoryUnreachable(
                    f"the directory at {self.where} answered {conn.result.get('description')}"
                    f" when reading {dn}"
                )
            attributes = dict(conn.response[0].get("attributes") or {})
            groups_filter = f"(&(objectClass=groupOfNames)(member={escape_filter_chars(dn)}))"
            conn.search(self.settings.groups_base, groups_filter, attributes=["cn"])
        except (LDAPException, ssl.SSLError, OSError) as exc:
            raise DirectoryUnreachable(
                f"the directory at {self.where} is unreachable: {type(exc).__name__}"
            ) from exc
        if conn.result.get("result") not in (0, 32):
            raise DirectoryUnreachable(
                f"the directory at {self.where} answered {conn.result.get('description')}"
            )
        names = {
            str(
                e["attributes"]["cn"][0] if isinstance(e["attributes"]["cn"], list) else e["attributes"]["cn"]
            )
            for e in conn.response
            if e.get("type") == "searchResEntry"
        }
        today = int(time.time() // 86400)
        return Standing(uid, True, disabled(attributes, today), tuple(sorted(names & set(ENCLAVE_GROUPS))))

    def standings(self, uids: list[str]) -> dict[str, Standing]:
        """Every uid's standing over one connection (the enforcer's pass)."""
        conn = self.connect()
        try:
            return {uid: self.standing(conn, uid) for uid in uids}
        finally:
            conn.unbind()

    def one(self, uid: str) -> Standing:
        return self.standings([uid])[uid]
