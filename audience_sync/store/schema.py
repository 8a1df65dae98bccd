"""All tables, in one MetaData (SPEC §9). Times are epoch seconds (float) so that the pure core
can do arithmetic on them without time zones; every writer passes ``now`` explicitly.

Vocabulary:
- a *connection* is one mParticle configuration (``account_id``);
- a *workspace* is one Braze REST key on one instance; several connections may share one;
- a *Braze user* is ``(workspace_id, external_id)``: the unit of the outbox and of the
  acknowledged state, so that a user is never in flight twice even when connections share a
  workspace (SPEC §4.6, §5.4).

Why one module past ~400 lines: it is one concept, the schema, kept whole so that a reader sees
every table, key and index of the one ``MetaData`` together.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from audience_sync.core.states import WorkspaceState

metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "pk": "pk_%(table_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    }
)

# JSON on PostgreSQL is stored as JSONB; SQLite stores text.
JSONType = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")

# Arrival order is ``seq``; SQLite only auto-increments an INTEGER primary key (and only
# AUTOINCREMENT keeps it from reusing the numbers of deleted rows).
SeqType = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

workspaces = sa.Table(
    "workspaces",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("endpoint", sa.String(512), nullable=False),
    # sha256 of the REST key: identifies the workspace without storing the key twice.
    sa.Column("key_fingerprint", sa.String(64), nullable=False),
    sa.Column("state", sa.String(32), nullable=False, server_default=WorkspaceState.ACTIVE.value),
    sa.Column("state_reason", sa.Text),
    sa.Column("suspended_at", sa.Float),
    sa.Column("next_probe_at", sa.Float),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.UniqueConstraint("endpoint", "key_fingerprint"),
)

connections = sa.Table(
    "connections",
    metadata,
    sa.Column("account_id", sa.BigInteger, primary_key=True, autoincrement=False),
    # account_settings exactly as mParticle last sent them (strings). Never returned by any API
    # unmasked, never logged.
    sa.Column("account_settings", JSONType, nullable=False),
    sa.Column("settings_fingerprint", sa.String(64), nullable=False),
    sa.Column("state", sa.String(32), nullable=False),  # ConnectionState
    sa.Column("settings_errors", JSONType, nullable=False),
    sa.Column("workspace_id", sa.Integer, sa.ForeignKey("workspaces.id")),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
)

audiences = sa.Table(
    "audiences",
    metadata,
    sa.Column("account_id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("audience_id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),  # AudienceState
    # Removed with cleanupOnRemove: members' attributes are to be cleared.
    sa.Column("cleanup", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("cleanup_done_at", sa.Float),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.Column("removed_at", sa.Float),
)

# Desired state, per connection and user.
users = sa.Table(
    "users",
    metadata,
    sa.Column("account_id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("external_id", sa.String(1024), primary_key=True),
    sa.Column("email", sa.Text),
    sa.Column("push_tokens", JSONType),  # ["token", ...] allowed by apiKeyOperatingSystem
    sa.Column("mpid", sa.String(64)),
    sa.Column("updated_at", sa.Float, nullable=False),
)

memberships = sa.Table(
    "memberships",
    metadata,
    sa.Column("account_id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("external_id", sa.String(1024), primary_key=True),
    sa.Column("audience_id", sa.BigInteger, primary_key=True, autoincrement=False),
    # A row stays after the user leaves (is_member false): per-segment mode writes
    # "In <name>" = false for former members.
    sa.Column("is_member", sa.Boolean, nullable=False),
    sa.Column("changed_at", sa.Float, nullable=False),
    sa.Index("ix_memberships_audience", "account_id", "audience_id"),
)

# Acknowledged state, per Braze user: the attribute values Braze confirmed (or the audit saw).
braze_users = sa.Table(
    "braze_users",
    metadata,
    sa.Column("workspace_id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("external_id", sa.String(1024), primary_key=True),
    sa.Column("attributes", JSONType, nullable=False),
    sa.Column("flags", JSONType, nullable=False),  # guard reasons, e.g. ["string_too_long"]
    sa.Column("last_write_at", sa.Float),
    sa.Column("last_outcome", sa.String(64)),
    sa.Column("last_outcome_at", sa.Float),
    sa.Column("verified_at", sa.Float),
    sa.Column("updated_at", sa.Float, nullable=False),
)

# Field values Braze refused for a user (SPEC §5.3): withheld while the value is unchanged.
field_flags = sa.Table(
    "field_flags",
    metadata,
    sa.Column("workspace_id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("external_id", sa.String(1024), primary_key=True),
    sa.Column("field", sa.String(255), primary_key=True),
    # Digest of the refused value as sent (core.field_flags.fingerprint), never the value.
    sa.Column("fingerprint", sa.String(64), nullable=False),
    sa.Column("flag", sa.String(64), nullable=False),  # invalid_email, invalid_push_token, ...
    sa.Column("flagged_at", sa.Float, nullable=False),
)

# The dirty-user outbox: one row per Braze user, not per change.
outbox = sa.Table(
    "outbox",
    metadata,
    sa.Column("workspace_id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("external_id", sa.String(1024), primary_key=True),
    sa.Column("state", sa.String(16), nullable=False),  # OutboxState
    # Bumped by every change; a sender finishes a row only if it is unchanged since its claim.
    sa.Column("generation", sa.BigInteger, nullable=False),
    sa.Column("due_at", sa.Float, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("first_failure_at", sa.Float),
    sa.Column("last_reason", sa.String(128)),
    sa.Column("claimed_by", sa.String(128)),
    sa.Column("claimed_until", sa.Float),
    sa.Column("claimed_generation", sa.BigInteger),
    # Write-ahead record of what a sent-but-unconfirmed write may have changed in Braze
    # ({"keys": [...], "values": [...]}, core.attributes.Uncertain); resent until confirmed.
    sa.Column("in_flight", JSONType),
    sa.Column("enqueued_at", sa.Float, nullable=False),
    sa.Index("ix_outbox_state_due", "state", "due_at"),
)

firehose_messages = sa.Table(
    "firehose_messages",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("type", sa.String(64), nullable=False),
    sa.Column("account_id", sa.BigInteger),
    sa.Column("received_at", sa.Float, nullable=False),
    sa.Index("ix_firehose_messages_received", "received_at"),
)

# Accepted membership changes waiting to be applied (SPEC §3.1, §9): the intake commits the
# message's plan here with its id and answers; a worker applies it to users, memberships and the
# outbox, and deletes the row in the same transaction. Applied in seq (arrival) order.
firehose_journal = sa.Table(
    "firehose_journal",
    metadata,
    sa.Column("seq", SeqType, primary_key=True, autoincrement=True),
    sa.Column("account_id", sa.BigInteger, nullable=False),
    sa.Column("message_id", sa.String(64), nullable=False),
    # The message's timestamp: memberships are ordered by it (order independence).
    sa.Column("changed_at", sa.Float, nullable=False),
    sa.Column("received_at", sa.Float, nullable=False),
    sa.Column("profiles", sa.Integer, nullable=False),
    # The resolved plan (core.membership.MembershipPlan), encoded by store.journal.
    sa.Column("plan", sa.LargeBinary, nullable=False),
    sqlite_autoincrement=True,
)

# SQLite with the journal in a file of its own (store/journal_file.py): the journal entries
# applied here, marked in the same transaction as their effects and forgotten once the entries
# are deleted from that file, so that no entry is applied twice. With its message id: a journal
# file made anew numbers its entries from 1 again, and must not match an old mark.
firehose_applied = sa.Table(
    "firehose_applied",
    metadata,
    sa.Column("seq", SeqType, primary_key=True, autoincrement=False),
    sa.Column("message_id", sa.String(64), primary_key=True),
    sa.Column("applied_at", sa.Float, nullable=False),
)

# Per-reason counters (SPEC §5.3 "every outcome is counted by reason").
counters = sa.Table(
    "counters",
    metadata,
    sa.Column("day", sa.String(10), primary_key=True),
    sa.Column("scope", sa.String(64), primary_key=True),  # "account:123", "workspace:4", "global"
    sa.Column("reason", sa.String(64), primary_key=True),
    sa.Column("count", sa.BigInteger, nullable=False),
)

# Braze data points spent (SPEC §4.5), per day, connection and audience (0 = not attributable).
datapoints = sa.Table(
    "datapoints",
    metadata,
    sa.Column("day", sa.String(10), primary_key=True),
    sa.Column("workspace_id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("account_id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("audience_id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("points", sa.BigInteger, nullable=False),
)

# Sending processes and their heartbeats (SPEC §9): the leases of a process whose heartbeat
# stopped are released by the live ones; the live ones share each REST key's rate budget.
workers = sa.Table(
    "workers",
    metadata,
    sa.Column("id", sa.String(128), primary_key=True),  # its senders claim as "<id>:<n>"
    sa.Column("hostname", sa.String(255), nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("senders", sa.Integer, nullable=False),
    sa.Column("started_at", sa.Float, nullable=False),
    sa.Column("heartbeat_at", sa.Float, nullable=False),
)

# --- scheduled jobs (SPEC §7): leases, runs, pending cleanups -----------------------------------
# Migration 0004_jobs. Kept together so that a merge with other blocks stays a clean append.

# One row per job: who holds it until when, and when it last started (so that two schedulers
# with the same interval run it once per interval, not once each).
job_leases = sa.Table(
    "job_leases",
    metadata,
    sa.Column("job", sa.String(64), primary_key=True),
    sa.Column("holder", sa.String(128)),
    sa.Column("expires_at", sa.Float, nullable=False),
    sa.Column("last_started_at", sa.Float),
    sa.Column("last_finished_at", sa.Float),
)

# Every run of every job: readable by `audience-sync status` and the admin API.
job_runs = sa.Table(
    "job_runs",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("job", sa.String(64), nullable=False),
    sa.Column("holder", sa.String(128), nullable=False),
    sa.Column("started_at", sa.Float, nullable=False),
    sa.Column("finished_at", sa.Float),
    sa.Column("outcome", sa.String(16), nullable=False),  # running | ok | failed
    sa.Column("counts", JSONType, nullable=False),
    sa.Column("details", JSONType),  # e.g. the audit's drift per audience with sample users
    sa.Column("error", sa.Text),
    sa.Index("ix_job_runs_job_started", "job", "started_at"),
    sa.Index("ix_job_runs_started", "started_at"),
)

# Work a Firehose request asks for but must not do inline (it may touch 100,000 users): mark the
# members of an audience, or every user of a connection, dirty in a workspace; or settle the
# pending rows a connection left in its previous workspace. Paged by ``cleanup_removed``.
pending_cleanups = sa.Table(
    "pending_cleanups",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    # audience_removed | audience_renamed | audience_readded | settings_changed | connection_moved
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("account_id", sa.BigInteger, nullable=False),
    sa.Column("audience_id", sa.BigInteger),  # None: every user of the connection
    sa.Column("workspace_id", sa.Integer, nullable=False),
    # connection_moved: the workspace left behind, and whether to clear it or drop its rows.
    sa.Column("old_workspace_id", sa.Integer),
    sa.Column("clear_old", sa.Boolean, nullable=False, server_default=sa.false()),
    # Where to clear it: {"endpoint", "api_key"} of the old settings, erased once done. The key
    # is as secret here as in connections.account_settings: never returned, never logged.
    sa.Column("old_target", JSONType),
    sa.Column("cursor", sa.String(1024)),  # last external_id enqueued (keyset paging)
    sa.Column("enqueued", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("settled", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("paged_at", sa.Float),  # every user marked: done once nothing is left to clear
    sa.Column("done_at", sa.Float),
    sa.Index("ix_pending_cleanups_done_id", "done_at", "id"),
)

# The audit's cursor (oldest verified first) runs on this index.
sa.Index(
    "ix_braze_users_workspace_verified",
    braze_users.c.workspace_id,
    braze_users.c.verified_at,
    braze_users.c.external_id,
)

# ---------------------------------------------------------------------------------------------
# Currents round trip (SPEC §6): Braze events queued for mParticle feeds. Migration 0003.
# ---------------------------------------------------------------------------------------------

# The intake queue: one row per accepted, forwardable event until it is cut into a batch (the
# row then moves into the batch). state: queued | held (no feed takes it) | dead (with reason).
currents_events = sa.Table(
    "currents_events",
    metadata,
    sa.Column("seq", SeqType, primary_key=True, autoincrement=True),
    sa.Column("event_id", sa.String(256), nullable=False),
    sa.Column("feed", sa.String(128)),
    sa.Column("external_user_id", sa.String(1024), nullable=False),
    sa.Column("app_id", sa.String(256)),
    sa.Column("platform", sa.String(32)),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("received_at", sa.Float, nullable=False),
    # The batch parts, serialised once at intake (core.currents.batching.QueuedEvent).
    sa.Column("envelope", sa.Text, nullable=False),
    sa.Column("event", sa.Text, nullable=False),
    sa.Column("reason", sa.Text),
    sa.Index("ix_currents_events_state_feed_seq", "state", "feed", "seq"),
    # Never reuse a seq: batched events leave this table, and a reused (smaller) seq would
    # order a user's new batch before an older pending one.
    sqlite_autoincrement=True,
)

# Formed batches: content fixed, id = source_request_id. Deleted once mParticle accepts them.
# state: pending | dead.
currents_batches = sa.Table(
    "currents_batches",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("feed", sa.String(128), nullable=False),
    sa.Column("external_user_id", sa.String(1024), nullable=False),
    sa.Column("first_seq", sa.BigInteger, nullable=False),
    sa.Column("events", sa.Integer, nullable=False),
    # JSON array of the Currents ids it carries (dead-letter reports, replay).
    sa.Column("event_ids", sa.Text, nullable=False),
    # The body (the batch's JSON) is a row of currents_batch_bodies, keyed by first_seq.
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    # Times leased to a sender; 0: never in a request, so later events may still join it.
    sa.Column("leases", sa.Integer, nullable=False, server_default="0"),
    sa.Column("first_failure_at", sa.Float),
    sa.Column("due_at", sa.Float, nullable=False),
    sa.Column("claimed_by", sa.String(128)),
    sa.Column("claimed_until", sa.Float),
    sa.Column("last_reason", sa.Text),
    # Arrival of its oldest event; retention counts from retain_from (arrival, or replay).
    sa.Column("received_at", sa.Float, nullable=False),
    sa.Column("retain_from", sa.Float, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Index("ix_currents_batches_state_feed_seq", "state", "feed", "first_seq"),
    sa.Index("ix_currents_batches_user", "feed", "external_user_id", "first_seq"),
)

# A batch's body (the mParticle batch JSON, ~2 KB for one Braze event), apart from its row and
# keyed by the batch's first_seq (unique: a queue position is the first event of one batch
# only): written once at formation (again when later events join a batch never leased) and
# deleted with its batch, so that a lease, which rewrites the batch row, rewrites ~150 bytes
# instead of the body as well.
currents_batch_bodies = sa.Table(
    "currents_batch_bodies",
    metadata,
    sa.Column("first_seq", SeqType, primary_key=True, autoincrement=False),
    sa.Column("body", sa.LargeBinary, nullable=False),
)

# Feed state (SPEC §6.5): active | paused (credentials refused), probed while paused.
currents_feeds = sa.Table(
    "currents_feeds",
    metadata,
    sa.Column("name", sa.String(128), primary_key=True),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("reason", sa.Text),
    sa.Column("paused_at", sa.Float),
    sa.Column("next_probe_at", sa.Float),
    # sha256 of url, key and secret: a change means "probe at once".
    sa.Column("settings_fingerprint", sa.String(64)),
    sa.Column("updated_at", sa.Float, nullable=False),
)

# Imported Avro files: each (path, checksum) once (SPEC §6.2).
currents_files = sa.Table(
    "currents_files",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("path", sa.Text, nullable=False),
    sa.Column("checksum", sa.String(64), nullable=False),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("events", sa.Integer, nullable=False),
    sa.Column("forwarded", sa.Integer, nullable=False),
    sa.Column("skipped", JSONType, nullable=False),
    sa.Column("imported_at", sa.Float, nullable=False),
    sa.UniqueConstraint("path", "checksum"),
)

# Currents event ids seen within currents.dedup_window_s (from arrival).
currents_dedup = sa.Table(
    "currents_dedup",
    metadata,
    sa.Column("event_id", sa.String(256), primary_key=True),
    sa.Column("seen_at", sa.Float, nullable=False),
    sa.Index("ix_currents_dedup_seen_at", "seen_at"),
)
