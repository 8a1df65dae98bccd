"""The outbound URL guard (core/urls.py): parsed URLs against an allow-list, from tables."""

from __future__ import annotations

import pytest

from audience_sync.core.urls import (
    UnsafeUrlError,
    guard_mparticle_url,
    guard_url,
    parse_allowed,
    parse_url,
)

LOCAL = ("http://127.0.0.1:",)
BRAZE = frozenset({"rest.iad-01.braze.com", "rest.fra-01.braze.eu"})


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("http://127.0.0.1:8080", "http://127.0.0.1:8080"),
        ("HTTP://127.0.0.1:8080/", "http://127.0.0.1:8080"),
        ("https://REST.iad-01.Braze.com", "https://rest.iad-01.braze.com"),
        ("https://rest.iad-01.braze.com:443", "https://rest.iad-01.braze.com"),
        ("http://example.com:80/", "http://example.com"),
        ("https://inbound.mparticle.com/s2s/", "https://inbound.mparticle.com/s2s"),
        ("http://[::1]:9000", "http://[::1]:9000"),
        ("http://[0:0:0:0:0:0:0:1]:9000", "http://[::1]:9000"),
        ("https://xn--bcher-kva.example", "https://xn--bcher-kva.example"),
        ("http://127.0.0.1:08080", "http://127.0.0.1:8080"),
    ],
    ids=[
        "ipv4-port",
        "scheme-case-and-slash",
        "host-case",
        "default-port-dropped",
        "http-default-port",
        "path-kept",
        "ipv6",
        "ipv6-compressed",
        "idna-a-label",
        "port-leading-zero",
    ],
)
def test_valid_urls_come_out_canonical(text, canonical):
    assert str(parse_url(text)) == canonical


@pytest.mark.parametrize(
    "text",
    [
        "",
        "127.0.0.1:8080",
        "ftp://127.0.0.1",
        "file:///etc/passwd",
        "http://127.0.0.1:9@127.0.0.2:8080",
        "http://user:pass@127.0.0.1:8080",
        "http://@127.0.0.1",
        "http://127.0.0.1:8080\\@127.0.0.2:8080",
        "http:\\\\127.0.0.2",
        "http://127.0.0.1 @127.0.0.2",
        "http://127.0.0.1\t.example",
        "http://127.0.0.1\n",
        "http://127.0.0.1:8080#@127.0.0.2",
        "http://127.0.0.1:8080?@127.0.0.2",
        "http://%31%32%37.0.0.2:8080",
        "http://127.0.0.2%2f@127.0.0.1",
        "http://ex%61mple.com",
        "http://127.0.0.2.:8080",
        "https://rest.iad-01.braze.com.",
        "http://bücher.example",
        "http://\uff11\uff12\uff17.0.0.2",
        "https://rest.iad-01.braze.com\u200b",
        "http://xn--zz.example",
        "http://127.2:8080",
        "http://2130706434:8080",
        "http://0x7f.0.0.2:8080",
        "http://0x7f000002:8080",
        "http://0177.0.0.2:8080",
        "http://127.0.0.256",
        "http://[::ffff:127.0.0.2]:8080",
        "http://[::127.0.0.2]:8080",
        "http://[2002:7f00:2::]:8080",
        "http://[fe80::1%25eth0]:8080",
        "http://[::1:8080",
        "http://[not-ipv6]:8080",
        "http://127.0.0.1:",
        "http://127.0.0.1:0",
        "http://127.0.0.1:65536",
        "http://127.0.0.1:123456",
        "http://127.0.0.1:80:80",
        "http://-bad-.example",
        "http://a_b.example",
        "http://",
        "http:///path",
        "http://127.0.0.1/../admin",
        "http://127.0.0.1/a b",
    ],
    ids=lambda text: repr(text)[:40],
)
def test_ambiguous_or_tricky_urls_are_refused(text):
    with pytest.raises(UnsafeUrlError):
        parse_url(text)


