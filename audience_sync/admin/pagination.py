"""Cursor pagination for every admin list: ``?limit=&cursor=`` in, ``next_cursor`` out.

A cursor is the key of the last row of the page, in URL-safe base64 JSON, tagged with the
list it belongs to so a cursor of one list is refused by another. Keyset pagination (not
offsets): a page is one indexed range scan, and rows added meanwhile never shift a page.
"""

from __future__ import annotations

import base64
import binascii
import json
import typing as t
from collections.abc import Callable, Sequence

import marshmallow as ma

from audience_sync.errors import InvalidPayloadError

DEFAULT_LIMIT = 100
MAX_LIMIT = 500


class PageArgsSchema(ma.Schema):
    """``limit`` and ``cursor`` query arguments shared by every list route."""

    limit = ma.fields.Integer(
        load_default=DEFAULT_LIMIT,
        validate=ma.validate.Range(min=1, max=MAX_LIMIT),
        metadata={"description": f"Rows per page (1 to {MAX_LIMIT})."},
    )
    cursor = ma.fields.String(
        load_default=None,
        metadata={"description": "The `next_cursor` of the previous page; omit for the first."},
    )


def encode(kind: str, key: Sequence[t.Any]) -> str:
    """The cursor after ``key`` in list ``kind``."""
    raw = json.dumps([kind, list(key)], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode(kind: str, cursor: str | None) -> list[t.Any] | None:
    """The key a cursor points after, or ``None`` for the first page; 400 if it is not ours."""
    if cursor is None:
        return None
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        tag, key = json.loads(raw)
    except (binascii.Error, ValueError, TypeError):
        key = tag = None
    if tag != kind or not isinstance(key, list):
        raise InvalidPayloadError(
            "invalid cursor", {"cursor": ["Not a cursor of this list; use next_cursor."]}
        )
    return key


def page(
    kind: str, rows: Sequence[t.Any], limit: int, key: Callable[[t.Any], Sequence[t.Any]]
) -> dict[str, t.Any]:
    """``{"items", "next_cursor"}`` from up to ``limit + 1`` fetched rows."""
    items = list(rows[:limit])
    more = len(rows) > limit
    return {"items": items, "next_cursor": encode(kind, key(items[-1])) if more else None}
