"""The dashboard in a real headless browser (SPEC §8), against a real ``audience-sync run``.

The engine runs as its own process on a free port with SQLite, delivers users to the local
Braze-compatible server, and Debian's ``chromium`` (installed by ``scripts/test``) is driven
through Playwright's Python API pointed at the system browser. Every request the page makes is
checked: anything not to the engine on 127.0.0.1 is blocked and fails the test, so the page is
proven to work with no internet. A screenshot is saved under ``var/screenshots/`` (printed).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests

from tests.fakes.braze_server import FakeBraze
from tests.integration.admin_helpers import (
    ACCOUNT,
    ADMIN_TOKEN,
    AUDIENCES,
    FIREHOSE,
    REST_KEY,
    connection_settings,
)
from tests.support import membership, profile, subscription

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOT = ROOT / "var" / "screenshots" / "dashboard.png"
BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def find_browser() -> str | None:
    explicit = os.environ.get("AUDIENCE_SYNC_TEST_CHROMIUM")
    if explicit:
        return explicit
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    return None


def skip_loudly(reason: str) -> None:
    message = f"\n{'!' * 78}\nBROWSER TEST SKIPPED: {reason}\n{'!' * 78}\n"
    sys.stderr.write(message)
    pytest.skip(message)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def engine_url(tmp_path):
    """``audience-sync run`` on a free port, with users delivered to a local Braze server."""
    with FakeBraze(api_keys={REST_KEY}) as braze:
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("AUDIENCE_SYNC_")}
        env |= {
            "AUDIENCE_SYNC_DATABASE__URL": f"sqlite:///{tmp_path}/browser.db",
            "AUDIENCE_SYNC_SERVER__PORT": str(port),
            "AUDIENCE_SYNC_FIREHOSE__TOKENS": FIREHOSE["Authorization"].split()[1],
            "AUDIENCE_SYNC_ADMIN__TOKEN": ADMIN_TOKEN,
            "AUDIENCE_SYNC_BRAZE__ALLOWED_CUSTOM_ENDPOINTS": "http://127.0.0.1:",
            "AUDIENCE_SYNC_DELIVERY__COALESCE_S": "0",
            "AUDIENCE_SYNC_BRAZE__MIN_RESEND_INTERVAL_S": "0",
            "AUDIENCE_SYNC_DELIVERY__WORKERS": "1",
        }
        cmd = [sys.executable, "-m", "audience_sync"]
        subprocess.run([*cmd, "db", "upgrade"], env=env, check=True, capture_output=True)
        log_path = tmp_path / "engine.log"
        with log_path.open("w") as log:
            proc = subprocess.Popen([*cmd, "run"], env=env, stderr=log, cwd=tmp_path)
        base = f"http://127.0.0.1:{port}"
        try:
            wait_until(lambda: requests.get(f"{base}/readyz", timeout=2).ok, proc, log_path)
            feed(base, braze.url)
            bearer = {"Authorization": f"Bearer {ADMIN_TOKEN}"}

            def delivered() -> bool:
                status = requests.get(f"{base}/api/v1/status", headers=bearer, timeout=5).json()
                return status["backlog"]["pending"] == 0 and status["datapoints_today"] > 0

            wait_until(delivered, proc, log_path)
            churn(base, braze.url)
            wait_until(delivered, proc, log_path)
            yield base
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
        # The real process's JSON logs, sign-in attempts included, hold no secret.
        logs = log_path.read_text()
        assert '"action": "admin_login"' in logs and '"action": "admin_login_failed"' in logs
        for secret in (ADMIN_TOKEN, REST_KEY, FIREHOSE["Authorization"].split()[1]):
            assert secret not in logs


def wait_until(check, proc, log_path, timeout_s=90.0) -> None:
    deadline = time.monotonic() + timeout_s  # generous: the machine is shared
    while True:
        try:
            if check():
                return
        except requests.RequestException:
            pass
        assert proc.poll() is None, log_path.read_text()
        assert time.monotonic() < deadline, "engine not ready\n" + log_path.read_text()
        time.sleep(0.2)


def feed(base: str, braze_url: str) -> None:
    """Subscribe three audiences and put 60 users in them, through the Firehose endpoint."""
    settings = connection_settings(braze_url)
    for audience_id, name in AUDIENCES.items():
        body = subscription(ACCOUNT, audience_id, name, **settings)
        requests.post(
            f"{base}/firehose", json=body, headers=FIREHOSE, timeout=10
        ).raise_for_status()
    ids = list(AUDIENCES)
    profiles = [
        profile(f"user-{n}", [(ids[n % 3], AUDIENCES[ids[n % 3]], "add")]) for n in range(60)
    ]
    body = membership(ACCOUNT, profiles, **settings)
    requests.post(f"{base}/firehose", json=body, headers=FIREHOSE, timeout=10).raise_for_status()


def churn(base: str, braze_url: str) -> None:
    """A second day in the life: 20 users move audience, 20 enter and leave one at once."""
    settings = connection_settings(braze_url)
    ids = list(AUDIENCES)
    profiles = []
    for n in range(0, 60, 3):  # user-n is in ids[0]: moves to ids[1]
        moves = [(ids[0], AUDIENCES[ids[0]], "delete"), (ids[1], AUDIENCES[ids[1]], "add")]
        profiles.append(profile(f"user-{n}", moves))
    for n in range(1, 60, 3):  # no-op churn: costs nothing
        noop = [(ids[2], AUDIENCES[ids[2]], "add"), (ids[2], AUDIENCES[ids[2]], "delete")]
        profiles.append(profile(f"user-{n}", noop))
    body = membership(ACCOUNT, profiles, **settings)
    requests.post(f"{base}/firehose", json=body, headers=FIREHOSE, timeout=10).raise_for_status()


@pytest.fixture
def browser_path() -> str:
    """The system browser, or a loud skip (before any engine is started)."""
    executable = find_browser()
    if executable is None:
        skip_loudly("no chromium found (scripts/test installs Debian's chromium when it can)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        skip_loudly("playwright is not installed (pip install -e '.[dev]')")
    return executable


def test_dashboard_in_headless_chromium(browser_path, engine_url, capsys):
    from playwright.sync_api import sync_playwright

    outside: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=browser_path, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})

            def gate(route):
                host = urlsplit(route.request.url).hostname
                if host == "127.0.0.1":
                    route.continue_()
                else:  # the internet is blocked: the page must not need it
                    outside.append(route.request.url)
                    route.abort()

            page.route("**/*", gate)
            page.goto(engine_url + "/")
            assert page.url.startswith(engine_url + "/login")
            page.fill("#token", "not-the-token")
            page.click("button[type=submit]")
            assert page.locator("#login-error").is_visible()
            page.fill("#token", ADMIN_TOKEN)
            page.click("button[type=submit]")
            page.wait_for_selector("#connections")
            assert page.url == engine_url + "/"

            cookie = next(c for c in page.context.cookies() if c["name"] == "audience_sync_admin")
            assert cookie["httpOnly"] and cookie["secure"] and cookie["sameSite"] == "Strict"
            assert page.evaluate("document.cookie") == ""  # HttpOnly: no script can read it

            assert page.locator("#health").get_attribute("data-healthy") == "true"
            row = page.locator(f'tr.connection[data-account-id="{ACCOUNT}"]')
            assert row.count() == 1
            names = row.locator("li.audience").all_inner_texts()
            assert sorted(n.split(" · ")[0] for n in names) == sorted(AUDIENCES.values())
            members = {n.split(" · ")[0]: n.split(" · ")[1] for n in names}
            assert members == {
                AUDIENCES[11036]: "0",
                AUDIENCES[11037]: "40",
                AUDIENCES[11038]: "20",
            }
            spent = page.locator("#dp-spent").inner_text()
            assert spent not in ("", "0")
            assert int(page.locator("#kpi-datapoints").inner_text()) > 0
            for section in (
                "#throughput",
                "#backlog",
                "#datapoints",
                "#failures",
                "#feeds",
                "#jobs",
            ):
                assert page.locator(section).is_visible(), section
            assert page.locator("#throughput svg rect").count() > 0

            SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SCREENSHOT), full_page=True)
            with capsys.disabled():  # shown even when pytest captures output
                print(f"\ndashboard screenshot: {SCREENSHOT}")

            page.click(f'a[href="/connections/{ACCOUNT}"]')
            page.wait_for_selector("text=Settings (secrets masked)")
            assert page.locator("tr.audience").count() == len(AUDIENCES)
            assert REST_KEY not in page.content()
            page.screenshot(path=str(SCREENSHOT.with_name("connection.png")), full_page=True)
            with capsys.disabled():
                print(f"connection screenshot: {SCREENSHOT.with_name('connection.png')}")
        finally:
            browser.close()
    assert outside == [], f"the page tried to reach the internet: {outside}"
