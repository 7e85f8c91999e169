"""The WebSocket upgrade on the relay's port: the handshake rules and the relay's answer.

An adapter that has read a request head asking for a WebSocket
(:func:`wants_websocket`) hands it to :func:`upgrade` and carries out the one
value it gets back:

* :class:`Refused`: answer the request with ``status``, ``headers`` and the
  JSON body ``{"error": message}``, then close the connection. The
  handshake rules of RFC 6455 4.2.1 come first: a request that is not an
  HTTP/1.1 ``GET``, lacks ``Connection: Upgrade`` or a ``Sec-WebSocket-Key``
  of 16 bytes in base64 (given once), is 400; a ``Sec-WebSocket-Version``
  other than 13 is 426 with ``Sec-WebSocket-Version: 13`` (RFC 6455 4.4).
  Then a pipe's signed URL is checked (400, 401, 403, 404:
  :func:`~pipe_proto.pipe.handshake.check_pipe_handshake`), and a relay that
  is stopping refuses every upgrade with 503.
* :class:`Upgraded`: send ``response`` (the 101, before any frame), name the
  connection ``conn_id``, and carry out ``outputs``; ``kind`` says whose
  entry points its traffic goes to and ``max_message`` bounds each message
  it may send. A socket the relay refuses at the Pusher level (unknown key,
  disabled app, bad ``protocol``, over quota, an unknown path: 4000-4008) is
  upgraded all the same, as pusher-js needs the code to stop retrying: its
  kind is :attr:`ConnectionKind.REFUSED`, ``outputs`` hold its
  ``pusher:error`` and its :class:`~pipe_proto.relay.outputs.Close`, and
  nothing it sends is read (``max_message`` 0).
* The debug console's feed, ``/console/socket``, when the console is served
  (``console``): :attr:`ConnectionKind.CONSOLE`, with no ``conn_id`` (the
  adapter names it) and :data:`CONSOLE_MAX_MESSAGE`; otherwise 404.

Header names are lower-case bytes, as h11 reports them. Nothing here raises
for anything a client can send: every request head gets one of the answers
above.
"""

from __future__ import annotations

import binascii
import hashlib
from base64 import b64encode
from collections.abc import Sequence
from enum import Enum
from typing import NamedTuple

from .pipe.handshake import PipeAccepted
from .relay.outputs import Close, Output
from .relay.relay import Relay
from .relay.state import SocketDetails
from .routes import Route, RouteKind, route

__all__ = [
    "CONSOLE_MAX_MESSAGE",
    "ConnectionKind",
    "Refused",
    "Upgraded",
    "accept_token",
    "check_handshake",
    "upgrade",
    "wants_websocket",
]

#: Largest message a console feed may send (its token).
CONSOLE_MAX_MESSAGE = 1024

# RFC 6455 1.3: appended to the client's key before hashing.
_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class ConnectionKind(Enum):
    """Whose entry points an upgraded connection's traffic goes to."""

    #: A Pusher socket: ``Relay.socket_message``, ``socket_heard``, ``socket_closed``...
    SOCKET = "socket"
    #: A pipe: ``Relay.pipe_message``, ``pipe_heard``, ``pipe_closed``...
    PIPE = "pipe"
    #: Refused at the Pusher level; the relay has forgotten it: nothing it
    #: sends is read, and its end need not be reported.
    REFUSED = "refused"
    #: A debug console's feed (``/console/socket``): the relay does not know
    #: it; the adapter names it and reads only its token.
    CONSOLE = "console"


class Refused(NamedTuple):
    """Answer the upgrade request with ``status`` and ``{"error": message}``, then close.

    ``headers`` are extra response headers (426 names the version it wants).
    ``route`` is where the request was going (None when the handshake itself
    was refused).
    """

    status: int
    message: str
    headers: tuple[tuple[str, str], ...] = ()
    route: Route | None = None

    @property
    def body(self) -> dict[str, str]:
        """The JSON body of the answer."""
        return {"error": self.message}


class Upgraded(NamedTuple):
    """Accept the upgrade: write ``response``, then carry out ``outputs`` for ``conn_id``.

    ``max_message``: the largest message (bytes of a text message) the
    connection may send; a larger one is discarded and reported to the
    relay (``socket_oversized``, ``pipe_oversized``). ``pipe``: what the
    relay accepted of a pipe's URL (``None`` for sockets).
    """

    conn_id: str
    kind: ConnectionKind
    response: bytes
    outputs: list[Output]
    max_message: int
    route: Route
    pipe: PipeAccepted | None = None


def wants_websocket(headers: Sequence[tuple[bytes, bytes]]) -> bool:
    """Whether a request asks for a WebSocket (``Upgrade: websocket``); it then goes to :func:`upgrade`."""
    for name, value in headers:
        if name == b"upgrade":
            return value.strip().lower() == b"websocket"
    return False


def accept_token(key: bytes) -> bytes:
    """The ``Sec-WebSocket-Accept`` value answering ``Sec-WebSocket-Key`` ``key`` (RFC 6455 4.2.2)."""
    return b64encode(hashlib.sha1(key + _GUID, usedforsecurity=False).digest())


_BAD_REQUEST = "Malformed WebSocket upgrade request"


