"""``enclave dataset ...``: ingest, verify and report pseudonymized datasets; generate synthetic raw data.

    enclave dataset synth --persons 1000 --out /tmp/raw
    enclave dataset ingest synthetic-omop --source /tmp/raw --project demo-cardio [--version 1]
    enclave dataset verify [--project P] [--dataset D] [--version V]
    enclave dataset report --project P --dataset D [--version V] [--json]

``SPEC`` is a spec file, or a dataset id looked up in ``<policy_dir>/datasets/``: the catalogue entry
``<id>.yaml``'s ``spec:`` if it has one, else ``<id>.spec.yaml``.

The ``dataset`` group is shared: hub.provision adds attach/detach/list to it, through the same
``ground.commands.command_group``, so the order of registration does not matter.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from pathlib import Path
from typing import Any

import yaml

from ground.commands import CLIError, command_group
from ground.paths import EnclavePaths
from ingest.errors import IngestError, RefusedError

GROUP = "dataset"


def dataset_subparsers(subparsers: argparse._SubParsersAction) -> argparse._SubParsersAction:
    """The ``enclave dataset`` group's subcommands, shared with hub.provision (whoever registers first
    creates the group: ground.commands.command_group)."""
    return command_group(subparsers, GROUP, "datasets: catalogue, grants, ingest")


def register(subparsers: argparse._SubParsersAction) -> None:
    sub = dataset_subparsers(subparsers)

    p = sub.add_parser("ingest", help="pseudonymize raw tables for one project and publish them read-only")
    p.add_argument("spec", help="spec file, or dataset id in <policy_dir>/datasets/")
    p.add_argument("--source", required=True, type=Path, help="directory of raw <table>.csv / .parquet files")
    p.add_argument("--project", required=True, help="project id: pseudonyms are derived from its key")
    p.add_argument("--version", help="version to publish (default: one more than the highest published)")
    p.add_argument("--k", type=int, help="the project's k; the stricter of it and the spec's k applies")
    p.add_argument(
        "--actor",
        default=None,
        help="who runs this, for the audit trail (default: $ENCLAVE_ACTOR, $SUDO_USER or the login name)",
    )
    p.add_argument("--workers", type=int, help="cores to hash on (default: all)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(handler=_ingest)

    p = sub.add_parser("verify", help="re-check published datasets against their manifests")
    _selection(p, required=False)
    p.set_defaults(handler=_verify)

    p = sub.add_parser("report", help="print a published dataset's privacy report")
    _selection(p, required=True)
    p.add_argument("--json", action="store_true", help="print the manifest as JSON")
    p.set_defaults(handler=_report)

    p = sub.add_parser("synth", help="generate raw synthetic OMOP CDM tables with planted identifiers")
    p.add_argument("--persons", type=int, default=1000)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--seed", type=int, default=20250101)
    p.add_argument("--format", choices=("csv", "parquet"), default="csv")
    p.set_defaults(handler=_synth)


def _selection(p: argparse.ArgumentParser, required: bool) -> None:
    p.add_argument("--project", required=required)
    p.add_argument("--dataset", required=required)
    p.add_argument("--version", help="default: the dataset's current version")


def _default_actor() -> str:
    """$ENCLAVE_ACTOR (deploy scripts set it), else the admin behind sudo, else the login name."""
    return os.environ.get("ENCLAVE_ACTOR") or os.environ.get("SUDO_USER") or getpass.getuser()


def resolve_spec(arg: str, paths: EnclavePaths) -> Path:
    """A spec path, or a dataset id resolved through the policy directory's catalogue."""
    path = Path(arg)
    if path.is_file():
        return path
    datasets = paths.policy_dir / "datasets"
    catalogue = datasets / f"{arg}.yaml"
    if catalogue.is_file():
        try:
            entry = yaml.safe_load(catalogue.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise CLIError(f"{catalogue}: not valid YAML: {exc}") from None
        if isinstance(entry, dict) and entry.get("spec"):
            return datasets / str(entry["spec"])
    spec = datasets / f"{arg}.spec.yaml"
    if spec.is_file():
        return spec
    raise CLIError(f"{arg}: no such spec file, and no {catalogue.name} or {spec.name} in {datasets}")


def open_audit_log(paths: EnclavePaths) -> Any:
    """The audit log. An ingest without an audit trail is refused, not run quietly."""
    try:
        from audit import AuditLog
    except ImportError as exc:
        raise CLIError(
            f"audit: the audit log is unavailable ({exc}); refusing to ingest without it"
        ) from None
    return AuditLog.open(paths.state_dir)


def _ingest(args: argparse.Namespace, paths: EnclavePaths) -> int:
    from ingest.pipeline import ingest_dataset

    spec = resolve_spec(args.spec, paths)
    audit = open_audit_log(paths)
    actor = args.actor or _default_actor()
    with _progress(args.quiet) as progress:
        try:
            result = ingest_dataset(
                paths,
                spec,
                args.source,
                args.project,
                audit=audit,
                actor=actor,
                version=args.version,
                k=args.k,
                progress=progress,
                workers=args.workers,
            )
        except RefusedError as exc:
            raise CLIError(f"refused: {exc}") from None
        except IngestError as exc:
            raise CLIError(str(exc)) from None
        except Exception as exc:
            # A library's message may quote a raw value; stderr is often logged. The type only, unless the
            # administrator asks for the traceback on a machine where raw data may be shown.
            if os.environ.get("ENCLAVE_DEBUG"):
                raise
            raise CLIError(
                f"internal error during the ingest ({type(exc).__name__}); nothing was published. "
                "Re-run with ENCLAVE_DEBUG=1 to see the traceback (it may show raw values)."
            ) from None
    m = result.manifest
    k = m.get("k_anonymity") or {}
    print(
        f"published {result.dataset} version {result.version} for {result.project}: {result.path}\n"
        f"  {m['rows_total']} rows in {len(m['tables'])} tables, {k.get('suppressed', 0)} of "
        f"{k.get('records', '?')} persons suppressed for k={k.get('k_required', '-')}, "
        f"{result.seconds:.1f} s\n  manifest sha256 {result.manifest_sha256}"
    )
    suppressed = sum((e.get("suppressed") or 0) for e in (m.get("allowlist") or {}).values())
    linkage = m.get("linkage") or {}
    shares = ", ".join(f"{o} {r['share']:.1%}" for o, r in (linkage.get("against") or {}).items())
    print(
        f"  {suppressed} value(s) outside their column's declaration suppressed; linkage one to one: "
        f"{shares or 'no other project declared'} (same view: {linkage.get('same_view_share', '-')}); "
        "risk report: enclave dataset report"
    )
    return 0


def _versions(args: argparse.Namespace, paths: EnclavePaths) -> list[tuple[str, str, str]]:
    from ingest.publish import DatasetStore

    store = DatasetStore(paths.data_dir)
    if args.project and args.dataset:
        version = args.version or store.current(args.project, args.dataset)
        if version is None:
            raise CLIError(f"{store.dataset_dir(args.project, args.dataset)}: no published version")
        return [(args.project, args.dataset, version)]
    chosen = [
        (p, d, v)
        for p, d, v in store.published()
        if (args.project in (None, p)) and (args.dataset in (None, d)) and (args.version in (None, v))
    ]
    if not chosen:
        raise CLIError(f"{paths.data_dir}: no published dataset matches")
    return chosen


def _verify(args: argparse.Namespace, paths: EnclavePaths) -> int:
    from ingest.publish import DatasetStore, verify

    store = DatasetStore(paths.data_dir)
    bad = 0
    for project, dataset, version in _versions(args, paths):
        problems = verify(store.version_dir(project, dataset, version))
        status = "ok" if not problems else "FAILED"
        print(f"{project}/{dataset}/{version}: {status}")
        for problem in problems:
            print(f"  {problem}")
        bad += bool(problems)
    if bad:
        raise CLIError(f"{bad} dataset version(s) do not match their manifest")
    return 0


def _report(args: argparse.Namespace, paths: EnclavePaths) -> int:
    from ingest.publish import DatasetStore, load_manifest
    from ingest.report import render

    store = DatasetStore(paths.data_dir)
    ((project, dataset, version),) = _versions(args, paths)
    try:
        manifest = load_manifest(store.version_dir(project, dataset, version))
    except IngestError as exc:
        raise CLIError(str(exc)) from None
    if args.json:
        json.dump(manifest, sys.stdout, indent=2, ensure_ascii=False)
        print()
    else:
        render(manifest)
    return 0


def _synth(args: argparse.Namespace, paths: EnclavePaths) -> int:
    from ingest.synth import synthesize

    if args.persons < 1:
        raise CLIError(f"--persons: must be at least 1, not {args.persons}")
    with _progress(False) as progress:
        progress.start("synth", f"generating {args.persons} persons", 5)
        result = synthesize(
            args.out,
            args.persons,
            seed=args.seed,
            fmt=args.format,
            on_table=lambda name, rows: progress.advance("synth"),
        )
        progress.finish("synth")
    for name, path in result.files.items():
        print(f"{path}: {result.rows[name]} rows")
    return 0


class _RichProgress:
    """Progress bars on stderr, one per pipeline stage."""

    def __init__(self):
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
        )

        self._bars = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=Console(stderr=True),
            transient=False,
        )
        self._tasks: dict[str, Any] = {}

    def __enter__(self):
        self._bars.__enter__()
        return self

    def __exit__(self, *exc):
        self._bars.__exit__(*exc)

    def start(self, key: str, description: str, total: float | None = None) -> None:
        self._tasks[key] = self._bars.add_task(description, total=total)

    def advance(self, key: str, amount: float = 1) -> None:
        if key in self._tasks:
            self._bars.advance(self._tasks[key], amount)

    def finish(self, key: str) -> None:
        if key in self._tasks:
            task = self._bars.tasks[self._tasks[key]]
            self._bars.update(
                self._tasks[key],
                total=task.total or task.completed or 1,
                completed=task.total or task.completed or 1,
            )


class _Quiet:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None

    def start(self, key: str, description: str, total: float | None = None) -> None:
        pass

    def advance(self, key: str, amount: float = 1) -> None:
        pass

    def finish(self, key: str) -> None:
        pass


def _progress(quiet: bool):
    return _Quiet() if quiet else _RichProgress()
