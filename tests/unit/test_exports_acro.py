"""ACRO results files: every kind a researcher can attach (acro >= 1.0 as the notebook image's acro wrote
it, an older acro, an empty session, a session summary only) is read by its own rule names and the request
page renders it, through the real HTTP handler; a malformed one is refused at request time, naming the field.

tests/acro/results-acro-1.0.2.json was written by the acro installed in the notebook image
(tests/acro/make_acro_outputs.py, run as uid 1000 in a throwaway container with no network)."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest
import requests

from exports.checks import run_checks
from exports.domain import CheckOutcome, FileRefused, FileRole
from exports.inputs import FileInput, GroupInput
from exports.projects import Thresholds
from exports.storage import RequestQuery
from exports.testing import SAFE_CSV, checker, make_env, researcher, serve

REAL = json.loads((Path(__file__).parents[1] / "acro" / "results-acro-1.0.2.json").read_text())

OLD = {
    "version": "0.4.8",
    "results": {
        "output_0": {
            "uid": "output_0",
            "status": "fail",
            "type": "table",
            "properties": {"method": "crosstab"},
            "files": [
                {
                    "name": "output_0_0.csv",
                    "sdc": {
                        "summary": {
                            "suppressed": False,
                            "negative": 0,
                            "missing": 0,
                            "threshold": 2,
                            "p-ratio": 1,
                            "nk-rule": 1,
                            "all-values-are-same": 0,
                        },
                        "cells": {"threshold": [[0, 1], [2, 0]], "p-ratio": [[0, 1]], "nk-rule": [[0, 1]]},
                    },
                }
            ],
            "outcome": {
                "G": {"2010": "ok", "2011": "ok", "2012": "threshold; "},
                "N": {"2010": "threshold; p-ratio; nk-rule; ", "2011": "ok", "2012": "ok"},
            },
            "command": "acro.crosstab(df.year, df.grant_type)",
            "summary": "fail; threshold: 2 cells may need suppressing; "
            "p-ratio: 1 cells may need suppressing; ",
            "timestamp": "2024-01-01T00:00:00",
            "comments": [],
            "exception": "",
        },
        "output_1": {
            "uid": "output_1",
            "status": "pass",
            "type": "regression",
            "properties": {"method": "ols", "dof": 4.0},
            "files": [{"name": "output_1_0.csv", "sdc": {}}],
            "outcome": {},
            "command": "acro.ols(...)",
            "summary": "pass; dof=4.0 >= 0",
            "timestamp": "2024-01-01T00:00:00",
            "comments": [],
            "exception": "",
        },
    },
}
EMPTY = {"version": "1.0.2", "tool": {"name": "ACRO", "version": "1.0.2"}, "results": {}}
SUMMARY_ONLY = {
    **{k: v for k, v in REAL.items() if k != "results"},
    "results": {k: v for k, v in REAL["results"].items() if "DONT_RELEASE" in k},
}


def checks_of(obj, role=FileRole.SUPPORTING):
    result = run_checks(json.dumps(obj).encode(), "json", Thresholds(), label="results.json", role=role)
    return {r.check: r for r in result.results}


def test_the_real_acro_1_results_are_read_by_their_new_rule_names_with_per_cell_findings():
    by_check = checks_of(REAL)
    freq = by_check["acro.output_1"]  # region x agegroup frequency table
    assert freq.source == "researcher-acro" and freq.outcome is CheckOutcome.FAIL
    assert freq.details["rule_counts"]["minimum threshold (MinimumThresholdCheck)"] == 9
    cells = {(c.value, c.column) for c in freq.cells}
    assert ("Jeju", "age_40_49") in cells and ("Seoul", "age_40_49") not in cells
    assert freq.cell_total == 9 == len(freq.cells)
    dominated = by_check["acro.output_4"]  # mean bmi: one cell fails NK and p% too
    assert dominated.details["rule_counts"]["NK dominance (NKCheck)"] == 1
    assert dominated.details["rule_counts"]["p% dominance (PPercentCheck)"] == 1
    notes = {(c.value, c.column): c.note for c in dominated.cells}
    assert (
        "NKCheck" in notes[("Sejong", "age_65_plus")] and "PPercentCheck" in notes[("Sejong", "age_65_plus")]
    )
    regression = by_check["acro.output_5"]
    assert regression.outcome is CheckOutcome.PASS and regression.details["dof"] == 398
    assert "ACRO version 1.0.2, 11 output(s)" in by_check["acro.session"].message


def test_old_acro_results_are_read_by_the_old_rule_names():
    by_check = checks_of(OLD)
    table = by_check["acro.output_0"]
    assert table.details["rule_counts"] == {
        "negative values (negative)": 0,
        "missing values (missing)": 0,
        "minimum threshold (threshold)": 2,
        "p% dominance (p-ratio)": 1,
        "NK dominance (nk-rule)": 1,
        "all values the same (all-values-are-same)": 0,
    }
    assert {(c.value, c.column) for c in table.cells} == {("2012", "G"), ("2010", "N")}
    regression = by_check["acro.output_1"]
    assert regression.outcome is CheckOutcome.FAIL  # reported dof 4 is below the project's minimum of 10
    assert "degrees of freedom 4 < project minimum 10" in regression.message


def test_positions_are_used_when_acro_wrote_no_per_cell_outcome():
    old = copy.deepcopy(OLD)
    old["results"]["output_0"]["outcome"] = {}
    cells = checks_of(old)["acro.output_0"].cells
    assert {(c.row, c.column) for c in cells} == {(1, "column 2"), (3, "column 1")}


def test_empty_and_summary_only_sessions_are_read():
    assert "no outputs" in checks_of(EMPTY)["acro.session"].message
    by_check = checks_of(SUMMARY_ONLY)
    assert set(by_check) >= {"acro.session", "acro.2ndary_risk_summary_json-DONT_RELEASE"}


def test_acro_results_asked_for_release_as_an_output_fail():
    assert checks_of(REAL, FileRole.OUTPUT)["acro.not_for_release"].outcome is CheckOutcome.FAIL


def _broken(path, value):
    obj = copy.deepcopy(REAL)
    node = obj
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return obj


MALFORMED = [
    (_broken(["results"], ["output_0"]), "results: must be an object"),
    (
        _broken(["results", "output_0", "status"], "maybe"),
        "results.'output_0'.status: must be pass, fail or review",
    ),
    (_broken(["results", "output_0", "files"], "output_0_0.csv"), "results.'output_0'.files: must be a list"),
    (
        _broken(["results", "output_0", "files", 0, "sdc", "summary", "MinimumThresholdCheck"], "two"),
        "files[0].sdc.summary.'MinimumThresholdCheck': must be a number",
    ),
    (
        _broken(["results", "output_0", "files", 0, "sdc", "cells", "MinimumThresholdCheck"], [[1]]),
        "sdc.cells.'MinimumThresholdCheck': must be a list of [row, column]",
    ),
    (
        _broken(["results", "output_0", "outcome"], {"F": "ok"}),
        "results.'output_0'.outcome.'F': must be an object",
    ),
    (_broken(["results", "output_1"], "fail"), "results.'output_1': must be an object"),
    (_broken(["results", "output_1", "comments"], 7), "results.'output_1'.comments: must be a list"),
    (_broken(["results", "output_1", "properties"], 7), "results.'output_1'.properties: must be an object"),
    (_broken(["results", "output_1", "summary"], 7), "results.'output_1'.summary: must be text"),
]


@pytest.mark.parametrize("obj,message", MALFORMED)
def test_a_malformed_results_file_is_refused_naming_the_field(obj, message):
    with pytest.raises(FileRefused, match="results.json: not a well-formed ACRO results file") as caught:
        checks_of(obj)
    assert message in str(caught.value)


# -------------------------------------------------------------------------------------------------
# the request page, through the HTTP handler, with every kind of results file


@pytest.fixture
def env(tmp_path):
    return make_env(tmp_path)


@pytest.fixture
def svc(env):
    with serve(env) as served:
        yield served


def _request_with_results(env, results: dict | str) -> str:
    env.write("results/table1.csv", SAFE_CSV)
    env.write("acro/results.json", results if isinstance(results, str) else json.dumps(results))
    files = (
        FileInput("results/table1.csv", label="files[0].path"),
        FileInput("acro/results.json", FileRole.SUPPORTING, label="files[1].path"),
    )
    group = GroupInput("main", "Table 1", "n >= 10", files)
    return env.workflow.create(researcher("alice"), "demo-cardio", [group], submit=True).id


@pytest.mark.parametrize(
    "results", [REAL, OLD, EMPTY, SUMMARY_ONLY], ids=["acro-1.0.2", "acro-0.4", "empty", "summary-only"]
)
def test_the_request_page_renders_with_every_kind_of_acro_results(svc, env, results):
    rid = _request_with_results(env, results)
    for who in (checker("carol"), researcher("alice", in_container=False)):
        page = svc.browser(who).get(svc.url + f"requests/{rid}", timeout=30)
        assert page.status_code == 200, page.text[-2000:]
        assert "Reported by the researcher's ACRO session" in page.text
        rows = re.findall(r'<tr class="acro-output" data-check="([^"]+)"', page.text)
        assert rows[0] == "acro.session" and len(rows) == 1 + len(results["results"])
    if results is REAL:
        assert "9 cell(s) reported by the researcher's session" in page.text
        assert "row Jeju, age_40_49: minimum threshold (MinimumThresholdCheck)" in page.text


def test_a_malformed_results_file_is_refused_at_request_time_and_nothing_is_stored(env):
    bad = _broken(["results", "output_0", "status"], "maybe")
    with pytest.raises(FileRefused, match=r"files\[1\].path 'acro/results.json': not a well-formed ACRO"):
        _request_with_results(env, bad)
    assert env.storage.list(RequestQuery()).total == 0


def test_a_malformed_results_file_is_refused_over_http_with_the_field_named(svc, env):
    env.write("results/table1.csv", SAFE_CSV)
    env.write("acro/results.json", json.dumps(_broken(["results", "output_0", "files"], 3)))
    body = {
        "paths": ["results/table1.csv"],
        "supporting": ["acro/results.json"],
        "context": "c",
        "controls": "c",
    }
    response = requests.post(
        svc.url + "api/requests",
        json=body,
        timeout=30,
        headers={"Authorization": f"token {svc.token(researcher('alice'))}"},
    )
    assert response.status_code == 400, response.text
    assert "results.'output_0'.files: must be a list" in response.json()["message"]
    assert env.storage.list(RequestQuery()).total == 0


def test_any_mutation_of_a_real_results_file_is_read_or_refused_never_a_crash():
    import random

    rng = random.Random(20261201)
    junk = [
        None,
        1,
        -1,
        2.5,
        "x",
        [],
        {},
        [1],
        {"a": 1},
        True,
        [[1, 2]],
        {"a": {"b": 1}},
        float("nan"),
        10**30,
    ]

    def paths(node, at=()):
        yield at
        children = (
            node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
        )
        for key, child in children:
            yield from paths(child, (*at, key))

    every = list(paths(REAL))[1:]
    for _ in range(400):
        obj = copy.deepcopy(REAL)
        for at in rng.sample(every, 3):
            node = obj
            try:
                for key in at[:-1]:
                    node = node[key]
                node[at[-1]] = rng.choice(junk)
            except (KeyError, IndexError, TypeError):
                pass
        try:
            checks_of(obj)
        except FileRefused as refused:
            assert str(refused).startswith("results.json: ")  # names the file
