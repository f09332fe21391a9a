"""The overview's charts: bars per hour for each integration's events and each connector's
attempts, latency percentiles, the time ranges and the empty state, on SQLite and PostgreSQL."""

from __future__ import annotations

import re
from datetime import timedelta

from relay.store.tables import utcnow
from tests.support.dashboard import Past, seed, ui_login
from tests.support.operations import admin_settings
from tests.support.relay import run_relay
from tests.support.samples import fixture

CONNECTORS = {"crm": {"type": "log"}, "audit": {"type": "log"}}
H = timedelta(hours=1)
HISTORY = [
    Past(H, connector="crm", tries=[("retry", 100), ("succeeded", 300)]),
    Past(H, connector="crm", tries=[("succeeded", 200)]),
    Past(H, connector="crm", tries=[("dead", 50)]),
    Past(3 * H, connector="crm", tries=[("succeeded", 400)]),
    Past(5 * H, connector="crm", tries=[("retry", 10), ("retry", 20)]),
    Past(5 * H, connector="crm", tries=[("succeeded", 1000)]),
    Past(timedelta(days=2)),  # outside the last 24 h, inside the last 7 d
]


def cell(page: str, cell_id: str) -> str:
    """One table cell's markup (the chart cells have ids)."""
    found = re.search(rf'<td class="chart-cell" id="{cell_id}">(.*?)</td>', page, re.S)
    assert found is not None, f"no cell {cell_id}"
    return found[1]


def bars(markup: str, series: str) -> list[str]:
    return re.findall(rf'<rect class="bar {series}"[^>]*><title>([^<]*)</title>', markup)


async def test_charts_draw_a_bar_per_busy_hour_and_the_latency_percentiles(db_url: str) -> None:
    settings = admin_settings(db_url, CONNECTORS, admin={"secure_cookies": False})
    async with run_relay(settings, dispatch=False) as relay:
        await seed(relay.store, utcnow(), HISTORY)
        await ui_login(relay)
        page = (await relay.client.get(relay.url + "/ui/")).text

        events = cell(page, "events-chart-q7m2xk")
        assert 'aria-label="6 events in the last 24 h"' in events
        assert sorted(t.split(": ")[1] for t in bars(events, "events")) == [
            "1 event",
            "2 events",
            "3 events",
        ]
        assert "no events in the last 24 h" in cell(page, "events-chart-h3p9ta")

        crm = cell(page, "attempts-chart-crm")
        assert sorted(t.split(": ")[1] for t in bars(crm, "delivered")) == [
            "1 delivered",
            "1 delivered",
            "2 delivered",
        ]
        assert sorted(t.split(": ")[1] for t in bars(crm, "retried")) == ["1 retried", "2 retried"]
        assert [t.split(": ")[1] for t in bars(crm, "dead")] == ["1 dead"]
        # nearest rank of the delivered durations 200, 300, 400, 1000 ms
        assert "p50 300 ms · p95 1000 ms" in page
        assert "no attempts in the last 24 h" in cell(page, "attempts-chart-audit")

        week = (await relay.client.get(relay.url + "/ui/overview/panel?range=7d")).text
        assert 'aria-label="7 events in the last 7 d"' in cell(week, "events-chart-q7m2xk")
        assert 'hx-get="/ui/overview/panel?range=7d"' in week  # the refresh keeps the range
        hour = (await relay.client.get(relay.url + "/ui/?range=1h")).text
        assert "no events in the last 1 h" in cell(hour, "events-chart-q7m2xk")
        assert "no attempts in the last 1 h" in cell(hour, "attempts-chart-crm")

        # a refresh reads the newest buckets again (the settled ones are kept): a new event shows
        await relay.post(fixture("call_completed"))
        again = (await relay.client.get(relay.url + "/ui/overview/panel")).text
        assert 'aria-label="7 events in the last 24 h"' in cell(again, "events-chart-q7m2xk")
        hour = (await relay.client.get(relay.url + "/ui/?range=1h")).text
        assert 'aria-label="1 event in the last 1 h"' in cell(hour, "events-chart-q7m2xk")

        wrong = await relay.client.get(relay.url + "/ui/?range=1y")
        assert wrong.status_code == 400 and "range must be one of 1h, 24h, 7d" in wrong.text


async def test_a_new_relay_shows_the_empty_state_not_an_empty_chart(db_url: str) -> None:
    settings = admin_settings(db_url, CONNECTORS, admin={"secure_cookies": False})
    async with run_relay(settings, dispatch=False) as relay:
        await ui_login(relay)
        page = (await relay.client.get(relay.url + "/ui/overview/panel")).text
        assert "<svg" not in page
        assert page.count("no events in the last 24 h") == 2  # both integrations
        assert page.count("no attempts in the last 24 h") == 2  # both connectors
