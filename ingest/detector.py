"""The identifier detector: a last guard over every output column, run on the files about to be published.

The spec says what should happen; this checks what did. It reads the staged Parquet files back and looks
for identifiers that should not be there, whatever the spec said:

- ``rrn``: Korean resident registration numbers, YYMMDD-GNNNNNN with or without the dash, with a real date
  of birth (not in the future) for the century G implies. The check digit is *not* used: numbers issued
  since October 2020 have random digits after G. Integer columns are checked too (10-13 digit values,
  zero-padded back to 13).
- ``phone``: Korean phone numbers (010-XXXX-XXXX, 02/0XX landlines, 070, +82 forms); integer columns are
  checked for 010 mobile numbers that lost their leading zero.
- ``email``: anything shaped like an e-mail address.
- ``name``: person names from the spec's names files and from the raw columns the spec drops as names,
  found anywhere inside a text value.
- ``raw_value``: values of the raw columns the spec drops as addresses, RRNs, phones, e-mails, insurance
  or record numbers, found as whole values.
- ``unique_id``: a column that was not pseudonymized but looks like an id: almost every value distinct, or
  named like an id (``*_id`` that is not ``*_concept_id``).
- ``free_text``: long, mostly distinct text values.
- ``dob``: dates of birth in Korean and dotted forms (``1963년 12월 4일``, ``63.12.04``, ``1963-12-04``).
- ``mrn``: record numbers introduced as such (``MRN: 1234567``, ``등록번호 …``, ``chart no …``).

Every text value is normalized first (NFKC: full-width digits and letters; every dash one ``-``; odd
spaces), and numbers are also looked for in a *digit skeleton* where separators after a digit are gone
(``800101 – 1234567``, ``(02) 583-6318``, ``+82 (0)10-…``), e-mails with ``at``/``dot`` spelled out are
rewritten, names are also looked for with spaces removed, and every run of 6 or more digits is compared
with the digits of the raw identifiers the spec drops. Float columns are checked like integer ones
(``8001011234567.0``).

This is the second line: kept text columns are allowlisted (ingest.allowlist) before this runs.

Any finding blocks publication unless the column's rule waives that detector with a reason. Reports never
quote a value: examples are shown as shapes (``######-#######``).
"""

from __future__ import annotations

import datetime as dt
import fnmatch
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import polars as pl

from ingest.spec import TableSpec

DETECTORS = ("rrn", "phone", "email", "name", "raw_value", "unique_id", "free_text", "dob", "mrn")

RRN = r"(?:^|[^0-9])([0-9]{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12][0-9]|3[01])-?[0-9][0-9]{6})(?:[^0-9]|$)"
PHONE = (
    r"(?:^|[^0-9])(?:(?:\+|00)82[-. ]?0?|0)(?:1[016789]|2|[3-6][1-5]|[57]0)[-. )]?[0-9]{3,4}[-. ]?[0-9]{4}"
    r"(?:[^0-9]|$)"
)
EMAIL = r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"
_RRN_CAPTURE = r"([0-9]{2})([0-9]{2})([0-9]{2})-?([0-9])"
DOB = (
    r"(?:(?:19|20)?[0-9]{2}\s*년\s*[0-9]{1,2}\s*월\s*[0-9]{1,2}\s*일)"
    r"|(?:(?:^|[^0-9.])(?:19|20)?[0-9]{2}[./-]\s?(?:0?[1-9]|1[0-2])[./-]\s?(?:0?[1-9]|[12][0-9]|3[01])\.?(?:[^0-9]|$))"
    r"|생년월일"
)
MRN = r"(?i)(?:\bmrn|\bchart\s*(?:no|num)|\bpatient\s*(?:no|num|id)|등록\s*번호|병록\s*번호|환자\s*번호)\s*[:#.=]?\s*[0-9]{3,}"
_SEPARATED = r"([0-9])[\s.\-/_,()]+"
_AT = r"(?i)\s*(?:\[\s*at\s*\]|\(\s*at\s*\)|\{\s*at\s*\}|\bat\b|골뱅이)\s*"
_DOT = r"(?i)\s*(?:\[\s*dot\s*\]|\(\s*dot\s*\)|\{\s*dot\s*\}|\bdot\b|닷|점)\s*"
DIGIT_RUN = r"[0-9]{6,}"

UNIQUE_MIN_ROWS = 100
UNIQUE_RATIO = 0.9
FREE_TEXT_MIN_LENGTH = 30
FREE_TEXT_MIN_VALUES = 20
EXAMPLES = 3


