"""The event page: a call written for people (clock durations, one time format, numbers with
their +, the local party on one line, the normalized view), and Retry on a dead delivery that
keeps numbering its attempts while the retry policy's budget starts afresh."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone

import pytest

from relay.ui import formats
from tests.fakes.receiver import Receiver
from tests.support.dashboard import ui_login
from tests.support.operations import admin_settings, api, wait_state, webhook
from tests.support.relay import call_body, run_relay
from tests.support.samples import fixture

MAX_ATTEMPTS = 2


def attempts_shown(page: str) -> list[str]:
    """The timeline in order: ``#n outcome`` per attempt, ``manual retry`` markers between."""
    return re.findall(r"<strong>(#\d+ \w+|manual retry)</strong>", page)


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [(28.4, "0:28"), (180.602, "3:01"), (0, "0:00"), (3725, "1:02:05"), (None, "—")],
)
def test_call_durations_read_as_a_clock(seconds: float | None, shown: str) -> None:
    assert formats.clock(seconds) == shown


@pytest.mark.parametrize(
    ("number", "shown"),
    [
        ("442071838750", "+442071838750"),  # digits as relay indexes them
        ("+442071838750", "+442071838750"),
        ("214", "214"),  # an extension
        ("02071838750", "02071838750"),  # national form: no country to put a + before
        (None, "—"),
    ],
)
def test_international_numbers_get_their_plus(number: str | None, shown: str) -> None:
    assert formats.phone(number) == shown


def test_every_time_is_written_in_utc_one_way() -> None:
    rome = timezone(timedelta(hours=1))
    assert (
        formats.when(datetime(2025, 11, 29, 11, 30, 10, tzinfo=rome)) == "2025-11-29 10:30:10 UTC"
    )
    assert formats.when("2025-11-29T10:30:10.458000Z") == "2025-11-29 10:30:10 UTC"
    assert formats.when(datetime(2025, 11, 29, 10, 30, 10)) == "2025-11-29 10:30:10 UTC"
    assert formats.when(datetime(2025, 11, 29, 10, 30, 10, tzinfo=UTC)) == "2025-11-29 10:30:10 UTC"
    assert formats.when(None) == "—"


def test_a_party_on_one_line() -> None:
    assert formats.party({"name": "Giulia Rossi", "extension": "214"}) == "Giulia Rossi · ext. 214"
    assert formats.party({"number": "442071838750"}) == "+442071838750"
    assert formats.party({}) == "—"


async def test_a_call_reads_like_a_call(db_url: str) -> None:
    settings = admin_settings(db_url, {"out": {"type": "log"}}, admin={"secure_cookies": False})
    async with run_relay(settings) as relay:
        event_id = (await relay.post(fixture("call_completed"))).json()["event_id"]
        await relay.settled()
        await ui_login(relay)
        page = (await relay.client.get(f"{relay.url}/ui/events/{event_id}")).text
        # the sample: 180.6 s long, 175.9 s talking, Giulia Rossi on extension 214
        assert '<dd class="duration">3:01 (talk 2:56, wait 0:00)</dd>' in page
        assert "Giulia Rossi · ext. 214 · giulia.rossi@example.org" in page
        assert '<dd class="remote-party">+442071838750</dd>' in page
        numbers = re.search(r'class="mono numbers">([^<]*)<', page)
        assert numbers is not None and numbers[1] == "+442071838750"
        assert "<dt>Started</dt><dd>2025-11-29 10:30:10 UTC</dd>" in page
        assert "<dt>Ended</dt><dd>2025-11-29 10:33:11 UTC</dd>" in page
        assert "T10:30:10" not in page.split("<h2>Normalized view</h2>")[0]  # no ISO mixed in
        assert '<pre class="json normalized">' in page and "&#34;talk_time&#34;: 175.882" in page


