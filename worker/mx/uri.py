"""Is an ``oauth_window_uri`` from MX safe to hand to a person? A pure check, no I/O.

The URI goes into emails and pushes, and the person clicking it is about to type their bank
login. So a URI that is not what it looks like is worse than no URI: refused are anything but
``https`` (``http`` only with REAUTH_ALLOW_INSECURE_URLS, for the sandbox and tests), userinfo
(``https://int-app.moneydesktop.com@evil.example/...`` reads as MX but goes to evil.example),
hosts that are not plain DNS names (IP literals and single labels such as ``localhost`` only
with REAUTH_ALLOW_INSECURE_URLS), whitespace, control characters, non-ASCII characters (a
homograph host, a hidden line break) and backslashes (browsers read ``\\`` as ``/`` in http(s)
URLs, Python's parser does not, so the two would disagree on the host).

Hosts: MX says not to hard-code expected URIs, and a URI may legitimately point at a bank's own
authorize page (MX's v20250224 example is ``https://mxbank.mx.com/oauth/authorize?...``). So
the host allow-list (REAUTH_MX_URI_HOSTS) is optional: when set, a host outside it is refused;
when unset, a host outside MX's own domains (:data:`MX_DOMAINS`) is only reported as unknown,
for the caller to count and log.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Final
from urllib.parse import urlsplit

#: MX's own domains: hosts under them are never "unknown".
MX_DOMAINS: Final = ("moneydesktop.com", "mx.com")
#: Longer than any URI MX documents by an order of magnitude; a bound on what we store and log.
MAX_URI_LENGTH: Final = 4096

_LABEL = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
#: At least two labels; the last one starts with a letter (so no dotted IPv4 passes as a name).
_DNS_NAME = re.compile(rf"(?=.{{1,253}}$)({_LABEL}\.)+[a-z]([a-z0-9-]{{0,61}}[a-z0-9])?")
_SINGLE_LABEL = re.compile(_LABEL)


class Refusal(StrEnum):
    """Why a URI was refused (the ``reason`` of :class:`worker.errors.UnsafeOAuthUri`)."""

    CHARACTERS = "characters"
    TOO_LONG = "too_long"
    SCHEME = "scheme"
    USERINFO = "userinfo"
    HOST = "host"
    PORT = "port"
    HOST_NOT_ALLOWED = "host_not_allowed"


@dataclass(frozen=True)
class UriRules:
    """What :func:`check_uri` enforces, copied from settings."""

    allow_insecure: bool = False
    #: Allowed hosts (each also allows its subdomains); empty: not enforced.
    allowed_hosts: tuple[str, ...] = ()


@dataclass(frozen=True)
class UriCheck:
    """The verdict on one URI. ``host`` is lower-case and safe to log (the token is not in it)."""

    refusal: Refusal | None
    host: str | None = None
    #: False when the host is outside MX's domains and no allow-list is set (count and log it).
    known_host: bool = True

    @property
    def ok(self) -> bool:
        return self.refusal is None


def host_matches(host: str, domains: Iterable[str]) -> bool:
    """True when ``host`` is one of ``domains`` or a subdomain of one (label boundary)."""
    return any(host == d or host.endswith("." + d) for d in domains)


#: Printable ASCII (``!`` to ``~``) without the backslash: one C-level match instead of a
#: Python loop over every character (this runs once per generated URI).
_PRINTABLE = re.compile(r"[!-\[\]-~]*")


#: Verdicts by ``scheme://authority`` (and rules): past the length and character checks, the
#: verdict depends on nothing else, and MX's URIs share a handful of origins.
_by_origin: dict[tuple[str, UriRules], UriCheck] = {}
_BY_ORIGIN_MAX = 256


def check_uri(uri: str, rules: UriRules) -> UriCheck:
    """Check an ``oauth_window_uri`` against ``rules``. Never raises."""
    if len(uri) > MAX_URI_LENGTH:
        return UriCheck(Refusal.TOO_LONG)
    # Printable ASCII only: no space, tab, CR/LF, NUL, DEL or anything non-ASCII; and no
    # backslash, which browsers and urlsplit read differently.
    if _PRINTABLE.fullmatch(uri) is None:
        return UriCheck(Refusal.CHARACTERS)
    sep = uri.find("://")
    if sep < 0:
        return _check_origin(uri, rules)
    # Where urlsplit ends the authority: the first "/", "?" or "#" after "//".
    end = len(uri)
    for stop in "/?#":
        at = uri.find(stop, sep + 3, end)
        if at >= 0:
            end = at
    key = (uri[:end], rules)
    verdict = _by_origin.get(key)
    if verdict is None:
        verdict = _check_origin(key[0], rules)
        if len(_by_origin) < _BY_ORIGIN_MAX:
            _by_origin[key] = verdict
    return verdict


def _check_origin(uri: str, rules: UriRules) -> UriCheck:
    """Everything :func:`check_uri` checks after the characters (reads scheme and authority
    only)."""
    try:
        parts = urlsplit(uri)
    except ValueError:  # e.g. an unbalanced IPv6 bracket
        return UriCheck(Refusal.HOST)
    allowed_schemes = {"https", "http"} if rules.allow_insecure else {"https"}
    if parts.scheme.lower() not in allowed_schemes or not uri[len(parts.scheme) :].startswith(
        "://"
    ):
        return UriCheck(Refusal.SCHEME)
    if "@" in parts.netloc:
        return UriCheck(Refusal.USERINFO)
    host = (parts.hostname or "").lower()
    if not _valid_host(host, parts.netloc, allow_insecure=rules.allow_insecure):
        return UriCheck(Refusal.HOST)
    try:
        port = parts.port  # ValueError for a non-numeric or out-of-range port
    except ValueError:
        return UriCheck(Refusal.PORT, host=host)
    if port == 0 or (parts.netloc.endswith(":") and port is None):
        return UriCheck(Refusal.PORT, host=host)
    if rules.allowed_hosts:
        if not host_matches(host, rules.allowed_hosts):
            return UriCheck(Refusal.HOST_NOT_ALLOWED, host=host)
        return UriCheck(None, host=host)
    return UriCheck(None, host=host, known_host=host_matches(host, MX_DOMAINS))


def _valid_host(host: str, netloc: str, *, allow_insecure: bool) -> bool:
    if not host:
        return False
    if _DNS_NAME.fullmatch(host):
        return True
    if not allow_insecure:
        # IP literals and single-label names are never what a bank or MX link looks like.
        return False
    if _SINGLE_LABEL.fullmatch(host):
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    # urlsplit strips the brackets of an IPv6 literal; make sure they were there.
    return ip.version == 4 or f"[{host}]" in netloc.lower()