@dataclass(frozen=True)
class Finding:
    table: str
    column: str
    detector: str
    values: int
    """Distinct offending values (or 1 for a whole-column finding such as unique_id)."""
    examples: tuple[str, ...]
    """Shapes of a few offending values, never the values."""
    detail: str = ""
    waived: str | None = None
    """The spec's reason, if the column's rule waives this detector."""

    def describe(self) -> str:
        shapes = f" e.g. {', '.join(self.examples)}" if self.examples else ""
        note = f" [waived: {self.waived}]" if self.waived else ""
        return f"{self.table}.{self.column}: {self.detector}: {self.detail or f'{self.values} value(s)'}{shapes}{note}"

    def as_dict(self) -> dict:
        return {
            "table": self.table,
            "column": self.column,
            "detector": self.detector,
            "values": self.values,
            "examples": list(self.examples),
            "detail": self.detail,
            "waived": self.waived,
        }


@dataclass(frozen=True)
class KnownIdentifiers:
    """Raw values of the columns the spec drops as direct identifiers: none may reappear in the output."""

    names: pl.Series = field(default_factory=lambda: pl.Series([], dtype=pl.String))
    """Person names, searched for anywhere inside text values."""
    values: pl.Series = field(default_factory=lambda: pl.Series([], dtype=pl.String))
    """Whole-value identifiers: addresses, RRNs, phones, e-mails, insurance and record numbers."""
    sources: Mapping[str, str] = field(default_factory=dict)
    """``table.column`` -> kind, for the report."""

    @cached_property
    def digits(self) -> pl.Series:
        """The digits of every raw identifier of 6 or more digits, computed once per ingest."""
        digits = self.values.str.replace_all(r"[^0-9]", "")
        return digits.filter(digits.str.len_chars() >= 6).unique()

    @cached_property
    def name_set(self) -> frozenset[str]:
        names = {n for n in self.names.to_list() if n}
        return frozenset(names | {n.replace(" ", "") for n in names})


def shape(value: object) -> str:
    """'900101-1234567' -> '######-#######', '김민준' -> '가가가': what a value looks like, not what it is."""
    out = []
    for ch in str(value)[:24]:
        if ch.isdigit():
            out.append("#")
        elif "\uac00" <= ch <= "\ud7a3":
            out.append("가")
        elif ch.isalpha():
            out.append("a")
        else:
            out.append(ch)
    return "".join(out) + ("…" if len(str(value)) > 24 else "")


def scan_outputs(outputs: Mapping[str, tuple[Path, TableSpec]], known: KnownIdentifiers) -> list[Finding]:
    """Every detector over every column of every output file (table name -> (file, its spec)).

    Text detectors run once over the distinct values of all text columns together, so a large list of
    known raw identifiers is indexed once, not once per column.
    """
    texts: list[pl.DataFrame] = []
    findings: list[Finding] = []
    for name, (path, table) in outputs.items():
        lf = pl.scan_parquet(path)
        schema = lf.collect_schema()
        rows = lf.select(pl.len()).collect().item()
        pseudo = {c for c, r in table.columns.items() if r.transform == "pseudonymize"}
        for column in [c for c, d in schema.items() if d == pl.String]:
            values = lf.select(pl.col(column).unique().drop_nulls()).collect().to_series()
            texts.append(pl.DataFrame({"t": name, "c": column, "v": values}, schema=_TEXT_SCHEMA))
            if column not in pseudo:
                findings += _shape_findings(name, column, values, rows)
        integers = [c for c, d in schema.items() if d.is_integer()]
        floats = [c for c, d in schema.items() if d.is_float()]
        findings += _integer_findings(lf, name, integers)
        findings += _integer_findings(
            lf.with_columns(
                pl.when(pl.col(c) == pl.col(c).round(0)).then(pl.col(c)).cast(pl.Int64, strict=False)
                for c in floats
            ),
            name,
            floats,
        )
        findings += _id_findings(lf, name, [c for c in integers if c not in pseudo], rows)
    if texts:
        findings += _text_findings(pl.concat(texts), known)
    return [_waive(f, outputs[f.table][1]) for f in findings]


def blocking(findings: Sequence[Finding]) -> list[Finding]:
    return [f for f in findings if not f.waived]


_TEXT_SCHEMA = {"t": pl.String, "c": pl.String, "v": pl.String}


def _waive(f: Finding, table: TableSpec) -> Finding:
    rule = table.columns.get(f.column)
    if rule is not None and rule.waiver is not None and f.detector in rule.waiver.detectors:
        return Finding(f.table, f.column, f.detector, f.values, f.examples, f.detail, rule.waiver.reason)
    return f


