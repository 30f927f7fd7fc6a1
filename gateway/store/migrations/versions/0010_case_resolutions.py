"""case resolutions: the owner's resolution kept sealed, out of the workflow's history

Issue 18: the text of a ResolveCase went into the case workflow's history (the
"resolved" notification was composed there), which erasure cannot reach. The text is
now kept here, sealed under the case key, and the workflow carries its id only.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "case_resolutions",
        sa.Column("case_id", sa.String(length=64), nullable=False),
        sa.Column("resolution_id", sa.String(length=64), nullable=False),
        sa.Column("partner_id", sa.String(length=63), nullable=False),
        sa.Column("sealed_text", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["case_id"],
            ["cases.case_id"],
            name="fk_case_resolutions_case_id_cases",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("case_id", "resolution_id", name="pk_case_resolutions"),
    )


def downgrade() -> None:
    op.drop_table("case_resolutions")
