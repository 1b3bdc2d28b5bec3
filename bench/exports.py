"""Benchmarks of the export service.

1. Automated checks on a CSV table of N cells (default 1,000,000; target <= 1 s), split into parsing,
   table checks and the identifier scan, with a plain ``polars.read_csv`` of the same bytes as the
   in-process baseline.
2. Canonicalization (exports/canonical.py) of a 1,000,000-cell CSV (10,000 rows x 100 columns, the
   site's default row cap) and of a 4000 x 4000 PNG chart (target <= 1 s each), printed next to the
   automated checks on the same canonical bytes.
3. p50/p95 latency of the review queue, as JSON (``api/requests``) and as the HTML page (``queue``),
   with R requests in the database (default 10,000; target p95 <= 200 ms), against the public
   OpenAPI document as the baseline (same server, no database work).

    /opt/enclave/venv/bin/python bench/exports.py            # full size
    /opt/enclave/venv/bin/python bench/exports.py --small    # 100k cells, 2,000 requests: a quick look

The queue is seeded with bulk inserts in one transaction (not through the workflow, which reads and
checks real files and fsyncs every change): it measures reading, which is what the queue does.
"""

from __future__ import annotations

import argparse
import io
import logging
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from exports import sdc_tables
from exports.canonical import Limits, canonicalize
from exports.checks import run_checks
from exports.domain import CheckOutcome, CheckResult, FileChecks, new_request_id
from exports.projects import Thresholds
from exports.storage import files_t, groups_t, requests_t
from exports.testing import checker, make_env, serve

REGIONS = ["Seoul", "Busan", "Daegu", "Incheon", "Gwangju", "Daejeon", "Ulsan", "Sejong", "Gyeonggi", "Jeju"]


def make_table(cells: int, columns: int = 10, seed: int = 1) -> bytes:
    """A results table: 3 label columns, a year, 4 count columns, a percentage and a mean."""
    rows = cells // columns
    rng = random.Random(seed)
    frame = pl.DataFrame(
        {
            "region": [REGIONS[rng.randrange(10)] for _ in range(rows)],
            "sex": [("F", "M")[rng.randrange(2)] for _ in range(rows)],
            "age_band": [f"{10 * (i % 9)}-{10 * (i % 9) + 9}" for i in range(rows)],
            "year": [2010 + i % 14 for i in range(rows)],
            "n": [rng.randrange(0, 400) for _ in range(rows)],
            "cases": [rng.randrange(0, 60) for _ in range(rows)],
            "deaths": [rng.randrange(0, 15) for _ in range(rows)],
            "admissions": [rng.randrange(5, 900) for _ in range(rows)],
            "pct_cases": [round(rng.random() * 100, 1) for _ in range(rows)],
            "mean_los": [round(rng.random() * 20, 3) for _ in range(rows)],
        }
    )
    out = io.BytesIO()
    frame.write_csv(out)
    return out.getvalue()


def timed(fn, *args, repeat: int = 3, **kwargs):
    best, result = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn(*args, **kwargs)
        best = min(best, time.perf_counter() - start)
    return best, result


def bench_checks(cells: int) -> None:
    data = make_table(cells)
    thresholds = Thresholds()
    print(f"\n== checks on a CSV of {cells:,} cells ({len(data) / 1e6:.1f} MB) ==")
    baseline, _ = timed(pl.read_csv, io.BytesIO(data))
    parse, table = timed(sdc_tables.parse_table, data, ",")
    checks, _ = timed(sdc_tables.check_counts, table, thresholds, ())
    scan, _ = timed(sdc_tables.scan_identifiers, table.frame)
    total, result = timed(run_checks, data, "csv", thresholds, label="bench.csv")
    print(f"baseline polars.read_csv (type inference):   {baseline * 1000:7.1f} ms")
    print(
        f"parse (text columns + numeric detection):     {parse * 1000:7.1f} ms  ({parse / baseline:.2f}x baseline)"
    )
    print(f"table checks (kinds, counts, zeros, pct, 2nd): {checks * 1000:7.1f} ms")
    print(f"identifier scan (pre-filter + regexes):       {scan * 1000:7.1f} ms")
    print(
        f"run_checks total (incl. UTF-8 validation):    {total * 1000:7.1f} ms  (target <= 1000 ms: "
        f"{'met' if total <= 1.0 else 'MISSED'})"
    )
    by = {r.check: r for r in result.results}
    print(
        f"  flagged: min_count {by['min_count'].cell_total:,} cells, zeros {by['zeros'].cell_total:,}, "
        f"small denominators {by['small_denominators'].cell_total:,}; outcome {result.outcome.value}"
    )