def _grouped(hits: pl.DataFrame, detector: str, detail: str = "") -> list[Finding]:
    """One finding per (table, column) among rows (t, c, v) that a detector flagged."""
    out = []
    for (table, column), group in hits.group_by(["t", "c"], maintain_order=True):
        values = group["v"]
        out.append(
            Finding(
                table, column, detector, len(values), tuple(shape(v) for v in values.head(EXAMPLES)), detail
            )
        )
    return out


def _normalized(texts: pl.DataFrame) -> pl.DataFrame:
    """Adds ``n`` (normalized text), ``d`` (its digit skeleton) and ``e`` (e-mail words rewritten)."""
    from ingest.normalize import text

    n = text(pl.col("v"))
    return texts.with_columns(n.alias("n")).with_columns(
        pl.col("n").str.replace_all(_SEPARATED, "${1}").alias("d"),
        pl.col("n").str.replace_all(_AT, "@").str.replace_all(_DOT, ".").alias("e"),
    )


def flag_values(values: pl.Series, known: KnownIdentifiers) -> pl.Series:
    """True for each text value any text detector would flag: used to keep such values out of a learned
    categorical set (a phone number shared by 12 persons is still a phone number)."""
    texts = pl.DataFrame({"t": "", "c": "", "v": values.cast(pl.String)}, schema=_TEXT_SCHEMA)
    flagged: set[str] = set()
    # Few values against many known names: look each value's substrings up, rather than build an
    # automaton of every name (the shapes and digit detectors run as usual).
    for finding_rows in _text_hits(texts, KnownIdentifiers(values=known.values)).values():
        flagged |= set(finding_rows["v"].to_list())
    lengths = {len(n) for n in known.name_set}
    for v in values.drop_nulls().cast(pl.String).to_list():
        squeezed = "".join(v.split())
        for text in (v, squeezed):
            if any(text[i : i + n] in known.name_set for n in lengths for i in range(len(text) - n + 1)):
                flagged.add(v)
    return values.cast(pl.String).is_in(pl.Series(sorted(flagged), dtype=pl.String).implode())


def _text_findings(texts: pl.DataFrame, known: KnownIdentifiers) -> list[Finding]:
    out: list[Finding] = []
    for detector, hits in _text_hits(texts, known).items():
        detail = "raw identifier value from a dropped column" if detector == "raw_value" else ""
        out += _grouped(hits, detector, detail)
    return out


def _text_hits(texts: pl.DataFrame, known: KnownIdentifiers) -> dict[str, pl.DataFrame]:
    """Detector -> the rows (t, c, v) it flags."""
    texts = _normalized(texts)
    d, e, n = pl.col("d"), pl.col("e"), pl.col("n")
    base = ["t", "c", "v"]
    out = {
        "rrn": texts.filter(rrn_mask(texts["n"]) | rrn_mask(texts["d"])).select(base),
        "phone": texts.filter(n.str.contains(PHONE) | d.str.contains(PHONE)).select(base),
        "email": texts.filter(n.str.contains(EMAIL) | e.str.contains(EMAIL)).select(base),
        "dob": texts.filter(n.str.contains(DOB)).select(base),
        "mrn": texts.filter(n.str.contains(MRN)).select(base),
    }
    if len(known.names):
        names = known.names.to_list()
        squeezed = n.str.replace_all(r"\s+", "")
        spaced = [name for name in {x.replace(" ", "") for x in names} if len(name) >= 2]
        out["name"] = texts.filter(n.str.contains_any(names) | squeezed.str.contains_any(spaced)).select(base)
    if len(known.values):
        digits = known.digits
        runs = texts.select(pl.col("v"), d.str.extract_all(DIGIT_RUN).alias("r")).explode("r")
        hit_runs = runs.filter(pl.col("r").is_in(digits.implode()))["v"].unique()
        out["raw_value"] = texts.filter(
            pl.col("v").is_in(known.values.implode())
            | n.is_in(known.values.implode())
            | pl.col("v").is_in(hit_runs.implode())
        ).select(base)
    return {k: v for k, v in out.items() if v.height}


