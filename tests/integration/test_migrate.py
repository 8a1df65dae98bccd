"""The schema check (``is_current``) answers as Alembic does, with or without its shortcut."""

from __future__ import annotations

import sqlalchemy as sa

from audience_sync.store.engine import create_engine
from audience_sync.store.migrate import head_revision, is_current, plain_head, upgrade


def test_the_migration_files_read_as_text_name_alembics_head():
    assert plain_head() == head_revision(sa.create_engine("sqlite://"))


def test_a_migrated_database_is_current(database_url):
    engine = create_engine(database_url)
    try:
        assert is_current(engine)
    finally:
        engine.dispose()


def test_a_database_before_or_below_the_head_is_not_current(tmp_path):
    engine = create_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    try:
        assert not is_current(engine)
        upgrade(engine, "+1")
        assert not is_current(engine)
        upgrade(engine)
        assert is_current(engine)
    finally:
        engine.dispose()
