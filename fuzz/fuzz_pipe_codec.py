"""Fuzz target ``pipe_codec``: the Pipe codec and :class:`PipeServerConnection`, both directions.

Checked for every request text (``check_request``):

* :func:`decode_request` returns a :class:`Request` or raises
  :class:`PipeFrameError` whose ``code`` is a :class:`PipeCode`, whose
  ``request_id`` is a string, a number or ``None`` (never a bool) and whose
  message is a non-empty string; nothing else escapes;
* :meth:`PipeServerConnection.receive` (0.2 and 1.0, default and tight limits)
  obeys the same contract, and every :class:`CallError` of a batch carries a
  :class:`PipeCode`;
* a decoded request without call errors re-encodes (``encode_request``, plain
  and with the 2011 client's ``"data": ""``) to a frame that decodes to the
  same request, and its reply and error reply can be written.

For every relay frame text (``check_server_frame``): :func:`decode_server_frame`
returns a reply, an error reply, a notification or an error notification, or
raises :class:`RemoteProtocolError`.

Round trips: every call type built field by field survives
``decode_request(encode_request(...))``; replies and 1.0 notifications of
every notice type survive ``decode_server_frame(encode_*)``.

Seeds: frames of the 2011 ``pusher-pipe`` client and of ``open_pipe`` captured
against a real relay (``corpus/pipe_codec``) and a catalogue of every method.
"""

from __future__ import annotations

import math
from typing import Any

import attrs
import pytest
from hypothesis import strategies as st

from fuzz._support import (
    corpus_params,
    corpus_texts,
    entry_text,
    fuzz_property,
    plain_json,
    record,
    seeded_frames,
    text_entry,
    to_text,
)
from pipe_proto import jsontext
from pipe_proto.apps import App, Limits
from pipe_proto.errors import PipeCode, RemoteProtocolError
from pipe_proto.pipe.codec import (
    MAX_BATCH_CALLS,
    PipeFrameError,
    decode_request,
    decode_server_frame,
    encode_call,
    encode_error_notification,
    encode_notification,
    encode_reply,
    encode_request,
)
from pipe_proto.pipe.events import (
    Ack,
    AuthRequest,
    AuthResponse,
    Batch,
    CallError,
    ChannelOccupied,
    ChannelVacated,
    DisconnectSocket,
    ErrorNotification,
    ErrorReply,
    Established,
    Gap,
    Leave,
    MemberAdded,
    MemberRemoved,
    Notification,
    PingCall,
    PipeCall,
    Reply,
    Request,
    SendToChannel,
    SendToSocket,
    SocketClosed,
    SocketMessage,
    SocketOpened,
    SubscribeEvents,
    TerminateUser,
    UnsubscribeEvents,
    WarningNotice,
)
from pipe_proto.pipe.server import PipeServerConnection

TARGET = "pipe_codec"
CODES = {int(code) for code in PipeCode}
APPS = [
    App(id="1", key="app-key", secret="app-secret"),
    App(id="2", key="k2", secret="s2", limits=Limits(max_event_bytes=8, max_channel_name=6)),
]
T0 = 1_700_000_000.0


def _check_error(exc: PipeFrameError) -> None:
    assert exc.code in CODES, f"code {exc.code!r} is not a PipeCode"
    assert isinstance(exc.message, str) and exc.message
    rid = exc.request_id
    assert rid is None or (not isinstance(rid, bool) and isinstance(rid, (str, int, float))), rid


def _has_call_error(call: PipeCall) -> bool:
    return isinstance(call, Batch) and any(isinstance(c, CallError) for c in call.calls)


def _valid(event: Any) -> None:
    # Decoders build some events without their validators and converters (pipe_proto.prechecked): what they
    # build must pass the validators, and hold what the converters would have made.
    attrs.validate(event)
    if isinstance(event, SendToSocket):
        assert type(event.socket_ids) is tuple, event
    if isinstance(event, Notification):
        attrs.validate(event.notice)


