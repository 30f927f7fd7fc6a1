"""The audit log's storage: append-only entries and the stored Merkle subtree hashes.

An entry is canonical JSON holding references and hashes, never customer
data, so it outlives an erasure. Appending writes the leaf and every complete
subtree it closes (``audit_nodes``), so proofs read O(log n) stored hashes
instead of re-hashing the log. Appends either join the caller's transaction
(the action and its record commit together) or go through a group-commit
appender (many reads' access decisions in one durable transaction), and
either way are durable before the action is acknowledged.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from json.encoder import encode_basestring as _json_string

from sqlalchemy import BigInteger, Connection, Integer, String, Table, bindparam, insert, update
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.audit.merkle import leaf_hash, node_hash
from gateway.audit.store_tree import Node, read_nodes, root_nodes
from gateway.store import Store
from gateway.store.schema import audit_entries, audit_head, audit_nodes
from gateway.store.statements import driver_rows
from gateway.telemetry import metrics_on
from gateway.telemetry.instruments import audit_appended

log = logging.getLogger(__name__)

ENTRY_VERSION = 1
_MAX_BATCH = 2000
#: How long a commit waits for more callers while callers come together.
_LINGER_SECONDS = 0.002


@dataclass(slots=True, frozen=True)
class AuditRecord:
    """One auditable event. ``kind`` is one of: consent, access, ownership, admin, case, erasure."""

    kind: str
    actor_partner_id: str
    actor_person_id: str = ""
    subject_id: str = ""
    case_id: str = ""
    purpose: str = ""
    categories: tuple[str, ...] = ()
    source_partner_id: str = ""
    decision: str = ""  # "allow" | "deny" | "" (not an access decision)
    consent_id: str = ""
    agreement_id: str = ""
    reason: str = ""
    # What happened, e.g. "consent.given", "admin.define-service"; plus refs/hashes.
    action: str = ""
    details: tuple[tuple[str, str], ...] = field(default=())


_RECORD_FIELDS = fields(AuditRecord)


def _reference_canonical(record: AuditRecord, at_text: str) -> bytes:
    """The definition of an entry's bytes: sorted-key compact JSON, UTF-8. `_encode` is a
    faster spelling of it and falls back here for any value that is not a plain string."""
    body: dict[str, object] = {f.name: getattr(record, f.name) for f in _RECORD_FIELDS}
    body["categories"] = list(record.categories)
    body["details"] = dict(record.details)
    body["at"] = at_text
    body["v"] = ENTRY_VERSION
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _at_text(at: dt.datetime) -> str:
    return at.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def _encode(record: AuditRecord, at_text: str, at_json: str) -> bytes:
    """`_reference_canonical`, byte for byte, in a fifth of its time: the keys are fixed,
    so the object is one format string and each value goes through the JSON module's own
    string encoder (the C one), which refuses anything but a string."""
    s = _json_string
    try:
        details = ",".join(f"{s(k)}:{s(v)}" for k, v in sorted(dict(record.details).items()))
        text = (
            f'{{"action":{s(record.action)},"actor_partner_id":{s(record.actor_partner_id)},'
            f'"actor_person_id":{s(record.actor_person_id)},'
            f'"agreement_id":{s(record.agreement_id)},"at":{at_json},'
            f'"case_id":{s(record.case_id)},"categories":[{",".join(map(s, record.categories))}],'
            f'"consent_id":{s(record.consent_id)},"decision":{s(record.decision)},'
            f'"details":{{{details}}},"kind":{s(record.kind)},"purpose":{s(record.purpose)},'
            f'"reason":{s(record.reason)},"source_partner_id":{s(record.source_partner_id)},'
            f'"subject_id":{s(record.subject_id)},"v":{ENTRY_VERSION}}}'
        )
    except TypeError:  # a value that is not a string: JSON decides how it reads
        return _reference_canonical(record, at_text)
    return text.encode()


def canonical(record: AuditRecord, at: dt.datetime) -> bytes:
    """The bytes hashed into the leaf: sorted-key compact JSON, UTF-8."""
    at_text = _at_text(at)
    return _encode(record, at_text, _json_string(at_text))


@dataclass(slots=True, frozen=True)
class _Statements:
    """An append's statements, compiled once per dialect and run on the driver with
    positional rows: SQLAlchemy's per-statement and per-row work (building and caching
    the statement, a dict per row, a type processor per value) cost more than everything
    else an append does. The one typed value, the batch's timestamp, goes through its
    column's processor once per batch."""

    move_head: str
    move_head_params: tuple[str, ...]
    entries: str
    nodes: str
    recorded_at: Callable[[dt.datetime], object]
    #: PostgreSQL: both INSERTs as one statement over arrays, one round trip in all.
    both_as_arrays: str | None
    #: PostgreSQL: the whole append as one statement, a transaction by itself (see
    #: `_guarded_append`).
    guarded_append: str | None

    @classmethod
    def compile(cls, dialect: Dialect) -> _Statements:
        # Moving the head first takes its row lock (SQLite writers are already serialized
        # by BEGIN IMMEDIATE): until commit no other writer can take these indices.
        move_head = (
            update(audit_head)
            .where(audit_head.c.id == bindparam("head", type_=Integer))
            .values(size=audit_head.c.size + bindparam("count", type_=BigInteger))
            .returning(audit_head.c.size)
            .compile(dialect=dialect)
        )
        entries = insert(audit_entries).compile(dialect=dialect)
        nodes = insert(audit_nodes).compile(dialect=dialect)
        # The row tuples are built in exactly this column order.
        assert entries.positiontup == [c.name for c in audit_entries.columns]
        assert nodes.positiontup == ["level", "idx", "hash"]
        assert move_head.positiontup is not None
        # The dialect's implementation, so the value is stored as a Core insert stores it.
        column_type = audit_entries.c.recorded_at.type.dialect_impl(dialect)
        processor = column_type.bind_processor(dialect)
        return cls(
            move_head.string,
            tuple(move_head.positiontup),
            entries.string,
            nodes.string,
            processor or (lambda at: at),
            _array_inserts(dialect) if dialect.name == "postgresql" else None,
            _guarded_append(dialect) if dialect.name == "postgresql" else None,
        )


