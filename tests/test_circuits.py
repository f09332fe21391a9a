"""Circuit breakers against a real loopback target that goes down and comes back: the connector's
deliveries wait without spending attempts, one probe goes per cool-down (growing), recovery
drains the backlog; a 4xx never opens the circuit; operators open and close it by hand through
the CLI, the admin API and the dashboard, and /metrics shows it."""

from __future__ import annotations

import asyncio
import itertools
import json
import re
from pathlib import Path
from typing import Any

import pytest

from relay.config import CircuitPolicy, ConfigError, load_config, parse_config
from relay.dispatch.circuit_breaker import apply, failed
from relay.registry import connector_types
from relay.store.circuits import CircuitState
from relay.store.states import DeliveryState
from relay.store.tables import attempts, circuit_transitions, utcnow
from tests.fakes.receiver import Receiver
from tests.support.cli import relay_cli
from tests.support.crm import PIPEDRIVE, day, post_all, running
from tests.support.operations import (
    AUTH,
    TOKEN,
    admin_settings,
    api,
    open_incidents,
    resolved,
    webhook,
)
from tests.support.relay import (
    DONE,
    RunningRelay,
    call_body,
    config_dict,
    run_relay,
    write_config,
)
from tests.support.stores import open_store
from tests.support.waiting import eventually
from tests.support.workers import dispatching_workers

COOL_DOWN, MAX = 0.4, 1.6
BREAKER = {"failures": 2, "cool_down": f"{COOL_DOWN}s", "max": f"{MAX}s"}
# Far shorter than the outage below: without the breaker every delivery would be dead.
FAST = {"max_attempts": 3, "schedule": ["0.05s"], "concurrency": 2}


async def circuit(relay: RunningRelay, name: str = "out") -> Any:
    found = (await relay.store.circuits()).get(name)
    return found.state if found else CircuitState.CLOSED


async def probes(relay: RunningRelay) -> list[Any]:
    rows = await relay.rows(circuit_transitions, circuit_transitions.c.reason == "probe")
    return sorted(rows, key=lambda r: r.id)


async def test_a_target_down_longer_than_the_retry_schedule_loses_nothing(db_url: str) -> None:
    async with Receiver() as target:
        target.respond(503, body="down for maintenance", times=100_000)
        connectors = {"out": webhook(target, delivery=FAST, circuit=BREAKER)}
        async with run_relay(admin_settings(db_url, connectors)) as relay:
            for n in range(6):
                assert (await relay.post(call_body(f"cb-down-{n}"))).status_code == 200
            await relay.wait_until(lambda: probes(relay), what="a first probe")
            # three failed probes: cool-downs of 0.4 s, then 0.8 s, then 1.6 s (the cap)
            found = await relay.wait_until(
                lambda: _at_least(probes(relay), 4), timeout=30, what="four probes"
            )
            sent = [r.at for r in found[:4]]
            gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(sent)]
            for gap, cool_down in zip(gaps, (2 * COOL_DOWN, 4 * COOL_DOWN, MAX), strict=True):
                assert gap >= cool_down * 0.95, (gaps, "a probe went before its cool-down")
            opened = (await relay.store.circuits())["out"]
            assert opened.state is not CircuitState.CLOSED and opened.cool_down == MAX
            # while open, each request the target saw was a probe: one per cool-down
            asked_while_open = [r for r in target.requests if r.at >= sent[0].timestamp()]
            assert 3 <= len(asked_while_open) <= len(await probes(relay))
            assert not [d for d in await relay.deliveries() if d.state == "dead"]

            target.clear()  # the target is back
            rows = await relay.settled(timeout=30)
            assert [d.state for d in rows] == ["succeeded"] * 6
            assert await circuit(relay) == CircuitState.CLOSED
            # attempts spent: the failures that opened the circuit, then one success each
            assert all(d.attempts <= 2 for d in rows), [d.attempts for d in rows]
            assert sum(d.attempts for d in rows) <= 6 + BREAKER["failures"]
            held = await relay.rows(attempts, attempts.c.outcome == "held")
            assert len(held) >= 3  # the failed probes, refunded
            states = await api(relay, "GET", "/circuits")
            out = next(c for c in states if c["connector"] == "out")
            assert out["state"] == "closed" and out["failures"] == 0
            assert {(t["from_state"], t["to_state"]) for t in out["history"]} >= {
                ("closed", "open"),
                ("open", "half_open"),
                ("half_open", "open"),
                ("half_open", "closed"),
            }
            scrape = (await relay.client.get(relay.url + "/metrics", headers=AUTH)).text
            assert 'relay_circuit_state{connector="out",state="closed"} 1.0' in scrape
            assert re.search(
                r'relay_circuit_transitions_total\{connector="out",to="open"\} [1-9]', scrape
            )


