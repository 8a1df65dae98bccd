"""Builders for Firehose messages and helpers to drive the engine in tests."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Mapping

import sqlalchemy as sa

from audience_sync.core.states import OutboxState
from audience_sync.store.journal_file import journal_engine
from audience_sync.store.schema import firehose_journal, firehose_messages, outbox


def account(account_id: int, **settings: str) -> dict:
    return {"account_id": account_id, "account_settings": dict(settings)}


def subscription(account_id: int, audience_id: int, name: str, action: str = "add", **settings):
    return {
        "type": "audience_subscription_request",
        "id": str(uuid.uuid4()),
        "timestamp_ms": int(time.time() * 1000),
        "firehose_version": "3.2.0",
        "account": account(account_id, **settings),
        "audience_id": audience_id,
        "audience_name": name,
        "action": action,
    }


def profile(
    external_id: str | None,
    changes: Iterable[tuple[int, str, str]],
    *,
    email=None,
    mpid=None,
    push_tokens: Iterable[str] = (),
) -> dict:
    """``changes``: (audience_id, audience_name, action) with action add/delete."""
    identities = []
    if external_id is not None:
        identities.append({"type": "customer", "encoding": "raw", "value": external_id})
    if email:
        identities.append({"type": "email", "encoding": "raw", "value": email})
    body = {
        "user_identities": identities,
        "device_identities": [
            {"type": "apple_push_notification_token", "encoding": "raw", "value": t}
            for t in push_tokens
        ],
        "audiences": [
            {"audience_id": a, "audience_name": n, "action": act} for a, n, act in changes
        ],
    }
    if mpid is not None:
        body["mpid"] = mpid
    return body


def membership(
    account_id: int,
    profiles: list[dict],
    *,
    timestamp_ms: int | None = None,
    message_id: str | None = None,
    **settings,
) -> dict:
    return {
        "type": "audience_membership_change_request",
        "id": message_id or str(uuid.uuid4()),
        "timestamp_ms": timestamp_ms if timestamp_ms is not None else int(time.time() * 1000),
        "firehose_version": "3.2.0",
        "account": account(account_id, **settings),
        "user_profiles": profiles,
    }


def post(client, message: Mapping, headers: Mapping[str, str]) -> dict:
    response = client.post("/firehose", json=message, headers=dict(headers))
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def pending_count(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return conn.execute(
            sa.select(sa.func.count())
            .select_from(outbox)
            .where(outbox.c.state == OutboxState.PENDING)
        ).scalar_one()


def journal_count(engine: sa.Engine) -> int:
    """Firehose messages accepted and not yet applied (the journal, in its own file on
    SQLite)."""
    with journal_engine(engine).connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(firehose_journal)).scalar_one()


def message_id_count(engine: sa.Engine) -> int:
    """Firehose message ids recorded (membership changes' with the journal, in its own file on
    SQLite)."""
    engines = {engine, journal_engine(engine)}
    total = 0
    for each in engines:
        with each.connect() as conn:
            total += conn.execute(
                sa.select(sa.func.count()).select_from(firehose_messages)
            ).scalar_one()
    return total


def dead_count(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return conn.execute(
            sa.select(sa.func.count()).select_from(outbox).where(outbox.c.state == OutboxState.DEAD)
        ).scalar_one()


def drain(sender, engine: sa.Engine, *, timeout_s: float = 30.0) -> None:
    """Run a sender until no user is pending (or fail after ``timeout_s``)."""
    deadline = time.monotonic() + timeout_s
    while pending_count(engine):
        if time.monotonic() > deadline:
            raise AssertionError(f"outbox not drained: {pending_count(engine)} pending")
        if not sender.run_once():
            time.sleep(0.01)