def _unnest(table: Table, first: int, dialect: Dialect) -> str:
    """INSERT of `table`'s rows given as one array per column, from parameter `first` on.
    Strings are sent as text[]: a cast to varchar(n) would cut an over-long value short
    where the column itself refuses it."""
    casts = [
        "TEXT" if isinstance(column.type, String) else column.type.compile(dialect)
        for column in table.columns
    ]
    arrays = ", ".join(f"${first + n}::{cast}[]" for n, cast in enumerate(casts))
    columns = ", ".join(column.name for column in table.columns)
    return f"INSERT INTO {table.name} ({columns}) SELECT * FROM unnest({arrays})"


def _array_inserts(dialect: Dialect) -> str:
    entries = _unnest(audit_entries, 1, dialect)
    nodes = _unnest(audit_nodes, len(audit_entries.columns) + 1, dialect)
    return f"WITH entries AS ({entries}) {nodes}"


def _guarded_append(dialect: Dialect) -> str:
    """The head moves from the size the appender expects ($1) by the count ($2), and the
    rows go in, only if the head was at that size: returns the new size, or no row when
    another writer moved the head first (its row lock is waited for, then the size
    checked again), and then nothing was written."""
    moved = " WHERE EXISTS (SELECT 1 FROM head)"
    entries = _unnest(audit_entries, 3, dialect) + moved
    nodes = _unnest(audit_nodes, 3 + len(audit_entries.columns), dialect) + moved
    return (
        f"WITH head AS (UPDATE {audit_head.name} SET size = size + $2::bigint"
        " WHERE id = 1 AND size = $1::bigint RETURNING size),"
        f" entries AS ({entries}), nodes AS ({nodes}) SELECT size FROM head"
    )


