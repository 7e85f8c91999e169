"""The Relay facade: transactional outputs, and a bug on one connection closing only that one with 1011."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest

from pipe_proto import App, Close, Failure, Relay, Send
from pipe_proto.pipe.handshake import PipeAccepted, pipe_url
from tests.support import pure_core_only

APP = App(id="1", key="key", secret="secret")


def _open(relay: Relay, nonce: int) -> str:
    socket_id, out = relay.open_socket("key", {"protocol": "7"}, 0.0, nonce=nonce)
    assert [type(o) for o in out] == [Send]
    return socket_id


def _subscribe(channel: str) -> str:
    return json.dumps({"event": "pusher:subscribe", "data": {"channel": channel}})


class Boom(Exception):
    """The bug the tests plant."""


def _planted(relay: Relay, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make joining a channel queue a frame for everyone, then raise."""
    channels = relay._channels

    def join(sock: Any, name: str, member: Any, now: float) -> None:
        relay._core.out.append(Send(tuple(relay._core.sockets), "half-built"))
        raise Boom(name)

    monkeypatch.setattr(channels, "join", join)


@pure_core_only
def test_a_raise_returns_nothing_it_queued_and_closes_that_socket_1011(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing queued by the failing input leaks; its socket gets a Failure and a 1011 close and is forgotten."""
    relay = Relay([APP])
    bystander = _open(relay, 1)
    victim = _open(relay, 2)
    assert relay.socket_message(bystander, _subscribe("news"), 0.0)
    _planted(relay, monkeypatch)
    out = relay.socket_message(victim, _subscribe("sports"), 0.0)
    assert [type(o) for o in out] == [Failure, Close]
    failure, close = out
    assert isinstance(failure, Failure) and failure.target == victim and isinstance(failure.error, Boom)
    assert isinstance(close, Close) and (close.target, close.code) == (victim, 1011)
    assert relay.stats()["sockets"] == 1
    # The next, unrelated call returns only its own outputs.
    published = relay.publish("1", ["news"], "e", "{}", None, 0.0)
    assert published == [Send((bystander,), '{"event":"e","channel":"news","data":"{}"}')]
    assert relay.socket_message(victim, _subscribe("news"), 0.0) == []


@pure_core_only
def test_a_raise_on_a_pipe_closes_that_pipe_1011(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug while executing a pipe's request closes that pipe with 1011 and keeps its session for a resume."""
    relay = Relay([APP])
    url = pipe_url("ws://relay", app_id=APP.id, key=APP.key, secret=APP.secret, now=0.0)
    parts = urlsplit(url)
    decision = relay.pipe_handshake(APP.id, dict(parse_qsl(parts.query)), 0.0)
    assert isinstance(decision, PipeAccepted)
    pipe_id, _ = relay.open_pipe(decision, 0.0, nonce=7)

    def execute(*args: Any) -> Any:
        relay._core.out.append(Send((pipe_id,), "half-built"))
        raise Boom("execute")

    monkeypatch.setattr(relay._pipes, "_execute", execute)
    out = relay.pipe_message(pipe_id, json.dumps({"id": 1, "method": "ping", "params": {}}), 1.0)
    assert [type(o) for o in out] == [Failure, Close]
    assert out[1] == Close(pipe_id, 1011, "Internal error")
    assert relay.stats()["pipes"] == 0
    assert relay.stats()["apps"]["1"]["pipe"]["groups"]["default"]["sessions"] == 1
