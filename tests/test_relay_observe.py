"""What the console is shown of a pipe's call (pipe_proto.relay.observe.observe_pipe_call)."""

from __future__ import annotations

from pipe_proto.pipe import events as ev
from pipe_proto.relay.observe import Observed, observe_pipe_call


def shown(call: ev.PipeCall) -> list[tuple[str | None, str | None, str | None, dict[str, object]]]:
    seen = observe_pipe_call("p1", call)
    assert all(isinstance(s, Observed) and s.type == "pipe_request" and s.socket_id == "p1" for s in seen)
    return [(s.channel, s.event, s.data, dict(s.details or {})) for s in seen]


def test_sends_show_their_channels_sockets_and_data() -> None:
    """send_to_channel: one happening per channel (with its exclude); send_to_socket: one, naming the sockets."""
    assert shown(ev.SendToChannel(channels=("a", "b"), event="e", data="d", exclude="1.2")) == [
        ("a", "send_to_channel", "d", {"event": "e", "exclude": "1.2"}),
        ("b", "send_to_channel", "d", {"event": "e", "exclude": "1.2"}),
    ]
    assert shown(ev.SendToChannel(channels=("a",), event="e", data="d")) == [("a", "send_to_channel", "d", {"event": "e"})]
    assert shown(ev.SendToSocket(socket_ids=("1.2", "3.4"), event="e", data="d", channel="c")) == [
        ("c", "send_to_socket", "d", {"event": "e", "socket_ids": ["1.2", "3.4"]})
    ]


def test_other_calls_show_their_parameters_and_acks_and_pings_nothing() -> None:
    """Each method with what identifies it; a batch is its calls; ack and ping are not shown."""
    assert shown(ev.DisconnectSocket(socket_id="1.2", code=4009, reason="bye")) == [
        (None, "disconnect_socket", None, {"socket_id": "1.2", "code": 4009, "reason": "bye"})
    ]
    assert shown(ev.TerminateUser(user_id="u")) == [(None, "terminate_user", None, {"user_id": "u"})]
    assert shown(ev.AuthResponse(request_id="r", allow=False, reason="no")) == [
        (None, "auth_response", None, {"request_id": "r", "allow": False, "reason": "no"})
    ]
    assert shown(ev.AuthResponse(request_id="r", allow=True)) == [
        (None, "auth_response", None, {"request_id": "r", "allow": True})
    ]
    assert shown(ev.SubscribeEvents(events=("socket_message",))) == [
        (None, "subscribe", None, {"events": ["socket_message"]})
    ]
    assert shown(ev.UnsubscribeEvents(events=("presence",))) == [(None, "unsubscribe", None, {"events": ["presence"]})]
    assert shown(ev.Leave()) == [(None, "leave", None, {})]
    assert shown(ev.Ack(seq=3)) == [] and shown(ev.PingCall()) == []
    batch = ev.Batch(calls=(ev.Ack(seq=1), ev.TerminateUser(user_id="u"), ev.CallError(code=4000, message="bad")))
    assert shown(batch) == [(None, "terminate_user", None, {"user_id": "u"})]
