"""What the relay's collaborators share: records, the outbox, ids and timers.

The :class:`~pipe_proto.relay.Relay` facade is made of collaborators, one
per concept (:mod:`.sockets`, :mod:`.channels`, :mod:`.users`,
:mod:`.pipe_auth`, :mod:`.pipe_connections`), each holding this one object.
It owns the records every rule needs (apps' states, live sockets and pipes),
the list of outputs being built for the current call, connection ids and the
connections' deadlines. It has no rules of its own beyond bookkeeping.
"""

from __future__ import annotations

from typing import Any

from ..apps import App, AppRegistry
from ..pusher.codec import Role, encode
from ..pusher.events import Error
from ..webhooks import WebhookScheduler
from .outputs import Output, Send, WebhookEvent
from .state import AppState, Pipe, Socket
from .timers import Deadlines

__all__ = ["Core", "frame"]


def frame(event: Any) -> str:
    """The text of a Pusher event sent by the relay."""
    return encode(event, role=Role.SERVER)


class Core:
    """The shared records of one relay.

    Args:
        apps: the configured apps.
        id_base: first number of connection ids.
    """

    def __init__(self, apps: AppRegistry, id_base: int) -> None:
        self.apps = apps
        self.next_id = id_base
        #: The outputs of the call being handled, returned by :meth:`take`.
        self.out: list[Output] = []
        self.states: dict[str, AppState] = {}
        self.sockets: dict[str, Socket] = {}
        self.pipes: dict[str, Pipe] = {}
        #: Every connection's next deadline (heartbeats, pipe liveness).
        self.deadlines = Deadlines()
        self.counters = {"sockets_opened": 0, "sockets_refused": 0, "pipes_opened": 0}
        #: Close code -> sockets refused before an app was known (unknown key or path).
        self.refused_unknown: dict[int, int] = {}

    def add_app(self, app: App, state: AppState) -> None:
        """Register an app's state."""
        self.states[app.id] = state

    def webhooks_for(self, app: App) -> WebhookScheduler:
        """A webhook scheduler of ``app`` whose events go to the outbox."""

        def webhook(urls: tuple[str, ...], event: dict[str, Any]) -> None:
            self.out.append(WebhookEvent(app.id, urls, event))

        return WebhookScheduler(app, webhook)

    def take(self) -> list[Output]:
        """The outputs built so far, handing them over (the outbox starts empty again)."""
        out, self.out = self.out, []
        return out

    def new_id(self, nonce: int) -> str:
        """A connection id ``"{n}.{nonce}"``, ``n`` never repeating."""
        self.next_id += 1
        return f"{self.next_id}.{abs(nonce) % 10**10}"

    def send(self, target: str, text: str) -> None:
        """Send ``text`` to one connection."""
        self.out.append(Send((target,), text))

    def error(self, socket_id: str, message: str, code: int | None = None) -> None:
        """Send a socket a ``pusher:error``."""
        self.send(socket_id, frame(Error(code=code, message=message)))

    def rebuild_deadlines(self) -> None:
        """Drop the stale entries of closed connections, once they outnumber the live ones."""
        if len(self.deadlines) > 2 * (len(self.sockets) + len(self.pipes)) + 64:
            entries = [(s.conn.deadline(), sid) for sid, s in self.sockets.items()]
            entries.extend((p.conn.liveness.deadline(), pid) for pid, p in self.pipes.items())
            self.deadlines.reset(entries)
