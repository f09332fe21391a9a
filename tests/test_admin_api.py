"""The admin API against a relay running on loopback: auth, filters, pagination, detail,
retry and cancel, rejections and connector health."""

from __future__ import annotations

import re
from typing import Any

import msgspec
import pytest

from relay.admin.redact import Redactor
from relay.config import ConfigError, parse_config
from tests.fakes.receiver import Receiver
from tests.support.operations import AUTH, TOKEN, admin_settings, api, wait_state, webhook
from tests.support.relay import SECRET, call_body, make_settings, run_relay
from tests.support.samples import fixture


async def test_without_a_token_the_admin_surface_does_not_exist(db_url: str) -> None:
    async with run_relay(make_settings(db_url, {"out": {"type": "log"}})) as relay:
        for path in ("/api/v1/events", "/api/v1/deliveries", "/metrics", "/ui/", "/ui/login"):
            response = await relay.client.get(relay.url + path, headers=AUTH)
            assert response.status_code == 404, path
        replay = await relay.client.post(
            relay.url + "/api/v1/replay", headers=AUTH, json={"integration": "q7m2xk"}
        )
        assert replay.status_code == 404
        assert (await relay.client.get(relay.url + "/schema/openapi.json")).status_code == 404
        # ingest is unaffected
        assert (await relay.post(fixture("call_completed"))).status_code == 200


async def test_every_admin_route_wants_the_bearer_token(db_url: str) -> None:
    async with run_relay(admin_settings(db_url, {"out": {"type": "log"}})) as relay:
        await relay.post(fixture("call_completed"))
        paths = ["/api/v1/events", "/api/v1/events/1", "/api/v1/deliveries", "/api/v1/overview"]
        paths += ["/api/v1/rejections", "/api/v1/integrations", "/api/v1/connectors", "/metrics"]
        for path in paths:
            bare = await relay.client.get(relay.url + path)
            assert bare.status_code == 401, path
            assert bare.headers["www-authenticate"] == "Bearer"
            wrong = await relay.client.get(
                relay.url + path, headers={"authorization": f"Bearer {TOKEN[:-1]}x"}
            )
            assert wrong.status_code == 401, path
            basic = await relay.client.get(relay.url + path, headers={"authorization": TOKEN})
            assert basic.status_code == 401, path
            assert (await relay.client.get(relay.url + path, headers=AUTH)).status_code == 200
        denied = await relay.client.post(relay.url + "/api/v1/deliveries/1/retry")
        assert denied.status_code == 401

        schema = (await relay.client.get(relay.url + "/schema/openapi.json", headers=AUTH)).json()
        scheme = schema["components"]["securitySchemes"]["AdminToken"]
        assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
        admin_ops = [
            op
            for path, ops in schema["paths"].items()
            if path.startswith("/api/v1")
            for op in ops.values()
        ]
        assert len(admin_ops) >= 10
        assert all(op["security"] == [{"AdminToken": []}] for op in admin_ops)
        assert "/metrics" not in schema["paths"] and not any(
            p.startswith("/ui") for p in schema["paths"]
        )


async def test_public_metrics_needs_no_token_but_the_api_still_does(db_url: str) -> None:
    settings = admin_settings(db_url, {"out": {"type": "log"}}, admin={"public_metrics": True})
    async with run_relay(settings) as relay:
        assert (await relay.client.get(relay.url + "/metrics")).status_code == 200
        assert (await relay.client.get(relay.url + "/api/v1/events")).status_code == 401


async def _store_sample(relay: object) -> dict[str, int]:
    """Eight events over two integrations; returns name → event id."""
    ids = {}
    samples = [
        ("completed", "call_completed", "q7m2xk"),  # +442071838750
        ("missed", "call_completed_missed_inbound", "q7m2xk"),  # +33142685300
        ("progress", "call_live_progress_start", "q7m2xk"),  # +442071838750
        ("live_done", "call_live_completed", "q7m2xk"),
        ("sms", "sms_status", "q7m2xk"),
        ("presence", "presence_user", "q7m2xk"),
        ("legacy_start", "legacy_call_start", "h3p9ta"),
        ("legacy_end", "legacy_call_end", "h3p9ta"),
    ]
    for name, fix, integration in samples:
        response = await relay.post(fixture(fix), integration=integration)  # type: ignore[attr-defined]
        assert response.status_code == 200, response.text
        ids[name] = response.json()["event_id"]
    return ids


