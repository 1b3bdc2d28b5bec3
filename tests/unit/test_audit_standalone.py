"""audit/ stands alone: it imports only the standard library and cryptography, and a copy of the package,
with nothing else of the enclave and only cryptography installed, verifies a real trail."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cryptography

from audit import AuditLog

AUDIT = Path(__file__).resolve().parents[2] / "audit"


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) == "__import__":
            names.add("<dynamic import>")
    return names


def test_audit_imports_only_the_standard_library_and_cryptography() -> None:
    files = sorted(AUDIT.glob("*.py"))
    assert len(files) >= 10
    allowed = set(sys.stdlib_module_names) | {"cryptography", "audit"}
    foreign = {
        f"{path.name}: {name}"
        for path in files
        for name in imported_modules(path)
        if name.split(".")[0] not in allowed
    }
    assert not foreign, f"audit/ must import only the standard library and cryptography: {sorted(foreign)}"


def isolated_python(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A directory holding only cryptography and its compiled helper, and an environment in which Python
    sees nothing else: -S keeps site-packages (and the project's editable install) off sys.path."""
    deps = tmp_path / "deps"
    deps.mkdir()
    site = Path(cryptography.__file__).parent.parent
    for entry in site.iterdir():
        if entry.name == "cryptography" or entry.name.startswith("_cffi_backend"):
            (deps / entry.name).symlink_to(entry)
    return deps, {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(deps)}


def test_a_copy_of_audit_alone_verifies_a_real_trail(tmp_path: Path) -> None:
    state = tmp_path / "state"
    witness = tmp_path / "witness.jsonl"
    with AuditLog.open(state, checkpoint_every=3, checkpoint_mirror=witness) as log:
        for i in range(10):
            log.append(actor="alice", action="auth.login", details={"i": i})
    copy = tmp_path / "auditor"
    shutil.copytree(AUDIT, copy / "audit", ignore=shutil.ignore_patterns("__pycache__"))
    _, env = isolated_python(tmp_path)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-S", *args],
            cwd=copy,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    probe = run(
        "-c",
        "import audit, sys; import importlib.util as u; print(audit.__file__); "
        "print(u.find_spec('hub'), u.find_spec('jupyterhub'), u.find_spec('yaml'))",
    )
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.splitlines() == [str(copy / "audit" / "__init__.py"), "None None None"]

    ok = run("-m", "audit", "--state-dir", str(state), "verify", "--witness", str(witness))
    assert ok.returncode == 0, ok.stderr
    assert "audit log verified: 10 record(s)" in ok.stdout and "witness: " in ok.stdout

    segment = state / "audit" / "audit-00000001.jsonl"
    segment.write_bytes(segment.read_bytes().replace(b'"i":4', b'"i":5', 1))
    bad = run("-m", "audit", "--state-dir", str(state), "verify")
    assert bad.returncode == 3 and "record seq 5: modified" in bad.stderr
