"""Many concurrent writers, one transaction: the group-commit pattern behind ingest.

While one batch commits, the next accumulates, so a burst costs a handful of commits instead of
one per item, and a quiet moment adds no wait. Each caller is answered only after the commit that
holds its item. A commit that fails because of one item (the store refused what a row holds)
is retried without it, so only that item's caller gets the error; any other failure (the store
is down) fails every caller in the batch.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

from relay.store.rows import RowRefused

T = TypeVar("T")
R = TypeVar("R")


class Batcher(Generic[T, R]):
    def __init__(
        self,
        commit: Callable[[Sequence[T]], Awaitable[Sequence[R]]],
        *,
        max_batch: int = 500,
        concurrency: int = 1,
        linger: int = 2,
        isolate: tuple[type[Exception], ...] = (RowRefused,),
    ) -> None:
        """``linger``: how many turns of the event loop in a row may bring nothing new before a
        batch is closed. Requests already read from their sockets need a turn or two to reach
        ``submit``; waiting for them turns a burst into one commit instead of a single-item
        commit followed by everything else, and costs microseconds when nothing is coming.

        ``isolate``: the errors a commit raises for the sake of one (or a few) of its items,
        which the other items can commit without."""
        self._commit = commit
        self.max_batch = max_batch
        self.concurrency = concurrency  # batches in flight at once (1 for a single-writer db)
        self.linger = linger
        self.isolate = isolate
        self._queue: asyncio.Queue[tuple[T, asyncio.Future[R]]] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []

    async def submit(self, item: T) -> R:
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((item, future))
        if not self._tasks:
            self._tasks = [
                asyncio.create_task(self._run(), name=f"relay-batcher-{n}")
                for n in range(self.concurrency)
            ]
        return await asyncio.shield(future)  # a caller going away must not cancel the commit

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            quiet = 0
            while len(batch) < self.max_batch:
                if self._queue.empty():
                    if quiet >= self.linger:
                        break
                    quiet += 1
                    await asyncio.sleep(0)  # requests already read may be on their way here
                    continue
                quiet = 0
                batch.append(self._queue.get_nowait())
            await self._settle(batch)
            for _ in batch:
                self._queue.task_done()

    async def _settle(self, batch: list[tuple[T, asyncio.Future[R]]]) -> None:
        """Commit ``batch`` and answer its callers. A commit that fails for one item's sake is
        split in halves, each committed on its own, down to the item to blame: its neighbours
        are acknowledged and only it gets the error, for about 2·log2(batch) extra commits.
        Any other error fails the whole batch at once: committing parts of it could not help,
        and a store that is down must not be asked once per item."""
        try:
            results = await self._commit([item for item, _ in batch])
        except Exception as exc:
            if len(batch) > 1 and isinstance(exc, self.isolate):
                middle = len(batch) // 2
                await self._settle(batch[:middle])
                await self._settle(batch[middle:])
                return
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
        else:
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)

    async def close(self) -> None:
        """Let queued items commit, then stop."""
        if self._tasks:
            await self._queue.join()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