def rrn_mask(values: pl.Series) -> pl.Series:
    """True where a text value holds an RRN-shaped number whose date of birth exists for its century."""
    frame = pl.DataFrame({"v": values}).with_row_index("i")
    candidates = frame.filter(pl.col("v").str.contains(RRN))
    if candidates.is_empty():
        return pl.Series([False] * len(values), dtype=pl.Boolean)
    parts = (
        candidates.select("i", m=pl.col("v").str.extract_all(r"[0-9]{6}-?[0-9]{7}"))
        .explode("m")
        .with_columns(pl.col("m").str.extract_groups(_RRN_CAPTURE).alias("g"))
        .unnest("g")
        .rename({"1": "yy", "2": "mm", "3": "dd", "4": "g"})
    )
    century = (
        pl.when(pl.col("g").is_in(["1", "2", "5", "6"]))
        .then(pl.lit("19"))
        .when(pl.col("g").is_in(["3", "4", "7", "8"]))
        .then(pl.lit("20"))
        .otherwise(pl.lit("18"))
    )
    born = pl.concat_str(century, "yy", pl.lit("-"), "mm", pl.lit("-"), "dd").str.to_date(
        "%Y-%m-%d", strict=False
    )
    # A date of birth must exist and must not be in the future (a 2099 birth is no one's RRN).
    valid = parts.filter(born.is_not_null() & (born <= dt.date.today()))["i"].unique()
    return frame["i"].is_in(valid.implode())


def _integer_findings(lf: pl.LazyFrame, table: str, columns: list[str]) -> list[Finding]:
    """RRNs and 010 mobile numbers stored as numbers lose their leading zeros; pad them back and look.
    One pass over the file collects the few candidates of every integer column."""
    if not columns:
        return []
    exprs: list[pl.Expr] = []
    for c in columns:
        col = pl.col(c)
        mobile = (col >= 10**9) & (col < 11 * 10**8)  # 010-XXXX-XXXX without its zero
        # A 010 number without its zero also pads to an RRN of someone born on 1-9 January 2000; it is
        # reported once, as the phone number it far more likely is.
        exprs.append(
            col.filter((col >= 10**9) & (col < 10**13) & ~mobile)
            .cast(pl.String)
            .str.zfill(13)
            .unique()
            .implode()
            .alias(f"r{len(exprs)}")
        )
        exprs.append(
            pl.concat_str(pl.lit("0"), col.filter(mobile).cast(pl.String))
            .unique()
            .implode()
            .alias(f"r{len(exprs)}")
        )
    found = lf.select(exprs).collect().row(0)
    out = []
    for i, c in enumerate(columns):
        rrn, phone = pl.Series(found[2 * i], dtype=pl.String), pl.Series(found[2 * i + 1], dtype=pl.String)
        frame = pl.DataFrame({"t": table, "c": c, "v": rrn}, schema=_TEXT_SCHEMA)
        out += _grouped(frame.filter(rrn_mask(rrn)), "rrn")
        frame = pl.DataFrame({"t": table, "c": c, "v": phone}, schema=_TEXT_SCHEMA)
        out += _grouped(frame.filter(pl.col("v").str.contains(PHONE)), "phone")
    return out


def _looks_like_id_name(column: str) -> bool:
    c = column.lower()
    return (fnmatch.fnmatchcase(c, "*_id") or c == "id") and not fnmatch.fnmatchcase(c, "*concept_id")


def _id_findings(lf: pl.LazyFrame, table: str, columns: list[str], rows: int) -> list[Finding]:
    """Integer columns left as they were but named like ids, or nearly all distinct."""
    out = [
        Finding(table, c, "unique_id", 1, (), "named like an id but not pseudonymized")
        for c in columns
        if _looks_like_id_name(c)
    ]
    rest = [c for c in columns if not _looks_like_id_name(c)]
    if rows < UNIQUE_MIN_ROWS or not rest:
        return out
    distinct = lf.select(pl.col(c).approx_n_unique() for c in rest).collect().row(0)
    for c, n in zip(rest, map(int, distinct)):
        if n / rows >= UNIQUE_RATIO:
            out.append(Finding(table, c, "unique_id", 1, (), f"about {n} distinct values in {rows} rows"))
    return out


def _shape_findings(table: str, column: str, values: pl.Series, rows: int) -> list[Finding]:
    out = []
    if _looks_like_id_name(column):
        out.append(Finding(table, column, "unique_id", 1, (), "named like an id but not pseudonymized"))
    elif rows >= UNIQUE_MIN_ROWS and len(values) / rows >= UNIQUE_RATIO:
        out.append(
            Finding(table, column, "unique_id", 1, (), f"{len(values)} distinct values in {rows} rows")
        )
    if len(values) >= FREE_TEXT_MIN_VALUES:
        median = float(values.str.len_chars().median() or 0)  # type: ignore[arg-type]
        if median >= FREE_TEXT_MIN_LENGTH:
            out.append(Finding(table, column, "free_text", 1, (), f"median length {median:.0f} characters"))
    return out
