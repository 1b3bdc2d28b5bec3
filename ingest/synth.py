"""Synthetic OMOP CDM raw tables, with planted direct identifiers, for the demo, the tests and the benchmark.

The output looks like a Korean hospital's OMOP extract *before* pseudonymization: real person ids,
dates, 시군구 codes and postcodes, and raw-only columns a hospital export really carries by mistake
(patient name, resident registration number, phone, e-mail, address, insurance number, a free-text visit
note that repeats some of them). The pipeline must remove every one of them; the tests check that it does.

Everything is vectorised (numpy for the random draws, polars for strings) and seeded, so the same
``(persons, seed)`` always gives byte-identical tables. Distributions are plausible, not calibrated:
- ages follow a hospital-skewed Korean population pyramid (reference date 2025-01-01);
- regions follow a Seoul hospital's catchment (85 % Seoul and Gyeonggi, the rest by the 2024 resident
  shares of the 17 시도), then a handful of real 시군구 per 시도;
- visits per person are negative-binomial with a mean rising with age (about 4 overall);
- conditions, drugs and measurements are Poisson per visit, with OMOP standard concept ids and the
  ICD-10 (KCD) / ATC / lab codes a Korean source system would carry in ``*_source_value``;
- about 2 % of condition records fall into the sensitive categories of the Korean guideline (mental
  illness, STI, HIV, rare disease, abuse, abortion), so the pipeline's sensitive-condition gate has work.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

REFERENCE_DATE = dt.date(2025, 1, 1)
EPOCH = dt.date(1970, 1, 1)
FIRST_VISIT = dt.date(2015, 1, 1)
LAST_VISIT = dt.date(2024, 12, 31)

TABLES = ("person", "visit_occurrence", "condition_occurrence", "drug_exposure", "measurement")
RAW_IDENTIFIER_COLUMNS = {
    "person": ("patient_name", "rrn", "phone", "email", "address", "insurance_no", "person_source_value"),
    "visit_occurrence": ("visit_note",),
}
"""Columns that exist only in the raw extract: direct identifiers the pipeline must never publish."""

# Age bands (years at REFERENCE_DATE) and their share of a tertiary hospital's patients.
_AGE_BANDS = np.array([0, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100])
_AGE_SHARE = np.array([6.0, 6.5, 9.5, 11.0, 13.5, 17.0, 17.5, 11.5, 6.5, 1.0])

# 시도: (code, name, share of residents %, first 2 digits of its 5-digit postcodes, [(시군구 code, name)]).
_SIDO: tuple[tuple[str, str, float, tuple[int, int], tuple[tuple[str, str], ...]], ...] = (
    (
        "11",
        "서울특별시",
        18.2,
        (1, 8),
        (
            ("11110", "종로구"),
            ("11140", "중구"),
            ("11170", "용산구"),
            ("11200", "성동구"),
            ("11230", "동대문구"),
            ("11290", "성북구"),
            ("11350", "노원구"),
            ("11380", "은평구"),
            ("11440", "마포구"),
            ("11500", "강서구"),
            ("11530", "구로구"),
            ("11560", "영등포구"),
            ("11620", "관악구"),
            ("11650", "서초구"),
            ("11680", "강남구"),
            ("11710", "송파구"),
            ("11740", "강동구"),
        ),
    ),
    (
        "26",
        "부산광역시",
        6.4,
        (46, 49),
        (
            ("26110", "중구"),
            ("26230", "부산진구"),
            ("26260", "동래구"),
            ("26350", "해운대구"),
            ("26380", "사하구"),
            ("26410", "금정구"),
            ("26710", "기장군"),
        ),
    ),
    (
        "27",
        "대구광역시",
        4.6,
        (41, 43),
        (
            ("27110", "중구"),
            ("27140", "동구"),
            ("27230", "북구"),
            ("27260", "수성구"),
            ("27290", "달서구"),
            ("27710", "달성군"),
        ),
    ),
    (
        "28",
        "인천광역시",
        5.8,
        (21, 23),
        (
            ("28177", "미추홀구"),
            ("28185", "연수구"),
            ("28200", "남동구"),
            ("28237", "부평구"),
            ("28260", "서구"),
            ("28710", "강화군"),
            ("28720", "옹진군"),
        ),
    ),
    (
        "29",
        "광주광역시",
        2.8,
        (61, 62),
        (("29110", "동구"), ("29140", "서구"), ("29155", "남구"), ("29170", "북구"), ("29200", "광산구")),
    ),
    (
        "30",
        "대전광역시",
        2.8,
        (34, 35),
        (("30110", "동구"), ("30140", "중구"), ("30170", "서구"), ("30200", "유성구"), ("30230", "대덕구")),
    ),
    (
        "31",
        "울산광역시",
        2.1,
        (44, 45),
        (("31110", "중구"), ("31140", "남구"), ("31200", "북구"), ("31710", "울주군")),
    ),
    ("36", "세종특별자치시", 0.8, (30, 30), (("36110", "세종시"),)),
    (
        "41",
        "경기도",
        26.6,
        (10, 18),
        (
            ("41111", "수원시 장안구"),
            ("41117", "수원시 영통구"),
            ("41135", "성남시 분당구"),
            ("41150", "의정부시"),
            ("41173", "안양시 동안구"),
            ("41190", "부천시"),
            ("41220", "평택시"),
            ("41273", "안산시 단원구"),
            ("41285", "고양시 일산동구"),
            ("41360", "남양주시"),
            ("41390", "시흥시"),
            ("41465", "용인시 수지구"),
            ("41480", "파주시"),
            ("41570", "김포시"),
            ("41590", "화성시"),
            ("41820", "가평군"),
        ),
    ),
    (
        "51",
        "강원특별자치도",
        2.9,
        (24, 26),
        (
            ("51110", "춘천시"),
            ("51130", "원주시"),
            ("51150", "강릉시"),
            ("51210", "속초시"),
            ("51720", "홍천군"),
        ),
    ),
    (
        "43",
        "충청북도",
        3.1,
        (27, 29),
        (
            ("43111", "청주시 상당구"),
            ("43113", "청주시 흥덕구"),
            ("43130", "충주시"),
            ("43150", "제천시"),
            ("43800", "단양군"),
        ),
    ),
    (
        "44",
        "충청남도",
        4.1,
        (31, 33),
        (
            ("44131", "천안시 동남구"),
            ("44133", "천안시 서북구"),
            ("44150", "공주시"),
            ("44200", "아산시"),
            ("44210", "서산시"),
            ("44825", "태안군"),
        ),
    ),
    (
        "52",
        "전북특별자치도",
        3.4,
        (54, 56),
        (
            ("52111", "전주시 완산구"),
            ("52113", "전주시 덕진구"),
            ("52130", "군산시"),
            ("52140", "익산시"),
            ("52190", "남원시"),
        ),
    ),
    (
        "46",
        "전라남도",
        3.5,
        (57, 60),
        (
            ("46110", "목포시"),
            ("46130", "여수시"),
            ("46150", "순천시"),
            ("46170", "나주시"),
            ("46230", "광양시"),
        ),
    ),
    (
        "47",
        "경상북도",
        4.9,
        (36, 40),
        (
            ("47111", "포항시 남구"),
            ("47130", "경주시"),
            ("47170", "안동시"),
            ("47190", "구미시"),
            ("47290", "경산시"),
            ("47940", "울릉군"),
        ),
    ),
    (
        "48",
        "경상남도",
        6.3,
        (50, 53),
        (
            ("48121", "창원시 의창구"),
            ("48123", "창원시 성산구"),
            ("48170", "진주시"),
            ("48250", "김해시"),
            ("48310", "거제시"),
            ("48330", "양산시"),
        ),
    ),
    ("50", "제주특별자치도", 1.3, (63, 63), (("50110", "제주시"), ("50130", "서귀포시"))),
)

_SURNAMES = (
    "김",
    "이",
    "박",
    "최",
    "정",
    "강",
    "조",
    "윤",
    "장",
    "임",
    "한",
    "오",
    "서",
    "신",
    "권",
    "황",
    "안",
    "송",
    "류",
    "전",
    "홍",
    "고",
    "문",
    "양",
    "손",
    "배",
    "백",
    "허",
    "유",
    "남",
)
_SURNAME_SHARE = (
    21.5,
    14.7,
    8.4,
    4.7,
    4.4,
    2.4,
    2.1,
    2.1,
    2.0,
    1.7,
    1.5,
    1.5,
    1.5,
    1.5,
    1.4,
    1.4,
    1.4,
    1.3,
    1.2,
    1.1,
    1.1,
    0.9,
    0.9,
    0.9,
    0.9,
    0.8,
    0.8,
    0.6,
    0.6,
    0.6,
)
_GIVEN_FIRST = (
    "민",
    "서",
    "지",
    "현",
    "준",
    "영",
    "수",
    "은",
    "정",
    "우",
    "진",
    "하",
    "윤",
    "도",
    "예",
    "성",
    "혜",
    "경",
    "재",
    "동",
    "상",
    "미",
    "승",
    "태",
    "유",
    "주",
    "시",
    "채",
    "연",
    "건",
)
_GIVEN_SECOND = (
    "준",
    "우",
    "서",
    "윤",
    "연",
    "민",
    "현",
    "진",
    "호",
    "희",
    "숙",
    "철",
    "아",
    "원",
    "훈",
    "빈",
    "은",
    "영",
    "수",
    "율",
    "혁",
    "린",
    "경",
    "석",
    "자",
    "순",
    "선",
    "기",
    "환",
    "나",
)
_ROADS = (
    "중앙로",
    "번영로",
    "대학로",
    "시청로",
    "역전로",
    "문화로",
    "평화로",
    "희망로",
    "충장로",
    "세종대로",
    "테헤란로",
    "해운대로",
    "달구벌대로",
    "공원로",
    "산업로",
    "동서대로",
)
_MAIL_DOMAINS = ("naver.com", "daum.net", "gmail.com", "hanmail.net", "kakao.com", "nate.com")
_COMPLAINTS = ("흉통", "두통", "복통", "호흡곤란", "발열", "기침", "어지럼증", "요통", "부종", "피로감")

# (OMOP concept id, ICD-10/KCD code, relative frequency, sensitive category or "").
# Sensitive rows whose standard concept we do not ship carry concept id 0 (unmapped), as local codes often do.
_CONDITIONS: tuple[tuple[int, str, float, str], ...] = (
    (316866, "I10", 16.0, ""),
    (201826, "E11.9", 11.0, ""),
    (432867, "E78.5", 9.0, ""),
    (4329847, "I21.9", 2.5, ""),
    (316139, "I50.9", 2.5, ""),
    (313217, "I48.9", 2.5, ""),
    (4185932, "I25.9", 3.0, ""),
    (255573, "J44.9", 2.5, ""),
    (317009, "J45.9", 3.0, ""),
    (255848, "J18.9", 3.0, ""),
    (81902, "N39.0", 3.0, ""),
    (80180, "M19.9", 5.0, ""),
    (80809, "M06.9", 1.0, ""),
    (140673, "E03.9", 2.5, ""),
    (433736, "E66.9", 2.0, ""),
    (4182210, "F03", 1.5, ""),
    (192671, "K92.2", 1.0, ""),
    (318800, "K21.9", 6.0, ""),
    (443601, "N18.9", 2.0, ""),
    (4006969, "J06.9", 12.0, ""),
    (440383, "F32.9", 0.9, "mental_illness"),
    (435783, "F20.9", 0.2, "mental_illness"),
    (436665, "F31.9", 0.2, "mental_illness"),
    (439727, "B24", 0.05, "hiv"),
    (0, "A54.9", 0.05, "sti"),
    (0, "A53.9", 0.05, "sti"),
    (0, "E75.2", 0.03, "rare_disease"),
    (0, "G12.2", 0.02, "rare_disease"),
    (0, "T74.1", 0.02, "abuse"),
    (0, "O04.9", 0.03, "abortion"),
)
# (OMOP concept id, ATC code) of common ingredients.
_DRUGS: tuple[tuple[int, str], ...] = (
    (1503297, "A10BA02"),
    (1545958, "C10AA05"),
    (1332418, "C08CA01"),
    (1112807, "B01AC06"),
    (1307046, "C07AB02"),
    (1308216, "C09AA03"),
    (1310149, "B01AA03"),
    (1125315, "N02BE01"),
    (1177480, "M01AE01"),
    (1154343, "R03AC02"),
    (1501700, "H03AA01"),
    (1539403, "C10AA01"),
    (948078, "A02BC01"),
    (1713332, "J01CA04"),
    (974166, "C03CA01"),
)
# (OMOP concept id, lab code, unit concept id, unit, mean, sd, normal low, normal high).
_LABS: tuple[tuple[int, str, int, str, float, float, float, float], ...] = (
    (3004249, "V001", 8876, "mmHg", 128.0, 17.0, 90.0, 120.0),
    (3012888, "V002", 8876, "mmHg", 79.0, 11.0, 60.0, 80.0),
    (3025315, "V003", 9529, "kg", 64.0, 12.0, 40.0, 100.0),
    (3004410, "L2010", 8554, "%", 6.1, 1.0, 4.0, 5.6),
    (3016723, "L3041", 8840, "mg/dL", 0.95, 0.3, 0.6, 1.2),
    (3027114, "L3061", 8840, "mg/dL", 185.0, 38.0, 0.0, 200.0),
    (3007070, "L3062", 8840, "mg/dL", 52.0, 13.0, 40.0, 60.0),
    (3028437, "L3063", 8840, "mg/dL", 110.0, 33.0, 0.0, 130.0),
    (3022192, "L3064", 8840, "mg/dL", 140.0, 70.0, 0.0, 150.0),
    (3000963, "L1012", 8713, "g/dL", 13.5, 1.7, 12.0, 16.0),
    (3004501, "L3011", 8840, "mg/dL", 108.0, 28.0, 70.0, 100.0),
)

MALE, FEMALE = 8507, 8532
EHR = 32817


@dataclass(frozen=True)
class SynthResult:
    """Where the raw tables went and how many rows each has."""

    out_dir: Path
    files: dict[str, Path]
    rows: dict[str, int]


def synthesize(
    out_dir: Path,
    persons: int = 1000,
    *,
    seed: int = 20250101,
    fmt: str = "csv",
    on_table: Callable[[str, int], None] | None = None,
) -> SynthResult:
    """Write raw synthetic OMOP tables (``<table>.csv`` or ``<table>.parquet``) into ``out_dir``.

    ``on_table(name, rows)`` is called after each table is written (the CLI drives a progress bar with it).
    """
    if persons < 1:
        raise ValueError("persons must be at least 1")
    if fmt not in ("csv", "parquet"):
        raise ValueError(f"format must be csv or parquet, not {fmt!r}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    files: dict[str, Path] = {}
    rows: dict[str, int] = {}

    def write(name: str, frame: pl.DataFrame) -> None:
        path = out_dir / f"{name}.{fmt}"
        if fmt == "csv":
            frame.write_csv(path)
        else:
            frame.write_parquet(path)
        files[name], rows[name] = path, frame.height
        if on_table:
            on_table(name, frame.height)

    person = _person(rng, persons)
    write("person", person)
    visits = _visits(rng, person)
    write("visit_occurrence", visits)
    parent = visits.select(
        "visit_occurrence_id",
        "person_id",
        "visit_start_date",
        "visit_end_date",
        "provider_id",
        "visit_concept_id",
    )
    del visits
    write("condition_occurrence", _conditions(rng, parent))
    write("drug_exposure", _drugs(rng, parent))
    write("measurement", _measurements(rng, parent))
    return SynthResult(out_dir, files, rows)


def _days(d: dt.date) -> int:
    return (d - EPOCH).days


def _choice(rng: np.random.Generator, n: int, weights) -> np.ndarray:
    p = np.asarray(weights, dtype=float)
    return rng.choice(len(p), size=n, p=p / p.sum())


def _digits(rng: np.random.Generator, n: int, width: int) -> pl.Series:
    """n random zero-padded digit strings of a given width."""
    return pl.Series(rng.integers(0, 10**width, n)).cast(pl.String).str.zfill(width)


def _person(rng: np.random.Generator, n: int) -> pl.DataFrame:
    band = _choice(rng, n, _AGE_SHARE)
    age_days = (_AGE_BANDS[band] * 365.25 + rng.uniform(0, 10 * 365.25, n)).astype(np.int64)
    birth = _days(REFERENCE_DATE) - age_days
    female = rng.random(n) < 0.51
    sido_i = _choice(rng, n, _catchment())
    sgg_code = np.empty(n, dtype=object)
    sgg_name = np.empty(n, dtype=object)
    sido_name = np.empty(n, dtype=object)
    zip_code = np.empty(n, dtype=np.int64)
    for i, (_, name, _, (zlo, zhi), districts) in enumerate(_SIDO):
        idx = np.flatnonzero(sido_i == i)
        # Zipf-ish within a 시도: the first districts listed are the populous ones.
        pick = _choice(rng, len(idx), 1.0 / np.arange(1, len(districts) + 1) ** 0.6)
        sgg_code[idx] = np.array([d[0] for d in districts], dtype=object)[pick]
        sgg_name[idx] = np.array([d[1] for d in districts], dtype=object)[pick]
        sido_name[idx] = name
        zip_code[idx] = rng.integers(zlo * 1000, zhi * 1000 + 1000, len(idx))
    born = pl.Series("birth", birth.astype(np.int32)).cast(pl.Date)
    frame = pl.DataFrame(
        {
            "person_id": np.arange(1, n + 1, dtype=np.int64),
            "gender_concept_id": np.where(female, FEMALE, MALE).astype(np.int64),
            "birth": born,
            "race_concept_id": np.zeros(n, dtype=np.int64),
            "ethnicity_concept_id": np.zeros(n, dtype=np.int64),
            "location_source_value": pl.Series(sgg_code, dtype=pl.String),
            "zip": pl.Series(zip_code).cast(pl.String).str.zfill(5),
            "provider_id": rng.integers(1, 801, n),
            "care_site_id": rng.integers(1, 41, n),
            "mrn": pl.Series(rng.permutation(n) + 10_000_000).cast(pl.String),
            "gender_source_value": np.where(female, "F", "M"),
            "female": female,
            "sido_name": pl.Series(sido_name, dtype=pl.String),
            "sgg_name": pl.Series(sgg_name, dtype=pl.String),
        }
    )
    return frame.select(
        "person_id",
        "gender_concept_id",
        pl.col("birth").dt.year().cast(pl.Int64).alias("year_of_birth"),
        pl.col("birth").dt.month().cast(pl.Int64).alias("month_of_birth"),
        pl.col("birth").dt.day().cast(pl.Int64).alias("day_of_birth"),
        pl.col("birth").cast(pl.Datetime("us")).alias("birth_datetime"),
        "race_concept_id",
        "ethnicity_concept_id",
        "location_source_value",
        "zip",
        "provider_id",
        "care_site_id",
        pl.col("mrn").alias("person_source_value"),
        "gender_source_value",
        # Raw-only direct identifiers below: the pipeline must drop every one of them.
        _names(rng, n).alias("patient_name"),
        _rrn(rng, frame).alias("rrn"),
        _phones(rng, n).alias("phone"),
        _emails(rng, n).alias("email"),
        pl.concat_str(
            "sido_name",
            pl.lit(" "),
            "sgg_name",
            pl.lit(" "),
            pl.Series(np.array(_ROADS, dtype=object)[rng.integers(0, len(_ROADS), n)], dtype=pl.String),
            pl.lit(" "),
            pl.Series(rng.integers(1, 400, n)).cast(pl.String),
        ).alias("address"),
        _digits(rng, n, 11).alias("insurance_no"),
    )


def _catchment() -> np.ndarray:
    """Where a Seoul tertiary hospital's patients live: mostly Seoul and Gyeonggi, the rest of the country
    in proportion to its population (40 % of patients come from outside Seoul, 15 % from beyond the capital
    region)."""
    share = np.array([s[2] for s in _SIDO])
    local = np.array([{"11": 60.0, "41": 25.0}.get(s[0], 0.0) for s in _SIDO])
    return 0.85 * local / local.sum() + 0.15 * share / share.sum()


def _names(rng: np.random.Generator, n: int) -> pl.Series:
    sur = np.array(_SURNAMES, dtype=object)[_choice(rng, n, _SURNAME_SHARE)]
    g1 = np.array(_GIVEN_FIRST, dtype=object)[rng.integers(0, len(_GIVEN_FIRST), n)]
    g2 = np.array(_GIVEN_SECOND, dtype=object)[rng.integers(0, len(_GIVEN_SECOND), n)]
    return pl.Series(sur + g1 + g2, dtype=pl.String)


def _rrn(rng: np.random.Generator, person: pl.DataFrame) -> pl.Series:
    """YYMMDD-GNNNNNN with G from century and sex (2 % foreigners: 5-8); a fifth written without the dash."""
    n = person.height
    year = person["birth"].dt.year().to_numpy()
    female = person["female"].to_numpy()
    century = np.select([year < 1900, year < 2000], [0, 1], 2)
    base = np.array([9, 1, 3])[century] + female  # 9/0 for the 1800s wraps below
    foreign = (rng.random(n) < 0.02) & (century > 0)
    base = np.where(foreign, base + 4, base) % 10
    dash = np.where(rng.random(n) < 0.8, "-", "")
    return (
        pl.DataFrame({"d": person["birth"], "g": base, "dash": dash, "rest": _digits(rng, n, 6)})
        .select(pl.concat_str(pl.col("d").dt.strftime("%y%m%d"), "dash", pl.col("g").cast(pl.String), "rest"))
        .to_series()
    )


def _phones(rng: np.random.Generator, n: int) -> pl.Series:
    """Mostly 010-XXXX-XXXX; some without dashes, some Seoul landlines, some +82."""
    kind = _choice(rng, n, [70, 12, 10, 8])
    mid, last = _digits(rng, n, 4), _digits(rng, n, 4)
    frame = pl.DataFrame({"k": kind, "m": mid, "l": last, "m3": mid.str.slice(1)})
    return frame.select(
        pl.when(pl.col("k") == 0)
        .then(pl.concat_str(pl.lit("010-"), "m", pl.lit("-"), "l"))
        .when(pl.col("k") == 1)
        .then(pl.concat_str(pl.lit("010"), "m", "l"))
        .when(pl.col("k") == 2)
        .then(pl.concat_str(pl.lit("02-"), "m3", pl.lit("-"), "l"))
        .otherwise(pl.concat_str(pl.lit("+82-10-"), "m", pl.lit("-"), "l"))
    ).to_series()


def _emails(rng: np.random.Generator, n: int) -> pl.Series:
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"), dtype=object)
    stem = letters[rng.integers(0, 26, n)] + letters[rng.integers(0, 26, n)] + letters[rng.integers(0, 26, n)]
    domain = np.array(_MAIL_DOMAINS, dtype=object)[rng.integers(0, len(_MAIL_DOMAINS), n)]
    return pl.Series(
        stem + rng.integers(10, 100000, n).astype(str).astype(object) + "@" + domain, dtype=pl.String
    )


def _visits(rng: np.random.Generator, person: pl.DataFrame) -> pl.DataFrame:
    n = person.height
    age = REFERENCE_DATE.year - person["year_of_birth"].to_numpy()
    mean = 0.9 + np.clip(age, 0, 100) / 22.0
    r = 1.5  # negative binomial shape: heavy tail of frequent attenders
    counts = rng.negative_binomial(r, r / (r + mean)) + 1
    owner = np.repeat(np.arange(n), counts)
    m = len(owner)
    birth = (
        person.select(pl.date(pl.col("year_of_birth"), pl.col("month_of_birth"), pl.col("day_of_birth")))
        .to_series()
        .cast(pl.Int32)
        .to_numpy()
    )
    lo = np.maximum(birth[owner], _days(FIRST_VISIT))
    start = lo + (rng.random(m) * (_days(LAST_VISIT) - lo + 1)).astype(np.int64)
    kind = _choice(rng, m, [85, 10, 5])  # outpatient, inpatient, emergency
    concept = np.array([9202, 9201, 9203])[kind]
    los = np.where(kind == 1, rng.geometric(1 / 6.5, m), np.where(kind == 2, rng.integers(0, 2, m), 0))
    end = np.minimum(start + los, _days(LAST_VISIT))
    take = pl.Series(owner)
    complaint = pl.Series(
        np.array(_COMPLAINTS, dtype=object)[rng.integers(0, len(_COMPLAINTS), m)], dtype=pl.String
    )
    who = person.select(pl.col("patient_name", "rrn", "phone").gather(take)).with_columns(c=complaint)
    # A fifth of the visits carry a free-text note that repeats the patient's identifiers.
    note = who.select(
        pl.when(pl.Series(rng.random(m) < 0.2)).then(
            pl.concat_str(
                "patient_name",
                pl.lit(" 님("),
                "rrn",
                pl.lit(") "),
                "c",
                pl.lit(" 호소하여 내원. 보호자 연락처 "),
                "phone",
            )
        )
    ).to_series()
    person_ids = person["person_id"].to_numpy()[owner]
    return pl.DataFrame(
        {
            "visit_occurrence_id": np.arange(1, m + 1, dtype=np.int64),
            "person_id": person_ids,
            "visit_concept_id": concept.astype(np.int64),
            "visit_start_date": pl.Series(start.astype(np.int32)).cast(pl.Date),
            "visit_start_datetime": (
                pl.Series(
                    start.astype(np.int64) * 86_400_000_000 + rng.integers(8, 18, m) * 3_600_000_000
                ).cast(pl.Datetime("us"))
            ),
            "visit_end_date": pl.Series(end.astype(np.int32)).cast(pl.Date),
            "visit_type_concept_id": np.full(m, EHR, dtype=np.int64),
            "provider_id": rng.integers(1, 801, m),
            "care_site_id": rng.integers(1, 41, m),
            "visit_source_value": np.array(["O", "I", "E"])[kind],
            "visit_note": note,
        }
    )


def _children(rng: np.random.Generator, visits: pl.DataFrame, mean: float) -> tuple[np.ndarray, pl.DataFrame]:
    """Poisson(mean) child records per visit (inpatient stays get one more); returns owner rows and parents."""
    inpatient = visits["visit_concept_id"].to_numpy() == 9201
    counts = rng.poisson(mean, visits.height) + inpatient
    owner = np.repeat(np.arange(visits.height), counts)
    return owner, visits[owner]


def _conditions(rng: np.random.Generator, visits: pl.DataFrame) -> pl.DataFrame:
    owner, parent = _children(rng, visits, 1.25)
    m = len(owner)
    which = _choice(rng, m, [c[2] for c in _CONDITIONS])
    ended = rng.random(m) < 0.3
    start = parent["visit_start_date"]
    return pl.DataFrame(
        {
            "condition_occurrence_id": np.arange(1, m + 1, dtype=np.int64),
            "person_id": parent["person_id"],
            "condition_concept_id": np.array([c[0] for c in _CONDITIONS], dtype=np.int64)[which],
            "condition_start_date": start,
            "condition_end_date": pl.Series(start.cast(pl.Int32).to_numpy() + rng.integers(1, 60, m))
            .cast(pl.Int32)
            .cast(pl.Date)
            .set(pl.Series(~ended), None),
            "condition_type_concept_id": np.full(m, EHR, dtype=np.int64),
            "provider_id": parent["provider_id"],
            "visit_occurrence_id": parent["visit_occurrence_id"],
            "condition_source_value": np.array([c[1] for c in _CONDITIONS])[which],
        }
    )


def _drugs(rng: np.random.Generator, visits: pl.DataFrame) -> pl.DataFrame:
    owner, parent = _children(rng, visits, 1.1)
    m = len(owner)
    which = rng.integers(0, len(_DRUGS), m)
    supply = np.array([3, 7, 14, 28, 30, 90])[_choice(rng, m, [10, 25, 15, 25, 15, 10])]
    start = parent["visit_start_date"].cast(pl.Int32).to_numpy()
    return pl.DataFrame(
        {
            "drug_exposure_id": np.arange(1, m + 1, dtype=np.int64),
            "person_id": parent["person_id"],
            "drug_concept_id": np.array([d[0] for d in _DRUGS], dtype=np.int64)[which],
            "drug_exposure_start_date": parent["visit_start_date"],
            "drug_exposure_end_date": pl.Series((start + supply - 1).astype(np.int32)).cast(pl.Date),
            "drug_type_concept_id": np.full(m, 32838, dtype=np.int64),
            "quantity": (supply * rng.choice([1, 2, 3], m)).astype(np.float64),
            "days_supply": supply.astype(np.int64),
            "route_concept_id": np.full(m, 4132161, dtype=np.int64),
            "provider_id": parent["provider_id"],
            "visit_occurrence_id": parent["visit_occurrence_id"],
            "drug_source_value": np.array([d[1] for d in _DRUGS])[which],
        }
    )


def _measurements(rng: np.random.Generator, visits: pl.DataFrame) -> pl.DataFrame:
    owner, parent = _children(rng, visits, 1.8)
    m = len(owner)
    which = rng.integers(0, len(_LABS), m)
    lab = {
        k: np.array([row[i] for row in _LABS])[which]
        for i, k in enumerate(("concept", "code", "unit_concept", "unit", "mean", "sd", "low", "high"))
    }
    value = np.round(np.maximum(rng.normal(lab["mean"], lab["sd"]), 0.0), 2)
    return pl.DataFrame(
        {
            "measurement_id": np.arange(1, m + 1, dtype=np.int64),
            "person_id": parent["person_id"],
            "measurement_concept_id": lab["concept"].astype(np.int64),
            "measurement_date": parent["visit_start_date"],
            "measurement_type_concept_id": np.full(m, 44818702, dtype=np.int64),
            "value_as_number": value,
            "unit_concept_id": lab["unit_concept"].astype(np.int64),
            "range_low": lab["low"].astype(np.float64),
            "range_high": lab["high"].astype(np.float64),
            "provider_id": parent["provider_id"],
            "visit_occurrence_id": parent["visit_occurrence_id"],
            "measurement_source_value": lab["code"],
            "unit_source_value": lab["unit"],
        }
    )