async def test_retry_on_the_event_page_counts_on_from_the_failed_attempts(db_url: str) -> None:
    extra = {"delivery": {"max_attempts": MAX_ATTEMPTS, "schedule": ["0.1s"], "jitter": 0}}
    async with Receiver() as crm:
        crm.respond(503, body="down for maintenance", times=2 * MAX_ATTEMPTS)
        settings = admin_settings(
            db_url, {"crm": webhook(crm)}, admin={"secure_cookies": False}, extra=extra
        )
        async with run_relay(settings) as relay:
            event_id = (await relay.post(call_body("retry-numbering"))).json()["event_id"]
            [dead] = await relay.settled()
            assert dead.state == "dead" and dead.attempts == MAX_ATTEMPTS
            headers = await ui_login(relay)
            ui = relay.url + "/ui"

            # a manual retry from the event page: still failing, it gets a fresh budget of 2
            retried = await relay.client.post(
                f"{ui}/deliveries/{dead.id}/retry?view=timeline", headers=headers
            )
            assert retried.status_code == 200 and f'id="timeline-{dead.id}"' in retried.text
            assert (await wait_state(relay, dead.id, "dead")).attempts == MAX_ATTEMPTS
            page = (await relay.client.get(f"{ui}/events/{event_id}")).text
            assert attempts_shown(page) == [
                "#1 retry",
                "#2 dead",
                "manual retry",
                "#3 retry",
                "#4 dead",
            ]
            assert "by dashboard" in page
            assert re.search(rf'id="timeline-{dead.id}" data-state="dead"', page)
            assert f'hx-post="/ui/deliveries/{dead.id}/retry?view=timeline"' in page
            assert f'hx-post="/ui/deliveries/{dead.id}/cancel?view=timeline"' in page

            # the target has recovered: the next manual retry is attempt #5, through the API
            await api(relay, "POST", f"/deliveries/{dead.id}/retry")
            row = await wait_state(relay, dead.id, "succeeded")
            assert row.attempts == 1  # the budget: one attempt since the last retry
            detail = await api(relay, "GET", f"/deliveries/{dead.id}")
            assert [a["number"] for a in detail["history"]] == [1, 2, 3, 4, 5]
            assert detail["attempts"] == 5
            marks = [(m["after_attempts"], m["requested_by"]) for m in detail["manual_retries"]]
            assert marks == [(2, "dashboard"), (4, "admin API")]
            page = (await relay.client.get(f"{ui}/events/{event_id}")).text
            assert attempts_shown(page)[-3:] == ["#4 dead", "manual retry", "#5 succeeded"]
            assert f'hx-post="/ui/deliveries/{dead.id}/retry' not in page  # nothing to retry
            listed = (await relay.client.get(f"{ui}/deliveries?state=all")).text
            assert re.search(r'<td class="num">5</td>', listed)  # the Attempts column


async def test_cancel_on_the_event_page_and_a_refusal_shown_in_place(db_url: str) -> None:
    async with Receiver() as crm:
        crm.respond(503, headers={"retry-after": "3600"})  # parked for an hour: pending
        settings = admin_settings(db_url, {"crm": webhook(crm)}, admin={"secure_cookies": False})
        async with run_relay(settings) as relay:
            event_id = (await relay.post(call_body("cancel-here"))).json()["event_id"]
            headers = await ui_login(relay)
            ui = relay.url + "/ui"

            async def waiting() -> int | None:
                rows = await relay.deliveries()
                parked = rows and rows[0].attempts == 1 and rows[0].state == "pending"
                return rows[0].id if parked else None

            delivery_id = await relay.wait_until(waiting, what="the delivery to wait an hour")
            page = (await relay.client.get(f"{ui}/events/{event_id}")).text
            assert "next try" in page and "Cancel" in page
            done = await relay.client.post(
                f"{ui}/deliveries/{delivery_id}/cancel?view=timeline", headers=headers
            )
            assert 'data-state="cancelled"' in done.text
            again = await relay.client.post(
                f"{ui}/deliveries/{delivery_id}/cancel?view=timeline", headers=headers
            )
            assert f'id="timeline-{delivery_id}"' in again.text
            assert "cannot cancel delivery" in again.text and 'role="alert"' in again.text
