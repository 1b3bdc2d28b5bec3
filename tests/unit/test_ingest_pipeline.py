"""The ingest end to end, on real files in temporary directories: synthetic raw OMOP tables with planted
identifiers in, a published dataset version (or a clear refusal and nothing at all) out.

Fixtures: ``raw`` (module) is a small synthetic extract in CSV; ``paths`` is a fresh state directory using
the repository's policies; ``audit`` is an in-memory audit sink that records what the pipeline appends.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest
import yaml
from pycanon import anonymity

import hub.cli
import ingest.cli
import ingest.pipeline
from hub.paths import REPO_ROOT, EnclavePaths
from ingest.demo import publish_demo
from ingest.errors import AlreadyPublishedError, RefusedError, SourceError, SpecError
from ingest.keys import load_master_key, project_key, purpose_key
from ingest.pipeline import ingest_dataset
from ingest.prf import to_day_offsets, to_pseudonyms
from ingest.synth import RAW_IDENTIFIER_COLUMNS, TABLES, synthesize

DEMO_SPEC = REPO_ROOT / "policies" / "datasets" / "synthetic-omop.spec.yaml"
PERSONS = 300
DATE_COLUMNS = {
    "visit_occurrence": (
        "visit_occurrence_id",
        ["visit_start_date", "visit_start_datetime", "visit_end_date"],
    ),
    "condition_occurrence": ("condition_occurrence_id", ["condition_start_date", "condition_end_date"]),
    "drug_exposure": ("drug_exposure_id", ["drug_exposure_start_date", "drug_exposure_end_date"]),
    "measurement": ("measurement_id", ["measurement_date"]),
}


class RecordingAudit:
    def __init__(self):
        self.records: list[dict] = []

    def append(self, **record):
        self.records.append(record)
        return record


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    return synthesize(tmp_path_factory.mktemp("raw"), PERSONS, seed=7, fmt="csv")


@pytest.fixture
def paths(tmp_path):
    return EnclavePaths(tmp_path / "state", REPO_ROOT / "policies")


@pytest.fixture
def audit():
    return RecordingAudit()


@pytest.fixture
def enclave(monkeypatch):
    """``enclave ...`` through hub.cli.main, with only this concern's commands registered, so that these
    tests do not depend on the other concerns' modules importing."""
    monkeypatch.setattr(hub.cli, "_registrars", lambda: [ingest.cli.register])
    return hub.cli.main


def single_project(doc):
    """The demo spec without its per-project views: every project gets the whole dataset (these tests are
    about the transforms, not about minimization; test_ingest_adversary covers the views)."""
    doc.pop("projects", None)
    doc.pop("linkage", None)


def spec_variant(tmp_path: Path, change) -> Path:
    """The demo spec (single-project form) with ``change(doc)`` applied, written beside the test."""
    doc = copy.deepcopy(yaml.safe_load(DEMO_SPEC.read_text(encoding="utf-8")))
    single_project(doc)
    change(doc)
    path = tmp_path / "variant.spec.yaml"
    path.write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
    return path


def k_of_one(doc):
    doc["k_anonymity"]["k"] = 1


@pytest.fixture(scope="module")
def single_spec(tmp_path_factory) -> Path:
    return spec_variant(tmp_path_factory.mktemp("spec"), lambda doc: None)


def run(paths, audit, project, source, version=None, spec=None):
    spec = spec or spec_variant(Path(paths.state_dir).parent, lambda doc: None)
    return ingest_dataset(paths, spec, source, project, audit=audit, actor="adam", version=version)


def table(result, name: str) -> pl.DataFrame:
    return pl.read_parquet(result.path / f"{name}.parquet")


def nothing_published(paths: EnclavePaths) -> bool:
    data = paths.data_dir
    published = [p for p in data.rglob("manifest.json")] if data.exists() else []
    staging = list((data / ".staging").iterdir()) if (data / ".staging").exists() else []
    return not published and not staging


# -- linkage and stability ---------------------------------------------------------------------------------