_statements: dict[type[Dialect], _Statements] = {}


def _statements_for(dialect: Dialect) -> _Statements:
    statements = _statements.get(type(dialect))
    if statements is None:
        statements = _statements[type(dialect)] = _Statements.compile(dialect)
    return statements


#: The log's size and the hashes of the subtrees its root is made of: what an append
#: needs to know of the tree before it.
Frontier = tuple[int, dict[Node, bytes]]


@dataclass(slots=True)
class _Rows:
    """An append's rows, positional, in the tables' column order."""

    entries: list[tuple[object, ...]]
    nodes: list[tuple[int, int, bytes]]

    def as_arrays(self) -> list[list[object]]:
        """One array per column, entries' then nodes' (PostgreSQL's unnest)."""
        return [
            *map(list, zip(*self.entries, strict=True)),
            *map(list, zip(*self.nodes, strict=True)),
        ]


def _leaves(
    records: Sequence[AuditRecord],
    first: int,
    known: dict[Node, bytes],
    recorded_at: Callable[[dt.datetime], object],
) -> tuple[_Rows, Frontier]:
    """The entries and subtree hashes of ``records`` appended at index ``first``, given
    the hashes of the subtrees the root is made of at that size (``known``, updated in
    place); with the frontier after them."""
    now = dt.datetime.now(dt.UTC)
    at_text = _at_text(now)
    at_json = _json_string(at_text)
    stored_at = recorded_at(now)
    rows = _Rows([], [])
    for index, record in enumerate(records, start=first):
        entry = _encode(record, at_text, at_json)
        node = leaf_hash(entry)
        rows.nodes.append((0, index, node))
        level, position = 0, index
        while position & 1:  # this leaf closes a complete subtree at the next level
            node = node_hash(known[(level, position - 1)], node)
            level, position = level + 1, position >> 1
            rows.nodes.append((level, position, node))
        known[(level, position)] = node  # a left sibling for the leaves that follow
        rows.entries.append(
            (
                index,
                stored_at,
                record.kind,
                record.actor_partner_id,
                record.subject_id,
                record.case_id,
                record.purpose,
                record.decision,
                entry,
            )
        )
    size = first + len(records)
    return rows, (size, {node: known[node] for node in root_nodes(size)})


def _append(
    conn: Connection, records: Sequence[AuditRecord], before: Frontier | None
) -> tuple[list[int], Frontier]:
    """Runs synchronously inside the connection: one hop into the driver for the whole
    append. `before`, when it describes the size the head moved from, saves the query
    for the left siblings (committed subtree hashes never change)."""
    statements = _statements_for(conn.dialect)
    count = len(records)
    params = {"head": 1, "count": count}
    head_params = tuple(params[name] for name in statements.move_head_params)
    # SQLite: straight to the sqlite3 cursor, inside the transaction SQLAlchemy holds
    # (its execution layer cost as much as the three statements and the commit).
    driver = conn.connection.dbapi_connection if conn.dialect.name == "sqlite" else None
    cursor = driver.cursor() if driver is not None else None
    if cursor is not None:
        first = int(cursor.execute(statements.move_head, head_params).fetchone()[0]) - count
    else:
        ((moved,),) = driver_rows(conn, statements.move_head, head_params)  # one row
        first = int(moved) - count
    if before is not None and before[0] == first:
        known = dict(before[1])
    else:  # the left siblings a new leaf may be merged with: the subtrees of the root
        known = read_nodes(conn, root_nodes(first))
    rows, frontier = _leaves(records, first, known, statements.recorded_at)
    if cursor is not None:
        cursor.executemany(statements.entries, rows.entries)
        cursor.executemany(statements.nodes, rows.nodes)
        cursor.close()
    else:
        assert statements.both_as_arrays is not None  # the other backend is PostgreSQL
        driver_rows(conn, statements.both_as_arrays, tuple(rows.as_arrays()))
    return list(range(first, frontier[0])), frontier