async def test_rejected_credentials_hold_the_backlog_until_the_fixed_config_is_reloaded(
    db_url: str, tmp_path: Path
) -> None:
    """The Pipedrive API token was regenerated and config.yaml still has the old one: like an
    outage, the circuit opens, nothing goes dead and attempts are not spent, and the incident
    says which credentials to fix. Once the admin puts the current token in and reloads, the
    next probe gets through and the backlog drains without anyone retrying anything."""
    fake = PIPEDRIVE.fake()
    PIPEDRIVE.seed(fake)
    stale = "0ld0ld0ld0ld0ld0ld0ld0ld0ld0ld0ld0ld0ld0"  # the token before it was regenerated
    async with running(fake) as url:
        block = PIPEDRIVE.block(fake, url, api_token=stale, circuit=BREAKER)
        extra = {"admin": {"token": TOKEN}, "alerts": {"interval": "0.1s"}}
        data = config_dict(db_url, {"crm": block}, extra=extra)
        config = write_config(tmp_path / "config.yaml", data)
        async with run_relay(load_config(config, env={})) as relay:
            await post_all(relay, day(3), "q7m2xk")
            [incident] = await relay.wait_until(
                lambda: open_incidents(relay, "circuit_open"), timeout=30, what="the incident"
            )
            assert incident.subject == "crm"
            assert "credentials of connector 'crm' rejected (HTTP 401" in incident.summary
            assert "current token" in incident.summary and "config.yaml" in incident.summary
            assert "resume on their own" in incident.summary
            assert "`relay circuit close crm`" in incident.summary
            await relay.wait_until(lambda: _at_least(probes(relay), 2), timeout=30, what="probes")
            waiting = await relay.deliveries()
            assert waiting and not [d for d in waiting if d.state == DeliveryState.DEAD]
            # the failures that opened the circuit spent attempts; held ones and probes did not
            spent = sum(d.attempts for d in waiting)
            assert spent <= len(waiting) + BREAKER["failures"], [d.attempts for d in waiting]
            for text in [incident.summary, *(d.last_error or "" for d in waiting)]:
                assert stale not in text
            assert fake.log and {status for _, _, status in fake.log} == {401}
            assert PIPEDRIVE.all_records(fake) == []

            block["api_token"] = fake.api_token  # the admin puts the current token in
            write_config(config, data)
            reloaded = await api(relay, "POST", "/config/reload")
            assert (reloaded["result"], reloaded["changed"]) == ("loaded", ["crm"])
            rows = await relay.settled(timeout=30)
            assert all(r.state in DONE for r in rows), [(r.state, r.last_error) for r in rows]
            assert await circuit(relay, "crm") == CircuitState.CLOSED
            await relay.wait_until(
                lambda: resolved(relay, incident.id), timeout=30, what="the incident resolved"
            )
    for i in range(3):
        assert len(PIPEDRIVE.records(fake, f"day_{i}")) == 1


async def _at_least(rows: Any, n: int) -> list[Any] | None:
    found = await rows
    return found if len(found) >= n else None


async def test_a_4xx_is_the_events_fault_and_never_opens_the_circuit(db_url: str) -> None:
    async with Receiver() as target:
        target.respond(422, body='{"error": "unknown field"}', times=3)
        breaker = {"failures": 1, "cool_down": "10s"}
        connectors = {"out": webhook(target, delivery=FAST, circuit=breaker)}
        async with run_relay(admin_settings(db_url, connectors)) as relay:
            for n in range(3):
                await relay.post(call_body(f"cb-4xx-{n}"))
            rows = await relay.settled()
            assert sorted(d.state for d in rows) == ["dead"] * 3
            assert await circuit(relay) == CircuitState.CLOSED
            await relay.post(call_body("cb-4xx-after"))
            rows = await relay.settled()
            assert sorted(d.state for d in rows) == ["dead"] * 3 + ["succeeded"]
            assert await circuit(relay) == CircuitState.CLOSED