def make_wide_table(cells: int, columns: int = 100, seed: int = 3) -> bytes:
    """A wide results table within the default caps: a label column and count columns."""
    rows = cells // columns
    rng = random.Random(seed)
    header = ",".join(["region", *(f"n_{j}" for j in range(1, columns))])
    body = (
        ",".join([REGIONS[i % 10], *(str(rng.randrange(0, 900)) for _ in range(columns - 1))])
        for i in range(rows)
    )
    return (header + "\n" + "\n".join(body) + "\n").encode()


def make_chart_png(side: int = 4000) -> bytes:
    """A figure as matplotlib would draw it: white, axes, a few antialiased coloured lines."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (side, side), "white")
    draw = ImageDraw.Draw(image)
    draw.rectangle([side // 10, side // 10, side * 9 // 10, side * 9 // 10], outline="black", width=4)
    for k, colour in enumerate([(31, 119, 180), (255, 127, 14), (44, 160, 44)]):
        points = [(x, side // 2 + int(side / 4 * ((x * (k + 1)) % 997) / 997) - side // 8)
                  for x in range(side // 10, side * 9 // 10, side // 50)]  # fmt: skip
        draw.line(points, fill=colour, width=6)
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def timed_cpu(fn, *args, repeat: int = 3):
    """Best wall and CPU seconds: on a shared 2-core machine the CPU time is what the work costs."""
    best_wall, best_cpu, result = float("inf"), float("inf"), None
    for _ in range(repeat):
        wall, cpu = time.perf_counter(), time.process_time()
        result = fn(*args)
        best_wall, best_cpu = (
            min(best_wall, time.perf_counter() - wall),
            min(best_cpu, time.process_time() - cpu),
        )
    return best_wall, best_cpu, result


def bench_canonical(cells: int) -> None:
    limits, thresholds = Limits(), Thresholds()
    print(f"\n== canonicalization: a {cells:,}-cell CSV and a 4000 x 4000 PNG ==")
    table = make_wide_table(cells)
    canon_csv = timed_cpu(canonicalize, table, "csv", limits, "bench.csv")
    check_csv = timed_cpu(lambda: run_checks(canon_csv[2], "csv", thresholds, label="bench.csv"))
    messy = table.replace(b",", b", ", 1000).replace(b"\n", b"\r\n")  # the general path, not the fast one
    canon_messy = timed_cpu(canonicalize, messy, "csv", limits, "bench.csv")
    png = make_chart_png()
    canon_png = timed_cpu(canonicalize, png, "png", limits, "bench.png")
    check_png = timed_cpu(lambda: run_checks(canon_png[2], "png", thresholds, label="bench.png"))
    for name, canon, check in (
        (f"CSV, {cells:,} cells ({len(table) / 1e6:.1f} MB)", canon_csv, check_csv),
        ("same CSV with CRLF and stray spaces", canon_messy, check_csv),
        (f"PNG chart, 4000 x 4000 ({len(png) / 1e6:.2f} MB)", canon_png, check_png),
    ):
        print(
            f"{name:<36} canonicalize {canon[0] * 1000:6.0f} ms wall, {canon[1] * 1000:6.0f} ms CPU "
            f"(target <= 1000 ms: {'met' if min(canon[:2]) <= 1.0 else 'MISSED'}); today's checks on the "
            f"canonical bytes {check[0] * 1000:6.0f} ms wall, {check[1] * 1000:6.0f} ms CPU"
        )


def seed_queue(env, count: int, seed: int = 2) -> None:
    """Bulk-insert ``count`` requests with 1-3 files each, statuses spread like a busy queue."""
    rng = random.Random(seed)
    statuses = (
        ["SUBMITTED"] * 30
        + ["PARTIALLY_REVIEWED"] * 10
        + ["RELEASED"] * 30
        + ["RETURNED"] * 10
        + ["PENDING"] * 10
        + ["REJECTED", "WITHDRAWN", "REVOKED"] * 3
        + ["RETURNED"]
    )
    checks = {
        o: FileChecks("csv", (CheckResult("min_count", "t", CheckOutcome(o), "m"),)).to_json()
        for o in ("pass", "review", "fail")
    }
    requests_rows, group_rows, file_rows = [], [], []
    for i in range(count):
        rid = new_request_id() + f"{i:05d}"[-2:]
        status = rng.choice(statuses)
        when = f"2025-{1 + i % 12:02d}-{1 + i % 28:02d}T{i % 24:02d}:00:00.{i:06d}Z"
        outcomes = [rng.choice(("pass", "pass", "review", "fail")) for _ in range(rng.randrange(1, 4))]
        summary = {o: outcomes.count(o) for o in ("pass", "review", "fail")}
        project = ("demo-cardio", "demo-oncology")[i % 2]
        requests_rows.append(
            {
                "id": rid,
                "project": project,
                "author": ("alice", "bob")[i % 2],
                "status": status,
                "round": 1,
                "created_at": when,
                "updated_at": when,
                "submitted_at": None if status == "PENDING" else when,
                "file_count": len(outcomes),
                "checks_summary": summary,
                "reviewers": [],
            }
        )
        group_rows.append({"request_id": rid, "name": "main", "context": "c", "controls": "c"})
        for j, outcome in enumerate(outcomes):
            file_rows.append(
                {
                    "request_id": rid,
                    "path": f"results/t{j}.csv",
                    "group_name": "main",
                    "version": 1,
                    "role": "output",
                    "sha256": "0" * 64,
                    "size": 100,
                    "filetype": "csv",
                    "added_by": "alice",
                    "added_at": when,
                    "round": 1,
                    "current": True,
                    "provenance": {"via": "web"},
                    "checks": checks[outcome],
                    "count_columns": [],
                }
            )
    with env.storage.engine.begin() as conn:
        conn.execute(requests_t.insert(), requests_rows)
        conn.execute(groups_t.insert(), group_rows)
        conn.execute(files_t.insert(), file_rows)


def percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered) * 1000, ordered[int(0.95 * (len(ordered) - 1))] * 1000


def bench_queue(count: int, calls: int) -> None:
    import requests

    print(f"\n== review queue with {count:,} requests in SQLite, {calls} calls each ==")
    with tempfile.TemporaryDirectory() as tmp:
        env = make_env(Path(tmp))
        start = time.perf_counter()
        seed_queue(env, count)
        print(f"seeded in {time.perf_counter() - start:.1f} s")
        with serve(env) as svc:
            session = requests.Session()
            session.headers["Authorization"] = f"token {svc.token(checker('carol'))}"
            browser = svc.browser(checker("carol"))
            targets = {
                "openapi.json (baseline, no DB)": (session, "api/openapi.json"),
                "api/requests (queue, first page)": (session, "api/requests"),
                "api/requests (deep page, offset 3000)": (
                    session,
                    "api/requests?status=RELEASED&offset=3000",
                ),
                "api/requests (one project, newest)": (
                    session,
                    "api/requests?project=demo-cardio&order=newest",
                ),
                "queue page (HTML)": (browser, "queue"),
                "queue page, RELEASED, page 20": (browser, "queue?status=RELEASED&offset=950"),
            }
            baseline = None
            for name, (client, path) in targets.items():
                client.get(svc.url + path, timeout=30).raise_for_status()  # warm up
                samples = []
                for _ in range(calls):
                    t0 = time.perf_counter()
                    response = client.get(svc.url + path, timeout=30)
                    samples.append(time.perf_counter() - t0)
                    response.raise_for_status()
                p50, p95 = percentiles(samples)
                baseline = baseline or p95
                verdict = (
                    ""
                    if "baseline" in name
                    else f"  ({p95 / baseline:.1f}x baseline; target <= 200 ms: "
                    f"{'met' if p95 <= 200 else 'MISSED'})"
                )
                print(f"{name:<40} p50 {p50:6.1f} ms  p95 {p95:6.1f} ms{verdict}")


def main(argv: list[str] | None = None) -> int:
    logging.disable(logging.INFO)  # per-request access logs would measure the terminal
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--small", action="store_true", help="100k cells and 2,000 requests, for a quick look"
    )
    parser.add_argument("--cells", type=int)
    parser.add_argument("--requests", type=int)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--only", choices=("checks", "canonical", "queue"))
    args = parser.parse_args(argv)
    cells = args.cells or (100_000 if args.small else 1_000_000)
    count = args.requests or (2_000 if args.small else 10_000)
    if args.only in (None, "checks"):
        bench_checks(cells)
    if args.only in (None, "canonical"):
        bench_canonical(cells)
    if args.only in (None, "queue"):
        bench_queue(count, args.calls)
    return 0


if __name__ == "__main__":
    sys.exit(main())
