"""build_requests: limits, order, byte accounting, oversize objects (pure)."""

from __future__ import annotations

import itertools
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from audience_sync.braze.requests import (
    ObjectTooLargeError,
    PreparedRequest,
    build_requests,
    encode_object,
)


def users(n: int, pad: int = 0) -> list[dict]:
    return [{"external_id": f"u{i}", "SegmentMembership": "x" * pad} for i in range(n)]


def decoded(request: PreparedRequest) -> list[dict]:
    return json.loads(request.body)["attributes"]


def test_empty_input_gives_no_request():
    assert build_requests([], max_objects=75, max_bytes=4_000_000) == []


def test_body_is_compact_utf8_json_in_order():
    objs = [{"external_id": "é-1", "In Ibiza Dreamers": True}, {"external_id": "u2", "x": None}]
    (request,) = build_requests(objs, max_objects=75, max_bytes=4_000_000)
    assert (
        request.body
        == (
            '{"attributes":[{"external_id":"é-1","In Ibiza Dreamers":true},'
            '{"external_id":"u2","x":null}]}'
        ).encode()
    )
    assert request.indices == (0, 1)
    assert request.count == 2


@pytest.mark.parametrize(
    ("n", "max_objects", "sizes"),
    [
        (1, 75, [1]),
        (75, 75, [75]),
        (76, 75, [75, 1]),
        (200, 75, [75, 75, 50]),
        (10, 3, [3, 3, 3, 1]),
    ],
    ids=["one", "exactly-full", "one-over", "many", "small-limit"],
)
def test_requests_are_filled_to_max_objects(n, max_objects, sizes):
    requests = build_requests(users(n), max_objects=max_objects, max_bytes=4_000_000)
    assert [r.count for r in requests] == sizes
    assert [i for r in requests for i in r.indices] == list(range(n))
    for r in requests:
        assert [o["external_id"] for o in decoded(r)] == [f"u{i}" for i in r.indices]


def test_bytes_stay_strictly_under_max_and_requests_fill_up_to_it():
    objs = users(10, pad=100)
    one = len(encode_object(objs[0]))
    envelope = len(b'{"attributes":[]}')
    # Room for exactly 3 objects (plus 2 commas) is envelope + 3*one + 2; a limit equal to
    # that size must hold only 2 (strictly under), one byte more must hold 3.
    exact = envelope + 3 * one + 2
    at_limit = build_requests(objs, max_objects=75, max_bytes=exact)
    assert [r.count for r in at_limit] == [2, 2, 2, 2, 2]
    above = build_requests(objs, max_objects=75, max_bytes=exact + 1)
    assert [r.count for r in above][:3] == [3, 3, 3]
    for r in at_limit + above:
        assert len(r.body) < max(exact, exact + 1)
    assert all(len(r.body) == exact for r in above[:3])


def test_object_that_alone_reaches_max_bytes_raises_naming_its_index():
    objs = users(3)
    objs[1]["big"] = "y" * 1000
    with pytest.raises(ObjectTooLargeError) as info:
        build_requests(objs, max_objects=75, max_bytes=500)
    assert info.value.index == 1
    assert isinstance(info.value, ValueError)
    assert "index 1" in str(info.value)


def test_object_exactly_one_byte_under_fits():
    obj = {"external_id": "u0"}
    size = len(b'{"attributes":[]}') + len(encode_object(obj))
    assert build_requests([obj], max_objects=1, max_bytes=size + 1)[0].body.__len__() == size
    with pytest.raises(ObjectTooLargeError):
        build_requests([obj], max_objects=1, max_bytes=size)


@pytest.mark.parametrize(("max_objects", "max_bytes"), [(0, 1000), (75, 10)])
def test_invalid_limits_raise(max_objects, max_bytes):
    with pytest.raises(ValueError):
        build_requests(users(1), max_objects=max_objects, max_bytes=max_bytes)


def test_realistic_load_fills_every_request_but_the_last():
    objs = [
        {
            "external_id": f"user-{i:08d}",
            "SegmentMembership": "'11034','11036'",
            "SegmentMembershipArray": {"add": ["11034"], "remove": ["11036"]},
        }
        for i in range(10_000)
    ]
    requests = build_requests(objs, max_objects=75, max_bytes=4_000_000)
    assert all(r.count == 75 for r in requests[:-1])
    assert sum(r.count for r in requests) == 10_000


_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**6), 10**6),
    st.text(max_size=40),
    st.lists(st.text(max_size=8), max_size=5),
)
_objects = st.lists(
    st.dictionaries(st.text(min_size=1, max_size=10), _values, max_size=5).map(
        lambda d: {"external_id": "id", **d}
    ),
    max_size=60,
)


@settings(max_examples=200, deadline=None)
@given(objs=_objects, max_objects=st.integers(1, 10), slack=st.integers(0, 400))
def test_property_every_object_once_in_order_and_within_limits(objs, max_objects, slack):
    biggest = max((len(encode_object(o)) for o in objs), default=0)
    max_bytes = len(b'{"attributes":[]}') + biggest + 1 + slack
    requests = build_requests(objs, max_objects=max_objects, max_bytes=max_bytes)
    assert [i for r in requests for i in r.indices] == list(range(len(objs)))
    for r in requests:
        assert 1 <= r.count <= max_objects
        assert len(r.body) < max_bytes
        assert decoded(r) == [objs[i] for i in r.indices]
    # Greedy fill: the first object of each following request would not have fitted.
    for current, following in itertools.pairwise(requests):
        nxt = len(encode_object(objs[following.indices[0]]))
        assert current.count == max_objects or len(current.body) + 1 + nxt >= max_bytes
