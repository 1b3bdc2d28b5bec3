"""Carrying capacity: how many bytes a file holds beside what a person reviewing it can see, and the
cells or lines that look like they carry data rather than results.

Findings (each at least "review", the cells listed and highlighted on the request page):

- long digit runs (an id, a date of birth, or digits as a code);
- base64- or hex-looking strings;
- high-entropy cells (random-looking text: compressed or encrypted bytes written as characters);
- cells much longer than their column's median (a payload riding in a table of short numbers);
- in an image, low-order-bit noise in flat areas (pixels that differ from their neighbour by one step:
  invisible on screen, and the classic place to hide bytes in a picture).

The checks read the canonical bytes (exports.canonical), so there are no invisible characters to find.
"""

from __future__ import annotations

import io
import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

import polars as pl

from exports.domain import CheckOutcome, CheckResult, Location

SEPARATORS = {"csv": ",", "tsv": "\t"}
DIGIT_RUN = 10
TOKEN_MIN = 16
ENTROPY_BITS = 3.5
"""Bits per character from which a cell of TOKEN_MIN or more characters reads as random."""
MAX_LISTED = 10_000
SAMPLE_PIXELS = 1 << 20
"""Rows enough for about this many pixels are examined for noise and colours: the cost stays flat."""
NEAR_STEPS = 2
"""Neighbours this many steps apart or fewer look the same to a person."""
NOISE_RATIO = 0.2
"""Share of near-equal neighbour pairs (off by one step) among equal-or-near pairs that reads as noise."""
_CANDIDATE = re.compile(rf"[0-9]{{{DIGIT_RUN},}}|[A-Za-z0-9+/_=-]{{{TOKEN_MIN},}}")
_CANDIDATE_RS = rf"[0-9]{{{DIGIT_RUN},}}|[A-Za-z0-9+/_=-]{{{TOKEN_MIN},}}"
_HEX = re.compile(r"[0-9a-fA-F]+")


def token_kind(token: str) -> str | None:
    """What a run of characters looks like: a digit run, hex, base64, or nothing suspicious."""
    if token.isdigit():
        return "long digit run" if len(token) >= DIGIT_RUN else None
    if len(token) < TOKEN_MIN:
        return None
    has_digit = any(c.isdigit() for c in token)
    if _HEX.fullmatch(token) and has_digit:
        return "hex-looking string"
    if has_digit and any(c.isupper() for c in token) and any(c.islower() for c in token):
        return "base64-looking string"
    return None


def entropy(text: str) -> float:
    counts = Counter(text)
    n = len(text)
    return -sum(c / n * math.log2(c / n) for c in counts.values())


def cell_flag(value: str, median: float | None = None) -> str | None:
    """Why a cell (or a line of text) looks like it carries data, or None."""
    for match in _CANDIDATE.finditer(value):
        kind = token_kind(match.group())
        if kind:
            return kind
    stripped = value.replace(" ", "")
    if len(stripped) >= TOKEN_MIN and entropy(stripped) >= ENTROPY_BITS:
        return "high-entropy cell"
    if median is not None and len(value) > max(3 * median, median + TOKEN_MIN):
        return f"much longer than its column's median ({len(value)} vs {median:g} characters)"
    return None


def check(data: bytes, filetype: str) -> list[CheckResult]:
    """The carrying-capacity result for one canonical file."""
    if filetype == "png":
        return [_image(data)]
    if filetype in SEPARATORS:
        return [_table(data, SEPARATORS[filetype])]
    return [_text(data)]


def _result(findings: list[Location], total: int, details: dict[str, Any], what: str) -> CheckResult:
    if not total:
        return CheckResult(
            "capacity", "Carrying capacity", CheckOutcome.PASS, f"{what}; nothing looks like hidden data", (),
            0, details,
        )  # fmt: skip
    return CheckResult(
        "capacity",
        "Carrying capacity",
        CheckOutcome.REVIEW,
        f"{what}; {total} cell(s) or line(s) look like they carry data (digit runs, base64 or hex, random "
        "text, or far longer than their column): read them, they leave with the file",
        tuple(findings[:MAX_LISTED]),
        total,
        details,
    )


def column_medians(frame: pl.DataFrame) -> dict[str, float]:
    return {name: float(frame[name].fill_null("").str.len_chars().median() or 0.0) for name in frame.columns}


