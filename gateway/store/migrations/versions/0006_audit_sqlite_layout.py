"""audit tables on SQLite: entries keyed by their rowid, subtree hashes without a rowid

A BIGINT primary key is not SQLite's rowid, so every append wrote the entry into
the rowid table and again into the primary key's index; the subtree hashes had
the same pair. Rebuilding the two tables leaves one B-tree each. PostgreSQL is
unchanged.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_ENTRY_INDEXES = {
    "ix_audit_entries_actor": ["actor_partner_id", "idx"],
    "ix_audit_entries_case": ["case_id", "idx"],
    "ix_audit_entries_subject": ["subject_id", "idx"],
    "ix_audit_entries_time": ["recorded_at"],
}


def _entries(name: str, index_type: sa.types.TypeEngine[int]) -> None:
    op.create_table(
        name,
        sa.Column("idx", index_type, autoincrement=False, nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("kind", sa.String(length=40), nullable=False),
        sa.Column("actor_partner_id", sa.String(length=63), nullable=False),
        sa.Column("subject_id", sa.String(length=64), nullable=False),
        sa.Column("case_id", sa.String(length=64), nullable=False),
        sa.Column("purpose", sa.String(length=63), nullable=False),
        sa.Column("decision", sa.String(length=10), nullable=False),
        sa.Column("canonical", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("idx", name="pk_audit_entries"),
    )


def _nodes(name: str, *, with_rowid: bool) -> None:
    op.create_table(
        name,
        sa.Column("level", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("idx", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("hash", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("level", "idx", name="pk_audit_nodes"),
        sqlite_with_rowid=with_rowid,
    )


def _rebuild(*, rowid_keys: bool) -> None:
    """Copy both tables into their new layout, in index order, and swap them in."""
    _entries("audit_entries_new", sa.Integer() if rowid_keys else sa.BigInteger())
    op.execute("INSERT INTO audit_entries_new SELECT * FROM audit_entries ORDER BY idx")
    for index in _ENTRY_INDEXES:
        op.drop_index(index, table_name="audit_entries")
    op.drop_table("audit_entries")
    op.rename_table("audit_entries_new", "audit_entries")
    for index, columns in _ENTRY_INDEXES.items():
        op.create_index(index, "audit_entries", columns, unique=False)

    _nodes("audit_nodes_new", with_rowid=not rowid_keys)
    op.execute("INSERT INTO audit_nodes_new SELECT * FROM audit_nodes ORDER BY level, idx")
    op.drop_table("audit_nodes")
    op.rename_table("audit_nodes_new", "audit_nodes")


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        _rebuild(rowid_keys=True)


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        _rebuild(rowid_keys=False)
