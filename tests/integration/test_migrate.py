"""The readiness check reads revisions without Alembic: its answers equal Alembic's."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from alembic.runtime.migration import MigrationContext

from audience_sync.store.engine import create_engine
from audience_sync.store.migrate import (
    alembic_head_revision,
    current_revision,
    head_revision,
    is_current,
    upgrade,
)


def _alembic_current(engine: sa.Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def test_head_and_current_equal_alembics(database_url: str) -> None:
    engine = create_engine(database_url)
    try:
        assert head_revision(engine) == alembic_head_revision(engine) is not None
        assert current_revision(engine) == _alembic_current(engine) == head_revision(engine)
        assert is_current(engine)
    finally:
        engine.dispose()


def test_unmigrated_and_older_databases_are_not_current(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'new.db'}")
    try:
        assert current_revision(engine) is None
        assert not is_current(engine)
        upgrade(engine, "0008")
        assert current_revision(engine) == _alembic_current(engine) == "0008"
        assert not is_current(engine)
        upgrade(engine)
        assert is_current(engine)
    finally:
        engine.dispose()
