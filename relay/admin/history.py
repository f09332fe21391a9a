"""A delivery's attempt history as operators read it: numbered across manual retries.

The queue counts attempts against the retry budget, which a manual retry starts afresh; the
history keeps counting instead (#3 follows #2 and the retry between them), from the
``manual_retries`` rows the retry action records.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from relay.admin import schemas as s
from relay.store.tables import attempts, manual_retries


async def retries_of(conn: AsyncConnection, ids: Sequence[int]) -> dict[int, list[Any]]:
    """Each delivery's manual retries, oldest first."""
    out: dict[int, list[Any]] = defaultdict(list)
    if ids:
        rows = await conn.execute(
            select(manual_retries)
            .where(manual_retries.c.delivery_id.in_(list(ids)))
            .order_by(manual_retries.c.id)
        )
        for r in rows:
            out[r.delivery_id].append(r)
    return out


def number_base(retries: Sequence[Any]) -> int:
    """What to add to the queue's count: the attempts made before the latest fresh budget."""
    return int(retries[-1].number_base) if retries else 0


async def histories(
    conn: AsyncConnection,
    ids: Sequence[int],
    retries: dict[int, list[Any]],
    redact: Callable[[str | None], str | None],
) -> dict[int, tuple[list[s.Attempt], list[s.ManualRetry]]]:
    """Each delivery's attempts (numbered on across its manual retries) and those retries."""
    tried: dict[int, list[Any]] = defaultdict(list)
    if ids:
        result = await conn.execute(
            select(attempts).where(attempts.c.delivery_id.in_(list(ids))).order_by(attempts.c.id)
        )
        for a in result:
            tried[a.delivery_id].append(a)
    return {i: _numbered(tried[i], retries.get(i, []), redact) for i in ids}


def _numbered(
    rows: list[Any], marks: list[Any], redact: Callable[[str | None], str | None]
) -> tuple[list[s.Attempt], list[s.ManualRetry]]:
    def base_for(attempt_id: int) -> int:
        base = 0
        for m in marks:
            if m.after_attempt_id is None or m.after_attempt_id < attempt_id:
                base = int(m.number_base)
        return base

    history = [
        s.Attempt(
            number=a.number + base_for(a.id),
            started_at=a.started_at,
            duration_ms=a.duration_ms,
            outcome=a.outcome,
            status_code=a.status_code,
            error=redact(a.error),
            worker=a.worker,
        )
        for a in rows
    ]
    shown = [
        s.ManualRetry(
            requested_at=m.requested_at,
            requested_by=m.requested_by,
            after_attempts=sum(
                1 for a in rows if m.after_attempt_id is not None and a.id <= m.after_attempt_id
            ),
        )
        for m in marks
    ]
    return history, shown
