"""workflow starts: the case's incident workflow to start, committed with the case

Issue 17: a gateway that stopped between OpenCase's commit and the workflow's start
left the case without its workflow until the caller retried. The start to make is now
written in the case's own transaction and deleted once made; a sweep on every gateway
and worker starts what is left (the start is idempotent: workflow id = case id).

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "workflow_starts",
        sa.Column("case_id", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["case_id"],
            ["cases.case_id"],
            name="fk_workflow_starts_case_id_cases",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("case_id", name="pk_workflow_starts"),
    )
    op.create_index("ix_workflow_starts_created", "workflow_starts", ["created_at"])


def downgrade() -> None:
    op.drop_index("ix_workflow_starts_created", table_name="workflow_starts")
    op.drop_table("workflow_starts")
