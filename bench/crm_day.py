"""A scripted day of Wildix calls through `relay serve` to every CRM fake (tests/support/crm.py).

200 calls (both generations, answered, missed, internal), events interleaved across calls,
reordered within calls (the final record before the live end, updates before starts), some sent
twice byte for byte (absorbed at ingest) and some re-sent with a new envelope time (real
duplicates for the connectors). Each fake runs at its default plan limits and each connector at
its defaults. Prints, per CRM, how many records each call got, the CRM API requests per logged
call and how many requests were rejected for rate limits.

By default the day is posted as fast as the webhook takes it, so a call's later events often
arrive while its earlier ones still wait (and coalesce). ``--paced``: real time, where a call's
events are seconds to minutes apart: the n-th event of every call is posted, then relay
settles, then the (n+1)-th, so each event reaches the CRM before the next one of its call
arrives. ``--outage``: the whole day is queued before anything is delivered (the CRMs were
down), then drained.

    .venv/bin/python -m bench.crm_day [--calls 200] [--seed 7] [--crm hubspot ...]
        [--paced | --outage] [--create-at end] [--set KEY=VALUE] [--by-path]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import logging
import random
import re
import socket
import sqlite3
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from relay.wildix.signature import sign
from tests.fakes.server import serve
from tests.support.calls import current_inbound_missed, current_outbound, legacy
from tests.support.crm import AGENT_EMAIL, CRMS, Vendor, duplicate
from tests.support.relay import SECRET, config_dict

ROOT = Path(__file__).resolve().parents[1]


def numbers(rng: random.Random, n: int) -> list[str]:
    return [f"+4420{rng.randrange(70000000, 79999999)}" for _ in range(n)]


def script(rng: random.Random, calls: int, known: list[str], unknown: list[str]):
    """(call id, kind, integration, events) per call."""
    out = []
    for i in range(calls):
        number = rng.choice(known if rng.random() < 0.8 else unknown)
        offset, cid = i * 37_000, f"day_{i:03d}"
        kind = rng.choices(
            ["cur_out", "cur_missed", "cur_noanswer", "leg_out", "leg_missed", "internal"],
            [35, 20, 10, 15, 12, 8],
        )[0]
        if kind == "cur_out":
            events, integ = (
                current_outbound(
                    cid, number, offset=offset, recording_url=f"https://rec.example/{cid}.wav"
                ),
                "q7m2xk",
            )
        elif kind == "cur_missed":
            events, integ = current_inbound_missed(cid, number, offset=offset), "q7m2xk"
        elif kind == "cur_noanswer":
            events, integ = current_outbound(cid, number, offset=offset, answered=False), "q7m2xk"
        elif kind == "leg_out":
            events, integ = legacy(cid, number, offset=offset), "h3p9ta"
        elif kind == "leg_missed":
            events, integ = (
                legacy(cid, number, direction="inbound", answered=False, offset=offset),
                "h3p9ta",
            )
        else:
            events, integ = legacy(cid, None, offset=offset), "h3p9ta"
        bodies = [b for _, b in events]
        if rng.random() < 0.3:  # reordered within the call
            rng.shuffle(bodies)
        sent = []
        for body in bodies:
            sent.append(body)
            roll = rng.random()
            if roll < 0.15:
                sent.append(body)  # Wildix retry, same bytes: absorbed at ingest
            elif roll < 0.35:
                sent.append(duplicate(body))  # same event, new envelope time: reaches connectors
        out.append((cid, kind, integ, sent))
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def states(db: Path) -> dict[str, int]:
    with sqlite3.connect(db) as conn:
        return dict(conn.execute("select state, count(*) from deliveries group by state"))


@dataclass
class Day:
    codes: list[int]  # webhook answers
    posted: float  # seconds to post every event
    elapsed: float  # seconds until every delivery settled
    deliveries: dict[str, int]  # state → count


@contextlib.asynccontextmanager
async def serving(
    tmp: Path, connectors: dict, port: int, *options: str
) -> AsyncIterator[httpx.AsyncClient]:
    """`relay serve` on the day's store with these connectors, routed every call event."""
    data = config_dict(f"sqlite+aiosqlite:///{tmp / 'relay.db'}", connectors)
    data["delivery"] = {"max_attempts": 10, "schedule": ["1s", "2s", "5s"], "timeout": "15s"}
    data["logging"] = {"level": "WARNING", "format": "text"}
    data["server"] = {"host": "127.0.0.1", "port": port}
    (tmp / "relay.yaml").write_text(yaml.safe_dump(data))
    with (tmp / "relay.log").open("a") as log:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            *("-m", "relay", "--config", str(tmp / "relay.yaml"), "serve", *options),
            cwd=ROOT,
            stdout=log,
            stderr=asyncio.subprocess.STDOUT,
        )
    try:
        async with httpx.AsyncClient(timeout=10) as client:
            while True:
                try:
                    if (await client.get(f"http://127.0.0.1:{port}/readyz")).status_code == 200:
                        break
                except httpx.TransportError:
                    await asyncio.sleep(0.1)
            yield client
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 30)


