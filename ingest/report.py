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
