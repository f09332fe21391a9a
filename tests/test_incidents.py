"""Incidents and alerts, driven for real: a target that goes down until its circuit opens and
comes back, a delivery that goes dead and is retried, a CRM that answers a daily-quota error
until its reset, an OAuth server that revokes the refresh token. Each opens ONE incident, kept
in the database and shown by the API, the CLI and /metrics, and resolves it when the condition
clears; the alert connector (a loopback receiver, or the Slack fake) gets exactly one message
when it opens and one when it resolves."""

from __future__ import annotations

import asyncio
import json
import math
import re
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from alembic import command
from sqlalchemy import insert, inspect, text
from sqlalchemy.exc import IntegrityError

from relay.admin.watcher import AUTH as AUTH_REVOKED
from relay.admin.watcher import CIRCUIT, DEAD_LETTERS, PAUSED, watch_once
from relay.config import CircuitPolicy, ConfigError, load_config, parse_config
from relay.crm.oauth import AUTH_REFUSED
from relay.dispatch.circuit_breaker import apply, closed_by_hand, failed
from relay.ingest.accept import SQS_CONSUMER, STORE_UNAVAILABLE
from relay.live_config import LiveConfig
from relay.registry import connector_types
from relay.store import db
from relay.store.incidents import INCIDENT_EVENT
from relay.store.records import Store
from relay.store.tables import incidents as incidents_table
from relay.store.tables import utcnow
from tests.fakes.receiver import Receiver
from tests.fakes.slack import SlackFake
from tests.fakes.smtp import SmtpFake
from tests.fakes.sqs import SECRET_KEY, MotoSqs, Queue
from tests.fakes.teams import TeamsFake
from tests.support.calls import current_inbound_missed
from tests.support.cli import relay_cli
from tests.support.crm import FR_CALLER, HUBSPOT, REFRESHING, day, post_all, running
from tests.support.dashboard import ui_login
from tests.support.operations import AUTH, TOKEN, api, webhook
from tests.support.relay import DONE, RunningRelay, call_body, config_dict, run_relay, write_config
from tests.support.sqs import sqs_settings
from tests.support.stores import open_store

FAST = {"max_attempts": 2, "schedule": ["0.05s"], "concurrency": 2}
BREAKER = {"failures": 2, "cool_down": "0.3s", "max": "0.6s"}
ALERTS = {"connectors": ["alert"], "interval": "0.1s"}


def alerts_of(receiver: Receiver, kind: str) -> list[tuple[str, str]]:
    """(change, subject) of each incident alert the receiver got, of one kind, in order."""
    out = []
    for request in receiver.requests:
        body = request.json()
        if body["type"] == INCIDENT_EVENT and body["data"]["kind"] == kind:
            out.append((body["data"]["change"], body["data"]["subject"]))
    return out


def config(db_url: str, target: Receiver, alert: Receiver, **out: Any) -> dict[str, Any]:
    connectors = {"out": webhook(target, delivery=FAST, **out), "alert": webhook(alert)}
    routes = [{"connector": "out", "events": ["*"]}]
    return config_dict(
        db_url,
        connectors,
        routes,
        extra={"admin": {"token": TOKEN, "secure_cookies": False}, "alerts": ALERTS},
    )


def settings(db_url: str, target: Receiver, alert: Receiver, **out: Any) -> Any:
    data = config(db_url, target, alert, **out)
    return parse_config(yaml.safe_dump(data), connector_types=connector_types([]), env={})


async def incidents(relay: RunningRelay, **params: str) -> list[dict[str, Any]]:
    return await api(relay, "GET", "/incidents", params=params)


