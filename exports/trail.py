"""Refusals of the export service that are not workflow steps, on the audit trail and aggregated.

- a notebook server reports a refused side door (``/files``, ``/view``, nbconvert, terminals where the
  project has none, an upload over the cap), in any case or encoding spelling;
- the review queue asked for with a container's token;
- a page form posted without its ``_xsrf`` token (HubOAuth then ignores the session cookie);
- an image's raw content asked for on a file that is not an image.

They take the one path every refusal of the export service takes: the workflow's ``RefusalAggregator``
(``ExportWorkflow.refused``), to the same audit log the outbox delivers to. The first refusal of a kind
from a server (or user) in a window is written in full, the rest are counted into one summary when the
window closes. Attacker text is clipped. The service's timer writes the summaries; its shutdown writes the
open ones (exports/service.py). Refusals change nothing in the database, so there is no transaction for
the outbox to join, and the aggregator keeps a record back on a full disk where a database write could
not.
"""

from __future__ import annotations

import asyncio
import functools
import re
import urllib.parse
from typing import Any

from audit.aggregate import RefusalAggregator, clip

ROUTE_KINDS = [
    ("files-download", re.compile(r"/files(/|$)")),
    ("view", re.compile(r"/view(/|$)")),
    ("nbconvert", re.compile(r"/nbconvert(/|$)")),
    ("terminals", re.compile(r"/terminals(/|$)|/api/terminals")),
    ("upload-over-cap", re.compile(r"^upload-over-cap")),
]


def route_kind(route: str) -> str:
    """A side-door report's route ("GET /user/alice/demo-cardio/%66iles/x"), as the aggregation reason:
    every spelling of one door counts together, different doors get records of their own."""
    plain = route
    for _ in range(3):  # %2566 -> %66 -> f
        plain = urllib.parse.unquote(plain)
    plain = plain.lower().split("?", 1)[0]
    for kind, rx in ROUTE_KINDS:
        if rx.search(plain.split(" ", 1)[-1]):
            return kind
    return "other"


async def record(executor: Any, refusals: RefusalAggregator, **entry: Any) -> bool:
    """``refusals.refuse(**entry)`` on the service's pool (the first of a window waits for fsync)."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(executor, functools.partial(refusals.refuse, **entry))


def sidedoor(identity: Any, body: dict[str, Any]) -> dict[str, Any]:
    route = clip(str(body.get("route", "")) or "unknown")
    server = f"{identity.name}/{identity.project}"
    return {
        "actor": identity.name,
        "source": server,
        "action": "sidedoor.refused",
        "reason": route_kind(route),
        "project": identity.project,
        "target": server,
        "details": {
            "route": route,
            "path": clip(str(body.get("path", ""))),
            "server": server,
            "identified_by": "the server's own token",
        },
    }


def queue_from_container(identity: Any) -> dict[str, Any]:
    server = f"{identity.name}/{identity.project}"
    return {
        "actor": identity.name,
        "source": server,
        "action": "export.refused",
        "reason": "queue_from_container",
        "project": identity.project,
        "target": None,
        "details": {"attempted": "export.queue", "via": identity.via, "server": server},
    }


def raw_content_refused(identity: Any, project: str, request_id: str, file_id: str) -> dict[str, Any]:
    return {
        "actor": identity.name,
        "source": identity.name,
        "action": "export.refused",
        "reason": "not_served_raw",
        "project": project,
        "target": request_id,
        "details": {"attempted": "export.view", "file_id": clip(file_id, 20), "via": identity.via},
    }
