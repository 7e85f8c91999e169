"""Pipe frames to events and back (pipe-protocol.md 2-4).

Relay side: :func:`decode_request` reads a pipe's request and raises
:class:`PipeFrameError` (with the code, the message and whether it is a reply
or a notification) for anything it cannot accept; :func:`encode_reply`,
:func:`encode_notification` and :func:`encode_error_notification` write what
the relay sends. Client side: :func:`encode_request` and
:func:`decode_server_frame`.

Only the shape of a request is checked here (types, required fields); what
the values mean (is that a valid channel name, is the payload too large) is
checked by the connection that knows the app's limits.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .. import jsontext, prechecked
from ..errors import PipeCode, ProtocolError, RemoteProtocolError
from .events import (
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
    Notice,
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

__all__ = [
    "MAX_BATCH_CALLS",
    "PipeFrameError",
    "decode_request",
    "decode_server_frame",
    "encode_call",
    "encode_error_notification",
    "encode_notification",
    "encode_reply",
    "encode_request",
    "notice_data",
]

MAX_BATCH_CALLS = 100
_dumps = jsontext.dumps


class PipeFrameError(ProtocolError):
    """A request the relay cannot accept.

    Attributes:
        request_id: the request's id; ``None`` means answer with an error
            notification instead of a reply.
    """

    def __init__(self, code: int, message: str, request_id: Any = None) -> None:
        super().__init__(message, code=code)
        self.request_id = request_id


class _Malformed(Exception):
    pass


def _text(value: Any) -> str:
    """Socket-bound data: a string verbatim, anything else JSON-encoded once."""
    return value if isinstance(value, str) else _dumps(value)


def _str(params: dict[str, Any], key: str) -> str:
    value = params.get(key)
    if not isinstance(value, str):
        raise _Malformed(f"params.{key} must be a string")
    return value


def _opt_str(params: dict[str, Any], key: str) -> str | None:
    value = params.get(key)
    if value is not None and not isinstance(value, str):
        raise _Malformed(f"params.{key} must be a string or null")
    return value


def _names(params: dict[str, Any], many: str, one: str) -> tuple[str, ...]:
    if many in params:
        value = params[many]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise _Malformed(f"params.{many} must be a list of strings")
        return tuple(value)
    return (_str(params, one),)


def _event_types(params: dict[str, Any]) -> tuple[str, ...]:
    events = params.get("events")
    if isinstance(events, str):
        events = [events]
    if not isinstance(events, list) or not all(isinstance(e, str) for e in events):
        raise _Malformed("params.events must be a list of strings")
    return tuple(events)


def _object(value: Any, what: str) -> Any:
    if isinstance(value, str):
        try:
            value = jsontext.loads(value)
        except ValueError:
            raise _Malformed(f"{what} must be a JSON object") from None
    if value is not None and not isinstance(value, dict):
        raise _Malformed(f"{what} must be a JSON object")
    return value


def _auth_response(p: dict[str, Any]) -> AuthResponse:
    allow = p.get("allow")
    if not isinstance(allow, bool):
        raise _Malformed("params.allow must be true or false")
    return AuthResponse(
        request_id=_str(p, "request_id"),
        allow=allow,
        channel_data=_object(p.get("channel_data"), "params.channel_data"),
        user_data=_object(p.get("user_data"), "params.user_data"),
        reason=_opt_str(p, "reason"),
    )


def _disconnect(p: dict[str, Any]) -> DisconnectSocket:
    code = p.get("code", 4009)
    if code is None:
        code = 4009
    # 43xx are frame-only codes: pusher-js gives up for good on such a close (pusher-channels.md 1.7).
    if isinstance(code, bool) or not isinstance(code, int) or not 4000 <= code <= 4999 or 4300 <= code <= 4399:
        raise _Malformed("params.code must be an integer from 4000 to 4999, but not 4300-4399")
    reason = _opt_str(p, "reason") or ""
    if not _encodable(reason):
        raise _Malformed("params.reason must be Unicode text (it has a lone surrogate)")
    return DisconnectSocket(socket_id=_str(p, "socket_id"), code=code, reason=reason)


def _encodable(text: str) -> bool:
    # JSON's \ud800 escapes decode to lone surrogates, which no UTF-8 close frame can carry.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _ack(p: dict[str, Any]) -> Ack:
    seq = p.get("seq")
    if isinstance(seq, bool) or not isinstance(seq, int) or seq < 0:
        raise _Malformed("params.seq must be a non-negative integer")
    return Ack(seq=seq)


def _batch(p: dict[str, Any]) -> Batch:
    calls = p.get("calls")
    if not isinstance(calls, list) or not calls:
        raise _Malformed("params.calls must be a non-empty list")
    if len(calls) > MAX_BATCH_CALLS:
        raise PipeFrameError(PipeCode.TOO_MANY_TARGETS, f"a batch holds at most {MAX_BATCH_CALLS} calls")
    parsed: list[PipeCall | CallError] = []
    for item in calls:
        try:
            if not isinstance(item, dict):
                raise _Malformed("each call must be an object")
            method = item.get("method")
            if method in ("batch", "leave"):
                raise _Malformed(f"a batch cannot contain a {method}")
            parsed.append(_call(method, item.get("params", {})))
        except _Malformed as malformed:
            parsed.append(CallError(code=PipeCode.MALFORMED_REQUEST, message=str(malformed)))
        except PipeFrameError as refused:
            parsed.append(CallError(code=refused.code or PipeCode.MALFORMED_REQUEST, message=refused.message))
    return Batch(calls=parsed)


_CALLS: dict[str, Callable[[dict[str, Any]], PipeCall]] = {
    "subscribe": lambda p: SubscribeEvents(events=_event_types(p)),
    "unsubscribe": lambda p: UnsubscribeEvents(events=_event_types(p)),
    "send_to_socket": lambda p: prechecked.send_to_socket(
        _names(p, "socket_ids", "socket_id"), _str(p, "event"), _text(p.get("data", "")), _opt_str(p, "channel")
    ),
    "send_to_channel": lambda p: SendToChannel(
        channels=_names(p, "channels", "channel"),
        event=_str(p, "event"),
        data=_text(p.get("data", "")),
        # 'socketId' is how the ActionScript port of the 2011 client spells it.
        exclude=_opt_str(p, "socket_id") if "socket_id" in p else _opt_str(p, "socketId"),
    ),
    "disconnect_socket": _disconnect,
    "terminate_user": lambda p: TerminateUser(user_id=_str(p, "user_id")),
    "auth_response": _auth_response,
    "ack": _ack,
    "batch": _batch,
    "ping": lambda p: PingCall(),
    "leave": lambda p: Leave(),
}


def _call(method: Any, params: Any) -> PipeCall:
    if not isinstance(method, str):
        raise _Malformed("method must be a string")
    parse = _CALLS.get(method)
    if parse is None:
        raise PipeFrameError(PipeCode.UNKNOWN_METHOD, f"unknown method {method!r}")
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise _Malformed("params must be an object")
    try:
        return parse(params)
    except (TypeError, ValueError) as exc:
        raise _Malformed(str(exc)) from None


def decode_request(text: str | bytes) -> Request:
    """Read one request frame from a pipe.

    Raises:
        PipeFrameError: the frame is not JSON (4220), has no method (4220),
            names an unknown method (4221) or has malformed params (4220).
            ``request_id`` tells whether to reply or to notify.
    """
    try:
        frame = jsontext.loads(text)
    except ValueError as exc:
        raise PipeFrameError(PipeCode.MALFORMED_REQUEST, f"frame is not JSON: {exc}") from None
    if not isinstance(frame, dict):
        raise PipeFrameError(PipeCode.MALFORMED_REQUEST, "frame must be a JSON object")
    request_id = frame.get("id")
    if isinstance(request_id, bool) or not isinstance(request_id, (str, int, float, type(None))):
        raise PipeFrameError(PipeCode.MALFORMED_REQUEST, "id must be a string, a number or null")
    if "method" not in frame:
        raise PipeFrameError(PipeCode.MALFORMED_REQUEST, "request has no method", request_id)
    try:
        call = _call(frame["method"], frame.get("params", {}))
    except _Malformed as malformed:
        raise PipeFrameError(PipeCode.MALFORMED_REQUEST, str(malformed), request_id) from None
    except PipeFrameError as refused:
        refused.request_id = request_id
        raise
    return Request(id=request_id, call=call)


def encode_request(request: Request, *, legacy_data: bool = False) -> str:
    """Write a request (client side).

    ``legacy_data`` adds ``"data": ""`` to params without data, as the 2011
    client does.
    """
    params = _call_params(request.call)
    if legacy_data and "data" not in params:
        params["data"] = ""
    return _dumps({"id": request.id, "method": request.call.method, "params": params})


def encode_call(call: PipeCall) -> str:
    """Write a call as one item of a ``batch``: ``{"method": ..., "params": ...}`` (client side)."""
    if type(call) is SendToSocket and call.channel is None and len(call.socket_ids) == 1:
        # A backend's usual answer, written without the dict: the text the
        # general path below writes for it, at a third of the cost.
        return (
            '{"method":"send_to_socket","params":{"event":' + _dumps(call.event) + ',"data":'
            + _dumps(call.data) + ',"socket_id":' + _dumps(call.socket_ids[0]) + "}}"
        )
    return _dumps({"method": call.method, "params": _call_params(call)})


def _call_params(call: PipeCall) -> dict[str, Any]:
    if isinstance(call, (SubscribeEvents, UnsubscribeEvents)):
        return {"events": list(call.events)}
    if isinstance(call, SendToSocket):
        p: dict[str, Any] = {"event": call.event, "data": call.data}
        if len(call.socket_ids) == 1:
            p["socket_id"] = call.socket_ids[0]
        else:
            p["socket_ids"] = list(call.socket_ids)
        if call.channel is not None:
            p["channel"] = call.channel
        return p
    if isinstance(call, SendToChannel):
        p = {"event": call.event, "data": call.data, "socket_id": call.exclude}
        if len(call.channels) == 1:
            p["channel"] = call.channels[0]
        else:
            p["channels"] = list(call.channels)
        return p
    if isinstance(call, DisconnectSocket):
        return {"socket_id": call.socket_id, "code": call.code, "reason": call.reason}
    if isinstance(call, TerminateUser):
        return {"user_id": call.user_id}
    if isinstance(call, AuthResponse):
        p = {"request_id": call.request_id, "allow": call.allow}
        for key in ("channel_data", "user_data", "reason"):
            if getattr(call, key) is not None:
                p[key] = getattr(call, key)
        return p
    if isinstance(call, Ack):
        return {"seq": call.seq}
    if isinstance(call, Batch):
        return {
            "calls": [
                {"method": c.method, "params": _call_params(c)}
                for c in call.calls
                if isinstance(c, PipeCall)
            ]
        }
    return {}


# ------------------------------------------------------- relay to pipe


def encode_reply(reply: Reply | ErrorReply) -> str:
    """Write a reply to a request."""
    if isinstance(reply, ErrorReply):
        error = {"code": reply.code, "message": reply.message}
        return _dumps({"id": reply.id, "error": error, "result": None})
    return _dumps({"id": reply.id, "error": None, "result": reply.result})


def encode_error_notification(code: int, message: str) -> str:
    """Write an error notification (``id`` null)."""
    return _dumps({"id": None, "error": {"code": code, "message": message}, "result": None})


def notice_data(notice: Notice, version: str) -> Any:
    """The ``data`` of a notification as a pipe of ``version`` receives it.

    0.2 pipes get exactly the 2011 fields; 1.0 adds the rest
    (pipe-protocol.md 3).
    """
    modern = version != "0.2"
    if isinstance(notice, Established):
        if not modern:
            return {"socket_id": notice.socket_id}
        return {
            "socket_id": notice.socket_id,
            "session": notice.session,
            "resumed": notice.resumed,
            "gap": notice.gap,
            "heartbeat": notice.heartbeat,
            "protocol_version": notice.protocol_version,
        }
    if isinstance(notice, SocketOpened):
        if not modern:
            return {"socket_id": notice.socket_id}
        return {
            "socket_id": notice.socket_id,
            "remote_addr": notice.remote_addr,
            "origin": notice.origin,
            "user_agent": notice.user_agent,
            "query": notice.query or {},
            "headers": notice.headers or {},
        }
    if isinstance(notice, SocketClosed):
        if not modern:
            return {"socket_id": notice.socket_id}
        return {"socket_id": notice.socket_id, "code": notice.code, "reason": notice.reason}
    if isinstance(notice, SocketMessage):
        data = {"socket_id": notice.socket_id, "event": notice.name, "data": notice.data}
        # The 2011 client routes on the presence of the key, so only when set.
        if notice.channel is not None:
            data["channel"] = notice.channel
        if notice.user_id is not None:
            data["user_id"] = notice.user_id
        return data
    if isinstance(notice, (ChannelOccupied, ChannelVacated)):
        return {"channel": notice.channel}
    if isinstance(notice, MemberAdded):
        return {"channel": notice.channel, "user_id": notice.user_id, "user_info": notice.user_info}
    if isinstance(notice, MemberRemoved):
        return {"channel": notice.channel, "user_id": notice.user_id}
    if isinstance(notice, AuthRequest):
        data = {
            "request_id": notice.request_id,
            "socket_id": notice.socket_id,
            "kind": notice.kind,
            "socket": notice.socket,
        }
        if notice.channel is not None:
            data["channel"] = notice.channel
        return data
    if isinstance(notice, Gap):
        return {"dropped": notice.dropped}
    if isinstance(notice, WarningNotice):
        return notice.data
    raise TypeError(f"not a notice: {notice!r}")


def encode_notification(notification: Notification, version: str) -> str:
    """Write a notification for a pipe speaking ``version``."""
    result: dict[str, Any] = {
        "event": notification.notice.event,
        "data": notice_data(notification.notice, version),
    }
    if version != "0.2":
        if notification.seq is not None:
            result["seq"] = notification.seq
        if notification.time_ms is not None:
            result["time_ms"] = notification.time_ms
        if notification.redelivered:
            result["redelivered"] = True
    return _dumps({"id": None, "error": None, "result": result})


# ------------------------------------------------------- client side


def _or_empty(user_id: str | int | None) -> str | int:
    """A presence user id as sent (``0`` included), ``""`` when missing."""
    return "" if user_id is None else user_id


def _typed(d: dict[str, Any], key: str, kind: type | tuple[type, ...] = str) -> Any:
    """``d[key]`` if it is of ``kind`` (never a bool), else None."""
    value = d.get(key)
    if isinstance(value, bool) or not isinstance(value, kind):
        return None
    return value


def _notice(event: str, data: Any) -> Notice:
    d = data if isinstance(data, dict) else {}
    if event == "socket_message":  # the usual notification: first
        return prechecked.socket_message(
            _typed(d, "socket_id") or "", _typed(d, "event") or "", d.get("data"), _typed(d, "channel"),
            _typed(d, "user_id"),
        )
    if event == "connection_established":
        return Established(
            socket_id=_typed(d, "socket_id") or "",
            session=_typed(d, "session"),
            resumed=d.get("resumed") is True,
            gap=_typed(d, "gap", int) or 0,
            heartbeat=_typed(d, "heartbeat", (int, float)),
            protocol_version=_typed(d, "protocol_version") or "0.2",
        )
    if event == "socket_opened":
        return SocketOpened(
            socket_id=_typed(d, "socket_id") or "",
            remote_addr=_typed(d, "remote_addr"),
            origin=_typed(d, "origin"),
            user_agent=_typed(d, "user_agent"),
            query=_typed(d, "query", dict),
            headers=_typed(d, "headers", dict),
        )
    if event == "socket_closed":
        return SocketClosed(
            socket_id=_typed(d, "socket_id") or "", code=_typed(d, "code", int), reason=_typed(d, "reason")
        )
    if event == "channel_occupied":
        return ChannelOccupied(channel=_typed(d, "channel") or "")
    if event == "channel_vacated":
        return ChannelVacated(channel=_typed(d, "channel") or "")
    if event == "member_added":
        return MemberAdded(
            channel=_typed(d, "channel") or "", user_id=_or_empty(_typed(d, "user_id", (str, int))),
            user_info=d.get("user_info"),
        )
    if event == "member_removed":
        return MemberRemoved(channel=_typed(d, "channel") or "", user_id=_or_empty(_typed(d, "user_id", (str, int))))
    if event == "auth_request":
        return AuthRequest(
            request_id=_typed(d, "request_id") or "",
            socket_id=_typed(d, "socket_id") or "",
            kind=_typed(d, "kind") or "",
            channel=_typed(d, "channel"),
            socket=_typed(d, "socket", dict) or {},
        )
    if event == "gap":
        return Gap(dropped=_typed(d, "dropped", int) or 0)
    return WarningNotice(data=data)


def decode_server_frame(text: str | bytes) -> Reply | ErrorReply | Notification | ErrorNotification:
    """Read one frame from the relay (client side).

    Raises:
        RemoteProtocolError: the frame lacks ``id``, ``error`` or ``result``,
            or is not JSON (the 2011 client's rule).
    """
    try:
        frame = jsontext.loads(text)
    except ValueError as exc:
        raise RemoteProtocolError(f"frame is not JSON: {exc}") from None
    if not isinstance(frame, dict) or not {"id", "error", "result"} <= frame.keys():
        raise RemoteProtocolError("frame must have id, error and result")
    if isinstance(frame["id"], bool) or not isinstance(frame["id"], (str, int, float, type(None))):
        raise RemoteProtocolError("id must be a string, a number or null")
    error = frame["error"]
    if error is not None:
        if not isinstance(error, dict):
            raise RemoteProtocolError("error must be an object or null")
        code = error.get("code")
        code = code if isinstance(code, int) and not isinstance(code, bool) else 0
        message = str(error.get("message", ""))
        if frame["id"] is None:
            return ErrorNotification(code=code, message=message)
        return ErrorReply(id=frame["id"], code=code, message=message)
    if frame["id"] is not None:
        return Reply(id=frame["id"], result=frame["result"])
    result = frame["result"]
    if not isinstance(result, dict) or not isinstance(result.get("event"), str):
        raise RemoteProtocolError("a notification needs result.event")
    seq = result.get("seq")
    time_ms = result.get("time_ms")
    return prechecked.notification(
        _notice(result["event"], result.get("data")),
        seq if isinstance(seq, int) and not isinstance(seq, bool) else None,
        time_ms if isinstance(time_ms, int) and not isinstance(time_ms, bool) else None,
        result.get("redelivered") is True,
    )
