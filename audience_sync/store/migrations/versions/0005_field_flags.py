"""field_flags: field values Braze refused per user, withheld until they change

Revision ID: 0005
Revises: 0002
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "field_flags",
        sa.Column("workspace_id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("external_id", sa.String(length=1024), nullable=False),
        sa.Column("field", sa.String(length=255), nullable=False),
        sa.Column("fingerprint", sa.String(length=64), nullable=False),
        sa.Column("flag", sa.String(length=64), nullable=False),
        sa.Column("flagged_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("workspace_id", "external_id", "field", name="pk_field_flags"),
    )


def downgrade() -> None:
    op.drop_table("field_flags")
