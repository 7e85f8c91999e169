"""Channel types by anchored prefix, and the rules for channel, event, socket and user names."""

from __future__ import annotations

import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipe_proto.names import (
    DEFAULT_MAX_CHANNEL_NAME,
    MAX_CHANNEL_NAME_CEILING,
    ChannelKind,
    ChannelType,
    channel_name_error,
    channel_type,
    event_name_error,
    is_token,
    socket_id_error,
    user_id_error,
)

PUBLIC, PRIVATE, ENCRYPTED, PRESENCE, USER = (
    ChannelKind.PUBLIC, ChannelKind.PRIVATE, ChannelKind.ENCRYPTED, ChannelKind.PRESENCE, ChannelKind.USER,
)

# (name, kind, cached): section 4.1, including the traps of SK-UTIL and RV-CH.
TYPES = [
    ("my-channel", PUBLIC, False),
    ("presence-cache-x", PRESENCE, True),
    ("presence-x", PRESENCE, False),
    ("private-encrypted-cache-x", ENCRYPTED, True),
    ("private-encrypted-x", ENCRYPTED, False),
    ("private-cache-x", PRIVATE, True),
    ("private-x", PRIVATE, False),
    ("#server-to-user-42", USER, False),
    ("cache-x", PUBLIC, True),
    # Prefixes count only at the start, and only with their dash.
    ("my-private-x", PUBLIC, False),
    ("my-presence-x", PUBLIC, False),
    ("x-cache-y", PUBLIC, False),
    ("my-cache-x", PUBLIC, False),
    ("privatex", PUBLIC, False),
    ("private", PUBLIC, False),
    ("presence", PUBLIC, False),
    ("presencex-y", PUBLIC, False),
    ("cache", PUBLIC, False),
    ("Private-x", PUBLIC, False),
    ("private-encryptedx", PRIVATE, False),
    ("private-encrypted", PRIVATE, False),
    ("private-cachex", PRIVATE, False),
    ("presence-cachex", PRESENCE, False),
    ("private-x-cache-y", PRIVATE, False),
    ("presence-private-x", PRESENCE, False),
    ("private-presence-x", PRIVATE, False),
    ("cache-private-x", PUBLIC, True),
    ("server-to-user-42", PUBLIC, False),
    ("#server-to-user", PUBLIC, False),
    # The prefix alone is still that type (the name rules reject nothing here).
    ("private-", PRIVATE, False),
    ("presence-cache-", PRESENCE, True),
]


@pytest.mark.parametrize(("name", "kind", "cached"), TYPES)
def test_channel_type(name: str, kind: ChannelKind, cached: bool) -> None:
    """channel_type decides kind and cache flag by the anchored prefix with its dash."""
    assert channel_type(name) == ChannelType(kind, cached)


@pytest.mark.parametrize(
    ("kind", "needs_signature", "client_events"),
    [
        (PUBLIC, False, False),
        (PRIVATE, True, True),
        (ENCRYPTED, True, False),
        (PRESENCE, True, True),
        (USER, False, False),
    ],
)
def test_kind_properties(kind: ChannelKind, needs_signature: bool, client_events: bool) -> None:
    """Private, encrypted and presence need a signature; client events only on private and presence."""
    assert kind.needs_signature is needs_signature
    assert kind.allows_client_events is client_events


NAME_CHARS = string.ascii_letters + string.digits + "_-=@,.;"


@pytest.mark.parametrize(
    "name",
    [
        "a",
        "foo-bar_1234@=,.;",
        "x" * DEFAULT_MAX_CHANNEL_NAME,
        "private-" + "x" * (DEFAULT_MAX_CHANNEL_NAME - len("private-")),
        "#server-to-user-12345",
        "#server-to-user-a=b@c",
        "presence-cache-" + NAME_CHARS,
    ],
)
def test_valid_channel_names(name: str) -> None:
    """Names of allowed characters up to 164 long, and '#server-to-user-' names, are valid."""
    assert channel_name_error(name) is None


@pytest.mark.parametrize(
    "name",
    [
        "",
        "x" * (DEFAULT_MAX_CHANNEL_NAME + 1),
        "a b",
        "x/y",
        "#abc",
        "#",
        "a#b",
        "#server-to-user-",
        "#server-to-user-a b",
        "#server-to-user-#server-to-user-1",
        "#Server-to-user-1",
        "caché",
        "tab\t",
        "new\nline",
        "a:b",
        "a*",
        "x\x00",
    ],
)
def test_invalid_channel_names(name: str) -> None:
    """Empty, too long, '#' other than '#server-to-user-{id}', and characters outside [A-Za-z0-9_-=@,.;]."""
    problem = channel_name_error(name)
    assert isinstance(problem, str)
    assert problem


