"""What a process shares between its HTTP views, senders and jobs: settings and the engine."""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa

from audience_sync.settings import Settings
from audience_sync.store.engine import create_engine


@dataclass(frozen=True, kw_only=True)
class Runtime:
    """The validated settings and the one engine of this process."""

    settings: Settings
    engine: sa.Engine

    @classmethod
    def from_settings(cls, settings: Settings, *, background_checkpoint: bool = False) -> Runtime:
        """Open the configured database (no query is run until first use).

        ``background_checkpoint``: this process will run a WAL checkpointer (SQLite).
        """
        engine = create_engine(
            settings.get("database.url"),
            sqlite_synchronous=settings.get("database.sqlite_synchronous"),
            pool_size=max(5, settings.get("server.threads") + settings.get("delivery.workers")),
            background_checkpoint=background_checkpoint,
        )
        return cls(settings=settings, engine=engine)


def current_runtime() -> Runtime:
    """The runtime of the app serving the current request."""
    from flask import current_app  # here: the commands without an app need no Flask

    runtime: Runtime = current_app.extensions["audience_sync"]
    return runtime
