"""Table checks that must never pass what they cannot see: annotated counts, tables of statistics,
percentages with their totals, suppressed cells the totals give back, and tables inside Markdown and
JSON files. Several tests are written as the hostile researcher's table: each leaks a small count past
the checks as they were before issue 10, and must now fail or be sent for review."""

from __future__ import annotations

import json

import pytest

from exports.checks import run_checks
from exports.domain import CheckOutcome
from exports.projects import Thresholds
from exports.sdc_tables import STATISTICS_MESSAGE

T = Thresholds()
FAIL, REVIEW, PASS = CheckOutcome.FAIL, CheckOutcome.REVIEW, CheckOutcome.PASS


def check(text: str, filetype: str = "csv", thresholds: Thresholds = T, **kw):
    checks = run_checks(text.encode(), filetype, thresholds, label="t", **kw)
    return {r.check: r for r in checks.results}, checks.outcome


def flagged(result) -> set[tuple[int, str]]:
    return {(c.row, c.column) for c in result.cells}


@pytest.mark.parametrize(
    "cell",
    ["3 (0.6%)", "3 (0.6 %)", "3*", "3 *", "3†", "n=3", "N = 3", "<5", "≤5", "<=5", "< 2", "3 [1.5%]"],
)
def test_every_annotated_count_form_is_read_as_a_count_and_fails(cell):
    by_check, outcome = check(f'region,cases\nSeoul,120\nBusan,"{cell}"\nJeju,45\n')
    assert by_check["min_count"].outcome is FAIL, by_check["min_count"].message
    assert flagged(by_check["min_count"]) == {(2, "cases")}
    assert outcome is FAIL


@pytest.mark.parametrize("cell", ["3 (0.6%)", "3*", "n=3", "<5", "≤5"])
def test_annotated_counts_under_a_name_that_says_nothing_are_counts_too(cell):
    by_check, _ = check(f'region,F\nSeoul,120\nBusan,"{cell}"\n')
    assert flagged(by_check["min_count"]) == {(2, "F")}


def test_a_suppression_marker_at_the_threshold_is_not_a_small_count():
    by_check, _ = check("region,cases\nSeoul,120\nBusan,<10\nJeju,≤9\nUlsan,*\n")
    assert by_check["min_count"].outcome is PASS


def test_n_equals_inside_a_label_cell_is_a_count():
    by_check, outcome = check("group,mean_age\nSeoul (n=3),54.2\nBusan (n=140),51.0\n")
    assert flagged(by_check["min_count"]) == {(1, "group")}
    assert outcome is FAIL


def test_count_columns_named_like_a_band_are_not_labels():
    by_check, _ = check("region,age_18_39,age_40_49,age_65_plus\nSeoul,40,3,22\nBusan,31,25,0\n")
    assert flagged(by_check["min_count"]) == {(1, "age_40_49")}
    assert flagged(by_check["zeros"]) == {(2, "age_65_plus")}
    assert "age_40_49" in by_check["statistics"].details["columns"]["count?"]


@pytest.mark.parametrize(
    "table",
    [
        "region,sum_cost\nSeoul,350000\nBusan,420000\n",  # a sum over 7 people
        "region,total_cost\nSeoul,350000\nBusan,420000\n",
        "region,mean_bmi\nSeoul,26.1\nBusan,25.3\n",
        "region,median_los\nSeoul,4\nBusan,6\n",
        "region,rate_per_1000\nSeoul,3.2\nBusan,1.1\n",
        "region,deaths_per_1000\nSeoul,3\nBusan,12\n",  # a whole-number rate under a count word
        "region,F,M\nSeoul,26.1,25.0\nBusan,25.3,27.9\n",  # means under names that say nothing
    ],
)
def test_tables_of_statistics_are_reviewed_never_passed(table):
    by_check, outcome = check(table)
    assert by_check["statistics"].outcome is REVIEW
    assert STATISTICS_MESSAGE in by_check["statistics"].message
    assert (
        STATISTICS_MESSAGE
        == "cannot check threshold, dominance or p% without the counts and contributions behind each cell"
    )
    assert by_check["min_count"].outcome is REVIEW
    assert outcome is not PASS


