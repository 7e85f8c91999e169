"""The relay's own WebSocket framing: frames it writes equal wsproto's; reading limits.

Reading is checked against wsproto by the ``wsframes`` fuzz target
(``fuzz/fuzz_wsframes.py``); here are the writers and the bounds.
"""

from __future__ import annotations

import pytest
from wsproto.frame_protocol import FrameProtocol

from pipe_trio._wsframes import BROKEN, OVERSIZED, PING, PONG, TEXT, FrameReader, close_frame, control_frame, text_frame

WSPROTO = FrameProtocol(client=False, extensions=[])
CLIENT = FrameProtocol(client=True, extensions=[])


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65535, 65536, 70000])
@pytest.mark.parametrize("char", ["a", "é", "\U0001f600"])
def test_text_frame_equals_wsproto(size: int, char: str) -> None:
    text = (char * size)[:size]
    assert text_frame(text) == bytes(WSPROTO.send_data(text, fin=True))


@pytest.mark.parametrize(
    ("code", "reason"),
    [(None, ""), (1000, ""), (4101, "slow consumer"), (4200, "x" * 200), (1002, "é" * 100), (4009, "😀" * 40)],
)
def test_close_frame_equals_wsproto(code: int | None, reason: str) -> None:
    assert close_frame(code, reason) == bytes(WSPROTO.close(code, reason or None))


def test_control_frames_equal_wsproto() -> None:
    assert control_frame(PING) == bytes(WSPROTO.ping())
    assert control_frame(PONG, b"abc") == bytes(WSPROTO.pong(b"abc"))


def test_reads_what_a_client_writes_byte_by_byte() -> None:
    stream = b"".join(bytes(CLIENT.send_data(t, fin=True)) for t in ["hi", "é" * 100, "x" * 70000]) + bytes(CLIENT.ping(b"p"))
    reader = FrameReader()
    got = [event for i in range(len(stream)) for event in reader.feed(stream[i : i + 1])]
    assert got == [(TEXT, "hi"), (TEXT, "é" * 100), (TEXT, "x" * 70000), (PING, b"p")]


def test_oversized_message_is_skipped_without_buffering() -> None:
    reader = FrameReader(max_message=1000)
    frame = bytes(CLIENT.send_data("y" * 1_000_000, fin=True))
    events = []
    for start in range(0, len(frame), 65536):
        events += reader.feed(frame[start : start + 65536])
        assert reader._pending_size == 0  # nothing of it is kept
    events += reader.feed(bytes(CLIENT.send_data("after", fin=True)))
    assert events == [(OVERSIZED, 1_000_000), (TEXT, "after")]


def test_a_partial_frame_waits_for_its_bytes_and_nothing_after_a_broken_one() -> None:
    reader = FrameReader()
    frame = bytes(CLIENT.send_data("z" * 5000, fin=True))
    assert reader.feed(frame[:3000]) == []
    assert reader.feed(frame[3000:]) == [(TEXT, "z" * 5000)]
    [(kind, error)] = reader.feed(b"\x81\x05hello")  # unmasked
    assert kind == BROKEN
    assert error.code == 1002
    assert reader.feed(bytes(CLIENT.send_data("more", fin=True))) == []
