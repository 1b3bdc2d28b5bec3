"""The policy store: projects, datasets and site settings, read from YAML and validated by schema.

``policies/`` is the reviewable source of truth. The hub reads it through :class:`PolicyStore`, which
reloads when a file changes and keeps serving the last good policy when a change is invalid, so a
typo in one file can never open (or silently close) the enclave.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from hub.paths import REPO_ROOT, EnclavePaths

log = logging.getLogger("enclave.policy")

SCHEMA_DIR = REPO_ROOT / "policies" / "schema"

DEFAULT_THRESHOLDS = {
    # ACRO's defaults (https://github.com/AI-SDC/ACRO): a project may only make these stricter.
    "min_count": 10,
    "nk_n": 2,
    "nk_k": 0.9,
    "p_percent": 0.1,
    "min_dof": 10,
    "zeros_disclosive": True,
}


class PolicyError(Exception):
    """One or more policy files are invalid. Each line names the file, the path inside it and the rule."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


@dataclass(frozen=True)
class Member:
    uid: str
    expiry: date | None = None


@dataclass(frozen=True)
class DatasetRef:
    id: str
    version: str


@dataclass(frozen=True)
class Resources:
    cpu: float
    memory: str
    pids: int
    workspace_quota: str | None = None
    gpus: int = 0


@dataclass(frozen=True)
class Project:
    id: str
    title: str
    principal_investigator: str
    status: str
    start: date
    expiry: date
    members: tuple[Member, ...]
    datasets: tuple[DatasetRef, ...]
    resources: Resources
    reviewers_required: int
    thresholds: Mapping[str, Any]
    max_file_bytes: int
    terminals: bool
    approvals: Mapping[str, Any]
    source: Path

    def member(self, uid: str) -> Member | None:
        return next((m for m in self.members if m.uid == uid), None)

    def is_expired(self, today: date) -> bool:
        return today > self.expiry

    def access_refusal(self, uid: str, today: date) -> str | None:
        """Why ``uid`` may not work in this project today, or None if they may.

        Accreditation (the LDAP group) is checked by the caller; this is the agreement itself."""
        if self.status != "active":
            return f"project {self.id} is {self.status}"
        if today < self.start:
            return f"project {self.id} starts on {self.start.isoformat()}"
        if self.is_expired(today):
            return f"project {self.id} expired on {self.expiry.isoformat()}"
        member = self.member(uid)
        if member is None:
            return f"{uid} is not a member of project {self.id}"
        if member.expiry is not None and today > member.expiry:
            return f"{uid}'s membership of project {self.id} expired on {member.expiry.isoformat()}"
        return None


@dataclass(frozen=True)
class Dataset:
    id: str
    version: str
    description: str
    source: str
    spec: str | None
    path: Path


@dataclass(frozen=True)
class LdapSettings:
    server_address: str
    server_port: int
    tls_strategy: str
    ca_file: str | None
    user_dn_template: str
    groups_base: str
    bind_dn: str | None = None
    """The read-only service account that re-checks users' groups (hub/accreditation.py)."""
    bind_password_file: str | None = None
    outage_grace_seconds: int = 900
    """While the directory is unreachable, running servers keep going this long; new logins and spawns
    are refused at once."""


@dataclass(frozen=True)
class SessionSettings:
    max_hours: float = 12
    """The hub cookie's maximum age: a login lasts at most this long."""
    idle_logout_minutes: int = 60
    """A browser session with no request for this long is logged out."""


@dataclass(frozen=True)
class MfaPolicy:
    lockout_after: int = 5
    """Consecutive wrong one-time codes that lock the user's second factor."""
    lockout_seconds: int = 300


