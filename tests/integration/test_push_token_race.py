"""Two simultaneous *first* applications of messages for one new user, with different push
tokens, keep both tokens on PostgreSQL (issue 7). Both transactions are made to read the
(absent) user before either writes it: the race that lost a token, forced rather than hoped for.

Journal appliers take the oldest entries first, so two of them rarely apply at once; the store
must still be safe when they (or two ``firehose.apply_in_request`` servers) do."""

from __future__ import annotations

import threading
import time
from collections import Counter

import pytest
import sqlalchemy as sa

from audience_sync import create_app
from audience_sync.core.membership import MembershipPlan, UserUpdate
from audience_sync.firehose import testing as ft
from audience_sync.runtime import Runtime
from audience_sync.settings import load_settings
from audience_sync.store.engine import create_engine
from audience_sync.store.memberships import apply_membership_plan
from audience_sync.store.transactions import in_transaction
from tests.conftest import FIREHOSE_TOKEN, _truncate

pytestmark = pytest.mark.external_service

USERS = 5


@pytest.fixture
def pg_runtime(request):
    url = request.getfixturevalue("_pg_database")
    engine = create_engine(url)
    _truncate(engine)
    engine.dispose()
    runtime = Runtime.from_settings(
        load_settings(
            environ={},
            overrides={
                "database.url": url,
                "firehose.tokens": [FIREHOSE_TOKEN],
                "firehose.apply_in_request": True,
            },
        )
    )
    yield runtime
    runtime.engine.dispose()


def test_simultaneous_first_applications_keep_both_push_tokens(pg_runtime, auth_headers):
    settings = ft.account_settings(apiKeyOperatingSystem="ios")
    app = create_app(runtime=pg_runtime)
    client = app.test_client()
    # The connection exists already: only the users are new.
    first = ft.membership_request(
        1, [ft.profile("someone", [ft.audience_change(1)])], settings=settings
    )
    assert client.post("/firehose", json=first, headers=auth_headers).status_code == 200

    both_read = threading.Barrier(2)
    reads = {"n": 0}
    lock = threading.Lock()

    @sa.event.listens_for(pg_runtime.engine, "after_cursor_execute")
    def hold_after_reading_tokens(conn, cursor, statement, parameters, context, executemany):
        if "push_tokens" in statement and "FOR UPDATE" in statement:
            with lock:
                reads["n"] += 1
                first_pair = reads["n"] <= 2
            if first_pair:
                both_read.wait(timeout=10)

    def plan(token_suffix: str) -> MembershipPlan:
        users = [f"new-{n}" for n in range(USERS)]
        return MembershipPlan(
            users={
                u: UserUpdate(external_id=u, push_tokens=[f"tok-{n}-{token_suffix}"])
                for n, u in enumerate(users)
            },
            memberships={(u, 1): True for u in users},
            audience_names={1: "Audience 1"},
            unresolved=Counter(),
        )

    statuses: list[int] = []

    def send(update: MembershipPlan) -> None:
        now = time.time()
        in_transaction(
            pg_runtime.engine,
            lambda conn: apply_membership_plan(
                conn,
                account_id=1,
                plan=update,
                workspace_id=None,
                changed_at=now,
                coalesce_s=0.0,
                now=now,
            ),
            retry_conflicts=True,
        )
        statuses.append(200)

    threads = [threading.Thread(target=send, args=(plan(s),)) for s in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    sa.event.remove(pg_runtime.engine, "after_cursor_execute", hold_after_reading_tokens)
    assert statuses == [200, 200]
    assert reads["n"] >= 2  # both really read before either wrote
    with pg_runtime.engine.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT external_id, push_tokens FROM users WHERE external_id LIKE 'new-%'")
        )
        tokens = {external_id: sorted(value) for external_id, value in rows}
    assert tokens == {f"new-{n}": [f"tok-{n}-a", f"tok-{n}-b"] for n in range(USERS)}
