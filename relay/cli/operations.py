"""``relay events|deliveries|replay|erase|purge``: the dashboard's powers, on the database directly.

No running service is needed (a broken deployment is when these matter most); a running one
picks up retried or replayed deliveries on its next poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import click
import msgspec

from relay.admin import actions
from relay.admin import schemas as s
from relay.admin.filters import BadFilter, EventFilter
from relay.admin.queries import Queries
from relay.admin.retention import erase as erase_numbers
from relay.admin.retention import purge as purge_now
from relay.cli.settings import load_settings
from relay.config import Settings
from relay.runtime import running
from relay.store import db
from relay.store.records import Store

T = TypeVar("T")
TIME = click.DateTime(["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M"])
STATE = click.Choice([st.value for st in s.STATES])  # click matches enum members by name


def _run(ctx: click.Context, work: Callable[[Settings, Store], Awaitable[T]]) -> T:
    """Run one piece of database work; a refused request is a clean error, not a traceback."""
    settings = load_settings(ctx)

    async def go() -> T:
        async with running(settings, role="cli") as rt:  # the store alone
            return await work(settings, rt.store)

    try:
        return asyncio.run(go())
    except (BadFilter, ValueError) as exc:
        raise click.UsageError(str(exc)) from None
    except actions.ActionError as exc:
        raise click.ClickException(exc.message) from None
    except db.SchemaOutOfDate as exc:
        raise click.ClickException(str(exc)) from None


def _utc(value: datetime | None) -> datetime | None:
    return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


def _json(value: Any) -> None:
    click.echo(msgspec.json.format(msgspec.json.encode(value), indent=2).decode())


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else "-"


def _states(states: dict[str, int]) -> str:
    return " ".join(f"{k}:{v}" for k, v in sorted(states.items())) or "-"


def _count(n: int, one: str, many: str | None = None) -> str:
    return f"{n} {one if n == 1 else (many or one + 's')}"


def _more(cursor: str | None) -> None:
    if cursor:
        click.echo(f"… more: --cursor {cursor}", err=True)


as_json = click.option("--json", "as_json", is_flag=True, help="Print JSON.")
paging = [
    click.option("--limit", default=50, show_default=True, help="Rows per page (max 500)."),
    click.option("--cursor", help="Continue after the previous page's last row."),
]


def _paged(f: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed(paging):
        f = option(f)
    return f


@click.group()
def events() -> None:
    """Stored events."""


@events.command("list")
@click.option("--integration", help="Only this Wildix Integration ID.")
@click.option("--type", "type_", help="Event type glob, e.g. 'call:*'.")
@click.option("--call-id", help="Only this call (Wildix call id).")
@click.option("--phone", help="A phone number in any written form.")
@click.option("--since", type=TIME, help="Received at or after (UTC).")
@click.option("--until", type=TIME, help="Received before (UTC).")
@click.option("--status", type=STATE, help="Has a delivery in this state.")
@_paged
@as_json
@click.pass_context
def events_list(
    ctx: click.Context, as_json: bool, limit: int, cursor: str | None, **kw: Any
) -> None:
    """List events, newest first."""
    f = EventFilter(
        integration=kw["integration"],
        type=kw["type_"],
        call_id=kw["call_id"],
        phone=kw["phone"],
        since=_utc(kw["since"]),
        until=_utc(kw["until"]),
        status=kw["status"],
    )
    page = _run(ctx, lambda st, store: Queries(store, st).events(f, cursor=cursor, limit=limit))
    if as_json:
        return _json(page)
    if not page.items:
        click.echo("no events match" if cursor is None else "no more events")
        return
    row = "{:>8}  {:<19}  {:<10} {:<22} {:<30} {}"
    click.echo(row.format("ID", "RECEIVED (UTC)", "INTEGR.", "TYPE", "CALL", "DELIVERIES"))
    for e in page.items:
        click.echo(
            row.format(
                e.id,
                _when(e.received_at),
                e.integration_id,
                e.type,
                e.call_id or "-",
                _states(e.delivery_states),
            )
        )
    _more(page.next_cursor)


@events.command("show")
@click.argument("event_id", type=int)
@as_json
@click.pass_context
def events_show(ctx: click.Context, event_id: int, as_json: bool) -> None:
    """One event: raw body, normalized view, deliveries and attempts."""
    found = _run(ctx, lambda st, store: Queries(store, st).event(event_id))
    if found is None:
        raise click.ClickException(f"no event {event_id}")
    if as_json:
        return _json(found)
    click.echo(f"event {found.id}  {found.type}  integration {found.integration_id}")
    click.echo(f"call {found.call_id or '-'}  occurred {_when(found.occurred_at)}")
    click.echo(f"received {_when(found.received_at)} via {found.transport}")
    click.echo(f"numbers {', '.join(found.numbers) or '-'}")
    for d in found.deliveries:
        tried = _count(d.attempts, "attempt")
        click.echo(f"\ndelivery {d.id} → {d.connector}: {d.state} after {tried}")
        retries = list(d.manual_retries or [])
        for n, a in enumerate(d.history or []):
            while retries and retries[0].after_attempts <= n:
                _echo_retry(retries.pop(0))
            code = f" HTTP {a.status_code}" if a.status_code else ""
            error = f"  {a.error}" if a.error else ""
            click.echo(
                f"  #{a.number} {_when(a.started_at)} {a.outcome}{code} {a.duration_ms}ms{error}"
            )
        for retry in retries:  # after the last attempt: the retry is still due
            _echo_retry(retry)
    click.echo("\nnormalized:")
    _json(found.normalized)
    click.echo("raw:")
    _json(found.raw)


def _echo_retry(retry: s.ManualRetry) -> None:
    click.echo(f"  manual retry {_when(retry.requested_at)} by {retry.requested_by or 'unknown'}")


@click.group()
def deliveries() -> None:
    """Deliveries: list them, retry or cancel one."""


@deliveries.command("list")
@click.option("--state", type=STATE, help="e.g. dead for the dead letters.")
@click.option("--connector", help="Only this connector (its name in config.yaml).")
@click.option("--integration", help="Only this Wildix Integration ID.")
@click.option("--event", "event_id", type=int, help="Only this event's deliveries (event id).")
@_paged
@as_json
@click.pass_context
def deliveries_list(
    ctx: click.Context, as_json: bool, limit: int, cursor: str | None, **kw: Any
) -> None:
    """List deliveries, newest first."""
    page = _run(
        ctx,
        lambda st, store: Queries(store, st).deliveries(
            state=kw["state"],
            connector=kw["connector"],
            integration=kw["integration"],
            event_id=kw["event_id"],
            cursor=cursor,
            limit=limit,
        ),
    )
    if as_json:
        return _json(page)
    if not page.items:
        click.echo("no deliveries match" if cursor is None else "no more deliveries")
        return
    row = "{:>8}  {:>8}  {:<16} {:<10} {:>8}  {:<19}  {}"
    click.echo(
        row.format("ID", "EVENT", "CONNECTOR", "STATE", "ATTEMPTS", "UPDATED (UTC)", "ERROR")
    )
    for d in page.items:
        click.echo(
            row.format(
                d.id,
                d.event_id,
                d.connector,
                d.state,
                d.attempts,
                _when(d.updated_at),
                d.last_error or "",
            )
        )
    _more(page.next_cursor)


@deliveries.command("retry")
@click.argument("delivery_ids", type=int, nargs=-1, required=True)
@click.pass_context
def deliveries_retry(ctx: click.Context, delivery_ids: tuple[int, ...]) -> None:
    """Make deliveries due now (a dead one gets its full retry schedule again)."""
    by = actions.cli_operator()
    _each(ctx, delivery_ids, lambda store, i: actions.retry(store, i, by=by), "due now")


@deliveries.command("cancel")
@click.argument("delivery_ids", type=int, nargs=-1, required=True)
@click.pass_context
def deliveries_cancel(ctx: click.Context, delivery_ids: tuple[int, ...]) -> None:
    """Cancel pending or dead deliveries."""
    _each(ctx, delivery_ids, actions.cancel, s.DeliveryState.CANCELLED)


def _each(
    ctx: click.Context,
    ids: tuple[int, ...],
    act: Callable[[Store, int], Awaitable[None]],
    done: str,
) -> None:
    async def work(_: Settings, store: Store) -> list[str]:
        failures = []
        for delivery_id in ids:
            try:
                await act(store, delivery_id)
                click.echo(f"delivery {delivery_id}: {done}")
            except actions.ActionError as exc:
                failures.append(exc.message)
        return failures

    failures = _run(ctx, work)
    for message in failures:
        click.secho(message, fg="red", err=True)
    if failures:
        sys.exit(1)


@click.command()
@click.option("--event", "event_id", type=int, help="One event by id.")
@click.option("--integration", help="Only this Wildix Integration ID's events.")
@click.option("--type", "type_", help="Event type glob, e.g. 'call:*'.")
@click.option("--call-id", help="Only this call's events (Wildix call id).")
@click.option("--since", type=TIME, help="Received at or after (UTC).")
@click.option("--until", type=TIME, help="Received before (UTC).")
@click.option("--connector", help="Deliver to this connector only, whatever the routes say.")
@click.option("--dry-run", is_flag=True, help="Only count what would be created.")
@as_json
@click.pass_context
def replay(ctx: click.Context, dry_run: bool, as_json: bool, **kw: Any) -> None:
    """Create new deliveries for stored events (through today's routes, or to --connector)."""
    request = s.ReplayRequest(
        event_id=kw["event_id"],
        integration=kw["integration"],
        type=kw["type_"],
        call_id=kw["call_id"],
        since=_utc(kw["since"]),
        until=_utc(kw["until"]),
        connector=kw["connector"],
        dry_run=dry_run,
    )
    with contextlib.ExitStack() as stack:
        bar: Any = None

        def progress(done: int, total: int) -> None:
            nonlocal bar
            if bar is None and not as_json:
                label = "counting" if dry_run else "replaying"
                bar = stack.enter_context(
                    click.progressbar(length=total, label=label, file=sys.stderr)
                )
            if bar is not None:
                bar.update(done)

        result = _run(ctx, lambda st, store: actions.replay(store, st, request, progress=progress))
    if as_json:
        return _json(result)
    verb = "would create" if result.dry_run else "created"
    click.echo(
        f"{_count(result.events, 'event')} matched; "
        f"{verb} {_count(result.deliveries, 'delivery', 'deliveries')}"
    )
    for name, n in result.by_connector.items():
        click.echo(f"  {name}: {n}")
    if result.skipped:
        click.echo(f"  skipped {_count(result.skipped, 'event')} (no route matches them today)")


@click.command()
@click.option("--phone", "phones", multiple=True, required=True, help="Repeat for several.")
@click.option("--dry-run", is_flag=True, help="Only report what would be removed.")
@click.pass_context
def erase(ctx: click.Context, phones: tuple[str, ...], dry_run: bool) -> None:
    """Remove stored events, rejected bodies and links mentioning a phone number."""
    out = _run(ctx, lambda _, store: erase_numbers(store, list(phones), dry_run=dry_run))
    verb = "would remove" if dry_run else "removed"
    click.echo(f"numbers (digits): {', '.join(out.numbers)}")
    click.echo(
        f"{verb} {_count(len(out.events), 'event')} "
        f"({_count(out.deliveries, 'delivery', 'deliveries')}, {_count(out.attempts, 'attempt')}),"
        f" {_count(out.rejections, 'rejected request')}, {_count(out.links, 'connector link')}"
    )
    for event_id, integration, type_ in out.events:
        click.echo(f"  event {event_id}  {integration}  {type_}")
    if out.skipped_running:
        ids = ", ".join(map(str, out.skipped_running))
        click.secho(
            f"kept events {ids}: a delivery is running now; run erase again shortly", fg="yellow"
        )
        sys.exit(2)
    click.echo(
        "Copies already delivered (CRMs, Slack, files, e-mail) are outside relay: erase them there."
    )


@click.command()
@click.pass_context
def purge(ctx: click.Context) -> None:
    """Apply the retention settings now (the service also does so every retention.interval)."""
    out = _run(ctx, lambda st, store: purge_now(store, st))
    click.echo(
        f"purged {_count(out.events, 'event')}, {_count(out.rejections, 'rejected request')}, "
        f"{_count(out.incidents, 'resolved incident')} and "
        f"{_count(out.transitions, 'circuit transition')}; "
        f"{_count(out.spared, 'old event')} kept because their deliveries are still pending"
    )


def register(cli: click.Group) -> None:
    for command in (events, deliveries, replay, erase, purge):
        cli.add_command(command)
