"""Checkers see everything that leaves: every row and line in pages, flagged cells marked, and a
carrying-capacity check (exports/sdc_capacity.py) that flags what looks like data riding in a result."""

from __future__ import annotations

import base64
import hashlib
import io
import random
import re

import numpy as np
from PIL import Image

from exports import preview, sdc_capacity
from exports.checks import run_checks
from exports.domain import CheckOutcome, RequestStatus
from exports.projects import Thresholds
from exports.testing import checker, create_request_at_status, make_env, researcher, serve


def capacity(data: str | bytes, filetype: str = "csv"):
    raw = data.encode() if isinstance(data, str) else data
    checks = run_checks(raw, filetype, Thresholds(), label="f")
    return next(r for r in checks.results if r.check == "capacity"), checks


HARMLESS = "region,sex,n\n" + "".join(f"R{i % 17},{'FM'[i % 2]},{100 + i % 50}\n" for i in range(200))


def test_a_plain_results_table_passes_with_its_size_beside_what_is_visible():
    result, _ = capacity(HARMLESS)
    assert result.outcome is CheckOutcome.PASS
    assert result.details["bytes"] == len(HARMLESS) and "200 rows x 3 columns" in result.details["visible"]


def test_payload_looking_cells_are_flagged_each_with_its_cell():
    rng = random.Random(3)
    secret = bytes(rng.randrange(256) for _ in range(30))
    rows = {
        201: ("R1", "F", base64.b64encode(secret).decode()),
        202: ("R2", "M", secret.hex()),
        203: ("R3", "F", "9501011234567"),
        204: ("R4", "M", "".join(rng.choice("abcdefghijklmnopqrstuvwxyz!?#") for _ in range(20))),
        205: ("R5 and a long story to carry data", "F", "120"),
    }
    table = HARMLESS + "".join(",".join(cells) + "\n" for cells in rows.values())
    result, _ = capacity(table)
    assert result.outcome is CheckOutcome.REVIEW
    found = {(c.row, c.column): c.note for c in result.cells}
    assert found[(201, "n")] == "base64-looking string"
    assert found[(202, "n")] == "hex-looking string"
    assert found[(203, "n")] == "long digit run"
    assert found[(204, "n")] == "high-entropy cell"
    assert "much longer than its column's median" in found[(205, "region")]
    assert len(found) == 5, "the harmless rows are not flagged"


def test_text_and_json_lines_carrying_tokens_are_flagged():
    secret = base64.b64encode(hashlib.sha256(b"x").digest()).decode()
    result, _ = capacity(f"# Results\n\nThe cohort had 120 people.\nref {secret}\n", "markdown")
    assert [(c.row, c.note) for c in result.cells] == [(4, "base64-looking string")]
    result, _ = capacity('{\n "a": 0.12345678901234567\n}\n', "json")
    assert [(c.row, c.note) for c in result.cells] == [(2, "long digit run")]


def _chart() -> np.ndarray:
    pixels = np.full((200, 300, 3), 255, np.uint8)
    pixels[100:103, 20:280] = (30, 60, 200)
    return pixels


def _png(pixels: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "PNG")
    return out.getvalue()


def test_low_order_bit_noise_in_a_picture_is_flagged_and_a_chart_is_not():
    clean, _ = capacity(_png(_chart()), "png")
    assert clean.outcome is CheckOutcome.PASS and clean.details["lsb_capacity_bytes"] == 200 * 300 * 3 // 8
    noisy = _chart()
    bits = np.random.default_rng(1).integers(0, 2, noisy.shape, dtype=np.uint8)
    noisy = (noisy & 0xFE) | bits  # a payload in the lowest bit of every sample
    flagged, checks = capacity(_png(noisy), "png")
    assert flagged.outcome is CheckOutcome.REVIEW and flagged.cells[0].note == "low-order-bit noise"
    assert checks.outcome is CheckOutcome.REVIEW


def test_the_preview_pages_through_every_row_and_marks_flags_on_later_pages():
    secret = base64.b64encode(bytes(range(40))).decode()
    table = HARMLESS + "".join(f"X{i},F,{secret}\n" for i in range(250))  # 450 rows, payload from 201
    _, checks = capacity(table)
    first = preview.table_preview(table.encode(), "csv", checks)
    assert (first["pages"], first["total"], len(first["rows"])) == (3, 450, 200)
    assert first["flagged_pages"] == [2, 3]
    seen = []
    for page in range(1, first["pages"] + 1):
        shown = preview.table_preview(table.encode(), "csv", checks, page)
        seen += [[c["value"] for c in row["cells"]] for row in shown["rows"]]
        for row in shown["rows"]:
            if row["number"] > 200:
                assert row["cells"][2]["flag"] == "base64-looking string"
    assert seen == [line.split(",") for line in table.splitlines()[1:]], "every row, in order, once"


def test_a_checker_reads_every_page_of_a_long_file_through_the_service(tmp_path):
    env = make_env(tmp_path)
    payload = base64.b64encode(bytes(range(60))).decode()
    table = HARMLESS + "".join(f"X{i},M,{payload}\n" for i in range(300))
    text = "".join(f"line {n}\n" for n in range(1, 2501))
    rid = create_request_at_status(env, RequestStatus.SUBMITTED, files={"t.csv": table, "notes.txt": text})
    ids = {f.path: f.id for f in env.storage.get(rid).output_files}
    with serve(env) as svc:
        browser = svc.browser(checker("carol"))
        page = browser.get(f"{svc.url}requests/{rid}", timeout=30).text
        assert "Carrying capacity" in page and "Page 1 of 3" in page and "Page 1 of 3 (2500 lines" in page
        assert f'href="/services/exports/requests/{rid}/files/{ids["t.csv"]}?page=3"' in page
        last = browser.get(f"{svc.url}requests/{rid}/files/{ids['t.csv']}?page=3", timeout=30)
        assert last.status_code == 200 and ">500</th>" in last.text
        assert len(re.findall(r'<td class="flag" data-flag="base64-looking string">', last.text)) == 100
        lines = browser.get(f"{svc.url}requests/{rid}/files/{ids['notes.txt']}?page=3", timeout=30).text
        assert "line 2500" in lines and "line 1999" not in lines
        assert (
            browser.get(f"{svc.url}requests/{rid}/files/{ids['t.csv']}?page=0", timeout=30).status_code == 400
        )
        other = svc.browser(researcher("bob", "demo-oncology", in_container=False))
        assert other.get(f"{svc.url}requests/{rid}/files/{ids['t.csv']}", timeout=30).status_code == 404, (
            "the same answer as a missing request"
        )
    views = [e for e in env.audit.records if e["action"] == "export.view" and e["details"].get("file")]
    assert {e["details"]["file"] for e in views} == {"t.csv", "notes.txt"}, "every page view is audited"


def test_cell_flags_need_no_median_for_tokens():
    assert sdc_capacity.cell_flag("12345678901") == "long digit run"
    assert sdc_capacity.cell_flag("52.104101114115") == "long digit run", "precision digits carry data"
    assert sdc_capacity.cell_flag("52.1") is None
    assert sdc_capacity.cell_flag("Seoul") is None
    assert sdc_capacity.cell_flag("a" * 30, median=3) is not None
