"""Braze Currents Avro files (SPEC §6.2): object container files read with fastavro using each
file's own writer schema (codecs null, deflate and snappy), one event type per file.

The event type comes from the path segment ``event_type=<type>`` (Braze's storage layout) or,
for older layouts, from the schema's full name (``dataexport.S3.inner.users.messages.email.Open``
→ ``users.messages.email.Open``).
"""

from __future__ import annotations

import io
import typing as t
from collections.abc import Iterator
from pathlib import PurePath

import fastavro

EVENT_TYPE_SEGMENT = "event_type="


class AvroFileError(ValueError):
    """A file that is not a readable Avro container (corrupt, truncated, unknown codec)."""


def type_from_path(path: str) -> str | None:
    """``…/event_type=users.messages.email.Open/date=…/x.avro`` → the type, else None."""
    for part in PurePath(path).parts:
        if part.startswith(EVENT_TYPE_SEGMENT) and len(part) > len(EVENT_TYPE_SEGMENT):
            return part[len(EVENT_TYPE_SEGMENT) :]
    return None


def type_from_schema(schema: t.Any) -> str | None:
    """The Currents type named by a writer schema, or None."""
    if not isinstance(schema, dict):
        return None
    name = str(schema.get("name") or "")
    namespace = schema.get("namespace")
    full = f"{namespace}.{name}" if namespace and "." not in name else name
    parts = full.split(".")
    if "inner" in parts:
        parts = parts[len(parts) - parts[::-1].index("inner") :]
    elif "users" in parts:
        parts = parts[parts.index("users") :]
    return ".".join(parts) or None


def read_records(data: bytes, path: str) -> tuple[str, list[dict[str, t.Any]]]:
    """Decode a whole file; returns its event type and records.

    Raises:
        AvroFileError: not Avro, corrupt or truncated, or no event type to be found.
    """
    try:
        reader = fastavro.reader(io.BytesIO(data))
        event_type = type_from_path(path) or type_from_schema(reader.writer_schema)
        records = list(_records(reader))
    except AvroFileError:
        raise
    except Exception as exc:  # fastavro raises many types for damaged input
        raise AvroFileError(f"{type(exc).__name__}: {exc}") from exc
    if not event_type:
        raise AvroFileError("no event type in the path (event_type=…) nor in the schema name")
    return event_type, records


def _records(reader: t.Any) -> Iterator[dict[str, t.Any]]:
    for record in reader:
        if not isinstance(record, dict):
            raise AvroFileError("a record is not an Avro record")
        yield record
