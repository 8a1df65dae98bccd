"""currents_batch_bodies: a batch's body apart from its row, so a lease rewrites only the row

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

SeqType = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "currents_batch_bodies",
        sa.Column("first_seq", SeqType, autoincrement=False, nullable=False),
        sa.Column("body", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("first_seq", name=op.f("pk_currents_batch_bodies")),
    )
    op.execute(
        "INSERT INTO currents_batch_bodies (first_seq, body) "
        "SELECT first_seq, body FROM currents_batches"
    )
    with op.batch_alter_table("currents_batches") as batch:
        batch.drop_column("body")


def downgrade() -> None:
    with op.batch_alter_table("currents_batches") as batch:
        batch.add_column(sa.Column("body", sa.LargeBinary(), nullable=True))
    op.execute(
        "UPDATE currents_batches SET body = (SELECT d.body FROM currents_batch_bodies d "
        "WHERE d.first_seq = currents_batches.first_seq)"
    )
    with op.batch_alter_table("currents_batches") as batch:
        batch.alter_column("body", existing_type=sa.LargeBinary(), nullable=False)
    op.drop_table("currents_batch_bodies")
