"""The dashboard in a real browser (Debian's chromium through Playwright) against a relay on
loopback: log in, read the overview's charts, find a dead delivery, retry it against the
recovered receiver, see it succeed and the retry in its history; and the pages at phone width.

Screenshots go to $RELAY_SCREENSHOTS (``RELAY_SCREENSHOTS=docs/img`` refreshes the README's).
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from relay.store.tables import utcnow
from tests.fakes.receiver import Receiver
from tests.support.dashboard import Past, seed
from tests.support.operations import TOKEN, admin_settings, webhook
from tests.support.relay import call_body, run_relay
from tests.support.samples import fixture

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
NARROW = {"width": 420, "height": 860}
H = timedelta(hours=1)
# earlier hours for the charts (the live events all land in the current hour's bar)
HISTORY = [
    *(Past(3 * H, connector="hubspot-crm", tries=[("succeeded", 240)]) for _ in range(4)),
    Past(3 * H, connector="hubspot-crm", tries=[("retry", 30_000), ("succeeded", 410)]),
    *(Past(7 * H, connector="audit-log", tries=[("succeeded", 2)]) for _ in range(2)),
    Past(12 * H, integration="h3p9ta", connector="audit-log", tries=[("succeeded", 3)]),
]
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _require_chromium() -> None:
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing: .ci/run installs Debian's chromium")
        pytest.skip("needs Debian's chromium (apt-get install -y chromium)")


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("RELAY_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    _require_chromium()
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        launched = await p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield launched
        finally:
            await launched.close()


async def fits(page: Any) -> bool:
    """No sideways scrolling of the page itself (a wide table scrolls inside its own box)."""
    return bool(
        await page.evaluate("() => document.scrollingElement.scrollWidth <= window.innerWidth")
    )


async def test_log_in_retry_a_dead_delivery_and_see_it_succeed(
    browser: Any, shots: Path, tmp_path: Path
) -> None:
    from playwright.async_api import expect

    async with Receiver() as crm:
        crm.respond(400, body='{"message":"Property owner 88121 does not exist"}')
        connectors = {"hubspot-crm": webhook(crm), "audit-log": {"type": "log"}}
        routes = [
            {"connector": "hubspot-crm", "events": ["call:completed"]},
            {"connector": "audit-log", "events": ["*"]},
        ]
        settings = admin_settings(f"sqlite+aiosqlite:///{tmp_path}/ui.db", connectors, routes)
        async with run_relay(settings) as relay:
            dead_event = (await relay.post(call_body("it_w204517_1764412210.77"))).json()
            await relay.settled()
            for name in ("call_completed_missed_inbound", "call_live_progress_start", "sms_status"):
                await relay.post(fixture(name))
            await relay.post(fixture("presence_user"))
            await relay.post(fixture("legacy_call_start"), integration="h3p9ta")
            await relay.post(fixture("sms_status"), secret="not-the-secret")
            rows = await relay.settled()
            [dead] = [r for r in rows if r.state == "dead"]
            assert dead.event_id == dead_event["event_id"]
            await seed(relay.store, utcnow(), HISTORY)

            page = await browser.new_page(viewport={"width": 1280, "height": 820})
            await page.goto(relay.url + "/ui/")
            assert page.url.endswith("/ui/login")
            await page.fill("input[name=token]", "guess")
            await page.click("button[type=submit]")
            await expect(page.get_by_role("alert")).to_have_text("That is not the admin token.")
            await page.fill("input[name=token]", TOKEN)
            await page.click("button[type=submit]")
            await expect(page).to_have_url(re.compile(r"/ui/$"))
            overview = page.locator("#overview")
            await expect(overview).to_contain_text("hubspot-crm")
            await expect(overview.locator("a.bad")).to_have_text("1")  # one dead, linked
            # a bar per busy hour: now, 3 h and 7 h ago for q7m2xk; now and 12 h ago for h3p9ta
            q7 = overview.locator("#events-chart-q7m2xk svg.chart rect.bar")
            await expect(q7).to_have_count(3)
            await expect(q7.first).to_have_attribute("height", re.compile(r"^\d"))
            await expect(overview.locator("#events-chart-h3p9ta rect.bar")).to_have_count(2)
            hub = overview.locator("#attempts-chart-hubspot-crm")
            await expect(hub.locator("rect.bar.delivered")).to_have_count(2)  # now, 3 h ago
            await expect(hub.locator("rect.bar.retried")).to_have_count(1)
            await expect(hub.locator("rect.bar.dead")).to_have_count(1)
            await expect(overview).to_contain_text("p50 240 ms · p95 410 ms")
            await page.screenshot(path=str(shots / "overview.png"), full_page=True)
            await page.click("text=1 h")
            await expect(page).to_have_url(re.compile(r"range=1h$"))
            await expect(
                page.locator("#attempts-chart-hubspot-crm rect.bar.retried")
            ).to_have_count(0)
            # the live events only (the seeded ones are hours old), whichever 5-min bars they hit
            live = page.locator("#events-chart-q7m2xk svg.chart")
            await expect(live).to_have_attribute("aria-label", "5 events in the last 1 h")
            await page.set_viewport_size(NARROW)
            await page.goto(relay.url + "/ui/")
            await expect(page.locator("#overview")).to_contain_text("hubspot-crm")
            assert await fits(page), "the overview overflows at 420 px"
            await page.screenshot(path=str(shots / "overview-narrow.png"), full_page=True)
            await page.set_viewport_size({"width": 1280, "height": 820})

            await page.click("text=Dead letters")
            row = page.locator(f"#delivery-{dead.id}")
            await expect(row).to_have_attribute("data-state", "dead")
            await expect(row).to_contain_text("HTTP 400")
            await page.screenshot(path=str(shots / "dead-letters.png"), full_page=True)

            # the CRM has recovered (the receiver answers 200 from now on)
            await row.get_by_role("button", name="Retry").click()
            await expect(row).to_have_attribute("data-state", "succeeded", timeout=15_000)
            assert [r.state for r in await relay.deliveries() if r.id == dead.id] == ["succeeded"]
            assert len(crm.requests) == 3  # the dead attempt, the other call, the retry
            assert crm.requests[-1].body == call_body("it_w204517_1764412210.77")

            await row.get_by_role("link", name=str(dead.event_id)).click()
            await expect(page.locator("h1")).to_contain_text(f"Event {dead.event_id}")
            timeline = page.locator("section.timeline", has_text="hubspot-crm")
            await expect(timeline.locator("li.attempt.dead")).to_contain_text("HTTP 400")
            await expect(timeline.locator("li.attempt.succeeded")).to_contain_text("#2 succeeded")
            await expect(timeline.locator("li.attempt.succeeded")).to_contain_text("HTTP 200")
            await expect(timeline.locator("li.manual-retry")).to_contain_text("by dashboard")
            await expect(page.locator(".duration")).to_have_text("3:01 (talk 2:56, wait 0:00)")
            await expect(page.locator("pre.json").last).to_contain_text('"remotePhone"')
            await page.screenshot(path=str(shots / "event-detail.png"), full_page=True)
            await page.set_viewport_size(NARROW)
            pages = ("/events", "/deliveries?state=all", "/replay", "/rejections")
            for path in (f"/ui/events/{dead.event_id}", *(f"/ui{p}" for p in pages)):
                await page.goto(relay.url + path)
                assert await fits(page), f"{path} overflows at 420 px"
            await page.set_viewport_size({"width": 1280, "height": 820})
            await page.goto(relay.url + f"/ui/events/{dead.event_id}")

            await page.click("text=Replay this event…")
            await page.click("button[value=dry-run]")
            result = page.locator("#replay-result")
            await expect(result).to_contain_text("Dry run: 1 event matched; 2 deliveries")
            await page.click("form.logout button")
            await expect(page).to_have_url(re.compile(r"/ui/login$"))
            await page.goto(relay.url + "/ui/deliveries?state=dead")
            assert page.url.endswith("/ui/login")  # the session is gone

    for name in ("overview", "overview-narrow", "dead-letters", "event-detail"):
        png = await asyncio.to_thread((shots / f"{name}.png").read_bytes)
        assert png.startswith(b"\x89PNG") and len(png) > 10_000


async def test_a_new_relay_says_there_is_nothing_to_chart_yet(browser: Any, tmp_path: Path) -> None:
    from playwright.async_api import expect

    settings = admin_settings(
        f"sqlite+aiosqlite:///{tmp_path}/empty.db", {"audit-log": {"type": "log"}}
    )
    async with run_relay(settings) as relay:
        page = await browser.new_page(viewport=NARROW)
        await page.goto(relay.url + "/ui/login")
        await page.fill("input[name=token]", TOKEN)
        await page.click("button[type=submit]")
        overview = page.locator("#overview")
        await expect(overview.locator("#events-chart-q7m2xk")).to_have_text(
            "no events in the last 24 h"
        )
        await expect(overview.locator("#attempts-chart-audit-log")).to_have_text(
            "no attempts in the last 24 h"
        )
        await expect(overview.locator("svg.chart")).to_have_count(0)
        assert await fits(page), "the empty overview overflows at 420 px"
        icon = await relay.client.get(relay.url + "/ui/static/favicon.svg")
        assert icon.status_code == 200 and icon.headers["content-type"].startswith("image/svg")
        assert (
            await page.locator("link[rel=icon]").get_attribute("href") == "/ui/static/favicon.svg"
        )
