"""Direct-identifier patterns: resident registration numbers, phones, emails, dates of birth, long IDs.

Korean resident registration numbers (주민등록번호) are matched by shape and a valid date of birth only:
numbers issued since October 2020 have random digits after the sex/century digit, so the old checksum
proves nothing (KR-HEALTH-DATA.md). The dash is optional.

Patterns are tried in order of severity; a span claimed by one kind is not reported again as another
(a 13-digit RRN without its dash is not also a "long ID-like number").
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date

from exports.domain import CheckOutcome

# kind -> (title, outcome when found)
KINDS: dict[str, tuple[str, CheckOutcome]] = {
    "email": ("Email addresses", CheckOutcome.FAIL),
    "rrn": ("Resident registration numbers (주민등록번호)", CheckOutcome.FAIL),
    "phone": ("Phone numbers", CheckOutcome.FAIL),
    "dob": ("Full dates of birth", CheckOutcome.FAIL),
    "date": ("Full dates (a date of birth must not leave)", CheckOutcome.REVIEW),
    "long_id": ("Long ID-like numbers", CheckOutcome.REVIEW),
}

EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
RRN = re.compile(
    r"(?<![0-9])([0-9]{2})(0[1-9]|1[0-2])(0[1-9]|[12][0-9]|3[01])[-\u2013]?([0-9])[0-9]{6}(?![0-9])"
)
PHONES = (
    # Korean mobile and landline, domestic (0...) or international (+82 ...) form
    re.compile(r"(?<![0-9.])(?:\+82[-. ]?|0)1[016789][-. ]?[0-9]{3,4}[-. ]?[0-9]{4}(?![0-9])"),
    re.compile(r"(?<![0-9.])(?:\+82[-. ]?|0)(?:2|[3-6][1-5]|70)[-. )]?[0-9]{3,4}[-. ]?[0-9]{4}(?![0-9])"),
    re.compile(r"\(0(?:2|[3-6][1-5])\) ?[0-9]{3,4}[-. ][0-9]{4}(?![0-9])"),
    # any other international number: + then 8 to 15 digits in groups
    re.compile(r"(?<![0-9A-Za-z])\+[1-9][0-9 ().-]{6,20}[0-9](?![0-9])"),
)
YMD = re.compile(
    r"(?<![0-9])(19[0-9]{2}|20[0-9]{2})(?:([-./])(0?[1-9]|1[0-2])\2(0?[1-9]|[12][0-9]|3[01])"
    r"|\s*년\s*(0?[1-9]|1[0-2])\s*월\s*(0?[1-9]|[12][0-9]|3[01])\s*일)(?![0-9])"
)
DMY = re.compile(r"(?<![0-9])([0-9]{1,2})([-./])([0-9]{1,2})\2(19[0-9]{2}|20[0-9]{2})(?![0-9])")
COMPACT_YMD = re.compile(r"(?<![0-9])(19[0-9]{2}|20[0-9]{2})(0[1-9]|1[0-2])(0[1-9]|[12][0-9]|3[01])(?![0-9])")
LONG_ID = re.compile(r"(?<![0-9.,])[0-9]{10,}(?![0-9]|[.,][0-9])")
DASHED_ID = re.compile(r"(?<![0-9.])[0-9]{2,8}(?:-[0-9]{2,8}){1,4}(?![0-9]|\.[0-9])")
BIRTH_WORDS = re.compile(r"birth|\bdob\b|d\.o\.b|\bborn\b|생년월일|생일|출생", re.IGNORECASE)

# Cheap pre-filter in the Rust regex dialect (no look-around) used by polars on table cells: a cell
# that does not match cannot match any pattern above except compact dates, which are only looked for
# in columns whose name speaks of birth.
PREFILTER = "|".join(
    [
        r"@",  # emails
        r"[0-9]{6}[-\x{2013}]?[0-9]{7}",  # resident registration numbers
        r"(^|[^0-9.])0[0-9]{1,2}[-. )]*[0-9]{3,4}[-. ]?[0-9]{4}",
        r"\+[0-9]",  # phones
        r"(19|20)[0-9]{2}\s*[-./년]",
        r"[0-9][-./](19|20)[0-9]{2}",  # dates
        r"(^|[^0-9.,])[0-9]{10,}",  # long numbers
        r"[0-9]{2}-[0-9]{2,8}-[0-9]",  # dashed numbers of 3+ groups...
        *(rf"[0-9]{{{k}}}-[0-9]{{{10 - k}}}" for k in range(2, 9)),  # ...and of 2 groups with 10+ digits
    ]
)

_CENTURY = {
    "1": 1900,
    "2": 1900,
    "5": 1900,
    "6": 1900,
    "3": 2000,
    "4": 2000,
    "7": 2000,
    "8": 2000,
    "9": 1800,
    "0": 1800,
}


@dataclass(frozen=True)
class Finding:
    kind: str
    start: int
    end: int
    text: str


def _valid_date(year: int, month: int, day: int) -> bool:
    try:
        date(year, month, day)
    except ValueError:
        return False
    return True


def _rrn_ok(m: re.Match) -> bool:
    yy, mm, dd, g = m.group(1), m.group(2), m.group(3), m.group(4)
    return _valid_date(_CENTURY[g] + int(yy), int(mm), int(dd))


def _ymd_ok(m: re.Match) -> bool:
    year = int(m.group(1))
    month, day = (m.group(3), m.group(4)) if m.group(3) else (m.group(5), m.group(6))
    return _valid_date(year, int(month), int(day))


def _dmy_ok(m: re.Match) -> bool:
    a, b, year = int(m.group(1)), int(m.group(3)), int(m.group(4))
    return _valid_date(year, b, a) or _valid_date(year, a, b)


def _compact_ok(m: re.Match) -> bool:
    return _valid_date(int(m.group(1)), int(m.group(2)), int(m.group(3)))


def _long_dashed_ok(m: re.Match) -> bool:
    return sum(ch.isdigit() for ch in m.group(0)) >= 10


def _international_ok(m: re.Match) -> bool:
    return 8 <= sum(ch.isdigit() for ch in m.group(0)) <= 15


def _candidates(text: str, birth_at: Callable[[int], bool]) -> Iterator[tuple[str, re.Match]]:
    """Every raw match, most severe kind first. ``birth_at(offset)`` says whether a date found at that
    offset sits where a date of birth is being talked about."""
    yield from (("email", m) for m in EMAIL.finditer(text))
    yield from (("rrn", m) for m in RRN.finditer(text) if _rrn_ok(m))
    for i, pattern in enumerate(PHONES):
        international = i == len(PHONES) - 1
        yield from (("phone", m) for m in pattern.finditer(text) if not international or _international_ok(m))
    for m in YMD.finditer(text):
        if _ymd_ok(m):
            yield ("dob" if birth_at(m.start()) else "date"), m
    for m in DMY.finditer(text):
        if _dmy_ok(m):
            yield ("dob" if birth_at(m.start()) else "date"), m
    yield from (("dob", m) for m in COMPACT_YMD.finditer(text) if _compact_ok(m) and birth_at(m.start()))
    yield from (("long_id", m) for m in LONG_ID.finditer(text))
    yield from (("long_id", m) for m in DASHED_ID.finditer(text) if _long_dashed_ok(m))


def find_identifiers(text: str, *, birth_context: bool | Callable[[int], bool] = False) -> list[Finding]:
    """Identifier-like spans in ``text``, without overlaps, in text order. A span already claimed by a
    more severe kind is not reported again."""
    birth_at = birth_context if callable(birth_context) else (lambda _offset: bool(birth_context))
    starts: list[int] = []
    ends: list[int] = []
    found = []
    for kind, m in _candidates(text, birth_at):
        start, end = m.span()
        i = bisect.bisect_left(starts, end) - 1
        if i >= 0 and ends[i] > start:
            continue  # overlaps a claimed span (claimed spans never overlap each other)
        starts.insert(i + 1, start)
        ends.insert(i + 1, end)
        found.append(Finding(kind, start, end, m.group(0)))
    return sorted(found, key=lambda f: f.start)


def find_in_lines(text: str) -> Iterator[tuple[int, Finding]]:
    """(1-based line number, finding) for a whole text, scanned in one pass per pattern. Dates on a
    line that speaks of birth are reported as dates of birth."""
    line_starts = [0] + [m.end() for m in re.finditer("\n", text)]
    birth_lines = {bisect.bisect_right(line_starts, m.start()) for m in BIRTH_WORDS.finditer(text)}

    def line_of(offset: int) -> int:
        return bisect.bisect_right(line_starts, offset)

    for finding in find_identifiers(text, birth_context=lambda offset: line_of(offset) in birth_lines):
        yield line_of(finding.start), finding


def mask(value: str) -> str:
    """Show enough of a match for a checker to find it in the file, not the whole identifier."""
    if len(value) <= 4:
        return value
    keep = max(2, len(value) // 4)
    return value[:keep] + "…" + value[-2:]