async def test_a_circuit_that_opens_and_closes_alerts_once_each_way(db_url: str) -> None:
    async with Receiver() as target, Receiver() as alert:
        target.respond(503, body="down", times=100_000)
        async with run_relay(settings(db_url, target, alert, circuit=BREAKER)) as relay:
            for n in range(3):
                assert (await relay.post(call_body(f"inc-cb-{n}"))).status_code == 200
            await relay.wait_until(
                lambda: alerts_of(alert, CIRCUIT), what="the circuit's incident alert"
            )
            [opened] = await incidents(relay, status="open")
            assert (opened["kind"], opened["subject"], opened["state"]) == (CIRCUIT, "out", "open")
            scrape = await relay.client.get(relay.url + "/metrics", headers=AUTH)
            assert f'relay_open_incidents{{kind="{CIRCUIT}"}} 1.0' in scrape.text
            assert f'relay_open_incidents{{kind="{DEAD_LETTERS}"}} 0.0' in scrape.text
            await ui_login(relay)
            assert 'id="incidents"' in (await relay.client.get(relay.url + "/ui/")).text
            panel = (await relay.client.get(relay.url + "/ui/incidents")).text
            assert f'id="incident-{opened["id"]}" data-kind="{CIRCUIT}"' in panel, panel

            target.clear()  # the target is back: the probe succeeds, the circuit closes
            await relay.wait_until(
                lambda: len(alerts_of(alert, CIRCUIT)) == 2, timeout=20, what="the resolve alert"
            )
            assert await incidents(relay, status="open") == []
            panel = (await relay.client.get(relay.url + "/ui/incidents")).text
            assert "No open incident." in panel and "incident-" not in panel
            [resolved] = await incidents(relay)
            assert resolved["id"] == opened["id"] and resolved["resolved_at"]
            # more rounds of the watcher change nothing: no second incident, no more alerts
            live = LiveConfig(relay.app.state.queries.settings)
            for _ in range(3):
                await watch_once(relay.store, live)
            await relay.wait_until(lambda: _all_sent(relay), what="every alert delivery to succeed")
            assert alerts_of(alert, CIRCUIT) == [("opened", "out"), ("resolved", "out")]
            assert len(await incidents(relay)) == 1


async def _all_sent(relay: RunningRelay) -> bool:
    rows = await relay.deliveries()
    return all(r.state == "succeeded" for r in rows if r.connector == "alert")


@pytest.mark.parametrize("then", ["retry", "cancel"])
async def test_dead_letters_open_an_incident_until_retried_or_cancelled(
    db_url: str, then: str, tmp_path: Path
) -> None:
    async with Receiver() as target, Receiver() as alert:
        target.respond(422, body="no such contact", times=1)  # the event's fault: dead at once
        path = write_config(tmp_path / "config.yaml", config(db_url, target, alert))
        async with run_relay(settings(db_url, target, alert)) as relay:
            assert (await relay.post(call_body("inc-dead-1"))).status_code == 200
            await relay.wait_until(
                lambda: alerts_of(alert, DEAD_LETTERS), what="the dead-letter incident alert"
            )
            [opened] = await incidents(relay, status="open")
            assert opened["subject"] == "out" and "1 dead" in opened["summary"]
            listed = await relay_cli(path, "incidents", "--json")
            assert listed.returncode == 0, listed.stderr
            assert [i["id"] for i in json.loads(listed.stdout)] == [opened["id"]]
            [dead] = [d for d in await relay.deliveries() if d.state == "dead"]
            await api(relay, "POST", f"/deliveries/{dead.id}/{then}")
            await relay.wait_until(
                lambda: len(alerts_of(alert, DEAD_LETTERS)) == 2, what="the resolve alert"
            )
            assert alerts_of(alert, DEAD_LETTERS) == [("opened", "out"), ("resolved", "out")]
            assert await incidents(relay, status="open") == []
        listed = await relay_cli(path, "incidents")
        assert listed.stdout.count("\n") == 1 and "no open incidents" in listed.stderr
        listed = await relay_cli(path, "incidents", "--all")
        assert re.search(
            rf"^\s*{opened['id']}\s+resolved\s+{DEAD_LETTERS}\s+out", listed.stdout, re.M
        )