def pseudonymized_values(result) -> set[int]:
    values: set[int] = set()
    for name, info in result.manifest["tables"].items():
        frame = table(result, name)
        for column, rule in info["columns"].items():
            if rule == "pseudonymize":
                values |= set(frame[column].drop_nulls().to_list())
    return values


def test_two_projects_from_the_same_source_share_no_pseudonym(paths, audit, raw):
    cardio = run(paths, audit, "demo-cardio", raw.out_dir)
    oncology = run(paths, audit, "demo-oncology", raw.out_dir)
    a, b = pseudonymized_values(cardio), pseudonymized_values(oncology)
    assert len(a) > PERSONS and len(b) > PERSONS
    assert a.isdisjoint(b)


def test_reingest_for_the_same_project_is_stable_and_byte_identical(paths, audit, raw, tmp_path):
    first = run(paths, audit, "demo-cardio", raw.out_dir)
    second = run(paths, audit, "demo-cardio", raw.out_dir)
    assert (first.version, second.version) == ("1", "2")
    assert {n: t["sha256"] for n, t in first.manifest["tables"].items()} == {
        n: t["sha256"] for n, t in second.manifest["tables"].items()
    }
    # The same extract delivered as Parquet instead of CSV gets the same pseudonyms.
    as_parquet = synthesize(tmp_path / "pq", PERSONS, seed=7, fmt="parquet")
    third = run(paths, audit, "demo-cardio", as_parquet.out_dir)
    assert set(table(third, "person")["person_id"]) == set(table(first, "person")["person_id"])


def expected_person_map(paths, project: str, raw_ids: list[int], max_days: int) -> pl.DataFrame:
    """Recompute pseudonyms and offsets from the definition: keyed BLAKE2b-64 of the decimal id under
    HKDF(HKDF(master, project), purpose)."""
    key = project_key(load_master_key(paths.secrets_dir, create=False), project)
    pkey, okey = purpose_key(key, "pseudonym/person_id"), purpose_key(key, "date-shift")

    def prf(k, values):
        import numpy as np

        return np.array(
            [
                int.from_bytes(hashlib.blake2b(str(v).encode(), key=k, digest_size=8).digest(), "little")
                for v in values
            ],
            dtype=np.uint64,
        )

    return pl.DataFrame(
        {
            "raw_person": raw_ids,
            "person_id": to_pseudonyms(prf(pkey, raw_ids)),
            "offset": to_day_offsets(prf(okey, raw_ids), max_days),
        }
    )


def record_pseudonyms(paths, project: str, domain: str, raw_ids: list[int]) -> list[int]:
    key = purpose_key(
        project_key(load_master_key(paths.secrets_dir, create=False), project), f"pseudonym/{domain}"
    )
    import numpy as np

    digests = np.array(
        [
            int.from_bytes(hashlib.blake2b(str(v).encode(), key=key, digest_size=8).digest(), "little")
            for v in raw_ids
        ],
        dtype=np.uint64,
    )
    return to_pseudonyms(digests).tolist()


def test_dates_shift_by_one_offset_per_person_across_all_tables(paths, audit, raw, tmp_path):
    result = run(paths, audit, "demo-cardio", raw.out_dir, spec=spec_variant(tmp_path, k_of_one))
    raw_person = pl.read_csv(raw.files["person"])
    people = expected_person_map(paths, "demo-cardio", raw_person["person_id"].to_list(), 90)
    assert set(table(result, "person")["person_id"]) == set(people["person_id"])
    offsets = []
    for name, (id_column, dates) in DATE_COLUMNS.items():
        src = pl.read_csv(raw.files[name], try_parse_dates=True)
        src = src.with_columns(
            pl.Series("__id", record_pseudonyms(paths, "demo-cardio", id_column, src[id_column].to_list()))
        )
        out = table(result, name)
        joined = src.join(out, left_on="__id", right_on=id_column, suffix="_out")
        assert joined.height == src.height == out.height
        for column in dates:
            shift = (pl.col(f"{column}_out") - pl.col(column)).dt.total_days()
            offsets.append(
                joined.select(pl.col("person_id").alias("raw_person"), shift.alias("days")).drop_nulls()
            )
    observed = pl.concat(offsets).unique()
    per_person = observed.group_by("raw_person").agg(
        pl.col("days").n_unique().alias("n"), pl.col("days").first()
    )
    assert per_person["n"].max() == 1, "a person's dates moved by different amounts in different places"
    check = per_person.join(people, on="raw_person")
    assert (check["days"] == check["offset"]).all()
    assert check["days"].abs().max() <= 90 and (check["days"] != 0).all()


