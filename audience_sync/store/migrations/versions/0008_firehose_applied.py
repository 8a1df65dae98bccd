"""firehose_applied: journal entries applied, when the journal is in a file of its own (SQLite)

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "firehose_applied",
        sa.Column(
            "seq",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=False,
            nullable=False,
        ),
        sa.Column("message_id", sa.String(64), nullable=False),
        sa.Column("applied_at", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint("seq", "message_id", name=op.f("pk_firehose_applied")),
    )


def downgrade() -> None:
    op.drop_table("firehose_applied")
