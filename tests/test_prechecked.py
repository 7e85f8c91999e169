"""The decoders' builders (pipe_proto.prechecked) make what the events' own constructors make.

That the decoders hand them only what the validators accept is checked by the fuzz targets of both
codecs (fuzz/fuzz_pusher_codec.py, fuzz/fuzz_pipe_codec.py), on every event they decode.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipe_proto import prechecked
from pipe_proto.pipe.events import Notification, SendToSocket, SocketMessage
from pipe_proto.pusher.events import Message

text = st.text(max_size=12)
maybe_text = st.none() | text
json_value = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3),
    max_leaves=6,
)
socket_messages = st.builds(
    SocketMessage, socket_id=text, name=text, data=json_value, channel=maybe_text, user_id=maybe_text
)

BUILDERS: list[tuple[type, Callable[..., Any]]] = [
    (Message, prechecked.message),
    (SocketMessage, prechecked.socket_message),
    (Notification, prechecked.notification),
    (SendToSocket, prechecked.send_to_socket),
]


@pytest.mark.parametrize(("cls", "build"), BUILDERS, ids=lambda v: getattr(v, "__name__", ""))
def test_a_builder_takes_every_field_of_its_class_in_order(cls: type, build: Callable[..., Any]) -> None:
    """A field added to an event must be added to its builder too, or this fails."""
    assert list(inspect.signature(build).parameters) == [field.name for field in attrs.fields(cls)]


def same(built: Any, constructed: Any) -> None:
    # attrs' == compares the classes too; repr shows every field, and so tells a field set under a wrong name.
    assert built == constructed
    assert repr(built) == repr(constructed)


@given(event=text.filter(bool), data=json_value, channel=maybe_text, user_id=maybe_text)
def test_message(event: str, data: Any, channel: str | None, user_id: str | None) -> None:
    same(
        prechecked.message(event, data, channel, user_id),
        Message(event=event, data=data, channel=channel, user_id=user_id),
    )


@given(socket_id=text, name=text, data=json_value, channel=maybe_text, user_id=maybe_text)
def test_socket_message(socket_id: str, name: str, data: Any, channel: str | None, user_id: str | None) -> None:
    same(
        prechecked.socket_message(socket_id, name, data, channel, user_id),
        SocketMessage(socket_id=socket_id, name=name, data=data, channel=channel, user_id=user_id),
    )


@given(notice=socket_messages, seq=st.none() | st.integers(0), time_ms=st.none() | st.integers(0),
       redelivered=st.booleans())
def test_notification(notice: SocketMessage, seq: int | None, time_ms: int | None, redelivered: bool) -> None:
    same(
        prechecked.notification(notice, seq, time_ms, redelivered),
        Notification(notice=notice, seq=seq, time_ms=time_ms, redelivered=redelivered),
    )


@given(socket_ids=st.lists(text, max_size=4).map(tuple), event=text, data=text, channel=maybe_text)
def test_send_to_socket(socket_ids: tuple[str, ...], event: str, data: str, channel: str | None) -> None:
    same(
        prechecked.send_to_socket(socket_ids, event, data, channel),
        SendToSocket(socket_ids=socket_ids, event=event, data=data, channel=channel),
    )
