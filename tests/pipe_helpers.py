"""Driving pipes and sockets against a bare Relay (no I/O) in tests."""

from __future__ import annotations

import json
from typing import Any

from pipe_proto import App, Relay, Send
from pipe_proto.pipe import PipeAccepted, pipe_url
from pipe_proto.relay.outputs import Output
from pipe_proto.routes import split_target

APP = App(id="1", key="app-key", secret="app-secret")
T0 = 1_700_000_000.0


def pipe_query(app: App = APP, now: float = T0, **params: Any) -> dict[str, str]:
    """The query of a correctly signed pipe URL."""
    url = pipe_url("ws://x", app_id=app.id, key=app.key, secret=app.secret, now=now, **params)
    return split_target(url.split("ws://x", 1)[1])[1]


def texts_for(outputs: list[Output], target: str) -> list[str]:
    """The texts sent to ``target`` by these outputs, in order."""
    return [o.text for o in outputs if isinstance(o, Send) and target in o.targets]


def frames_for(outputs: list[Output], target: str) -> list[dict[str, Any]]:
    """The JSON frames sent to ``target``."""
    return [json.loads(t) for t in texts_for(outputs, target)]


def notices(outputs: list[Output], pipe_id: str) -> list[dict[str, Any]]:
    """The ``result`` of every notification sent to a pipe."""
    return [f["result"] for f in frames_for(outputs, pipe_id) if f.get("id") is None and f.get("result")]


class Harness:
    """A relay plus helpers to open pipes and sockets and exchange frames."""

    def __init__(self, apps: list[App] | None = None, now: float = T0) -> None:
        self.relay = Relay(apps or [APP])
        self.now = now
        self.nonce = 0
        self.requests = 0

    def tick(self, seconds: float = 0.0) -> list[Output]:
        self.now += seconds
        return self.relay.tick(self.now)

    def open_pipe(self, app: App = APP, **params: Any) -> tuple[str, list[Output]]:
        decision = self.relay.pipe_handshake(app.id, pipe_query(app, self.now, **params), self.now)
        assert isinstance(decision, PipeAccepted), decision
        self.nonce += 1
        return self.relay.open_pipe(decision, self.now, nonce=self.nonce)

    def call(self, pipe_id: str, method: str, params: dict[str, Any] | None = None, *, reply: bool = True) -> tuple[Any, list[Output]]:
        """Send a request; returns (the reply frame or None, all outputs)."""
        self.requests += 1
        request_id = f"r{self.requests}" if reply else None
        frame = {"id": request_id, "method": method, "params": params or {}}
        outputs = self.relay.pipe_message(pipe_id, json.dumps(frame), self.now)
        if request_id is None:
            return None, outputs
        replies = [f for f in frames_for(outputs, pipe_id) if f.get("id") == request_id]
        assert len(replies) == 1, outputs
        return replies[0], outputs

    def open_socket(self, key: str = "app-key") -> tuple[str, list[Output]]:
        self.nonce += 1
        return self.relay.open_socket(key, {"protocol": "7"}, self.now, nonce=self.nonce)

    def socket_send(self, socket_id: str, event: str, data: Any = None, channel: str | None = None) -> list[Output]:
        frame: dict[str, Any] = {"event": event, "data": data}
        if channel is not None:
            frame["channel"] = channel
        return self.relay.socket_message(socket_id, json.dumps(frame), self.now)
