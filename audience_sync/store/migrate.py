"""Alembic, driven from code: ``audience-sync db upgrade`` and the readiness check.

Alembic is imported only where it runs: with Mako (and Pygments when installed) it cost every
command ~0.25 s of start-up, a fifth of ``currents import``'s. :func:`is_current` answers "yes"
without it when the database holds the one head the migration files name, and otherwise asks
Alembic, so its answers are Alembic's.
"""

from __future__ import annotations

import re
import typing as t
from pathlib import Path

import sqlalchemy as sa

if t.TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS = Path(__file__).with_name("migrations")
VERSION_TABLE = "alembic_version"
"""Alembic's default version table (env.py does not name another)."""
_REVISION_LINE = re.compile(r'^(revision|down_revision) = (?:None|"([^"\\]+)")$', re.MULTILINE)


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


def head_revision(engine: sa.Engine) -> str | None:
    """The newest revision the code knows."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_config(engine)).get_current_head()


def current_revision(engine: sa.Engine) -> str | None:
    """The revision the database is at, or None if it was never migrated."""
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def is_current(engine: sa.Engine) -> bool:
    """Whether every migration has been applied."""
    head = plain_head()
    if head is not None and _stored_revisions(engine) == [head]:
        return True
    return current_revision(engine) == head_revision(engine)


def plain_head() -> str | None:
    """The head of the migration files read as text, when they form one chain whose every file
    names its ``revision`` and ``down_revision`` as plain strings; else None (ask Alembic)."""
    parents: dict[str, str | None] = {}
    for path in (MIGRATIONS / "versions").glob("*.py"):
        found = {m[1]: m[2] for m in _REVISION_LINE.finditer(path.read_text("utf-8"))}
        revision = found.get("revision")
        if len(found) != 2 or revision is None or revision in parents:
            return None
        parents[revision] = found["down_revision"]
    heads = set(parents).difference(parents.values())
    if len(heads) != 1:
        return None
    head = revision = heads.pop()
    for _ in parents:  # the chain from the head down must pass every file once
        if revision not in parents:
            return None
        revision = parents[revision]
    return head if revision is None else None


def _stored_revisions(engine: sa.Engine) -> list[str] | None:
    """The revisions in the database's version table; None when it has none."""
    with engine.connect() as conn:
        if not sa.inspect(conn).has_table(VERSION_TABLE):
            return None
        return list(conn.execute(sa.text(f"SELECT version_num FROM {VERSION_TABLE}")).scalars())