async def test_event_filters_and_cursor_pagination(db_url: str) -> None:
    settings = admin_settings(db_url, {"out": {"type": "log"}})
    async with run_relay(settings, dispatch=False) as relay:
        ids = await _store_sample(relay)

        async def listed(**params: object) -> list[int]:
            page = await api(relay, "GET", "/events", params=params)
            return [e["id"] for e in page["items"]]

        everything = await listed()
        assert everything == sorted(ids.values(), reverse=True)
        assert set(await listed(integration="h3p9ta")) == {ids["legacy_start"], ids["legacy_end"]}
        calls = await listed(type="call:*")
        assert set(calls) == set(ids.values()) - {ids["sms"], ids["presence"]}
        assert await listed(type="call:live:*") == [ids["live_done"], ids["progress"]]
        assert await listed(type="sms:status") == [ids["sms"]]
        assert await listed(call_id="it_w204517_1764415002.91") == [ids["missed"]]
        same_call = await listed(call_id="it_w204517_1764412210.77")
        assert set(same_call) == {ids["completed"], ids["progress"], ids["live_done"]}
        # the number in any written form
        for form in ("+442071838750", "00442071838750", "+44 20 7183 8750"):
            assert set(await listed(phone=form)) == {ids["completed"], ids["progress"]}, form
        assert await listed(phone="+33 1 42 68 53 00") == [ids["missed"]]
        assert await listed(phone="+447700900123") == [ids["sms"]]  # the SMS recipient
        assert await listed(phone="+15550000000") == []
        assert len(await listed(since="2000-01-01T00:00:00Z")) == 8
        assert await listed(until="2000-01-01T00:00:00Z") == []
        assert await listed(integration="q7m2xk", type="call:completed", phone="+33142685300") == [
            ids["missed"]
        ]

        # delivery state: cancel one, then filter by it
        [delivery] = (await api(relay, "GET", "/deliveries", params={"event_id": ids["sms"]}))[
            "items"
        ]
        await api(relay, "POST", f"/deliveries/{delivery['id']}/cancel")
        assert await listed(status="cancelled") == [ids["sms"]]
        assert ids["sms"] not in await listed(status="pending")
        assert len(await listed(status="pending")) == 7

        # cursor pagination walks every event once, newest first
        seen, cursor = [], None
        while True:
            params = {"limit": 3} | ({"cursor": cursor} if cursor else {})
            page = await api(relay, "GET", "/events", params=params)
            seen += [e["id"] for e in page["items"]]
            assert len(page["items"]) <= 3
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert seen == everything

        for bad in ({"cursor": "abc"}, {"limit": 0}, {"limit": 501}, {"phone": "call me"}):
            response = await relay.client.get(
                relay.url + "/api/v1/events", params=bad, headers=AUTH
            )
            assert response.status_code == 400, bad
        bad_state = await relay.client.get(
            relay.url + "/api/v1/deliveries", params={"state": "lost"}, headers=AUTH
        )
        assert bad_state.status_code == 400


