"""SQLite: the Firehose journal in a file of its own, so that an acknowledgement never waits for
delivery's writes.

SQLite has one writer per file. With the journal in the main database, a Firehose request
waited at the writer gate for whichever applier part or sender transaction held it: on the
2-core bench that wait was most of the acknowledgement's p99 (about 55 of 95 ms), because those
holders run at a lower CPU priority and are preempted while holding the lock. In a file of its
own (``<database>-intake.db``) the journal's only writers are the intake (one short insert per
message) and the applier's deletes.

Applying then spans two files, which SQLite cannot commit atomically. The applier marks each
applied entry in the main database (``firehose_applied``), in the same transaction as its
effects; the entry is deleted from the journal file afterwards, and an entry found marked is
never applied again. Marks are forgotten once their entries are gone.

PostgreSQL and in-memory SQLite keep the journal in the main database
(:func:`journal_engine` returns the same engine), where the applier deletes each entry in the
same transaction as its effects.

The journal file is a queue, not a record: its two tables are created here when it is opened
(they are copies of the main schema's ``firehose_journal`` and ``firehose_messages``; Alembic
migrates the main database). Back it up with the main database, or drain it first
(``audience-sync status`` shows ``firehose_waiting``).
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Collection, Sequence

import sqlalchemy as sa

from audience_sync.store.engine import create_engine
from audience_sync.store.schema import firehose_applied, firehose_journal, firehose_messages
from audience_sync.store.statements import chunks, insert

JOURNAL_FILE_SUFFIX = "-intake.db"
"""Appended to the main database's path."""

_METADATA = sa.MetaData()
for _table in (firehose_journal, firehose_messages):
    _table.to_metadata(_METADATA)

_ENGINES: weakref.WeakKeyDictionary[sa.Engine, sa.Engine] = weakref.WeakKeyDictionary()
_GUARD = threading.Lock()


def journal_path(engine: sa.Engine) -> str | None:
    """The journal file of an SQLite file database, None when the journal is in the database."""
    if engine.dialect.name != "sqlite":
        return None
    database = engine.url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return database + JOURNAL_FILE_SUFFIX


def journal_engine(engine: sa.Engine) -> sa.Engine:
    """The engine the Firehose journal and membership message ids are written through: a
    file of its own next to an SQLite database file (created on first use), else ``engine``."""
    path = journal_path(engine)
    if path is None:
        return engine
    with _GUARD:
        found = _ENGINES.get(engine)
        if found is None:
            found = create_engine(f"sqlite:///{path}", pool_size=engine.pool.size())
            _METADATA.create_all(found, checkfirst=True)
            _ENGINES[engine] = found
    return found


def is_separate(engine: sa.Engine) -> bool:
    """Whether the journal of ``engine`` is in a file of its own."""
    return journal_path(engine) is not None


def mark_applied(
    conn: sa.Connection, entries: Collection[tuple[int, str]], *, now: float
) -> set[int]:
    """Mark entries ``(seq, message_id)`` applied in the main database's transaction ``conn``;
    returns the seqs not marked before (the others were applied already: their effects must
    not be repeated)."""
    stmt = (
        insert(conn, firehose_applied)
        .on_conflict_do_nothing(
            index_elements=[firehose_applied.c.seq, firehose_applied.c.message_id]
        )
        .returning(firehose_applied.c.seq)
    )
    marked: set[int] = set()
    for seq, message_id in sorted(entries):
        row = {"seq": seq, "message_id": message_id, "applied_at": now}
        if conn.execute(stmt, row).first() is not None:
            marked.add(seq)
    return marked


def applied_among(conn: sa.Connection, entries: Sequence[tuple[int, str]]) -> set[int]:
    """The seqs of ``entries`` ``(seq, message_id)`` marked applied (their journal entries
    await deletion)."""
    wanted = set(entries)
    found: set[int] = set()
    for chunk in chunks(sorted({seq for seq, _ in entries})):
        query = sa.select(firehose_applied.c.seq, firehose_applied.c.message_id).where(
            firehose_applied.c.seq.in_(chunk)
        )
        found.update(seq for seq, message_id in conn.execute(query) if (seq, message_id) in wanted)
    return found


def forget_marks(conn: sa.Connection, *, below: int | None) -> None:
    """Forget the marks of entries no longer in the journal: those before its oldest entry
    ``below`` (every mark when the journal is empty, ``None``)."""
    query = firehose_applied.delete()
    if below is not None:
        query = query.where(firehose_applied.c.seq < below)
    conn.execute(query)


def oldest_seq(conn: sa.Connection) -> int | None:
    """The oldest entry's seq in the journal, None when it is empty."""
    value = conn.execute(sa.select(sa.func.min(firehose_journal.c.seq))).scalar()
    return int(value) if value is not None else None
