"""Automated disclosure checks on tables and texts built for the purpose: they must flag exactly the
expected cells, and refuse bytes that do not match their extension."""

from __future__ import annotations

import struct
import zlib

import pytest

from exports.checks import run_checks
from exports.domain import CheckOutcome, FileRefused
from exports.projects import Thresholds
from exports.sdc_identifiers import find_identifiers

T = Thresholds()


def results(data: bytes | str, filetype: str = "csv", thresholds: Thresholds = T, **kw):
    raw = data.encode() if isinstance(data, str) else data
    checks = run_checks(raw, filetype, thresholds, label="f", **kw)
    return {r.check: r for r in checks.results}, checks


def cells(result) -> set[tuple[int, str, str]]:
    return {(c.row, c.column, c.value) for c in result.cells}


TABLE = """region,sex,age_band,n,pct
Seoul,F,40-49,120,40.0
Seoul,M,40-49,7,2.3
Busan,F,40-49,0,0.0
Busan,M,40-49,33,11.0
Jeju,F,40-49,1,50.0
"""


def test_low_counts_and_zeros_flag_exactly_the_expected_cells():
    by_check, checks = results(TABLE)
    assert by_check["min_count"].outcome is CheckOutcome.FAIL
    assert cells(by_check["min_count"]) == {(2, "n", "7"), (5, "n", "1")}
    assert by_check["zeros"].outcome is CheckOutcome.FAIL
    assert cells(by_check["zeros"]) == {(3, "n", "0")}
    assert checks.outcome is CheckOutcome.FAIL


def test_count_columns_are_detected_by_values_and_names():
    by_check, _ = results(TABLE)
    # age_band is a label, pct is a percentage, region/sex are text: only n is a count
    assert by_check["min_count"].details["count_columns"] == ["n"]


def test_declared_count_columns_replace_detection():
    table = "year,cases,deaths\n2019,100,3\n2020,120,0\n"
    by_check, _ = results(table, count_columns=("deaths",))
    assert cells(by_check["min_count"]) == {(1, "deaths", "3")}
    assert cells(by_check["zeros"]) == {(2, "deaths", "0")}


def test_a_declared_count_column_that_is_not_in_the_table_is_refused_with_the_columns_named():
    with pytest.raises(FileRefused, match=r"count_columns names 'N'.*columns: 'year', 'cases'"):
        results("year,cases\n2019,100\n", count_columns=("N",))


def test_zeros_are_only_reviewed_when_the_project_says_they_are_not_disclosive():
    by_check, _ = results("g,n\na,0\nb,20\n", thresholds=Thresholds(zeros_disclosive=False))
    assert by_check["zeros"].outcome is CheckOutcome.REVIEW


def test_a_stricter_project_threshold_applies():
    by_check, _ = results("g,n\na,12\nb,20\n", thresholds=Thresholds(min_count=15))
    assert cells(by_check["min_count"]) == {(1, "n", "12")}


def test_summary_of_count_columns_and_rounding():
    by_check, _ = results("g,n,m\na,0,15\nb,20,25\nc,40,30\n")
    columns = by_check["count_summary"].details["columns"]
    assert columns["n"] == {"min": 0, "min_nonzero": 20, "max": 40, "sum": 60, "rounded_to": 10}
    assert columns["m"]["rounded_to"] == 5
    assert by_check["count_summary"].outcome is CheckOutcome.PASS


def test_small_denominators_in_percentage_columns_are_flagged():
    by_check, _ = results(TABLE)
    # Jeju F: 1 case is 50% -> denominator 2; Seoul M: 7 / 2.3% -> about 304, fine
    assert by_check["small_denominators"].outcome is CheckOutcome.FAIL
    assert cells(by_check["small_denominators"]) == {(5, "pct", "50.0")}


def test_denominator_from_a_total_column():
    by_check, _ = results("g,cases,total,pct\na,30,300,10\nb,2,8,25\n")
    assert cells(by_check["small_denominators"]) == {(2, "pct", "25")}