def check_request(text: str | bytes) -> Request | None:
    """Decode a pipe's request frame every way the relay does; check the contract and the round trip."""
    record(TARGET, text_entry(text, kind="request"))
    try:
        request = decode_request(text)
    except PipeFrameError as exc:
        _check_error(exc)
        request = None
    for app in APPS:
        for version in ("0.2", "1.0"):
            conn = PipeServerConnection(app, version, T0)
            try:
                checked = conn.receive(text, T0 + 1)  # type: ignore[arg-type]
            except PipeFrameError as exc:
                _check_error(exc)
                continue
            assert request is not None, "receive accepted a frame decode_request refused"
            assert checked.id == request.id
            if isinstance(checked.call, Batch):
                for call in checked.call.calls:
                    if isinstance(call, CallError):
                        assert call.code in CODES, call
                        assert isinstance(call.message, str) and call.message
    if request is None:
        return None
    _valid(request.call)
    if isinstance(request.call, Batch):
        for call in request.call.calls:
            _valid(call)
    # Whatever was accepted can be answered.
    encode_reply(Reply(id=request.id, result={}))
    encode_reply(ErrorReply(id=request.id, code=PipeCode.MALFORMED_REQUEST, message="x"))
    if not _has_call_error(request.call):
        for legacy in (False, True):
            again = encode_request(request, legacy_data=legacy)
            assert decode_request(again) == request, (text, again)
    return request


def check_server_frame(text: str | bytes) -> Any:
    """Decode a relay frame as a pipe client does: a frame or RemoteProtocolError."""
    record(TARGET, text_entry(text, kind="server_frame"))
    try:
        frame = decode_server_frame(text)
    except RemoteProtocolError as exc:
        assert isinstance(exc.message, str) and exc.message
        return None
    assert isinstance(frame, (Reply, ErrorReply, Notification, ErrorNotification)), frame
    _valid(frame)
    return frame


def check_entry(entry: dict[str, Any]) -> None:
    """Replay one corpus entry."""
    if entry["kind"] == "request":
        check_request(entry_text(entry))
        return
    frame = check_server_frame(entry_text(entry))
    if "expect_user_id" in entry:
        # A regression of the presence id 0 read back as "".
        assert isinstance(frame, Notification) and isinstance(frame.notice, (MemberAdded, MemberRemoved))
        assert frame.notice.user_id == entry["expect_user_id"]


# ------------------------------------------------------------------ seeds

REQUESTS = [
    '{"id":1,"method":"subscribe","params":{"events":["socket_message","socket_existence"]}}',
    '{"id":"a","method":"unsubscribe","params":{"events":"auth"}}',
    '{"id":2,"method":"send_to_socket","params":{"socket_id":"1.2","event":"ack","data":{"m":"R"}}}',
    '{"id":3,"method":"send_to_socket","params":{"socket_ids":["1.2","3.4"],"event":"e","data":"s","channel":"c"}}',
    '{"id":4,"method":"send_to_channel","params":{"channel":"private-room","event":"news","data":"{}",'
    '"socket_id":"1.2"}}',
    '{"id":5,"method":"send_to_channel","params":{"channels":["a","b"],"event":"e","data":[1],"socketId":"1.2"}}',
    '{"id":6,"method":"disconnect_socket","params":{"socket_id":"1.2","code":4100,"reason":"bye"}}',
    '{"id":7,"method":"terminate_user","params":{"user_id":"u1"}}',
    '{"id":8,"method":"auth_response","params":{"request_id":"1","allow":true,"channel_data":{"user_id":"u",'
    '"user_info":{"n":1}}}}',
    '{"id":9,"method":"auth_response","params":{"request_id":"2","allow":false,"reason":"no"}}',
    '{"id":10,"method":"auth_response","params":{"request_id":"3","allow":true,"user_data":"{\\"id\\":\\"u\\"}"}}',
    '{"id":null,"method":"ack","params":{"seq":3}}',
    '{"id":11,"method":"batch","params":{"calls":[{"method":"ping"},{"method":"ack","params":{"seq":1}},'
    '{"method":"send_to_channel","params":{"channel":"c","event":"e"}}]}}',
    '{"id":12,"method":"ping","params":{},"data":""}',
    '{"id":13,"method":"nope"}',
]
SERVER_FRAMES = [
    '{"id":null,"error":null,"result":{"event":"connection_established","data":{"socket_id":"1.2","session":"s",'
    '"resumed":false,"gap":0,"heartbeat":25,"protocol_version":"1.0"}}}',
    '{"id":null,"error":null,"result":{"event":"socket_message","data":{"socket_id":"1.2","event":"e","data":{},'
    '"channel":"c","user_id":"u"},"seq":4,"time_ms":17}}',
    '{"id":null,"error":null,"result":{"event":"auth_request","data":{"request_id":"1","socket_id":"1.2",'
    '"kind":"channel","socket":{},"channel":"private-a"},"seq":1,"time_ms":0,"redelivered":true}}',
    '{"id":3,"error":null,"result":{"delivered":2}}',
    '{"id":"x","error":{"code":4210,"message":"bad"},"result":null}',
    '{"id":null,"error":{"code":4220,"message":"bad"},"result":null}',
]
REQUEST_SEEDS = REQUESTS + corpus_texts(TARGET, kind="request")
SERVER_SEEDS = SERVER_FRAMES + corpus_texts(TARGET, kind="server_frame")


