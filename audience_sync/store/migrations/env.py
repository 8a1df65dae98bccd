"""Alembic environment: runs against the engine handed over by ``store.migrate``."""

from __future__ import annotations

from alembic import context

from audience_sync.store.schema import metadata

engine = context.config.attributes.get("engine")
if engine is None:  # plain `alembic` CLI use: build from the configured URL
    from audience_sync.store.engine import create_engine

    engine = create_engine(context.config.get_main_option("sqlalchemy.url"))

with engine.connect() as connection:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()
