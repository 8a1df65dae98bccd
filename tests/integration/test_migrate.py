"""The readiness check reads revisions without Alembic: its answers equal Alembic's."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.runtime.migration import MigrationContext

from audience_sync.store.engine import create_engine
from audience_sync.store.migrate import (
    _config,
    alembic_head_revision,
    current_revision,
    head_revision,
    is_current,
    upgrade,
)
from tests.conftest import pg_url


def downgrade(engine: sa.Engine, revision: str) -> None:
    command.downgrade(_config(engine), revision)


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


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.external_service)])
def fresh_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database of its own (never migrated)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'fresh.db'}"
        return
    admin = sa.create_engine(pg_url(), isolation_level="AUTOCOMMIT")
    name = f"as_migrate_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield sa.engine.make_url(pg_url()).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


def test_0011_moves_batch_bodies_to_their_table_and_back(fresh_url: str) -> None:
    engine = create_engine(fresh_url)
    row = {
        "id": "b-1",
        "feed": "ios",
        "external_user_id": "u",
        "first_seq": 7,
        "events": 1,
        "event_ids": '["e"]',
        "body": b'{"events":[]}',
        "state": "pending",
        "attempts": 0,
        "leases": 1,
        "due_at": 1.0,
        "received_at": 1.0,
        "retain_from": 1.0,
        "created_at": 1.0,
    }
    columns = ", ".join(row)
    marks = ", ".join(f":{k}" for k in row)
    try:
        upgrade(engine, "0009")
        with engine.begin() as conn:
            conn.execute(sa.text(f"INSERT INTO currents_batches ({columns}) VALUES ({marks})"), row)
        upgrade(engine, "0011")
        with engine.connect() as conn:
            assert conn.execute(
                sa.text("SELECT first_seq, body FROM currents_batch_bodies")
            ).all() == [(7, b'{"events":[]}')]
            names = {c["name"] for c in sa.inspect(conn).get_columns("currents_batches")}
            assert "body" not in names
        downgrade(engine, "0010")
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT id, body FROM currents_batches")).all() == [
                ("b-1", b'{"events":[]}')
            ]
            assert not sa.inspect(conn).has_table("currents_batch_bodies")
    finally:
        engine.dispose()
