"""What the hub's home page shows a user: their projects, with state, datasets and expiry."""

from __future__ import annotations

from datetime import date

from hub.policy import PolicyStore


def project_rows(store: PolicyStore, user) -> list[dict]:
    """One row per project that lists the user. Expired or suspended ones are shown as such, never hidden."""
    if user is None:  # pages seen before login (the login page) have no projects
        return []
    today = date.today()
    policy = store.current()
    running = {name: sp for name, sp in getattr(user, "orm_spawners", {}).items() if name}
    rows = []
    for project in policy.projects_of(user.name):
        refusal = project.access_refusal(user.name, today)
        orm_spawner = running.get(project.id)
        live = user.spawners[project.id] if project.id in getattr(user, "spawners", {}) else None
        rows.append(
            {
                "id": project.id,
                "title": project.title,
                "status": "expired" if project.is_expired(today) else project.status,
                "refusal": refusal,
                "expiry": project.expiry.isoformat(),
                "datasets": [f"{d.id} (v{d.version})" for d in project.datasets],
                "active": bool(orm_spawner is not None and orm_spawner.server is not None)
                or bool(live is not None and live.pending),
                "url": user.server_url(project.id) if hasattr(user, "server_url") else "",
            }
        )
    return rows
