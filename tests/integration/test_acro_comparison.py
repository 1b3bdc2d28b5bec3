"""Our automated checks against ACRO's own, cell by cell, on tables ACRO built from the same microdata.

Seeded microdata is generated and tabulated by the ``acro`` package of the notebook image, inside a
throwaway container of that image (no network, uid 1000): frequency tables, mean and sum tables, and a
regression. ACRO's tables are written as plain CSVs with its per-cell verdicts beside them. On the host,
our checks read the same CSVs. No cell ACRO fails may come out as pass: on frequency tables the cell
itself must fail here too; on mean and sum tables (where threshold, NK and p% need the microdata) the
table must be sent for review or fail. ACRO's results.json from the same run must be read by its own
rule names.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import docker
import pytest

from exports.checks import run_checks
from exports.domain import CheckOutcome, FileRole, worst
from exports.projects import Thresholds
from tests.harness import IMAGE, docker_exec

pytestmark = pytest.mark.integration

SCRIPT_DIR = Path(__file__).parents[1] / "acro"
SEEDS = ("11", "2026")
T = Thresholds()


@pytest.fixture(scope="module")
def acro_runs():
    out = Path(tempfile.mkdtemp(prefix="enclave-acro-compare-", dir="/var/tmp"))
    out.chmod(0o777)  # written by uid 1000 inside the container
    client = docker.from_env()
    try:
        client.containers.run(
            IMAGE,
            ["python", "/src/make_acro_outputs.py", "/out", *SEEDS],
            user="1000:1000",
            network_mode="none",
            working_dir="/tmp",
            volumes={
                str(SCRIPT_DIR): {"bind": "/src", "mode": "ro"},
                str(out): {"bind": "/out", "mode": "rw"},
            },
            environment={"HOME": "/tmp", "MPLCONFIGDIR": "/tmp"},
            remove=True,
        )
        yield {seed: out / f"seed-{seed}" for seed in SEEDS}
    finally:
        client.close()
        shutil.rmtree(out, ignore_errors=True)


def _tables(run: Path):
    verdicts = json.loads((run / "verdicts.json").read_text())
    for name, verdict in verdicts.items():
        data = (run / "tables" / f"{name}.csv").read_bytes()
        header = data.decode().splitlines()[0].split(",")
        failed = {
            (row + 1, header[col + 1], rule)
            for rule, positions in verdict["cells"].items()
            if rule not in ("RequiredZeroCheck", "PresenceOfLinkedTableCheck")
            for row, col in positions
        }
        yield name, verdict["kind"], data, failed


def _cell_outcome(checks, row: int, column: str) -> CheckOutcome:
    """What our checks say about one cell: every result naming it, and every table-wide verdict."""
    naming = [r.outcome for r in checks.results if any((c.row, c.column) == (row, column) for c in r.cells)]
    table_wide = [r.outcome for r in checks.results if r.check == "statistics"]
    return worst(naming + table_wide)


def test_no_cell_acro_fails_passes_our_checks(acro_runs):
    compared = {"count": 0, "mean": 0, "sum": 0}
    for seed, run in acro_runs.items():
        for name, kind, data, failed in _tables(run):
            checks = run_checks(data, "csv", T, label=f"seed {seed} {name}.csv")
            if kind == "suppressed":
                continue  # ACRO blanked its failing cells: see the suppression tests below
            for row, column, rule in failed:
                compared[kind] += 1
                seen = _cell_outcome(checks, row, column)
                assert seen is not CheckOutcome.PASS, (seed, name, row, column, rule)
                if kind == "count":
                    # a frequency table's cell must fail on its own, not just ride on a table-wide review
                    own = worst(
                        r.outcome
                        for r in checks.results
                        if any((c.row, c.column) == (row, column) for c in r.cells)
                    )
                    assert own is CheckOutcome.FAIL, (seed, name, row, column, rule)
            if kind in ("mean", "sum"):
                by_check = {r.check: r for r in checks.results}
                assert by_check["statistics"].outcome is CheckOutcome.REVIEW, (seed, name)
                assert checks.outcome is not CheckOutcome.PASS
    assert compared["count"] and compared["mean"] and compared["sum"], compared


def test_acros_own_suppression_with_its_margins_is_not_a_secondary_disclosure(acro_runs):
    """ACRO's margins leave its suppressed cells out, so they give nothing back (the zeros they imply
    are left for review)."""
    for run in acro_runs.values():
        data = (run / "tables" / "suppressed_region_age_margins.csv").read_bytes()
        by_check = {r.check: r for r in run_checks(data, "csv", T, label="acro-suppressed.csv").results}
        assert by_check["secondary_suppression"].outcome is not CheckOutcome.FAIL


def test_attack_hiding_small_cells_but_keeping_the_original_margins_fails(acro_runs):
    """The researcher blanks ACRO's failing cells by hand and keeps the margins ACRO computed before:
    each hidden cell that its row or column gives back is named."""
    attacked = 0
    for run in acro_runs.values():
        lines = (run / "tables" / "freq_region_age_margins.csv").read_text().splitlines()
        header, body = lines[0].split(","), [line.split(",") for line in lines[1:]]
        hidden = set()
        for i, row in enumerate(body):
            for j, cell in enumerate(row[1:-1], start=1):
                if row[0] != "All" and int(cell) < T.min_count:
                    row[j] = "<10"
                    hidden.add((i + 1, header[j]))
        data = "\n".join([",".join(header), *(",".join(r) for r in body)]).encode()
        result = {r.check: r for r in run_checks(data, "csv", T, label="naive.csv").results}[
            "secondary_suppression"
        ]
        recovered = {(c.row, c.column) for c in result.cells}
        # the simplest attack already works where a row or a column hides exactly one cell
        alone = {
            cell
            for cell in hidden
            if sum(1 for h in hidden if h[0] == cell[0]) == 1
            or sum(1 for h in hidden if h[1] == cell[1]) == 1
        }
        assert alone <= recovered <= hidden
        if alone:
            attacked += 1
            assert result.outcome is CheckOutcome.FAIL
    assert attacked, "no seed gave a table with a lone hidden cell: change the seeds"


def test_frequency_tables_declared_as_counts_fail_exactly_where_acro_fails(acro_runs):
    for run in acro_runs.values():
        for name, kind, data, failed in _tables(run):
            if kind != "count":
                continue
            header = data.decode().splitlines()[0].split(",")
            if name.endswith("_margins"):
                continue  # its All row and column are counts too, which ACRO checks the same way
            checks = run_checks(data, "csv", T, label=name, count_columns=tuple(header[1:]))
            ours = {
                (c.row, c.column)
                for r in checks.results
                if r.check in ("min_count", "zeros") and r.outcome is CheckOutcome.FAIL
                for c in r.cells
            }
            assert ours == {(row, column) for row, column, _ in failed}, name


def test_the_results_json_of_this_acro_is_read_by_its_rule_names(acro_runs):
    run = next(iter(acro_runs.values()))
    data = (run / "acro" / "results.json").read_bytes()
    checks = run_checks(data, "json", T, label="results.json", role=FileRole.SUPPORTING)
    reported = [r for r in checks.results if r.source == "researcher-acro" and r.check != "acro.session"]
    verdicts = json.loads((run / "verdicts.json").read_text())
    by_check = {r.check: r for r in reported}
    for verdict in verdicts.values():
        result = by_check[f"acro.{verdict['acro_output']}"]
        expected = sum(len(p) for rule, p in verdict["cells"].items() if rule == "MinimumThresholdCheck")
        assert result.details["rule_counts"].get("minimum threshold (MinimumThresholdCheck)", 0) == expected
        if expected:  # ACRO says fail, or review where it suppressed the cells itself
            assert result.outcome is (
                CheckOutcome.REVIEW if verdict["kind"] == "suppressed" else CheckOutcome.FAIL
            )
            assert result.cells


def _tar(files: dict[str, bytes]) -> bytes:
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.uid, info.gid = len(data), 1000, 1000
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_acro_results_made_in_alices_container_are_requested_and_the_checker_page_renders(hub, client):
    """Issue 18: a request carrying ACRO's results.json made the request page answer HTTP 500."""
    alice = client("alice")
    alice.spawn("demo-cardio")
    try:
        container = hub.container("alice", "demo-cardio")
        script = (SCRIPT_DIR / "make_acro_outputs.py").read_bytes()
        container.put_archive("/workspace", _tar({"make_acro_outputs.py": script}))
        python = "HOME=/tmp MPLCONFIGDIR=/tmp /opt/notebook/bin/python"
        run = f"cd /workspace && {python} make_acro_outputs.py acro-run 7"
        code, out = docker_exec(container, ["sh", "-c", run], timeout=120)
        assert code == 0, out[-2000:]
        code, out = docker_exec(
            container,
            [
                "enclave-export",
                "--json",
                "request",
                "acro-run/seed-7/tables/freq_region_age.csv",
                "--acro",
                "acro-run/seed-7/acro/results.json",
                "--context",
                "region by age band",
                "--controls",
                "none yet",
            ],
        )
        assert code == 0, out
        request = json.loads(out)
        results = next(f for f in request["files"] if f["path"].endswith("results.json"))["checks"]["results"]
        reported = [r for r in results if r["source"] == "researcher-acro"]
        assert any(
            "minimum threshold (MinimumThresholdCheck)" in r["details"]["rule_counts"] for r in reported
        )
        carol = client("carol")
        carol.session.get(f"{hub.url}/services/exports/", timeout=30)  # OAuth login to the service
        page = carol.session.get(f"{hub.url}/services/exports/requests/{request['id']}", timeout=30)
        assert page.status_code == 200, page.text[-1000:]
        assert "Reported by the researcher's ACRO session" in page.text
        assert (
            "reported by the researcher&#39;s session" in page.text
            or "reported by the researcher's session" in page.text
        )
    finally:
        alice.stop("demo-cardio")
