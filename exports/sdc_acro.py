"""Verdicts from an ACRO session's ``results.json``, shown as reported by the researcher's session.

ACRO (AI-SDC) writes one entry per output: its status (pass, fail, review), the kind of output, the
command, a summary, per-rule counts of cells at risk (``files[].sdc.summary``), their positions
(``files[].sdc.cells``) and, for tables, a per-cell outcome keyed by column and row label (``outcome``).

The rule names depend on the version: acro >= 1.0 writes ``MinimumThresholdCheck``, ``NKCheck``,
``PPercentCheck``, ``PresenceOfZeroCheck``, ``MinimumDoFCheck`` ...; older versions wrote ``threshold``,
``p-ratio``, ``nk-rule`` ... Both are read. We do not recompute them (they need the microdata, which never
reaches the service), so every result here has ``source="researcher-acro"`` and the page says so. The
only thing we compare ourselves is a reported degrees of freedom against the project's minimum.

A file that says it is an ACRO results file but does not have ACRO's shape is refused, naming the field:
checkers must never be shown a half-read verdict.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from exports.domain import CheckOutcome, CheckResult, FileRefused, Location
from exports.projects import Thresholds

SOURCE = "researcher-acro"
MAX_CELLS = 500
MAX_NAME = 80

RULE_TITLES = {
    # acro >= 1.0
    "MinimumThresholdCheck": "minimum threshold",
    "NKCheck": "NK dominance",
    "PPercentCheck": "p% dominance",
    "PresenceOfZeroCheck": "zeros",
    "RequiredZeroCheck": "zeros required by policy",
    "MinimumDoFCheck": "degrees of freedom",
    "AllSameValuesCheck": "all values the same",
    "MissingCheck": "missing values",
    "PresenceOfLinkedTableCheck": "linked tables (differencing)",
    "StatbarnDataCheck": "manual check",
    # acro < 1.0
    "threshold": "minimum threshold",
    "nk-rule": "NK dominance",
    "p-ratio": "p% dominance",
    "all-values-are-same": "all values the same",
    "negative": "negative values",
    "missing": "missing values",
    "zeros": "zeros",
}
"""Every rule name ACRO has written, old and new, with what it checks. Unknown names are still shown."""

STATUSES = {"pass": CheckOutcome.PASS, "fail": CheckOutcome.FAIL, "review": CheckOutcome.REVIEW}


def looks_like_acro(obj: Any) -> bool:
    """Does the JSON claim to be an ACRO results file? (Its shape is checked by ``acro_results``.)"""
    if not isinstance(obj, Mapping) or "results" not in obj:
        return False
    tool = obj.get("tool")
    if isinstance(tool, Mapping) and str(tool.get("name", "")).upper() == "ACRO":
        return True
    if "version" not in obj:
        return False
    entries = obj["results"]
    if not isinstance(entries, Mapping):
        return False
    return all(isinstance(e, Mapping) and ("status" in e or "uid" in e) for e in entries.values())


def acro_results(
    obj: Mapping[str, Any], thresholds: Thresholds, label: str = "results.json"
) -> list[CheckResult]:
    """One result for the session, then one per ACRO output. FileRefused if the shape is not ACRO's."""
    entries = obj.get("results")
    if not isinstance(entries, Mapping):
        raise _malformed(label, "results", "must be an object of ACRO outputs")
    for uid, entry in entries.items():
        _validate_entry(label, str(uid), entry)
    results = [_session(obj, entries, thresholds)]
    results.extend(_entry_result(str(uid), entry, thresholds) for uid, entry in entries.items())
    return results


def _malformed(label: str, field: str, problem: str) -> FileRefused:
    return FileRefused(
        f"{label}: not a well-formed ACRO results file: {field}: {problem}; attach the results.json that "
        "acro.finalise() wrote, unchanged",
        "bad_acro_results",
    )


def _validate_entry(label: str, uid: str, entry: Any) -> None:
    at = f"results.{uid[:MAX_NAME]!r}"
    if not isinstance(entry, Mapping):
        raise _malformed(label, at, "must be an object")
    if str(entry.get("status", "")).lower() not in STATUSES:
        raise _malformed(label, f"{at}.status", "must be pass, fail or review")
    expected = {"type": str, "summary": str, "command": str, "exception": str}
    for key, kind in expected.items():
        if key in entry and not isinstance(entry[key], kind):
            raise _malformed(label, f"{at}.{key}", "must be text")
    for key in ("properties", "outcome"):
        if key in entry and not isinstance(entry[key], Mapping):
            raise _malformed(label, f"{at}.{key}", "must be an object")
    for key in ("files", "comments"):
        if not isinstance(entry.get(key, []), list):
            raise _malformed(label, f"{at}.{key}", "must be a list")
    files = entry.get("files", [])
    for i, f in enumerate(files):
        _validate_file(label, f"{at}.files[{i}]", f)
    for column, rows in (entry.get("outcome") or {}).items():
        if not isinstance(rows, Mapping):
            raise _malformed(label, f"{at}.outcome.{str(column)[:MAX_NAME]!r}", "must be an object of rows")


