"""Benchmark: the audit log at 1,000,000 entries, on SQLite and PostgreSQL.

Populates the log in bulk (entries and subtree hashes computed in memory with
`MemoryTree`), then measures, through the store:
- inclusion and consistency proofs from the stored subtree hashes (the AuditService
  path: one read transaction, one query), next to a primary-key read of one node;
- appends per second, one record per write transaction (`record_in`) and group
  committed (`record`, many concurrent callers), each next to plain INSERTs of
  same-size rows into a scratch table with the same transactions and batching, and of
  the same entry rows into a copy of the entries table with its secondary indexes;
- signing a checkpoint of the grown log (root + consistency proof from the last one).

    python -m tests.benchmarks.audit_log [--entries N] [--backend sqlite|postgres|both]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import datetime as dt
import random
import tempfile
from collections.abc import Awaitable, Callable, Sequence

from coopgate.v1 import audit_pb2
from sqlalchemy import (
    Column,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Table,
    func,
    insert,
    select,
    text,
)
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.audit import (
    MemoryTree,
    Signer,
    leaf_hash,
    root,
    verify_consistency,
    verify_inclusion,
)
from gateway.audit.checkpoints import Checkpointer
from gateway.audit.log import AuditLog, AuditRecord, canonical
from gateway.audit.service import Audit
from gateway.audit.store_tree import statement_reads
from gateway.crypto.pseudonyms import KEY_BYTES, Pseudonyms
from gateway.store import Store, create_store, migrate
from gateway.store.schema import audit_entries, audit_head, audit_nodes
from tests.benchmarks.common import database, now_ns, run_and_exit, summarize

CHUNK = 50_000
#: Where the indexed baseline's own rows start, past the copied log.
BASELINE_INDEX = 1 << 40
PURPOSES = ["incident-diagnosis", "incident-resolution"]
CATEGORIES = ["device.sim", "payment.card", "diagnostic.findings"]

scratch_metadata = MetaData()
#: Rows of the entries' size, primary key only: the bare-engine baseline.
scratch = Table(
    "bench_rows",
    scratch_metadata,
    Column("idx", Integer, primary_key=True, autoincrement=False),
    Column("payload", LargeBinary, nullable=False),
)
#: The entries' own columns and secondary indexes, without the Merkle tree: shows what
#: the indexes alone cost next to what the log adds.
indexed_scratch = Table(
    "bench_entries",
    scratch_metadata,
    *(
        Column(c.name, c.type, primary_key=c.primary_key, autoincrement=False)
        for c in audit_entries.columns
    ),
    Index("ix_bench_entries_subject", "subject_id", "idx"),
    Index("ix_bench_entries_actor", "actor_partner_id", "idx"),
    Index("ix_bench_entries_case", "case_id", "idx"),
    Index("ix_bench_entries_time", "recorded_at"),
)


def access_record(rng: random.Random) -> AuditRecord:
    """An access decision as the consent rules write it."""
    allowed = rng.random() < 0.8
    return AuditRecord(
        kind="access",
        action="read",
        actor_partner_id=f"p{rng.randrange(400):04d}",
        actor_person_id=f"advisor-{rng.randrange(5000)}",
        subject_id=f"{rng.getrandbits(128):032x}",
        case_id=f"case-{rng.getrandbits(128):032x}",
        purpose=rng.choice(PURPOSES),
        categories=(rng.choice(CATEGORIES),),
        source_partner_id=f"p{rng.randrange(400):04d}",
        decision="allow" if allowed else "deny",
        consent_id=f"cns-{rng.getrandbits(64):016x}" if allowed else "",
        agreement_id=f"agr-{rng.getrandbits(64):016x}",
        reason="consent" if allowed else "no-consent",
    )


def entry_row(index: int, record: AuditRecord, at: dt.datetime, entry: bytes) -> dict[str, object]:
    return {
        "idx": index,
        "recorded_at": at,
        "kind": record.kind,
        "actor_partner_id": record.actor_partner_id,
        "subject_id": record.subject_id,
        "case_id": record.case_id,
        "purpose": record.purpose,
        "decision": record.decision,
        "canonical": entry,
    }


async def _bulk(conn: AsyncConnection, table: Table, rows: Sequence[dict[str, object]]) -> None:
    """COPY on PostgreSQL, the driver's executemany on SQLite: population only."""
    columns = list(rows[0])
    raw = (await conn.get_raw_connection()).driver_connection
    if conn.dialect.name == "postgresql":
        assert raw is not None
        await raw.copy_records_to_table(
            table.name, records=[tuple(r.values()) for r in rows], columns=columns
        )
        return
    values = [
        tuple(
            v.strftime("%Y-%m-%d %H:%M:%S.%f") if isinstance(v, dt.datetime) else v
            for v in r.values()
        )
        for r in rows
    ]
    placeholders = ", ".join("?" * len(columns))
    await conn.exec_driver_sql(
        f"INSERT INTO {table.name} ({', '.join(columns)}) VALUES ({placeholders})", values
    )


