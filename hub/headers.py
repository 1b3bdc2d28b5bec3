"""What the hub tells browsers: security headers on its pages, and its cookies' attributes."""

from __future__ import annotations

# JupyterHub's page template runs an inline script (window.jhdata, per user), so scripts need
# 'unsafe-inline'; everything else is this origin only, no plugins, no framing, forms post here only.
HUB_CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'self'; form-action 'self'; "
    "frame-ancestors 'none'"
)
HUB_HEADERS = {
    "Content-Security-Policy": HUB_CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",  # nothing of the enclave frames a hub page (JupyterLab opens it top-level)
    "Referrer-Policy": "same-origin",
}


def browser_settings(public_url: str, max_age_days: float | None = None) -> dict:
    """The hub's ``tornado_settings`` for headers and cookies.

    Cookies are Lax, not Strict: a researcher following a link to the hub from elsewhere must arrive
    logged in. JupyterHub uses ``cookie_options`` for its session cookies and, by default, its _xsrf cookie.
    They are Secure whenever the site is served over https. With ``max_age_days`` (site.yaml
    session.max_hours) the browser drops them then too: the hub also refuses an older cookie."""
    secure = {"secure": True} if public_url.startswith("https:") else {}
    expires = {"expires_days": max_age_days} if max_age_days else {}
    return {"headers": dict(HUB_HEADERS), "cookie_options": {"samesite": "Lax", **secure, **expires}}
