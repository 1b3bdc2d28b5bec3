"""The directory as seen by the admin side: who the operator is, and who may be a project member.

The ``enclave`` CLI changes policy only for a member of ``enclave-admins``, and proves it the same way
the hub does: a bind to the directory, over StartTLS with the site's CA, with the operator's own
password. Setting an environment variable cannot make someone an administrator.

    --as UID            the operator's directory uid (default: $ENCLAVE_OPERATOR, $SUDO_USER, login name)
    --password-file F   file holding the operator's password (default: $ENCLAVE_OPERATOR_PASSWORD_FILE;
                        otherwise the CLI prompts on the terminal)
"""

from __future__ import annotations

import getpass
import os
import ssl
from dataclasses import dataclass

import ldap3
from ldap3.core.exceptions import LDAPBindError, LDAPException
from ldap3.utils.conv import escape_filter_chars
from ldap3.utils.dn import escape_rdn

from hub.auth import ADMINS, RESEARCHERS, group_dn
from hub.policy import LdapSettings


class DirectoryError(Exception):
    """The directory refused or could not be reached. The message says which and what to do."""


@dataclass(frozen=True)
class Person:
    uid: str
    exists: bool
    groups: frozenset[str]

    @property
    def accredited(self) -> bool:
        return RESEARCHERS in self.groups


def operator_uid(explicit: str | None) -> str:
    return explicit or os.environ.get("ENCLAVE_OPERATOR") or os.environ.get("SUDO_USER") or getpass.getuser()


def operator_password(uid: str, password_file: str | None) -> str:
    path = password_file or os.environ.get("ENCLAVE_OPERATOR_PASSWORD_FILE")
    if path:
        try:
            return open(path, encoding="utf-8").read().rstrip("\n")
        except OSError as exc:
            raise DirectoryError(f"{path}: cannot read the operator password: {exc.strerror}") from exc
    if not os.isatty(0):
        raise DirectoryError(
            f"changing policy needs {uid}'s directory password: give --password-file or run on a terminal"
        )
    return getpass.getpass(f"directory password for {uid}: ")


class Directory:
    """A connection bound as one directory user, over StartTLS (or LDAPS) with certificate checks."""

    def __init__(self, settings: LdapSettings, uid: str, password: str):
        self.settings = settings
        self.uid = uid
        tls = ldap3.Tls(
            validate=ssl.CERT_REQUIRED, version=ssl.PROTOCOL_TLS_CLIENT, ca_certs_file=settings.ca_file
        )
        server = ldap3.Server(
            settings.server_address,
            port=settings.server_port,
            use_ssl=settings.tls_strategy == "on_connect",
            tls=tls,
            connect_timeout=5,
        )
        auto_bind = (
            ldap3.AUTO_BIND_TLS_BEFORE_BIND
            if settings.tls_strategy == "before_bind"
            else ldap3.AUTO_BIND_NO_TLS
        )
        where = f"{settings.server_address}:{settings.server_port}"
        try:
            self.conn = ldap3.Connection(
                server, user=self.user_dn(uid), password=password, auto_bind=auto_bind, receive_timeout=10
            )
        except LDAPBindError as exc:
            raise DirectoryError(f"the directory at {where} refused {uid}'s password") from exc
        except (LDAPException, ssl.SSLError, OSError) as exc:
            raise DirectoryError(
                f"the directory at {where} is unreachable: {type(exc).__name__}: {exc}"
            ) from exc

    def user_dn(self, uid: str) -> str:
        return self.settings.user_dn_template.format(username=escape_rdn(uid))

    def person(self, uid: str) -> Person:
        dn = self.user_dn(uid)
        exists = self.conn.search(dn, "(objectClass=*)", search_scope=ldap3.BASE, attributes=["uid"])
        if not exists:
            return Person(uid, False, frozenset())
        self.conn.search(
            self.settings.groups_base,
            f"(&(objectClass=groupOfNames)(member={escape_filter_chars(dn)}))",
            attributes=["cn"],
        )
        return Person(uid, True, frozenset(str(e.cn) for e in self.conn.entries))

    def close(self) -> None:
        self.conn.unbind()


def admin_directory(settings: LdapSettings, as_uid: str | None, password_file: str | None) -> Directory:
    """Bind as the operator and check they administer the enclave; DirectoryError otherwise."""
    uid = operator_uid(as_uid)
    directory = Directory(settings, uid, operator_password(uid, password_file))
    if ADMINS not in directory.person(uid).groups:
        directory.close()
        raise DirectoryError(
            f"{uid} is not in {ADMINS} ({group_dn(ADMINS, settings.groups_base)}): only administrators change policy"
        )
    return directory
