"""The policy enforcer: a JupyterHub service that applies policy changes to running servers.

Every few seconds it reloads the policy files (keeping the last good policy when a change is invalid,
and saying so in the hub's log and on the audit trail) and stops every running server that the policy
no longer allows: a removed or expired member, a suspended, closed or expired project, a user who lost
accreditation. Spawns are checked by the spawner itself; this covers what is already running.

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

from hub import runtime
from hub.auth import RESEARCHERS
from hub.paths import EnclavePaths
from hub.policy import Policy, PolicyError, PolicyStore, load_policy, policy_fingerprint

log = logging.getLogger("enclave.enforcer")
ACTOR = "enclave-policy"


def refusal(policy: Policy, user: dict, server_name: str, today: date) -> str | None:
    """Why the policy no longer allows this running server, or None."""
    project = policy.projects.get(server_name)
    if project is None:
        return f"project {server_name} is no longer in the policy"
    if RESEARCHERS not in user.get("groups", []):
        return f"{user['name']} is no longer an accredited researcher"
    return project.access_refusal(user["name"], today)


class Enforcer:
    def __init__(self, paths: EnclavePaths, api_url: str, token: str):
        self.paths = paths
        self.api_url = api_url.rstrip("/")
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"token {token}"
        if os.environ.get("JUPYTERHUB_SSL_CERTFILE"):  # internal_ssl: the hub asks for our certificate
            self.session.cert = (os.environ["JUPYTERHUB_SSL_CERTFILE"], os.environ["JUPYTERHUB_SSL_KEYFILE"])
            self.session.verify = os.environ["JUPYTERHUB_SSL_CLIENT_CA"]
        self.fingerprint = None
        self.policy: Policy | None = None
        self.audit = runtime.audit_log(str(paths.state_dir))

    # ---- policy -------------------------------------------------------------------------------
    def reload(self) -> None:
        fingerprint = policy_fingerprint(self.paths.policy_dir)
        if fingerprint == self.fingerprint:
            return
        first = self.fingerprint is None
        changed = self._changed_files(fingerprint)
        self.fingerprint = fingerprint
        try:
            policy = load_policy(self.paths.policy_dir, self.paths.state_dir)
        except PolicyError as exc:
            log.error("policy change refused, keeping the last good policy:\n%s", exc)
            if self.policy is None:  # started on a bad edit: enforce what was last applied, as the hub does
                self.policy = PolicyStore(self.paths.policy_dir, self.paths.state_dir).current()
            self._status(fingerprint, ok=False, problems=str(exc))
            self.audit.append(actor=ACTOR, action="policy.change", target="policies", outcome="error",
                              details={"change": "reload", "files": changed, "reason": str(exc)[:4000]})
            return
        self.policy = policy
        self._snapshot()
        self._status(fingerprint, ok=True, problems="")
        if not first:
            log.info("policy reloaded: %s", ", ".join(changed))
            self.audit.append(actor=ACTOR, action="policy.change", target="policies",
                              details={"change": "reload", "files": changed})

    def _changed_files(self, fingerprint) -> list[str]:
        before = {f[0]: f[1:] for f in (self.fingerprint or ())}
        after = {f[0]: f[1:] for f in fingerprint}
        names = sorted(n for n in before.keys() | after.keys() if before.get(n) != after.get(n))
        return [str(Path(n).relative_to(self.paths.policy_dir)) for n in names]

    def _status(self, fingerprint, ok: bool, problems: str) -> None:
        status = {"fingerprint": [list(x) for x in fingerprint], "ok": ok, "problems": problems,
                  "at": datetime.now(UTC).isoformat(timespec="seconds")}
        target = self.paths.hub_dir / "policy-status.json"
        fd, tmp = tempfile.mkstemp(dir=self.paths.hub_dir, prefix=".policy-status.")
        with os.fdopen(fd, "w") as fh:
            json.dump(status, fh)
        os.replace(tmp, target)

    def _snapshot(self) -> None:
        """The last applied policy, for `enclave policy diff` and for a hub that restarts on a bad edit."""
        target = self.paths.hub_dir / "policy-applied"
        tmp = Path(tempfile.mkdtemp(dir=self.paths.hub_dir, prefix=".policy-applied."))
        shutil.copytree(self.paths.policy_dir, tmp, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns(".enclave.lock", ".*"))
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
        for user in self.active_users():
            for name, server in (user.get("servers") or {}).items():
                if not name or server.get("stopped") or server.get("pending") == "stop":
                    continue
                reason = refusal(self.policy, user, name, today)
                if reason:
                    self.stop(user["name"], name, reason)

    def active_users(self):
        """Every user with an active server, page by page (the hub answers at most a page at a time)."""
        offset = 0
        while True:
            response = self.session.get(
                f"{self.api_url}/users", params={"state": "active", "offset": offset, "limit": 200},
                headers={"Accept": "application/jupyterhub-pagination+json"}, timeout=10,
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
        self.audit.append(actor=ACTOR, action="policy.enforce", project=server, target=f"{user}/{server}",
                          outcome=outcome, details=details)

    def run(self, every: float) -> None:
        while True:
            try:
                self.reload()
                self.enforce()
            except Exception:  # keep enforcing: a transient hub or disk error must not end the service
                log.exception("policy enforcement pass failed")
            time.sleep(every)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="[%(levelname)1.1s %(asctime)s enclave-policy] %(message)s")
    paths = EnclavePaths.from_env()
    enforcer = Enforcer(paths, os.environ["JUPYTERHUB_API_URL"], os.environ["JUPYTERHUB_API_TOKEN"])
    enforcer.run(float(os.environ.get("ENCLAVE_ENFORCE_EVERY", "2")))


if __name__ == "__main__":
    main()