@pytest.mark.parametrize(
    ("url", "allowed", "verdict"),
    [
        ("http://127.0.0.1:8080", LOCAL, True),
        ("HTTP://127.0.0.1:8080", LOCAL, True),
        ("http://127.0.0.2:8080", LOCAL, False),
        ("https://127.0.0.1:8080", LOCAL, False),
        ("http://127.0.0.1:9@127.0.0.2:8080", LOCAL, False),
        ("http://127.0.0.1.evil.example:8080", LOCAL, False),
        ("http://127.0.0.1:8080", ("http://127.0.0.1:8080",), True),
        ("http://127.0.0.1:8081", ("http://127.0.0.1:8080",), False),
        ("http://127.0.0.1", ("http://127.0.0.1",), True),
        ("http://127.0.0.1:8080", ("http://127.0.0.1",), False),
        ("http://127.0.0.1:80", ("http://127.0.0.1/",), True),
        ("https://inbound.mparticle.com/s2s", ("https://inbound.mparticle.com/s2s",), True),
        ("https://inbound.mparticle.com/s2s/v2", ("https://inbound.mparticle.com/s2s",), True),
        ("https://inbound.mparticle.com/s2sx", ("https://inbound.mparticle.com/s2s",), False),
        ("https://inbound.mparticle.com", ("https://inbound.mparticle.com/s2s",), False),
        ("http://[::1]:9", ("http://[::1]:",), True),
        ("http://[0::1]:9", ("http://[::1]:",), True),
        ("http://localhost:9", LOCAL, False),
        ("http://127.0.0.1:8080", ("http://user@127.0.0.1:",), False),
        ("http://127.0.0.1:8080", ("127.0.0.1",), False),
        ("https://rest.iad-01.braze.com", (), True),
        ("https://REST.IAD-01.BRAZE.COM:443/", (), True),
        ("http://rest.iad-01.braze.com", (), False),
        ("https://rest.iad-01.braze.com:8443", (), False),
        ("https://rest.iad-99.braze.com", (), False),
        ("https://rest.iad-01.braze.com.", (), False),
        ("https://rest.iad-01.braze.com.evil.example", (), False),
        ("https://evil.example/rest.iad-01.braze.com", (), False),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_guard_compares_parsed_urls(url, allowed, verdict):
    if verdict:
        assert guard_url(url, allowed, official_hosts=BRAZE) == str(parse_url(url))
    else:
        with pytest.raises(UnsafeUrlError):
            guard_url(url, allowed, official_hosts=BRAZE)


@pytest.mark.parametrize(
    ("url", "allowed", "verdict"),
    [
        ("https://s2s.mparticle.com", (), True),
        ("https://s2s.us2.mparticle.com", (), True),
        ("https://s2s.eu1.mparticle.com/", (), True),
        ("https://inbound.mparticle.com/s2s", (), True),
        ("https://S2S.MParticle.com:443", (), True),
        ("https://s2s.xn--bcher-kva.mparticle.com", (), True),
        ("https://mparticle.com", (), False),
        ("http://s2s.mparticle.com", (), False),
        ("http://s2s.mparticle.com:443", (), False),
        ("https://s2s.mparticle.com:8443", (), False),
        ("ftp://s2s.mparticle.com", (), False),
        ("https://x@s2s.mparticle.com", (), False),
        ("https://user:pw@s2s.mparticle.com", (), False),
        ("https://s2s.mparticle.com@evil.io", (), False),
        ("https://s2s.mparticle.com.evil.example", (), False),
        ("https://mparticle.com.evil.io", (), False),
        ("https://s2s.mparticle.com.", (), False),
        ("https://evilmparticle.com", (), False),
        ("https://evil-mparticle.com", (), False),
        ("https://s2s.evil-mparticle.com", (), False),
        ("https://xn--mpartcle-xhh.com", (), False),
        ("https://s2s.mpart\u0456cle.com", (), False),
        ("https://s2s.xn--zz.mparticle.com", (), False),
        ("https://evil.io/s2s.mparticle.com", (), False),
        ("http://127.0.0.1:8099", LOCAL, True),
        ("http://127.0.0.1:8099", ("http://127.0.0.1:8099",), True),
        ("http://127.0.0.1:8099", ("http://127.0.0.1:9000",), False),
        ("http://127.0.0.1:8099", (), False),
        ("https://127.0.0.1:8099", LOCAL, False),
        ("http://127.0.0.1.evil:80", LOCAL, False),
        ("http://x@127.0.0.1:80", LOCAL, False),
        ("http://127.0.0.1:99999", LOCAL, False),
        ("http://127.0.0.1:8099", ("http://user@127.0.0.1:",), False),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_mparticle_url_official_domain_or_allow_list(url, allowed, verdict):
    """``currents.mparticle_url`` (SPEC §2): https *.mparticle.com on 443, or an allowed URL."""
    if verdict:
        assert guard_mparticle_url(url, allowed) == str(parse_url(url))
    else:
        with pytest.raises(UnsafeUrlError):
            guard_mparticle_url(url, allowed)


@pytest.mark.parametrize(
    ("entry", "port"),
    [("http://127.0.0.1:", None), ("http://127.0.0.1", 80), ("https://h.example:8443", 8443)],
    ids=["any-port", "default-port", "explicit-port"],
)
def test_allow_list_entries_parse_by_the_same_rules(entry, port):
    assert parse_allowed(entry).port == port


def test_error_message_does_not_repeat_the_url():
    with pytest.raises(UnsafeUrlError) as info:
        parse_url("http://secret-token@127.0.0.1")
    assert "secret-token" not in str(info.value)