# -- no identifier survives --------------------------------------------------------------------------------


def planted_identifiers(raw) -> list[str]:
    values: set[str] = set()
    for name, columns in RAW_IDENTIFIER_COLUMNS.items():
        frame = pl.read_csv(raw.files[name], infer_schema=False)
        for column in columns:
            for v in frame[column].drop_nulls():
                values.add(v)
                digits = re.sub(r"\D", "", v)
                if column in ("rrn", "phone") and len(digits) >= 9:
                    values.add(digits)  # also without dashes
                    values.add(digits.removeprefix("82"))
    return sorted(values)


def test_no_planted_identifier_appears_anywhere_in_the_output(paths, audit, raw, tmp_path):
    result = run(paths, audit, "demo-cardio", raw.out_dir, spec=spec_variant(tmp_path, k_of_one))
    identifiers = planted_identifiers(raw)
    assert len(identifiers) > 7 * PERSONS
    needle = re.compile("|".join(re.escape(i) for i in identifiers))
    # Every value, decoded: text values must not contain one, numbers must not equal one.
    numeric = {int(i) for i in identifiers if i.isdigit()}
    for path in result.path.glob("*.parquet"):
        for column in pq.read_table(path).columns:
            for value in column.to_pylist():
                if isinstance(value, str):
                    assert not needle.search(value), f"{path.name}: identifier in {value!r}"
                elif isinstance(value, int):
                    assert value not in numeric, f"{path.name}: identifier as a number"
    # Every byte as stored (Parquet footers keep min/max statistics uncompressed; the manifest is text).
    raw_needle = re.compile(b"|".join(re.escape(i.encode("utf-8")) for i in identifiers))
    for path in result.path.iterdir():
        assert not raw_needle.search(path.read_bytes()), f"{path.name}: identifier bytes found"
    assert not list(result.path.glob("*key*"))
    assert load_master_key(paths.secrets_dir).hex().encode() not in b"".join(
        p.read_bytes() for p in result.path.iterdir()
    )


def test_detector_blocks_an_identifier_the_spec_lets_through(paths, audit, raw, tmp_path):
    def keep_phone(doc):
        doc["tables"]["person"]["columns"]["phone"] = {
            "transform": "keep",
            "kind": "none",
            "reason": "pretend this is not a phone number",
            "allow": {"regex": ".*"},  # an allowlist that allows anything: the detector is the second line
        }

    with pytest.raises(RefusedError) as exc:
        run(paths, audit, "demo-cardio", raw.out_dir, spec=spec_variant(tmp_path, keep_phone))
    message = str(exc.value)
    assert "person.phone: phone:" in message and "###-####-####" in message
    assert not any(p in message for p in pl.read_csv(raw.files["person"])["phone"])
    assert nothing_published(paths)
    assert audit.records[-1]["outcome"] == "denied"
    assert audit.records[-1]["details"]["reason"] == "identifier_detected"


# -- k-anonymity in the pipeline ---------------------------------------------------------------------------