async def test_an_operator_opens_and_closes_a_circuit_by_hand(db_url: str, tmp_path: Path) -> None:
    async with Receiver() as held, Receiver() as other:
        connectors = {"out": webhook(held), "other": webhook(other)}
        data = config_dict(db_url, connectors, extra={"admin": {"token": TOKEN}})
        config = write_config(tmp_path / "config.yaml", data)
        # a maintenance window, opened before the service starts
        ran = await relay_cli(config, "migrate")
        assert ran.returncode == 0, ran.stderr
        ran = await relay_cli(config, "circuit", "open", "out", "--reason", "CRM upgrade")
        assert ran.returncode == 0 and "open" in ran.stdout, ran.stderr
        listed = await relay_cli(config, "circuits", "--json")
        rows = {c["connector"]: c for c in json.loads(listed.stdout)}
        assert rows["out"]["state"] == "open" and rows["out"]["manual"] is True
        assert rows["out"]["reason"] == "CRM upgrade" and rows["other"]["state"] == "closed"
        unknown = await relay_cli(config, "circuit", "open", "nope")
        assert unknown.returncode != 0 and "no connector 'nope'" in unknown.stderr

        settings = admin_settings(db_url, connectors, admin={"secure_cookies": False})
        async with run_relay(settings) as relay:
            await relay.post(call_body("cb-hand-1"))
            await relay.post(call_body("cb-hand-2"))
            # the other connector's delivery went in the same claim round as ours would have
            await other.wait_for(2)
            pending = [d for d in await relay.deliveries() if d.connector == "out"]
            assert [(d.state, d.attempts) for d in pending] == [("pending", 0)] * 2
            assert held.requests == []
            scrape = (await relay.client.get(relay.url + "/metrics", headers=AUTH)).text
            assert 'relay_circuit_state{connector="out",state="open"} 1.0' in scrape
            assert 'relay_circuit_state{connector="other",state="closed"} 1.0' in scrape
            csrf = await dashboard_login(relay)
            assert 'id="circuits"' in (await relay.client.get(relay.url + "/ui/")).text
            panel = (await relay.client.get(relay.url + "/ui/circuits")).text
            assert re.search(r'id="circuit-out" data-state="open"', panel), panel
            assert "CRM upgrade" in panel and "closed → open" in panel

            closed = await api(relay, "POST", "/circuits/out/close", json={"reason": "done"})
            assert closed["state"] == "closed" and closed["history"][0]["reason"] == "done"
            await held.wait_for(2)
            rows = await relay.settled()
            assert {d.state for d in rows} == {"succeeded"}

            panel = await relay.client.post(relay.url + "/ui/circuits/out/open", headers=csrf)
            assert 'id="circuit-out" data-state="open"' in panel.text
            [opened] = [c for c in await api(relay, "GET", "/circuits") if c["connector"] == "out"]
            assert opened["state"] == "open" and opened["manual"] is True
            assert (
                opened["next_probe_at"] is None and opened["reason"] == "opened from the dashboard"
            )
            again = await api(relay, "POST", "/circuits/out/open", json={"reason": "still"})
            assert again["state"] == "open"
            missing = await relay.client.post(
                relay.url + "/api/v1/circuits/nope/open", headers=AUTH
            )
            assert missing.status_code == 404
            too_long = await relay.client.post(
                relay.url + "/api/v1/circuits/out/close", headers=AUTH, json={"reason": "x" * 501}
            )
            assert too_long.status_code == 400
        listed = await relay_cli(config, "circuits", "--history")
        assert listed.returncode == 0
        assert re.search(r"^out\s+open\*", listed.stdout, re.M), listed.stdout
        assert "opened from the dashboard" in listed.stdout