async def test_event_detail_has_raw_normalized_deliveries_and_attempts(db_url: str) -> None:
    async with Receiver() as receiver:
        receiver.respond(500, body="upstream hiccup")
        connectors = {"crm": webhook(receiver), "audit": {"type": "log"}}
        async with run_relay(admin_settings(db_url, connectors)) as relay:
            event_id = (await relay.post(fixture("call_completed"))).json()["event_id"]
            await relay.settled()
            response = await relay.client.get(f"{relay.url}/api/v1/events/{event_id}", headers=AUTH)
            detail = response.json()
            assert detail["raw"] == msgspec.json.decode(fixture("call_completed"))
            call = detail["normalized"]["call"]
            assert (call["direction"], call["status"], call["remote_number"]) == (
                "outbound",
                "completed",
                "+442071838750",
            )
            assert detail["numbers"] == ["442071838750"]
            by_name = {d["connector"]: d for d in detail["deliveries"]}
            assert by_name["audit"]["state"] == "succeeded"
            crm = by_name["crm"]
            assert crm["state"] == "succeeded" and crm["attempts"] == 2
            history = [(a["number"], a["outcome"], a["status_code"]) for a in crm["history"]]
            assert history == [(1, "retry", 500), (2, "succeeded", 200)]
            assert "HTTP 500" in crm["history"][0]["error"]
            assert all(a["duration_ms"] >= 0 for a in crm["history"])
            assert detail["delivery_states"] == {"succeeded": 2}
            assert SECRET not in response.text and TOKEN not in response.text
            missing = await relay.client.get(relay.url + "/api/v1/events/999999", headers=AUTH)
            assert missing.status_code == 404


async def test_retry_of_a_dead_delivery_succeeds_against_a_recovered_receiver(db_url: str) -> None:
    async with Receiver() as receiver:
        receiver.respond(400, body="contact owner missing", times=1)  # permanent: dead at once
        async with run_relay(admin_settings(db_url, {"crm": webhook(receiver)})) as relay:
            await relay.post(fixture("call_completed"))
            [dead] = await relay.settled()
            assert dead.state == "dead"
            dead_letters = await api(relay, "GET", "/deliveries", params={"state": "dead"})
            assert [d["id"] for d in dead_letters["items"]] == [dead.id]
            assert "HTTP 400" in dead_letters["items"][0]["last_error"]

            # the receiver has recovered (it answers 200 from now on): retry by hand
            retried = await api(relay, "POST", f"/deliveries/{dead.id}/retry")
            assert retried["state"] in ("pending", "running", "succeeded")
            row = await wait_state(relay, dead.id, "succeeded")
            assert row.attempts == 1  # the retry started the schedule afresh
            tries = await relay.attempts(dead.id)
            assert [(a.outcome, a.status_code) for a in tries] == [
                ("dead", 400),
                ("succeeded", 200),
            ]
            assert len(receiver.requests) == 2
            assert receiver.requests[1].body == fixture("call_completed")
            assert (await api(relay, "GET", "/deliveries", params={"state": "dead"}))["items"] == []

            # a succeeded delivery is not retried (replay is the tool for that)
            again = await relay.client.post(
                f"{relay.url}/api/v1/deliveries/{dead.id}/retry", headers=AUTH
            )
            assert again.status_code == 409 and "replay" in again.json()["detail"]
            gone = await relay.client.post(
                f"{relay.url}/api/v1/deliveries/4242/retry", headers=AUTH
            )
            assert gone.status_code == 404


async def test_cancel_releases_the_calls_later_deliveries(db_url: str) -> None:
    async with Receiver() as receiver:
        receiver.respond(503, headers={"retry-after": "3600"})  # first: parked for an hour
        async with run_relay(admin_settings(db_url, {"crm": webhook(receiver)})) as relay:
            await relay.post(call_body("call-1", "call_live_progress_start"))
            await relay.post(call_body("call-1", "call_completed"))
            first, second = sorted(await relay.deliveries(), key=lambda d: d.id)

            async def first_attempt_recorded() -> list[Any]:
                return await relay.attempts(first.id)

            # Not just the receiver's answer: until its outcome is committed (with the attempt)
            # the first delivery is still running, and a cancel is refused.
            await relay.wait_until(first_attempt_recorded, what="the first attempt's outcome")
            assert (await wait_state(relay, first.id, "pending")).attempts == 1
            # the second waits behind the first (same call, same connector) until it is cancelled
            assert (await wait_state(relay, second.id, "pending")).attempts == 0
            cancelled = await api(relay, "POST", f"/deliveries/{first.id}/cancel")
            assert cancelled["state"] == "cancelled"
            await wait_state(relay, second.id, "succeeded")
            assert (await wait_state(relay, first.id, "cancelled")).attempts == 1
            twice = await relay.client.post(
                f"{relay.url}/api/v1/deliveries/{first.id}/cancel", headers=AUTH
            )
            assert twice.status_code == 409