def test_k_anonymity_gate_suppresses_exactly_the_small_classes(paths, audit, raw):
    result = run(paths, audit, "demo-cardio", raw.out_dir)
    report = result.manifest["k_anonymity"]
    qi = report["quasi_identifiers"]
    # The same generalization, applied to the raw table by hand: birth year top-coded at 90 in 2025, then
    # 5-year bands; 시도 = first two digits of the 시군구 code.
    src = pl.read_csv(raw.files["person"], schema_overrides={"location_source_value": pl.String})
    year = pl.when(pl.col("year_of_birth") < 1935).then(1935).otherwise(pl.col("year_of_birth")) // 5 * 5
    classes = src.select(
        year.alias("y"), "gender_concept_id", pl.col("location_source_value").str.slice(0, 2)
    )
    sizes = classes.group_by(classes.columns).len()
    expected = int(sizes.filter(pl.col("len") < 5)["len"].sum())
    assert report["suppressed"] == expected > 0
    persons = table(result, "person")
    assert persons.height == PERSONS - expected
    assert report["k_achieved"] == anonymity.k_anonymity(persons.to_pandas(), qi) >= 5
    conditions = table(result, "condition_occurrence").select("person_id", "condition_concept_id")
    joined = persons.join(conditions, on="person_id").to_pandas()
    assert report["l_diversity"]["condition_occurrence.condition_concept_id"] == anonymity.l_diversity(
        joined, qi, ["condition_concept_id"]
    )
    for name in DATE_COLUMNS:  # suppressed persons are gone from every table
        assert set(table(result, name)["person_id"]) <= set(persons["person_id"])


# -- refusals leave nothing behind -------------------------------------------------------------------------


def copy_raw(raw, tmp_path: Path) -> Path:
    target = tmp_path / "raw-copy"
    shutil.copytree(raw.out_dir, target)
    return target


def test_malformed_spec_is_refused_before_anything_changes(paths, audit, raw, tmp_path):
    def typo(doc):
        doc["tables"]["person"]["columns"]["rrn"] = "dorp"

    with pytest.raises(
        SpecError, match=r"variant.spec.yaml: tables.person.columns.rrn: 'dorp' is not one of"
    ):
        run(paths, audit, "demo-cardio", raw.out_dir, spec=spec_variant(tmp_path, typo))
    assert not paths.state_dir.exists() or not any(paths.state_dir.rglob("*"))
    assert audit.records[-1]["outcome"] == "error" and audit.records[-1]["details"]["reason"] == "bad_spec"


def test_unknown_source_column_is_refused_naming_file_table_and_column(paths, audit, raw, tmp_path):
    source = copy_raw(raw, tmp_path)
    person = pl.read_csv(source / "person.csv", infer_schema=False)
    person.with_columns(nickname=pl.lit("x")).write_csv(source / "person.csv")
    with pytest.raises(SourceError) as exc:
        run(paths, audit, "demo-cardio", source)
    assert f"{source / 'person.csv'}: table person: column 'nickname' is not in the spec" in str(exc.value)
    assert nothing_published(paths) and not (paths.secrets_dir / "master.key").exists()


def test_missing_source_table_is_refused(paths, audit, raw, tmp_path):
    source = copy_raw(raw, tmp_path)
    (source / "measurement.csv").unlink()
    with pytest.raises(SourceError, match=r"table 'measurement' not found \(looked for measurement.csv"):
        run(paths, audit, "demo-cardio", source)
    assert nothing_published(paths)


def test_undeclared_sensitive_conditions_are_refused(paths, audit, raw, tmp_path):
    def no_declarations(doc):
        doc["sensitive_conditions"]["declarations"] = [
            d for d in doc["sensitive_conditions"]["declarations"] if d["category"] != "mental_illness"
        ]

    with pytest.raises(RefusedError) as exc:
        run(paths, audit, "demo-cardio", raw.out_dir, spec=spec_variant(tmp_path, no_declarations))
    assert "mental_illness (정신질환 (mental illness)):" in str(exc.value)
    assert "condition_occurrence.condition_concept_id/condition_source_value" in str(exc.value)
    assert exc.value.reason == "sensitive_undeclared" and nothing_published(paths)
    assert audit.records[-1]["details"]["report"]["undeclared"]["mental_illness"] > 0