async def test_two_watchers_racing_open_and_resolve_once(db_url: str) -> None:
    """Several processes of a cluster watch the same store: the database lets one through."""
    async with Receiver() as target, Receiver() as alert:
        target.respond(422, body="no", times=1)
        async with run_relay(settings(db_url, target, alert)) as relay:
            assert (await relay.post(call_body("inc-race-1"))).status_code == 200
            live = LiveConfig(relay.app.state.queries.settings)
            await relay.wait_until(lambda: _has_dead(relay), what="a dead delivery")
            await asyncio.gather(*(watch_once(relay.store, live) for _ in range(8)))
            opened = await incidents(relay)
            assert [(i["kind"], i["state"]) for i in opened] == [(DEAD_LETTERS, "open")]
            alert_rows = [d for d in await relay.deliveries() if d.connector == "alert"]
            assert len(alert_rows) == 1


async def _has_dead(relay: RunningRelay) -> bool:
    return any(d.state == "dead" for d in await relay.deliveries())


async def test_a_daily_quota_pause_alerts_when_it_starts_and_when_the_quota_resets(
    db_url: str,
) -> None:
    """HubSpot's daily limit spent: the connector pauses until the configured reset (an
    incident), and resumes then (resolved)."""
    reset = math.ceil(time.time()) + 12  # relay starts, posts the day and spends the quota first
    fake = HUBSPOT.fake(daily_limit=8)  # no renewal of its own until the test sets the reset
    HUBSPOT.seed(fake)
    at = datetime.fromtimestamp(reset, UTC)
    async with running(fake) as url, Receiver() as alert:
        block = HUBSPOT.block(fake, url, daily_reset=at.strftime("%H:%M:%S"), timezone="UTC")
        connectors = {"crm": block, "alert": webhook(alert)}
        routes = [{"connector": "crm", "events": ["*"]}]
        data = config_dict(db_url, connectors, routes, extra={"alerts": ALERTS})
        async with run_relay(
            parse_config(yaml.safe_dump(data), connector_types=connector_types([]), env={})
        ) as relay:
            await post_all(relay, day(6), "q7m2xk")
            await relay.wait_until(
                lambda: alerts_of(alert, PAUSED), timeout=30, what="the quota incident alert"
            )
            [opened] = await relay.store.incidents(open_only=True)
            assert opened.subject == "crm" and "daily" in opened.summary.lower()
            fake.daily.reset_at = reset  # the CRM's quota renews at the reset
            await relay.wait_until(
                lambda: len(alerts_of(alert, PAUSED)) == 2, timeout=30, what="the resolve alert"
            )
            rows = await relay.settled(timeout=30)
    assert alerts_of(alert, PAUSED) == [("opened", "crm"), ("resolved", "crm")]
    assert all(r.state in DONE for r in rows)  # a call's older events may be superseded


async def test_a_revoked_refresh_token_alerts_slack_until_a_token_is_issued_again(
    db_url: str, tmp_path: Path
) -> None:
    """The admin revoked the CRM app's grant: the token endpoint refuses (an incident, in the
    ops Slack channel) and the deliveries wait; the admin puts a new refresh token in
    config.yaml and reloads: a token is issued, the deliveries go (resolved)."""
    vendor = REFRESHING[0]
    fake = vendor.fake()
    vendor.seed(fake)
    old_token = fake.refresh_token
    vendor.revoke(fake)
    async with running(fake) as url, SlackFake() as slack:
        ops = slack.channel("#ops")
        block = vendor.block(fake, url, circuit=BREAKER)
        alert = {"type": "slack", "token": slack.token, "channel": "#ops"}
        connectors = {"crm": block, "alert": {**alert, "base_url": slack.api_url}}
        routes = [{"connector": "crm", "events": ["*"]}]
        extra = {"alerts": ALERTS, "admin": {"token": TOKEN}}
        data = config_dict(db_url, connectors, routes, extra=extra)
        config = write_config(tmp_path / "config.yaml", data)
        async with run_relay(load_config(config, env={})) as relay:
            await post_all(relay, current_inbound_missed("inc_revoked", FR_CALLER), "q7m2xk")
            await relay.wait_until(
                lambda: _titles(ops, AUTH_REVOKED), timeout=20, what="the auth incident in Slack"
            )
            [incident] = [i for i in await relay.store.incidents() if i.kind == AUTH_REVOKED]
            assert incident.subject == "crm" and "refused" in incident.summary
            assert fake.client_secret not in incident.summary
            assert old_token not in incident.summary
            assert not [d for d in await relay.deliveries() if d.state == "dead"]

            block["refresh_token"] = fake.new_refresh_token()  # the admin authorized the app again
            write_config(config, data)
            reloaded = await api(relay, "POST", "/config/reload")
            assert reloaded["changed"] == ["crm"]
            await relay.wait_until(
                lambda: len(_titles(ops, AUTH_REVOKED)) == 2,
                timeout=20,
                what="the resolve in Slack",
            )
            rows = await relay.settled(timeout=30)  # no retry by hand
    assert all(r.state in DONE for r in rows), [(r.state, r.last_error) for r in rows]
    titles = _titles(ops, AUTH_REVOKED)
    assert titles[0].startswith("🔴 relay incident") and titles[1].startswith("✅ resolved")
    assert all("crm" in t for t in titles)


