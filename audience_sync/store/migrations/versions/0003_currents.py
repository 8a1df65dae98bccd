"""Currents round trip: events queue, batches, feed state, imported files, dedup keys

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

SeqType = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
JSONType = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    op.create_table(
        "currents_events",
        sa.Column("seq", SeqType, autoincrement=True, nullable=False),
        sa.Column("event_id", sa.String(length=256), nullable=False),
        sa.Column("feed", sa.String(length=128), nullable=True),
        sa.Column("external_user_id", sa.String(length=1024), nullable=False),
        sa.Column("app_id", sa.String(length=256), nullable=True),
        sa.Column("platform", sa.String(length=32), nullable=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("received_at", sa.Float(), nullable=False),
        sa.Column("envelope", sa.Text(), nullable=False),
        sa.Column("event", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_currents_events")),
        sqlite_autoincrement=True,
    )
    op.create_index(
        "ix_currents_events_state_feed_seq", "currents_events", ["state", "feed", "seq"]
    )
    op.create_table(
        "currents_batches",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("feed", sa.String(length=128), nullable=False),
        sa.Column("external_user_id", sa.String(length=1024), nullable=False),
        sa.Column("first_seq", sa.BigInteger(), nullable=False),
        sa.Column("events", sa.Integer(), nullable=False),
        sa.Column("event_ids", sa.Text(), nullable=False),
        sa.Column("body", sa.LargeBinary(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("first_failure_at", sa.Float(), nullable=True),
        sa.Column("due_at", sa.Float(), nullable=False),
        sa.Column("claimed_by", sa.String(length=128), nullable=True),
        sa.Column("claimed_until", sa.Float(), nullable=True),
        sa.Column("last_reason", sa.Text(), nullable=True),
        sa.Column("received_at", sa.Float(), nullable=False),
        sa.Column("retain_from", sa.Float(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_currents_batches")),
    )
    op.create_index(
        "ix_currents_batches_state_feed_seq", "currents_batches", ["state", "feed", "first_seq"]
    )
    op.create_index(
        "ix_currents_batches_user", "currents_batches", ["feed", "external_user_id", "first_seq"]
    )
    op.create_table(
        "currents_feeds",
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("paused_at", sa.Float(), nullable=True),
        sa.Column("next_probe_at", sa.Float(), nullable=True),
        sa.Column("settings_fingerprint", sa.String(length=64), nullable=True),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_currents_feeds")),
    )
    op.create_table(
        "currents_files",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("checksum", sa.String(length=64), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("events", sa.Integer(), nullable=False),
        sa.Column("forwarded", sa.Integer(), nullable=False),
        sa.Column("skipped", JSONType, nullable=False),
        sa.Column("imported_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_currents_files")),
        sa.UniqueConstraint("path", "checksum", name=op.f("uq_currents_files_path_checksum")),
    )
    op.create_table(
        "currents_dedup",
        sa.Column("event_id", sa.String(length=256), nullable=False),
        sa.Column("seen_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("event_id", name=op.f("pk_currents_dedup")),
    )
    op.create_index("ix_currents_dedup_seen_at", "currents_dedup", ["seen_at"])


def downgrade() -> None:
    op.drop_table("currents_dedup")
    op.drop_table("currents_files")
    op.drop_table("currents_feeds")
    op.drop_table("currents_batches")
    op.drop_table("currents_events")
