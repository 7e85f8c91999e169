"""The relay: apps, sockets, channels, presence, users and pipes, without I/O.

Theory of operation. The adapter owns the network; this object owns every
decision. The adapter reports what happened (a socket opened, a text message
arrived, a pipe closed, time passed) and gets back a list of
:mod:`~pipe_proto.relay.outputs` to carry out in order: send this text to
these connections, close that one, queue this webhook event. Nothing here
blocks, reads a clock or draws random numbers: ``now`` and ``nonce`` come in
as arguments. Every entry point takes the connection's id first and ``now``
last.

:class:`Relay` is a facade over collaborators, one per concept, sharing one
:class:`~.core.Core` (records, outbox, ids, deadlines):

* :mod:`.sockets` (handshake, frames, closing) and :mod:`.messages`
  (client events, the back channel);
* :mod:`.channels` (subscribing, leaving, publishing, presence frames);
* :mod:`.users` (sign-in, watchlists, terminating);
* :mod:`.pipe_auth` (authorization asked of a pipe);
* :mod:`.pipe_connections` (pipe handshake, methods, liveness) and
  :mod:`.pipes` (groups, delivery, acks, resume);
* a :mod:`.directory` for what holds across the whole deployment: this
  relay alone (:class:`~.directory.LocalDirectory`), or a cluster of relays
  sharing Redis (:class:`pipe_proto.cluster.ClusterDirectory`).

Outputs are transactional: if handling an input raises (a bug), nothing it
had queued is returned; the connection whose input it was is closed with
1011 and forgotten, and a :class:`~.outputs.Failure` carries the exception
for the adapter to log. Everyone else is unaffected.

Connections are named by id. Sockets get ``"{n}.{nonce}"`` ids: ``n`` counts
up from ``id_base`` (so ids are unique for the relay's lifetime) and the
nonce keeps them unguessable; pipes get ids of the same shape. When the relay
decides to close a connection (heartbeat, termination, shutdown) it forgets
the connection at once and emits :class:`~.outputs.Close`; the adapter's
later report that the connection closed is then a no-op.

State is kept only for live connections and occupied channels. Closing a
socket leaves every channel it was in (with the presence and webhook
consequences), signs it out, drops its watchers and its pending
authorizations; an app with no sockets, channels or pipes holds nothing but
its cache (bounded by ``max_cached_channels``) and delayed webhooks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from ..apps import App, AppRegistry, app_changes
from ..errors import CloseCode, PusherCode
from ..pipe.handshake import PipeAccepted, PipeRefused
from .channels import Channels
from .core import Core
from .directory import Answer, ChannelFacts, Directory, LocalDirectory
from .observe import Observed, Observer
from .outputs import Close, Failure, Output, Send
from .pipe_auth import PipeAuthorizations
from .pipe_connections import PipeConnections
from .sockets import SUPPORTED_PROTOCOLS, Sockets
from .state import AppState, Cached, SocketDetails, utf8_size
from .users import Users

__all__ = ["SUPPORTED_PROTOCOLS", "Relay"]


class Relay:
    """The relay's state and rules.

    Args:
        apps: the configured apps.
        id_base: first number of connection ids; pass a random value so ids
            are not reused across restarts.
        directory: what answers for the whole deployment; by default this
            relay alone (:class:`~.directory.LocalDirectory`). A
            :class:`pipe_proto.cluster.ClusterDirectory` factory makes it a
            node of a cluster: it is called with the relay's core.
    """

    def __init__(
        self,
        apps: AppRegistry | Iterable[App],
        *,
        id_base: int = 1,
        directory: Callable[[Core], Directory] | None = None,
    ) -> None:
        registry = apps if isinstance(apps, AppRegistry) else AppRegistry(apps)
        core = self._core = Core(registry, id_base)
        self.apps = registry
        self.directory: Directory = LocalDirectory(core) if directory is None else directory(core)
        self._channels = Channels(core, self.directory)
        self._users = Users(core, self.directory)
        self._sockets = Sockets(core, self.directory, self._channels, self._users)
        node = getattr(self.directory, "node", None)
        self._asking = PipeAuthorizations(core, self._channels, self._users, f"{node}:" if node else "")
        self._pipes = PipeConnections(core, self.directory, self._sockets, self._channels, self._users, self._asking)
        self._channels.bind(self._users, self._asking)
        self._users.bind(self._sockets, self._asking)
        self._sockets.bind(self._asking)
        self.directory.bind(self._sockets, self._channels, self._users, self._pipes, self._asking)
        base = getattr(self.directory, "id_base", None)
        if base is not None:
            core.next_id = base
        for app in registry:
            core.add_app(app, self._new_state(app))

    def _new_state(self, app: App) -> AppState:
        core = self._core

        def send(pipe_id: str, text: str) -> None:
            core.out.append(Send((pipe_id,), text))

        return AppState(app, self.directory.new_hub(app, send), core.webhooks_for(app))

    @property
    def counters(self) -> dict[str, int]:
        """Sockets opened and refused, pipes opened, since the start."""
        return self._core.counters

    # ================================================================ guard

    def _guard(self, conn_id: str | None, now: float, handle: Callable[[], None]) -> None:
        # Transactional: a raise drops what this input had queued.
        out = self._core.out
        mark = len(out)
        try:
            handle()
        except Exception as exc:  # a bug: this connection goes, the others stay
            del out[mark:]
            out.append(Failure(conn_id, exc))
            if conn_id is not None:
                self._fail(conn_id, now)

    def _guarded(self, conn_id: str | None, now: float, handle: Callable[[], None]) -> list[Output]:
        self._guard(conn_id, now, handle)
        return self._core.take()

    def _fail(self, conn_id: str, now: float) -> None:
        core = self._core
        sock = core.sockets.get(conn_id)
        if sock is not None:
            self._sockets.fail(sock, now)
        elif conn_id in core.pipes:
            self._pipes.drop(conn_id, now, (CloseCode.INTERNAL_ERROR, "Internal error"))
        else:
            core.out.append(Close(conn_id, CloseCode.INTERNAL_ERROR, "Internal error"))

    # ================================================================ sockets

    def open_socket(
        self,
        app_key: str | None,
        query: Mapping[str, str],
        now: float,
        *,
        nonce: int,
        details: SocketDetails | None = None,
        secure: bool = False,
    ) -> tuple[str, list[Output]]:
        """A WebSocket was accepted on ``/app/{app_key}`` (``app_key`` ``None``: on another path).

        Returns:
            The connection's id and what to do: ``connection_established``,
            or an error frame and a close (path not found 4005, unknown key
            4001, disabled 4003, over quota 4004, bad protocol
            4006/4007/4008, TLS only 4000). A refused connection is not kept.
            In a cluster with a connection limit the answer may come later,
            from :meth:`cluster_message`.
        """
        socket_id = self._core.new_id(nonce)
        outputs = self._guarded(
            socket_id, now, lambda: self._sockets.open(socket_id, app_key, query, now, details, secure)
        )
        return socket_id, outputs

    def socket_message(self, socket_id: str, text: str, now: float) -> list[Output]:
        """A socket sent a text message."""
        sock = self._core.sockets.get(socket_id)
        if sock is None:
            return []
        counts = sock.app.counts
        counts.socket_messages_in += 1
        counts.socket_bytes_in += utf8_size(text)
        return self._guarded(socket_id, now, lambda: self._sockets.message(sock, text, now))

    def socket_oversized(self, socket_id: str, size: int) -> list[Output]:
        """A socket sent a message larger than ``max_socket_message_bytes``; it was discarded."""
        sock = self._core.sockets.get(socket_id)
        if sock is not None:
            self._sockets.oversized(sock, size)
        return self._core.take()

    def socket_heard(self, socket_id: str, now: float) -> None:
        """A socket sent a WebSocket ping or pong (counts as activity)."""
        sock = self._core.sockets.get(socket_id)
        if sock is not None:
            sock.conn.heard(now)

    def socket_closed(
        self, socket_id: str, now: float, code: int | None = None, reason: str | None = None
    ) -> list[Output]:
        """A socket's connection ended (the client closed it, or the network failed).

        ``code`` and ``reason`` are the client's close frame's; ``None``, or
        1006 (which no close frame may carry, RFC 6455 7.4.1), when the
        connection was lost without one. 1.0 pipes get them in ``socket_closed``.
        """
        if code == CloseCode.ABNORMAL:
            code = reason = None
        sock = self._core.sockets.get(socket_id)
        if sock is None:
            self.directory.abandoned(socket_id)
            return self._core.take()
        return self._guarded(None, now, lambda: self._sockets.drop(sock, now, code, reason))

    def close_socket(self, socket_id: str, code: int, reason: str, now: float) -> list[Output]:
        """Close a socket on the relay's initiative: a ``pusher:error`` with ``code``, then the close."""
        sock = self._core.sockets.get(socket_id)
        if sock is not None:
            self._sockets.kick(sock, code, reason, now)
        return self._core.take()

    def slow_consumer(self, conn_id: str, now: float) -> list[Output]:
        """A socket or pipe stopped reading and its outbound buffer filled up.

        It is closed with 4101 (pusher-js reconnects after a pause; a 1.0
        pipe resumes its session). The adapter has already dropped what was
        queued for it, so the error frame and the close can go out.
        """
        reason = "Client too slow: outbound buffer full"
        core = self._core
        sock = core.sockets.get(conn_id)
        if sock is not None:
            sock.app.counts.slow_sockets += 1
            self._sockets.kick(sock, PusherCode.SLOW_CONSUMER, reason, now)
        else:
            pipe = core.pipes.get(conn_id)
            if pipe is not None:
                pipe.app.counts.slow_pipes += 1
            self._pipes.drop(conn_id, now, (PusherCode.SLOW_CONSUMER, reason))
        return self._core.take()

    # ================================================================ pipes

    def pipe_handshake(self, app_id: str, query: Mapping[str, str], now: float) -> PipeAccepted | PipeRefused:
        """Decide whether a pipe may connect (before the WebSocket upgrade)."""
        return self._pipes.handshake(app_id, query, now)

    def open_pipe(self, accepted: PipeAccepted, now: float, *, nonce: int) -> tuple[str, list[Output]]:
        """A pipe's WebSocket was accepted after :meth:`pipe_handshake` said yes.

        Returns:
            The pipe's id and what to do: ``connection_established``, then
            whatever its session is owed (a resumed session's replay, a gap).
        """
        pipe_id = self._core.new_id(nonce)
        return pipe_id, self._guarded(pipe_id, now, lambda: self._pipes.open(pipe_id, accepted, now, nonce))

    def pipe_message(self, pipe_id: str, text: str, now: float) -> list[Output]:
        """A pipe sent a text message (a request)."""
        pipe = self._core.pipes.get(pipe_id)
        if pipe is None:
            # Perhaps still attaching (a cluster answers later): kept for then.
            return self._guarded(pipe_id, now, lambda: self._pipes.early(pipe_id, text))
        return self._guarded(pipe_id, now, lambda: self._pipes.message(pipe, text, now))

    def pipe_heard(self, pipe_id: str, now: float) -> None:
        """A pipe sent a WebSocket ping or pong."""
        pipe = self._core.pipes.get(pipe_id)
        if pipe is not None:
            self._pipes.heard(pipe, now)

    def pipe_closed(self, pipe_id: str, now: float, code: int | None = None) -> list[Output]:
        """A pipe's connection ended (``code``: its close frame's; None or 1006: lost without one)."""
        self._pipes.drop(pipe_id, now, code=None if code == CloseCode.ABNORMAL else code)
        return self._core.take()

    def pipe_oversized(self, pipe_id: str, now: float) -> list[Output]:
        """A pipe sent a frame over ``max_frame_bytes``: close it with 1009."""
        pipe = self._core.pipes.get(pipe_id)
        if pipe is not None:
            self._pipes.oversized(pipe, now)
        return self._core.take()

    # ======================================================= server-side API

    def state_of(self, app_id: str) -> AppState | None:
        """This relay's records of an app (read-only use)."""
        return self._core.states.get(app_id)

    def publish(
        self,
        app_id: str,
        channels: Iterable[str],
        event: str,
        data: str,
        exclude: str | None,
        now: float,
    ) -> list[Output]:
        """Publish a channel event (the REST API's trigger); names must be valid."""
        state = self._core.states[app_id]
        state.counts.rest_messages_in += 1
        state.counts.rest_bytes_in += utf8_size(data)
        for channel in channels:
            if state.observer is not None:
                details = {"exclude": exclude} if exclude else None
                state.observer(Observed("api_message", None, channel, event, data, details))
            self._channels.publish(state, channel, event, data, exclude, now)
        return self._core.take()

    def terminate_user(self, app_id: str, user_id: str, now: float) -> list[Output]:
        """Close every socket signed in as ``user_id`` (4009)."""
        self._users.terminate(self._core.states[app_id], user_id, now)
        return self._core.take()

    def cached_event(self, app_id: str, channel: str, now: float) -> Answer[Cached | None]:
        """The cache of a cache channel, if it has an unexpired event."""
        return self.directory.cached(self._core.states[app_id], channel, now)

    def channels_facts(self, app_id: str, prefix: str, users: bool) -> Answer[dict[str, tuple[int, int]]]:
        """Occupied channels of the deployment starting with ``prefix``: (subscriptions, presence users)."""
        return self.directory.channels(self._core.states[app_id], prefix, users)

    def channel_facts(self, app_id: str, channel: str, now: float) -> Answer[ChannelFacts]:
        """One channel of the deployment: subscriptions, presence users, cache."""
        return self.directory.channel(self._core.states[app_id], channel, now)

    def channel_users(self, app_id: str, channel: str) -> Answer[list[str]]:
        """The user ids present on a presence channel of the deployment."""
        return self.directory.channel_users(self._core.states[app_id], channel)

    # =============================================================== cluster

    def cluster_message(self, data: bytes, now: float) -> list[Output]:
        """A message from the cluster for this node (its Redis inbox)."""
        handle = getattr(self.directory, "message", None)
        if handle is None:
            return []
        return self._guarded(None, now, lambda: handle(data, now))

    def cluster_result(self, token: int, result: Any, now: float) -> list[Output]:
        """The result of a cluster call that asked for one."""
        handle = getattr(self.directory, "result", None)
        if handle is None:
            return []
        return self._guarded(None, now, lambda: handle(token, result, now))

    def cluster_up(self, now: float) -> list[Output]:
        """The connection to the cluster (Redis) is established, or back."""
        handle = getattr(self.directory, "up", None)
        if handle is None:
            return []
        return self._guarded(None, now, lambda: handle(now))

    def cluster_down(self, now: float) -> list[Output]:
        """The connection to the cluster (Redis) was lost: what was in flight may be lost."""
        handle = getattr(self.directory, "down", None)
        if handle is None:
            return []
        return self._guarded(None, now, lambda: handle(now))

    # ============================================================ operators

    @property
    def refused_unknown(self) -> dict[int, int]:
        """Close code -> sockets refused before an app was known (unknown key, unknown path)."""
        return self._core.refused_unknown

    def app_states(self) -> list[AppState]:
        """This relay's records of every app (read-only use: metrics, the console)."""
        return list(self._core.states.values())

    def sent(self, send: Send) -> None:
        """The adapter wrote ``send``: count its messages and bytes for the app of its targets.

        Called once per :class:`~.outputs.Send`, however many its targets
        (a broadcast is one call). Frames to connections the relay has
        already forgotten (the error before a close) are not counted.
        """
        targets = send.targets
        if not targets:
            return
        core = self._core
        sock = core.sockets.get(targets[0])
        if sock is not None:
            counts = sock.app.counts
            counts.socket_messages_out += len(targets)
            counts.socket_bytes_out += utf8_size(send.text) * len(targets)
            return
        pipe = core.pipes.get(targets[0])
        if pipe is not None:
            counts = pipe.app.counts
            counts.pipe_messages_out += len(targets)
            counts.pipe_bytes_out += utf8_size(send.text) * len(targets)

    def observe(self, app_id: str, observer: Observer | None) -> None:
        """Tell ``observer`` what happens to the app from now on (None: stop); see :mod:`.observe`.

        Raises:
            KeyError: no such app.
        """
        self._core.states[app_id].observer = observer

    def reconfigure(self, apps: Iterable[App], now: float) -> list[Output]:
        """Serve ``apps`` from now on (the configuration was reloaded); connections of other apps stay.

        * an app no longer listed: its sockets and pipes are closed with 4200
          (pusher-js reconnects at once: to a relay that serves the app, or
          to be refused with 4001), then its records are forgotten;
        * an app whose key or secret changed: the same, so that nothing
          authorized with the old credentials stays;
        * an app now disabled: its sockets and pipes are closed with 4003
          (pusher-js does not retry);
        * any other change (limits, features, pipe settings, webhooks)
          applies from now on, to the connections open too, except what a
          connection was given when it opened: its ``activity_timeout``,
          ``max_socket_message_bytes``, and a pipe's heartbeat and
          ``max_frame_bytes`` (docs/relay.md, "Reloading");
        * a new app is served at once.

        Raises:
            ConfigError: two apps have the same id or key (nothing changed).
        """
        new = list(apps)
        AppRegistry(new)  # refuses duplicates before anything changes
        changes = app_changes(self.apps, new)
        core = self._core
        closing: list[tuple[AppState, int, str]] = [
            (core.states[app.id], PusherCode.RECONNECT, "Application removed from this relay")
            for app in changes.removed
        ]
        closing += [
            (core.states[app.id], PusherCode.RECONNECT, "Application credentials changed")
            for app in changes.credentials
        ]
        closing += [
            (core.states[app.id], PusherCode.APP_DISABLED, "Application is disabled")
            for app in changes.changed
            if not app.enabled and app not in changes.credentials
        ]
        for state, code, reason in closing:
            self._guard(None, now, lambda: self._close_app(state, code, reason, now))  # noqa: B023
        for app in changes.removed:
            del core.states[app.id]
        for app in changes.changed:
            state = core.states[app.id]
            state.app = app
            state.hub.app = app
            state.webhooks.retarget(app)
        self.apps.replace(new)
        for app in changes.added:
            core.add_app(app, self._new_state(app))
        return core.take()

    def _close_app(self, state: AppState, code: int, reason: str, now: float) -> None:
        core = self._core
        for sock in [s for s in core.sockets.values() if s.app is state]:
            self._sockets.kick(sock, code, reason, now)
        for pipe_id in [p.id for p in core.pipes.values() if p.app is state]:
            self._pipes.drop(pipe_id, now, (code, reason))

    # ================================================================ time

    def next_deadline(self) -> float:
        """When :meth:`tick` next has something to do (``inf``: nothing pending)."""
        deadline = min(self._core.deadlines.next(), self._asking.next_deadline(), self.directory.next_deadline())
        for state in self._core.states.values():
            if state.hub.busy:
                deadline = min(deadline, state.hub.next_deadline())
            if len(state.webhooks):
                deadline = min(deadline, state.webhooks.next_deadline())
        return deadline

    def tick(self, now: float) -> list[Output]:
        """Run every timer due at ``now``: heartbeats, auth timeouts, pipe graces, webhooks, the cluster's."""
        core = self._core
        for conn_id in core.deadlines.due(now):
            sock = core.sockets.get(conn_id)
            if sock is not None:
                self._guard(conn_id, now, lambda: self._sockets.tick(sock, now))  # noqa: B023
                continue
            pipe = core.pipes.get(conn_id)
            if pipe is not None:
                self._guard(conn_id, now, lambda: self._pipes.tick(pipe, now))  # noqa: B023
        self._asking.tick(now)
        for state in core.states.values():
            if state.hub.busy and state.hub.next_deadline() <= now:
                state.hub.tick(now)
            if len(state.webhooks):
                state.webhooks.tick(now)
        if self.directory.next_deadline() <= now:
            self.directory.tick(now)
        core.rebuild_deadlines()
        return core.take()

    # ============================================================ lifecycle

    def shutdown(self, now: float) -> list[Output]:
        """Close every socket and pipe with 4200 (reconnect), for a graceful stop."""
        reason = "Server is shutting down. Please reconnect."
        core = self._core
        for sock in list(core.sockets.values()):
            self._sockets.kick(sock, PusherCode.RECONNECT, reason, now)
        for pipe_id in list(core.pipes):
            self._pipes.drop(pipe_id, now, (PusherCode.RECONNECT, reason))
        return core.take()

    def stats(self) -> dict[str, Any]:
        """Counts for the status endpoint: per app sockets, channels, users, pipes."""
        core = self._core
        stats: dict[str, Any] = {
            "sockets": len(core.sockets),
            "pipes": len(core.pipes),
            "pending_auths": len(self._asking),
            **core.counters,
            "apps": {
                app_id: {
                    "sockets": state.socket_count,
                    "channels": len(state.channels),
                    "users": len(state.users),
                    "cached_channels": len(state.cache),
                    "pipe": state.hub.stats(),
                }
                for app_id, state in core.states.items()
            },
        }
        cluster = self.directory.stats()
        if cluster:
            stats["cluster"] = cluster
        return stats

    def app_status(self, app_id: str) -> Answer[dict[str, Any]]:
        """The status endpoint's document for one app (in a cluster, its groups' counters come from Redis)."""
        return self.directory.app_status(self._core.states[app_id], self.stats()["apps"][app_id])

    def holds_nothing(self) -> bool:
        """True when no connection, channel, user, member or pending auth is left."""
        core = self._core
        return (
            not core.sockets
            and not core.pipes
            and not len(self._asking)
            and all(
                not s.channels and not s.users and not s.watchers and s.socket_count == 0
                for s in core.states.values()
            )
        )