async def test_refused_credentials_alert_once_not_also_for_the_circuit_they_hold_open(
    db_url: str,
) -> None:
    """A refused OAuth grant also opens its connector's circuit: the operator is told the cause
    (auth_revoked), not sent a second incident for its consequence. A circuit already open for
    an outage when the credentials are refused keeps its incident until it closes."""
    policy = CircuitPolicy(failures=1, cool_down=60)
    refused = {AUTH_REFUSED: {"at": "2026-12-08T00:00:00+00:00", "reason": "invalid_grant"}}

    async def open_now(store: Store) -> list[tuple[str, str]]:
        return sorted((i.kind, i.subject) for i in await store.incidents(open_only=True))

    async with Receiver() as target, Receiver() as alert, open_store(db_url) as store:
        live = LiveConfig(settings(db_url, target, alert))
        await store.set_state("crm", refused)
        await apply(store, "crm", failed(policy, "token refused"), worker="w0")
        await watch_once(store, live)
        assert await open_now(store) == [(AUTH_REVOKED, "crm")]
        await store.set_state("crm", {})  # a token is issued; the probe closes the circuit
        await apply(store, "crm", closed_by_hand("probe answered"), worker=None)
        await watch_once(store, live)
        assert await open_now(store) == []
        assert [i.kind for i in await store.incidents()] == [AUTH_REVOKED]

        await apply(store, "crm", failed(policy, "HTTP 503"), worker="w0")  # an outage first
        await watch_once(store, live)
        await store.set_state("crm", refused)
        await watch_once(store, live)
        assert await open_now(store) == [(AUTH_REVOKED, "crm"), (CIRCUIT, "crm")]


def _titles(channel: Any, kind: str) -> list[str]:
    return [m.text for m in channel.messages if kind in m.text]


async def test_the_database_refuses_a_second_open_incident_and_the_migration_goes_both_ways(
    db_url: str,
) -> None:
    """The one-open-incident rule is the database's (the partial unique index of migration
    0006), not the watcher's: a plain INSERT of a second open one fails; a resolved one leaves
    room for the next. And the migration downgrades to 0005 and back."""
    engine = db.create_engine(db_url)
    try:
        await db.migrate(engine)
        store = Store(engine)
        first = await store.open_incident(CIRCUIT, "crm", "circuit open")
        assert first is not None
        assert await store.open_incident(CIRCUIT, "crm", "circuit open: HTTP 503") is None
        row = {"kind": CIRCUIT, "subject": "crm", "summary": "x", "opened_at": utcnow()}
        with pytest.raises(IntegrityError):
            await store.write(
                lambda conn: conn.execute(
                    insert(incidents_table).values(**row, updated_at=utcnow())
                )
            )
        [still] = await store.incidents()
        assert still.summary == "circuit open: HTTP 503"  # brought up to date, not duplicated
        assert await store.resolve_incident(CIRCUIT, "crm") is not None
        assert await store.resolve_incident(CIRCUIT, "crm") is None
        assert await store.open_incident(CIRCUIT, "crm", "again") is not None
        assert [i.open for i in await store.incidents()] == [True, False]

        def down_and_up(conn: Any) -> None:
            cfg = db.alembic_config()
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, "0005_dashboard")
            assert "incidents" not in inspect(conn).get_table_names()
            command.upgrade(cfg, "head")

        await store.backend.close()
        async with engine.begin() as conn:
            await conn.run_sync(down_and_up)
        assert await db.current_revision(engine) == db.head_revision() == "0006_incidents"
    finally:
        await engine.dispose()


