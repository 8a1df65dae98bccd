"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:

    op.create_table(
        "audiences",
        sa.Column("account_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("audience_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("cleanup", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("cleanup_done_at", sa.Float(), nullable=True),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.Column("removed_at", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("account_id", "audience_id", name=op.f("pk_audiences")),
    )
    op.create_table(
        "braze_users",
        sa.Column("workspace_id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("external_id", sa.String(length=1024), nullable=False),
        sa.Column(
            "attributes",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column(
            "flags",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("last_write_at", sa.Float(), nullable=True),
        sa.Column("last_outcome", sa.String(length=64), nullable=True),
        sa.Column("last_outcome_at", sa.Float(), nullable=True),
        sa.Column("verified_at", sa.Float(), nullable=True),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("workspace_id", "external_id", name=op.f("pk_braze_users")),
    )
    op.create_table(
        "counters",
        sa.Column("day", sa.String(length=10), nullable=False),
        sa.Column("scope", sa.String(length=64), nullable=False),
        sa.Column("reason", sa.String(length=64), nullable=False),
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("day", "scope", "reason", name=op.f("pk_counters")),
    )
    op.create_table(
        "datapoints",
        sa.Column("day", sa.String(length=10), nullable=False),
        sa.Column("workspace_id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("account_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("audience_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("points", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint(
            "day", "workspace_id", "account_id", "audience_id", name=op.f("pk_datapoints")
        ),
    )
    op.create_table(
        "firehose_messages",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("type", sa.String(length=64), nullable=False),
        sa.Column("account_id", sa.BigInteger(), nullable=True),
        sa.Column("received_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_firehose_messages")),
    )
    with op.batch_alter_table("firehose_messages", schema=None) as batch_op:
        batch_op.create_index("ix_firehose_messages_received", ["received_at"], unique=False)

    op.create_table(
        "memberships",
        sa.Column("account_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("external_id", sa.String(length=1024), nullable=False),
        sa.Column("audience_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("is_member", sa.Boolean(), nullable=False),
        sa.Column("changed_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint(
            "account_id", "external_id", "audience_id", name=op.f("pk_memberships")
        ),
    )
    with op.batch_alter_table("memberships", schema=None) as batch_op:
        batch_op.create_index(
            "ix_memberships_audience", ["account_id", "audience_id"], unique=False
        )

    op.create_table(
        "outbox",
        sa.Column("workspace_id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("external_id", sa.String(length=1024), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("generation", sa.BigInteger(), nullable=False),
        sa.Column("due_at", sa.Float(), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("first_failure_at", sa.Float(), nullable=True),
        sa.Column("last_reason", sa.String(length=128), nullable=True),
        sa.Column("claimed_by", sa.String(length=128), nullable=True),
        sa.Column("claimed_until", sa.Float(), nullable=True),
        sa.Column("claimed_generation", sa.BigInteger(), nullable=True),
        sa.Column("enqueued_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("workspace_id", "external_id", name=op.f("pk_outbox")),
    )
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.create_index("ix_outbox_state_due", ["state", "due_at"], unique=False)

    op.create_table(
        "users",
        sa.Column("account_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("external_id", sa.String(length=1024), nullable=False),
        sa.Column("email", sa.Text(), nullable=True),
        sa.Column(
            "push_tokens",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
        sa.Column("mpid", sa.String(length=64), nullable=True),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("account_id", "external_id", name=op.f("pk_users")),
    )
    op.create_table(
        "workspaces",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("endpoint", sa.String(length=512), nullable=False),
        sa.Column("key_fingerprint", sa.String(length=64), nullable=False),
        sa.Column("state", sa.String(length=32), server_default="active", nullable=False),
        sa.Column("state_reason", sa.Text(), nullable=True),
        sa.Column("suspended_at", sa.Float(), nullable=True),
        sa.Column("next_probe_at", sa.Float(), nullable=True),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_workspaces")),
        sa.UniqueConstraint(
            "endpoint", "key_fingerprint", name=op.f("uq_workspaces_endpoint_key_fingerprint")
        ),
    )
    op.create_table(
        "connections",
        sa.Column("account_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column(
            "account_settings",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("settings_fingerprint", sa.String(length=64), nullable=False),
        sa.Column("state", sa.String(length=32), nullable=False),
        sa.Column(
            "settings_errors",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("workspace_id", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(
            ["workspace_id"], ["workspaces.id"], name=op.f("fk_connections_workspace_id_workspaces")
        ),
        sa.PrimaryKeyConstraint("account_id", name=op.f("pk_connections")),
    )


def downgrade() -> None:

    op.drop_table("connections")
    op.drop_table("workspaces")
    op.drop_table("users")
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.drop_index("ix_outbox_state_due")

    op.drop_table("outbox")
    with op.batch_alter_table("memberships", schema=None) as batch_op:
        batch_op.drop_index("ix_memberships_audience")

    op.drop_table("memberships")
    with op.batch_alter_table("firehose_messages", schema=None) as batch_op:
        batch_op.drop_index("ix_firehose_messages_received")

    op.drop_table("firehose_messages")
    op.drop_table("datapoints")
    op.drop_table("counters")
    op.drop_table("braze_users")
    op.drop_table("audiences")
