"""Builders for Currents tests: Braze samples with fresh ids, Avro files, feed settings."""

from __future__ import annotations

import copy
import json
import typing as t
import uuid
from collections.abc import Iterable
from pathlib import Path

import fastavro
import sqlalchemy as sa

from audience_sync.store.schema import currents_batch_bodies, currents_batches, currents_events
from tests.conftest import FIXTURES

SAMPLES = FIXTURES / "braze-currents" / "sample-data"
AVRO_DIR = SAMPLES / "Avro"
HTTP_DIR = SAMPLES / "Custom HTTP"
CURRENTS_TOKEN = "test-currents-token"
FEEDS = {
    "ios": {"key": "ios-key", "secret": "ios-secret", "platform": "ios"},
    "android": {"key": "android-key", "secret": "android-secret", "platform": "android"},
    "web": {"key": "web-key", "secret": "web-secret", "platform": "web"},
    "unbound": {"key": "unbound-key", "secret": "unbound-secret", "platform": "unbound"},
}
FEED_SECRETS = {f["key"]: f["secret"] for f in FEEDS.values()}


def currents_settings(url: str, feeds: dict | None = None, **extra: t.Any) -> dict[str, t.Any]:
    """Settings overrides for ``make_settings``/``make_runtime`` pointing at a fake server."""
    values = {
        "currents__tokens": [CURRENTS_TOKEN],
        "currents__mparticle_url": url,
        "currents__allowed_mparticle_urls": ["http://127.0.0.1:"],
        "currents__feeds": FEEDS if feeds is None else feeds,
        "currents__probe_interval_s": 0.2,
        "delivery__backoff_base_s": 0.05,
        "delivery__backoff_cap_s": 0.2,
        "delivery__poll_interval_s": 0.02,
        "delivery__coalesce_s": 0,
    }
    values.update(extra)
    return values


def bearer() -> dict[str, str]:
    return {"Authorization": f"Bearer {CURRENTS_TOKEN}", "Braze-Currents-Version": "1"}


def http_samples() -> list[tuple[str, dict[str, t.Any]]]:
    """Every Custom HTTP sample: (event type, event)."""
    out = []
    for path in sorted(HTTP_DIR.rglob("*.json")):
        event = json.loads(path.read_text())
        out.append((event["event_type"], event))
    return out


def avro_samples() -> list[Path]:
    """Every Avro sample file (one record each; the file name is the event type)."""
    return sorted(AVRO_DIR.glob("*.avro"))


def http_event(
    event_type: str = "users.messages.email.Open",
    *,
    event_id: str | None = None,
    user: str | None = "user-1",
    time: float = 1_700_000_000,
    **properties: t.Any,
) -> dict[str, t.Any]:
    """A Custom HTTP event."""
    event: dict[str, t.Any] = {
        "event_type": event_type,
        "id": event_id or str(uuid.uuid4()),
        "time": time,
        "user": {"user_id": "639a35d192b0df004d06514c", "timezone": "UTC"},
        "properties": dict(properties),
    }
    if user is not None:
        event["user"]["external_user_id"] = user
    return event


def with_fresh_id(event: dict[str, t.Any]) -> dict[str, t.Any]:
    copied = copy.deepcopy(event)
    copied["id"] = str(uuid.uuid4())
    return copied


def write_avro(
    path: Path,
    schema: dict[str, t.Any],
    records: Iterable[dict[str, t.Any]],
    *,
    codec: str = "null",
) -> Path:
    """Write an Avro container file with ``schema`` as its writer schema."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as fh:
        fastavro.writer(fh, fastavro.parse_schema(schema), list(records), codec=codec)
    return path


def read_sample(path: Path) -> tuple[dict[str, t.Any], list[dict[str, t.Any]]]:
    """A sample's writer schema and records."""
    with path.open("rb") as fh:
        reader = fastavro.reader(fh)
        return reader.writer_schema, list(reader)


def copy_sample(
    src: Path,
    dst: Path,
    *,
    count: int = 1,
    codec: str = "null",
    users: Iterable[str] | None = None,
) -> list[str]:
    """Write ``count`` copies of a sample's record with fresh ids (and given users) to ``dst``;
    returns the ids in file order."""
    schema, records = read_sample(src)
    base = records[0]
    user_list = list(users) if users is not None else None
    out, ids = [], []
    for n in range(count):
        record = dict(base)
        record["id"] = str(uuid.uuid4())
        if user_list is not None and "external_user_id" in record:
            record["external_user_id"] = user_list[n % len(user_list)]
        ids.append(record["id"])
        out.append(record)
    write_avro(dst, schema, out, codec=codec)
    return ids


class Waiting(t.NamedTuple):
    """An accepted event not yet delivered: in a formed batch (``state`` ``batched``) or an
    event row (queued, held, dead)."""

    event_id: str
    feed: str | None
    external_user_id: str
    state: str
    reason: str | None
    event: dict[str, t.Any]


def waiting_events(engine: t.Any) -> list[Waiting]:
    """Every accepted, undelivered event (batched or a row), in queue order (a batch's events
    at its first position, in their order)."""
    found: list[tuple[int, int, Waiting]] = []
    with engine.connect() as conn:
        b = currents_batches.c
        d = currents_batch_bodies.c
        for row in conn.execute(
            sa.select(b.first_seq, b.feed, b.external_user_id, d.body)
            .join_from(currents_batches, currents_batch_bodies, d.first_seq == b.first_seq)
            .where(b.state == "pending")
        ):
            body = json.loads(bytes(row.body))
            for n, event in enumerate(body["events"]):
                found.append(
                    (
                        row.first_seq,
                        n,
                        Waiting(
                            event["data"]["source_message_id"],
                            row.feed,
                            row.external_user_id,
                            "batched",
                            None,
                            event,
                        ),
                    )
                )
        for row in conn.execute(sa.select(currents_events)):
            found.append(
                (
                    row.seq,
                    0,
                    Waiting(
                        row.event_id,
                        row.feed,
                        row.external_user_id,
                        row.state,
                        row.reason,
                        json.loads(row.event),
                    ),
                )
            )
    return [w for _, _, w in sorted(found, key=lambda f: (f[0], f[1]))]