async def test_an_sqs_queue_that_cannot_be_read_alerts_until_it_can(
    tmp_path: Path, moto_sqs: MotoSqs
) -> None:
    name = f"wildix-inc-{tmp_path.name[-8:]}"
    missing = Queue(moto_sqs, f"{moto_sqs.endpoint}/123456789012/{name}")
    async with Receiver() as alert:
        settings = sqs_settings(
            f"sqlite+aiosqlite:///{tmp_path}/relay.db",
            {"alert": webhook(alert)},
            {"q7m2xk": missing},
            extra={"alerts": ALERTS},
        )
        async with run_relay(settings) as relay:
            await relay.wait_until(
                lambda: alerts_of(alert, SQS_CONSUMER), what="the consumer's incident alert"
            )
            [opened] = await relay.store.incidents(open_only=True)
            assert opened.subject == "q7m2xk" and "cannot read" in opened.summary
            assert SECRET_KEY not in opened.summary
            moto_sqs.client.create_queue(QueueName=name)  # the queue exists now
            await relay.wait_until(
                lambda: len(alerts_of(alert, SQS_CONSUMER)) == 2, timeout=30, what="resolved"
            )
            assert await relay.store.incidents(open_only=True) == []
    assert alerts_of(alert, SQS_CONSUMER) == [("opened", "q7m2xk"), ("resolved", "q7m2xk")]


async def test_a_store_refusing_ingest_alerts_once_it_is_back(db_url: str) -> None:
    """The store refuses to record events (webhooks answered 503): the incident, and its
    alert, are stored as soon as the store takes them, followed by the resolve."""
    async with (
        Receiver() as target,
        Receiver() as alert,
        run_relay(settings(db_url, target, alert)) as relay,
    ):
        async with relay.store.engine.begin() as conn:
            await conn.execute(text("ALTER TABLE deliveries RENAME TO deliveries_away"))
        for n in range(3):
            refused = await relay.post(call_body(f"inc-store-{n}"))
            assert refused.status_code == 503, refused.text
        async with relay.store.engine.begin() as conn:
            await conn.execute(text("ALTER TABLE deliveries_away RENAME TO deliveries"))
        assert (await relay.post(call_body("inc-store-ok"))).status_code == 200
        await relay.wait_until(
            lambda: len(alerts_of(alert, STORE_UNAVAILABLE)) == 2, what="both alerts"
        )
        [incident] = [i for i in await relay.store.incidents() if i.kind == STORE_UNAVAILABLE]
        assert incident.subject == "ingest" and not incident.open
    assert alerts_of(alert, STORE_UNAVAILABLE) == [("opened", "ingest"), ("resolved", "ingest")]


@pytest.mark.parametrize(
    ("alerts", "path", "says"),
    [
        ({"connectors": ["pager"]}, "$.alerts.connectors[0]", "no connector named 'pager'"),
        ({"interval": "0s"}, "$.alerts.interval", "positive"),
        ({"dead_letters": 0}, "$.alerts.dead_letters", "at least 1"),
        ({"conectors": ["log"]}, "$.alerts", "conectors"),
    ],
)
def test_bad_alerts_config_names_the_key(alerts: dict[str, Any], path: str, says: str) -> None:
    data = config_dict(
        "sqlite+aiosqlite:///x.db", {"log": {"type": "log"}}, extra={"alerts": alerts}
    )
    with pytest.raises(ConfigError) as raised:
        parse_config(yaml.safe_dump(data), connector_types=connector_types([]), env={})
    assert raised.value.path.startswith(path) and says in str(raised.value)


