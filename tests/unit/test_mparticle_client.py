"""The mParticle client's pure parts: packing, outcomes, rate budget, URL guard (SPEC §6.4)."""

from __future__ import annotations

import json

import pytest

from audience_sync.mparticle.outcomes import Kind, classify, retry_after_s
from audience_sync.mparticle.ratelimit import BatchBudget
from audience_sync.mparticle.requests import pack


def batches(n, size=10):
    return [(f"b{i}", json.dumps({"i": i, "p": "x" * size}).encode()) for i in range(n)]


@pytest.mark.parametrize(
    ("count", "size", "expected"),
    [
        (1, 10, [1]),
        (100, 10, [100]),
        (101, 10, [100, 1]),
        (250, 10, [100, 100, 50]),
        (10, 60_000, [4, 4, 2]),
        (3, 140_000, [1, 1, 1]),
    ],
    ids=["one", "hundred", "hundred-one", "many", "by-bytes", "big"],
)
def test_pack_at_most_100_batches_and_under_256_kb(count, size, expected):
    requests = pack(batches(count, size))
    assert [len(r.batch_ids) for r in requests] == expected
    for r in requests:
        assert len(r.body) < 256 * 1024
        assert [b["i"] for b in json.loads(r.body)] == [int(i[1:]) for i in r.batch_ids]


@pytest.mark.parametrize(
    ("status", "headers", "body", "error", "kind"),
    [
        (202, {}, None, None, Kind.ACCEPTED),
        (200, {}, None, None, Kind.ACCEPTED),
        (400, {}, {"errors": [{"message": "bad batch"}]}, None, Kind.BAD_REQUEST),
        (413, {}, None, None, Kind.TOO_LARGE),
        (401, {}, None, None, Kind.AUTH),
        (403, {}, None, None, Kind.AUTH),
        (404, {}, None, None, Kind.NOT_FOUND),
        (429, {"retry-after": "7"}, None, None, Kind.RATE_LIMITED),
        (500, {}, None, None, Kind.TRANSIENT),
        (503, {}, None, None, Kind.TRANSIENT),
        (None, {}, None, "timeout", Kind.TRANSIENT),
        (None, {}, None, "connection_error", Kind.TRANSIENT),
    ],
    ids=["202", "200", "400", "413", "401", "403", "404", "429", "500", "503", "timeout", "drop"],
)
def test_classify(status, headers, body, error, kind):
    outcome = classify(status, headers, body, error=error, now=0.0)
    assert outcome.kind == kind
    if kind == Kind.BAD_REQUEST:
        assert outcome.message == "bad batch"
    if kind == Kind.RATE_LIMITED:
        assert outcome.retry_after_s == 7.0


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("3", 3.0),
        ("0.5", 0.5),
        ("", 1.0),
        ("soon", 1.0),
        ("-4", 0.0),
        ("999999", 3600.0),
        ("Thu, 01 Jan 1970 00:01:40 GMT", 40.0),
    ],
    ids=["int", "float", "missing", "junk", "negative", "capped", "http-date"],
)
def test_retry_after(header, expected):
    assert retry_after_s({"retry-after": header}, now=60.0) == expected


def test_budget_spreads_batches_per_key():
    budget = BatchBudget(270)
    assert budget.reserve("k", 100, now=0.0) == 0.0
    assert budget.reserve("k", 170, now=0.0) == 0.0
    assert budget.reserve("k", 27, now=0.0) == pytest.approx(0.1)
    assert budget.reserve("other", 270, now=0.0) == 0.0
    assert budget.reserve("k", 0, now=10.0) == 0.0


def test_budget_holds_a_key_after_429():
    budget = BatchBudget(270)
    budget.block("k", until=5.0)
    assert budget.reserve("k", 1, now=1.0) == pytest.approx(4.0)
    assert budget.reserve("other", 1, now=1.0) == 0.0
