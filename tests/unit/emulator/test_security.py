"""Host names served (DNS rebinding) and API keys (no sockets)."""

from __future__ import annotations

import pytest

from bridge.emulator.security import KeyRing, host_allowed, host_name, is_loopback
from bridge.emulator.settings import DEV_API_KEY


@pytest.mark.parametrize(
    ("header", "name"),
    [
        ("LocalHost:8000", "localhost"),
        ("[::1]:8000", "::1"),
        ("[::1]", "::1"),
        ("example.com.", "example.com"),
        ("127.0.0.1", "127.0.0.1"),
        ("::1", "::1"),  # unbracketed IPv6: not a port
    ],
)
def test_host_name(header: str, name: str) -> None:
    assert host_name(header) == name


@pytest.mark.parametrize(
    ("header", "bind", "allowed", "served"),
    [
        ("localhost:8000", "127.0.0.1", [], True),
        ("127.0.0.1:8000", "127.0.0.1", [], True),
        ("[::1]:8000", "127.0.0.1", [], True),
        ("evil.example:8000", "127.0.0.1", [], False),  # a rebound name
        ("localhost.evil.example", "127.0.0.1", [], False),
        ("10.1.2.3", "127.0.0.1", [], False),  # not an address of a loopback server
        ("emulator:8000", "127.0.0.1", ["emulator"], True),
        ("anything", "127.0.0.1", ["*"], True),
        ("10.1.2.3:8000", "0.0.0.0", [], True),  # bound to all: its addresses are served
        ("evil.example", "0.0.0.0", [], False),
        ("emulator", "0.0.0.0", ["emulator"], True),
        ("myhost.lan", "myhost.lan", [], True),  # bound by name
        (None, "127.0.0.1", ["*"], False),
        ("", "127.0.0.1", [], False),
    ],
)
def test_host_allowed(header: str | None, bind: str, allowed: list[str], served: bool) -> None:
    assert host_allowed(header, bind, allowed) is served


def test_loopback_callers() -> None:
    assert is_loopback("127.0.0.1")
    assert is_loopback("::1")
    assert is_loopback("::ffff:127.0.0.1")
    assert not is_loopback("192.0.2.7")
    assert not is_loopback(None)
    assert not is_loopback("not-an-address")


def test_keys_are_identified_and_revoked() -> None:
    ring = KeyRing(["k-one", "k-two"])
    assert ring.identify("k-two", loopback_caller=False) == "1"
    assert ring.identify("nope", loopback_caller=True) is None
    assert ring.revoke("k-one")
    assert ring.identify("k-one", loopback_caller=True) is None
    assert ring.identify("k-two", loopback_caller=True) == "1"
    assert not ring.revoke("never-issued")
    ring.add("k-one")  # restored, same id
    assert ring.identify("k-one", loopback_caller=True) == "0"
    ring.add("k-three")
    assert ring.identify("k-three", loopback_caller=True) == "2"
    with pytest.raises(ValueError, match="empty"):
        ring.add(" ")


def test_the_development_key_only_from_loopback() -> None:
    ring = KeyRing([DEV_API_KEY])
    assert ring.identify(DEV_API_KEY, loopback_caller=True) == "0"
    assert ring.identify(DEV_API_KEY, loopback_caller=False) is None
