"""consent versions: what a consent decision reads, versioned by the database itself

Every change to a subject's consents bumps ``subjects.consents_version``; every change
to the sharing agreements bumps the ``sharing_agreements`` row of ``change_counters``.
Triggers do it (on PostgreSQL TRUNCATE too; SQLite has none), so no write path (merges,
erasure, a hand-made fix) can forget; a reader that finds both versions unchanged knows
the rows behind a decision are too.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

_BUMP_SUBJECT = "UPDATE subjects SET consents_version = consents_version + 1 WHERE subject_id = {}"
_BUMP_AGREEMENTS = "UPDATE change_counters SET value = value + 1 WHERE name = 'sharing_agreements'"

_SQLITE_TRIGGERS = {
    "tr_consents_insert_version": (
        f"AFTER INSERT ON consents BEGIN {_BUMP_SUBJECT.format('NEW.subject_id')}; END"
    ),
    "tr_consents_update_version": (
        "AFTER UPDATE ON consents BEGIN "
        f"{_BUMP_SUBJECT.format('OLD.subject_id')}; "
        f"{_BUMP_SUBJECT.format('NEW.subject_id')} AND NEW.subject_id <> OLD.subject_id; END"
    ),
    "tr_consents_delete_version": (
        f"AFTER DELETE ON consents BEGIN {_BUMP_SUBJECT.format('OLD.subject_id')}; END"
    ),
    **{
        f"tr_sharing_agreements_{op_name.lower()}_version": (
            f"AFTER {op_name} ON sharing_agreements BEGIN {_BUMP_AGREEMENTS}; END"
        )
        for op_name in ("INSERT", "UPDATE", "DELETE")
    },
}

_POSTGRESQL = [
    f"""
    CREATE FUNCTION coopgate_consents_version() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP <> 'INSERT' THEN
            {_BUMP_SUBJECT.format("OLD.subject_id")};
        END IF;
        IF TG_OP = 'INSERT' OR (TG_OP = 'UPDATE' AND NEW.subject_id <> OLD.subject_id) THEN
            {_BUMP_SUBJECT.format("NEW.subject_id")};
        END IF;
        RETURN NULL;
    END $$
    """,
    """
    CREATE TRIGGER tr_consents_version AFTER INSERT OR UPDATE OR DELETE ON consents
    FOR EACH ROW EXECUTE FUNCTION coopgate_consents_version()
    """,
    # TRUNCATE fires no row trigger: every subject's consents changed.
    """
    CREATE FUNCTION coopgate_consents_truncated() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        UPDATE subjects SET consents_version = consents_version + 1;
        RETURN NULL;
    END $$
    """,
    """
    CREATE TRIGGER tr_consents_truncated AFTER TRUNCATE ON consents
    FOR EACH STATEMENT EXECUTE FUNCTION coopgate_consents_truncated()
    """,
    f"""
    CREATE FUNCTION coopgate_sharing_agreements_version() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
        {_BUMP_AGREEMENTS};
        RETURN NULL;
    END $$
    """,
    """
    CREATE TRIGGER tr_sharing_agreements_version
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON sharing_agreements
    FOR EACH STATEMENT EXECUTE FUNCTION coopgate_sharing_agreements_version()
    """,
]


def upgrade() -> None:
    op.add_column(
        "subjects",
        sa.Column("consents_version", sa.BigInteger(), server_default="0", nullable=False),
    )
    counters = op.create_table(
        "change_counters",
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("value", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_change_counters")),
    )
    op.bulk_insert(counters, [{"name": "sharing_agreements", "value": 0}])
    if op.get_bind().dialect.name == "postgresql":
        for statement in _POSTGRESQL:
            op.execute(statement)
    else:
        for name, body in _SQLITE_TRIGGERS.items():
            op.execute(f"CREATE TRIGGER {name} {body}")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER tr_sharing_agreements_version ON sharing_agreements")
        op.execute("DROP FUNCTION coopgate_sharing_agreements_version()")
        op.execute("DROP TRIGGER tr_consents_truncated ON consents")
        op.execute("DROP FUNCTION coopgate_consents_truncated()")
        op.execute("DROP TRIGGER tr_consents_version ON consents")
        op.execute("DROP FUNCTION coopgate_consents_version()")
    else:
        for name in _SQLITE_TRIGGERS:
            op.execute(f"DROP TRIGGER {name}")
    op.drop_table("change_counters")
    # SQLite drops the column in place (batch mode would rebuild a table others refer to).
    op.execute("ALTER TABLE subjects DROP COLUMN consents_version")
