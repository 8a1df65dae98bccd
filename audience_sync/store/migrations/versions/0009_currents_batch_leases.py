"""currents_batches.leases: times a batch was leased; 0 lets later events join it

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "currents_batches",
        sa.Column("leases", sa.Integer(), server_default="0", nullable=False),
    )
    # Batches formed before: any of them may have been in a request, so none is open.
    op.execute("UPDATE currents_batches SET leases = 1")


def downgrade() -> None:
    with op.batch_alter_table("currents_batches") as batch:
        batch.drop_column("leases")