def interleaved(rng: random.Random, plan: list) -> list[tuple[str, bytes]]:
    """Every call's events in its (possibly reordered) order, the calls interleaved."""
    queues = [collections.deque((integ, b) for b in sent) for _, _, integ, sent in plan]
    stream = []
    while any(queues):
        q = rng.choice([q for q in queues if q])
        stream.append(q.popleft())
    return stream


def rounds(plan: list) -> list[list[tuple[str, bytes]]]:
    """Round n holds the n-th event of every call that has one (``--paced``)."""
    longest = max(len(sent) for *_, sent in plan)
    return [
        [(integ, sent[n]) for _, _, integ, sent in plan if n < len(sent)] for n in range(longest)
    ]


async def post_day(
    stream: list[tuple[str, bytes]], client: httpx.AsyncClient, port: int
) -> list[int]:
    """Post like Wildix would, 40 at a time; returns the webhook's answers."""

    async def post(integ: str, body: bytes) -> int:
        headers = {"x-signature": sign(body, SECRET), "content-type": "application/json"}
        url = f"http://127.0.0.1:{port}/webhooks/{integ}"
        return (await client.post(url, content=body, headers=headers)).status_code

    codes = []
    for i in range(0, len(stream), 40):
        codes += await asyncio.gather(*(post(ig, b) for ig, b in stream[i : i + 40]))
    return codes


async def run_day(
    rng: random.Random, plan: list, connectors: dict, *, outage: bool = False, paced: bool = False
) -> Day:
    """Post the day and return once every delivery has settled. With ``outage`` the day is
    ingested while nothing delivers (`serve --no-dispatch`: the CRMs were unreachable all day),
    then one `relay serve` drains the whole backlog. With ``paced`` relay settles after each
    round of events."""
    tmp = Path(tempfile.mkdtemp(prefix="crm_day_"))
    port = free_port()
    t0 = time.monotonic()
    async with serving(tmp, connectors, port, *(["--no-dispatch"] if outage else [])) as client:
        codes = []
        for batch in rounds(plan) if paced else [interleaved(rng, plan)]:
            codes += await post_day(batch, client, port)
            if paced:
                await settled(tmp / "relay.db")
        posted = time.monotonic() - t0
        if outage:
            t0 = time.monotonic()
        else:
            await settled(tmp / "relay.db")
    if outage:
        async with serving(tmp, connectors, port):
            await settled(tmp / "relay.db")
    return Day(codes, posted, time.monotonic() - t0, states(tmp / "relay.db"))


async def settled(db: Path) -> None:
    """Poll the store (another process writes it) until no delivery is pending."""
    while not (s := states(db)) or not set(s) <= {"succeeded", "dead", "superseded"}:  # noqa: ASYNC110
        await asyncio.sleep(0.5)


def print_day(calls: int, plan: list, day: Day) -> None:
    kinds = collections.Counter(kind for _, kind, _, _ in plan)
    print(f"calls: {calls} ({', '.join(f'{k} {v}' for k, v in sorted(kinds.items()))})")
    print(
        f"webhook posts: {len(day.codes)} ({collections.Counter(day.codes)}), posted in "
        f"{day.posted:.1f}s; all delivered in {day.elapsed:.1f}s; deliveries {day.deliveries}"
    )


