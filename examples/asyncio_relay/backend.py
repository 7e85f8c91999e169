"""A backend on asyncio: the Pipe client core of pipe_proto over asyncio streams and wsproto.

    python examples/asyncio_relay/backend.py [ws://127.0.0.1:6001] [--app ID:KEY:SECRET]

It does what the quickstart's backend does: prints every new socket, and
answers each back-channel ``eventFromBrowser`` with ``acknowledge``
``{"message": "Rodger"}`` to that socket. The protocol is
:class:`~pipe_proto.pipe.client.PipeClientConnection`'s: the signed URL, what
to send on a fresh session (``Incoming.send``), replays filtered, acks,
heartbeat pings; this file moves its frames. One connection, no reconnection
(``pipe_trio.open_pipe`` reconnects and resumes).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
from collections.abc import Callable
from urllib.parse import urlsplit

from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, CloseConnection, Ping, RejectConnection, Request, TextMessage

from pipe_proto.jsontext import dumps
from pipe_proto.pipe import SendToSocket, SocketMessage, SocketOpened, pipe_url
from pipe_proto.pipe.client import PipeClientConnection


async def run(base: str, app_id: str, key: str, secret: str) -> None:
    core = PipeClientConnection(events=["socket_existence", "socket_message"])
    core.connecting(time.monotonic())
    url = urlsplit(pipe_url(base, app_id=app_id, key=key, secret=secret, now=time.time()))
    reader, writer = await asyncio.open_connection(url.hostname, url.port or 80)
    ws = WSConnection(ConnectionType.CLIENT)

    def send(text: str) -> None:
        writer.write(ws.send(TextMessage(data=text)))

    writer.write(ws.send(Request(host=url.netloc, target=f"{url.path}?{url.query}")))
    parts: list[str] = []
    while True:
        try:
            data = await asyncio.wait_for(reader.read(65536), max(core.deadline() - time.monotonic(), 0.0))
        except TimeoutError:
            due = core.tick(time.monotonic())  # a ping to send, or True: the relay went silent
            if due is True:
                return
            if isinstance(due, str):
                send(due)
            continue
        ws.receive_data(data or None)
        for event in ws.events():
            if isinstance(event, RejectConnection):
                raise SystemExit(f"the relay refused the pipe: {event.status_code}")
            if isinstance(event, AcceptConnection):
                continue
            if isinstance(event, Ping):
                writer.write(ws.send(event.response()))
            elif isinstance(event, CloseConnection):
                writer.write(ws.send(event.response()))
                return
            elif isinstance(event, TextMessage):
                parts.append(event.data)
                if event.message_finished:
                    text, parts = "".join(parts), []
                    handle(core, text, send)
        if not data:
            return
        await writer.drain()


def handle(core: PipeClientConnection, text: str, send: Callable[[str], None]) -> None:
    """One frame from the relay: what the core says to send, then the application's part."""
    for item in core.receive(text, time.monotonic()):
        if item.send is not None:
            send(item.send)  # the subscribe of a fresh session
        if item.established is not None:
            print(f"pipe connected as {item.established.socket_id}", flush=True)
            continue
        if item.notification is None:
            continue
        notice = item.notification.notice
        if isinstance(notice, SocketOpened):
            print(f"new socket: {notice.socket_id}", flush=True)
        elif isinstance(notice, SocketMessage) and notice.name == "eventFromBrowser":
            print(f"{notice.socket_id} sent eventFromBrowser {dumps(notice.data)}", flush=True)
            answer = SendToSocket(socket_ids=[notice.socket_id], event="acknowledge", data=dumps({"message": "Rodger"}))
            send(core.request(answer, reply=False)[1])
        core.processed(item.notification.seq)
        ack = core.take_ack(force=True)
        if ack is not None:
            send(ack)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", nargs="?", default="ws://127.0.0.1:6001")
    parser.add_argument("--app", default="1:demo-key:demo-secret", help="ID:KEY:SECRET")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run(args.url, *args.app.split(":")))


if __name__ == "__main__":
    main()