def test_a_published_version_is_immutable(paths, audit, raw):
    first = run(paths, audit, "demo-cardio", raw.out_dir, version="1")
    before = {p.name: p.read_bytes() for p in first.path.iterdir()}
    with pytest.raises(
        AlreadyPublishedError,
        match="already published for demo-cardio; a published version is "
        "immutable. Ingest as a new version \\(--version 2\\)",
    ):
        run(paths, audit, "demo-cardio", raw.out_dir, version="1")
    assert {p.name: p.read_bytes() for p in first.path.iterdir()} == before
    assert audit.records[-1]["outcome"] == "denied" and audit.records[-1]["target"] == "synthetic-omop@1"


def test_bad_project_id_is_refused(paths, audit, raw):
    with pytest.raises(Exception, match="project: '../etc' is not a valid id"):
        run(paths, audit, "../etc", raw.out_dir)
    assert nothing_published(paths)


# A child process runs the ingest and stops for good once the first table is written; the parent kills it.
CHILD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from hub.paths import EnclavePaths
    from ingest.pipeline import NoProgress, ingest_dataset

    state, source, spec, marker = sys.argv[1:5]

    class StopAfterFirstTable(NoProgress):
        def advance(self, key, amount=1):
            if key == "tables":
                Path(marker).write_text("reached")
                time.sleep(120)

    class Audit:
        def append(self, **record):
            pass

    ingest_dataset(EnclavePaths(Path(state), Path(spec).parent.parent), spec, source, "demo-cardio",
                   audit=Audit(), actor="adam", progress=StopAfterFirstTable())
