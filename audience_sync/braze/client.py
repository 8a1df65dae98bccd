"""The Braze REST adapter: pooled keep-alive HTTP, dry run, and no exception from ``requests``.

Every call returns a :class:`TrackResponse`; a connection error, timeout or dropped connection
is ``status=None`` with ``error`` saying which, never a ``requests.*`` exception. The client does
not retry (urllib3 retries are off): the sender retries durably through the outbox, and an
automatic resend of a request Braze may already have applied would break SPEC §5.4.

The REST key only ever goes into the ``Authorization`` header. The HTTP itself (pooling, the
request prepared once per URL and key, no per-call work the call does not need) is the shared
:class:`~audience_sync.transport.Transport`; answers are parsed with orjson.
"""

from __future__ import annotations

import threading
import time
import typing as t
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

import orjson
import requests

from audience_sync.transport import Transport

TRACK_PATH = "/users/track"
EXPORT_IDS_PATH = "/users/export/ids"
DRY_RUN_STATUS = 201


@dataclass(frozen=True, kw_only=True)
class TrackResponse:
    """What came back from one Braze call.

    Attributes:
        status: HTTP status, or ``None`` when no answer came.
        headers: response headers with lower-case names.
        body: the parsed JSON body, or ``None`` (empty or not JSON).
        elapsed_s: wall time of the call.
        error: ``None`` when an answer came; else ``timeout``, ``connection_error`` or
            ``invalid_url``.
    """

    status: int | None
    headers: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    body: t.Any = None
    elapsed_s: float = 0.0
    error: str | None = None


class BrazeClient:
    """Send requests to a Braze REST endpoint (``https://rest.iad-01.braze.com`` or a custom one).

    Args:
        timeout_s: connect and read timeout per request (``braze.timeout_s``).
        pool_maxsize: keep-alive connections kept per host (match the sender's concurrency).
        dry_run: append requests to ``dry_run_path`` and answer 201 success instead of sending.
        dry_run_path: JSON-lines file for the dry run (``braze.dry_run_path``).
        session: a ready session (tests); otherwise one with a pooled adapter is made.

    Raises:
        ValueError: ``dry_run`` without ``dry_run_path``.
    """

    def __init__(
        self,
        *,
        timeout_s: float = 30,
        pool_maxsize: int = 16,
        dry_run: bool = False,
        dry_run_path: str | None = None,
        session: requests.Session | None = None,
    ) -> None:
        if dry_run and not dry_run_path:
            raise ValueError("dry_run needs a dry_run_path")
        self.timeout_s = timeout_s
        self.dry_run = dry_run
        self.dry_run_path = Path(dry_run_path) if dry_run_path else None
        self._dry_run_lock = threading.Lock()
        self.transport = Transport(
            name="braze", timeout_s=timeout_s, pool_maxsize=pool_maxsize, session=session
        )
        self.session: requests.Session = self.transport.session

    def close(self) -> None:
        """Close pooled connections (only of a session this client created)."""
        self.transport.close()

    def __enter__(self) -> BrazeClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def track(self, endpoint: str, api_key: str, body: bytes) -> TrackResponse:
        """``POST {endpoint}/users/track`` with a ready body (see ``build_requests``).

        Args:
            endpoint: REST base URL, with or without a trailing slash.
            api_key: the workspace REST API key (sent only as ``Authorization: Bearer``).
            body: ``b'{"attributes":[...]}'``.

        Returns:
            The response; in dry run a synthetic ``201 {"message": "success"}``.
        """
        if self.dry_run:
            return self._record_dry_run(endpoint, body)
        return self._post(endpoint, TRACK_PATH, api_key, body)

    def export_ids(
        self,
        endpoint: str,
        api_key: str,
        external_ids: Sequence[str],
        fields: Sequence[str],
    ) -> TrackResponse:
        """``POST {endpoint}/users/export/ids`` for the audit (at most 50 ids per call at Braze).

        In dry run nothing is sent and the answer is ``200 {"message": "success", "users": [],
        "dry_run": true}``, so the audit can tell it observed nothing.
        """
        if self.dry_run:
            return TrackResponse(
                status=200,
                body={"message": "success", "users": [], "dry_run": True},
            )
        payload = {"external_ids": list(external_ids), "fields_to_export": list(fields)}
        body = orjson.dumps(payload)
        return self._post(endpoint, EXPORT_IDS_PATH, api_key, body)

    def _post(self, endpoint: str, path: str, api_key: str, body: bytes) -> TrackResponse:
        response = self.transport.post(
            endpoint.rstrip("/") + path, body, headers={"Authorization": f"Bearer {api_key}"}
        )
        return TrackResponse(
            status=response.status,
            headers=response.headers,
            body=response.json(),
            elapsed_s=response.elapsed_s,
            error=response.error,
        )

    def _record_dry_run(self, endpoint: str, body: bytes) -> TrackResponse:
        started = time.perf_counter()
        line = orjson.dumps(
            {"ts": time.time(), "endpoint": endpoint, "body": orjson.Fragment(body)}
        ).decode()
        path = self.dry_run_path
        if path is None:  # guarded in __init__
            raise RuntimeError("dry run without a dry_run_path")
        with self._dry_run_lock:
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("a", encoding="utf-8") as fh:
                fh.write(line + "\n")
        return TrackResponse(
            status=DRY_RUN_STATUS,
            headers=MappingProxyType({"content-type": "application/json"}),
            body={"message": "success"},
            elapsed_s=time.perf_counter() - started,
        )