async def populate(store: Store, n: int, rng: random.Random) -> MemoryTree:
    tree = MemoryTree()
    start = dt.datetime.now(dt.UTC) - dt.timedelta(days=30)
    for offset in range(0, n, CHUNK):
        rows = []
        for i in range(offset, min(n, offset + CHUNK)):
            record, at = access_record(rng), start + dt.timedelta(seconds=i)
            entry = canonical(record, at)
            tree.append(leaf_hash(entry))
            rows.append(entry_row(i, record, at, entry))
        async with store.write() as conn:
            await _bulk(conn, audit_entries, rows)
    for level in range(n.bit_length()):
        count = n >> level
        for offset in range(0, count, CHUNK * 4):
            nodes = [
                {"level": level, "idx": i, "hash": tree.subtree_hash(level, i)}
                for i in range(offset, min(count, offset + CHUNK * 4))
            ]
            async with store.write() as conn:
                await _bulk(conn, audit_nodes, nodes)
    async with store.write() as conn:
        await conn.execute(audit_head.update().values(size=n))
    async with store.engine.connect() as conn:
        await conn.execute(text("ANALYZE"))
        await conn.commit()
    return tree


async def measure_proofs(audit: Audit, store: Store, tree: MemoryTree, samples: int) -> None:
    n = tree.size
    rng = random.Random(7)
    top = root(tree, n)
    inclusion_ns: list[int] = []
    consistency_ns: list[int] = []
    bare_ns: list[int] = []
    statement_ns: list[int] = []
    for round_ in range(2):  # warm-up, then the measured round
        inclusion_ns.clear()
        consistency_ns.clear()
        bare_ns.clear()
        statement_ns.clear()
        for _ in range(samples):
            index, size1 = rng.randrange(n), rng.randrange(1, n)
            node = select(audit_nodes.c.hash).where(
                audit_nodes.c.level == 0, audit_nodes.c.idx == index
            )
            t = now_ns()
            async with store.read() as conn:
                await conn.execute(node)
            t0 = now_ns()
            async with statement_reads(store) as conn:
                await conn.execute(node)
            t1 = now_ns()
            included = await audit.inclusion_proof(
                audit_pb2.GetInclusionProofRequest(index=index, tree_size=n)
            )
            t2 = now_ns()
            consistent = await audit.consistency_proof(
                audit_pb2.GetConsistencyProofRequest(size1=size1, size2=n)
            )
            t3 = now_ns()
            bare_ns.append(t0 - t)
            statement_ns.append(t1 - t0)
            inclusion_ns.append(t2 - t1)
            consistency_ns.append(t3 - t2)
            if round_ == 0:
                verify_inclusion(included.leaf_hash, index, n, list(included.proof), top)
                verify_consistency(size1, n, list(consistent.proof), root(tree, size1), top)
    inclusion, consistency, bare = (
        summarize(inclusion_ns),
        summarize(consistency_ns),
        summarize(bare_ns),
    )
    both = summarize([a + b for a, b in zip(inclusion_ns, consistency_ns, strict=True)])
    print(f"  inclusion proof   : {inclusion}")
    print(f"  consistency proof : {consistency}")
    print(f"  both              : {both}")
    print(f"  bare node read    : {bare}  (in a read transaction)")
    print(f"  bare node read    : {summarize(statement_ns)}  (as proofs read: `statement_reads`)")


class BareGroupCommit:
    """The baseline for `AuditLog.record`: the same queue and batching, plain INSERTs."""

    def __init__(self, store: Store, table: Table, row: Callable[[int], dict[str, object]]) -> None:
        self.store = store
        self.table = table
        self.row = row
        self.next = 0
        self.queue: asyncio.Queue[asyncio.Future[None]] = asyncio.Queue()
        self.task: asyncio.Task[None] | None = None

    async def record(self) -> None:
        if self.task is None:
            self.task = asyncio.create_task(self.run())
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        await self.queue.put(done)
        await done

    async def run(self) -> None:
        while True:
            batch = [await self.queue.get()]
            while not self.queue.empty() and len(batch) < 2000:
                batch.append(self.queue.get_nowait())
            async with self.store.write() as conn:
                await conn.execute(
                    insert(self.table), [self.row(self.next + i) for i in range(len(batch))]
                )
            self.next += len(batch)
            for done in batch:
                done.set_result(None)

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task


async def _producers(count: int, producers: int, append: Callable[[], Awaitable[object]]) -> float:
    """Appends/s with `producers` concurrent callers each awaiting one append at a time."""
    remaining = count

    async def producer() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await append()

    t0 = now_ns()
    await asyncio.gather(*(producer() for _ in range(producers)))
    return count / ((now_ns() - t0) / 1e9)