def check_handshake(
    method: bytes, headers: Sequence[tuple[bytes, bytes]], http_version: bytes = b"1.1"
) -> bytes | Refused:
    """The 101 response to a WebSocket upgrade request, or why it is refused (400, 426).

    RFC 6455 4.2.1: HTTP/1.1 (h11 speaks no later one), ``GET``, ``Connection`` listing
    ``upgrade``, one ``Sec-WebSocket-Key`` decoding to 16 bytes, and
    ``Sec-WebSocket-Version: 13`` (else 426 naming 13). Whether the request
    asks for a WebSocket at all (``Upgrade``) is :func:`wants_websocket`'s
    question, asked before.
    """
    key: bytes | None = None
    keys = 0
    version: bytes | None = None
    connection_upgrade = False
    for name, value in headers:
        if name == b"connection":
            lowered = value.lower()
            if lowered == b"upgrade" or (b"upgrade" in lowered and b"upgrade" in _tokens(lowered)):
                connection_upgrade = True
        elif name == b"sec-websocket-key":
            key = value
            keys += 1
        elif name == b"sec-websocket-version":
            version = value
    if method != b"GET" or http_version != b"1.1" or not connection_upgrade:
        return Refused(400, _BAD_REQUEST)
    if keys != 1 or key is None or not _valid_key(key):
        return Refused(400, "Sec-WebSocket-Key must be given once: 16 bytes in base64")
    if version != b"13":
        return Refused(426, "WebSocket version 13 required", (("sec-websocket-version", "13"),))
    # Written with the connection's first frame, in one system call.
    return (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + accept_token(key) + b"\r\n\r\n"
    )


def _tokens(value: bytes) -> list[bytes]:
    return [token.strip() for token in value.split(b",")]


def _valid_key(key: bytes) -> bool:
    if len(key) != 24:
        return False
    try:
        return len(binascii.a2b_base64(key, strict_mode=True)) == 16
    except binascii.Error:
        return False


def upgrade(
    relay: Relay,
    method: bytes,
    target: bytes,
    headers: Sequence[tuple[bytes, bytes]],
    now: float,
    *,
    nonce: int,
    remote_addr: str | None = None,
    secure: bool = False,
    stopping: bool = False,
    http_version: bytes = b"1.1",
    console: bool = False,
) -> Upgraded | Refused:
    """Decide a WebSocket upgrade request, and open the connection if it is accepted.

    Args:
        relay: the relay that will own the connection.
        method, target, headers, http_version: the request head (header
            names lower-case).
        now: seconds since the epoch.
        nonce: an unguessable number for the connection's id.
        remote_addr: the client's IP address, if known (kept for pipes).
        secure: whether the connection is TLS (``tls_only`` apps refuse
            others with 4000).
        stopping: the relay is shutting down: every upgrade is refused (503).
        console: the debug console is served (else its feed is 404).

    Returns:
        :class:`Refused` or :class:`Upgraded` (see the module's docstring).
        When it is :class:`Upgraded`, the relay already counts the
        connection: the adapter must report its end (unless its kind is
        :attr:`ConnectionKind.REFUSED`).
    """
    response = check_handshake(method, headers, http_version)
    if type(response) is Refused:
        return response
    assert isinstance(response, bytes)
    text = target.decode("latin-1")
    found = route("GET", text, upgrade=True)
    if found.kind is RouteKind.CONSOLE_SOCKET:
        if not console:
            return Refused(404, "Not found: /console/socket (the console is off)", route=found)
        if stopping:
            return Refused(503, "Server is shutting down", route=found)
        return Upgraded("", ConnectionKind.CONSOLE, response, [], CONSOLE_MAX_MESSAGE, found)
    if found.kind is RouteKind.PIPE:
        decision = relay.pipe_handshake(found.name, found.query, now)
        if not isinstance(decision, PipeAccepted):
            return Refused(decision.status, decision.message, route=found)
        if stopping:
            return Refused(503, "Server is shutting down", route=found)
        pipe_id, outputs = relay.open_pipe(decision, now, nonce=nonce)
        if _closes(outputs, pipe_id):
            return Upgraded(pipe_id, ConnectionKind.REFUSED, response, outputs, 0, found, decision)
        return Upgraded(
            pipe_id, ConnectionKind.PIPE, response, outputs, decision.app.pipe.max_frame_bytes, found, decision
        )
    if stopping:
        return Refused(503, "Server is shutting down", route=found)
    key = None if found.kind is RouteKind.WEBSOCKET_NOT_FOUND else found.name
    app = None if key is None else relay.apps.by_key(key)
    # Only the headers the app exposes to pipes are kept: most apps expose none.
    exposed = app.pipe.expose_headers if app is not None else ()
    details = SocketDetails(
        remote_addr=remote_addr,
        origin=_value(headers, b"origin"),
        user_agent=_value(headers, b"user-agent"),
        query=text.partition("?")[2],
        headers={
            name: v.decode("latin-1") for k, v in headers if (name := k.decode("latin-1")) in exposed
        } if exposed else None,
    )
    socket_id, outputs = relay.open_socket(key, found.query, now, nonce=nonce, details=details, secure=secure)
    if app is None or _closes(outputs, socket_id):
        return Upgraded(socket_id, ConnectionKind.REFUSED, response, outputs, 0, found)
    return Upgraded(socket_id, ConnectionKind.SOCKET, response, outputs, app.limits.max_socket_message_bytes, found)


def _closes(outputs: list[Output], conn_id: str) -> bool:
    # The relay refuses a connection it has just opened by closing it at once
    # (an error frame, then the Close): it keeps no record of it.
    return any(type(output) is Close and output.target == conn_id for output in outputs)


def _value(headers: Sequence[tuple[bytes, bytes]], name: bytes) -> str | None:
    for key, value in headers:
        if key == name:
            return value.decode("latin-1")
    return None
