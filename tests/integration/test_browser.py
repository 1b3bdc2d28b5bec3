"""What a researcher does first, in a real browser: log in, start a project's server, get JupyterLab."""

from __future__ import annotations

import re

import pytest

from tests.harness import HubClient

pytestmark = pytest.mark.integration

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def test_alice_logs_in_and_works_in_jupyterlab(hub):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page()
        page.goto(f"{hub.url}/hub/login")
        page.fill("#username_input", "alice")
        page.fill("#password_input", "demo-alice")
        page.fill("#otp_input", hub.totp_code("alice"))
        page.click("#login_submit")
        page.wait_for_url(re.compile(r".*/hub/home$"))
        row = page.locator("#project-demo-cardio")
        assert "synthetic-omop (v1)" in row.inner_text() and "2028-12-31" in row.inner_text()
        assert page.locator("#project-demo-oncology").count() == 0, "only her own projects are listed"
        page.click("#start-demo-cardio")
        page.wait_for_url(re.compile(r".*/user/alice/demo-cardio/lab.*"), timeout=120_000)
        page.wait_for_selector(".jp-LauncherCard", timeout=120_000)
        assert page.locator(".jp-LauncherCard[title*='Terminal']").count() == 0, (
            "terminals are off for demo-cardio"
        )
        browser.close()
    alice = HubClient(hub, "alice")
    alice.login()
    alice.stop("demo-cardio")
