"""Real state databases that count what the gate asks of them: conversations (a transaction or a
read) and, on PostgreSQL, the waits for the server (round trips)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg.waiting import Wait

from safe_mcp.state.db import PostgresDb, SqliteDb, StateDb, Tx


class _CountingConnection(psycopg.Connection[Any]):
    """Counts the times the client waits to read from the server: a round trip each."""

    waits = 0

    def wait(self, gen: Any, *args: Any, **kwargs: Any) -> Any:
        return super().wait(self._counted(gen), *args, **kwargs)

    def _counted(self, gen: Any) -> Any:
        try:
            state = next(gen)
            while True:
                if state & Wait.R and not state & Wait.W:
                    self.waits += 1
                ready = yield state
                state = gen.send(ready)
        except StopIteration as done:
            return done.value


class _Conversations(StateDb):
    """Counts conversations: each transaction and each read outside one."""

    conversations = 0

    @contextmanager
    def transaction(self) -> Iterator[Tx]:
        self.conversations += 1
        with super().transaction() as tx:
            yield tx

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        self.conversations += 1
        return super().query(sql, params)


class CountingPostgresDb(_Conversations, PostgresDb):
    def _connect(self, url: str, kwargs: dict[str, Any]) -> Any:
        return _CountingConnection.connect(url, **kwargs)

    @property
    def round_trips(self) -> int:
        return int(self._db.waits)


class CountingSqliteDb(_Conversations, SqliteDb):
    pass