async def append(conn: AsyncConnection, records: Sequence[AuditRecord]) -> list[int]:
    """Append ``records`` inside the caller's write transaction; returns their indices."""
    if not records:
        return []
    indices, _ = await conn.run_sync(_append, records, None)
    return indices


class AuditLog:
    """The gateway's audit log. ``record`` returns once the records are durable."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._queue: asyncio.Queue[tuple[Sequence[AuditRecord], asyncio.Future[list[int]]]] = (
            asyncio.Queue()
        )
        self._task: asyncio.Task[None] | None = None
        # The tree as of this appender's last commit: only committed subtree hashes are
        # kept, so another writer's appends (the head moved) merely cost the query again.
        self._frontier: Frontier | None = None
        #: How many commits waited for more callers (see `_appender`).
        self.lingered = 0
        #: How many batches found the head moved by another writer (see `_store`).
        self.head_moved = 0

    async def record_in(self, conn: AsyncConnection, records: Sequence[AuditRecord]) -> list[int]:
        """Record as part of the caller's transaction (committed with the action)."""
        if not metrics_on():
            return await append(conn, records)
        started = time.perf_counter()
        indices = await append(conn, records)
        audit_appended(records, time.perf_counter() - started)
        return indices

    async def record(self, records: Sequence[AuditRecord]) -> list[int]:
        """Record in a group commit shared with concurrent callers; durable on return."""
        if not records:
            return []
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._appender(), name="audit-appender")
        future: asyncio.Future[list[int]] = asyncio.get_running_loop().create_future()
        await self._queue.put((records, future))
        return await future

    async def _appender(self) -> None:
        linger = False
        while True:
            batch = [await self._queue.get()]
            if linger:
                self.lingered += 1
                await asyncio.sleep(_LINGER_SECONDS)
            count = len(batch[0][0])
            while not self._queue.empty() and count < _MAX_BATCH:
                item = self._queue.get_nowait()
                batch.append(item)
                count += len(item[0])
            # Group commit with a delay that pays for itself: wait for more callers before
            # the next commit only while callers keep coming together. A lone caller (an
            # idle gateway, a sequential client) is committed at once; under concurrent
            # load, where each commit would otherwise carry one read, a short wait lets
            # several share it (statements run on the loop, so none arrive during one).
            linger = len(batch) > 1
            merged = [record for records, _ in batch for record in records]
            started = time.perf_counter()
            try:
                indices, frontier = await self._store(merged)
                if metrics_on():
                    audit_appended(merged, time.perf_counter() - started)
            except Exception as exc:
                self._frontier = None
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            self._frontier = frontier
            offset = 0
            for records, future in batch:
                if not future.done():
                    future.set_result(indices[offset : offset + len(records)])
                offset += len(records)

    async def _store(self, records: Sequence[AuditRecord]) -> tuple[list[int], Frontier]:
        """One batch, durably. On PostgreSQL, knowing the tree as of its last commit,
        the appender stores the batch in one statement, a transaction by itself: one
        round trip where BEGIN, moving the head, the rows and COMMIT took four (at one
        caller, an audited read waited 1.4 ms for its record, now 0.75). When another
        writer moved the head meanwhile, nothing was written, and it appends the way
        any writer does."""
        statements = _statements_for(self.store.engine.dialect)
        before = self._frontier
        if before is not None and statements.guarded_append is not None:
            first = before[0]
            rows, frontier = _leaves(records, first, dict(before[1]), statements.recorded_at)
            moved = await self.store.fetch_alone(
                statements.guarded_append, (first, len(records), *rows.as_arrays())
            )
            if moved:
                return list(range(first, frontier[0])), frontier
            self.head_moved += 1
        return await self.store.run_write(_append, records, before)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
