"""Pooled HTTP for the vendor clients (Braze and mParticle), on ``requests``.

One :class:`Transport` per sender pool: one ``Session`` whose adapter keeps as many keep-alive
connections per host as the pool has senders, fixed timeouts, bodies passed as ready bytes
(serialised once by the caller), no automatic retry (a resend is the sender's durable decision),
and no exception for a failed call: every call returns an :class:`HttpResponse`. In dry run the
requests are appended to a JSON-lines file and answered with a configured status instead.

Per call, only what it needs: the request for each (URL, headers, auth) is prepared once by
``requests`` (URL parsing, header merging, Basic auth) and copied with the new body, then sent
through the session's pooled adapter, skipping ``Session.send``'s cookie jar, hooks and
redirect look-ahead. At Braze's rates the client's CPU per request was as much as the engine's
work for the 75 users in it.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import typing as t
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from urllib.request import getproxies

import orjson
import requests
from requests.adapters import HTTPAdapter

logger = logging.getLogger(__name__)

USER_AGENT = "audience-sync/0.1"


@dataclass(frozen=True, kw_only=True)
class HttpResponse:
    """What came back from one call.

    Attributes:
        status: HTTP status, or None when no answer came.
        headers: response headers, lower-case names.
        content: the raw body.
        elapsed_s: wall time of the call.
        error: None when an answer came; else ``timeout``, ``connection_error`` or
            ``invalid_url``.
    """

    status: int | None
    headers: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    content: bytes = b""
    elapsed_s: float = 0.0
    error: str | None = None

    def json(self) -> t.Any:
        """The body parsed as JSON, or None (empty or not JSON)."""
        if not self.content:
            return None
        try:
            return orjson.loads(self.content)
        except orjson.JSONDecodeError:
            return None


def _read_environment_once(session: requests.Session) -> None:
    """Take proxy and CA settings from the environment once, not per request (requests re-reads
    it on every call with ``trust_env``, and may swap our Authorization for a ~/.netrc entry)."""
    if getproxies():
        return
    session.trust_env = False
    bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
    if bundle:
        session.verify = bundle


class Transport:
    """Pooled POSTs of ready bodies.

    Args:
        name: the vendor (``braze``, ``mparticle``), for logs and the dry-run file.
        timeout_s: connect and read timeout per call.
        pool_maxsize: keep-alive connections per host (the number of senders sharing it).
        dry_run_path: when set, record requests there instead of sending them.
        dry_run_status: the status a dry-run call answers with.
        dry_run_body: the body a dry-run call answers with.
    """

    def __init__(
        self,
        *,
        name: str,
        timeout_s: float = 30.0,
        pool_maxsize: int = 4,
        dry_run_path: str | None = None,
        dry_run_status: int = 202,
        dry_run_body: bytes = b"",
        session: requests.Session | None = None,
    ) -> None:
        self.name = name
        self.timeout_s = timeout_s
        self.dry_run_path = Path(dry_run_path) if dry_run_path else None
        self.dry_run_status = dry_run_status
        self.dry_run_body = dry_run_body
        self._lock = threading.Lock()
        self._owns_session = session is None
        if session is None:
            session = requests.Session()
            adapter = HTTPAdapter(pool_connections=4, pool_maxsize=pool_maxsize, max_retries=0)
            session.mount("https://", adapter)
            session.mount("http://", adapter)
            _read_environment_once(session)
        self.session = session
        self._prepared: dict[t.Hashable, requests.PreparedRequest] = {}

    def close(self) -> None:
        """Close pooled connections (of a session this transport made)."""
        if self._owns_session:
            self.session.close()

    def post(
        self,
        url: str,
        body: bytes,
        *,
        headers: Mapping[str, str],
        auth: tuple[str, str] | None = None,
    ) -> HttpResponse:
        """POST ``body`` (ready JSON bytes) to ``url``; never raises for the network."""
        if self.dry_run_path is not None:
            return self._record(url, body)
        started = time.perf_counter()
        try:
            request = self._prepare(url, headers, auth).copy()
            request.body = body
            request.headers["Content-Length"] = str(len(body))
            response = self._send(request)
            content = response.content  # read here: a drop mid-body is a connection error too
        except requests.Timeout:
            return self._failed("timeout", started)
        except (
            requests.exceptions.InvalidURL,
            requests.exceptions.MissingSchema,
            requests.exceptions.InvalidSchema,
        ):
            return self._failed("invalid_url", started)
        except requests.RequestException as exc:
            return self._failed("connection_error", started, exc)
        return HttpResponse(
            status=response.status_code,
            headers=MappingProxyType({k.lower(): v for k, v in response.headers.items()}),
            content=content,
            elapsed_s=time.perf_counter() - started,
        )

    def _prepare(
        self, url: str, headers: Mapping[str, str], auth: tuple[str, str] | None
    ) -> requests.PreparedRequest:
        """The request to ``url`` with these headers and auth, prepared once."""
        key = (url, tuple(headers.items()), auth)
        prepared = self._prepared.get(key)
        if prepared is None:
            all_headers = {
                "Content-Type": "application/json",
                "Accept": "application/json",
                "User-Agent": USER_AGENT,
                **headers,
            }
            request = requests.Request("POST", url, headers=all_headers, data=b"", auth=auth)
            prepared = self.session.prepare_request(request)
            with self._lock:
                if len(self._prepared) > 1024:  # keys come and go with settings: stay bounded
                    self._prepared.clear()
                self._prepared[key] = prepared
        return prepared

    def _send(self, request: requests.PreparedRequest) -> requests.Response:
        """Send through the session's adapter, unless proxies come from the environment: then
        the session matches ``no_proxy`` per URL."""
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

    def _failed(self, error: str, started: float, exc: BaseException | None = None) -> HttpResponse:
        logger.debug(
            "%s request got no answer: %s",
            self.name,
            error,
            extra={
                "action": "http_no_answer",
                "vendor": self.name,
                "reason": error,
                "exc_type": type(exc).__name__ if exc else None,
            },
        )
        return HttpResponse(status=None, elapsed_s=time.perf_counter() - started, error=error)

    def _record(self, url: str, body: bytes) -> HttpResponse:
        started = time.perf_counter()
        line = orjson.dumps({"ts": time.time(), "url": url, "body": orjson.Fragment(body)})
        path = self.dry_run_path
        assert path is not None
        with self._lock:
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("ab") as fh:
                fh.write(line + b"\n")
        return HttpResponse(
            status=self.dry_run_status,
            headers=MappingProxyType({"content-type": "application/json"}),
            content=self.dry_run_body,
            elapsed_s=time.perf_counter() - started,
        )
