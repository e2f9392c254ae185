"""The URI checks on their own (worker/mx/uri.py): what may be handed to a person."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker.mx.uri import Refusal, UriRules, _check_origin, check_uri

STRICT = UriRules()
INSECURE = UriRules(allow_insecure=True)
MX_ONLY = UriRules(allowed_hosts=("moneydesktop.com", "mx.com"))


@pytest.mark.parametrize(
    "uri",
    [
        "https://int-app.moneydesktop.com/oauth/predirect_to/MBR-1/tok?referral_source=BROWSER",
        "https://mxbank.mx.com/oauth/authorize?client_id=x&redirect_uri=https%3A%2F%2Fa.b%2Fc",
        "HTTPS://INT-APP.MONEYDESKTOP.COM/x",
        "https://int-app.moneydesktop.com:443/x#frag",
    ],
)
def test_mx_uris_pass(uri: str) -> None:
    """MX's own URI shapes (Nexus predirect, a bank's authorize page under mx.com) pass."""
    check = check_uri(uri, STRICT)
    assert check.ok
    assert check.known_host


@pytest.mark.parametrize(
    ("uri", "refusal"),
    [
        ("https://int-app.moneydesktop.com@evil.example/oauth/x", Refusal.USERINFO),
        ("https://user:pw@int-app.moneydesktop.com/x", Refusal.USERINFO),
        ("http://int-app.moneydesktop.com/x", Refusal.SCHEME),
        ("javascript:alert(1)", Refusal.SCHEME),
        ("https:/int-app.moneydesktop.com/x", Refusal.SCHEME),
        ("//int-app.moneydesktop.com/x", Refusal.SCHEME),
        ("https://int-app.moneydesktop.com/a b", Refusal.CHARACTERS),
        ("https://int-app.moneydesktop.com/x\n", Refusal.CHARACTERS),
        ("https://int-app.moneydesktop.com/x\x00y", Refusal.CHARACTERS),
        ("https://int-app.moneydesktop.com/x\ty", Refusal.CHARACTERS),
        ("https://int-app.moneydesktop.com/\u202ex", Refusal.CHARACTERS),
        ("https://int-app.m\u043eneydesktop.com/x", Refusal.CHARACTERS),
        ("https://evil.example\\@int-app.moneydesktop.com/", Refusal.CHARACTERS),
        ("https://127.0.0.1/x", Refusal.HOST),
        ("https://localhost/x", Refusal.HOST),
        ("https://[::1]/x", Refusal.HOST),
        ("https://-bad-.example/x", Refusal.HOST),
        ("https://mx.com./x", Refusal.HOST),
        ("https:///x", Refusal.HOST),
        ("https://int-app.moneydesktop.com:99999/x", Refusal.PORT),
        ("https://int-app.moneydesktop.com:0/x", Refusal.PORT),
        ("https://int-app.moneydesktop.com:/x", Refusal.PORT),
        ("https://int-app.moneydesktop.com/" + "a" * 5000, Refusal.TOO_LONG),
    ],
)
def test_deceptive_or_broken_uris_are_refused(uri: str, refusal: Refusal) -> None:
    """Userinfo, non-https, whitespace, control and non-ASCII characters, backslashes, IP or
    single-label hosts, bad ports and absurd lengths are refused, each with its reason."""
    assert check_uri(uri, STRICT).refusal is refusal


def test_insecure_switch_allows_http_and_loopback_only() -> None:
    """REAUTH_ALLOW_INSECURE_URLS admits http and loopback hosts (the sandbox), nothing else."""
    assert check_uri("http://127.0.0.1:8099/oauth/x", INSECURE).ok
    assert check_uri("http://localhost:8099/oauth/x", INSECURE).ok
    assert check_uri("http://[::1]:8099/oauth/x", INSECURE).ok
    assert check_uri("http://a@127.0.0.1/", INSECURE).refusal is Refusal.USERINFO
    assert check_uri("ftp://int-app.moneydesktop.com/", INSECURE).refusal is Refusal.SCHEME


def test_hosts_unknown_without_allow_list_refused_with_one() -> None:
    """Unset allow-list: a bank's own host is accepted but reported unknown. Set: a host outside
    it is refused; its subdomains are in."""
    bank = "https://auth.examplebank.com/oauth/authorize?x=1"
    open_check = check_uri(bank, STRICT)
    assert open_check.ok
    assert not open_check.known_host
    assert open_check.host == "auth.examplebank.com"
    assert check_uri(bank, MX_ONLY).refusal is Refusal.HOST_NOT_ALLOWED
    assert check_uri(bank, UriRules(allowed_hosts=("examplebank.com",))).ok
    assert check_uri("https://a.b.mx.com/x", MX_ONLY).ok
    assert check_uri("https://notmx.com/x", MX_ONLY).refusal is Refusal.HOST_NOT_ALLOWED


@given(
    prefix=st.sampled_from(["https://int-app.moneydesktop.com/", "https://mx.com/a?b="]),
    bad=st.characters(categories=("Cc", "Zs", "Zl", "Zp", "Cf", "Lo")),
    suffix=st.text(alphabet="abc/?=&", max_size=5),
)
def test_no_whitespace_control_or_non_ascii_character_ever_passes(
    prefix: str, bad: str, suffix: str
) -> None:
    """Property: any whitespace, control, format or non-ASCII letter anywhere is refused."""
    assert check_uri(prefix + bad + suffix, STRICT).refusal is Refusal.CHARACTERS


@given(user=st.text(alphabet="abcdefghijklmnopqrstuvwxyz.-:", min_size=1, max_size=30))
def test_userinfo_never_passes(user: str) -> None:
    """Property: whatever precedes an ``@`` in the authority, the URI is refused."""
    check = check_uri(f"https://{user}@evil.example/x", INSECURE)
    assert not check.ok


_PRINTABLE_CHARS = st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="\\")


@given(
    scheme=st.sampled_from(["https", "http", "HTTPS", "ftp", "ht:tp"]),
    authority=st.text(_PRINTABLE_CHARS, max_size=30),
    rest=st.text(_PRINTABLE_CHARS, max_size=30),
    rules=st.sampled_from([STRICT, INSECURE, MX_ONLY]),
)
def test_the_verdict_kept_per_origin_is_the_full_checks(
    scheme: str, authority: str, rest: str, rules: UriRules
) -> None:
    """The per-origin cache gives what checking the whole URI gives, first time or not."""
    uri = f"{scheme}://{authority}{rest}"
    full = _check_origin(uri, rules)
    assert check_uri(uri, rules) == full
    assert check_uri(uri, rules) == full