def _table(data: bytes, sep: str) -> CheckResult:
    try:
        frame = pl.read_csv(io.BytesIO(data), separator=sep, infer_schema=False, has_header=True,
                            raise_if_empty=False, quote_char='"')  # fmt: skip
    except (pl.exceptions.PolarsError, ValueError) as exc:
        return CheckResult("capacity", "Carrying capacity", CheckOutcome.REVIEW,
                           f"{len(data)} bytes; the table could not be measured ({str(exc)[:100]}): read it whole",
                           (), 0, {"bytes": len(data), "visible": "see the pages below"})  # fmt: skip
    medians = column_medians(frame)
    findings: list[Location] = []
    total = 0
    for name in frame.columns:
        values = frame[name].fill_null("")
        lengths = values.str.len_chars()
        limit = max(3 * medians[name], medians[name] + TOKEN_MIN)
        suspect = values.str.contains(_CANDIDATE_RS) | (lengths >= TOKEN_MIN) | (lengths > limit)
        for row in suspect.arg_true().to_list():
            note = cell_flag(values[row], medians[name])
            if note:
                total += 1
                findings.append(Location(row + 1, name, values[row][:80], note))
    findings.sort(key=lambda loc: loc.row)
    cells = frame.height * frame.width
    details = {
        "bytes": len(data),
        "visible": f"{frame.height} rows x {frame.width} columns ({cells} cells), every one shown on the page",
        "medians": medians,
    }
    return _result(findings, total, details, f"{len(data)} bytes, all in {cells} visible cells")


def _text(data: bytes) -> CheckResult:
    text = data.decode("utf-8")
    lines = text.split("\n")[:-1] if text.endswith("\n") else text.split("\n")
    findings = [
        Location(n, "line", line[:80], note) for n, line in _flagged_lines(lines) if (note := line_flag(line))
    ]
    details = {
        "bytes": len(data),
        "visible": f"{len(lines)} lines, {len(text)} characters, every one shown on the page",
    }
    return _result(findings, len(findings), details, f"{len(data)} bytes in {len(lines)} visible lines")


def _flagged_lines(lines: Sequence[str]) -> Iterable[tuple[int, str]]:
    return ((n, line) for n, line in enumerate(lines, start=1) if _CANDIDATE.search(line) or len(line) >= 60)


def line_flag(line: str) -> str | None:
    """Text lines are prose: only tokens and random-looking words count, not the line's length."""
    for match in _CANDIDATE.finditer(line):
        kind = token_kind(match.group())
        if kind:
            return kind
    for word in line.split():
        if len(word) >= TOKEN_MIN and entropy(word) >= ENTROPY_BITS:
            return "high-entropy word"
    return None


def _image(data: bytes) -> CheckResult:
    import numpy as np
    from PIL import Image

    with Image.open(io.BytesIO(data), formats=["PNG"]) as image:
        pixels = np.asarray(image)
    height, width = pixels.shape[:2]
    stride = max(1, (height * width) // SAMPLE_PIXELS)  # whole rows, evenly spread: noise shows in any
    samples = pixels.reshape(height, width, -1)[::stride, :, :3].astype(np.int16)
    diff = np.abs(np.diff(samples, axis=1)).max(axis=2)
    equal, near = int((diff == 0).sum()), int(((diff >= 1) & (diff <= NEAR_STEPS)).sum())
    ratio = near / max(1, equal + near)
    channels = samples.shape[2]
    colours = _distinct_colours(samples)
    details = {
        "bytes": len(data),
        "visible": f"{width} x {height} pixels, {colours} distinct colours"
        f"{' (in a sample of rows)' if stride > 1 else ''}, shown at full resolution",
        "width": width,
        "height": height,
        "lsb_capacity_bytes": width * height * channels // 8,
        "near_equal_ratio": round(ratio, 4),
    }
    what = (
        f"{len(data)} bytes for {width} x {height} pixels; the lowest bit of each sample alone could hold "
        f"{width * height * channels // 8} bytes nobody can see"
    )
    if ratio <= NOISE_RATIO:
        return CheckResult("capacity", "Carrying capacity", CheckOutcome.PASS, f"{what}; flat areas are flat",
                           (), 0, details)  # fmt: skip
    finding = Location(
        1, "pixels", f"{ratio:.0%} of neighbouring pixels differ by one or two steps", "low-order-bit noise"
    )
    return CheckResult(
        "capacity",
        "Carrying capacity",
        CheckOutcome.REVIEW,
        f"{what}; {ratio:.0%} of neighbouring pixels differ by one or two steps, which looks like data "
        "hidden in the low-order bits (a chart's flat areas are flat): ask how the image was made",
        (finding,),
        1,
        details,
    )


def _distinct_colours(samples: Any) -> int:
    import numpy as np

    packed = samples[..., 0].astype(np.int64)
    for c in range(1, samples.shape[2]):
        packed = packed * 256 + samples[..., c]
    return int(np.count_nonzero(np.bincount(packed.ravel(), minlength=1)))
