"""Where Currents may be sent: the guard against SSRF on ``currents.mparticle_url`` (SPEC §2).

A base URL is allowed when it is https on ``mparticle.com`` or one of its subdomains, or when it
matches an entry of ``currents.allowed_mparticle_urls`` by scheme, host and port (an entry with
no port, such as ``http://127.0.0.1:``, allows any port of that host). URLs are compared parsed,
never as string prefixes, and a URL with user info (``https://x@evil/``) is refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import urlsplit

OFFICIAL_DOMAIN = "mparticle.com"


def _parts(url: str) -> tuple[str, str, int | None, bool]:
    parsed = urlsplit(url.strip())
    try:
        port = parsed.port
    except ValueError:
        port = -1
    has_userinfo = "@" in parsed.netloc
    return parsed.scheme.lower(), (parsed.hostname or "").lower(), port, has_userinfo


def url_problem(url: str, allowed: Sequence[str]) -> str | None:
    """None when ``url`` may be used as the Events API base URL, else why not."""
    scheme, host, port, userinfo = _parts(url)
    if userinfo:
        return "must not contain user info"
    if scheme not in ("http", "https") or not host:
        return "must be an http(s) URL with a host"
    if port == -1:
        return "has an invalid port"
    if scheme == "https" and (host == OFFICIAL_DOMAIN or host.endswith("." + OFFICIAL_DOMAIN)):
        return None
    for entry in allowed:
        a_scheme, a_host, a_port, a_userinfo = _parts(entry)
        if a_userinfo or not a_host:
            continue
        if a_scheme == scheme and a_host == host and (a_port in (None, -1) or a_port == port):
            return None
    return "not an https *.mparticle.com URL nor listed in currents.allowed_mparticle_urls"
