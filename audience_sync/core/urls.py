"""Outbound URL guard: which base URLs the engine may send to (SSRF, SPEC §3.4, §6.4).

Settings that name where requests go (``customRestEndpoint``, ``currents.mparticle_url``) are
compared with an allow-list as *parsed* URLs (scheme, host, port, path), never as string
prefixes: ``http://127.0.0.1:9@127.0.0.2:8080`` starts with ``http://127.0.0.1:`` but sends to
127.0.0.2. Anything a URL parser could read two ways is refused rather than interpreted:
userinfo, backslashes, whitespace and control characters, percent-encoding or non-ASCII in
the host, queries and fragments, trailing dots, IP addresses in other than dotted-quad form,
IPv6 zone ids and IPv4-mapped IPv6 literals. What passes is returned in one canonical form, and
that form is what the senders use, so what was checked is what is called.

Allow-list entries are parsed by the same rules, with one addition: an entry whose port is
left empty (``http://127.0.0.1:``) allows any port of that host. A port not written at all is
the scheme's default. An entry with a path allows that path and the paths below it.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass

SCHEMES = {"http": 80, "https": 443}

MPARTICLE_DOMAINS = ("mparticle.com",)
"""mParticle's Events API hosts (``s2s.mparticle.com``, pods ``s2s.us2.mparticle.com``, partner
feeds ``inbound.mparticle.com``): allowed over https without an allow-list entry."""

MAX_HOST_LENGTH = 253
"""Longest DNS name (RFC 1035), without the trailing dot."""

_SHAPE = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://(?P<authority>[^/]*)(?P<path>/.*)?")
_AUTHORITY = re.compile(r"(?P<host>\[[^\]]*\]|[^:\[\]]*)(?P<colon>:(?P<port>[0-9]*))?")
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_DOTTED_QUAD = re.compile(r"(?:0|[1-9][0-9]{0,2})(?:\.(?:0|[1-9][0-9]{0,2})){3}")
_PATH = re.compile(r"(?:/[A-Za-z0-9._~!$&'()*+,;=:@-]*)*")


class UnsafeUrlError(ValueError):
    """A URL the engine refuses to send to; ``str()`` says why, without repeating the URL."""


@dataclass(frozen=True, kw_only=True)
class Url:
    """A parsed base URL.

    Attributes:
        scheme: ``http`` or ``https``.
        host: lower-case DNS name (IDNA A-labels), dotted-quad IPv4, or IPv6 without brackets.
        port: the explicit or default port; ``None`` only in an allow-list entry ("any port").
        path: ``""`` or ``/...`` without a trailing slash.
    """

    scheme: str
    host: str
    port: int | None
    path: str = ""

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        port = "" if self.port in (None, SCHEMES[self.scheme]) else f":{self.port}"
        return f"{self.scheme}://{host}{port}{self.path}"

    def allows(self, url: Url) -> bool:
        """Whether this allow-list entry covers ``url``."""
        return (
            self.scheme == url.scheme
            and self.host == url.host
            and (self.port is None or self.port == url.port)
            and (not self.path or url.path == self.path or url.path.startswith(self.path + "/"))
        )


def parse_url(text: str) -> Url:
    """A base URL to send to, strictly parsed; raises :class:`UnsafeUrlError`."""
    return _parse(text, entry=False)


def parse_allowed(text: str) -> Url:
    """An allow-list entry (``http://127.0.0.1:`` allows every port); raises
    :class:`UnsafeUrlError`."""
    return _parse(text, entry=True)


def guard_url(
    text: str,
    allowed: Iterable[str],
    *,
    official_hosts: Iterable[str] = (),
    official_domains: Iterable[str] = (),
) -> str:
    """The canonical form of ``text`` if the engine may send to it; else :class:`UnsafeUrlError`.

    Args:
        text: the configured base URL.
        allowed: allow-list entries (``braze.allowed_custom_endpoints``,
            ``currents.allowed_mparticle_urls``); an entry that does not parse allows nothing.
        official_hosts: vendor hosts allowed over https on port 443, by exact name.
        official_domains: vendor domains whose subdomains are allowed over https on 443
            (``mparticle.com`` allows ``s2s.us2.mparticle.com``).
    """
    url = parse_url(text)
    if url.scheme == "https" and url.port == SCHEMES["https"]:
        if url.host in set(official_hosts):
            return str(url)
        if any(url.host.endswith("." + domain) for domain in official_domains):
            return str(url)
    for entry in allowed:
        try:
            if parse_allowed(entry).allows(url):
                return str(url)
        except UnsafeUrlError:
            continue
    raise UnsafeUrlError("not an official host and not in the allow-list")


def guard_mparticle_url(text: str, allowed: Iterable[str]) -> str:
    """The canonical form of ``currents.mparticle_url`` if Currents may be sent there (https on
    port 443 of a subdomain of :data:`MPARTICLE_DOMAINS`, or an entry of
    ``currents.allowed_mparticle_urls``); else :class:`UnsafeUrlError`. Settings validation and
    the sender ask this one rule."""
    return guard_url(text, allowed, official_domains=MPARTICLE_DOMAINS)


def _parse(text: str, *, entry: bool) -> Url:
    if not isinstance(text, str) or not text:
        raise UnsafeUrlError("empty")
    if not text.isascii():
        raise UnsafeUrlError("non-ASCII characters (write an IDN host in its xn-- form)")
    if any(c <= " " or c == "\x7f" for c in text):
        raise UnsafeUrlError("whitespace or control characters")
    if "\\" in text:
        raise UnsafeUrlError("backslash")
    if "?" in text or "#" in text:
        raise UnsafeUrlError("query or fragment")
    shape = _SHAPE.fullmatch(text)
    if shape is None:
        raise UnsafeUrlError("not an absolute URL")
    scheme = shape["scheme"].lower()
    if scheme not in SCHEMES:
        raise UnsafeUrlError("scheme must be http or https")
    authority = shape["authority"]
    if "@" in authority:
        raise UnsafeUrlError("user information before the host")
    if "%" in authority:
        raise UnsafeUrlError("percent-encoding in the host")
    parts = _AUTHORITY.fullmatch(authority)
    if parts is None:
        raise UnsafeUrlError("malformed host or port")
    host = _parse_host(parts["host"])
    port: int | None = SCHEMES[scheme]
    if parts["colon"]:
        digits = parts["port"]
        if not digits:
            if not entry:
                raise UnsafeUrlError("empty port")
            port = None
        elif len(digits) > 5 or not 0 < int(digits) <= 65535:
            raise UnsafeUrlError("port out of range")
        else:
            port = int(digits)
    path = (shape["path"] or "").rstrip("/")
    if not _PATH.fullmatch(path):
        raise UnsafeUrlError("characters in the path that must be percent-encoded")
    if any(segment in (".", "..") for segment in path.split("/")):
        raise UnsafeUrlError("dot segments in the path")
    return Url(scheme=scheme, host=host, port=port, path=path)


def _parse_host(raw: str) -> str:
    if not raw:
        raise UnsafeUrlError("no host")
    if raw.startswith("["):
        try:
            address = ipaddress.IPv6Address(raw[1:-1])
        except ValueError:
            raise UnsafeUrlError("malformed IPv6 literal") from None
        if address.ipv4_mapped is not None or address.sixtofour is not None:
            raise UnsafeUrlError("IPv6 literal that embeds an IPv4 address")
        if raw[1:-1].count(".") or address.teredo is not None:
            raise UnsafeUrlError("IPv6 literal that embeds an IPv4 address")
        return address.compressed
    host = raw.lower()
    if host.endswith("."):
        raise UnsafeUrlError("trailing dot in the host")
    labels = host.split(".")
    if all(label.isdigit() for label in labels):
        # Only the dotted quad: 127.1, 2130706433 and 0177.0.0.1 all reach 127.0.0.x somewhere.
        if not _DOTTED_QUAD.fullmatch(host) or any(int(label) > 255 for label in labels):
            raise UnsafeUrlError("an IPv4 address must be four decimal numbers")
        return host
    if len(host) > MAX_HOST_LENGTH:
        raise UnsafeUrlError("host name too long")
    for label in labels:
        if not _LABEL.fullmatch(label):
            raise UnsafeUrlError("host name with characters other than letters, digits, '-'")
        if label.startswith("xn--") and not _is_idna_a_label(label):
            raise UnsafeUrlError("host name with an invalid IDNA label")
        if label[2:4] == "--" and not label.startswith("xn--"):
            raise UnsafeUrlError("host name with a reserved '--' label")
    if labels[-1].isdigit() or labels[-1].startswith("0x"):
        raise UnsafeUrlError("host name ending in a number")
    return host


def _is_idna_a_label(label: str) -> bool:
    """Whether an ``xn--`` label decodes and re-encodes to itself (stdlib IDNA 2003)."""
    try:
        unicode = label.encode("ascii").decode("idna")
        return unicode != label and unicode.encode("idna").decode("ascii") == label
    except UnicodeError:
        return False
