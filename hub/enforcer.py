"""The policy enforcer: a JupyterHub service that applies policy changes to running servers.

Every few seconds it reloads the policy files (keeping the last good policy when a change is invalid,
and saying so in the hub's log and on the audit trail) and stops every running server that the policy
no longer allows: a removed or expired member, a suspended, closed or expired project, a user who lost
accreditation. Spawns are checked by the spawner itself; this covers what is already running.

Every ``ENCLAVE_DIRECTORY_EVERY`` seconds (default 15) it also asks the directory itself, with the
read-only service account (hub/accreditation.py), about every user the hub knows: a user who left the
enclave groups, was disabled or deleted has their servers stopped, their API and OAuth tokens deleted and
their hub groups removed (``auth.revoke``), within a minute of the change, logged in or not. While the
directory is unreachable nothing is revoked, running servers keep going for ``ldap.outage_grace_seconds``,
then stop (``auth.directory``: outage, grace_expired, restored). Users idle in the browser for
``session.idle_logout_minutes`` with no running server lose their tokens.

    python -m hub.enforcer        (started by the hub; see hub/jupyterhub_config.py)
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from datetime import UTC, date, datetime
from pathlib import Path

import requests

from ground.access import Reason, work_refusal
from ground.durable import atomic_write
from hub import runtime
from hub.accreditation import AccreditationReader, DirectoryUnreachable
from hub.paths import EnclavePaths
from hub.policy import Policy, PolicyWatch

log = logging.getLogger("enclave.enforcer")
ACTOR = "service:enclave-policy"


def refusal(policy: Policy, user: dict, server_name: str, today: date) -> str | None:
    """Why the policy no longer allows this running server, or None."""
    why = work_refusal(user["name"], user.get("groups", []), policy.projects.get(server_name), today)
    if why is None:
        return None
    if why.reason is Reason.NO_PROJECT:
        return f"project {server_name} is no longer in the policy"
    if why.reason is Reason.NOT_ACCREDITED:
        return f"{user['name']} is no longer an accredited researcher"
    return why.message


class Enforcer:
    def __init__(self, paths: EnclavePaths, api_url: str, token: str):
        self.paths = paths
        self.api_url = api_url.rstrip("/")
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"token {token}"
        if os.environ.get("JUPYTERHUB_SSL_CERTFILE"):  # internal_ssl: the hub asks for our certificate
            self.session.cert = (os.environ["JUPYTERHUB_SSL_CERTFILE"], os.environ["JUPYTERHUB_SSL_KEYFILE"])
            self.session.verify = os.environ["JUPYTERHUB_SSL_CLIENT_CA"]
        self.watch = PolicyWatch(paths.policy_dir, paths.state_dir)
        self.policy: Policy | None = None
        self.audit = runtime.audit_log(str(paths.state_dir))
        self.outage_since: float | None = None
        self.grace_expired = False
        self.revoked: set[str] = set()  # users already revoked and audited, until the directory admits them

    # ---- policy -------------------------------------------------------------------------------
    def reload(self) -> None:
        """Take up a policy change (hub.policy.PolicyWatch), then record it: the status file that
        ``enclave policy apply`` waits on, the applied snapshot, and the audit trail."""
        change = self.watch.look()
        if change is None:
            return
        self.policy = self.watch.policy
        if change.error is not None:
            self._status(change.fingerprint, ok=False, problems=str(change.error))
            self.audit.append(
                actor=ACTOR,
                action="policy.change",
                target="policies",
                outcome="error",
                details={"change": "reload", "files": change.files, "reason": str(change.error)[:4000]},
            )
            return
        self._snapshot()
        self._status(change.fingerprint, ok=True, problems="")
        if not change.first:
            log.info("policy reloaded: %s", ", ".join(change.files))
            self.audit.append(
                actor=ACTOR,
                action="policy.change",
                target="policies",
                details={"change": "reload", "files": change.files},
            )

    def _status(self, fingerprint, ok: bool, problems: str) -> None:
        status = {
            "fingerprint": [list(x) for x in fingerprint],
            "ok": ok,
            "problems": problems,
            "at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        atomic_write(self.paths.policy_status_file, json.dumps(status))

    def _snapshot(self) -> None:
        """The last applied policy, for `enclave policy diff` and for a hub that restarts on a bad edit."""
        target = self.paths.policy_applied_dir
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".policy-applied."))
        shutil.copytree(
            self.paths.policy_dir,
            tmp,
            dirs_exist_ok=True,
            ignore=shutil.ignore_patterns(".enclave.lock", ".*"),
        )
        old = target.with_name(".policy-applied.old")
        shutil.rmtree(old, ignore_errors=True)
        if target.exists():
            os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)

    # ---- running servers ----------------------------------------------------------------------
    def enforce(self) -> None:
        if self.policy is None:
            return
        today = date.today()
        for user in self.users(state="active"):
            for name, server in (user.get("servers") or {}).items():
                # A pending spawn is the spawner's to refuse (it records why, as server.spawn); stopping it
                # here cancelled it midway, with a 500 and no record of the refused spawn.
                if not name or server.get("stopped") or server.get("pending"):
                    continue
                reason = refusal(self.policy, user, name, today)
                if reason:
                    self.stop(user["name"], name, reason)

    def users(self, **filters):
        """Every user the hub knows (``state="active"``: with an active server), page by page: the hub
        answers at most a page at a time."""
        offset = 0
        while True:
            response = self.session.get(
                f"{self.api_url}/users",
                params={**filters, "offset": offset, "limit": 200},
                headers={"Accept": "application/jupyterhub-pagination+json"},
                timeout=10,
            )
            response.raise_for_status()
            page = response.json()
            yield from page["items"]
            following = page["_pagination"].get("next")
            if not following:
                return
            offset = following["offset"]

    def stop(self, user: str, server: str, reason: str) -> None:
        response = self.session.delete(f"{self.api_url}/users/{user}/servers/{server}", timeout=30)
        outcome = "ok" if response.status_code in (202, 204) else "error"
        log.warning("policy: stopping %s/%s: %s (%s)", user, server, reason, response.status_code)
        details = {"reason": reason}
        if outcome == "error":
            details["hub_status"] = response.status_code
        # The server was stopped either way: on a full disk the record goes to the spool (issue 19).
        self.audit.append_or_spool(
            actor=ACTOR,
            action="policy.enforce",
            project=server,
            target=f"{user}/{server}",
            outcome=outcome,
            details=details,
        )

    # ---- the directory: revocation, outage ---------------------------------------------------------
    def check_directory(self) -> None:
        """Revoke every user the directory no longer accredits; count an outage's grace period."""
        if self.policy is None:
            return
        reader = AccreditationReader(self.policy.site.ldap)
        if not reader.configured:
            return
        users = list(self.users())
        try:
            standings = reader.standings([u["name"] for u in users])
        except DirectoryUnreachable as exc:
            self.directory_down(str(exc), users)
            return
        self.directory_up()
        for user in users:
            reason = standings[user["name"]].refusal()
            if reason:
                self.revoke(user, reason)
            else:
                self.revoked.discard(user["name"])
        self.idle_logout(users)

    def directory_down(self, problem: str, users: list[dict]) -> None:
        now = time.monotonic()
        grace = self.policy.site.ldap.outage_grace_seconds
        if self.outage_since is None:
            self.outage_since = now
            log.error("directory unreachable (%s): running servers keep going for %ds", problem, grace)
            self.audit.append(
                actor=ACTOR,
                action="auth.directory",
                target="ldap",
                outcome="error",
                details={"state": "outage", "reason": problem[:500], "grace_seconds": grace},
            )
        if now - self.outage_since < grace or self.grace_expired:
            return
        self.grace_expired = True
        stopped = [
            f"{u['name']}/{n}"
            for u in users
            for n, sv in (u.get("servers") or {}).items()
            if n and not sv.get("stopped")
        ]
        self.audit.append(
            actor=ACTOR,
            action="auth.directory",
            target="ldap",
            outcome="error",
            details={"state": "grace_expired", "reason": problem[:500], "stopping": stopped},
        )
        for entry in stopped:
            user, server = entry.split("/", 1)
            self.stop(user, server, f"the directory has been unreachable for more than {grace}s")

    def directory_up(self) -> None:
        if self.outage_since is None:
            return
        lasted = int(time.monotonic() - self.outage_since)
        self.outage_since, self.grace_expired = None, False
        log.info("directory reachable again after %ds", lasted)
        self.audit.append(
            actor=ACTOR,
            action="auth.directory",
            target="ldap",
            details={"state": "restored", "outage_seconds": lasted},
        )

    def revoke(self, user: dict, reason: str) -> None:
        """Stop the user's servers, delete their tokens, take them out of hub groups; audited once per
        revocation, and again only if something came back (a token, a group)."""
        name = user["name"]
        stopped = []
        for server, model in (user.get("servers") or {}).items():
            if server and not model.get("stopped") and model.get("pending") != "stop":
                self.stop(name, server, f"{name} is no longer accredited in the directory ({reason})")
                stopped.append(server)
        tokens = self.delete_tokens(name)
        groups = self.leave_groups(name, user.get("groups") or [])
        if stopped or tokens or groups or name not in self.revoked:
            log.warning(
                "revoked %s (%s): servers %s, %d tokens, groups %s", name, reason, stopped, tokens, groups
            )
            self.audit.append(
                actor=ACTOR,
                action="auth.revoke",
                target=name,
                outcome="ok",
                details={"reason": reason, "stopped": stopped, "tokens": tokens, "groups": groups},
            )
        self.revoked.add(name)

    def delete_tokens(self, name: str, keep=lambda token: False) -> int:
        response = self.session.get(f"{self.api_url}/users/{name}/tokens", timeout=10)
        response.raise_for_status()
        gone = 0
        for token in response.json().get("api_tokens", []):
            if keep(token):
                continue
            deleted = self.session.delete(f"{self.api_url}/users/{name}/tokens/{token['id']}", timeout=10)
            gone += deleted.status_code in (200, 204)
        return gone

    def leave_groups(self, name: str, groups: list[str]) -> list[str]:
        left = []
        for group in groups:
            response = self.session.delete(
                f"{self.api_url}/groups/{group}/users", json={"users": [name]}, timeout=10
            )
            if response.status_code in (200, 204):
                left.append(group)
            else:
                log.error(
                    "removing %s from hub group %s: %s %s", name, group, response.status_code, response.text
                )
        return left

    def idle_logout(self, users: list[dict]) -> None:
        """Users with no running server and no activity for the idle limit lose their tokens (their browser
        cookie is refused by the hub itself, EnclaveAuthenticator.refresh_user)."""
        limit = self.policy.site.session.idle_logout_minutes * 60
        now = datetime.now(UTC)
        for user in users:
            active = any(n and not sv.get("stopped") for n, sv in (user.get("servers") or {}).items())
            seen = user.get("last_activity")
            if active or not seen:
                continue
            if (now - datetime.fromisoformat(seen)).total_seconds() < limit:
                continue
            gone = self.delete_tokens(user["name"])
            if gone:
                self.audit.append(
                    actor=user["name"],
                    action="auth.logout",
                    details={"reason": "idle", "tokens_revoked": gone, "by": ACTOR},
                )

    def run(self, every: float, directory_every: float = 15.0) -> None:
        next_directory = 0.0
        while True:
            try:
                self.reload()
                self.enforce()
                if time.monotonic() >= next_directory:
                    next_directory = time.monotonic() + directory_every
                    self.check_directory()
            except Exception:  # keep enforcing: a transient hub or disk error must not end the service
                log.exception("policy enforcement pass failed")
            time.sleep(every)


def main() -> None:
    logging.basicConfig(
        level=logging.INFO, format="[%(levelname)1.1s %(asctime)s enclave-policy] %(message)s"
    )
    paths = EnclavePaths.from_env()
    enforcer = Enforcer(paths, os.environ["JUPYTERHUB_API_URL"], os.environ["JUPYTERHUB_API_TOKEN"])
    enforcer.run(
        float(os.environ.get("ENCLAVE_ENFORCE_EVERY", "2")),
        float(os.environ.get("ENCLAVE_DIRECTORY_EVERY", "15")),
    )


if __name__ == "__main__":
    main()
