"""``enclave project|member|dataset|policy``: the data-access agreement's lifecycle as policy-as-code.

Every change is made the same way, in :func:`commit`: take the policy lock, apply the edit to a copy
of the whole policy directory, validate that copy with the hub's own loader, show the diff, then
(unless ``--dry-run``) write the file atomically and record ``policy.change`` on the audit trail with
the operator, the change, and the file's content hash before and after. YAML comments survive
(ruamel.yaml round-trip). Only a directory-authenticated member of enclave-admins may change policy
(see hub/directory.py).
"""

from __future__ import annotations

import argparse
import difflib
import fcntl
import hashlib
import io
import json
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date
from pathlib import Path

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap

from ground.commands import CLIError, command_group
from ground.durable import atomic_write
from hub.directory import Directory, DirectoryError, admin_directory, operator_password, operator_uid
from hub.paths import EnclavePaths
from hub.policy import PolicyError, load_document, load_policy, policy_fingerprint

STATUS_MOVES = {
    # command: (allowed current statuses, new status)
    "suspend": ({"active"}, "suspended"),
    "resume": ({"suspended"}, "active"),
    "close": ({"proposed", "active", "suspended"}, "closed"),
    "activate": ({"proposed"}, "active"),  # the validator requires DRB and IRB approvals for active
}
PROJECT_ID = re.compile(r"^[a-z][a-z0-9-]{1,38}[a-z0-9]$")  # as policies/schema/project.schema.json
SETTABLE_TOP = {"title", "principal_investigator", "start", "expiry", "terminals"}  # status: its own commands
SETTABLE_NESTED = {"resources", "exports", "approvals"}


def rt_yaml() -> YAML:
    yaml = YAML()
    yaml.preserve_quotes = True
    yaml.width = 4096
    yaml.indent(mapping=2, sequence=4, offset=2)
    return yaml


def dump(doc) -> str:
    buf = io.StringIO()
    rt_yaml().dump(doc, buf)
    return buf.getvalue()


