"""Issue 20 at unit level: the allowlist, normalization before generalization, k over distinct persons, the
risk report, and named errors that never quote a raw value.

Fixtures: ``raw`` (module) is a small synthetic CSV extract; ``paths`` a fresh state directory; ``audit``
records what the pipeline appends.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import polars as pl
import pytest
import yaml

import hub.cli
import ingest.cli
from hub.paths import REPO_ROOT, EnclavePaths
from ingest import allowlist, normalize, risk
from ingest.errors import SourceError, SpecError
from ingest.kanon import enforce
from ingest.pipeline import ingest_dataset
from ingest.spec import load_spec
from ingest.synth import synthesize

DEMO_SPEC = REPO_ROOT / "policies" / "datasets" / "synthetic-omop.spec.yaml"
PERSONS = 300


class RecordingAudit:
    def __init__(self):
        self.records: list[dict] = []

    def append(self, **record):
        self.records.append(record)
        return record


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    return synthesize(tmp_path_factory.mktemp("raw"), PERSONS, seed=11, fmt="csv")


@pytest.fixture
def paths(tmp_path):
    return EnclavePaths(tmp_path / "state", REPO_ROOT / "policies")


@pytest.fixture
def audit():
    return RecordingAudit()


def variant(tmp_path: Path, change=lambda doc: None, single: bool = True) -> Path:
    doc = copy.deepcopy(yaml.safe_load(DEMO_SPEC.read_text(encoding="utf-8")))
    if single:
        doc.pop("projects")
        doc.pop("linkage")
    change(doc)
    path = tmp_path / "variant.spec.yaml"
    path.write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
    return path


def raw_copy(raw, tmp_path: Path) -> Path:
    target = tmp_path / "raw-copy"
    shutil.copytree(raw.out_dir, target)
    return target


def edit_csv(path: Path, change) -> None:
    frame = pl.read_csv(path, infer_schema=False)  # all text: the cells as a file would hold them
    change(frame).write_csv(path)


def set_cell(frame: pl.DataFrame, column: str, row: int, value) -> pl.DataFrame:
    values = frame[column].to_list()
    values[row] = value
    return frame.with_columns(pl.Series(column, values, dtype=pl.String))


# -- allowlist --------------------------------------------------------------------------------------------


def check(values, allow, dtype=pl.String, learned=None) -> list:
    frame = pl.DataFrame({"c": values}, schema={"c": dtype})
    value = allowlist.canonical("c", dtype, allow)
    return frame.select(pl.when(allowlist.allowed(value, allow, learned)).then(value)).to_series().to_list()


def test_patterns_canonicalize_then_allow_only_codes():
    icd = allowlist.parse({"pattern": "icd10"}, Path("."), "t")
    assert check(
        ["E11.9", " e11 .9", "E119", "Ｉ１０", "I10", "800101-1234567", "Kim Minjun", "김민준"], icd
    ) == [
        "E11.9",
        "E11.9",
        "E11.9",
        "I10",
        "I10",
        None,
        None,
        None,
    ]
    atc = allowlist.parse({"pattern": "atc"}, Path("."), "t")
    assert check(["A10BA02", "a10ba02", "hong at naver dot com", "A10"], atc) == [
        "A10BA02",
        "A10BA02",
        None,
        "A10",
    ]


def test_code_lists_and_concept_tables(tmp_path):
    codes = allowlist.parse({"codes": ["M", "F"]}, tmp_path, "t")
    assert check(["M", " F ", "Ｍ", "male", "010-1234-5678"], codes) == ["M", "F", "M", None, None]
    (tmp_path / "CONCEPT.csv").write_text(
        "concept_id\tconcept_code\tvocabulary_id\n1\tV001\tLocal\n2\tL2010\tLocal\n"
    )
    table = allowlist.parse({"codes_file": "CONCEPT.csv"}, tmp_path, "t")
    assert table.codes == {"V001", "L2010"}
    with pytest.raises(SpecError, match="no column 'code' in its header"):
        allowlist.parse({"codes_file": "CONCEPT.csv", "column": "code"}, tmp_path, "t")


def test_numbers_outside_their_declared_range_are_suppressed():
    rng = allowlist.parse({"number": {"min": 0, "max": 10000}}, Path("."), "t")
    assert check([12.5, 8001011234567.0, 1012345678.0, -3.0], rng, pl.Float64) == [12.5, None, None, None]


def test_categorical_is_learned_over_distinct_persons():
    allow = allowlist.parse({"categorical": {"max_values": 10, "min_persons": 3}}, Path("."), "t")
    # "V001" by 3 persons; "김민준" 5 times, but all by one person: a copied value is not a crowd.
    frame = pl.DataFrame({"p": [1, 2, 3, 9, 9, 9, 9, 9], "c": ["V001"] * 3 + ["김민준"] * 5})
    learned = allowlist.learn(frame.lazy(), "c", pl.String, "p", allow)
    assert learned.rows() == [("V001", 3)]


def test_spec_refuses_a_kept_column_without_a_declaration(tmp_path):
    def undeclared(doc):
        doc["tables"]["drug_exposure"]["columns"]["drug_source_value"] = "keep"

    with pytest.raises(SpecError) as exc:
        load_spec(variant(tmp_path, undeclared))
    assert (
        "variant.spec.yaml: tables.drug_exposure.columns.drug_source_value: a kept column must declare"
        in str(exc.value)
    )


def test_spec_refuses_an_undeclared_candidate_quasi_identifier(tmp_path):
    def unjustified(doc):
        del doc["risk"]["accepted"]["visit_gaps"]

    with pytest.raises(
        SpecError, match=r"risk.accepted.visit_gaps: the published data carries each person's sequence"
    ):
        load_spec(variant(tmp_path, unjustified))

    def minimized(doc):  # without the visit table there is nothing to justify
        del doc["risk"]["accepted"]["visit_gaps"]
        doc["tables"]["visit_occurrence"]["columns"]["visit_start_date"] = "drop"
        doc["tables"]["visit_occurrence"]["columns"]["visit_start_datetime"] = "drop"

    load_spec(variant(tmp_path, minimized))


def test_a_spec_with_projects_serves_only_those(paths, audit, raw):
    with pytest.raises(SpecError, match="projects: 'demo-other' is not declared"):
        ingest_dataset(paths, DEMO_SPEC, raw.out_dir, "demo-other", audit=audit, actor="adam")


# -- normalization before generalization ------------------------------------------------------------------


def test_region_codes_are_normalized_before_they_are_generalized():
    frame = pl.DataFrame(
        {"r": ["11680", "11680 ", "11680.0", "１１６８０", " 41135", "서울 강남구", "경기도 성남시"]}
    )
    sido = frame.select(normalize.region("r", pl.String, "sido")).to_series().to_list()
    assert sido == ["11", "11", "11", "11", "41", "서울특별시", "경기도"]
    sigungu = frame.select(normalize.region("r", pl.String, "sigungu")).to_series().to_list()
    assert sigungu[:5] == ["11680"] * 4 + ["41135"]
    floats = pl.DataFrame({"r": [11680.0, 41135.0]})
    assert floats.select(normalize.region("r", pl.Float64, "sido")).to_series().to_list() == ["11", "41"]


def test_an_ungeneralizable_region_is_refused_by_row_and_class_never_by_value(paths, audit, raw, tmp_path):
    source = raw_copy(raw, tmp_path)
    edit_csv(
        source / "person.csv",
        lambda f: set_cell(
            set_cell(f, "location_source_value", 4, "강남구 테헤란로 12"), "location_source_value", 7, "116"
        ),
    )
    with pytest.raises(SourceError) as exc:
        ingest_dataset(paths, variant(tmp_path), source, "demo-cardio", audit=audit, actor="adam")
    message = str(exc.value)
    assert (
        "table person: column location_source_value: cannot be generalized (a code with fewer than 2 digits"
        not in message
    )
    assert "column location_source_value: cannot be generalized" in message and "row 5" in message
    assert "테헤란로" not in message and "116" not in message.replace("row", "")
    assert "테헤란로" not in json.dumps(audit.records, ensure_ascii=False)


# -- k over distinct persons ------------------------------------------------------------------------------


def test_k_counts_distinct_persons_not_rows():
    # Person 9 alone in class ("1990", "F"), copied 5 times; persons 1-5 share ("1980", "M").
    persons = pl.DataFrame(
        {"pid": [1, 2, 3, 4, 5, 9, 9, 9, 9, 9], "y": ["1980"] * 5 + ["1990"] * 5, "g": ["M"] * 5 + ["F"] * 5}
    )
    kept, report = enforce(persons, "pid", ["y", "g"], 5)
    assert sorted(kept.to_list()) == [1, 2, 3, 4, 5]
    assert report.records == 6 and report.suppressed == 1 and report.k_achieved == 5


def copy_person(frame: pl.DataFrame, row: int, times: int) -> pl.DataFrame:
    return pl.concat([frame, *[frame.slice(row, 1)] * times])


def test_duplicate_person_rows_are_refused_or_merged_with_a_report(paths, audit, raw, tmp_path):
    source = raw_copy(raw, tmp_path)
    edit_csv(source / "person.csv", lambda f: copy_person(f, 3, 4))
    with pytest.raises(
        SourceError, match=r"column person_id: 1 person id\(s\) on more than one row .*refused"
    ):
        ingest_dataset(paths, variant(tmp_path), source, "demo-cardio", audit=audit, actor="adam")

    def merge(doc):
        doc["person"]["duplicates"] = "merge"

    result = ingest_dataset(paths, variant(tmp_path, merge), source, "demo-cardio", audit=audit, actor="adam")
    assert result.manifest["person_duplicates"] == {"duplicate_persons": 1, "rows_merged": 4}
    persons = pl.read_parquet(result.path / "person.parquet")
    assert persons["person_id"].is_unique().all()
    assert result.manifest["k_anonymity"]["records"] == PERSONS

    edit_csv(source / "person.csv", lambda f: set_cell(f, "race_concept_id", f.height - 1, "1"))
    with pytest.raises(SourceError, match="differ between their rows and cannot be merged"):
        ingest_dataset(paths, variant(tmp_path, merge), source, "demo-cardio", audit=audit, actor="adam")


# -- named errors ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("table", "change", "expected"),
    [
        (
            "person",
            lambda f: f.drop("location_source_value"),
            "table person: quasi-identifier column 'location_source_value' (generalize:region) is missing",
        ),
        (
            "measurement",
            lambda f: f.drop("unit_source_value"),
            "table measurement: column 'unit_source_value' (keep) is missing",
        ),
        (
            "visit_occurrence",
            lambda f: set_cell(f, "person_id", 2, None),
            "table visit_occurrence: column person_id: a null person id in 1 row(s) (row 3)",
        ),
        (
            "drug_exposure",
            lambda f: set_cell(f, "person_id", 0, "abc"),
            "table drug_exposure: column person_id: person ids are String here but Int64 in the person table",
        ),
        (
            "condition_occurrence",
            lambda f: set_cell(f, "person_id", 5, "999999"),
            "column person_id: a person id that is not in the person table in 1 row(s) (row 6)",
        ),
        (
            "drug_exposure",
            lambda f: set_cell(f, "days_supply", 9, "thirty"),
            "table drug_exposure: column days_supply: text where integers are declared in 1 row(s) (row 10)",
        ),
    ],
)
def test_every_bad_input_has_a_named_error(paths, audit, raw, tmp_path, table, change, expected):
    source = raw_copy(raw, tmp_path)
    edit_csv(source / f"{table}.csv", change)
    with pytest.raises(SourceError) as exc:
        ingest_dataset(paths, variant(tmp_path), source, "demo-cardio", audit=audit, actor="adam")
    assert expected in str(exc.value)
    assert not (paths.data_dir.exists() and list(paths.data_dir.rglob("manifest.json")))
    assert audit.records[-1]["outcome"] == "error" and audit.records[-1]["details"]["reason"] == "bad_source"


def test_a_name_and_email_in_a_bad_cell_reach_neither_stderr_nor_the_trail(
    raw, tmp_path, capsys, monkeypatch
):
    monkeypatch.setattr(hub.cli, "_registrars", lambda: [ingest.cli.register])
    secret_name, secret_mail = "홍길동 Gildong Hong", "gildong.hong@example.org"
    source = raw_copy(raw, tmp_path)
    edit_csv(
        source / "visit_occurrence.csv",
        lambda f: set_cell(f, "visit_start_date", 6, f"{secret_name} <{secret_mail}>"),
    )
    state = tmp_path / "state"
    argv = [
        "--state-dir",
        str(state),
        "--policy-dir",
        str(REPO_ROOT / "policies"),
        "dataset",
        "ingest",
        str(variant(tmp_path)),
        "--source",
        str(source),
        "--project",
        "demo-cardio",
        "--quiet",
    ]
    assert hub.cli.main(argv) == 1
    out = capsys.readouterr()
    assert "visit_start_date: not a date in 1 row(s) (row 7)" in out.err
    trail = b"".join(p.read_bytes() for p in state.rglob("*") if p.is_file())
    for needle in (secret_name, "홍길동", "Gildong", secret_mail, "gildong.hong"):
        assert needle not in out.err and needle not in out.out
        assert needle.encode() not in trail
    from audit import AuditLog

    records = [r for r in AuditLog.open(state).records() if r["action"] == "dataset.ingest"]
    assert records and records[-1]["details"]["reason"] == "bad_source"


# -- the risk report ---------------------------------------------------------------------------------------


def test_class_stats_count_unique_persons_and_the_smallest_class():
    frame = pl.DataFrame({risk.P: [1, 2, 3, 4, 4], "q": ["a", "a", "b", "c", "c"]})
    assert risk.class_stats(frame, ["q"]) == {
        "persons": 4,
        "unique_persons": 2,
        "unique_share": 0.5,
        "smallest_class": 1,
    }


def test_risk_report_measures_candidates_the_spec_did_not_declare(paths, audit, raw, tmp_path):
    result = ingest_dataset(paths, variant(tmp_path), raw.out_dir, "demo-cardio", audit=audit, actor="adam")
    report = result.manifest["risk"]
    assert report["declared"]["smallest_class"] >= 5 and report["declared"]["unique_share"] == 0.0
    candidates = report["candidates"]
    assert set(candidates) == {"provider", "care_site", "conditions", "visit_gaps", "lab_sequence"}
    # Recompute one by hand: declared quasi-identifiers + the set of condition codes.
    persons = pl.read_parquet(result.path / "person.parquet")
    conditions = pl.read_parquet(result.path / "condition_occurrence.parquet")
    sets = conditions.group_by("person_id").agg(pl.col("condition_source_value").unique().sort().alias("s"))
    qi = result.manifest["k_anonymity"]["quasi_identifiers"]
    joined = persons.join(sets, on="person_id", how="left").with_columns(pl.col("s").cast(pl.List(pl.String)))
    sizes = joined.group_by([*qi, "s"]).len()
    unique = sizes.filter(pl.col("len") == 1).height
    assert candidates["conditions"]["unique_persons"] == unique
    assert candidates["conditions"]["unique_share"] == round(unique / persons.height, 4) > 0.3
    assert candidates["visit_gaps"]["measured"].startswith("alone")
    assert candidates["conditions"]["treatment"].startswith("accepted: ")
    assert result.manifest["linkage"]["same_view_share"] > 0.5  # the honest number for a full view


# -- per-project views -------------------------------------------------------------------------------------


def test_a_project_view_minimizes_and_coarsens(paths, audit, raw, tmp_path):
    def views(doc):
        doc["projects"]["study-week"] = {
            "tables": ["person", "measurement"],
            "drop_columns": {"person": ["race_concept_id"]},
            "records": {"measurement": {"column": "measurement_source_value", "prefixes": ["L30"]}},
            "coarsen": {
                "dates": "week",
                "numbers": {"measurement.value_as_number": {"bins": [0, 50, 100, 200]}},
                "rare_codes": {"measurement.measurement_source_value": {"min_persons": 10**6}},
            },
        }

    spec = variant(tmp_path, views, single=False)
    result = ingest_dataset(paths, spec, raw.out_dir, "study-week", audit=audit, actor="adam")
    assert set(result.manifest["tables"]) == {"person", "measurement"}
    assert "race_concept_id" in result.manifest["tables"]["person"]["dropped"]
    labs = pl.read_parquet(result.path / "measurement.parquet")
    assert labs.height and set(labs["measurement_source_value"]) == {"OTHER"}  # every code is rare here
    assert set(labs["value_as_number"].drop_nulls()) <= {0.0, 50.0, 100.0, 200.0}
    assert (labs["measurement_date"].dt.weekday() == 1).all()  # floored to Monday
    source = pl.read_csv(raw.files["measurement"])
    assert 0 < labs.height <= source.filter(pl.col("measurement_source_value").str.starts_with("L30")).height
    linkage = result.manifest["linkage"]
    assert set(linkage["against"]) == {"demo-cardio", "demo-oncology"}
    assert result.manifest["minimization"]["project_view"]["dates"] == "week"


def test_a_bare_year_as_text_generalizes(tmp_path):
    from ingest.spec import ColumnRule
    from ingest.transforms import generalize

    rule = ColumnRule("y", "generalize", method="birth_year", params={"band": 1, "top_code_age": 90})
    frame = pl.DataFrame({"y": ["1963", " 1963.0", "1963-12-04", "1920"]})
    assert frame.select(generalize(rule, pl.String, 2025)).to_series().to_list() == [1963, 1963, 1963, 1935]
