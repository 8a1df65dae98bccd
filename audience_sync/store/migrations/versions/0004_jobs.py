"""scheduled jobs: leases, runs, pending cleanups, the audit's cursor index

Revision ID: 0004
Revises: 0002
Create Date: 2026-12-01

``down_revision`` is the head this branch started from; the Currents migration 0003 lands in
parallel, and whoever merges the second of the two re-chains this one after it.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    op.create_table(
        "job_leases",
        sa.Column("job", sa.String(length=64), nullable=False),
        sa.Column("holder", sa.String(length=128), nullable=True),
        sa.Column("expires_at", sa.Float(), nullable=False),
        sa.Column("last_started_at", sa.Float(), nullable=True),
        sa.Column("last_finished_at", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("job", name=op.f("pk_job_leases")),
    )
    op.create_table(
        "job_runs",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("job", sa.String(length=64), nullable=False),
        sa.Column("holder", sa.String(length=128), nullable=False),
        sa.Column("started_at", sa.Float(), nullable=False),
        sa.Column("finished_at", sa.Float(), nullable=True),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("counts", JSON, nullable=False),
        sa.Column("details", JSON, nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_job_runs")),
    )
    op.create_index("ix_job_runs_job_started", "job_runs", ["job", "started_at"])
    op.create_index("ix_job_runs_started", "job_runs", ["started_at"])
    op.create_table(
        "pending_cleanups",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("account_id", sa.BigInteger(), nullable=False),
        sa.Column("audience_id", sa.BigInteger(), nullable=True),
        sa.Column("workspace_id", sa.Integer(), nullable=False),
        sa.Column("old_workspace_id", sa.Integer(), nullable=True),
        sa.Column("clear_old", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("old_target", JSON, nullable=True),
        sa.Column("cursor", sa.String(length=1024), nullable=True),
        sa.Column("enqueued", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("settled", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("paged_at", sa.Float(), nullable=True),
        sa.Column("done_at", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_pending_cleanups")),
    )
    op.create_index("ix_pending_cleanups_done_id", "pending_cleanups", ["done_at", "id"])
    op.create_index(
        "ix_braze_users_workspace_verified",
        "braze_users",
        ["workspace_id", "verified_at", "external_id"],
    )


def downgrade() -> None:
    op.drop_index("ix_braze_users_workspace_verified", table_name="braze_users")
    op.drop_index("ix_pending_cleanups_done_id", table_name="pending_cleanups")
    op.drop_table("pending_cleanups")
    op.drop_index("ix_job_runs_started", table_name="job_runs")
    op.drop_index("ix_job_runs_job_started", table_name="job_runs")
    op.drop_table("job_runs")
    op.drop_table("job_leases")