@contextmanager
def policy_lock(policy_dir: Path) -> Iterator[None]:
    """One writer at a time: CLI invocations by several administrators serialize here."""
    with open(policy_dir / ".enclave.lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def sha256(text: str | None) -> str | None:
    return None if text is None else hashlib.sha256(text.encode()).hexdigest()


@dataclass
class Edit:
    """One file's proposed new content, and what the change is, for the audit trail."""

    path: Path
    new_text: str | None  # None: delete the file
    change: str
    summary: dict


def validate_with(paths: EnclavePaths, edits: list[Edit]) -> None:
    """Validate the whole policy as it would be after ``edits``; CLIError naming the real files if not."""
    with tempfile.TemporaryDirectory(prefix="enclave-policy-") as tmp:
        copy = Path(tmp) / "policies"
        shutil.copytree(paths.policy_dir, copy, ignore=shutil.ignore_patterns(".enclave.lock", ".*.tmp"))
        for edit in edits:
            target = copy / edit.path.relative_to(paths.policy_dir)
            if edit.new_text is None:
                target.unlink(missing_ok=True)
            else:
                target.write_text(edit.new_text)
        try:
            load_policy(copy, paths.state_dir)
        except PolicyError as exc:
            shown = [p.replace(str(copy), display(paths.policy_dir)) for p in exc.problems]
            raise CLIError("the change is refused, nothing was written:\n  " + "\n  ".join(shown)) from exc


def display(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def commit(paths: EnclavePaths, edits: list[Edit], actor: str, dry_run: bool) -> None:
    """Validate, show, write and audit. The caller holds the policy lock."""
    validate_with(paths, edits)
    for edit in edits:
        old = edit.path.read_text() if edit.path.exists() else ""
        diff = difflib.unified_diff(
            old.splitlines(True),
            (edit.new_text or "").splitlines(True),
            display(edit.path),
            display(edit.path) + " (new)",
        )
        sys.stdout.write("".join(diff) or f"{display(edit.path)}: no change\n")
    if dry_run:
        print("dry run: nothing was written")
        return
    from hub.runtime import audit_log

    log = audit_log(str(paths.state_dir))
    for edit in edits:
        old_text = edit.path.read_text() if edit.path.exists() else None
        if edit.new_text is None:
            edit.path.unlink()
        else:
            atomic_write(edit.path, edit.new_text, 0o644)
        try:
            log.append(
                actor=actor,
                action="policy.change",
                project=edit.summary.get("project"),
                target=str(edit.path.relative_to(paths.policy_dir)),
                details={
                    "change": edit.change,
                    **edit.summary,
                    "sha256_before": sha256(old_text),
                    "sha256_after": sha256(edit.new_text),
                },
            )
        except Exception as exc:
            # Not on the trail means not done: put the file back as it was.
            if old_text is None:
                edit.path.unlink(missing_ok=True)
            else:
                atomic_write(edit.path, old_text, 0o644)
            raise CLIError(f"the audit trail refused the record, the change was undone: {exc}") from exc
    print(f"changed by {actor}; the hub applies it within a few seconds")


# ---- reading and editing project files ----------------------------------------------------------


def check_project_id(project_id: str) -> None:
    if not PROJECT_ID.match(project_id):
        raise CLIError(
            f"'{project_id}' is not a project id (lower-case letters, digits and '-', 3 to 40 long)"
        )


def project_path(paths: EnclavePaths, project_id: str) -> Path:
    check_project_id(project_id)
    path = paths.policy_dir / "projects" / f"{project_id}.yaml"
    if not path.exists():
        known = sorted(p.stem for p in (paths.policy_dir / "projects").glob("*.yaml"))
        raise CLIError(
            f"unknown project '{project_id}' (no {display(path)}); known: {', '.join(known) or 'none'}"
        )
    return path


def load_rt(path: Path):
    try:
        return rt_yaml().load(path.read_text())
    except Exception as exc:
        raise CLIError(f"{display(path)}: cannot be edited, it is not valid YAML: {exc}") from exc


def edit_project(
    paths: EnclavePaths, project_id: str, change: str, mutate: Callable[[CommentedMap], dict]
) -> Edit:
    path = project_path(paths, project_id)
    doc = load_rt(path)
    summary = mutate(doc)
    return Edit(path, dump(doc), change, {"project": project_id, **summary})


def parse_value(text: str):
    """Values are YAML scalars, as they would be typed in the file: 2, 1.5, true, 2027-06-30, 4G."""
    value = YAML(typ="safe").load(text)
    return value.isoformat() if isinstance(value, date) else value


# ---- operator -------------------------------------------------------------------------------------


def as_admin(args, paths: EnclavePaths) -> tuple[str, Directory]:
    policy = load_policy_or_fail(paths)
    try:
        directory = admin_directory(policy.site.ldap, args.as_uid, args.password_file)
    except DirectoryError as exc:
        _audit_refusal(paths, operator_uid(args.as_uid), str(exc), args)
        raise CLIError(f"refused: {exc}") from exc
    return directory.uid, directory


def _audit_refusal(paths: EnclavePaths, uid: str, reason: str, args) -> None:
    from hub.runtime import audit_log

    audit_log(str(paths.state_dir)).append(
        actor=uid,
        action="policy.change",
        outcome="denied",
        target=" ".join(sys.argv[1:3]) or "policy",
        details={
            "change": f"{args.command}.{getattr(args, args.command + '_command', '')}",
            "reason": reason,
        },
    )


def load_policy_or_fail(paths: EnclavePaths):
    try:
        return load_policy(paths.policy_dir, paths.state_dir)
    except PolicyError as exc:
        raise CLIError(
            f"the current policy is invalid; fix it first (enclave policy validate):\n{exc}"
        ) from exc


def require_member_candidate(directory: Directory, uid: str, project: str) -> None:
    person = directory.person(uid)
    where = f"policies/projects/{project}.yaml: members"
    if not person.exists:
        raise CLIError(f"{where}: '{uid}' not found in directory")
    if not person.accredited:
        raise CLIError(f"{where}: '{uid}' is not an accredited researcher (not in enclave-researchers)")


# ---- command handlers ------------------------------------------------------------------------------


def cmd_project_create(args, paths):
    check_project_id(args.id)
    actor, directory = as_admin(args, paths)
    path = paths.policy_dir / "projects" / f"{args.id}.yaml"
    with policy_lock(paths.policy_dir):
        if path.exists():
            raise CLIError(f"project '{args.id}' exists already ({display(path)})")
        for uid in [args.pi, *args.member]:
            require_member_candidate(directory, uid, args.id)
        doc = CommentedMap(
            id=args.id,
            title=args.title,
            principal_investigator=args.pi,
            status=args.status,
            start=args.start,
            expiry=args.expiry,
        )
        approvals = CommentedMap()
        if args.drb:
            approvals["drb"] = CommentedMap(id=args.drb, **({"date": args.drb_date} if args.drb_date else {}))
        if args.irb:
            approvals["irb"] = CommentedMap(id=args.irb, **({"date": args.irb_date} if args.irb_date else {}))
        if approvals:
            doc["approvals"] = approvals
        members = [args.pi] + [m for m in args.member if m != args.pi]
        doc["members"] = [CommentedMap(uid=m) for m in members]
        doc["datasets"] = [
            CommentedMap(
                id=d.split("@")[0], version=d.split("@")[1] if "@" in d else _catalogued_version(paths, d)
            )
            for d in args.dataset
        ]
        text = f"# {args.title}\n# Created by {actor} with `enclave project create`.\n" + dump(doc)
        commit(
            paths,
            [Edit(path, text, "project.create", {"project": args.id, "after": json.loads(json.dumps(doc))})],
            actor,
            args.dry_run,
        )


def _catalogued_version(paths: EnclavePaths, dataset_id: str) -> str:
    doc, problems = load_document(paths.policy_dir / "datasets" / f"{dataset_id}.yaml", "dataset")
    if doc is None:
        raise CLIError(
            f"dataset '{dataset_id}' is not catalogued in policies/datasets/: {'; '.join(problems)}"
        )
    return doc["version"]


def cmd_project_show(args, paths):
    policy = load_policy_or_fail(paths)
    project = policy.projects.get(args.id)
    if project is None:
        project_path(paths, args.id)  # names the missing file
    text = project_path(paths, args.id).read_text()
    if args.json:
        print(json.dumps(load_document(project.source, "project")[0], indent=2))
    else:
        today = date.today()
        print(text.rstrip())
        print(f"# effective status today: {'expired' if project.is_expired(today) else project.status}")


def cmd_project_list(args, paths):
    policy = load_policy_or_fail(paths)
    today = date.today()
    rows = [
        {
            "id": p.id,
            "status": "expired" if p.is_expired(today) else p.status,
            "expiry": p.expiry.isoformat(),
            "members": [m.uid for m in p.members],
            "datasets": [f"{d.id}@{d.version}" for d in p.datasets],
        }
        for p in policy.projects.values()
    ]
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    for r in rows:
        print(
            f"{r['id']:<24} {r['status']:<10} expires {r['expiry']}  members: {', '.join(r['members'])}  "
            f"datasets: {', '.join(r['datasets'])}"
        )


def cmd_project_set(args, paths):
    actor, _ = as_admin(args, paths)

    def mutate(doc):
        changes = {}
        for assignment in args.assignments:
            key, sep, raw = assignment.partition("=")
            if not sep:
                raise CLIError(f"'{assignment}': expected KEY=VALUE, e.g. resources.memory=4G")
            parts = key.split(".")
            if parts[0] not in SETTABLE_TOP | SETTABLE_NESTED or (parts[0] in SETTABLE_NESTED) != (
                len(parts) > 1
            ):
                raise CLIError(
                    f"'{key}': not settable here (members: enclave member; datasets: enclave dataset)"
                )
            node = doc
            for part in parts[:-1]:
                node = node.setdefault(part, CommentedMap())
            before = node.get(parts[-1])
            node[parts[-1]] = parse_value(raw)
            changes[key] = {"before": before, "after": node[parts[-1]]}
        return {"set": json.loads(json.dumps(changes, default=str))}

    with policy_lock(paths.policy_dir):
        commit(paths, [edit_project(paths, args.id, "project.set", mutate)], actor, args.dry_run)


def cmd_project_status(args, paths):
    actor, _ = as_admin(args, paths)
    allowed, new = STATUS_MOVES[args.project_command]

    def mutate(doc):
        if doc["status"] not in allowed:
            raise CLIError(
                f"project '{args.id}' is {doc['status']}; `{args.project_command}` applies to "
                f"{' or '.join(sorted(allowed))} projects"
            )
        before, doc["status"] = doc["status"], new
        return {"before": before, "after": new, "reason": args.reason or ""}

    with policy_lock(paths.policy_dir):
        commit(
            paths,
            [edit_project(paths, args.id, f"project.{args.project_command}", mutate)],
            actor,
            args.dry_run,
        )


def cmd_member_add(args, paths):
    actor, directory = as_admin(args, paths)
    require_member_candidate(directory, args.uid, args.project)

    def mutate(doc):
        if any(m["uid"] == args.uid for m in doc["members"]):
            raise CLIError(f"{args.uid} is already a member of {args.project}")
        member = CommentedMap(uid=args.uid)
        if args.expiry:
            member["expiry"] = args.expiry
        doc["members"].append(member)
        return {"uid": args.uid, "expiry": args.expiry}

    with policy_lock(paths.policy_dir):
        commit(paths, [edit_project(paths, args.project, "member.add", mutate)], actor, args.dry_run)


def cmd_member_remove(args, paths):
    actor, _ = as_admin(args, paths)

    def mutate(doc):
        kept = [m for m in doc["members"] if m["uid"] != args.uid]
        if len(kept) == len(doc["members"]):
            raise CLIError(f"{args.uid} is not a member of {args.project}")
        doc["members"][:] = kept
        return {"uid": args.uid}

    with policy_lock(paths.policy_dir):
        commit(paths, [edit_project(paths, args.project, "member.remove", mutate)], actor, args.dry_run)


def cmd_dataset_attach(args, paths):
    actor, _ = as_admin(args, paths)
    version = args.version or _catalogued_version(paths, args.dataset)

    def mutate(doc):
        if any(d["id"] == args.dataset for d in doc["datasets"]):
            raise CLIError(f"dataset {args.dataset} is already attached to {args.project}")
        doc["datasets"].append(CommentedMap(id=args.dataset, version=version))
        return {"dataset": f"{args.dataset}@{version}"}

    with policy_lock(paths.policy_dir):
        commit(paths, [edit_project(paths, args.project, "dataset.attach", mutate)], actor, args.dry_run)


def cmd_dataset_detach(args, paths):
    actor, _ = as_admin(args, paths)

    def mutate(doc):
        kept = [d for d in doc["datasets"] if d["id"] != args.dataset]
        if len(kept) == len(doc["datasets"]):
            raise CLIError(f"dataset {args.dataset} is not attached to {args.project}")
        doc["datasets"][:] = kept
        return {"dataset": args.dataset}

    with policy_lock(paths.policy_dir):
        commit(paths, [edit_project(paths, args.project, "dataset.detach", mutate)], actor, args.dry_run)


def cmd_dataset_list(args, paths):
    policy = load_policy_or_fail(paths)
    for ds in policy.datasets.values():
        users = [p.id for p in policy.projects.values() if any(d.id == ds.id for d in p.datasets)]
        published = [p for p in users if (paths.data_dir / p / ds.id / ds.version / "manifest.json").exists()]
        print(
            f"{ds.id}@{ds.version:<8} {ds.description}\n    attached to: {', '.join(users) or '-'}; "
            f"published for: {', '.join(published) or '-'}"
        )


def cmd_policy_validate(args, paths):
    try:
        policy = load_policy(paths.policy_dir, paths.state_dir)
    except PolicyError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    print(
        f"OK: {len(policy.projects)} projects, {len(policy.datasets)} datasets in {display(paths.policy_dir)}"
    )
    if not args.directory:
        return 0
    uid = operator_uid(args.as_uid)
    try:
        directory = Directory(policy.site.ldap, uid, operator_password(uid, args.password_file))
    except DirectoryError as exc:
        raise CLIError(str(exc)) from exc
    failed = False
    for project in policy.projects.values():
        for i, member in enumerate(project.members):
            person = directory.person(member.uid)
            where = f"{display(project.source)}: members[{i}].uid"
            if not person.exists:
                print(f"ERROR {where}: '{member.uid}' not found in directory", file=sys.stderr)
                failed = True
            elif not person.accredited:
                print(
                    f"WARN  {where}: '{member.uid}' is not accredited (not in enclave-researchers); "
                    "login and spawn are refused"
                )
    return 1 if failed else 0


def cmd_policy_diff(args, paths):
    applied = paths.policy_applied_dir
    if not applied.exists():
        raise CLIError(f"no applied policy recorded in {applied}: is the hub running?")
    changed = False
    names = {p.relative_to(applied) for p in applied.rglob("*.yaml")} | {
        p.relative_to(paths.policy_dir) for p in paths.policy_dir.rglob("*.yaml")
    }
    for rel in sorted(names):
        old = (applied / rel).read_text() if (applied / rel).exists() else ""
        new = (paths.policy_dir / rel).read_text() if (paths.policy_dir / rel).exists() else ""
        diff = "".join(
            difflib.unified_diff(old.splitlines(True), new.splitlines(True), f"applied/{rel}", str(rel))
        )
        if diff:
            changed = True
            sys.stdout.write(diff)
    if not changed:
        print("the hub has applied the policy on disk")


def cmd_policy_reload(args, paths):
    """Wait until the hub has applied (or refused) the policy now on disk, and say which."""
    want = [list(x) for x in policy_fingerprint(paths.policy_dir)]
    deadline = time.monotonic() + args.wait
    while time.monotonic() < deadline:
        try:
            status = json.loads(paths.policy_status_file.read_text())
        except (OSError, ValueError):
            status = None
        if status and status.get("fingerprint") == want:
            if status["ok"]:
                print(f"applied at {status['at']}")
                return 0
            raise CLIError(
                "the hub refused the policy on disk and keeps the last good one:\n" + status["problems"]
            )
        time.sleep(0.5)
    raise CLIError(
        f"the hub did not pick up the policy within {args.wait}s (is it running? {paths.policy_status_file})"
    )


def cmd_user_reset_mfa(args, paths):
    """Forget a user's second factor (a lost phone): they enrol again at their next login. Only a
    directory-authenticated administrator may, and it is on the audit trail with who did it."""
    from hub.mfa import MfaError, MfaStore
    from hub.runtime import audit_log

    actor, directory = as_admin(args, paths)
    try:
        person = directory.person(args.uid)
    finally:
        directory.close()
    if not person.exists:
        raise CLIError(f"user reset-mfa: '{args.uid}' not found in directory")
    try:
        had = MfaStore(paths.state_dir).reset(args.uid)
    except MfaError as exc:
        raise CLIError(f"user reset-mfa: {exc}") from exc
    if not had:
        raise CLIError(f"user reset-mfa: '{args.uid}' has no second factor enrolled; nothing changed")
    audit_log(str(paths.state_dir)).append(
        actor=actor, action="auth.mfa", target=args.uid, details={"event": "reset"}
    )
    print(f"{args.uid}'s second factor is reset: they enrol a new one at their next login")


# ---- argument parsing --------------------------------------------------------------------------------


def _changer(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--dry-run", action="store_true", help="show the diff, write nothing")
    _operator(parser)
    return parser


def _operator(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--as", dest="as_uid", metavar="UID", help="operator's directory uid (default: login name)"
    )
    parser.add_argument(
        "--password-file", help="file with the operator's directory password (default: prompt)"
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    project = command_group(subparsers, "project", "research projects (data-access agreements)")
    p = _changer(project.add_parser("create", help="create a project file (status proposed unless --status)"))
    p.add_argument("id")
    p.add_argument("--title", required=True)
    p.add_argument("--pi", required=True, help="principal investigator's uid (becomes a member)")
    p.add_argument("--start", required=True, help="YYYY-MM-DD")
    p.add_argument("--expiry", required=True, help="YYYY-MM-DD")
    p.add_argument("--status", default="proposed", choices=["proposed", "active"])
    p.add_argument("--drb", help="data review board approval id"), p.add_argument("--drb-date")
    p.add_argument("--irb", help="IRB approval id"), p.add_argument("--irb-date")
    p.add_argument("--member", action="append", default=[], help="uid (repeatable)")
    p.add_argument("--dataset", action="append", default=[], help="ID or ID@VERSION (repeatable)")
    p.set_defaults(handler=cmd_project_create)
    p = project.add_parser("show", help="print a project's policy")
    p.add_argument("id"), p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_project_show)
    p = project.add_parser("list", help="list projects")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_project_list)
    p = _changer(
        project.add_parser("set", help="set fields: title=..., expiry=2027-06-30, resources.memory=4G")
    )
    p.add_argument("id"), p.add_argument("assignments", nargs="+", metavar="KEY=VALUE")
    p.set_defaults(handler=cmd_project_set)
    for name, text in (
        ("activate", "open a proposed project (needs DRB and IRB approvals recorded)"),
        ("suspend", "stop all servers and refuse new ones"),
        ("resume", "reactivate a suspended project"),
        ("close", "end the agreement (final)"),
    ):
        p = _changer(project.add_parser(name, help=text))
        p.add_argument("id"), p.add_argument("--reason")
        p.set_defaults(handler=cmd_project_status)

    member = command_group(subparsers, "member", "project members")
    p = _changer(member.add_parser("add", help="add an accredited researcher to a project"))
    p.add_argument("project"), p.add_argument("uid"), p.add_argument("--expiry", help="YYYY-MM-DD")
    p.set_defaults(handler=cmd_member_add)
    p = _changer(member.add_parser("remove", help="remove a member; their running server stops"))
    p.add_argument("project"), p.add_argument("uid")
    p.set_defaults(handler=cmd_member_remove)

    dataset = command_group(subparsers, "dataset", "datasets: catalogue, grants, ingest")
    p = _changer(dataset.add_parser("attach", help="grant a project a catalogued dataset"))
    p.add_argument("project"), p.add_argument("dataset"), p.add_argument("--version")
    p.set_defaults(handler=cmd_dataset_attach)
    p = _changer(dataset.add_parser("detach", help="withdraw a dataset from a project"))
    p.add_argument("project"), p.add_argument("dataset")
    p.set_defaults(handler=cmd_dataset_detach)
    p = dataset.add_parser("list", help="catalogued datasets, their grants and publications")
    p.set_defaults(handler=cmd_dataset_list)

    user = command_group(subparsers, "user", "researchers' login factors")
    p = user.add_parser("reset-mfa", help="forget a user's second factor; they enrol again at next login")
    p.add_argument("uid")
    _operator(p)
    p.set_defaults(handler=cmd_user_reset_mfa)

    policy = command_group(subparsers, "policy", "validate, diff and reload policy files")
    p = policy.add_parser("validate", help="validate every policy file (exit 1 on an error)")
    p.add_argument("--directory", action="store_true", help="also check members against the directory")
    _operator(p)
    p.set_defaults(handler=cmd_policy_validate)
    p = policy.add_parser("diff", help="what on disk differs from what the hub applied")
    p.set_defaults(handler=cmd_policy_diff)
    p = policy.add_parser("reload", help="wait until the hub has applied the policy on disk")
    p.add_argument("--wait", type=float, default=30)
    p.set_defaults(handler=cmd_policy_reload)