async def test_rejections_integrations_and_connector_health(db_url: str) -> None:
    async with Receiver() as receiver:
        receiver.respond(400, body="bad field")
        connectors = {"crm": webhook(receiver, signing_secret="whsec_c2VjcmV0LXZhbHVlLTEyMzQ1")}
        async with run_relay(admin_settings(db_url, connectors)) as relay:
            assert (await relay.post(fixture("call_completed"), secret="wrong")).status_code == 401
            assert (
                await relay.post(fixture("call_completed"), integration="nope")
            ).status_code == 404
            rejected = (await api(relay, "GET", "/rejections"))["items"]
            assert [(r["status_code"], r["reason"]) for r in rejected] == [
                (404, "unknown integration"),
                (401, "bad signature"),
            ]
            assert '"type":"call:completed"' in rejected[1]["body_excerpt"]
            assert (await api(relay, "GET", "/rejections", params={"integration": "nope"}))[
                "items"
            ][0]["status_code"] == 404

            integrations = await api(relay, "GET", "/integrations")
            assert {i["id"] for i in integrations} == {"q7m2xk", "h3p9ta"}
            assert integrations[0]["routes"] == [
                {"connector": "crm", "events": ["*"], "where": None}
            ]

            await relay.post(fixture("call_completed"))
            await relay.settled()
            [crm] = await api(relay, "GET", "/connectors")
            assert crm["counts"]["dead"] == 1 and crm["counts"]["pending"] == 0
            assert "HTTP 400" in crm["last_error"]
            overview = await api(relay, "GET", "/overview")
            activity = {i["id"]: i for i in overview["integrations"]}
            assert (activity["q7m2xk"]["last_hour"], activity["q7m2xk"]["last_day"]) == (1, 1)
            assert overview["rejections_last_day"] == 2
            everything = str(integrations) + str(overview)
            assert SECRET not in everything and "whsec_" not in everything


def test_redactor_hides_configured_secrets_in_error_text(tmp_path: object) -> None:
    settings = admin_settings(
        "sqlite+aiosqlite:///:memory:",
        {"hook": {"type": "webhook", "url": "https://example.org/in?token=Zq81LmN0pQr"}},
    )
    redact = Redactor(settings)
    text = f"POST https://example.org/in?token=Zq81LmN0pQr failed; secret {SECRET}, admin {TOKEN}"
    masked = redact(text)
    assert masked is not None
    assert "Zq81LmN0pQr" not in masked and SECRET not in masked and TOKEN not in masked
    assert masked.count("*****") == 3


async def test_replay_refuses_unclear_requests(db_url: str) -> None:
    async with run_relay(admin_settings(db_url, {"out": {"type": "log"}}), dispatch=False) as relay:
        await relay.post(fixture("call_completed"))
        for body, status in (
            ({}, 400),
            ({"dry_run": True}, 400),
            ({"connector": "nope", "integration": "q7m2xk"}, 400),
            ({"bogus": 1}, 400),
            ({"event_id": 0}, 400),
            ({"event_id": 999}, 404),
        ):
            url = relay.url + "/api/v1/replay"
            response = await relay.client.post(url, json=body, headers=AUTH)
            assert response.status_code == status, (body, response.text)
        assert len(await relay.deliveries()) == 1


def test_a_short_admin_token_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config("admin: {token: hunter2}", connector_types={}, env={})
    assert caught.value.path == "$.admin" and "at least 16 characters" in caught.value.message