def print_records(name: str, plan: list, records: Callable[[str], list], total: int) -> int:
    """How many CRM records each call got (1 per external call, 0 per internal one); returns
    how many calls were logged."""
    per_call: collections.Counter[int] = collections.Counter()
    wrong = []
    for cid, kind, _, _ in plan:
        n = len(records(cid))
        per_call[n] += 1
        if n != (0 if kind == "internal" else 1):
            wrong.append((cid, kind, n))
    external = sum(1 for _, k, _, _ in plan if k != "internal")
    print(
        f"{name}: records per call {dict(sorted(per_call.items()))} "
        f"(external calls {external} → exactly 1 each; internal {len(plan) - external} → 0); "
        f"records in CRM {total}; calls not as expected: {wrong or 'none'}"
    )
    return external - sum(1 for _, kind, n in wrong if kind != "internal" and n == 0)


async def main(args: argparse.Namespace) -> None:
    for name in ("", "uvicorn.error", "httpx"):  # the fakes and httpx stay quiet
        logging.getLogger(name).setLevel(logging.WARNING)
    rng = random.Random(args.seed)
    known, unknown = numbers(rng, 40), numbers(rng, 15)
    vendors = [CRMS[name] for name in args.crm or CRMS]
    # each fake at its default plan limits, each connector at its defaults (the same plan)
    fakes = {vendor.name: vendor.fake() for vendor in vendors}
    for vendor in vendors:
        vendor.add_owner(fakes[vendor.name], AGENT_EMAIL)
        for n in known:
            vendor.add_person(fakes[vendor.name], n, f"Known {n[-4:]}")
    plan = script(rng, args.calls, known, unknown)
    async with contextlib.AsyncExitStack() as stack:
        connectors = {}
        for vendor in vendors:
            url = await stack.enter_async_context(serve(fakes[vendor.name].app))
            block = vendor.credentials(fakes[vendor.name], url, vendor.flow)
            connectors[vendor.name] = {**block, "default_region": "GB"}
            if args.create_at:
                connectors[vendor.name]["create_at"] = args.create_at
            for option in args.set:
                key, _, value = option.partition("=")
                connectors[vendor.name][key] = yaml.safe_load(value)
        day = await run_day(rng, plan, connectors, outage=args.outage, paced=args.paced)
    print_day(args.calls, plan, day)
    for vendor in vendors:
        print_requests(vendor, fakes[vendor.name], plan)
        if args.by_path:
            print_paths(fakes[vendor.name])


def print_requests(vendor: Vendor, fake: Any, plan: list) -> None:
    """Records per call, then the CRM API requests each logged call cost."""
    total = len(vendor.all_records(fake))
    logged = print_records(vendor.name, plan, lambda cid: vendor.records(fake, cid), total)
    refused = sum(1 for *_, status in fake.log if status == 429)
    window = getattr(fake, "burst", None)  # a fake without one has only a daily allowance
    busiest = (
        f", busiest window {window.busiest()}/{window.limit} per {window.interval:g}s"
        if window
        else ""
    )
    print(
        f"{vendor.name}: requests {len(fake.log)} for {logged} logged calls "
        f"({len(fake.log) / max(logged, 1):.2f} per call); answered 429: {refused}{busiest}"
    )


_ID = re.compile(r"\([^)]*\)")  # an OData key: phonecalls(<guid>)


def print_paths(fake: Any) -> None:
    """The CRM's requests by (method, path with its ids as {id}), busiest first."""
    paths = collections.Counter(
        (
            method,
            re.sub(r"/[-0-9A-Za-z]*[0-9][-0-9A-Za-z]*(?=/|$)", "/{id}", _ID.sub("({id})", path)),
        )
        for method, path, *_ in fake.log
    )
    for (method, path), n in paths.most_common():
        print(f"    {n:6d} {method} {path}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--crm", action="append", choices=sorted(CRMS), help="repeatable; default: every CRM"
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--outage",
        action="store_true",
        help="ingest the whole day before anything is delivered (CRMs down all day), then drain",
    )
    mode.add_argument(
        "--paced",
        action="store_true",
        help="real time: each event of a call is delivered before the call's next one arrives",
    )
    parser.add_argument(
        "--create-at",
        choices=["start", "end", "record"],
        help="every CRM's create_at (default: each CRM's own; a CRM refuses one it cannot take)",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a connector option for every CRM chosen (YAML value), e.g. complete_calls=false",
    )
    parser.add_argument(
        "--by-path",
        action="store_true",
        help="also print each CRM's requests by method and path (ids as {id}): where they go",
    )
    asyncio.run(main(parser.parse_args()))