def test_attack_whole_number_sums_under_plain_names_do_not_pass():
    """The sum of 7 people's costs is a large whole number, exactly like a count: before, it passed."""
    by_check, outcome = check("region,F,M\nSeoul,350000,420000\nBusan,1250000,980000\n")
    assert by_check["statistics"].outcome is REVIEW and "whole-number sums" in by_check["statistics"].message
    assert outcome is REVIEW


def test_declared_count_columns_are_counts_without_review():
    by_check, outcome = check("region,F,M\nSeoul,350,420\nBusan,125,98\n", count_columns=("F", "M"))
    assert by_check["statistics"].outcome is PASS and outcome is PASS


def test_attack_a_percentage_with_its_total_beside_it_gives_the_count_back():
    by_check, outcome = check("region,pct,total\nSeoul,1.5,200\nBusan,40.0,300\nJeju,0.0,150\n")
    assert flagged(by_check["min_count"]) == {(1, "pct")}  # 1.5% of 200 is 3 people
    assert flagged(by_check["zeros"]) == {(3, "pct")}  # 0% says nobody in Jeju
    assert outcome is FAIL


def test_attack_numbers_the_checks_cannot_read_are_not_passed():
    by_check, outcome = check("region,n\nSeoul,120\nBusan,3 people\nJeju,45\nUlsan,60\nDaegu,77\n")
    assert flagged(by_check["statistics"]) == {(2, "n")}
    assert outcome is not PASS


# ------------------------------------------------------------------------------------------------
# secondary disclosure within one table


def test_a_suppressed_cell_given_back_by_the_row_total_fails_naming_it():
    by_check, outcome = check("region,F,M,Total\nSeoul,40,<10,52\nBusan,30,25,55\n")
    result = by_check["secondary_suppression"]
    assert result.outcome is FAIL and flagged(result) == {(1, "M")}
    assert "recoverable from the totals: 12" in result.cells[0].note
    assert outcome is FAIL


def test_a_suppressed_cell_given_back_by_the_totals_row_fails():
    by_check, _ = check("region,F,M\nSeoul,40,*\nBusan,30,25\nTotal,70,31\n")
    assert flagged(by_check["secondary_suppression"]) == {(1, "M")}


def test_a_chain_of_suppressions_is_solved_as_an_attacker_would():
    # row 1 has two hidden cells, but column F's total gives one back, then the row total the other
    table = "region,F,M,All\nSeoul,*,*,52\nBusan,30,25,55\nTotal,42,65,107\n"
    by_check, _ = check(table)
    assert flagged(by_check["secondary_suppression"]) == {(1, "F"), (1, "M")}


def test_an_unnamed_margin_is_found_by_its_sums():
    by_check, _ = check("region,a,b,c\nSeoul,40,-,52\nBusan,30,25,55\nJeju,20,22,42\n")
    assert flagged(by_check["secondary_suppression"]) == {(1, "b")}


def test_complementary_suppression_holds():
    table = "region,F,M,Total\nSeoul,*,*,52\nBusan,*,*,55\nJeju,20,22,42\nTotal,,,149\n"
    by_check, _ = check(table)
    assert by_check["secondary_suppression"].outcome is PASS


# ------------------------------------------------------------------------------------------------
# tables inside Markdown and JSON


MARKDOWN = """# Results

Table 1 shows the cohort.

| region | cases | pct |
|--------|------:|----:|
| Seoul  | 120   | 40.0 |
| Busan  | 3 (1.0%) | 1.0 |

Table 2.

| region | F | M | Total |
|---|---|---|---|
| Seoul | 40 | <10 | 52 |
| Busan | 30 | 25 | 55 |
"""


def test_markdown_tables_are_checked_as_tables_with_their_line_numbers():
    by_check, outcome = check(MARKDOWN, "md")
    assert flagged(by_check["min_count"]) == {(8, "cases")}
    assert flagged(by_check["secondary_suppression"]) == {(14, "M")}
    assert outcome is FAIL


def test_a_markdown_table_of_means_is_reviewed():
    by_check, outcome = check("| region | mean_bmi |\n|---|---|\n| Seoul | 26.1 |\n", "txt")
    assert by_check["statistics"].outcome is REVIEW and outcome is REVIEW