def test_tsv_and_suppressed_markers():
    by_check, _ = results("g\tn\na\t<10\nb\t25\nc\t*\n", "tsv")
    assert by_check["min_count"].outcome is CheckOutcome.PASS
    assert by_check["min_count"].details["count_columns"] == ["n"]


def test_a_table_without_counts_asks_for_review():
    by_check, _ = results("term,estimate\nage,0.31\nsex,-0.12\n")
    assert by_check["min_count"].outcome is CheckOutcome.REVIEW


def test_identifier_patterns_in_table_cells_flag_exactly_those_cells():
    table = (
        "id,contact,note,birth_date,n\n"
        "1,kim@example.com,ok,,25\n"
        "2,010-1234-5678,ok,,30\n"
        "3,,RRN 900101-1234567,1990-01-01,40\n"
        "4,,0001014123456,19850312,50\n"
    )
    by_check, _ = results(table)
    assert {(c.row, c.column) for c in by_check["identifiers.email"].cells} == {(1, "contact")}
    assert {(c.row, c.column) for c in by_check["identifiers.phone"].cells} == {(2, "contact")}
    assert {(c.row, c.column) for c in by_check["identifiers.rrn"].cells} == {(3, "note"), (4, "note")}
    assert {(c.row, c.column) for c in by_check["identifiers.dob"].cells} == {
        (3, "birth_date"),
        (4, "birth_date"),
    }
    assert by_check["identifiers.rrn"].outcome is CheckOutcome.FAIL
    assert "1234567" not in by_check["identifiers.rrn"].cells[0].value  # shown masked


@pytest.mark.parametrize(
    "text,kind",
    [
        ("900101-1234567", "rrn"),
        ("9001011234567", "rrn"),  # dash optional
        ("000229-3123456", "rrn"),  # 2000-02-29 exists (G=3: born in the 2000s)
        ("850101-2999999", "rrn"),  # random digits after G (post-2020): no checksum needed
        ("a.b-c@hospital.ac.kr", "email"),
        ("010 1234 5678", "phone"),
        ("+82 10-1234-5678", "phone"),
        ("02-123-4567", "phone"),
        ("+44 20 7946 0958", "phone"),
        ("12345678901", "long_id"),
    ],
)
def test_identifier_shapes_are_found(text, kind):
    assert [f.kind for f in find_identifiers(f"x {text} y")] == [kind]


@pytest.mark.parametrize(
    "text",
    [
        "901301-1234567",  # month 13: not a date of birth (reported at most as an ID-like number)
        "010229-3123456",  # 2001-02-29 does not exist
        "0.123456789012345",  # digits of a decimal
        "p = 0.0123",
        "n = 1234",
    ],
)
def test_not_resident_registration_numbers(text):
    assert "rrn" not in [f.kind for f in find_identifiers(text)]


PREFILTER_SAMPLES = [
    "900101-1234567",
    "9001011234567",
    "900101\u20131234567",
    "kim@example.com",
    "010-1234-5678",
    "01012345678",
    "010.1234.5678",
    "+82 10 1234 5678",
    "+82-2-123-4567",
    "02-123-4567",
    "(02) 1234-5678",
    "070-1234-5678",
    "+44 20 7946 0958",
    "1990-01-01",
    "1990.1.1",
    "1990/01/01",
    "1990 년 1 월 1 일",
    "1990년 1월 1일",
    "01/02/1990",
    "31.12.1999",
    "12345678901",
    "id 1234567890",
    "12345-67890",
    "12-34-5678-90",
    "1234567-123",
    "99-12345678",
]


@pytest.mark.parametrize("sample", PREFILTER_SAMPLES)
def test_the_vectorized_prefilter_never_hides_an_identifier(sample):
    """Table cells skip the Python regexes unless the Rust pre-filter matches: it must match every
    cell in which find_identifiers finds something."""
    import polars as pl

    from exports.sdc_identifiers import PREFILTER

    assert find_identifiers(sample), sample
    assert pl.Series([sample, f"x {sample} y"]).str.contains(PREFILTER).all(), sample


