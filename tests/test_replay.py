"""Replay through the admin API: dry-run counts, real replays creating the routed deliveries,
one event to an explicit connector, and the filters."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from tests.fakes.receiver import Receiver
from tests.support.operations import admin_settings, api, webhook
from tests.support.relay import call_body, run_relay
from tests.support.samples import fixture


async def test_replay_dry_run_then_real_replay_through_todays_routes(db_url: str) -> None:
    async with Receiver() as crm_rx, Receiver() as sms_rx:
        connectors = {"crm": webhook(crm_rx), "texts": webhook(sms_rx)}
        routes = [
            {"connector": "crm", "events": ["call:*"]},
            {"connector": "texts", "events": ["sms:*"]},
        ]
        async with run_relay(admin_settings(db_url, connectors, routes)) as relay:
            bodies = [
                call_body("c1"),
                call_body("c2"),
                call_body("c3", "call_completed_missed_inbound"),
                fixture("sms_status"),
                fixture("presence_user"),  # no route takes presence
            ]
            ids = [(await relay.post(b)).json()["event_id"] for b in bodies]
            assert len(await relay.settled()) == 4
            assert len(crm_rx.requests) == 3 and len(sms_rx.requests) == 1

            dry = await api(
                relay,
                "POST",
                "/replay",
                json={"integration": "q7m2xk", "type": "call:*", "dry_run": True},
            )
            assert dry == {
                "dry_run": True,
                "events": 3,
                "deliveries": 3,
                "by_connector": {"crm": 3},
                "skipped": 0,
            }
            everything = await api(
                relay, "POST", "/replay", json={"integration": "q7m2xk", "dry_run": True}
            )
            assert (everything["events"], everything["deliveries"], everything["skipped"]) == (
                5,
                4,
                1,
            )
            assert everything["by_connector"] == {"crm": 3, "texts": 1}
            assert len(await relay.deliveries()) == 4  # a dry run creates nothing

            real = await api(
                relay, "POST", "/replay", json={"integration": "q7m2xk", "type": "call:*"}
            )
            assert (real["dry_run"], real["deliveries"]) == (False, 3)
            rows = await relay.settled()
            assert len(rows) == 7
            replayed = sorted((r for r in rows if r.id > 4), key=lambda r: r.id)
            assert [(r.event_id, r.connector, r.state) for r in replayed] == [
                (ids[0], "crm", "succeeded"),
                (ids[1], "crm", "succeeded"),
                (ids[2], "crm", "succeeded"),
            ]
            await crm_rx.wait_for(6)
            assert [r.body for r in crm_rx.requests[3:]] == bodies[:3]  # the same bytes, in order

            # one event to a connector its routes do not name
            one = await api(
                relay, "POST", "/replay", json={"event_id": ids[0], "connector": "texts"}
            )
            assert (one["events"], one["by_connector"]) == (1, {"texts": 1})
            await sms_rx.wait_for(2)
            assert sms_rx.requests[1].body == bodies[0]

            by_call = await api(relay, "POST", "/replay", json={"call_id": "c2", "dry_run": True})
            assert (by_call["events"], by_call["by_connector"]) == (1, {"crm": 1})
            later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
            future = await api(relay, "POST", "/replay", json={"since": later, "dry_run": True})
            assert (future["events"], future["deliveries"]) == (0, 0)
            window = {"since": "2000-01-01T00:00:00Z", "until": later, "dry_run": True}
            assert (await api(relay, "POST", "/replay", json=window))["events"] == 5