@pytest.mark.parametrize(
    "doc,cell",
    [
        ([{"region": "Seoul", "n": 120}, {"region": "Busan", "n": 3}], (0, "$ row 2, n")),
        ({"Seoul": 120, "Busan": 3}, (0, "$ row 1, Busan")),
        ({"model": "logit", "auc": 0.81, "n_jeju": 3}, (0, "$ row 1, n_jeju")),
        ({"counts": [120, 3, 40]}, (0, "$['counts'] row 2, entry")),
        (
            [{"region": "Seoul", "n": 120, "ci": [1, 2]}, {"region": "Busan", "n": 3, "ci": [1, 2]}],
            (0, "$[1] row 1, n"),
        ),
        ({"F": {"Seoul": 120, "Busan": 3}, "M": {"Seoul": 40, "Busan": 41}}, (0, "$ row 2, F")),
        ({"columns": ["region", "n"], "data": [["Seoul", 120], ["Busan", 3]]}, (0, "$ row 2, n")),
        (
            {
                "figure": "fig1",
                "tables": {"by_region": [{"region": "Seoul", "n": 120}, {"region": "Busan", "n": 3}]},
            },
            (0, "$['tables']['by_region'] row 2, n"),
        ),
    ],
    ids=[
        "records",
        "object-of-numbers",
        "mixed-object",
        "list-of-numbers",
        "records-with-lists",
        "object-of-columns",
        "split",
        "nested",
    ],
)
def test_json_tables_are_checked_as_tables(doc, cell):
    by_check, outcome = check(json.dumps(doc), "json")
    assert cell in flagged(by_check["min_count"])
    assert outcome is FAIL


def test_a_json_object_of_means_is_reviewed():
    by_check, outcome = check(json.dumps({"Seoul": 26.1, "Busan": 25.3}), "json")
    assert by_check["statistics"].outcome is REVIEW and outcome is REVIEW


def test_prose_counts_are_checked():
    by_check, outcome = check("Only a few were seen in Jeju (n=3).\n", "md")
    assert by_check["prose_numbers"].outcome is FAIL and outcome is FAIL


def test_a_clean_count_table_still_passes():
    by_check, outcome = check("sex,age_band,n\nF,40-49,120\nM,40-49,135\n")
    assert outcome is PASS, {k: r.message for k, r in by_check.items() if r.outcome is not PASS}


# ------------------------------------------------------------------------------------------------
# more of the hostile researcher's tables


def test_attack_counts_under_a_year_column_name_are_still_counts():
    by_check, outcome = check("region,year,n\nSeoul,3,120\nBusan,5,140\n")
    assert flagged(by_check["min_count"]) == {(1, "year"), (2, "year")}
    assert outcome is FAIL
    by_check, outcome = check("region,year,n\nSeoul,2019,120\nBusan,2020,140\n")
    assert outcome is PASS  # real years are labels


def test_attack_a_group_size_in_the_header_is_a_count():
    by_check, outcome = check("characteristic,Treated (n=3),Control (n=140)\nFemale,2,70\n")
    assert (0, "Treated (n=3)") in flagged(by_check["min_count"])
    assert outcome is FAIL


def test_attack_counts_in_digits_the_checks_do_not_read_are_not_passed():
    by_check, outcome = check("region,cases\nSeoul,１２０\nBusan,３\n")  # fullwidth digits
    assert flagged(by_check["statistics"]) == {(1, "cases"), (2, "cases")}
    assert outcome is not PASS


def test_attack_a_transposed_table_is_still_checked():
    by_check, outcome = check("measure,Seoul,Busan,Jeju\npatients,120,140,3\n")
    assert flagged(by_check["min_count"]) == {(1, "Jeju")}
    assert outcome is FAIL


def test_a_table_too_large_to_solve_for_secondary_suppression_is_review_not_pass(monkeypatch):
    from exports import sdc_tables

    monkeypatch.setattr(sdc_tables, "MAX_SOLVED_CELLS", 4)
    by_check, _ = check("region,F,M,Total\nSeoul,40,<10,52\nBusan,30,25,55\nJeju,20,20,40\n")
    assert by_check["secondary_suppression"].outcome is REVIEW


