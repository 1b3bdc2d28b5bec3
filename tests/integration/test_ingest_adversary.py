"""Issue 20 as an adversary would test it: the real ``enclave dataset ingest`` on a raw copy with every
evasive spelling of a person's identifiers planted in the columns a spec keeps, and a scanner written here
(not the pipeline's detector) that looks for them in everything published. Then linkage: two projects from
one source, measured by a join written here, against the spec's bound.

Pure Python, no Docker or hub: the pipeline runs in a subprocess exactly as an administrator runs it.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import subprocess
import sys
import unicodedata
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest
import yaml

from hub.paths import REPO_ROOT
from ingest.synth import synthesize

pytestmark = pytest.mark.integration

DEMO_SPEC = REPO_ROOT / "policies" / "datasets" / "synthetic-omop.spec.yaml"
PERSONS = 600
VICTIMS = 12
FULL_WIDTH = {ord(c): ord(c) + 0xFEE0 for c in "0123456789-"}


def enclave(state: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "hub.cli",
            "--state-dir",
            str(state),
            "--policy-dir",
            str(REPO_ROOT / "policies"),
            *args,
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO_ROOT,
        env={k: v for k, v in os.environ.items() if k != "ENCLAVE_DEBUG"},
    )


def spec_file(tmp_path: Path, change) -> Path:
    doc = copy.deepcopy(yaml.safe_load(DEMO_SPEC.read_text(encoding="utf-8")))
    change(doc)
    path = tmp_path / "adversary.spec.yaml"
    path.write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
    return path


def everyone_published(doc):
    """k = 1 and one full view: every planted row would be published if nothing caught it."""
    doc.pop("projects")
    doc.pop("linkage")
    doc["k_anonymity"]["k"] = 1


# -- the victims and their evasive spellings -------------------------------------------------------------


def victims(raw_dir: Path) -> list[dict]:
    person = pl.read_csv(raw_dir / "person.csv", infer_schema=False).head(VICTIMS)
    out = []
    for row in person.iter_rows(named=True):
        digits = re.sub(r"\D", "", row["rrn"])
        phone = re.sub(r"\D", "", row["phone"])
        phone = "0" + phone[2:] if phone.startswith("82") else phone
        local, _, domain = row["email"].partition("@")
        y, m, d = int(row["year_of_birth"]), int(row["month_of_birth"]), int(row["day_of_birth"])
        out.append(
            {
                "pid": row["person_id"],
                "rrn": digits,
                "phone": phone,
                "local": local,
                "domain": domain,
                "email": row["email"],
                "name": row["patient_name"],
                "address": row["address"],
                "mrn": row["person_source_value"],
                "dob": (y, m, d),
            }
        )
    return out


def text_forms(v: dict) -> list[str]:
    """Every spelling from the issue, then our own."""
    r, p = v["rrn"], v["phone"]
    y, m, d = v["dob"]
    road = v["address"].split()
    return [
        f"{r[:6]} {r[6:]}",
        f"{r[:6]}.{r[6:]}",
        f"{r[:6]}\u2013{r[6:]}",
        f"{r[:6]}-{r[6:]}".translate(FULL_WIDTH),
        f"{r}.0",
        "(02) 583-6318",
        f"({p[:3]}) {p[3:-4]}-{p[-4:]}",
        f"+82 (0){p[1:3]}-{p[3:-4]}-{p[-4:]}",
        f"{p[:3]}-{p[3:-4]}-{p[-4:]}".translate(FULL_WIDTH),
        f"{v['local']} at {v['domain'].replace('.', ' dot ')}",
        "제갈공명",
        f"{v['name'][0]} {v['name'][1:]}",
        "Hong Gildong",
        f"주소: {v['address']}",
        " ".join(road[1:]),
        f"{y}년 {m}월 {d}일",
        f"{y % 100:02d}.{m:02d}.{d:02d}",
        f"MRN: {v['mrn']}",
        # our own
        f"{r[:6]}\u200b-\u200b{r[6:]}",
        " ".join(r),
        f"{p[:3]}.{p[3:-4]}.{p[-4:]}",
        f"{v['local']}\uff20{v['domain']}",
        f"{v['local']}(at){v['domain'].replace('.', '[dot]')}",
        f"주민번호 {r[:6]}-{r[6:]}",
        f"{y}-{m:02d}-{d:02d}",
        f"환자 {v['name']} 님",
        f"등록번호 {v['mrn']}",
        f"{v['name']}/{v['local']}",
    ]


def number_forms(v: dict) -> list[float]:
    return [float(v["rrn"]), float(v["phone"]), float(v["mrn"])]


TEXT_SITES = [
    ("condition_occurrence", "condition_source_value"),
    ("drug_exposure", "drug_source_value"),
    ("measurement", "measurement_source_value"),
    ("measurement", "unit_source_value"),
    ("visit_occurrence", "visit_source_value"),
]
NUMBER_SITES = [
    ("measurement", "value_as_number"),
    ("measurement", "range_low"),
    ("drug_exposure", "quantity"),
]


def plant(raw_dir: Path, people: list[dict]) -> int:
    """Put every form of each victim into rows of that victim; returns the number of planted cells."""
    planted = 0
    frames = {
        n: pl.read_csv(raw_dir / f"{n}.csv", infer_schema=False)
        for n in ("condition_occurrence", "drug_exposure", "measurement", "visit_occurrence", "person")
    }
    for table, column in TEXT_SITES + NUMBER_SITES:
        frame = frames[table]
        values = frame[column].to_list()
        for v in people:
            rows = frame.with_row_index().filter(pl.col("person_id") == v["pid"])["index"].to_list()
            forms = text_forms(v) if (table, column) in TEXT_SITES else [repr(x) for x in number_forms(v)]
            for i, form in zip(rows, forms):
                values[i] = form
                planted += 1
        frames[table] = frame.with_columns(pl.Series(column, values, dtype=pl.String))
    people_col = frames["person"]["gender_source_value"].to_list()
    for i, v in enumerate(people):
        people_col[i] = f"{v['name']} {v['rrn']}"
        planted += 1
    frames["person"] = frames["person"].with_columns(pl.Series("gender_source_value", people_col))
    for name, frame in frames.items():
        frame.write_csv(raw_dir / f"{name}.csv")
    return planted


# -- an independent scanner ------------------------------------------------------------------------------


def needles(people: list[dict]) -> tuple[set[str], set[str]]:
    """(digit strings, lower-case text fragments) that must not appear in any published value."""
    digits, words = set(), {"제갈공명", "hong gildong", "gildong", "mrn", "등록번호", "주소"}
    for v in people:
        digits |= {v["rrn"], v["phone"], v["phone"][1:], v["mrn"]}
        words |= {v["name"], v["local"].lower(), v["email"].lower(), v["address"].split()[2]}
        y, m, d = v["dob"]
        digits |= {f"{y}{m:02d}{d:02d}", f"{y % 100:02d}{m:02d}{d:02d}"}
    return digits, words


def offending(value, digits: set[str], words: set[str]) -> str | None:
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int):  # a number is the identifier only as a whole (pseudonyms are long numbers)
        return "digits" if str(value) in digits or f"0{value}" in digits else None
    text = unicodedata.normalize("NFKC", str(value)).lower()
    squeezed = re.sub(r"\s+", "", text)
    only_digits = re.sub(r"\D", "", text)
    if any(len(n) >= 6 and n in only_digits for n in digits):
        return "digits"
    if any(w and re.sub(r"\s+", "", w) in squeezed for w in words):
        return "word"
    if "@" in text or re.search(r"\bat\b.*\bdot\b", text) or re.search(r"\d+\s*년\s*\d+\s*월", text):
        return "shape"
    return None


def scan(version_dir: Path, people: list[dict]) -> list[str]:
    digits, words = needles(people)
    found = []
    for path in sorted(version_dir.glob("*.parquet")):
        table = pq.read_table(path)
        for name in table.column_names:
            if table.schema.field(name).type in ("date32[day]",) or "timestamp" in str(
                table.schema.field(name).type
            ):
                continue
            for value in set(table.column(name).to_pylist()):
                why = offending(value, digits, words)
                if why:
                    found.append(f"{path.name}:{name}: {why}: {value!r}")
    manifest = (version_dir / "manifest.json").read_text(encoding="utf-8")
    personal = words - {"mrn", "등록번호", "주소"}  # the manifest names its detectors; it must name no one
    for value in re.findall(r'"([^"]*)"', manifest):
        if offending(value, digits, personal) in ("digits", "word") and not value.startswith("/"):
            found.append(f"manifest.json: {offending(value, digits, personal)}: {value!r}")
    return found


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    return synthesize(tmp_path_factory.mktemp("raw"), PERSONS, seed=20, fmt="csv").out_dir


def test_no_planted_identifier_survives_in_any_spelling(raw, tmp_path):
    people = victims(raw)
    planted = plant(raw, people)
    assert planted >= 8 * VICTIMS * 3
    spec = spec_file(tmp_path, everyone_published)
    state = tmp_path / "state"
    done = enclave(
        state, "dataset", "ingest", str(spec), "--source", str(raw), "--project", "study-x", "--quiet"
    )
    assert done.returncode == 0, done.stderr[-3000:]
    version = state / "data" / "study-x" / "synthetic-omop" / "1"
    found = scan(version, people)
    assert found == []
    manifest = json.loads((version / "manifest.json").read_text(encoding="utf-8"))
    suppressed = sum(e["suppressed"] or 0 for e in manifest["allowlist"].values())
    assert suppressed >= planted - 10  # a few forms land on the same cell of a short-lived victim
    # The scanner can fail: the raw copy itself is full of what it looks for.
    assert any(
        offending(v, *needles(people))
        for v in pl.read_csv(raw / "measurement.csv", infer_schema=False)[
            "measurement_source_value"
        ].to_list()
    )
    # And nothing raw reached the output streams or the trail.
    digits, _ = needles(people)
    trail = b"".join(p.read_bytes() for p in state.rglob("*") if p.is_file() and p.suffix != ".parquet")
    for d in digits:
        assert d not in done.stdout + done.stderr
    assert people[0]["email"].encode() not in trail and people[0]["name"].encode() not in trail


def test_addresses_in_the_region_column_are_refused_by_class_not_published(raw, tmp_path):
    people = victims(raw)
    person = pl.read_csv(raw / "person.csv", infer_schema=False)
    values = person["location_source_value"].to_list()
    values[1] = f"주소: {people[1]['address']}"
    values[2] = " ".join(people[2]["address"].split()[1:])
    values[3] = values[3] + " "  # a trailing space is normalized, not refused
    person.with_columns(pl.Series("location_source_value", values)).write_csv(raw / "person.csv")
    state = tmp_path / "state"
    spec = spec_file(tmp_path, everyone_published)
    done = enclave(
        state, "dataset", "ingest", str(spec), "--source", str(raw), "--project", "study-x", "--quiet"
    )
    assert done.returncode == 1
    assert (
        "column location_source_value: cannot be generalized (text that does not start with a 시도 name"
        in done.stderr
    )
    assert "2 row(s) (row 2, 3)" in done.stderr
    for v in people[1:3]:
        assert v["address"].split()[2] not in done.stderr
    assert not (state / "data" / "study-x").exists()


# -- linkage ---------------------------------------------------------------------------------------------


def person_truth(state: Path, project: str, raw_ids: list[str]) -> dict[int, str]:
    """Pseudonym -> raw person id, recomputed from the key as the test's own ground truth."""
    import numpy as np

    from ingest.keys import load_master_key, project_key, purpose_key
    from ingest.prf import to_pseudonyms

    key = purpose_key(
        project_key(load_master_key(state / "secrets", create=False), project), "pseudonym/person_id"
    )
    digests = np.array(
        [
            int.from_bytes(hashlib.blake2b(i.encode(), key=key, digest_size=8).digest(), "little")
            for i in raw_ids
        ],
        dtype=np.uint64,
    )
    return dict(zip(to_pseudonyms(digests).tolist(), raw_ids))