async def dashboard_login(relay: RunningRelay) -> dict[str, str]:
    """Log in to /ui; the header htmx sends with every POST (the CSRF token)."""
    login = await relay.client.get(relay.url + "/ui/login")
    token = re.search(r'name="_csrf_token" value="([^"]+)"', login.text)
    assert token is not None
    done = await relay.client.post(
        relay.url + "/ui/login", data={"token": TOKEN, "_csrf_token": token[1]}
    )
    assert done.status_code == 302
    return {"x-csrftoken": relay.client.cookies["relay_csrf"]}


async def test_one_probe_slot_for_the_whole_cluster(db_url: str) -> None:
    """However many processes try at once, exactly one sends the probe; none before the
    cool-down is over, and another only once the probe's lease has run out."""
    async with open_store(db_url) as store:
        # long enough that a busy machine cannot let them run out between two checks
        cool_down, lease = 5.0, 5.0
        policy = CircuitPolicy(failures=1, cool_down=cool_down)
        await apply(store, "out", failed(policy, "HTTP 503"), worker="w0")
        opened = (await store.circuits())["out"]
        assert opened.state == CircuitState.OPEN and opened.failures == 1

        async def everyone(lease: float) -> list[bool]:
            return list(
                await asyncio.gather(
                    *(store.claim_probe("out", worker=f"w{n}", lease=lease) for n in range(8))
                )
            )

        assert await everyone(30) == [False] * 8  # still cooling down
        await eventually(lambda: opened.probe_due(utcnow()), "the cool-down to pass")
        wins = await everyone(lease)
        assert wins.count(True) == 1
        now = (await store.circuits())["out"]
        assert now.state == CircuitState.HALF_OPEN and now.probe_by == f"w{wins.index(True)}"
        assert await everyone(30) == [False] * 8  # the probe's lease is running
        await eventually(lambda: now.probe_until < utcnow(), "the probe's lease to run out")
        assert (await everyone(30)).count(True) == 1  # its process died: another may probe


async def test_two_workers_send_one_probe_per_cool_down_between_them(
    pg_url: str, tmp_path: Path
) -> None:
    """The cluster's coordinator is the database: two `relay worker` processes, one target."""
    async with Receiver() as target:
        target.respond(503, body="down", times=100_000)
        connectors = {"out": webhook(target, delivery=FAST, circuit=BREAKER)}
        config = write_config(tmp_path / "relay.yaml", config_dict(pg_url, connectors))
        async with run_relay(admin_settings(pg_url, connectors), dispatch=False) as relay:
            async with dispatching_workers(config, 2):
                for n in range(8):
                    assert (await relay.post(call_body(f"cb-pair-{n}"))).status_code == 200
                found = await relay.wait_until(
                    lambda: _at_least(probes(relay), 5), timeout=60, what="five probes"
                )
                # Each cool-down let exactly one request through, whichever worker sent it.
                # Counted from the second probe: a worker that claimed a delivery just before
                # the circuit opened may send it after the first probe (a busy machine can
                # hold a process for longer than the first cool-down, 0.4 s).
                sent = [r.at.timestamp() for r in found[1:5]]
                for start, end in itertools.pairwise(sent):
                    assert len([r for r in target.requests if start <= r.at < end]) == 1
                assert not [d for d in await relay.deliveries() if d.state == "dead"]
                target.clear()
                rows = await relay.settled(timeout=60)
            assert [d.state for d in rows] == ["succeeded"] * 8
            assert all(d.attempts <= 2 for d in rows), [d.attempts for d in rows]


def test_circuit_settings_are_checked() -> None:
    base = "connectors: {out: {type: log, circuit: %s}}"
    types = connector_types()
    settings = parse_config(base % "{failures: 3, cool_down: 1m}", connector_types=types, env={})
    assert settings.connectors["out"].circuit.cool_down == 60
    assert settings.connectors["out"].circuit.max == 600
    with pytest.raises(ConfigError) as caught:
        parse_config(base % "{cool_down: 5m, max: 1m}", connector_types=types, env={})
    assert "max must be at least cool_down" in str(caught.value)
    with pytest.raises(ConfigError) as caught:
        parse_config(base % "{failure: 3}", connector_types=types, env={})
    assert caught.value.path == "$.connectors.out.circuit.failure"