@dataclass(frozen=True)
class Site:
    image: str
    network_prefix: str
    public_url: str
    hub_port: int
    hub_internal_port: int
    proxy_api_port: int
    exports_port: int
    idle_timeout_seconds: int
    defaults: Resources
    ldap: LdapSettings
    canonical_outputs: Mapping[str, int] = field(default_factory=dict)
    """Caps on canonical export outputs (exports.canonical.Limits); absent keys keep the defaults."""
    disk_min_free_mib: int = 512
    """``enclave doctor`` warns when the state directory's filesystem has less free space than this."""
    session: SessionSettings = field(default_factory=SessionSettings)
    mfa: MfaPolicy = field(default_factory=MfaPolicy)


@dataclass(frozen=True)
class Policy:
    site: Site
    projects: Mapping[str, Project] = field(default_factory=dict)
    datasets: Mapping[str, Dataset] = field(default_factory=dict)

    def projects_of(self, uid: str) -> list[Project]:
        """Projects that list ``uid``, whatever their status: the home page shows expired ones as expired."""
        return sorted((p for p in self.projects.values() if p.member(uid)), key=lambda p: p.id)


class _NoDatesLoader(yaml.SafeLoader):
    """YAML 1.1 turns 2026-01-01 into a date object; keep it a string so the schema checks its format."""


_NoDatesLoader.yaml_implicit_resolvers = {
    key: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for key, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


@cache
def schema(name: str) -> dict:
    return json.loads((SCHEMA_DIR / f"{name}.schema.json").read_text())


def display_path(path: Path) -> str:
    """Paths in messages are relative to the repository when they are inside it, as an operator types them."""
    try:
        return str(path.resolve().relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


def json_path(parts) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def load_document(path: Path, schema_name: str) -> tuple[dict | None, list[str]]:
    """Parse one YAML file and validate it. Returns the document and the list of problems."""
    where = display_path(path)
    try:
        doc = yaml.load(path.read_text(encoding="utf-8"), Loader=_NoDatesLoader)
    except (OSError, UnicodeDecodeError) as exc:
        return None, [f"{where}: cannot read: {exc}"]
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        return None, [f"{where}: {at}not valid YAML: {getattr(exc, 'problem', None) or exc}"]
    validator = jsonschema.Draft202012Validator(
        schema(schema_name), format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    )
    problems = [
        f"{where}: {json_path(err.absolute_path)}: {err.message} ({err.validator})"
        for err in sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path)))
    ]
    return (doc if not problems else None), problems


def _resources(raw: Mapping[str, Any], defaults: Resources) -> Resources:
    return Resources(
        cpu=float(raw.get("cpu", defaults.cpu)),
        memory=raw.get("memory", defaults.memory),
        pids=int(raw.get("pids", defaults.pids)),
        workspace_quota=raw.get("workspace_quota", defaults.workspace_quota),
        gpus=int(raw.get("gpus", defaults.gpus)),
    )


def build_site(doc: Mapping[str, Any], state_dir: Path) -> Site:
    ldap = dict(doc["ldap"])
    for key in ("ca_file", "bind_password_file"):
        if ldap.get(key):
            ldap[key] = ldap[key].replace("{state}", str(state_dir))
    ldap.setdefault("server_port", 636 if ldap.get("tls_strategy") == "on_connect" else 389)
    ldap.setdefault("tls_strategy", "before_bind")
    return Site(
        image=doc["image"],
        network_prefix=doc.get("network_prefix", "enclave-"),
        public_url=doc.get("public_url", "http://127.0.0.1:8000"),
        hub_port=doc.get("hub_port", 8081),
        hub_internal_port=doc.get("hub_internal_port", 8091),
        proxy_api_port=doc.get("proxy_api_port", 8001),
        exports_port=doc.get("exports_port", 8082),
        idle_timeout_seconds=doc.get("idle_timeout_seconds", 3600),
        defaults=_resources(doc.get("defaults", {}), Resources(cpu=1.0, memory="2G", pids=512)),
        ldap=LdapSettings(**ldap),
        canonical_outputs=dict(doc.get("canonical_outputs", {})),
        disk_min_free_mib=doc.get("disk", {}).get("min_free_mib", 512),
        session=SessionSettings(**doc.get("session", {})),
        mfa=MfaPolicy(**doc.get("mfa", {})),
    )