def _validate_file(label: str, at: str, f: Any) -> None:
    if not isinstance(f, Mapping) or not isinstance(f.get("name", ""), str):
        raise _malformed(label, at, "must be an object with a name")
    sdc = f.get("sdc", {})
    if not isinstance(sdc, Mapping):
        raise _malformed(label, f"{at}.sdc", "must be an object")
    summary, cells = sdc.get("summary", {}), sdc.get("cells", {})
    if not isinstance(summary, Mapping) or not isinstance(cells, Mapping):
        raise _malformed(label, f"{at}.sdc", "summary and cells must be objects")
    for rule, count in summary.items():
        if not isinstance(count, bool | int | float) or not math.isfinite(count):
            raise _malformed(label, f"{at}.sdc.summary.{str(rule)[:MAX_NAME]!r}", "must be a number")
    for rule, positions in cells.items():
        ok = isinstance(positions, list) and all(
            isinstance(p, list) and len(p) == 2 and all(isinstance(v, int) for v in p) for p in positions
        )
        if not ok:
            raise _malformed(
                label, f"{at}.sdc.cells.{str(rule)[:MAX_NAME]!r}", "must be a list of [row, column]"
            )


def _session(obj: Mapping[str, Any], entries: Mapping[str, Any], t: Thresholds) -> CheckResult:
    version = str(obj.get("version", "unknown"))[:MAX_NAME]
    outputs = f"{len(entries)} output(s)" if entries else "no outputs (an empty session)"
    return CheckResult(
        check="acro.session",
        title="ACRO session (reported by the researcher's session, not recomputed)",
        outcome=CheckOutcome.REVIEW,
        message=(
            f"ACRO version {version}, {outputs}; this project's rules: minimum cell count {t.min_count}, "
            f"dominance NK n={t.nk_n} k={t.nk_k}, p-percent {t.p_percent}, minimum degrees of freedom "
            f"{t.min_dof}, zeros {'disclosive' if t.zeros_disclosive else 'not disclosive'}. "
            "Check that the session used the same."
        ),
        details=_details(version=version, outputs=len(entries)),
        source=SOURCE,
    )


def _details(**extra: Any) -> dict[str, Any]:
    """Every key the page reads, so a result with nothing to say still renders."""
    base: dict[str, Any] = {
        "type": "",
        "method": "",
        "command": "",
        "rule_counts": {},
        "exception": "",
        "files": [],
        "comments": [],
    }
    base.update(extra)
    return base


def _entry_result(uid: str, entry: Mapping[str, Any], t: Thresholds) -> CheckResult:
    properties = entry.get("properties") or {}
    counts = _rule_counts(entry)
    cells = _cells(entry)
    outcome = STATUSES[str(entry["status"]).lower()]
    details = _details(
        type=str(entry.get("type", ""))[:MAX_NAME],
        method=str(properties.get("method", ""))[:MAX_NAME],
        command=str(entry.get("command", ""))[:500],
        rule_counts={f"{RULE_TITLES.get(rule, 'rule')} ({rule})": n for rule, n in counts.items()},
        exception=str(entry.get("exception", ""))[:2000],
        files=[str(f.get("name"))[:200] for f in entry.get("files", [])][:50],
        comments=[str(c)[:500] for c in entry.get("comments", [])][:20],
    )
    message = str(entry.get("summary", "")) or "no summary"
    dof = _number(properties.get("dof"))
    if dof is not None:
        details["dof"] = dof
        if dof < t.min_dof:
            outcome = CheckOutcome.FAIL
            message += f"; reported degrees of freedom {dof:g} < project minimum {t.min_dof}"
    return CheckResult(
        check=f"acro.{uid[:MAX_NAME]}",
        title=f"ACRO {uid[:MAX_NAME]}: {details['type']} {details['method']}".strip(),
        outcome=outcome,
        message=message[:2000],
        cells=tuple(cells[:MAX_CELLS]),
        cell_total=len(cells),
        details=details,
        source=SOURCE,
    )


def _number(value: Any) -> float | None:
    try:
        number = float(value) if value is not None and not isinstance(value, bool) else None
    except (TypeError, ValueError):
        return None
    return number if number is not None and math.isfinite(number) else None


def _rule_counts(entry: Mapping[str, Any]) -> dict[str, int]:
    """Cells at risk per rule, summed over the output's files (``suppressed`` is a flag, not a rule)."""
    counts: dict[str, int] = {}
    for f in entry.get("files", []):
        summary = (f.get("sdc") or {}).get("summary") or {}
        for rule, n in summary.items():
            if rule == "suppressed" or isinstance(n, bool):
                continue
            name = str(rule)[:MAX_NAME]
            counts[name] = counts.get(name, 0) + int(n)
    return counts


def _cells(entry: Mapping[str, Any]) -> list[Location]:
    """Per-cell findings: from ``outcome`` (row and column labels) when ACRO wrote one, else positions."""
    found = []
    for column, rows in (entry.get("outcome") or {}).items():
        for i, (row, verdict) in enumerate(rows.items()):
            verdict = str(verdict).strip().strip(";").strip()
            if verdict and verdict.lower() != "ok":
                found.append(
                    Location(i + 1, str(column)[:MAX_NAME], str(row)[:MAX_NAME], _rules_note(verdict))
                )
    if found:
        return sorted(found, key=lambda c: (c.row, c.column))
    for f in entry.get("files", []):
        for rule, positions in ((f.get("sdc") or {}).get("cells") or {}).items():
            for row, col in positions:
                found.append(Location(row + 1, f"column {col + 1}", "", _rules_note(str(rule))))
    return found


def _rules_note(verdict: str) -> str:
    rules = [r.strip() for r in verdict.split(";") if r.strip()]
    return "; ".join(f"{RULE_TITLES.get(r, r)} ({r})" if r in RULE_TITLES else r for r in rules)[:300]
