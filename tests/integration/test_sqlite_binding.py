"""SQLite binds None, bools and the states' StrEnums as it always did (NULL, 0/1, the value's
text) through the adapters registered by ``store.engine``, which skip pysqlite's failing
adapter lookup."""

from __future__ import annotations

import pytest

from audience_sync.core.states import AudienceState, OutboxState
from audience_sync.store.engine import create_engine


@pytest.mark.parametrize(
    ("value", "stored", "sql_type"),
    [
        (None, None, "null"),
        (True, 1, "integer"),
        (False, 0, "integer"),
        (OutboxState.PENDING, "pending", "text"),
        (AudienceState.REMOVED, "removed", "text"),
        (7, 7, "integer"),
        ("plain", "plain", "text"),
    ],
)
def test_values_are_bound_as_their_base_type(tmp_path, value, stored, sql_type):
    engine = create_engine(f"sqlite:///{tmp_path}/binding.db")
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE t (v)")
        conn.exec_driver_sql("INSERT INTO t VALUES (?)", [(value,), (value,)])
        rows = conn.exec_driver_sql("SELECT v, typeof(v) FROM t").all()
    assert [tuple(r) for r in rows] == [(stored, sql_type)] * 2
    assert type(rows[0][0]) is type(stored)