def adversary_fingerprints(version: Path) -> pl.DataFrame:
    """What an analyst of one project can compute and match on: quasi-identifiers, the set of condition
    codes, the sequence of lab codes with values rounded to whole numbers."""
    person = pl.read_parquet(version / "person.parquet").select(
        "person_id", "year_of_birth", "gender_concept_id", "location_source_value"
    )
    conditions = (
        pl.read_parquet(version / "condition_occurrence.parquet")
        .group_by("person_id")
        .agg(pl.col("condition_concept_id").unique().sort().cast(pl.String).str.join(",").alias("c"))
    )
    labs = (
        pl.read_parquet(version / "measurement.parquet")
        .group_by("person_id")
        .agg(
            pl.concat_str("measurement_concept_id", pl.col("value_as_number").round(0), separator=":")
            .sort()
            .str.join(",")
            .alias("m")
        )
    )
    frame = person.join(conditions, on="person_id", how="left").join(labs, on="person_id", how="left")
    return frame.with_columns(
        pl.concat_str(pl.exclude("person_id").cast(pl.String).fill_null("-"), separator="|").alias("fp")
    )


def test_two_demo_projects_link_at_most_ten_per_cent(tmp_path):
    raw = synthesize(tmp_path / "raw", 1000, seed=4, fmt="parquet").out_dir
    state = tmp_path / "state"
    shares = {}
    for project in ("demo-cardio", "demo-oncology"):
        done = enclave(
            state, "dataset", "ingest", str(DEMO_SPEC), "--source", str(raw), "--project", project, "--quiet"
        )
        assert done.returncode == 0, done.stderr[-3000:]
        manifest = json.loads(
            (state / "data" / project / "synthetic-omop" / "1" / "manifest.json").read_text()
        )
        ((other, measured),) = manifest["linkage"]["against"].items()
        assert other != project and measured["share"] <= 0.10
        shares[project] = measured["share"]
        report = enclave(state, "dataset", "report", "--project", project, "--dataset", "synthetic-omop")
        assert (
            report.returncode == 0
            and "linkage" in report.stdout
            and "re-identification risk" in report.stdout
        )
    # Our own join, on the published files, against the truth recomputed from the keys.
    raw_ids = pl.read_parquet(raw / "person.parquet")["person_id"].cast(pl.String).to_list()
    a = adversary_fingerprints(state / "data" / "demo-cardio" / "synthetic-omop" / "1")
    b = adversary_fingerprints(state / "data" / "demo-oncology" / "synthetic-omop" / "1")
    truth_a, truth_b = (
        person_truth(state, "demo-cardio", raw_ids),
        person_truth(state, "demo-oncology", raw_ids),
    )
    pairs = a.filter(pl.col("fp").is_unique()).join(b.filter(pl.col("fp").is_unique()), on="fp", suffix="_b")
    correct = sum(truth_a[x] == truth_b[y] for x, y in pairs.select("person_id", "person_id_b").iter_rows())
    assert correct / a.height <= 0.10, (correct, a.height)
    assert correct / b.height <= 0.10


def test_projects_with_the_same_view_are_refused_above_the_bound(tmp_path):
    raw = synthesize(tmp_path / "raw", 400, seed=5, fmt="parquet").out_dir

    def same(doc):
        doc["projects"] = {"study-a": {}, "study-b": {}}

    spec = spec_file(tmp_path, same)
    state = tmp_path / "state"
    done = enclave(
        state, "dataset", "ingest", str(spec), "--source", str(raw), "--project", "study-a", "--quiet"
    )
    assert done.returncode == 1
    assert "refused:" in done.stderr and "link one to one to another project" in done.stderr
    assert "above linkage.max_share 10%" in done.stderr
    share = float(re.search(r"([0-9.]+)% of its persons link", done.stderr).group(1))
    assert share > 50
    assert not (state / "data" / "study-a" / "synthetic-omop" / "1").exists()
