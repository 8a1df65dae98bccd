"""Alembic, driven from code: ``audience-sync db upgrade`` and the readiness check.

The readiness check (:func:`is_current`, run at the start of every command and by ``/ready``)
does not load Alembic: importing it and reading its script directory cost a command ~0.3 s of
CPU (``currents import`` of 50,000 events: ~6 µs per event). The head is read from the
migration files' ``revision``/``down_revision`` lines, and the database's revision from
Alembic's version table; whenever that reading is not plain (several heads or rows), Alembic
itself answers. ``tests/integration/test_migrate.py`` holds both answers equal.
"""

from __future__ import annotations

import re
import typing as t
from functools import cache
from pathlib import Path

import sqlalchemy as sa

if t.TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS = Path(__file__).with_name("migrations")
VERSION_TABLE = "alembic_version"
"""Where Alembic keeps the database's revision (its default; ``migrations/env.py`` keeps it)."""

_REVISION = re.compile(r"^revision(?:\s*:\s*[\w\[\], |]+)?\s*=\s*(.+)$", re.MULTILINE)
_DOWN_REVISION = re.compile(r"^down_revision(?:\s*:\s*[\w\[\], |]+)?\s*=\s*(.+)$", re.MULTILINE)
_QUOTED = re.compile(r"[\"']([^\"']+)[\"']")


def _config(engine: sa.Engine) -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["engine"] = engine
    return config


def upgrade(engine: sa.Engine, revision: str = "head") -> None:
    """Create or migrate the schema to ``revision``."""
    from alembic import command

    command.upgrade(_config(engine), revision)


def alembic_head_revision(engine: sa.Engine) -> str | None:
    """The newest revision, as Alembic's script directory says."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_config(engine)).get_current_head()


@cache
def _head_from_files() -> str | None:
    """The one revision no migration file revises, or None when that is not plain."""
    revisions: set[str] = set()
    revised: set[str] = set()
    for path in (MIGRATIONS / "versions").glob("*.py"):
        text = path.read_text("utf-8")
        found = _REVISION.search(text)
        if found is None:
            continue
        names = _QUOTED.findall(found.group(1))
        if len(names) != 1:
            return None
        revisions.add(names[0])
        down = _DOWN_REVISION.search(text)
        if down is not None:
            revised.update(_QUOTED.findall(down.group(1)))
    heads = revisions - revised
    return heads.pop() if len(heads) == 1 else None


def head_revision(engine: sa.Engine) -> str | None:
    """The newest revision the code knows."""
    return _head_from_files() or alembic_head_revision(engine)


def current_revision(engine: sa.Engine) -> str | None:
    """The revision the database is at, or None if it was never migrated."""
    with engine.connect() as conn:
        if not sa.inspect(conn).has_table(VERSION_TABLE):
            return None
        rows = conn.exec_driver_sql(f"SELECT version_num FROM {VERSION_TABLE}").scalars().all()
        if len(rows) <= 1:
            return rows[0] if rows else None
        from alembic.runtime.migration import MigrationContext

        return MigrationContext.configure(conn).get_current_revision()


def is_current(engine: sa.Engine) -> bool:
    """Whether every migration has been applied."""
    return current_revision(engine) == head_revision(engine)
