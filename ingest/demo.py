"""Demo data in one call: synthetic OMOP CDM, generated once, pseudonymized separately for each project.

    from hub.paths import EnclavePaths
    from ingest.demo import publish_demo
    publish_demo(EnclavePaths.from_env(state_dir, policy_dir))   # demo-cardio and demo-oncology, version 1

The CLI equivalent (what deploy/demo-data runs)::

    enclave dataset synth --persons 1000 --out RAW
    enclave dataset ingest synthetic-omop --source RAW --project demo-cardio --version 1
    enclave dataset ingest synthetic-omop --source RAW --project demo-oncology --version 1
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

from ingest.pipeline import AuditSink, IngestResult, ingest_dataset
from ingest.publish import DatasetStore
from ingest.synth import synthesize

DEMO_PROJECTS = ("demo-cardio", "demo-oncology")
DEMO_DATASET = "synthetic-omop"


def publish_demo(
    paths,
    projects: Sequence[str] = DEMO_PROJECTS,
    *,
    persons: int = 1000,
    version: str = "1",
    audit: AuditSink | None = None,
    actor: str = "service:ingest",
    spec: Path | None = None,
) -> dict[str, IngestResult | None]:
    """Publish ``synthetic-omop`` ``version`` for each project; a project that has it already is left
    alone (None in the result). The raw tables live in a private temporary directory under the state
    directory and are deleted afterwards, planted identifiers and all."""
    if audit is None:
        from audit import AuditLog

        audit = AuditLog.open(paths.state_dir)
    spec = spec or paths.policy_dir / "datasets" / f"{DEMO_DATASET}.spec.yaml"
    store = DatasetStore(paths.data_dir)
    todo = [
        p for p in projects if not (store.version_dir(p, DEMO_DATASET, version) / "manifest.json").is_file()
    ]
    results: dict[str, IngestResult | None] = dict.fromkeys(projects)
    if not todo:
        return results
    paths.state_dir.mkdir(parents=True, exist_ok=True)
    raw = Path(tempfile.mkdtemp(prefix=".raw-", dir=paths.state_dir))  # mode 0700
    try:
        synthesize(raw, persons, fmt="parquet")
        for project in todo:
            results[project] = ingest_dataset(
                paths, spec, raw, project, audit=audit, actor=actor, version=version
            )
    finally:
        shutil.rmtree(raw, ignore_errors=True)
    return results
