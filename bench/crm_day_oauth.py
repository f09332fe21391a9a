"""The scripted day of bench/crm_day.py (200 calls: both generations, answered, missed, internal,
interleaved, reordered, duplicated) through `relay serve` to the Salesforce and Zoho CRM fakes.

On top of part 1's day: every access token is invalidated a few times during the run (a session
timeout), Salesforce's org runs out of its 24-hour request allowance mid-day and gets it back
seconds later, and the Zoho account allows fewer requests per second than relay was told. Prints,
per CRM, how many records each call got, how many access tokens were issued (the renewals), and
how many requests were rejected for limits.

    .venv/bin/python -m bench.crm_day_oauth [--calls 200] [--seed 7]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import random

from bench.crm_day import numbers, print_day, print_records, run_day, script
from tests.fakes.server import serve
from tests.support.crm import CRMS, ZOHO

SALESFORCE = CRMS["salesforce"].with_flow("jwt_bearer")


async def expire_tokens(fakes: list, every: float, times: int) -> None:
    for _ in range(times):
        await asyncio.sleep(every)
        for fake in fakes:
            fake.tokens.expire_all()


async def restore_quota(fake: object, after: float) -> None:
    """The rolling 24 hours move on: the org's oldest requests age out, its allowance is back."""
    await asyncio.sleep(after)
    fake.daily.limit = None  # type: ignore[attr-defined]


async def main(args: argparse.Namespace) -> None:
    for name in ("", "uvicorn.error"):
        logging.getLogger(name).setLevel(logging.WARNING)
    rng = random.Random(args.seed)
    known, unknown = numbers(rng, 40), numbers(rng, 15)
    sf = SALESFORCE.fake(daily_limit=args.salesforce_quota)
    zoho = ZOHO.fake(limit=args.zoho_limit, interval=1.0)
    for fake in (sf, zoho):
        fake.add_user("giulia.rossi@example.org", "Giulia Rossi")
        for n in known:
            fake.add_contact(n, "Known", n[-4:])
    plan = script(rng, args.calls, known, unknown)
    async with serve(sf.app) as sf_url, serve(zoho.app) as zoho_url:
        connectors = {
            "salesforce": SALESFORCE.block(
                sf, sf_url, rate_limit={"requests": 20, "per": "1s"}, limit_pause="2s"
            ),
            "zoho": ZOHO.block(
                zoho, zoho_url, rate_limit={"requests": 10, "per": "1s"}, limit_pause="1s"
            ),
        }
        chores = [
            asyncio.create_task(expire_tokens([sf, zoho], args.expire_every, args.expiries)),
            asyncio.create_task(restore_quota(sf, args.reset)),
        ]
        try:
            day = await run_day(rng, plan, connectors)
        finally:
            for chore in chores:
                chore.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await chore
    print_day(args.calls, plan, day)
    for name, fake, records, total in (
        ("salesforce", sf, sf.tasks_for, len(sf.tasks)),
        ("zoho", zoho, zoho.calls_for, len(zoho.calls)),
    ):
        print_records(name, plan, records, total)
        refused = sum(1 for _, _, code in fake.log if code == 401)
        limited = fake.daily.rejected if name == "salesforce" else fake.burst.rejected
        kind = "403 REQUEST_LIMIT_EXCEEDED" if name == "salesforce" else "429 TOO_MANY_REQUESTS"
        print(
            f"{name}: requests {len(fake.log)}; access tokens issued {fake.tokens.issued} "
            f"(1 + {fake.tokens.issued - 1} renewals; {refused} requests met an invalidated "
            f"token); rejected for limits: {limited} ({kind})"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--salesforce-quota", type=int, default=250, help="requests the org has left at first"
    )
    parser.add_argument(
        "--reset", type=float, default=30.0, help="seconds until its allowance is back"
    )
    parser.add_argument("--zoho-limit", type=int, default=8, help="the account's requests per s")
    parser.add_argument("--expire-every", type=float, default=8.0, help="seconds")
    parser.add_argument("--expiries", type=int, default=3)
    asyncio.run(main(parser.parse_args()))