# ------------------------------------------------------------ valid calls

names = st.text(max_size=10)
ids = st.lists(names, max_size=3)
request_ids = (
    st.none() | names | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
)
objects = st.none() | st.dictionaries(st.text(max_size=5), plain_json, max_size=3)

CALL_STRATEGIES: dict[type[PipeCall], st.SearchStrategy[PipeCall]] = {
    SubscribeEvents: st.builds(SubscribeEvents, events=ids),
    UnsubscribeEvents: st.builds(UnsubscribeEvents, events=ids),
    SendToSocket: st.builds(SendToSocket, socket_ids=ids, event=names, data=names, channel=st.none() | names),
    SendToChannel: st.builds(SendToChannel, channels=ids, event=names, data=names, exclude=st.none() | names),
    DisconnectSocket: st.builds(
        DisconnectSocket, socket_id=names, code=st.integers(4000, 4299) | st.integers(4400, 4999), reason=names
    ),
    TerminateUser: st.builds(TerminateUser, user_id=names),
    AuthResponse: st.builds(
        AuthResponse, request_id=names, allow=st.booleans(), channel_data=objects, user_data=objects,
        reason=st.none() | names,
    ),
    Ack: st.builds(Ack, seq=st.integers(min_value=0)),
    PingCall: st.builds(PingCall),
    Leave: st.builds(Leave),
}
#: What a batch may hold: any call but a batch or a leave.
BATCHABLE = st.one_of([strategy for kind, strategy in CALL_STRATEGIES.items() if kind is not Leave])
CALLS = st.one_of(list(CALL_STRATEGIES.values())) | st.builds(
    Batch, calls=st.lists(BATCHABLE, min_size=1, max_size=MAX_BATCH_CALLS // 20)
)

NOTICES = st.one_of(
    st.builds(
        Established, socket_id=names, session=st.none() | names, resumed=st.booleans(),
        gap=st.integers(min_value=0), heartbeat=st.none() | st.integers(1, 100), protocol_version=st.just("1.0"),
    ),
    st.builds(
        SocketOpened, socket_id=names, remote_addr=st.none() | names, origin=st.none() | names,
        user_agent=st.none() | names, query=st.dictionaries(names, names, max_size=2),
        headers=st.dictionaries(names, names, max_size=2),
    ),
    st.builds(SocketClosed, socket_id=names, code=st.none() | st.integers(), reason=st.none() | names),
    st.builds(
        SocketMessage, socket_id=names, name=names, data=plain_json, channel=st.none() | names,
        user_id=st.none() | names,
    ),
    st.builds(ChannelOccupied, channel=names),
    st.builds(ChannelVacated, channel=names),
    st.builds(MemberAdded, channel=names, user_id=names | st.integers(), user_info=plain_json),
    st.builds(MemberRemoved, channel=names, user_id=names | st.integers()),
    st.builds(
        AuthRequest, request_id=names, socket_id=names, kind=names, channel=st.none() | names,
        socket=st.dictionaries(names, plain_json, max_size=2),
    ),
    st.builds(Gap, dropped=st.integers(min_value=0)),
    st.builds(WarningNotice, data=plain_json),
)


def _same_float(a: Any, b: Any) -> bool:
    return a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b))


