"""Verdicts from an ACRO session's ``results.json``, shown as reported by the researcher's session.

ACRO (AI-SDC) writes one entry per output: its status (pass, fail, review), the kind of output, the
command, a summary, and per-rule counts of cells at risk (threshold, p-ratio, nk-rule, ...). We do not
recompute them (they need the microdata, which never reaches the service), so every result here has
``source="researcher-acro"`` and the page says so. The only thing we compare ourselves is a reported
regression's degrees of freedom against the project's minimum.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from exports.domain import CheckOutcome, CheckResult, Location
from exports.projects import Thresholds

SOURCE = "researcher-acro"
RULES = ("threshold", "p-ratio", "nk-rule", "all-values-are-same", "negative", "missing")
MAX_CELLS = 200


def looks_like_acro(obj: Any) -> bool:
    if not isinstance(obj, Mapping) or not isinstance(obj.get("results"), Mapping) or "version" not in obj:
        return False
    entries = list(obj["results"].values())
    return bool(entries) and all(isinstance(e, Mapping) and "status" in e and "type" in e for e in entries)


def acro_results(obj: Mapping[str, Any], thresholds: Thresholds) -> list[CheckResult]:
    """One result per ACRO output, plus a note of the rules the project applies."""
    results = [_rules_note(obj, thresholds)]
    for uid, entry in obj["results"].items():
        results.append(_entry_result(str(uid), entry, thresholds))
    return results


def _rules_note(obj: Mapping[str, Any], t: Thresholds) -> CheckResult:
    return CheckResult(
        check="acro.session",
        title="ACRO session (reported by the researcher's session, not recomputed)",
        outcome=CheckOutcome.REVIEW,
        message=(
            f"ACRO version {obj.get('version')!s}; this project's rules: minimum cell count {t.min_count}, "
            f"dominance NK n={t.nk_n} k={t.nk_k}, p-percent {t.p_percent}, minimum degrees of freedom "
            f"{t.min_dof}. Check that the session used the same."
        ),
        source=SOURCE,
    )


def _entry_result(uid: str, entry: Mapping[str, Any], t: Thresholds) -> CheckResult:
    properties = entry.get("properties") if isinstance(entry.get("properties"), Mapping) else {}
    counts, cells = _sdc(entry)
    dof = _number(properties.get("dof"))
    outcome = _outcome(entry.get("status"))
    details: dict[str, Any] = {
        "type": str(entry.get("type", "")),
        "method": str(properties.get("method", "")),
        "command": str(entry.get("command", ""))[:500],
        "rule_counts": counts,
        "exception": str(entry.get("exception", ""))[:2000],
        "files": [str(f.get("name")) for f in entry.get("files", []) if isinstance(f, Mapping)][:50],
    }
    message = str(entry.get("summary", "")) or "no summary"
    if dof is not None:
        details["dof"] = dof
        if dof < t.min_dof:
            outcome = CheckOutcome.FAIL
            message += f"; reported degrees of freedom {dof:g} < project minimum {t.min_dof}"
    return CheckResult(
        check=f"acro.{uid}",
        title=f"ACRO {uid}: {details['type']} {details['method']}".strip(),
        outcome=outcome,
        message=message[:2000],
        cells=tuple(cells[:MAX_CELLS]),
        cell_total=len(cells),
        details=details,
        source=SOURCE,
    )


def _outcome(status: Any) -> CheckOutcome:
    try:
        return CheckOutcome(str(status).lower())
    except ValueError:
        return CheckOutcome.REVIEW


def _number(value: Any) -> float | None:
    try:
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def _sdc(entry: Mapping[str, Any]) -> tuple[dict[str, Any], list[Location]]:
    """Per-rule counts and cell positions from the first file's ``sdc`` block."""
    files = [
        f for f in entry.get("files", []) if isinstance(f, Mapping) and isinstance(f.get("sdc"), Mapping)
    ]
    if not files:
        return {}, []
    sdc = files[0]["sdc"]
    summary = sdc.get("summary") if isinstance(sdc.get("summary"), Mapping) else {}
    counts = {rule: summary[rule] for rule in RULES if rule in summary}
    cells: list[Location] = []
    raw_cells = sdc.get("cells") if isinstance(sdc.get("cells"), Mapping) else {}
    for rule in RULES:
        for position in raw_cells.get(rule, []) or []:
            if isinstance(position, list | tuple) and len(position) == 2:
                row, col = position
                cells.append(Location(int(row) + 1 if isinstance(row, int) else 0, str(col), "", rule))
    return counts, cells
