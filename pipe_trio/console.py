"""The debug console: a page, its sign-in, and a live feed of what happens to an app.

Off unless ``pipe-relay serve --console``. ``GET /console`` is the page
(``static/console.html``); it posts an app's key and secret to
``POST /console/token`` for a token (:func:`pipe_proto.console.sign_in`),
opens a WebSocket on ``/console/socket`` and sends the token as its first
message. From then on the watcher gets one JSON message per happening of the
app (:mod:`pipe_proto.relay.observe`, shaped by
:func:`pipe_proto.console.describe`), and once a second its numbers:
connections, channels, pipes, messages in and out per second.

Nobody watching costs nothing: an app gets an observer only while someone
watches it, and loses it with its last watcher. A watcher is a WebSocket like
any other, but one that cannot keep up never slows the relay nor grows its
memory: once ``WATCHER_BUFFER`` bytes wait for it, further messages are
dropped and counted, and the next one that fits is preceded by
``{"type": "dropped", "count": N}``.

In a cluster, or with ``--workers``, a console shows the node it reached.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from importlib import resources
from typing import TYPE_CHECKING, Any

import trio

from pipe_proto.console import check_token, describe, sign_in
from pipe_proto.relay.observe import Observed
from pipe_proto.upgrade import Upgraded

from ._websocket import WebSocket

if TYPE_CHECKING:
    from .server import RelayServer

__all__ = [
    "AUTH_TIMEOUT",
    "MAX_WATCHERS",
    "STATS_INTERVAL",
    "WATCHER_BUFFER",
    "Console",
]

log = logging.getLogger("pipe_trio")

#: Bytes that may wait for one watcher; beyond, messages are dropped and counted.
WATCHER_BUFFER = 512 * 1024
#: Console connections open at once (signed in or not); more are refused with 503.
MAX_WATCHERS = 32
#: Seconds a console connection has to send its token.
AUTH_TIMEOUT = 10.0
#: Seconds between two messages of numbers.
STATS_INTERVAL = 1.0


class _Watcher:
    __slots__ = ("app_id", "dropped", "frame", "ws")

    def __init__(self, ws: WebSocket, frame: Callable[[str], bytes]) -> None:
        self.ws = ws
        #: Makes a text frame (the transport's framing).
        self.frame = frame
        self.app_id: str | None = None
        self.dropped = 0

    def send(self, frame: bytes) -> None:
        """Queue ``frame`` unless too much waits already (then count it as dropped)."""
        ws = self.ws
        if ws.closing:
            return
        if ws.unwritten + len(frame) > WATCHER_BUFFER:
            self.dropped += 1
            return
        if self.dropped:
            ws.push(self.frame(json.dumps({"type": "dropped", "count": self.dropped})))
            self.dropped = 0
        ws.push(frame)


class Console:
    """The console of one server: its page, sign-ins and watchers."""

    def __init__(self, server: RelayServer) -> None:
        self.server = server
        self._conns: dict[str, _Watcher] = {}
        self._apps: dict[str, set[_Watcher]] = {}
        self._last: dict[str, tuple[int, int, float]] = {}
        self._count = 0
        self.side = _ConsoleSide(self)

    def _frame(self, text: str) -> bytes:
        return self.server.transport.framing.text(text)

    # --------------------------------------------------------------- HTTP

    @staticmethod
    def page() -> bytes:
        """The console's page."""
        return resources.files("pipe_trio").joinpath("static/console.html").read_bytes()

    def token(self, body: bytes) -> tuple[int, dict[str, Any]]:
        """Answer ``POST /console/token`` (a JSON body ``{"key", "secret"}``): status and JSON body."""
        try:
            given = json.loads(body)
        except ValueError:
            given = None
        if not isinstance(given, dict):
            return 400, {"error": 'The body must be JSON: {"key": ..., "secret": ...}'}
        status, answer = sign_in(self.server.relay.apps, given.get("key"), given.get("secret"), self.server.now())
        if status != 200:
            log.info("console sign-in refused", extra={"event": "console_refused"})
        return status, answer

    # ---------------------------------------------------------- WebSocket

    def has_room(self) -> bool:
        """Whether another console connection may open."""
        return len(self._conns) < MAX_WATCHERS

    def open(
        self, stream: trio.abc.Stream, upgraded: Upgraded, trailing: bytes
    ) -> tuple[WebSocket, _ConsoleSide, int]:
        """A console WebSocket was accepted: it has ``AUTH_TIMEOUT`` seconds to send its token."""
        server = self.server
        ws = server.transport.connection(stream, trailing, 2 * WATCHER_BUFFER)
        ws.push(upgraded.response)
        self._count += 1
        ws.id = f"console-{self._count}"
        watcher = self._conns[ws.id] = _Watcher(ws, self._frame)

        async def deadline() -> None:
            await trio.sleep(AUTH_TIMEOUT)
            if watcher.app_id is None and ws.id in self._conns:
                ws.close(4009, "No console token in time")
                server.writer.flush()

        server.writer.spawn(deadline)
        return ws, self.side, upgraded.max_message

    def _signed_in(self, watcher: _Watcher, text: str) -> None:
        server = self.server
        try:
            token = json.loads(text).get("token")
        except (ValueError, AttributeError):
            token = None
        app = check_token(server.relay.apps, token, server.now())
        if isinstance(app, str):
            watcher.ws.close(4009, app)
            return
        watcher.app_id = app.id
        watchers = self._apps.setdefault(app.id, set())
        if not watchers:
            # The app's first watcher: from now on its happenings are told.
            server.relay.observe(app.id, self._observer(app.id))
        watchers.add(watcher)
        node = getattr(server.relay.directory, "node", None)
        hello = {"type": "hello", "app_id": app.id, "name": app.name, "node": node}
        watcher.send(self._frame(json.dumps(hello)))
        state = server.relay.state_of(app.id)
        if state is not None:
            watcher.send(self._frame(json.dumps(self._numbers(app.id, state, rates=False))))
        log.info("console watching app %s", app.id, extra={"event": "console_opened", "app": app.id})

    def _observer(self, app_id: str) -> Any:
        watchers = self._apps[app_id]
        now = self.server.now

        def tell(seen: Observed) -> None:
            frame = self._frame(json.dumps(describe(seen, now())))
            for watcher in watchers:
                watcher.send(frame)

        return tell

    def _gone(self, conn_id: str) -> None:
        watcher = self._conns.pop(conn_id, None)
        if watcher is None or watcher.app_id is None:
            return
        watchers = self._apps.get(watcher.app_id)
        if watchers is None:
            return
        watchers.discard(watcher)
        if not watchers:
            # Its last watcher went: the app is told to nobody again.
            del self._apps[watcher.app_id]
            self._last.pop(watcher.app_id, None)
            if self.server.relay.state_of(watcher.app_id) is not None:
                self.server.relay.observe(watcher.app_id, None)

    def close_all(self) -> None:
        """Close every console connection (the relay is stopping)."""
        for watcher in list(self._conns.values()):
            watcher.ws.close(4200, "Server is shutting down")

    def watching(self, app_id: str) -> int:
        """How many watch ``app_id`` now."""
        return len(self._apps.get(app_id, ()))

    # ------------------------------------------------------------- numbers

    def _numbers(self, app_id: str, state: Any, *, rates: bool = True) -> dict[str, Any]:
        counts = state.counts
        received = counts.socket_messages_in + counts.pipe_messages_in + counts.rest_messages_in
        sent = counts.socket_messages_out + counts.pipe_messages_out
        now = self.server.now()
        last = self._last.get(app_id)
        self._last[app_id] = (received, sent, now)
        numbers: dict[str, Any] = {
            "type": "stats",
            "connections": state.socket_count,
            "channels": len(state.channels),
            "pipes": state.hub.pipe_count,
            "received_per_second": None,
            "sent_per_second": None,
        }
        if rates and last is not None and now > last[2]:
            numbers["received_per_second"] = round((received - last[0]) / (now - last[2]), 1)
            numbers["sent_per_second"] = round((sent - last[1]) / (now - last[2]), 1)
        return numbers

    async def run(self) -> None:
        """Send each watched app's numbers every ``STATS_INTERVAL`` seconds, until cancelled."""
        relay = self.server.relay
        while True:
            await trio.sleep(STATS_INTERVAL)
            for app_id, watchers in list(self._apps.items()):
                state = relay.state_of(app_id)
                if state is None:  # a reload removed the app
                    for watcher in list(watchers):
                        watcher.ws.close(4200, "The app is no longer served here")
                    continue
                frame = self._frame(json.dumps(self._numbers(app_id, state)))
                for watcher in watchers:
                    watcher.send(frame)
            self.server.writer.flush()


class _ConsoleSide:
    """A console connection's traffic: its token, then nothing (pings are answered by the WebSocket)."""

    __slots__ = ("console",)

    def __init__(self, console: Console) -> None:
        self.console = console

    def text(self, conn_id: str, text: str) -> None:
        watcher = self.console._conns.get(conn_id)
        if watcher is not None and watcher.app_id is None:
            self.console._signed_in(watcher, text)

    def heard(self, conn_id: str) -> None:
        """Pings need no answer here."""

    def oversized(self, conn_id: str, size: int) -> None:
        watcher = self.console._conns.get(conn_id)
        if watcher is not None:
            watcher.ws.close(1009, "Message too big")

    def slow(self, conn_id: str) -> None:
        """Pongs it does not read (its feed's frames are dropped past their own bound, never queued so far)."""
        watcher = self.console._conns.get(conn_id)
        if watcher is not None:
            watcher.ws.discard_queue()
            watcher.ws.close(4101, "Slow consumer")

    def closed(self, conn_id: str, code: int, reason: str) -> None:
        self.console._gone(conn_id)
