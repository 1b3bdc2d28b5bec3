"""The privacy machinery in isolation: the identifier detector, the k-anonymity gate (cross-checked against
pycanon), the keyed PRF and the keys."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from pycanon import anonymity

from ingest.detector import KnownIdentifiers, blocking, rrn_mask, scan_outputs, shape
from ingest.errors import KeyFileError
from ingest.kanon import enforce
from ingest.keys import load_master_key, project_key, purpose_key
from ingest.prf import PSEUDONYM_FLOOR, HashPool, to_day_offsets, to_pseudonyms
from ingest.spec import ColumnRule, TableSpec, Waiver

# -- identifier detector ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "900101-1234567",  # 1900s male
        "9001011234567",  # no dash
        "031231-4000000",  # 2000s female
        "211005-3918273",  # issued after Oct 2020: random digits, checksum meaningless
        "환자 850315-2123456 내원",  # inside Korean text
        "rrn:991231-5111111;",  # foreigner born 1999
    ],
)
def test_rrn_shapes_with_a_real_birth_date_are_found(text):
    assert rrn_mask(pl.Series([text])).to_list() == [True]


@pytest.mark.parametrize(
    "text",
    [
        "901301-1234567",  # month 13
        "900230-1234567",  # 30 February
        "010229-3123456",  # 2001 was not a leap year
        "12345678901234",  # 14 digits
        "I21.9",
        "2020-01-01",
        "991231-3123456",  # born 2099: in the future
    ],
)
def test_rrn_shapes_without_a_real_birth_date_are_not(text):
    assert rrn_mask(pl.Series([text])).to_list() == [False]


def test_rrn_check_digit_is_not_required():
    # The same birth date and sex with every possible final digit: all are RRN-shaped, valid check or not.
    values = pl.Series([f"880808-112345{d}" for d in range(10)])
    assert rrn_mask(values).all()


def test_shape_never_shows_the_value():
    assert shape("900101-1234567") == "######-#######"
    assert shape("김민준 010-1234-5678") == "가가가 ###-####-####"


def table_spec(name: str, columns: dict[str, str], waivers: dict[str, Waiver] | None = None) -> TableSpec:
    rules = {c: ColumnRule(c, t, waiver=(waivers or {}).get(c)) for c, t in columns.items()}
    return TableSpec(name, None, False, None, rules)


def detect(tmp_path: Path, frame: pl.DataFrame, rules: dict[str, str], known=None, waivers=None):
    path = tmp_path / "t.parquet"
    frame.write_parquet(path)
    return scan_outputs({"t": (path, table_spec("t", rules, waivers))}, known or KnownIdentifiers())


def test_detector_finds_planted_identifiers_in_text_and_numbers(tmp_path):
    n = 200
    frame = pl.DataFrame(
        {
            "code": ["I10"] * (n - 6)
            + [
                "010-1234-5678",
                "+82-10-9876-5432",
                "02-123-4567",
                "x@naver.com",
                "900101-1234567",
                "김민준 님",
            ],
            "number": [3_000_000] * (n - 2) + [9001011234567, 1098765432],  # RRN and 010 phone as integers
            "category": ["a", "b"] * (n // 2),
        }
    )
    names = KnownIdentifiers(names=pl.Series(["김민준"]))
    found = {
        (f.column, f.detector): f.values
        for f in detect(tmp_path, frame, dict.fromkeys(frame.columns, "keep"), names)
    }
    assert found == {
        ("code", "phone"): 3,
        ("code", "email"): 1,
        ("code", "rrn"): 1,
        ("code", "name"): 1,
        ("number", "rrn"): 1,
        ("number", "phone"): 1,
    }


def test_detector_flags_unpseudonymized_ids_and_free_text(tmp_path):
    n = 300
    frame = pl.DataFrame(
        {
            "record_no": np.arange(n),  # nearly all distinct
            "visit_id": np.arange(n) % 7,  # named like an id
            "remarks": [f"환자가 {i}일 전부터 흉통을 호소하며 내원하였음, 경과 관찰 필요" for i in range(n)],
            "pseudo_id": np.arange(n) + PSEUDONYM_FLOOR,  # pseudonymized: fine
            "concept_id_like": np.arange(n) % 5,
        }
    )
    rules = {
        "record_no": "keep",
        "visit_id": "keep",
        "remarks": "keep",
        "pseudo_id": "pseudonymize",
        "concept_id_like": "keep",
    }
    found = {(f.column, f.detector) for f in detect(tmp_path, frame, rules)}
    assert found == {
        ("record_no", "unique_id"),
        ("visit_id", "unique_id"),
        ("remarks", "unique_id"),
        ("remarks", "free_text"),
    }


def test_known_raw_values_are_found_as_whole_values(tmp_path):
    frame = pl.DataFrame({"where": ["서울특별시 강남구 테헤란로 1", "서울특별시", "11"]})
    known = KnownIdentifiers(values=pl.Series(["서울특별시 강남구 테헤란로 1"]))
    (finding,) = detect(tmp_path, frame, {"where": "keep"}, known)
    assert (finding.detector, finding.values) == ("raw_value", 1)


def test_a_waiver_names_its_detector_and_reason(tmp_path):
    frame = pl.DataFrame({"accession": ["010-1234-5678", "I10"]})
    waiver = Waiver(("phone",), "lab accession numbers share the 010 prefix")
    (finding,) = detect(tmp_path, frame, {"accession": "keep"}, waivers={"accession": waiver})
    assert finding.waived == waiver.reason and not blocking([finding])
    other = Waiver(("email",), "wrong detector waived here")
    (finding,) = detect(tmp_path, frame, {"accession": "keep"}, waivers={"accession": other})
    assert blocking([finding]) == [finding]


# -- k-anonymity -------------------------------------------------------------------------------------------


def people(n: int, seed: int = 7) -> tuple[pl.DataFrame, pl.DataFrame]:
    rng = np.random.default_rng(seed)
    persons = pl.DataFrame(
        {
            "pid": np.arange(n),
            "yob": rng.choice([1950, 1960, 1970, 1980, 1990], n, p=[0.1, 0.2, 0.3, 0.3, 0.1]),
            "sex": rng.choice([8507, 8532], n),
            "sido": rng.choice(["11", "41", "26", "36"], n, p=[0.5, 0.35, 0.13, 0.02]),
        }
    )
    rows = rng.integers(0, n, 4 * n)
    conditions = pl.DataFrame({"pid": rows, "concept": rng.choice([1, 2, 3, 4, 5, 6], len(rows))})
    return persons, conditions


def test_suppression_removes_exactly_the_small_classes():
    # Classes of every size from 1 to 7 (in 시도 '99'), on top of random ones.
    persons, conditions = people(400)
    sizes = [1, 2, 3, 4, 5, 6, 7]
    planted = pl.DataFrame(
        {
            "pid": range(1000, 1000 + sum(sizes)),
            "yob": [1900 + i for i, n in enumerate(sizes) for _ in range(n)],
            "sex": [8507] * sum(sizes),
            "sido": ["99"] * sum(sizes),
        }
    )
    persons = pl.concat([persons, planted], how="vertical_relaxed")
    qi = ["yob", "sex", "sido"]
    kept, report = enforce(persons, "pid", qi, 5, sensitive={"concept": conditions})
    sizes = persons.group_by(qi).agg(pl.len().alias("n"))
    small = persons.join(sizes.filter(pl.col("n") < 5), on=qi, how="semi")
    assert report.suppressed == small.height > 0
    assert set(kept) == set(persons["pid"]) - set(small["pid"])
    assert set(range(1010, 1028)) <= set(kept) and not set(range(1000, 1010)) & set(kept)
    after = persons.filter(pl.col("pid").is_in(kept.implode()))
    assert report.k_achieved == after.group_by(qi).len()["len"].min() >= 5
    assert report.k_before == sizes["n"].min()
    assert sum(b["records"] for b in report.histogram_before.values()) == persons.height
    assert sum(b["records"] for b in report.histogram_after.values()) == after.height


def test_k_and_l_match_pycanon():
    persons, conditions = people(600, seed=11)
    qi = ["yob", "sex", "sido"]
    kept, report = enforce(persons, "pid", qi, 5, sensitive={"concept": conditions})
    after = persons.filter(pl.col("pid").is_in(kept.implode()))
    assert report.k_achieved == anonymity.k_anonymity(after.to_pandas(), qi)
    joined = after.join(conditions, on="pid").to_pandas()
    assert report.l_diversity["concept"] == anonymity.l_diversity(joined, qi, ["concept"])


def test_l_requirement_suppresses_classes_with_too_few_sensitive_values():
    persons = pl.DataFrame({"pid": range(12), "g": ["a"] * 6 + ["b"] * 6})
    rows = pl.DataFrame({"pid": list(range(12)), "dx": [1, 2, 3, 1, 2, 3] + [9] * 6})
    kept, report = enforce(persons, "pid", ["g"], 5, sensitive={"dx": rows}, l=2)
    assert sorted(kept) == list(range(6)) and report.suppressed == 6
    assert report.l_diversity == {"dx": 3}
    assert (
        anonymity.l_diversity(
            persons.join(rows, on="pid").filter(pl.col("g") == "a").to_pandas(), ["g"], ["dx"]
        )
        == 3
    )


def test_missing_quasi_identifier_values_form_their_own_class():
    persons = pl.DataFrame({"pid": range(7), "g": [None, None, None, "a", "a", "a", "a"]})
    kept, report = enforce(persons, "pid", ["g"], 4)
    assert sorted(kept) == [3, 4, 5, 6] and report.k_before == 3 and report.k_achieved == 4


# -- PRF and keys -----------------------------------------------------------------------------------------


def test_prf_is_keyed_blake2b_and_pseudonyms_never_look_like_short_numbers():
    key = bytes(range(32))
    values = pl.Series([str(i) for i in range(1000)])
    with HashPool(1) as pool:
        digests = pool.prf64(key, values)
    expected = int.from_bytes(hashlib.blake2b(b"42", key=key, digest_size=8).digest(), "little")
    assert int(digests[42]) == expected
    pseudonyms = to_pseudonyms(digests)
    assert (pseudonyms >= 2**62).all() and all(len(str(p)) == 19 for p in pseudonyms)


def test_parallel_hashing_gives_the_same_answer():
    key = os.urandom(32)
    values = pl.Series(np.arange(250_000)).cast(pl.String)
    with HashPool(1) as one, HashPool(2) as two:
        assert (one.prf64(key, values) == two.prf64(key, values)).all()


def test_day_offsets_cover_the_range_and_skip_zero():
    offsets = to_day_offsets(np.arange(100_000, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15), 30)
    assert set(np.unique(offsets)) == set(range(-30, 0)) | set(range(1, 31))


def test_master_key_is_private_and_stable(tmp_path):
    secrets = tmp_path / "secrets"
    key = load_master_key(secrets)
    assert len(key) == 32 and load_master_key(secrets) == key
    assert stat.S_IMODE(secrets.stat().st_mode) == 0o700
    assert stat.S_IMODE((secrets / "master.key").stat().st_mode) == 0o600
    (secrets / "master.key").chmod(0o644)
    with pytest.raises(KeyFileError, match="mode 0644 lets others read it"):
        load_master_key(secrets)


def test_loose_secrets_directory_is_refused(tmp_path):
    secrets = tmp_path / "secrets"
    secrets.mkdir(mode=0o755)
    secrets.chmod(0o755)
    with pytest.raises(KeyFileError, match="mode 0755 lets others in"):
        load_master_key(secrets)
    assert not (secrets / "master.key").exists()


def test_project_keys_differ_per_project_and_purpose():
    master = bytes(32)
    cardio, oncology = project_key(master, "demo-cardio"), project_key(master, "demo-oncology")
    assert cardio != oncology and cardio == project_key(master, "demo-cardio")
    assert purpose_key(cardio, "pseudonym/person_id") != purpose_key(cardio, "date-shift")


# -- issue 20: normalization first, Korean dates of birth, labelled record numbers, floats ---------------

EVASIVE = {
    "rrn": [
        "800101 1234567",
        "800101.1234567",
        "800101\u2013 1234567",
        "８００１０１－１２３４５６７",
        "800101\u200b-\u200b1234567",
        "8 0 0 1 0 1 - 1 2 3 4 5 6 7",
    ],
    "phone": ["(02) 583-6318", "+82 (0)10-1234-5678", "０１０-１２３４-５６７８", "010.1234.5678"],
    "email": ["hong123 at naver dot com", "hong123(at)naver[dot]com", "hong123＠naver.com"],
    "dob": ["1963년 12월 4일", "63.12.04", "1963-12-04", "생년월일 확인"],
    "mrn": ["MRN: 10000023", "등록번호 10000023", "chart no 4455667"],
}


@pytest.mark.parametrize(("detector", "text"), [(d, t) for d, ts in EVASIVE.items() for t in ts])
def test_evasive_spellings_are_found_after_normalization(tmp_path, detector, text):
    path = tmp_path / "t.parquet"
    pl.DataFrame({"code": [text, "I10", "E11.9"]}).write_parquet(path)
    table = TableSpec("t", None, False, None, {"code": ColumnRule("code", "keep")})
    found = {f.detector for f in scan_outputs({"t": (path, table)}, KnownIdentifiers())}
    assert detector in found, found


def test_spaced_names_and_digits_of_raw_identifiers_are_found(tmp_path):
    path = tmp_path / "t.parquet"
    pl.DataFrame({"code": ["김 민준", "id 10000023 seen", "I10"]}).write_parquet(path)
    table = TableSpec("t", None, False, None, {"code": ColumnRule("code", "keep")})
    known = KnownIdentifiers(names=pl.Series(["김민준"]), values=pl.Series(["10000023"]))
    found = {(f.detector, f.values) for f in scan_outputs({"t": (path, table)}, known)}
    assert ("name", 1) in found and ("raw_value", 1) in found


def test_whole_floats_are_checked_like_integers(tmp_path):
    path = tmp_path / "t.parquet"
    pl.DataFrame({"value": [8001011234567.0, 1012345678.0, 12.5]}).write_parquet(path)
    table = TableSpec("t", None, False, None, {"value": ColumnRule("value", "keep")})
    assert {f.detector for f in scan_outputs({"t": (path, table)}, KnownIdentifiers())} == {"rrn", "phone"}


def test_codes_and_dates_of_visits_are_not_flagged(tmp_path):
    path = tmp_path / "t.parquet"
    pl.DataFrame({"code": ["E11.9", "A10BA02", "L3061", "mg/dL", "O", "V001"]}).write_parquet(path)
    table = TableSpec("t", None, False, None, {"code": ColumnRule("code", "keep")})
    assert scan_outputs({"t": (path, table)}, KnownIdentifiers()) == []