def test_attack_small_numbers_under_a_label_name_are_not_passed():
    by_check, outcome = check("group,n\n3,120\n5,140\n")
    assert "group" in by_check["statistics"].details["columns"]["label?"]
    assert by_check["statistics"].outcome is REVIEW and outcome is REVIEW
    by_check, outcome = check("age,n\n40,120\n50,140\n")
    assert outcome is PASS  # ages of 40 and 50 could not hide a small count


def test_a_group_size_in_a_markdown_header_is_flagged_on_the_header_line():
    text = (
        "Intro\n\n| characteristic | Treated (n=3) | Control (n=140) |\n|---|---|---|\n| Female | 2 | 70 |\n"
    )
    by_check, outcome = check(text, "md")
    assert (3, "Treated (n=3)") in flagged(by_check["min_count"])
    assert (5, "Treated (n=3)") in flagged(by_check["min_count"])
    assert outcome is FAIL


def test_tables_past_the_cap_are_review_not_silently_unchecked(monkeypatch):
    from exports import sdc_documents

    monkeypatch.setattr(sdc_documents, "MAX_TABLES", 2)
    doc = [{"a": {"n": 120}}, {"b": {"n": 130}}, {"c": {"n": 3}}]
    by_check, outcome = check(json.dumps(doc), "json")
    assert by_check["tables_checked"].outcome is REVIEW and outcome is not PASS


def test_json_nested_past_the_depth_limit_is_review_not_pass():
    deep: dict = {"n": 3}
    for key in "abcdefghijklmnop":
        deep = {key: deep}
    by_check, outcome = check(json.dumps(deep), "json")
    assert by_check["tables_checked"].outcome is REVIEW and outcome is not PASS


def test_a_list_of_mixed_scalars_with_numbers_is_checked():
    by_check, outcome = check(json.dumps({"values": [120, "x", 3]}), "json")
    assert (0, "$['values'] row 3, entry") in flagged(by_check["min_count"]) and outcome is FAIL


def test_a_hidden_cell_the_totals_put_at_zero_is_review():
    # ACRO's margins sum only the cells it shows: the hidden cell comes out as 0, which gives nothing back
    by_check, _ = check("region,F,M,All\nSeoul,40,,40\nBusan,30,25,55\nAll,70,25,95\n")
    assert by_check["secondary_suppression"].outcome is REVIEW


def test_attack_a_table_1_column_named_n_percent_is_read_as_counts():
    by_check, outcome = check('characteristic,n (%)\nFemale,3 (0.6%)\nMale,"497 (99.4%)"\n')
    assert flagged(by_check["min_count"]) == {(1, "n (%)")}
    assert outcome is FAIL


def test_attack_a_csv_inside_a_json_string_is_not_passed():
    by_check, outcome = check(json.dumps({"table": "region,n\nSeoul,120\nBusan,3\n"}), "json")
    assert by_check["json_text_numbers"].outcome is REVIEW and outcome is not PASS
    by_check, outcome = check(json.dumps({"note": "Busan (n=3)"}), "json")
    assert by_check["json_text_numbers"].outcome is FAIL and outcome is FAIL


def test_random_tables_are_checked_or_refused_never_a_crash():
    import random

    from exports.domain import FileRefused

    rng = random.Random(7)
    alphabet = '0123456789,.<>*-%()n=: \n|"abcTotal≤１'
    for _ in range(500):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 80)))
        for filetype in ("csv", "md", "tsv"):
            try:
                run_checks(text.encode(), filetype, T, label="t")
            except FileRefused:
                pass


def test_attack_a_total_beside_a_partial_breakdown_implies_the_rest():
    by_check, outcome = check("region,n_total,n_male\nSeoul,120,117\nBusan,140,70\n")
    result = by_check["implied_counts"]
    assert result.outcome is FAIL and flagged(result) == {(1, "n_total")}
    assert "implies 3" in result.cells[0].note and outcome is FAIL


def test_attack_a_total_row_above_a_partial_breakdown_implies_the_rest():
    by_check, outcome = check("sex,Seoul,Busan\nM,117,70\nTotal,120,140\n")
    assert flagged(by_check["implied_counts"]) == {(2, "Seoul")} and outcome is FAIL


def test_full_margins_imply_nothing():
    by_check, _ = check("region,F,M,Total\nSeoul,40,52,92\nBusan,30,25,55\nTotal,70,77,147\n")
    assert by_check["implied_counts"].outcome is PASS
