"""A scripted day of Wildix calls through `relay serve` to the HubSpot and Pipedrive fakes.

200 calls (both generations, answered, missed, internal), events interleaved across calls,
reordered within calls (the final record before the live end, updates before starts), some sent
twice byte for byte (absorbed at ingest) and some re-sent with a new envelope time (real
duplicates for the connectors). The fakes run at HubSpot Professional and Pipedrive Essential
limits. Prints, per CRM, how many records each call got and how many requests were rejected
for rate limits.

    .venv/bin/python -m bench.crm_day [--calls 200] [--seed 7]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import logging
import random
import socket
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import yaml

from relay.wildix.signature import sign
from tests.fakes.hubspot import FakeHubSpot
from tests.fakes.pipedrive import FakePipedrive
from tests.fakes.server import serve
from tests.support.calls import current_inbound_missed, current_outbound, legacy
from tests.support.crm import duplicate
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


async def run_day(rng: random.Random, plan: list, connectors: dict) -> Day:
    """`relay serve` with these connectors (routed every call event), the plan's events posted
    like Wildix would, interleaved across calls; returns once every delivery has settled."""
    tmp = Path(tempfile.mkdtemp(prefix="crm_day_"))
    db = tmp / "relay.db"
    port = free_port()
    data = config_dict(f"sqlite+aiosqlite:///{db}", connectors)
    data["delivery"] = {"max_attempts": 10, "schedule": ["1s", "2s", "5s"], "timeout": "15s"}
    data["logging"] = {"level": "WARNING", "format": "text"}
    data["server"] = {"host": "127.0.0.1", "port": port}
    (tmp / "relay.yaml").write_text(yaml.safe_dump(data))
    log = (tmp / "relay.log").open("w")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "relay",
        "--config",
        str(tmp / "relay.yaml"),
        "serve",
        cwd=ROOT,
        stdout=log,
        stderr=asyncio.subprocess.STDOUT,
    )
    t0 = time.monotonic()
    try:
        async with httpx.AsyncClient(timeout=10) as client:
            while True:
                try:
                    if (await client.get(f"http://127.0.0.1:{port}/readyz")).status_code == 200:
                        break
                except httpx.TransportError:
                    await asyncio.sleep(0.1)
            # interleave the calls: a day's events arrive mixed, each call's in its order
            queues = [collections.deque((integ, b) for b in sent) for _, _, integ, sent in plan]
            stream = []
            while any(queues):
                q = rng.choice([q for q in queues if q])
                stream.append(q.popleft())
            sem = asyncio.Semaphore(8)

            async def post(integ: str, body: bytes) -> int:
                async with sem:
                    r = await client.post(
                        f"http://127.0.0.1:{port}/webhooks/{integ}",
                        content=body,
                        headers={
                            "x-signature": sign(body, SECRET),
                            "content-type": "application/json",
                        },
                    )
                    return r.status_code

            t_post = time.monotonic()
            codes = []
            for i in range(0, len(stream), 40):  # roughly in arrival order, 40 at a time
                codes += await asyncio.gather(*(post(ig, b) for ig, b in stream[i : i + 40]))
            posted = time.monotonic() - t_post
        while True:
            s = states(db)
            if s and set(s) <= {"succeeded", "dead"}:
                break
            await asyncio.sleep(0.5)
        elapsed = time.monotonic() - t0
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 30)
    return Day(codes, posted, elapsed, states(db))


def print_day(calls: int, plan: list, day: Day) -> None:
    kinds = collections.Counter(kind for _, kind, _, _ in plan)
    print(f"calls: {calls} ({', '.join(f'{k} {v}' for k, v in sorted(kinds.items()))})")
    print(
        f"webhook posts: {len(day.codes)} ({collections.Counter(day.codes)}), posted in "
        f"{day.posted:.1f}s; all delivered in {day.elapsed:.1f}s; deliveries {day.deliveries}"
    )


def print_records(name: str, plan: list, records: Callable[[str], list], total: int) -> None:
    """How many CRM records each call got: 1 per external call, 0 per internal one."""
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


async def main(calls: int, seed: int, hubspot_limit: int, pipedrive_limit: int) -> None:
    for name in ("", "uvicorn.error"):  # the fakes and httpx stay quiet
        logging.getLogger(name).setLevel(logging.WARNING)
    rng = random.Random(seed)
    known, unknown = numbers(rng, 40), numbers(rng, 15)
    # relay is configured for HubSpot Professional (190 / 10 s; search 5 / s) and Pipedrive
    # Essential (20 / 2 s; search 10 / 2 s); the accounts may allow less (shared with other apps)
    hub = FakeHubSpot(limit=hubspot_limit, interval=10.0)
    pipe = FakePipedrive(limit=pipedrive_limit, interval=2.0)
    hub.add_owner("giulia.rossi@example.org")
    pipe.add_user("giulia.rossi@example.org", "Giulia Rossi")
    for n in known:
        hub.add_contact(n, "Known", n[-4:])
        pipe.add_person(f"Known {n[-4:]}", n)
    plan = script(rng, calls, known, unknown)
    async with serve(hub.app) as hub_url, serve(pipe.app) as pipe_url:
        connectors = {
            "hubspot": {
                "type": "hubspot",
                "token": hub.token,
                "base_url": hub_url,
                "default_region": "GB",
                "rate_limit": {"requests": 190, "per": "10s"},
            },
            "pipedrive": {
                "type": "pipedrive",
                "api_token": pipe.api_token,
                "base_url": pipe_url,
                "default_region": "GB",
            },
        }
        day = await run_day(rng, plan, connectors)
    print_day(calls, plan, day)
    for name, fake, records in (
        ("hubspot", hub, hub.calls_for),
        ("pipedrive", pipe, pipe.logs_for),
    ):
        total = len(fake.calls) if name == "hubspot" else len(fake.call_logs)
        print_records(name, plan, records, total)
        print(
            f"{name}: requests {len(fake.log)}; rejected for rate limits: burst "
            f"{fake.burst.rejected}, search {fake.search.rejected}, daily {fake.daily.rejected};"
            f" busiest window {fake.burst.busiest()}/{fake.burst.limit} per "
            f"{fake.burst.interval:g}s, search {fake.search.busiest()}/{fake.search.limit}"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--hubspot-limit", type=int, default=190, help="the account's, per 10 s")
    parser.add_argument("--pipedrive-limit", type=int, default=20, help="the account's, per 2 s")
    args = parser.parse_args()
    asyncio.run(main(args.calls, args.seed, args.hubspot_limit, args.pipedrive_limit))
