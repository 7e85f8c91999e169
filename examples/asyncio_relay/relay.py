"""pipe-relay on asyncio: the sans-I/O core driven, unchanged, by asyncio streams, h11 and wsproto.

    python examples/asyncio_relay/relay.py [--host 127.0.0.1] [--port 6001] [--app ID:KEY:SECRET]

One port, as with ``pipe-relay serve``: pusher-js connects on ``/app/{key}``,
a backend's pipe on ``/app/{app_id}?...signed`` (``backend.py`` beside this
file), the Pusher SDKs post to ``/apps/{app_id}/...``. Everything the relay
decides comes from ``pipe_proto``; this file only moves bytes:

* a request is read with h11; ``pipe_proto.routes.route`` says where it goes;
* REST: ``pipe_proto.rest.handle`` answers (status, body, outputs);
* an upgrade: ``Relay.pipe_handshake`` may refuse a pipe (HTTP status and
  message); otherwise the 101 goes out and wsproto frames the connection, whose
  text messages go to ``Relay.socket_message`` / ``Relay.pipe_message``;
* the outputs (``Send``, ``Close``, ``Probe``) are carried out in order, and
  ``Relay.tick`` runs at ``Relay.next_deadline()``.

Limits: a request head of 64 KiB, a REST body of ``MAX_BODY_BYTES`` (413),
messages of ``MAX_MESSAGE`` characters (the relay is told; it closes a pipe
with 1009 and answers a socket with an error), ``MAX_QUEUED`` bytes written
and not yet taken by a peer (then the connection is cut and the relay told it
was a slow consumer). Left out for
brevity: webhooks, TLS, the status page, a cluster (see ``pipe_trio`` for all
of them).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import secrets
import time
from typing import Any

import h11
from wsproto.connection import Connection, ConnectionState, ConnectionType
from wsproto.events import CloseConnection, Event, Ping, Pong, TextMessage
from wsproto.utilities import generate_accept_token

from pipe_proto import App, Close, Failure, Output, Probe, Relay, Send
from pipe_proto.pipe import PipeAccepted, PipeRefused
from pipe_proto.rest import MAX_BODY_BYTES, RestResponse, handle
from pipe_proto.routes import RouteKind, route

log = logging.getLogger("asyncio_relay")

MAX_MESSAGE = 1024 * 1024
MAX_QUEUED = 4 * 1024 * 1024
READ_SIZE = 65536


class Peer:
    """One open WebSocket: its framing state and where its bytes go."""

    def __init__(self, ws: Connection, writer: asyncio.StreamWriter) -> None:
        self.ws = ws
        self.writer = writer


class AsyncioRelay:
    """A :class:`~pipe_proto.Relay` and the connections it talks to."""

    def __init__(self, apps: list[App]) -> None:
        self.relay = Relay(apps)
        self.peers: dict[str, Peer] = {}
        self.wake = asyncio.Event()

    @staticmethod
    def now() -> float:
        return time.time()  # REST and pipe signatures carry wall-clock timestamps

    def feed(self, outputs: list[Output]) -> None:
        """Carry out what an input produced; its deadlines may be sooner than the timer knows."""
        self.carry(outputs)
        self.wake.set()

    def carry(self, outputs: list[Output]) -> None:
        for output in outputs:
            if isinstance(output, Send):
                for target in output.targets:
                    self.write(target, TextMessage(data=output.text))
            elif isinstance(output, Close):
                peer = self.peers.pop(output.target, None)  # the relay has forgotten it already
                if peer is not None and peer.ws.state is ConnectionState.OPEN:
                    peer.writer.write(peer.ws.send(CloseConnection(code=output.code, reason=output.reason)))
                    peer.writer.close()
            elif isinstance(output, Probe):
                self.write(output.target, Ping())
            elif isinstance(output, Failure):
                log.error("relay failure on %s", output.target, exc_info=output.error)
            # WebhookEvent and ClusterCall: this example has no webhooks and no cluster.

    def write(self, conn_id: str, event: Event) -> None:
        peer = self.peers.get(conn_id)
        if peer is None or peer.ws.state is not ConnectionState.OPEN:
            return
        peer.writer.write(peer.ws.send(event))
        if peer.writer.transport.get_write_buffer_size() > MAX_QUEUED:
            # asyncio cannot drop what is queued without cutting the connection: cut it,
            # and let the relay forget it (what it answers for this peer goes nowhere).
            del self.peers[conn_id]
            peer.writer.transport.abort()
            self.carry(self.relay.slow_consumer(conn_id, self.now()))

    async def timers(self) -> None:
        while True:
            self.wake.clear()
            delay = min(self.relay.next_deadline() - self.now(), 60.0)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), max(delay, 0.0))
            self.carry(self.relay.tick(self.now()))

    # ---------------------------------------------------------------- HTTP

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        http = h11.Connection(h11.SERVER, max_incomplete_event_size=64 * 1024)
        try:
            request = await next_event(reader, http)
            if not isinstance(request, h11.Request):
                return
            headers = {name.lower(): value for name, value in request.headers}
            upgrade = headers.get(b"upgrade", b"").lower() == b"websocket"
            found = route(request.method.decode(), request.target.decode("ascii", "replace"), upgrade=upgrade)
            if found.kind is RouteKind.REST:
                await self.rest(reader, writer, http, request.method.decode(), found.path, found.query)
            elif upgrade:
                await self.upgrade(reader, writer, http, headers, found.kind, found.name, found.query)
            else:
                respond(writer, http, 404, {"error": "not found"})
        except (h11.ProtocolError, ConnectionError):
            pass
        finally:
            writer.close()

    async def rest(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, http: h11.Connection,
        method: str, path: str, query: dict[str, str],
    ) -> None:
        body = b""
        while isinstance(event := await next_event(reader, http), h11.Data):
            body += event.data
            if len(body) > MAX_BODY_BYTES:
                respond(writer, http, 413, {"error": "body too large"})
                return
        if isinstance(event, h11.EndOfMessage):
            answer = handle(self.relay, method, path, query, body, self.now())
            assert isinstance(answer, RestResponse)  # one relay alone answers at once
            self.feed(answer.outputs)
            respond(writer, http, answer.status, answer.body)

    async def upgrade(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, http: h11.Connection,
        headers: dict[bytes, bytes], kind: RouteKind, name: str, query: dict[str, str],
    ) -> None:
        accepted: PipeAccepted | None = None
        if kind is RouteKind.PIPE:
            decision = self.relay.pipe_handshake(name, query, self.now())
            if isinstance(decision, PipeRefused):
                respond(writer, http, decision.status, {"error": decision.message})
                return
            accepted = decision
        key = headers.get(b"sec-websocket-key")
        if key is None or headers.get(b"sec-websocket-version") != b"13":
            respond(writer, http, 400, {"error": "not a WebSocket handshake"})
            return
        token = generate_accept_token(key)
        accept = [(b"upgrade", b"websocket"), (b"connection", b"Upgrade"), (b"sec-websocket-accept", token)]
        writer.write(http.send(h11.InformationalResponse(status_code=101, headers=accept)) or b"")
        ws = Connection(ConnectionType.SERVER, trailing_data=http.trailing_data[0])
        nonce = secrets.randbits(40)
        if accepted is not None:
            conn_id, outputs = self.relay.open_pipe(accepted, self.now(), nonce=nonce)
        else:
            app_key = name if kind is RouteKind.SOCKET else None  # elsewhere: accepted, then closed with 4005
            conn_id, outputs = self.relay.open_socket(app_key, query, self.now(), nonce=nonce)
        self.peers[conn_id] = Peer(ws, writer)
        self.feed(outputs)  # may refuse the socket already: an error frame, then the close
        await self.websocket(conn_id, accepted is not None, reader, ws)

    # ----------------------------------------------------------- WebSocket

    async def websocket(self, conn_id: str, pipe: bool, reader: asyncio.StreamReader, ws: Connection) -> None:
        parts: list[str] = []
        size, dropping = 0, False
        code: int | None = None
        reason: str | None = None
        try:
            while ws.state is ConnectionState.OPEN and conn_id in self.peers:
                data = await reader.read(READ_SIZE)
                ws.receive_data(data or None)
                for event in ws.events():
                    now = self.now()
                    if isinstance(event, TextMessage):
                        if not dropping:
                            parts.append(event.data)
                            size += len(event.data)
                            if size > MAX_MESSAGE:  # tell the relay once, keep none of it
                                dropping, parts = True, []
                                self.feed(self.relay.pipe_oversized(conn_id, now) if pipe
                                          else self.relay.socket_oversized(conn_id, size))
                        if event.message_finished:
                            if not dropping:
                                text = "".join(parts)
                                self.feed(self.relay.pipe_message(conn_id, text, now) if pipe
                                          else self.relay.socket_message(conn_id, text, now))
                            parts, size, dropping = [], 0, False
                    elif isinstance(event, (Ping, Pong)):
                        if isinstance(event, Ping):
                            self.write(conn_id, event.response())
                        if pipe:
                            self.relay.pipe_heard(conn_id, now)
                        else:
                            self.relay.socket_heard(conn_id, now)
                    elif isinstance(event, CloseConnection):
                        code, reason = event.code, event.reason
                        self.write(conn_id, event.response())
                if not data:
                    break
        except ConnectionError:
            pass
        finally:
            if self.peers.pop(conn_id, None) is not None:  # closed from the far side: tell the relay
                now = self.now()
                self.feed(self.relay.pipe_closed(conn_id, now) if pipe
                          else self.relay.socket_closed(conn_id, now, code, reason))


async def next_event(reader: asyncio.StreamReader, http: h11.Connection) -> Any:
    while (event := http.next_event()) is h11.NEED_DATA:
        http.receive_data(await reader.read(READ_SIZE))
    return event


def respond(writer: asyncio.StreamWriter, http: h11.Connection, status: int, body: Any) -> None:
    data = json.dumps(body).encode()
    headers = [("content-type", "application/json"), ("content-length", str(len(data))), ("connection", "close")]
    writer.write(http.send(h11.Response(status_code=status, headers=headers)) or b"")
    writer.write(http.send(h11.Data(data=data)) or b"")
    writer.write(http.send(h11.EndOfMessage()) or b"")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=6001, help="0: any free port (printed)")
    parser.add_argument("--app", default="1:demo-key:demo-secret", help="ID:KEY:SECRET")
    args = parser.parse_args()
    app_id, key, secret = args.app.split(":")
    relay = AsyncioRelay([App(id=app_id, key=key, secret=secret)])
    server = await asyncio.start_server(relay.serve, args.host, args.port)
    port = server.sockets[0].getsockname()[1]
    print(f"asyncio relay listening on ws://{args.host}:{port}", flush=True)
    async with server:
        await asyncio.gather(server.serve_forever(), relay.timers())


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
