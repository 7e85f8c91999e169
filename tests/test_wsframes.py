"""The relay's own WebSocket framing: frames it writes equal wsproto's (the portable transport's); reading limits.

Reading is checked against wsproto by the ``wsframes`` fuzz target
(``fuzz/fuzz_wsframes.py``) and by the adapter suite, which runs on both
transports; here are the writers, the bounds, and the reference reader's
own bound.
"""

from __future__ import annotations

import tracemalloc

import pytest
from wsproto.frame_protocol import FrameProtocol

from pipe_trio import _wsreference
from pipe_trio._wsframes import (
    BROKEN,
    OVERSIZED,
    PING,
    PONG,
    TEXT,
    FrameReader,
    close_frame,
    control_frame,
    masked_frame,
    text_frame,
)
from pipe_trio._wsreference import ReferenceReader

CLIENT = FrameProtocol(client=True, extensions=[])


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65535, 65536, 70000])
@pytest.mark.parametrize("char", ["a", "é", "\U0001f600"])
def test_text_frame_equals_wsproto(size: int, char: str) -> None:
    text = (char * size)[:size]
    assert text_frame(text) == _wsreference.text_frame(text)


@pytest.mark.parametrize(
    ("code", "reason"),
    [(None, ""), (1000, ""), (4101, "slow consumer"), (4200, "x" * 200), (1002, "é" * 100), (4009, "😀" * 40)],
)
def test_close_frame_equals_wsproto(code: int | None, reason: str) -> None:
    assert close_frame(code, reason) == _wsreference.close_frame(code, reason)


def test_a_close_reason_no_utf_8_can_carry_is_sent_with_a_replacement() -> None:
    assert close_frame(4009, "bye \ud800") == close_frame(4009, "bye ?")


def test_control_frames_equal_wsproto() -> None:
    assert control_frame(PING) == _wsreference.ping_frame()
    assert control_frame(PONG, b"abc") == _wsreference.pong_frame(b"abc")


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


def test_the_reference_reader_drops_an_oversized_message_as_it_streams_in() -> None:
    reader = ReferenceReader(max_message=1000)
    frame = bytes(CLIENT.send_data("y" * 1_000_000, fin=True))
    events = []
    for start in range(0, len(frame), 65536):
        events += reader.feed(frame[start : start + 65536])
        assert reader._message is None  # nothing of it is kept
    events += reader.feed(bytes(CLIENT.send_data("after", fin=True)))
    assert [kind for kind, _ in events] == [OVERSIZED, TEXT]
    assert events[-1] == (TEXT, "after")


@pytest.mark.parametrize("reader_class", [FrameReader, ReferenceReader])
def test_a_fragmented_message_holds_its_bytes_and_no_more(reader_class: type[FrameReader | ReferenceReader]) -> None:
    # Each fragment counts its payload against the limit: empty ones count
    # nothing, so they must cost nothing either, nor may a tiny one cost more
    # than its bytes (a decoded piece per frame would be ~25 times the limit).
    reader = reader_class(max_message=32768)
    mask = b"\x01\x02\x03\x04"
    empty = masked_frame(0x00, b"", mask)  # continuation, not final
    tiny = [masked_frame(0x00, "€".encode(), mask) for _ in range(10_000)]
    assert reader.feed(masked_frame(0x01, b"", mask)) == []  # text, not final
    tracemalloc.start()
    try:
        for _ in range(20):
            assert reader.feed(empty * 5000) == []
        after_empty, _ = tracemalloc.get_traced_memory()
        for frame in tiny:
            assert reader.feed(frame) == []
        after_tiny, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert after_empty < 4096
    assert after_tiny < 2 * 30_000 + 4096  # the message's 30,000 bytes (a buffer may double)
    assert reader.feed(masked_frame(0x80, b"!", mask)) == [(TEXT, "€" * 10_000 + "!")]