async def test_dashboard_pages_render_and_refuse_forged_posts(db_url: str) -> None:
    settings = admin_settings(db_url, {"out": {"type": "log"}}, admin={"secure_cookies": False})
    async with run_relay(settings) as relay:
        event_id = (await relay.post(fixture("call_completed"))).json()["event_id"]
        await relay.post(fixture("sms_status"), secret="wrong")
        await relay.settled()
        ui = relay.url + "/ui"
        login = await relay.client.get(ui + "/login")
        csrf = re.search(r'name="_csrf_token" value="([^"]+)"', login.text)
        assert csrf is not None
        forged = await relay.client.post(ui + "/login", data={"token": TOKEN})  # no CSRF token
        assert forged.status_code == 403
        ok = await relay.client.post(ui + "/login", data={"token": TOKEN, "_csrf_token": csrf[1]})
        assert ok.status_code == 302 and ok.headers["location"] == "/ui/"
        pages = {
            "/": "Connectors",
            "/overview/panel": "refreshes every 5 s",
            "/events": "call:completed",
            "/events?type=sms:*&phone=%2B442071838750": "No events match.",
            "/events?since=2000-01-01T00:00&status=succeeded": "call:completed",
            f"/events/{event_id}": "Call summary",
            "/deliveries?state=all": "succeeded",
            "/deliveries?state=dead": "No dead letters.",
            f"/replay?event_id={event_id}": f'value="{event_id}"',
            "/rejections": "bad signature",
        }
        for path, expected in pages.items():
            page = await relay.client.get(ui + path)
            assert page.status_code == 200, (path, page.text[:500])
            assert expected in page.text, path
        for path in ("/events?phone=nope", "/events?since=yesterday"):
            assert 'role="alert"' in (await relay.client.get(ui + path)).text, path
        assert (await relay.client.get(ui + "/deliveries?cursor=x")).status_code == 400
        assert (await relay.client.get(ui + "/events/999999")).status_code == 404
        # htmx calls without the CSRF header are refused, with it they work
        [delivery] = await relay.deliveries()
        url = f"{ui}/deliveries/{delivery.id}/cancel"
        assert (await relay.client.post(url)).status_code == 403
        header = {"x-csrftoken": relay.client.cookies["relay_csrf"]}
        done = await relay.client.post(url, headers=header)
        assert done.status_code == 200 and "cannot cancel" in done.text  # it succeeded already
        await relay.client.post(ui + "/logout", headers=header)
        assert (await relay.client.get(ui + "/")).status_code == 302


async def test_ids_beyond_what_the_database_holds_are_404_or_400_never_500(db_url: str) -> None:
    """Integers past 64 bits in a path, a filter or a cursor name nothing: they must not reach
    the driver, where they overflow."""
    huge = str(2**70)
    async with run_relay(admin_settings(db_url, {"out": {"type": "log"}})) as relay:
        await relay.post(fixture("call_completed"))
        for method, path, status in [
            ("GET", f"/api/v1/events/{huge}", 404),
            ("GET", f"/api/v1/deliveries/{huge}", 404),
            ("POST", f"/api/v1/deliveries/{huge}/retry", 404),
            ("POST", f"/api/v1/deliveries/{huge}/cancel", 404),
            ("GET", f"/api/v1/events?cursor={huge}", 400),
            ("GET", f"/api/v1/deliveries?cursor={huge}", 400),
            ("GET", f"/api/v1/deliveries?event_id={huge}", 400),
            ("GET", f"/api/v1/rejections?cursor={huge}", 400),
        ]:
            response = await relay.client.request(method, relay.url + path, headers=AUTH)
            assert response.status_code == status, (path, response.text)
        replay = await relay.client.post(
            relay.url + "/api/v1/replay", headers=AUTH, json={"event_id": 2**70}
        )
        assert replay.status_code in (400, 404), replay.text
        # and the service is fine afterwards
        events = await relay.client.get(relay.url + "/api/v1/events", headers=AUTH)
        assert events.status_code == 200 and len(events.json()["items"]) == 1
