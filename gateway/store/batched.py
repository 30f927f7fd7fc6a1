"""One statement's rows for many keys, read together.

A check made at every request (is the kept view of this case current?) costs a round
trip each on PostgreSQL: a connection taken from the pool and given back, the
statement, its rows. `BatchedRows` answers the callers that ask while a read is under
way with the next read, one statement for all their keys. No caller is answered from a
read that started before it asked, so each still sees every change committed before
its request. A lone caller reads at once, in its own task. SQLite reads inline, in
microseconds: there each caller reads its own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Hashable
from typing import Any

from sqlalchemy.sql import ClauseElement

from gateway.store.engine import Store


class BatchedRows:
    """``one`` selects the rows of the key bound as ``key``; ``many`` the rows of every
    key in the list bound as ``keys``, in the same order within a key (the key's rows
    are told apart by column ``key_column``)."""

    def __init__(
        self, store: Store, one: ClauseElement, many: ClauseElement, key: str, key_column: int
    ) -> None:
        self.store = store
        self._one = one
        self._many = many
        self._key = key
        self._key_column = key_column
        self._waiting: dict[Hashable, list[asyncio.Future[list[tuple[Any, ...]]]]] = {}
        self._reading = False
        self._drainer: asyncio.Task[None] | None = None
        #: How many reads were made, and for how many callers (see `rows`).
        self.reads = 0
        self.callers = 0

    async def rows(self, key: Hashable) -> list[tuple[Any, ...]]:
        if self.store.is_sqlite:
            return await self.store.read_rows(self._one, {self._key: key})
        future: asyncio.Future[list[tuple[Any, ...]]] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(key, []).append(future)
        if not self._reading:
            # Nothing under way: this caller reads at once, in its own task, for all
            # that wait (itself among them); those who come meanwhile are read for by
            # a task of the batcher's own, so that this caller answers without them.
            try:
                await self._read_waiting()
            finally:
                if self._waiting and (self._drainer is None or self._drainer.done()):
                    self._drainer = asyncio.create_task(self._drain(), name="batched-rows")
        return await future

    async def _drain(self) -> None:
        while self._waiting and not self._reading:
            await self._read_waiting()

    async def _read_waiting(self) -> None:
        """One read for every caller waiting now: all asked before it starts."""
        waiting, self._waiting = self._waiting, {}
        self._reading = True
        self.reads += 1
        self.callers += sum(len(futures) for futures in waiting.values())
        try:
            if len(waiting) == 1:
                [key] = waiting
                found = await self.store.read_rows(self._one, {self._key: key})
            else:
                found = await self.store.read_rows(self._many, {"keys": list(waiting)})
        except Exception as exc:
            for futures in waiting.values():
                for future in futures:
                    if not future.done():
                        future.set_exception(exc)
            return
        except BaseException:
            # The reading caller was cancelled: the others wait for the next read.
            for key, futures in waiting.items():
                pending = [future for future in futures if not future.done()]
                if pending:
                    self._waiting.setdefault(key, []).extend(pending)
            raise
        finally:
            self._reading = False
        by_key: dict[Hashable, list[tuple[Any, ...]]] = {}
        for row in found:
            by_key.setdefault(row[self._key_column], []).append(row)
        for key, futures in waiting.items():
            rows = by_key.get(key, [])
            for future in futures:
                if not future.done():
                    future.set_result(rows)
