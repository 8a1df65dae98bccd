"""Shared fixtures: settings, a migrated engine on SQLite and on PostgreSQL, app and client.

PostgreSQL tests use the throwaway cluster that ``scripts/test`` starts and announces in
``AUDIENCE_SYNC_TEST_PG_URL``; run ``pytest -m "not external_service"`` to leave them out.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from audience_sync import create_app
from audience_sync.runtime import Runtime
from audience_sync.settings import load_settings
from audience_sync.store.engine import create_engine
from audience_sync.store.migrate import upgrade
from audience_sync.store.schema import metadata

PG_URL_ENV = "AUDIENCE_SYNC_TEST_PG_URL"
FIXTURES = Path(__file__).resolve().parent / "fixtures"
"""Vendor samples copied into the repository (see tests/fixtures/README.md)."""
SAMPLES = FIXTURES
FIREHOSE_TOKEN = "test-firehose-token"


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never see the developer's AUDIENCE_SYNC_* variables."""
    for name in list(os.environ):
        if name.startswith("AUDIENCE_SYNC_") and name != PG_URL_ENV:
            monkeypatch.delenv(name)


def pg_url() -> str:
    url = os.environ.get(PG_URL_ENV)
    if not url:
        raise RuntimeError(
            f"{PG_URL_ENV} is not set: run scripts/test (it starts PostgreSQL), "
            'or deselect with -m "not external_service"'
        )
    return url


@pytest.fixture(scope="session")
def _pg_database() -> Iterator[str]:
    """One migrated database for the session; tests truncate it before use."""
    admin = sa.create_engine(pg_url(), isolation_level="AUTOCOMMIT")
    name = f"as_test_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    url = sa.engine.make_url(pg_url()).set(database=name).render_as_string(hide_password=False)
    engine = create_engine(url)
    upgrade(engine)
    engine.dispose()
    yield url
    with admin.connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.dispose()


def _truncate(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        names = ", ".join(t.name for t in metadata.sorted_tables)
        conn.exec_driver_sql(f"TRUNCATE {names} RESTART IDENTITY CASCADE")


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.external_service)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A migrated, empty database: SQLite in tmp_path, or the session's PostgreSQL database."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'audience-sync.db'}"
        engine = create_engine(url)
        upgrade(engine)
        engine.dispose()
        return url
    url = request.getfixturevalue("_pg_database")
    engine = create_engine(url)
    _truncate(engine)
    engine.dispose()
    return url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A migrated SQLite database only (for tests about SQLite itself)."""
    url = f"sqlite:///{tmp_path / 'audience-sync.db'}"
    engine = create_engine(url)
    upgrade(engine)
    engine.dispose()
    return url


@pytest.fixture
def make_settings(database_url: str, tmp_path: Path):
    """Factory: settings on the test database with test tokens, plus ``**overrides``."""

    def factory(**overrides):
        values = {
            "database.url": database_url,
            "firehose.tokens": [FIREHOSE_TOKEN],
            # Tests of the views see the state applied when the reply comes; the journal's own
            # tests (and every test running `run` or `worker`) use the deferred default.
            "firehose.apply_in_request": True,
            "braze.allowed_custom_endpoints": ["http://127.0.0.1:"],
            "braze.dry_run_path": str(tmp_path / "braze-requests.jsonl"),
        }
        values.update({k.replace("__", "."): v for k, v in overrides.items()})
        return load_settings(environ={}, overrides=values)

    return factory


@pytest.fixture
def make_runtime(make_settings):
    """Factory: a runtime on the test database with settings ``**overrides``; engines are
    disposed at teardown."""
    runtimes: list[Runtime] = []

    def factory(**overrides):
        rt = Runtime.from_settings(make_settings(**overrides))
        runtimes.append(rt)
        return rt

    yield factory
    for rt in runtimes:
        rt.engine.dispose()


@pytest.fixture
def make_client(make_runtime):
    """Factory: a test client on an app built with settings ``**overrides``."""

    def factory(**overrides):
        return create_app(runtime=make_runtime(**overrides)).test_client()

    return factory


@pytest.fixture
def runtime(make_settings) -> Iterator[Runtime]:
    rt = Runtime.from_settings(make_settings())
    yield rt
    rt.engine.dispose()


@pytest.fixture
def engine(runtime: Runtime) -> sa.Engine:
    return runtime.engine


@pytest.fixture
def app(runtime: Runtime):
    app = create_app(runtime=runtime)
    app.config["TESTING"] = True
    return app


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def auth_headers() -> dict[str, str]:
    return {"Authorization": f"Token {FIREHOSE_TOKEN}"}
