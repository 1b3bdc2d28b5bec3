"""The pseudonymization spec: the schema, the rules across tables, and the kr-health preset's rules by
identifier type. Each refusal must name the file and the field, and list every problem at once."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from hub.paths import REPO_ROOT
from ingest.errors import SpecError
from ingest.preset import load_preset
from ingest.spec import load_spec

DEMO_SPEC = REPO_ROOT / "policies" / "datasets" / "synthetic-omop.spec.yaml"
TEMPLATE = REPO_ROOT / "policies" / "datasets" / "templates" / "omop-cdm-5.4.spec.yaml"


def minimal(**extra) -> dict:
    doc = {
        "spec_version": 1,
        "dataset": "tiny",
        "date_shift": {"max_days": 30},
        "tables": {
            "person": {
                "columns": {
                    "person_id": "pseudonymize",
                    "name": "drop",
                    "year_of_birth": {"transform": "generalize", "method": "birth_year"},
                }
            },
            "visit": {
                "columns": {"visit_id": "pseudonymize", "person_id": "pseudonymize", "day": "date_shift"}
            },
        },
    }
    doc.update(extra)
    return doc


def write(tmp_path: Path, doc: dict, name: str = "tiny.spec.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
    return path


def refusal(tmp_path: Path, doc: dict) -> str:
    with pytest.raises(SpecError) as exc:
        load_spec(write(tmp_path, doc))
    return str(exc.value)


def test_shipped_specs_load():
    demo = load_spec(DEMO_SPEC)
    assert demo.dataset == "synthetic-omop" and demo.preset.name == "kr-health"
    assert demo.k_anonymity.k == 5 and demo.max_shift_days == 90
    template = load_spec(TEMPLATE)
    assert {
        "person",
        "observation_period",
        "visit_occurrence",
        "condition_occurrence",
        "drug_exposure",
        "procedure_occurrence",
        "measurement",
        "observation",
        "death",
        "note",
    } == set(template.tables)
    assert template.tables["note"].columns["note_text"].transform == "drop"


def test_minimal_spec_resolves_defaults(tmp_path):
    spec = load_spec(write(tmp_path, minimal()))
    assert spec.person_table == "person" and spec.person_column == "person_id"
    assert spec.tables["visit"].person_column == "person_id"
    assert spec.tables["visit"].columns["visit_id"].domain == "visit_id"
    assert spec.preset is None and spec.k_anonymity is None


def test_spec_hash_changes_with_content(tmp_path):
    a = load_spec(write(tmp_path, minimal(), "a.yaml")).sha256
    b = load_spec(write(tmp_path, minimal(description="other"), "b.yaml")).sha256
    assert a != b and a == load_spec(write(tmp_path, minimal(), "c.yaml")).sha256


def test_not_yaml_names_the_file(tmp_path):
    path = tmp_path / "broken.spec.yaml"
    path.write_text("tables: [unclosed\n")
    with pytest.raises(SpecError, match="broken.spec.yaml: not valid YAML"):
        load_spec(path)


def test_malformed_spec_lists_every_problem_with_its_field(tmp_path):
    doc = minimal()
    doc["tables"]["person"]["columns"]["name"] = "dorp"
    doc["tables"]["visit"]["columns"]["day"] = {"transform": "generalize"}
    doc["colour"] = "blue"
    message = refusal(tmp_path, doc)
    assert "tiny.spec.yaml: tables.person.columns.name: 'dorp' is not one of" in message
    assert "tables.visit.columns.day: 'method' is a required property" in message
    assert "unknown field(s) ('colour' was unexpected)" in message


def test_generalize_parameters_only_with_generalize(tmp_path):
    doc = minimal()
    doc["tables"]["person"]["columns"]["year_of_birth"] = {"transform": "keep", "band": 5}
    assert "belong to transform: generalize only" in refusal(tmp_path, doc)


def test_person_column_must_be_pseudonymized_everywhere(tmp_path):
    doc = minimal()
    doc["tables"]["visit"]["columns"]["person_id"] = "keep"
    assert "tables.visit.columns.person_id: the person column must be pseudonymize" in refusal(tmp_path, doc)


def test_date_shift_needs_a_person_and_a_range(tmp_path):
    doc = minimal()
    del doc["date_shift"]
    doc["tables"]["lab"] = {"person_column": None, "columns": {"at": "date_shift"}}
    message = refusal(tmp_path, doc)
    assert "tables.lab: date_shift of at needs a person column" in message
    assert "tables.visit: date_shift needs date_shift.max_days" in message


def test_quasi_identifiers_must_be_published_columns(tmp_path):
    doc = minimal(
        k_anonymity={"quasi_identifiers": ["year_of_birth", "name"], "sensitive_attributes": ["visit.nope"]}
    )
    message = refusal(tmp_path, doc)
    assert "k_anonymity.quasi_identifiers[1]: 'name' is not an output column of person" in message
    assert "k_anonymity.sensitive_attributes[0]: 'visit.nope' is not an output column" in message


def test_waiver_needs_detectors_and_a_reason(tmp_path):
    doc = minimal()
    doc["tables"]["person"]["columns"]["year_of_birth"] = {
        "transform": "keep",
        "waive": {"detectors": ["rrn"]},
    }
    assert "'reason' is a required property" in refusal(tmp_path, doc)


@pytest.mark.parametrize(
    "column, rule, expected",
    [
        ("rrn", "keep", "a rrn column must be drop, not keep"),
        ("jumin_no", "pseudonymize", "a rrn column must be drop, not pseudonymize"),
        ("patient_name", "keep", "a name column must be drop"),
        ("mobile_phone", "keep", "a phone column must be drop"),
        ("email", "keep", "a email column must be drop"),
        ("home_address", "keep", "a address column must be drop"),
        ("note_text", "keep", "a free_text column must be drop"),
        ("visit_id", "keep", "a record_id column must be drop or pseudonymize"),
        ("admit_date", "keep", "a date column must be drop or date_shift or generalize:year"),
        ("year_of_birth", "keep", "a birth_year column must be drop or generalize:birth_year"),
        ("age", "keep", "a age column must be drop or generalize:age_band or generalize:top_code"),
        ("sigungu", "keep", "a region column must be drop or generalize:region"),
    ],
)
def test_preset_refuses_identifier_kinds_kept(tmp_path, column, rule, expected):
    doc = minimal(preset="kr-health")
    doc["tables"]["person"]["columns"][column] = rule
    message = refusal(tmp_path, doc)
    assert f"tables.person.columns.{column}: kr-health preset: {expected}" in message


def test_preset_enforces_coarseness(tmp_path):
    doc = minimal(preset="kr-health")
    cols = doc["tables"]["person"]["columns"]
    cols["age"] = {"transform": "generalize", "method": "age_band", "top_code": 100}
    cols["sigungu"] = {"transform": "generalize", "method": "region", "level": "sigungu"}
    cols["zip"] = {"transform": "generalize", "method": "truncate", "keep": 5}
    message = refusal(tmp_path, doc)
    assert "ages must be top-coded at 90 or lower" in message
    assert "regions must be generalized to sido" in message
    assert "a postcode may keep at most 3 leading characters" in message
    # The DRB may allow 시군구: the spec says so once, and then it is accepted.
    doc["generalization"] = {"region_level": "sigungu"}
    cols["age"]["top_code"] = 90
    cols["zip"]["keep"] = 3
    assert load_spec(write(tmp_path, doc)).tables["person"].columns["sigungu"].params["level"] == "sigungu"


def test_kind_none_opts_out_with_a_reason(tmp_path):
    doc = minimal(preset="kr-health")
    doc["tables"]["person"]["columns"]["drug_name"] = "keep"
    assert "a name column must be drop" in refusal(tmp_path, doc)
    doc["tables"]["person"]["columns"]["drug_name"] = {"transform": "keep", "kind": "none"}
    assert "'reason' is a required property" in refusal(tmp_path, doc)
    doc["tables"]["person"]["columns"]["drug_name"]["reason"] = "an ingredient name, not a person's"
    doc["tables"]["person"]["columns"]["drug_name"]["allow"] = {"codes": ["aspirin", "metformin"]}
    assert load_spec(write(tmp_path, doc)).tables["person"].columns["drug_name"].kind is None


def test_preset_kinds_by_column_name():
    preset = load_preset("kr-health")
    kinds = {
        c: (preset.kind_of(c).name if preset.kind_of(c) else None)
        for c in (
            "person_id",
            "rrn",
            "주민등록번호",
            "patient_name",
            "phone",
            "email",
            "address",
            "person_source_value",
            "visit_start_datetime",
            "birth_datetime",
            "year_of_birth",
            "location_source_value",
            "zip",
            "provider_id",
            "ethnicity_concept_id",
            "condition_source_value",
            "value_as_number",
        )
    }
    assert kinds == {
        "person_id": "person_id",
        "rrn": "rrn",
        "주민등록번호": "rrn",
        "patient_name": "name",
        "phone": "phone",
        "email": "email",
        "address": "address",
        "person_source_value": "mrn",
        "visit_start_datetime": "date",
        "birth_datetime": "birth_date",
        "year_of_birth": "birth_year",
        "location_source_value": "region",
        "zip": "postcode",
        "provider_id": "record_id",
        "ethnicity_concept_id": None,
        "condition_source_value": None,
        "value_as_number": None,
    }


def test_unknown_sensitive_category_is_refused_by_schema(tmp_path):
    doc = minimal(
        sensitive_conditions={
            "declarations": [{"category": "gossip", "basis": "consent", "reference": "X-1"}]
        }
    )
    assert "sensitive_conditions.declarations.0.category" in refusal(tmp_path, doc)


def test_a_project_can_raise_k_but_not_lower_it(tmp_path):
    spec = load_spec(write(tmp_path, minimal(k_anonymity={"k": 5, "quasi_identifiers": ["year_of_birth"]})))
    assert spec.with_min_k(10).k_anonymity.k == 10
    assert spec.with_min_k(2).k_anonymity.k == 5
    with pytest.raises(
        SpecError, match="the project asks for k=5, but the spec declares no quasi_identifiers"
    ):
        load_spec(write(tmp_path, minimal())).with_min_k(5)