""")


def test_sigkill_mid_ingest_leaves_no_dataset_and_the_next_run_cleans_up(paths, audit, raw, tmp_path):
    marker = tmp_path / "reached"
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(paths.state_dir), str(raw.out_dir), str(DEMO_SPEC), str(marker)],
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert child.poll() is None, child.stdout.read().decode()
            assert time.monotonic() < deadline, "the child never reached the first table"
            time.sleep(0.05)
    finally:
        os.killpg(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
    dataset = paths.data_dir / "demo-cardio" / "synthetic-omop"
    assert not (dataset / "1").exists() and not (dataset / "current").exists()
    leftovers = [p for p in (paths.data_dir / ".staging").iterdir() if p.is_dir()]
    assert leftovers and (leftovers[0] / "person.parquet").exists()  # it really died half-way
    result = run(paths, audit, "demo-cardio", raw.out_dir)
    assert result.version == "1" and (dataset / "current").resolve() == result.path
    assert list((paths.data_dir / ".staging").iterdir()) == []


# -- the CLI -----------------------------------------------------------------------------------------------


def test_cli_ingest_verify_report_and_audit(tmp_path, raw, capsys, enclave):
    state = tmp_path / "state"
    base = ["--state-dir", str(state), "--policy-dir", str(REPO_ROOT / "policies"), "dataset"]
    ingest = base + [
        "ingest",
        "synthetic-omop",
        "--source",
        str(raw.out_dir),
        "--project",
        "demo-cardio",
        "--quiet",
        "--actor",
        "adam",
    ]
    assert enclave(ingest) == 0
    assert "published synthetic-omop version 1 for demo-cardio" in capsys.readouterr().out
    assert enclave(ingest + ["--version", "1"]) == 1
    assert "refused:" in capsys.readouterr().err
    assert enclave(base + ["verify"]) == 0
    assert "demo-cardio/synthetic-omop/1: ok" in capsys.readouterr().out
    assert (
        enclave(base + ["report", "--project", "demo-cardio", "--dataset", "synthetic-omop", "--json"]) == 0
    )
    manifest = json.loads(capsys.readouterr().out)
    assert manifest["k_anonymity"]["k_achieved"] >= 5

    from audit import AuditLog

    records = [r for r in AuditLog.open(state).records() if r["action"] == "dataset.ingest"]
    assert [(r["actor"], r["outcome"], r["target"]) for r in records] == [
        ("adam", "ok", "synthetic-omop@1"),
        ("adam", "denied", "synthetic-omop@1"),
    ]

    # Tampering with a published file is caught by verify, naming the file.
    victim = state / "data" / "demo-cardio" / "synthetic-omop" / "1" / "person.parquet"
    victim.chmod(0o644)
    with victim.open("ab") as f:
        f.write(b"\0")
    assert enclave(base + ["verify"]) == 1
    assert f"{victim}: sha256" in capsys.readouterr().out


def test_cli_synth_writes_raw_tables(tmp_path, capsys, enclave):
    out = tmp_path / "raw"
    assert (
        enclave(
            [
                "--state-dir",
                str(tmp_path / "s"),
                "dataset",
                "synth",
                "--persons",
                "50",
                "--out",
                str(out),
                "--format",
                "parquet",
            ]
        )
        == 0
    )
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{t}.parquet" for t in TABLES)


def test_synth_is_deterministic_and_plants_identifiers(tmp_path):
    a = synthesize(tmp_path / "a", 200, seed=3)
    b = synthesize(tmp_path / "b", 200, seed=3)
    assert all(a.files[t].read_bytes() == b.files[t].read_bytes() for t in a.files)
    person = pl.read_csv(a.files["person"], infer_schema=False)
    assert person["rrn"].str.contains(r"^\d{6}-?\d{7}$").all()
    assert person["email"].str.contains("@").all()
    notes = pl.read_csv(a.files["visit_occurrence"], infer_schema=False)["visit_note"].drop_nulls()
    assert notes.len() > 0 and notes.str.contains(r"\d{6}-?\d{7}").all()


def test_publish_demo_is_idempotent(tmp_path, audit):
    paths = EnclavePaths(tmp_path / "state", REPO_ROOT / "policies")
    first = publish_demo(paths, persons=200, audit=audit)
    assert {p: r.version for p, r in first.items()} == {"demo-cardio": "1", "demo-oncology": "1"}
    assert publish_demo(paths, persons=200, audit=audit) == {"demo-cardio": None, "demo-oncology": None}
    assert not list(paths.state_dir.glob(".raw-*"))


def test_large_tables_are_written_in_person_slices_with_the_same_result(paths, audit, raw, monkeypatch):
    whole = run(paths, audit, "demo-cardio", raw.out_dir)
    monkeypatch.setattr(ingest.pipeline, "MAX_ROWS_IN_MEMORY", 500)
    sliced = run(paths, audit, "demo-cardio", raw.out_dir)
    assert pq.ParquetFile(sliced.path / "measurement.parquet").num_row_groups > 1
    for name in DATE_COLUMNS:
        assert table(whole, name).equals(table(sliced, name))


def test_sparse_and_text_ids_take_the_join_path_with_the_same_guarantees(paths, audit, raw, tmp_path):
    # Person ids spread far apart (no lookup array) and visit ids as text: both go through joins.
    source = tmp_path / "sparse"
    source.mkdir()
    for path in raw.files.values():
        frame = pl.read_csv(path, infer_schema=False)
        frame = frame.with_columns((pl.col("person_id").cast(pl.Int64) * 1_000_003).alias("person_id"))
        if "visit_occurrence_id" in frame.columns:
            frame = frame.with_columns(("V" + pl.col("visit_occurrence_id")).alias("visit_occurrence_id"))
        frame.write_csv(source / path.name)
    result = run(paths, audit, "demo-cardio", source, spec=spec_variant(tmp_path, k_of_one))
    raw_ids = pl.read_csv(source / "person.csv")["person_id"].to_list()
    expected = expected_person_map(paths, "demo-cardio", raw_ids, 90)
    assert set(table(result, "person")["person_id"]) == set(expected["person_id"])
    visits = table(result, "visit_occurrence").select("visit_occurrence_id", "person_id", "visit_start_date")
    conditions = table(result, "condition_occurrence")
    linked = conditions.join(visits, on="visit_occurrence_id", suffix="_visit")
    assert linked.height == conditions.height
    assert (linked["person_id"] == linked["person_id_visit"]).all()
    assert (linked["condition_start_date"] == linked["visit_start_date"]).all()  # same person, same shift
