"""Published datasets on disk: staging, atomic publication, immutability, the manifest and its verification.

Layout (``hub.paths.EnclavePaths.data_dir``)::

    data/<project>/<dataset>/<version>/       published, immutable: mounted read-only at /data/<dataset>/
        manifest.json                         checksums, row counts, spec hash, privacy reports
        <table>.parquet ...
    data/<project>/<dataset>/current          symlink to the newest published <version> (for the CLI)
    data/<project>/<dataset>/.lock            serialises publication of one dataset
    data/.staging/<project>.<dataset>.<version>.<random>/   work in progress, never mounted

An ingest writes everything into a staging directory, fsyncs it, and renames it to its version directory
in one step, under the dataset's lock and only if that version does not exist. A crash (even SIGKILL)
therefore leaves either nothing or a complete version; leftover staging directories are removed by the
next ingest, which can tell they are abandoned because nobody holds their lock any more.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import secrets
import shutil
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ground.durable import fsync_dir
from ingest.errors import AlreadyPublishedError, IngestError, InvalidNameError

MANIFEST = "manifest.json"
FORMAT = "enclave-dataset/1"
CURRENT = "current"
STAGING = ".staging"
ID_PATTERN = re.compile(r"^[a-z][a-z0-9-]{0,62}$")
VERSION_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,31}$")


def check_names(project: str, dataset: str, version: str | None) -> None:
    """Ids become path components: refuse anything that could escape or confuse the layout."""
    for what, value, pattern in (("project", project, ID_PATTERN), ("dataset", dataset, ID_PATTERN)):
        if not pattern.match(value or ""):
            raise InvalidNameError(f"{what}: '{value}' is not a valid id ({pattern.pattern})")
    if version is not None and (not VERSION_PATTERN.match(version) or version == CURRENT):
        raise InvalidNameError(
            f"version: '{version}' is not a valid version ({VERSION_PATTERN.pattern}, not 'current')"
        )


@dataclass(frozen=True)
class DatasetStore:
    data_dir: Path

    def dataset_dir(self, project: str, dataset: str) -> Path:
        return self.data_dir / project / dataset

    def version_dir(self, project: str, dataset: str, version: str) -> Path:
        return self.dataset_dir(project, dataset) / version

    def versions(self, project: str, dataset: str) -> list[str]:
        """Published versions (those with a manifest), oldest first by number where numeric."""
        root = self.dataset_dir(project, dataset)
        if not root.is_dir():
            return []
        found = [
            p.name
            for p in root.iterdir()
            if not p.is_symlink() and p.is_dir() and not p.name.startswith(".") and (p / MANIFEST).is_file()
        ]
        return sorted(found, key=lambda v: (0, int(v), "") if v.isdigit() else (1, 0, v))

    def next_version(self, project: str, dataset: str) -> str:
        numbers = [int(v) for v in self.versions(project, dataset) if v.isdigit()]
        return str(max(numbers, default=0) + 1)

    def current(self, project: str, dataset: str) -> str | None:
        link = self.dataset_dir(project, dataset) / CURRENT
        return os.readlink(link) if link.is_symlink() else None

    def published(self) -> list[tuple[str, str, str]]:
        """Every (project, dataset, version) published under the data directory."""
        out: list[tuple[str, str, str]] = []
        if not self.data_dir.is_dir():
            return out
        for project in sorted(
            p for p in self.data_dir.iterdir() if p.is_dir() and not p.name.startswith(".")
        ):
            for dataset in sorted(d for d in project.iterdir() if d.is_dir() and not d.name.startswith(".")):
                out += [(project.name, dataset.name, v) for v in self.versions(project.name, dataset.name)]
        return out

    def refuse_if_published(self, project: str, dataset: str, version: str) -> None:
        target = self.version_dir(project, dataset, version)
        if os.path.lexists(target):
            raise AlreadyPublishedError(
                f"{target}: {dataset} version {version} is already published for {project}; a published "
                f"version is immutable. Ingest as a new version (--version {self.next_version(project, dataset)})."
            )

    @contextlib.contextmanager
    def staging(self, project: str, dataset: str, version: str) -> Iterator[Path]:
        """A private directory to build one version in; removed on any exception, kept only by publish()."""
        root = self.data_dir / STAGING
        root.mkdir(parents=True, exist_ok=True)
        os.chmod(root, 0o700)
        self.remove_abandoned()
        path = root / f"{project}.{dataset}.{version}.{secrets.token_hex(6)}"
        lock_path = path.with_name(path.name + ".lock")
        # The lock is taken before the file gets the name remove_abandoned() looks for, so no other ingest
        # can ever see it unlocked while we live.
        unnamed = path.with_name(f".{path.name}.new")
        lock = os.open(unnamed, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        fcntl.flock(lock, fcntl.LOCK_EX)
        os.rename(unnamed, lock_path)
        try:
            path.mkdir(mode=0o700)
            yield path
        finally:
            if path.exists():
                _force_rmtree(path)
            lock_path.unlink(missing_ok=True)
            os.close(lock)

    def remove_abandoned(self) -> list[str]:
        """Delete staging directories whose ingest died (their lock file is no longer held)."""
        root = self.data_dir / STAGING
        removed = []
        for lock_path in root.glob("*.lock") if root.is_dir() else ():
            fd = os.open(lock_path, os.O_WRONLY)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a live ingest holds it
            else:
                abandoned = lock_path.with_name(lock_path.name.removesuffix(".lock"))
                if abandoned.exists():
                    _force_rmtree(abandoned)
                lock_path.unlink(missing_ok=True)
                removed.append(abandoned.name)
            finally:
                os.close(fd)
        return removed

    def publish(self, staged: Path, project: str, dataset: str, version: str) -> Path:
        """Make ``staged`` the immutable version directory in one rename; refuse if the version exists."""
        _seal(staged)
        parent = self.dataset_dir(project, dataset)
        parent.mkdir(parents=True, exist_ok=True, mode=0o755)
        target = parent / version
        with _locked(parent / ".lock"):
            self.refuse_if_published(project, dataset, version)
            os.rename(staged, target)
            fsync_dir(parent)
        return target

    def unpublish(self, project: str, dataset: str, version: str) -> None:
        """Undo a publication that could not be audited (the only time a version is ever removed)."""
        target = self.version_dir(project, dataset, version)
        with _locked(self.dataset_dir(project, dataset) / ".lock"):
            _force_rmtree(target)
            fsync_dir(target.parent)

    def set_current(self, project: str, dataset: str) -> None:
        """Point ``current`` at the newest published version, atomically (a symlink made under a temporary
        name, then renamed over the old one)."""
        parent = self.dataset_dir(project, dataset)
        tmp = parent / f".{CURRENT}.{secrets.token_hex(4)}"
        os.symlink(self.versions(project, dataset)[-1], tmp)
        os.replace(tmp, parent / CURRENT)
        fsync_dir(parent)


def sha256_file(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def write_manifest(directory: Path, manifest: Mapping[str, Any]) -> str:
    """Write manifest.json (fsynced) and return its sha256, which the audit record carries."""
    data = (json.dumps(manifest, indent=2, sort_keys=False, ensure_ascii=False) + "\n").encode("utf-8")
    path = directory / MANIFEST
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    return hashlib.sha256(data).hexdigest()


def load_manifest(version_dir: Path) -> dict[str, Any]:
    path = version_dir / MANIFEST
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise IngestError(f"{path}: no manifest: not a published dataset version") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise IngestError(f"{path}: not valid JSON: {exc}") from None


def verify(version_dir: Path) -> list[str]:
    """Problems with a published version: missing, extra or changed files, wrong row counts."""
    import pyarrow.parquet as pq

    try:
        manifest = load_manifest(version_dir)
    except IngestError as exc:
        return [str(exc)]
    if manifest.get("format") != FORMAT:
        return [f"{version_dir / MANIFEST}: format: expected {FORMAT!r}, found {manifest.get('format')!r}"]
    problems = []
    listed = {t["file"]: (name, t) for name, t in manifest.get("tables", {}).items()}
    present = {p.name for p in version_dir.iterdir()} - {MANIFEST}
    for extra in sorted(present - set(listed)):
        problems.append(f"{version_dir / extra}: not listed in the manifest")
    for file, (name, t) in sorted(listed.items()):
        path = version_dir / file
        if not path.is_file():
            problems.append(f"{path}: listed for table {name} but missing")
            continue
        digest = sha256_file(path)
        if digest != t["sha256"]:
            problems.append(f"{path}: sha256 {digest} does not match the manifest's {t['sha256']}")
            continue
        rows = pq.read_metadata(path).num_rows
        if rows != t["rows"]:
            problems.append(f"{path}: {rows} rows, the manifest says {t['rows']}")
    return problems


def _seal(directory: Path) -> None:
    """fsync every file, make it read-only (0444, directory 0555) and fsync the directory itself."""
    for p in directory.iterdir():
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.chmod(p, 0o444)
    os.chmod(directory, 0o555)
    fsync_dir(directory)


def _force_rmtree(path: Path) -> None:
    """Remove a tree even after _seal() made it read-only (needed when not running as root)."""
    os.chmod(path, 0o700)
    for p in path.rglob("*"):
        if p.is_dir() and not p.is_symlink():
            os.chmod(p, 0o700)
    shutil.rmtree(path)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