PAGER = '''
from relay import Connector, ConnectorConfig, DeliveryContext, Event, hookimpl, message_kind


class PagerConfig(ConnectorConfig):
    url: str


class Pager(Connector):
    """A third party's pager: pages on relay's incidents only."""

    type = "pager"
    Config = PagerConfig

    async def deliver(self, event: Event, ctx: DeliveryContext) -> None:
        if message_kind(event.view()) != "incident":
            return
        data = event.data
        page = {"what": data["kind"], "on": data["subject"], "now": data["change"]}
        ctx.check_response(await ctx.http.post(self.config.url, json=page), "pager")


@hookimpl
def register_connectors(register):
    register(Pager)
'''


async def test_a_plugin_gets_incidents_as_relay_incident_events(
    tmp_path: Path, db_url: str
) -> None:
    (tmp_path / "pager.py").write_text(PAGER)
    async with Receiver() as target, Receiver() as pager:
        target.respond(422, body="no", times=1)
        connectors = {
            "out": webhook(target, delivery=FAST),
            "pager": {"type": "pager", "url": pager.url},
        }
        routes = [{"connector": "out", "events": ["*"]}]
        extra = {"admin": {"token": TOKEN}, "alerts": {"connectors": ["pager"], "interval": "0.1s"}}
        data = config_dict(db_url, connectors, routes, extra=extra, plugin_dirs=[str(tmp_path)])
        loaded = parse_config(
            yaml.safe_dump(data), connector_types=connector_types([str(tmp_path)]), env={}
        )
        async with run_relay(loaded) as relay:
            assert (await relay.post(call_body("inc-plugin-1"))).status_code == 200
            await pager.wait_for(1)
            [dead] = [d for d in await relay.deliveries() if d.state == "dead"]
            await api(relay, "POST", f"/deliveries/{dead.id}/cancel")
            pages = await pager.wait_for(2)
    assert [p.json() for p in pages] == [
        {"what": DEAD_LETTERS, "on": "out", "now": "opened"},
        {"what": DEAD_LETTERS, "on": "out", "now": "resolved"},
    ]


async def test_email_and_teams_render_the_incident_when_it_opens_and_resolves(
    db_url: str,
) -> None:
    async with Receiver() as target, SmtpFake() as smtp, TeamsFake() as teams:
        target.respond(422, body="no", times=1)
        flow = teams.flow("ops")
        mail = {
            "type": "email",
            "host": "127.0.0.1",
            "port": smtp.port,
            "security": "none",
            "from": "relay@acme.example",
            "to": ["ops@acme.example"],
        }
        connectors = {
            "out": webhook(target, delivery=FAST),
            "mail": mail,
            "teams": {"type": "teams", "webhook_url": teams.webhook_url(flow)},
        }
        routes = [{"connector": "out", "events": ["*"]}]
        extra = {
            "admin": {"token": TOKEN},
            "alerts": {"connectors": ["mail", "teams"], "interval": "0.1s"},
        }
        data = config_dict(db_url, connectors, routes, extra=extra)
        loaded = parse_config(yaml.safe_dump(data), connector_types=connector_types([]), env={})
        async with run_relay(loaded) as relay:
            assert (await relay.post(call_body("inc-mail-1"))).status_code == 200
            await relay.wait_until(lambda: smtp.accepted and flow.cards, what="both alerts")
            [dead] = [d for d in await relay.deliveries() if d.state == "dead"]
            await api(relay, "POST", f"/deliveries/{dead.id}/cancel")
            await relay.wait_until(
                lambda: len(smtp.accepted) == 2 and len(flow.cards) == 2, what="both resolves"
            )
    subjects = [m.message["Subject"] for m in smtp.accepted]
    assert subjects == [
        f"[relay] incident: {DEAD_LETTERS} · out",
        f"[relay] resolved: {DEAD_LETTERS} · out",
    ]
    text = smtp.accepted[0].message.get_body(("plain",)).get_content()
    assert "1 dead deliveries" in text
    heads = [card["body"][0]["text"] for card in flow.cards]
    assert heads[0].startswith("🔴 relay incident") and heads[1].startswith("✅ resolved")