def build_project(doc: Mapping[str, Any], site: Site, source: Path) -> Project:
    exports = doc.get("exports", {})
    return Project(
        id=doc["id"],
        title=doc["title"],
        principal_investigator=doc["principal_investigator"],
        status=doc["status"],
        start=date.fromisoformat(doc["start"]),
        expiry=date.fromisoformat(doc["expiry"]),
        members=tuple(
            Member(m["uid"], date.fromisoformat(m["expiry"]) if "expiry" in m else None)
            for m in doc["members"]
        ),
        datasets=tuple(DatasetRef(d["id"], d["version"]) for d in doc["datasets"]),
        resources=_resources(doc.get("resources", {}), site.defaults),
        reviewers_required=exports.get("reviewers_required", 2),
        thresholds={**DEFAULT_THRESHOLDS, **exports.get("thresholds", {})},
        max_file_bytes=exports.get("max_file_bytes", 10 * 1024 * 1024),
        terminals=bool(doc.get("terminals", False)),
        approvals=doc.get("approvals", {}),
        source=source,
    )


def _project_rules(doc: Mapping[str, Any], path: Path, datasets: Mapping[str, Dataset]) -> list[str]:
    """Rules that span fields or files, which a JSON schema cannot say."""
    where = display_path(path)
    problems = []
    if doc["id"] != path.stem:
        problems.append(f"{where}: id: '{doc['id']}' must match the file name '{path.stem}'")
    if doc["expiry"] < doc["start"]:
        problems.append(f"{where}: expiry: {doc['expiry']} is before start {doc['start']}")
    seen: set[str] = set()
    for i, member in enumerate(doc["members"]):
        if member["uid"] in seen:
            problems.append(f"{where}: members[{i}].uid: '{member['uid']}' is listed twice")
        seen.add(member["uid"])
    for i, ref in enumerate(doc["datasets"]):
        known = datasets.get(ref["id"])
        if known is None:
            problems.append(f"{where}: datasets[{i}].id: '{ref['id']}' is not in policies/datasets/")
        elif known.version != ref["version"]:
            problems.append(
                f"{where}: datasets[{i}].version: '{ref['version']}' is not the catalogued version '{known.version}'"
            )
    if doc["status"] == "active":
        missing = [a for a in ("drb", "irb") if a not in doc.get("approvals", {})]
        if missing:
            problems.append(
                f"{where}: approvals: an active project needs {' and '.join(m.upper() for m in missing)} "
                "approval recorded (approvals.drb.id, approvals.irb.id)"
            )
    return problems


def load_policy(policy_dir: Path, state_dir: Path) -> Policy:
    """Load and validate every policy file. Raises :class:`PolicyError` listing every problem found."""
    problems: list[str] = []
    site_doc, site_problems = load_document(policy_dir / "site.yaml", "site")
    problems += site_problems
    datasets: dict[str, Dataset] = {}
    for path in sorted((policy_dir / "datasets").glob("*.yaml")):
        if path.name.endswith((".spec.yaml", ".spec.yml")):
            continue  # pseudonymization specs are validated by the ingest pipeline
        doc, found = load_document(path, "dataset")
        problems += found
        if doc:
            if doc["id"] != path.stem:
                problems.append(
                    f"{display_path(path)}: id: '{doc['id']}' must match the file name '{path.stem}'"
                )
            datasets[doc["id"]] = Dataset(
                doc["id"], doc["version"], doc["description"], doc["source"], doc.get("spec"), path
            )
    if site_doc is None:
        raise PolicyError(problems)
    site = build_site(site_doc, state_dir)
    projects: dict[str, Project] = {}
    for path in sorted((policy_dir / "projects").glob("*.yaml")):
        doc, found = load_document(path, "project")
        problems += found
        if doc:
            rules = _project_rules(doc, path, datasets)
            problems += rules
            if not rules:
                projects[doc["id"]] = build_project(doc, site, path)
    if problems:
        raise PolicyError(problems)
    return Policy(site=site, projects=projects, datasets=datasets)


