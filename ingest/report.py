"""The privacy report of a published dataset version, for a terminal (``enclave dataset report``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rich.console import Console
from rich.table import Table


def render(manifest: Mapping[str, Any], console: Console | None = None) -> None:
    console = console or Console()
    spec = manifest["spec"]
    console.print(
        f"[bold]{manifest['dataset']}[/bold] version {manifest['version']} for project "
        f"[bold]{manifest['project']}[/bold], created {manifest['created']} by {manifest['tool']['name']} "
        f"{manifest['tool']['version']}\nspec {spec['file']} (sha256 {spec['sha256'][:16]}…, preset "
        f"{spec['preset'] or 'none'})"
    )
    console.print(_tables(manifest))
    ka = manifest.get("k_anonymity")
    if ka:
        console.print(_k_anonymity(ka))
    else:
        console.print("k-anonymity: no quasi-identifiers declared")
    check = manifest["identifier_check"]
    console.print(
        f"identifier check: {check['columns_checked']} columns, detectors {', '.join(check['detectors'])}: "
        f"no unwaived finding"
    )
    for f in check["waived"]:
        console.print(f"  waived {f['table']}.{f['column']} {f['detector']}: {f['waived']}")
    _adequacy(manifest, console)
    sc = manifest.get("sensitive_conditions") or {}
    for category, n in (sc.get("records") or {}).items():
        if n:
            console.print(f"sensitive {category}: {n} records, declared {sc['declared'].get(category, '-')}")


def _tables(manifest: Mapping[str, Any]) -> Table:
    t = Table(title="tables")
    for col in ("table", "rows", "source rows", "columns", "dropped", "sha256"):
        t.add_column(col, justify="right" if "rows" in col else "left")
    for name, info in manifest["tables"].items():
        t.add_row(
            name,
            str(info["rows"]),
            str(info["source_rows"]),
            str(len(info["columns"])),
            ", ".join(info["dropped"]) or "-",
            info["sha256"][:16] + "…",
        )
    return t


def _k_anonymity(ka: Mapping[str, Any]) -> Table:
    t = Table(
        title=(
            f"k-anonymity over {', '.join(ka['quasi_identifiers'])}: k required {ka['k_required']}, "
            f"before {ka['k_before']}, achieved {ka['k_achieved']}; {ka['suppressed']} of {ka['records']} "
            f"persons suppressed; l-diversity "
            + (", ".join(f"{a} = {v}" for a, v in ka["l_diversity"].items()) or "not measured")
        )
    )
    for col in ("class size", "classes before", "persons before", "classes after", "persons after"):
        t.add_column(col, justify="right")
    before, after = ka["class_size_histogram_before"], ka["class_size_histogram_after"]
    for bucket in before:
        b, a = before[bucket], after.get(bucket, {"classes": 0, "records": 0})
        t.add_row(bucket, str(b["classes"]), str(b["records"]), str(a["classes"]), str(a["records"]))
    return t


def _adequacy(manifest: Mapping[str, Any], console: Console) -> None:
    """Allowlist, re-identification risk and linkage: what the adequacy reviewer reads (issue 20)."""
    allow = manifest.get("allowlist") or {}
    if allow:
        t = Table(title="kept columns and what they may hold (values outside are suppressed)")
        for col in ("column", "declaration", "suppressed", "learned values (persons)"):
            t.add_column(col)
        for name, e in allow.items():
            values = ", ".join(f"{v} ({n})" for v, n in (e.get("values") or {}).items())
            t.add_row(name, e["declaration"], str(e.get("suppressed", "-")), values or "-")
        console.print(t)
    risk = manifest.get("risk")
    if risk:
        t = Table(title="re-identification risk: share of persons unique, smallest class (distinct persons)")
        for col in ("combination", "measured", "persons", "unique", "smallest class", "treatment"):
            t.add_column(col)
        d = risk["declared"]
        t.add_row(
            "declared: " + ", ".join(d["quasi_identifiers"]) if d["quasi_identifiers"] else "declared: none",
            "-",
            str(d["persons"]),
            f"{d['unique_share']:.1%}",
            str(d["smallest_class"]),
            "k-anonymity",
        )
        for name, c in risk["candidates"].items():
            t.add_row(
                f"{name} ({', '.join(c['where'])})",
                c["measured"],
                str(c["persons"]),
                f"{c['unique_share']:.1%}",
                str(c["smallest_class"]),
                c["treatment"],
            )
        console.print(t)
    else:
        console.print("re-identification risk: not measured")
    linkage = manifest.get("linkage")
    if linkage:
        console.print(
            f"linkage: {linkage['same_view_share']:.1%} of persons would link one to one to a project given "
            f"this same view; bound {linkage['max_share'] if linkage['max_share'] is not None else 'none'}"
        )
        for other, r in linkage["against"].items():
            console.print(
                f"  against {other}: {r['linked_correctly']} of {r['persons']} persons linked one to one "
                f"({r['share']:.1%}) over {', '.join(r['compared'])}"
            )
    view = (manifest.get("minimization") or {}).get("project_view")
    if view:
        console.print(f"project view: {view}")