@pytest.mark.parametrize("value", [None, 1, b"abc", ["a"]])
def test_channel_name_must_be_a_string(value: object) -> None:
    """A channel name that is not a string is refused, not crashed on."""
    assert channel_name_error(value) == "channel name must be a string"


def test_channel_name_limit_is_configurable() -> None:
    """With max_length 200 a 200-character name is valid and 201 is not; the default stays 164."""
    assert MAX_CHANNEL_NAME_CEILING == 200
    assert channel_name_error("x" * 200, 200) is None
    assert channel_name_error("x" * 201, 200) is not None
    assert channel_name_error("x" * 165) is not None
    assert channel_name_error("#server-to-user-" + "x" * 148) is None  # 164 in all
    assert channel_name_error("#server-to-user-" + "x" * 149) is not None


@given(st.text(NAME_CHARS, min_size=1, max_size=DEFAULT_MAX_CHANNEL_NAME))
def test_every_name_of_allowed_characters_is_valid(name: str) -> None:
    """Any 1-164 characters of the allowed set form a valid name."""
    assert channel_name_error(name) is None


@given(st.text(min_size=1, max_size=DEFAULT_MAX_CHANNEL_NAME))
def test_validity_is_exactly_the_character_rule(name: str) -> None:
    """A name is valid iff all its characters are allowed (after an optional '#server-to-user-' prefix)."""
    body = name.removeprefix("#server-to-user-")
    expected = bool(body) and all(c in NAME_CHARS for c in body)
    assert (channel_name_error(name) is None) is expected


# ------------------------------------------------------------------ event names


@pytest.mark.parametrize("name", ["e", "my-event", "client-typing", "x" * 200, "with space", "ünïcode", "a:b"])
def test_valid_event_names(name: str) -> None:
    """Any non-empty name of at most 200 characters without a reserved prefix is a valid event name."""
    assert event_name_error(name) is None


@pytest.mark.parametrize(
    "name", ["", "x" * 201, "pusher:subscribe", "pusher:", "pusher_internal:member_added", None, 5]
)
def test_invalid_event_names(name: object) -> None:
    """Empty, over 200 characters, non-string, and 'pusher:' / 'pusher_internal:' names are refused."""
    assert event_name_error(name) is not None


def test_reserved_event_names_allowed_on_request() -> None:
    """allow_reserved admits the protocol's own prefixes but still checks the length."""
    assert event_name_error("pusher:cache_miss", allow_reserved=True) is None
    assert event_name_error("pusher:" + "x" * 194, allow_reserved=True) is not None
    assert event_name_error("pusherx:foo") is None
    assert event_name_error("Pusher:foo") is None


# ------------------------------------------------------------------- socket ids


@pytest.mark.parametrize("value", ["1.2", "123.456", "1234.1234", "208836.27464492", "0.0", "1" * 31 + "." + "2" * 32])
def test_valid_socket_ids(value: str) -> None:
    """digits.digits (ASCII, at most 64 characters) is a socket id."""
    assert socket_id_error(value) is None


@pytest.mark.parametrize(
    "value",
    ["", "1", "1.", ".1", "1.2.3", "a.b", "1.2 ", " 1.2", "1.2\n", "-1.2", "1,2", "\u0661.\u0662",
     "1" * 32 + "." + "2" * 32,
     None, 1.2, 12],
)
def test_invalid_socket_ids(value: object) -> None:
    """Anything else, including non-ASCII digits and over-long ids, is refused."""
    assert socket_id_error(value) is not None


@given(st.integers(min_value=0, max_value=10**20), st.integers(min_value=0, max_value=10**20))
def test_socket_ids_of_two_numbers(a: int, b: int) -> None:
    """Two non-negative integers joined by a dot are a socket id."""
    assert socket_id_error(f"{a}.{b}") is None


# --------------------------------------------------------------------- user ids


@pytest.mark.parametrize(
    ("value", "valid"),
    [("12345", True), ("a=b@c.d", True), ("x" * 200, True), ("x" * 201, False), ("", False), ("a b", False),
     ("#1", False), (12345, False), (None, False)],
)
def test_user_ids(value: object, valid: bool) -> None:
    """Signed-in user ids are non-empty strings of channel-name characters, at most 200 long."""
    assert (user_id_error(value) is None) is valid


@pytest.mark.parametrize(
    ("value", "limit", "ok"),
    [("app-key_1.x", None, True), ("", None, False), ("a b", None, False), ("a/b", None, False), ("x" * 64, 64, True), ("x" * 65, 64, False), (7, None, False)],
)
def test_tokens(value: object, limit: int | None, ok: bool) -> None:
    """Keys, secrets, groups and sessions: non-empty A-Za-z0-9_-. within their length."""
    assert is_token(value, limit) is ok