# ------------------------------------------------------------- properties


@fuzz_property(TARGET, 600, text=st.text() | st.binary())
def test_arbitrary_requests(text: str | bytes) -> None:
    """Arbitrary text or bytes as a pipe request: a Request or PipeFrameError with a PipeCode."""
    check_request(text)


@fuzz_property(TARGET, 2000, text=seeded_frames(REQUEST_SEEDS))
def test_mutated_requests(text: str) -> None:
    """2011-client, open_pipe and catalogue requests, mutated: the same contract, round trips included."""
    check_request(text)


@fuzz_property(TARGET, 1000, text=st.text() | st.binary() | seeded_frames(SERVER_SEEDS))
def test_server_frames(text: str | bytes) -> None:
    """Relay frames, arbitrary or mutated: decode_server_frame raises only RemoteProtocolError."""
    check_server_frame(text)


@fuzz_property(TARGET, 800, request_id=request_ids, call=CALLS, legacy=st.booleans())
def test_request_round_trip(request_id: Any, call: PipeCall, legacy: bool) -> None:
    """Every call type: decode_request(encode_request(request)) == request."""
    request = Request(id=request_id, call=call)
    text = encode_request(request, legacy_data=legacy)
    assert decode_request(text) == request
    check_request(text)


#: Any character a str may hold, lone surrogates included: what escaping must get right.
any_text = st.text(st.characters(codec=None, exclude_categories=()), max_size=10)
#: The usual answer (encode_call's own path for it), as often as every other call.
ANSWERS = st.builds(
    SendToSocket, socket_ids=st.lists(any_text, min_size=1, max_size=1) | st.tuples(any_text),
    event=any_text, data=any_text,
)


@fuzz_property(TARGET, 400, call=CALLS | ANSWERS)
def test_batch_items_are_requests_without_an_id(call: PipeCall) -> None:
    """A batch item (encode_call, with its fast path for the usual answer) is the request's text, id aside."""
    request = encode_request(Request(id=None, call=call))
    assert request.startswith('{"id":null,')
    assert encode_call(call) == "{" + request[len('{"id":null,'):]


@fuzz_property(TARGET, 400, request_id=request_ids, result=plain_json, code=st.integers(), message=names)
def test_reply_round_trip(request_id: Any, result: Any, code: int, message: str) -> None:
    """Replies and error replies decode as the pipe client reads them."""
    if request_id is not None:
        assert check_server_frame(encode_reply(Reply(id=request_id, result=result))) == Reply(
            id=request_id, result=result
        )
        error = ErrorReply(id=request_id, code=code, message=message)
        assert check_server_frame(encode_reply(error)) == error
    assert check_server_frame(encode_error_notification(code, message)) == ErrorNotification(code=code, message=message)


@fuzz_property(
    TARGET, 600, notice=NOTICES, seq=st.none() | st.integers(min_value=1), time_ms=st.none() | st.integers(min_value=0),
    redelivered=st.booleans(),
)
def test_notification_round_trip(notice: Any, seq: int | None, time_ms: int | None, redelivered: bool) -> None:
    """Every 1.0 notice, written by the relay, reads back equal on the client side."""
    sent = Notification(notice=notice, seq=seq, time_ms=time_ms, redelivered=redelivered)
    text = encode_notification(sent, "1.0")
    assert jsontext.loads(text)["result"]["event"] == notice.event
    assert check_server_frame(text) == sent
    check_server_frame(encode_notification(sent, "0.2"))


def test_round_trip_covers_every_call_type() -> None:
    """The request round trip builds every call type there is (a batch of the others included)."""
    assert {*CALL_STRATEGIES, Batch} == set(PipeCall.__subclasses__())


@pytest.mark.parametrize("entry", corpus_params(TARGET))
def test_replay_corpus(entry: dict[str, Any]) -> None:
    """Every corpus file (2011 client and open_pipe frames, past crashes) still passes the checks."""
    check_entry(entry)


def test_markers_reach_the_decoder() -> None:
    """The mutation markers really produce the literals they stand for."""
    assert to_text({"id": "\x00inf\x00"}) == '{"id": 1e400}'
