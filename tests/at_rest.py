"""Searching the store for markers as they lie at rest: every column of every table
(PostgreSQL: as text, or as bytes for ``bytea``; SQLite: every value as bytes), every
file of a data directory, and the audit log's stored tree checked against its entries."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select, text

from gateway.audit.merkle import leaf_hash, node_hash, perfect_subtrees, root_from_leaf_hashes
from gateway.store import Store
from gateway.store.schema import audit_entries, audit_head, audit_nodes


def found_in_files(directory: Path, markers: dict[str, str]) -> dict[str, list[str]]:
    """Marker name → the files (names) holding it, anywhere under ``directory``."""
    found: dict[str, list[str]] = {}
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        data = path.read_bytes()
        for name, marker in markers.items():
            if marker.encode() in data:
                found.setdefault(name, []).append(path.name)
    return found


async def found_in_columns(store: Store, markers: dict[str, str]) -> dict[str, list[str]]:
    """Marker name → the columns (``table.column``) holding it, in any row."""
    found: dict[str, list[str]] = {}
    async with store.read() as conn:
        postgres = conn.dialect.name == "postgresql"
        if postgres:
            columns: list[tuple[str, str, str]] = [
                tuple(row)
                for row in await conn.execute(
                    text(
                        "SELECT table_name, column_name, data_type FROM information_schema.columns "
                        "WHERE table_schema = 'public'"
                    )
                )
            ]
        else:
            tables = (
                await conn.execute(text("SELECT name FROM sqlite_master WHERE type = 'table'"))
            ).scalars()
            columns = []
            for table in list(tables):
                for row in (await conn.execute(text(f'PRAGMA table_info("{table}")'))).all():
                    columns.append((table, row[1], "any"))
        # One read of each column, searched here: a query per marker and column took
        # seconds on PostgreSQL with a dozen markers.
        for table, column, data_type in columns:
            if data_type == "bytea":
                expression = f'"{column}"'
            elif postgres:
                expression = f'CAST("{column}" AS text)'
            else:
                expression = f'CAST("{column}" AS BLOB)'
            values = [
                bytes(v) if isinstance(v, bytes | memoryview) else str(v).encode()
                for v in (await conn.execute(text(f'SELECT {expression} FROM "{table}"'))).scalars()
                if v is not None
            ]
            for name, marker in markers.items():
                if any(marker.encode() in value for value in values):
                    found.setdefault(name, []).append(f"{table}.{column}")
    return found


async def log_verifies(store: Store) -> None:
    """Every entry kept, and the stored tree hashes to the root of the entries."""
    async with store.read() as conn:
        size = (await conn.execute(select(audit_head.c.size))).scalar_one()
        entries = list(
            (
                await conn.execute(
                    # Appends go on meanwhile (PostgreSQL reads each statement afresh).
                    select(audit_entries.c.canonical)
                    .where(audit_entries.c.idx < size)
                    .order_by(audit_entries.c.idx)
                )
            ).scalars()
        )
        nodes = {
            (level, idx): bytes(h)
            for level, idx, h in await conn.execute(
                select(audit_nodes.c.level, audit_nodes.c.idx, audit_nodes.c.hash)
            )
        }
    assert len(entries) == size
    parts = [nodes[key] for key in perfect_subtrees(0, size)]
    stored_root = parts[-1]
    for part in reversed(parts[:-1]):
        stored_root = node_hash(part, stored_root)
    assert root_from_leaf_hashes([leaf_hash(bytes(e)) for e in entries]) == stored_root
