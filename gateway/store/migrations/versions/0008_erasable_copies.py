"""erasable copies: stored responses and work items name what they concern

Issue 18: erasure (and a case's retention expiry) must reach every copy of customer
data, including the responses stored for idempotent retries and the items waiting on
partners' work streams. Both now name the case (and the subject) they concern;
existing rows are converted: a work item's case is read from its payload (every
payload names one), a stored OpenCase response names its case, whose subject is
looked up. Other stored responses cannot be attributed after the fact (their
requests are not kept): they stay until their keys are forgotten.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from coopgate.v1 import cases_pb2, work_pb2

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

_BATCH = 1000


def upgrade() -> None:
    op.add_column("idempotency_keys", sa.Column("subject_id", sa.String(length=64)))
    op.add_column("idempotency_keys", sa.Column("case_id", sa.String(length=64)))
    op.add_column("idempotency_keys", sa.Column("erased_at", sa.DateTime(timezone=True)))
    op.create_index("ix_idempotency_keys_subject", "idempotency_keys", ["subject_id"])
    op.create_index("ix_idempotency_keys_case", "idempotency_keys", ["case_id"])
    op.add_column("work_items", sa.Column("case_id", sa.String(length=64)))
    op.add_column("work_items", sa.Column("subject_id", sa.String(length=64)))
    op.create_index("ix_work_items_case", "work_items", ["case_id"])
    _convert_work_items()
    _convert_open_case_responses()


def _convert_work_items() -> None:
    bind = op.get_bind()
    rows = bind.execute(sa.text("SELECT work_id, item FROM work_items")).all()
    updates = []
    for work_id, blob in rows:
        item = work_pb2.WorkItem.FromString(bytes(blob))
        payload = item.WhichOneof("payload")
        if payload is not None:
            updates.append({"work_id": work_id, "case_id": getattr(item, payload).case_id})
    for start in range(0, len(updates), _BATCH):
        bind.execute(
            sa.text("UPDATE work_items SET case_id = :case_id WHERE work_id = :work_id"),
            updates[start : start + _BATCH],
        )


def _convert_open_case_responses() -> None:
    bind = op.get_bind()
    rows = bind.execute(
        sa.text(
            "SELECT partner_id, method, idempotency_key, response FROM idempotency_keys "
            "WHERE method = 'OpenCase'"
        )
    ).all()
    updates = [
        {
            "partner_id": partner_id,
            "method": method,
            "key": key,
            "case_id": cases_pb2.OpenCaseResponse.FromString(bytes(blob)).case_id,
        }
        for partner_id, method, key, blob in rows
    ]
    for start in range(0, len(updates), _BATCH):
        bind.execute(
            sa.text(
                "UPDATE idempotency_keys SET case_id = :case_id, subject_id = "
                "(SELECT subject_id FROM cases WHERE cases.case_id = :case_id) "
                "WHERE partner_id = :partner_id AND method = :method "
                "AND idempotency_key = :key"
            ),
            updates[start : start + _BATCH],
        )


def downgrade() -> None:
    op.drop_index("ix_work_items_case", table_name="work_items")
    op.drop_column("work_items", "subject_id")
    op.drop_column("work_items", "case_id")
    op.drop_index("ix_idempotency_keys_case", table_name="idempotency_keys")
    op.drop_index("ix_idempotency_keys_subject", table_name="idempotency_keys")
    op.drop_column("idempotency_keys", "erased_at")
    op.drop_column("idempotency_keys", "case_id")
    op.drop_column("idempotency_keys", "subject_id")