def policy_fingerprint(policy_dir: Path) -> tuple:
    """Cheap change detection: names, sizes and mtimes of every policy file."""
    entries = []
    for path in sorted(policy_dir.rglob("*.y*ml")):
        try:
            st = path.stat()
        except FileNotFoundError:
            continue  # removed while we looked: the next look sees the change
        entries.append((str(path), st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns))
    return tuple(entries)


@dataclass(frozen=True)
class Reload:
    """What one look at the policy directory found: which files changed, and the refusal if any."""

    first: bool
    """The first look of this process (nothing to compare with)."""
    fingerprint: tuple
    files: list[str]
    """The changed files, relative to the policy directory."""
    error: PolicyError | None = None


def applied_policy(policy_dir: Path, state_dir: Path) -> Policy | None:
    """The policy hub/enforcer.py last applied (its snapshot), so that the hub and the enforcer agree on
    the last good policy even if one of them saw none of the valid edits in between."""
    applied = EnclavePaths(state_dir, policy_dir).policy_applied_dir
    try:
        return load_policy(applied, state_dir) if (applied / "site.yaml").exists() else None
    except PolicyError:
        return None


class PolicyWatch:
    """The one rule "reload on change, keep the last good policy", for the hub and the enforcer.

    On a bad change the last good policy stays, or the applied snapshot (which is what the enforcer last
    found good); with neither, the PolicyError is raised: nothing is better than a guess."""

    def __init__(self, policy_dir: Path, state_dir: Path):
        self.policy_dir = policy_dir
        self.state_dir = state_dir
        self.policy: Policy | None = None
        self.last_error: PolicyError | None = None
        self._fingerprint: tuple | None = None

    def look(self) -> Reload | None:
        """Reload if any file changed since the last look; None if nothing did."""
        fingerprint = policy_fingerprint(self.policy_dir)
        if fingerprint == self._fingerprint:
            return None
        change = Reload(self._fingerprint is None, fingerprint, self._changed_files(fingerprint))
        self._fingerprint = fingerprint
        try:
            policy = load_policy(self.policy_dir, self.state_dir)
        except PolicyError as exc:
            self.last_error = exc
            log.error("policy change refused, keeping the last good policy:\n%s", exc)
            applied = applied_policy(self.policy_dir, self.state_dir)
            if applied is not None:
                self.policy = applied
            elif self.policy is None:
                raise
            return dataclasses.replace(change, error=exc)
        self.policy, self.last_error = policy, None
        log.info("policy reloaded: %d projects, %d datasets", len(policy.projects), len(policy.datasets))
        return change

    def _changed_files(self, fingerprint: tuple) -> list[str]:
        before = {f[0]: f[1:] for f in (self._fingerprint or ())}
        after = {f[0]: f[1:] for f in fingerprint}
        names = sorted(n for n in before.keys() | after.keys() if before.get(n) != after.get(n))
        return [str(Path(n).relative_to(self.policy_dir)) for n in names]


class PolicyStore:
    """The hub's view of policy: reloads on change, keeps the last good policy on a bad change."""

    def __init__(self, policy_dir: Path, state_dir: Path):
        self.policy_dir = policy_dir
        self.state_dir = state_dir
        # A hub restarted after a bad hand edit keeps serving the policy it last applied (written by
        # hub/enforcer.py); with nothing applied yet it refuses to start rather than guess.
        self._watch = PolicyWatch(policy_dir, state_dir)
        self._watch.look()

    @property
    def last_error(self) -> PolicyError | None:
        return self._watch.last_error

    @property
    def _policy(self) -> Policy:
        assert self._watch.policy is not None  # look() raised otherwise
        return self._watch.policy

    def current(self) -> Policy:
        """The newest valid policy. Call it at every decision; it costs a few stat() calls."""
        self.refresh()
        return self._policy

    def refresh(self) -> bool:
        """Reload if any file changed. Returns True when a new policy took effect."""
        change = self._watch.look()
        return change is not None and change.error is None