async def measure_appends(
    store: Store, single: int, batched: int, producer_counts: Sequence[int]
) -> None:
    rng = random.Random(11)
    records = [access_record(rng) for _ in range(max(single, batched))]
    at = dt.datetime.now(dt.UTC)
    entries = [canonical(r, at) for r in records]
    payload = entries[0]

    def bare_row(i: int) -> dict[str, object]:
        return {"idx": i, "payload": payload}

    def indexed_row(i: int) -> dict[str, object]:
        n = i % len(records)
        return entry_row(BASELINE_INDEX + i, records[n], at, entries[n])

    async with store.engine.begin() as conn:
        await conn.run_sync(scratch_metadata.create_all)
        # As many rows as the log, so its indexes are as deep and as scattered.
        await conn.execute(
            insert(indexed_scratch).from_select(
                [c.name for c in audit_entries.columns], select(audit_entries)
            )
        )
    log = AuditLog(store)

    t0 = now_ns()
    for record in records[:single]:
        async with store.write() as conn:
            await log.record_in(conn, [record])
    audit_single = single / ((now_ns() - t0) / 1e9)
    bare_single: list[float] = []
    for table, row in ((scratch, bare_row), (indexed_scratch, indexed_row)):
        t0 = now_ns()
        for i in range(single):
            async with store.write() as conn:
                await conn.execute(insert(table).values(row(10_000_000 + i)))
        bare_single.append(single / ((now_ns() - t0) / 1e9))

    print(f"  entry size: {len(payload)} bytes of canonical JSON")
    print(
        "  appends/s; baselines: bare = same-size rows, primary key only; indexed = the same"
        " entry rows and secondary indexes, no Merkle tree"
    )
    print(
        f"  one per transaction     : audit {audit_single:7.0f}   bare {bare_single[0]:7.0f}"
        f"   indexed {bare_single[1]:7.0f}   audit/bare {audit_single / bare_single[0]:.2f}"
    )
    feed = iter(records * len(producer_counts))
    bare_logs = [
        BareGroupCommit(store, scratch, bare_row),
        BareGroupCommit(store, indexed_scratch, indexed_row),
    ]
    for producers in producer_counts:
        async with store.read() as conn:
            before = (await conn.execute(select(audit_head.c.size))).scalar_one()
        audit_batched = await _producers(batched, producers, lambda: log.record([next(feed)]))
        async with store.read() as conn:
            commits = (
                await conn.execute(
                    select(func.count(func.distinct(audit_entries.c.recorded_at))).where(
                        audit_entries.c.idx >= before
                    )
                )
            ).scalar_one()
        bare = [await _producers(batched, producers, b.record) for b in bare_logs]
        print(
            f"  group commit, {producers:3d} callers: audit {audit_batched:7.0f}"
            f"   bare {bare[0]:7.0f}   indexed {bare[1]:7.0f}"
            f"   audit/bare {audit_batched / bare[0]:.2f}"
            f"   ({batched / commits:.0f} records/commit)"
        )
    for bare_log in bare_logs:
        await bare_log.close()
    await log.close()


async def measure_checkpoint(store: Store) -> None:
    checkpointer = Checkpointer(store, Signer.generate("coopgate.bench/audit"))
    t0 = now_ns()
    first = await checkpointer.publish()
    t1 = now_ns()
    log = AuditLog(store)
    await log.record([access_record(random.Random(3)) for _ in range(100)])
    await log.close()
    t2 = now_ns()
    second = await checkpointer.publish()
    t3 = now_ns()
    print(
        f"  checkpoint at {first.checkpoint.size:,}: {(t1 - t0) / 1e6:.2f} ms; "
        f"at {second.checkpoint.size:,} with its consistency check: {(t3 - t2) / 1e6:.2f} ms "
        f"(root {base64.b64encode(second.checkpoint.root_hash).decode()[:12]}…)"
    )


async def run(url: str, args: argparse.Namespace) -> None:
    store = create_store(url)
    try:
        await migrate(store)
        print(f"  populating {args.entries:,} entries …", flush=True)
        t0 = now_ns()
        tree = await populate(store, args.entries, random.Random(20261123))
        print(f"  populated in {(now_ns() - t0) / 1e9:.1f} s")
        log = AuditLog(store)
        audit = Audit(
            store,
            Checkpointer(store, Signer.generate("coopgate.bench/audit")),
            Pseudonyms(bytes(KEY_BYTES)),
            log,
        )
        await measure_proofs(audit, store, tree, args.samples)
        await log.close()
        await measure_appends(store, args.single, args.batched, args.producers)
        await measure_checkpoint(store)
    finally:
        await store.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--samples", type=int, default=2_000, help="proofs of each kind")
    parser.add_argument("--single", type=int, default=2_000, help="one-record transactions")
    parser.add_argument("--batched", type=int, default=20_000, help="group-committed records")
    parser.add_argument(
        "--producers", type=int, nargs="+", default=[64, 256], help="concurrent callers"
    )
    parser.add_argument("--backend", choices=["sqlite", "postgres", "both"], default="both")
    args = parser.parse_args()
    backends = ["sqlite", "postgres"] if args.backend == "both" else [args.backend]
    with tempfile.TemporaryDirectory() as workdir:
        for backend in backends:
            print(f"[{backend}]", flush=True)
            async with database(backend, workdir) as url:
                await run(url, args)


if __name__ == "__main__":
    run_and_exit(main())