def test_dates_are_dates_of_birth_only_where_birth_is_mentioned():
    assert [f.kind for f in find_identifiers("follow-up ended 2021-03-05")] == ["date"]
    assert [f.kind for f in find_identifiers("date of birth 2021-03-05", birth_context=True)] == ["dob"]


def test_text_files_report_lines_of_each_identifier():
    text = "Summary\nContact kim@example.com\nnothing here\nDOB: 1990-01-01, RRN 900101-1234567\n"
    by_check, checks = results(text, "md")
    assert [(c.row, c.column) for c in by_check["identifiers.email"].cells] == [(2, "char 9")]
    assert [c.row for c in by_check["identifiers.dob"].cells] == [4]
    assert [c.row for c in by_check["identifiers.rrn"].cells] == [4]
    assert checks.outcome is CheckOutcome.FAIL


def test_clean_text_passes_and_numbers_in_prose_are_left_for_review():
    _, checks = results("The cohort is described in the protocol.\n", "txt")
    assert checks.outcome is CheckOutcome.PASS
    by_check, _ = results("Mean age 54.2 years (SD 8.1); 1,234 participants.\n", "txt")
    assert by_check["prose_numbers"].outcome is CheckOutcome.REVIEW


def test_invalid_json_is_refused_with_its_position():
    with pytest.raises(FileRefused, match=r"not valid JSON \(line 1, column 9"):
        results('{"a": 1,}', "json")


@pytest.mark.parametrize("filetype", ["csv", "txt", "json", "md"])
def test_binary_bytes_under_a_text_extension_are_refused(filetype):
    with pytest.raises(FileRefused, match="do not match|not UTF-8|NUL"):
        results(png(), filetype)
    with pytest.raises(FileRefused, match="not UTF-8 text"):
        results(b"ok,\xff\xfe,x", filetype)


# ---------------------------------------------------------------------------------------------
# PNG


def chunk(kind: bytes, body: bytes) -> bytes:
    return (
        struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
    )


def png(extra_chunks: bytes = b"", trailer: bytes = b"") -> bytes:
    ihdr = struct.pack(">IIBBBBB", 2, 1, 8, 0, 0, 0, 0)
    pixels = zlib.compress(b"\x00\x00\x00" * 1)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + extra_chunks
        + chunk(b"IDAT", pixels)
        + chunk(b"IEND", b"")
        + trailer
    )


def test_a_png_is_always_for_manual_review():
    by_check, checks = results(png(), "png")
    assert by_check["png_structure"].outcome is CheckOutcome.PASS
    assert by_check["manual_review"].outcome is CheckOutcome.REVIEW
    assert checks.outcome is CheckOutcome.REVIEW


def test_png_text_chunks_are_shown_and_scanned():
    by_check, _ = results(png(chunk(b"tEXt", b"Comment\x00patient kim@example.com")), "png")
    assert by_check["png_metadata"].outcome is CheckOutcome.REVIEW
    assert by_check["identifiers.email"].outcome is CheckOutcome.FAIL


def test_bytes_that_are_not_a_png_are_refused():
    with pytest.raises(FileRefused, match="not a PNG image"):
        results(b"GIF89a....", "png")
    with pytest.raises(FileRefused, match="not a PNG image"):
        results(b"<svg xmlns='http://www.w3.org/2000/svg'/>", "png")


def test_data_hidden_after_the_end_of_a_png_is_refused():
    with pytest.raises(FileRefused, match="12 bytes follow the end of the PNG image"):
        results(png(trailer=b"PK\x03\x04zipdata!"), "png")


def test_a_png_with_a_corrupted_chunk_is_refused():
    data = bytearray(png())
    data[20] ^= 0xFF  # inside IHDR
    with pytest.raises(FileRefused, match="bad checksum"):
        results(bytes(data), "png")
