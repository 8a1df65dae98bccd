"""The Braze REST adapter: pooled keep-alive HTTP, dry run, and no exception from ``requests``.

Every call returns a :class:`TrackResponse`; a connection error, timeout or dropped connection
is ``status=None`` with ``error`` saying which, never a ``requests.*`` exception. The client does
not retry (urllib3 retries are off): the sender retries durably through the outbox, and an
automatic resend of a request Braze may already have applied would break SPEC §5.4.

The REST key only ever goes into the ``Authorization`` header; logs show its fingerprint.

Per request, only what the call needs: the request for each (URL, key) is prepared once by
``requests`` (URL parsing, header merging) and copied with the new body, then sent through the
session's pooled adapter; JSON is parsed with orjson. At Braze's rates the client's CPU per
request was as much as the engine's work for the 75 users in it.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import typing as t
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from urllib.request import getproxies

import orjson
import requests
from requests.adapters import HTTPAdapter

from audience_sync.braze.keys import fingerprint

log = logging.getLogger(__name__)

TRACK_PATH = "/users/track"
EXPORT_IDS_PATH = "/users/export/ids"
USER_AGENT = "audience-sync/0.1"
DRY_RUN_STATUS = 201


def _read_environment_once(session: requests.Session) -> None:
    """Take proxy and CA settings from the environment now rather than on every request.

    With ``trust_env`` on, requests re-reads the whole environment per request (~0.3 ms, a third
    of the client's cost at Braze's request rates) and may replace our ``Authorization`` header
    with a ``~/.netrc`` entry. Without proxy variables there is nothing to re-read, so it goes
    off; with them it stays on, since ``no_proxy`` is matched per URL.
    """
    if getproxies():
        return
    session.trust_env = False
    bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
    if bundle:
        session.verify = bundle


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
        self._owns_session = session is None
        if session is None:
            session = requests.Session()
            # max_retries=0: urllib3 must not resend a request Braze may have applied.
            adapter = HTTPAdapter(pool_connections=4, pool_maxsize=pool_maxsize, max_retries=0)
            session.mount("https://", adapter)
            session.mount("http://", adapter)
            _read_environment_once(session)
        self.session = session
        self._prepared: dict[tuple[str, str], requests.PreparedRequest] = {}

    def close(self) -> None:
        """Close pooled connections (only of a session this client created)."""
        if self._owns_session:
            self.session.close()

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

    def _prepare(self, url: str, api_key: str) -> requests.PreparedRequest:
        """The request to ``url`` with ``api_key``, prepared once (headers, parsed URL)."""
        key = (url, api_key)
        prepared = self._prepared.get(key)
        if prepared is None:
            headers = {
                "Authorization": f"Bearer {api_key}",
                "Content-Type": "application/json",
                "Accept": "application/json",
                "User-Agent": USER_AGENT,
            }
            request = requests.Request("POST", url, headers=headers, data=b"")
            prepared = self.session.prepare_request(request)
            if len(self._prepared) > 1024:  # keys come and go with connections: stay bounded
                self._prepared.clear()
            self._prepared[key] = prepared
        return prepared

    def _send(self, request: requests.PreparedRequest) -> requests.Response:
        """Send through the session's adapter, skipping ``Session.send``'s per-request work
        that a Braze call does not need (cookie jar, hooks, the redirect look-ahead), unless
        proxies come from the environment: then the session matches ``no_proxy`` per URL."""
        session = self.session
        if session.trust_env:
            return session.send(request, timeout=self.timeout_s, allow_redirects=False)
        return session.get_adapter(request.url or "").send(
            request,
            stream=False,
            timeout=self.timeout_s,
            verify=session.verify,
            cert=session.cert,
            proxies=session.proxies,
        )

    def _post(self, endpoint: str, path: str, api_key: str, body: bytes) -> TrackResponse:
        url = endpoint.rstrip("/") + path
        started = time.perf_counter()
        try:
            request = self._prepare(url, api_key).copy()
            request.body = body
            request.headers["Content-Length"] = str(len(body))
            response = self._send(request)
            content = response.content  # read fully here: a drop mid-body raises here too
        except requests.Timeout:
            return self._failed("timeout", url, api_key, started)
        except (
            requests.exceptions.InvalidURL,
            requests.exceptions.MissingSchema,
            requests.exceptions.InvalidSchema,
        ) as exc:
            return self._failed("invalid_url", url, api_key, started, exc)
        except requests.RequestException as exc:
            return self._failed("connection_error", url, api_key, started, exc)
        elapsed = time.perf_counter() - started
        parsed: t.Any = None
        if content:
            try:
                parsed = orjson.loads(content)
            except orjson.JSONDecodeError:
                parsed = None
        return TrackResponse(
            status=response.status_code,
            headers=MappingProxyType({k.lower(): v for k, v in response.headers.items()}),
            body=parsed,
            elapsed_s=elapsed,
        )

    def _failed(
        self,
        error: str,
        url: str,
        api_key: str,
        started: float,
        exc: BaseException | None = None,
    ) -> TrackResponse:
        elapsed = time.perf_counter() - started
        log.debug(
            "braze request got no answer",
            extra={
                "action": "braze_no_answer",
                "reason": error,
                "url": url,
                "key": fingerprint(api_key),
                "exc_type": type(exc).__name__ if exc else None,
            },
        )
        return TrackResponse(status=None, elapsed_s=elapsed, error=error)

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
