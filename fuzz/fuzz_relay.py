"""Fuzz target ``relay``: the whole :class:`~pipe_proto.relay.Relay`, sockets and pipes (0.2 and 1.0) at once.

:class:`RelayChecker` drives a relay and logs every call as a step of a JSON
*program* (``{"apps", "id_base", "t0", "steps": [{"op", "t", ...}]}``), so any
run, a captured pusher-js session or a crash, is a corpus file that
:func:`run_program` replays. Every call's outputs and the relay's state are
checked:

* no exception escapes any entry point;
* every ``Send``/``Close``/``Probe`` names a connection that is open (or was
  opened by that call), never one closed earlier in the same output list nor
  the one whose closing is being reported; no 43xx close code for sockets;
  sockets and pipes only ever hear about their own app;
* every frame sent decodes (``decode(role=CLIENT)`` for sockets,
  ``decode_server_frame`` for pipes);
* a ``private-``/``presence-``/``private-encrypted-`` subscription succeeds
  only with a signature that the spec formula (computed here with ``hmac``,
  not by ``pipe_proto.signatures``) says is valid for that socket, or after a
  pipe's ``auth_response`` with ``allow`` for that very request; a
  ``#server-to-user-X`` one only when signed in as ``X``;
* a client event never reaches its sender, never travels on a channel other
  than a private or presence one, and only reaches that channel's subscribers;
* presence: the members each subscriber was told about (the
  ``subscription_succeeded`` list plus ``member_added``/``member_removed``)
  equal the relay's members, which equal the distinct users subscribed;
* the relay's books agree with each other and with the model: channels and
  sockets point at each other, users, watchers, pending authorizations, pipe
  sessions, event-type counts and group queue counters;
* webhooks alternate per channel (occupied/vacated) and per member
  (added/removed);
* after ``tick(now)`` nothing is due any more (``next_deadline() > now``);
* after every connection closes and time passes beyond every grace period and
  TTL, the relay holds nothing: ``holds_nothing()``, no pipe session, no timer,
  no pending auth, no delayed webhook, and only groups remembered for drops
  not yet reported (by design, pipe-protocol.md 6).
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
import math
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test

from fuzz._support import (
    RECORDER,
    corpus_params,
    corpus_texts,
    json_values,
    profile_settings,
    record,
    seeded_frames,
    to_text,
)
from pipe_proto import App, Close, Features, Limits, PipeSettings, Probe, Relay, Send, WebhookEvent, WebhookTarget
from pipe_proto.apps import WEBHOOK_KINDS
from pipe_proto.errors import RemoteProtocolError
from pipe_proto.names import SERVER_TO_USER_PREFIX, ChannelKind, channel_type
from pipe_proto.pipe.codec import PipeFrameError, decode_request, decode_server_frame
from pipe_proto.pipe.events import (
    AuthRequest,
    AuthResponse,
    Batch,
    Established,
    Notification,
)
from pipe_proto.pipe.handshake import PipeRefused, pipe_url
from pipe_proto.pusher.codec import Role, decode
from pipe_proto.pusher.events import (
    ConnectionEstablished,
    MemberAdded,
    MemberRemoved,
    Message,
    SignInSuccess,
    Subscribe,
    SubscriptionCount,
    SubscriptionSucceeded,
    Unsubscribe,
)
from pipe_proto.relay.outputs import Output
from pipe_proto.relay.state import SocketDetails
from pipe_proto.routes import split_target

TARGET = "relay"
T0 = 1_700_000_000.0
#: Seconds past every grace period, TTL, heartbeat and webhook delay of the apps below.
DRAIN = 10_000.0
HOOK = "http://127.0.0.1:9/hook"


def fuzz_apps() -> list[App]:
    """Tight limits and short timers, so that a few steps reach every edge."""
    hooks = [WebhookTarget(url=HOOK)]
    return [
        App(
            id="1", key="app-key", secret="app-secret", features=Features(subscription_count=True),
            limits=Limits(
                max_presence_members=3, client_events_per_second=4, back_channel_per_second=6,
                max_channels_per_socket=5, activity_timeout=40, cache_ttl=20.0, max_cached_channels=2,
                max_event_bytes=400, max_watchlist=3, max_user_info_bytes=120, max_presence_user_id=12,
            ),
            pipe=PipeSettings(
                max_pipes=4, heartbeat=6.0, auth_timeout=3.0, window=3, resume_grace=4.0, buffer_events=6,
                buffer_bytes=3000, buffer_ttl=5.0, expose_headers=("x-forwarded-for",),
            ),
            webhooks=hooks,
        ),
        App(
            id="2", key="quiet-key", secret="quiet-secret",
            features=Features(client_events=False, user_authentication=False, watchlist=False),
            pipe=PipeSettings(heartbeat=6.0, auth_timeout=3.0, resume_grace=4.0, buffer_ttl=5.0, max_pipes=3),
            webhooks=hooks,
        ),
        App(id="3", key="off-key", secret="off-secret", enabled=False),
    ]


def interop_apps() -> list[App]:
    """The apps of tests/support.py, which the captured pusher-js sessions ran against."""
    from tests.support import default_apps

    return default_apps()


APP_SETS: dict[str, Callable[[], list[App]]] = {"fuzz": fuzz_apps, "interop": interop_apps}


def _hmac(secret: str, text: str) -> str:
    """The spec's sign() (pusher-channels.md 5.1), written out independently of pipe_proto."""
    return hmac.new(secret.encode(), text.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()


class SockModel:
    """What the checker knows of a socket from what the relay told it."""

    def __init__(self, app_id: str | None) -> None:
        self.app_id = app_id
        self.joined: set[str] = set()
        self.user: str | None = None
        self.views: dict[str, set[str]] = {}
        self.responsive = True


class PipeModel:
    def __init__(self, app_id: str, version: str) -> None:
        self.app_id = app_id
        self.version = version
        self.session: str | None = None
        self.max_seq = 0
        self.responsive = True


class Ctx:
    """What the call being checked is, for the rules that depend on it."""

    def __init__(self, kind: str, origin: str | None = None, app_id: str | None = None) -> None:
        self.kind = kind
        self.origin = origin
        self.app_id = app_id
        self.gone: str | None = None
        self.client_event: tuple[str, str] | None = None
        self.valid_auth: set[tuple[str, str]] = set()
        self.allowed: set[tuple[str, str, str | None]] = set()


def _op(method: Callable[..., Any]) -> Callable[..., Any]:
    """An entry point of the checker: a failure inside keeps the program so far as its example."""

    @functools.wraps(method)
    def run(self: RelayChecker, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except BaseException as exc:
            if not self.broken:
                self.broken = True
                RECORDER.failed(TARGET, exc)
            raise

    return run


class RelayChecker:
    """A relay, a model of what it told everyone, and the checks; every call is logged as a program step."""

    def __init__(self, apps: str = "fuzz", id_base: int = 1, t0: float = T0) -> None:
        self.relay = Relay(APP_SETS[apps](), id_base=id_base)
        self.app_by_id = {app.id: app for app in self.relay.apps}
        self.program: dict[str, Any] = {"apps": apps, "id_base": id_base, "t0": t0, "steps": []}
        record(TARGET, self.program)
        self.now = t0
        #: Set by the first failure: the rest of a failed run proves nothing.
        self.broken = False
        self.sockets: dict[str, SockModel] = {}
        self.pipes: dict[str, PipeModel] = {}
        self.gone_ids: list[str] = []
        #: request id -> (socket id, kind, channel), as pipes were told in auth_request notifications.
        self.auths: dict[str, tuple[str, str, str | None]] = {}
        self.sessions: dict[str, str] = {}
        self.occupied: dict[str, set[str]] = {app_id: set() for app_id in self.app_by_id}
        self.members: dict[str, set[tuple[str, str]]] = {app_id: set() for app_id in self.app_by_id}

    # -------------------------------------------------------------- logging

    def _log(self, op: str, **args: Any) -> None:
        self.program["steps"].append({"op": op, "t": self.now, **args})
        RECORDER.counts["relay steps"] = RECORDER.counts.get("relay steps", 0) + 1

    # ------------------------------------------------------------ sockets

    @_op
    def open_socket(
        self, key: str, query: dict[str, str], nonce: int, details: dict[str, Any] | None = None,
        secure: bool = False,
    ) -> tuple[str, list[Output]]:
        self._log("open_socket", key=key, query=query, nonce=nonce, details=details, secure=secure)
        socket_details = None if details is None else SocketDetails(**details)
        sid, out = self.relay.open_socket(key, query, self.now, nonce=nonce, details=socket_details, secure=secure)
        assert sid not in self.sockets and sid not in self.pipes and sid not in self.gone_ids, f"id {sid} reused"
        app = self.relay.apps.by_key(key)
        self.sockets[sid] = SockModel(app.id if app else None)
        self._check(out, Ctx("open_socket", sid, app.id if app else None))
        if sid in self.sockets:
            first = decode(next(o.text for o in out if isinstance(o, Send)), role=Role.CLIENT)
            assert first == ConnectionEstablished(socket_id=sid, activity_timeout=app.limits.activity_timeout)
        return sid, out

    def _subscribe_is_valid(self, sid: str, request: Subscribe) -> bool:
        """Whether ``request`` carries a signature the spec accepts for socket ``sid`` (5.2-5.4)."""
        model = self.sockets[sid]
        app = self.app_by_id[model.app_id] if model.app_id else None
        if app is None or not request.auth:
            return False
        name, data = request.channel, request.channel_data
        two = f"{app.key}:{_hmac(app.secret, f'{sid}:{name}')}"
        three = None if data is None else f"{app.key}:{_hmac(app.secret, f'{sid}:{name}:{data}')}"
        kind = channel_type(name).kind
        if kind in (ChannelKind.PRIVATE, ChannelKind.ENCRYPTED):
            return request.auth in (two, three)
        if kind is ChannelKind.PRESENCE:
            return request.auth == three if data is not None else model.user is not None and request.auth == two
        return False

    @_op
    def socket_message(self, socket_id: str, text: str) -> list[Output]:
        self._log("socket_message", socket_id=socket_id, text=text)
        model = self.sockets.get(socket_id)
        ctx = Ctx("socket_message", socket_id, model.app_id if model else None)
        try:
            event = decode(text, role=Role.SERVER)
        except RemoteProtocolError:
            event = None
        if model is not None and isinstance(event, Subscribe) and self._subscribe_is_valid(socket_id, event):
            ctx.valid_auth.add((socket_id, event.channel))
        if isinstance(event, Message) and event.is_client_event:
            assert event.channel is not None
            ctx.client_event = (event.channel, event.event)
        out = self.relay.socket_message(socket_id, text, self.now)
        if model is None:
            assert out == [], "a closed socket's message produced outputs"
            return out
        self._check(out, ctx)
        if isinstance(event, Unsubscribe) and socket_id in self.sockets:
            self.sockets[socket_id].joined.discard(event.channel)
            self.sockets[socket_id].views.pop(event.channel, None)
        self.invariants()
        return out

    @_op
    def socket_closed(self, socket_id: str, code: int | None = None, reason: str | None = None) -> list[Output]:
        self._log("socket_closed", socket_id=socket_id, code=code, reason=reason)
        model = self.sockets.get(socket_id)
        out = self.relay.socket_closed(socket_id, self.now, code, reason)
        ctx = Ctx("socket_closed", socket_id, model.app_id if model else None)
        ctx.gone = socket_id
        self._check(out, ctx)
        self._forget(socket_id)
        self.invariants()
        return out

    @_op
    def close_socket(self, socket_id: str, code: int, reason: str) -> list[Output]:
        self._log("close_socket", socket_id=socket_id, code=code, reason=reason)
        model = self.sockets.get(socket_id)
        out = self.relay.close_socket(socket_id, code, reason, self.now)
        self._check(out, Ctx("close_socket", socket_id, model.app_id if model else None))
        assert socket_id not in self.sockets, "close_socket left the socket open"
        self.invariants()
        return out

    @_op
    def socket_oversized(self, socket_id: str, size: int) -> list[Output]:
        self._log("socket_oversized", socket_id=socket_id, size=size)
        model = self.sockets.get(socket_id)
        out = self.relay.socket_oversized(socket_id, size)
        self._check(out, Ctx("socket_oversized", socket_id, model.app_id if model else None))
        return out

    @_op
    def socket_heard(self, socket_id: str) -> list[Output]:
        self._log("socket_heard", socket_id=socket_id)
        self.relay.socket_heard(socket_id, self.now)
        return []

    # -------------------------------------------------------------- pipes

    @_op
    def open_pipe(self, app_id: str, query: dict[str, str], nonce: int) -> tuple[str | None, list[Output]]:
        self._log("open_pipe", app_id=app_id, query=query, nonce=nonce)
        decision = self.relay.pipe_handshake(app_id, query, self.now)
        if isinstance(decision, PipeRefused):
            assert 400 <= decision.status < 600 and decision.message, decision
            return None, []
        pid, out = self.relay.open_pipe(decision, self.now, nonce=nonce)
        assert pid not in self.sockets and pid not in self.pipes and pid not in self.gone_ids, f"id {pid} reused"
        self.pipes[pid] = PipeModel(decision.app.id, decision.version)
        self._check(out, Ctx("open_pipe", pid, decision.app.id))
        self.invariants()
        return pid, out

    @_op
    def pipe_message(self, pipe_id: str, text: str) -> list[Output]:
        self._log("pipe_message", pipe_id=pipe_id, text=text)
        model = self.pipes.get(pipe_id)
        ctx = Ctx("pipe_message", pipe_id, model.app_id if model else None)
        try:
            request = decode_request(text)
            calls = list(request.call.calls) if isinstance(request.call, Batch) else [request.call]
            request_id = request.id
        except PipeFrameError as exc:
            calls = []
            request_id = exc.request_id
        for call in calls:
            if isinstance(call, AuthResponse) and call.allow and call.request_id in self.auths:
                ctx.allowed.add(self.auths[call.request_id])
        out = self.relay.pipe_message(pipe_id, text, self.now)
        if model is None:
            assert out == [], "a closed pipe's message produced outputs"
            return out
        self._check(out, ctx)
        if pipe_id in self.pipes:
            replies = [o for o in out if isinstance(o, Send) and o.targets == (pipe_id,)]
            if request_id is not None:
                assert replies, "a request whose id the relay can read got no reply"
        self.invariants()
        return out

    @_op
    def pipe_closed(self, pipe_id: str) -> list[Output]:
        self._log("pipe_closed", pipe_id=pipe_id)
        model = self.pipes.get(pipe_id)
        out = self.relay.pipe_closed(pipe_id, self.now)
        ctx = Ctx("pipe_closed", pipe_id, model.app_id if model else None)
        ctx.gone = pipe_id
        self._check(out, ctx)
        self._forget(pipe_id)
        self.invariants()
        return out

    @_op
    def pipe_oversized(self, pipe_id: str) -> list[Output]:
        self._log("pipe_oversized", pipe_id=pipe_id)
        model = self.pipes.get(pipe_id)
        out = self.relay.pipe_oversized(pipe_id, self.now)
        self._check(out, Ctx("pipe_oversized", pipe_id, model.app_id if model else None))
        assert pipe_id not in self.pipes
        self.invariants()
        return out

    @_op
    def pipe_heard(self, pipe_id: str) -> list[Output]:
        self._log("pipe_heard", pipe_id=pipe_id)
        self.relay.pipe_heard(pipe_id, self.now)
        return []

    # ------------------------------------------------------ server-side API

    @_op
    def publish(self, app_id: str, channels: list[str], event: str, data: str, exclude: str | None) -> list[Output]:
        self._log("publish", app_id=app_id, channels=channels, event=event, data=data, exclude=exclude)
        out = self.relay.publish(app_id, channels, event, data, exclude, self.now)
        self._check(out, Ctx("publish", None, app_id))
        self.invariants()
        return out

    @_op
    def terminate_user(self, app_id: str, user_id: str) -> list[Output]:
        self._log("terminate_user", app_id=app_id, user_id=user_id)
        out = self.relay.terminate_user(app_id, user_id, self.now)
        self._check(out, Ctx("terminate_user", None, app_id))
        assert not any(m.user == user_id and m.app_id == app_id for m in self.sockets.values())
        self.invariants()
        return out

    @_op
    def tick(self) -> list[Output]:
        self._log("tick")
        out = self.relay.tick(self.now)
        self._check(out, Ctx("tick"))
        deadline = self.relay.next_deadline()
        assert deadline > self.now, f"tick({self.now}) left work due at {deadline}"
        self.invariants()
        return out

    @_op
    def shutdown(self) -> list[Output]:
        self._log("shutdown")
        out = self.relay.shutdown(self.now)
        self._check(out, Ctx("shutdown"))
        assert not self.sockets and not self.pipes, "shutdown left connections open"
        self.invariants()
        return out

    @_op
    def drain(self) -> None:
        """Close everything, let every timer run out, and check that nothing is left."""
        for sid in list(self.sockets):
            self.socket_closed(sid, 1000, "bye")
        for pid in list(self.pipes):
            self.pipe_closed(pid)
        for _ in range(2):
            self.now += DRAIN
            self.tick()
        relay = self.relay
        assert relay.holds_nothing(), relay.stats()
        assert not len(relay._core.deadlines) and not relay._asking.pending and not len(relay._asking.deadlines), (
            "timers or auths left"
        )
        assert relay.next_deadline() == math.inf
        for app_id in self.app_by_id:
            state = relay.state_of(app_id)
            assert state is not None
            hub = state.hub
            assert not hub.sessions and not hub.by_pipe, f"app {app_id}: pipe sessions left"
            assert not any(hub.type_counts.values()), hub.type_counts
            for group in hub.groups.values():
                # Kept only to report drops to the group's next member (pipe-protocol.md 6).
                assert not group.sessions and not group.buffer and group.unreported > 0, group.name
                assert group.pending_count == 0 and group.pending_bytes == 0, group.name
            assert len(state.webhooks) == 0, "delayed webhooks left"
            assert not self.occupied[app_id] and not self.members[app_id], "webhooks do not add up"

    # --------------------------------------------------------------- checks

    def _forget(self, conn_id: str) -> None:
        if self.sockets.pop(conn_id, None) is not None or self.pipes.pop(conn_id, None) is not None:
            self.gone_ids.append(conn_id)

    def _check(self, out: list[Output], ctx: Ctx) -> None:
        closed: set[str] = set()
        for item in out:
            if isinstance(item, Send):
                targets = item.targets
                assert targets and len(set(targets)) == len(targets), f"bad targets {item}"
                for target in targets:
                    assert target in self.sockets or target in self.pipes, f"Send to unknown {target}: {item.text}"
                    assert target not in closed, f"Send after Close to {target}: {item.text}"
                    assert target != ctx.gone, f"Send to the connection whose close is reported: {item.text}"
                to_sockets = {t in self.sockets for t in targets}
                assert len(to_sockets) == 1, f"one Send to sockets and pipes: {item}"
                if to_sockets == {True}:
                    self._socket_frame(targets, decode(item.text, role=Role.CLIENT), ctx)
                else:
                    self._pipe_frame(targets, decode_server_frame(item.text), ctx)
            elif isinstance(item, Close):
                target = item.target
                assert target in self.sockets or target in self.pipes, f"Close of unknown {target}"
                assert target not in closed and target != ctx.gone, f"second Close of {target}"
                if target in self.sockets:
                    assert not 4300 <= item.code < 4400, "43xx close codes make pusher-js give up"
                closed.add(target)
            elif isinstance(item, Probe):
                assert item.target in self.pipes and item.target not in closed, f"Probe of {item.target}"
            elif isinstance(item, WebhookEvent):
                self._webhook(item)
            else:  # pragma: no cover
                raise AssertionError(f"unknown output {item!r}")
        for target in closed:
            self._forget(target)

    def _same_app(self, targets: tuple[str, ...], ctx: Ctx) -> str:
        apps = {(self.sockets[t].app_id if t in self.sockets else self.pipes[t].app_id) for t in targets}
        assert len(apps) == 1, f"one Send to several apps: {targets}"
        app_id = apps.pop()
        assert app_id is not None or ctx.kind == "open_socket"
        if ctx.app_id is not None and app_id is not None:
            assert app_id == ctx.app_id, f"app {ctx.app_id}'s call reached app {app_id}"
        return app_id or ""

    def _socket_frame(self, targets: tuple[str, ...], event: Any, ctx: Ctx) -> None:
        self._same_app(targets, ctx)
        for target in targets:
            sock = self.sockets[target]
            if isinstance(event, SubscriptionSucceeded):
                name = event.channel
                kind = channel_type(name).kind
                if kind.needs_signature:
                    assert (
                        name in sock.joined
                        or (target, name) in ctx.valid_auth
                        or (target, "channel", name) in ctx.allowed
                    ), f"{target} joined {name} without a valid signature or a pipe's allow"
                elif kind is ChannelKind.USER:
                    assert sock.user is not None and name == SERVER_TO_USER_PREFIX + sock.user, name
                sock.joined.add(name)
                if kind is ChannelKind.PRESENCE:
                    assert event.presence is not None
                    sock.views[name] = {str(uid) for uid, _ in event.presence.members}
                else:
                    assert event.presence is None
            elif isinstance(event, (MemberAdded, MemberRemoved)):
                view = sock.views.get(event.channel)
                assert event.channel in sock.joined and view is not None, f"member event for {event.channel}"
                uid = str(event.user_id)
                if isinstance(event, MemberAdded):
                    assert uid not in view, f"member_added for present member {uid}"
                    view.add(uid)
                else:
                    assert uid in view, f"member_removed for absent member {uid}"
                    view.discard(uid)
            elif isinstance(event, SubscriptionCount):
                assert event.channel in sock.joined
            elif isinstance(event, SignInSuccess):
                user_id = json.loads(event.user_data)["id"]
                assert sock.user in (None, user_id)
                sock.user = user_id
            elif isinstance(event, Message) and ctx.client_event is not None:
                name, _ = ctx.client_event
                assert target != ctx.origin, "a client event was echoed to its sender"
                assert channel_type(name).kind.allows_client_events, f"client event relayed on {name}"
                assert event.channel == name and name in sock.joined, f"client event to a non-subscriber of {name}"
            elif isinstance(event, ConnectionEstablished):
                assert ctx.kind == "open_socket" and targets == (ctx.origin,)

    def _pipe_frame(self, targets: tuple[str, ...], frame: Any, ctx: Ctx) -> None:
        self._same_app(targets, ctx)
        if not isinstance(frame, Notification):
            return
        for target in targets:
            pipe = self.pipes[target]
            notice = frame.notice
            if isinstance(notice, Established):
                pipe.session = notice.session
                if notice.session:
                    self.sessions[notice.session] = pipe.app_id
            elif isinstance(notice, AuthRequest):
                assert notice.socket_id in self.sockets, "auth_request for a closed socket"
                self.auths[notice.request_id] = (notice.socket_id, notice.kind, notice.channel)
            if frame.seq is not None:
                pipe.max_seq = max(pipe.max_seq, frame.seq)

    def _webhook(self, item: WebhookEvent) -> None:
        assert item.app_id in self.app_by_id and item.urls
        event = item.event
        name = event["name"]
        assert name in WEBHOOK_KINDS, name
        occupied, members = self.occupied[item.app_id], self.members[item.app_id]
        if name == "channel_occupied":
            assert event["channel"] not in occupied, f"channel_occupied twice for {event['channel']}"
            occupied.add(event["channel"])
        elif name == "channel_vacated":
            assert event["channel"] in occupied, f"channel_vacated before channel_occupied: {event['channel']}"
            occupied.discard(event["channel"])
        elif name == "member_added":
            key = (event["channel"], event["user_id"])
            assert key not in members, f"member_added twice: {key}"
            members.add(key)
        elif name == "member_removed":
            key = (event["channel"], event["user_id"])
            assert key in members, f"member_removed before member_added: {key}"
            members.discard(key)

    def invariants(self) -> None:
        """The relay's books agree with each other and with what everyone was told."""
        relay = self.relay
        live = relay._core.sockets
        assert set(relay._core.sockets) == set(self.sockets), "relay and model disagree on open sockets"
        assert set(relay._core.pipes) == set(self.pipes), "relay and model disagree on open pipes"
        for sid, sock in relay._core.sockets.items():
            model = self.sockets[sid]
            assert sock.app.app.id == model.app_id
            assert set(sock.channels) == model.joined, f"{sid}: relay {set(sock.channels)} model {model.joined}"
            assert (sock.user.id if sock.user else None) == model.user
            for rid in sock.auths or ():
                assert relay._asking.pending[rid].socket_id == sid
        for rid, pending in relay._asking.pending.items():
            owner = relay._core.sockets.get(pending.socket_id)
            assert owner is not None and rid in (owner.auths or ()), f"orphan auth {rid}"
        for app_id, state in relay._core.states.items():
            assert state.socket_count == sum(1 for m in self.sockets.values() if m.app_id == app_id)
            for name, channel in state.channels.items():
                assert channel.sockets, f"empty channel {name} kept"
                for sid in channel.sockets:
                    sock = relay._core.sockets[sid]
                    assert sock.app is state and name in sock.channels
                if channel.members is not None:
                    keys = {relay._core.sockets[sid].channels[name] for sid in channel.sockets}
                    assert set(channel.members) == keys, f"{name}: members {set(channel.members)} users {keys}"
                    for key, member in channel.members.items():
                        assert member.sockets == {s for s in channel.sockets if live[s].channels[name] == key}
                    for sid in channel.sockets:
                        assert self.sockets[sid].views[name] == set(channel.members), f"{sid}'s view of {name}"
            for sid, sock in relay._core.sockets.items():
                if sock.app is state:
                    for name in sock.channels:
                        assert sid in state.channels[name].sockets
                    if sock.user is not None:
                        assert sid in state.users[sock.user.id]
            for uid, sids in state.users.items():
                assert sids and all(relay._core.sockets[s].user.id == uid for s in sids)  # type: ignore[union-attr]
            for watched, sids in state.watchers.items():
                assert sids and all(s in live and live[s].app is state for s in sids), watched
            hub = state.hub
            assert set(hub.by_pipe) == {pid for pid, p in relay._core.pipes.items() if p.app is state}
            for pid, session in hub.by_pipe.items():
                assert session.pipe == pid and hub.sessions.get(session.id) is session
            for type_, count in hub.type_counts.items():
                assert count == sum(type_ in s.types for s in hub.sessions.values()), type_
            grouped = set()
            for group in hub.groups.values():
                waiting = sum(len(s.waiting) for s in group.sessions.values())
                assert group.pending_count == len(group.buffer) + waiting, group.name
                pending_bytes = sum(p.event.size for p in group.buffer)
                pending_bytes += sum(p.event.size for s in group.sessions.values() for p in s.waiting)
                assert group.pending_bytes == pending_bytes, group.name
                for session in group.sessions.values():
                    assert session.group is group and hub.sessions.get(session.id) is session
                    grouped.add(session.id)
            assert grouped == set(hub.sessions), "a session outside its group"


# ------------------------------------------------------------ replay


def run_program(program: dict[str, Any]) -> RelayChecker:
    """Replay a program step by step through the checker, then drain and check emptiness."""
    checker = RelayChecker(program.get("apps", "fuzz"), program.get("id_base", 1), program.get("t0", T0))
    for step in program["steps"]:
        args = {k: v for k, v in step.items() if k not in ("op", "t")}
        assert step["t"] >= checker.now, "programs never go back in time"
        checker.now = step["t"]
        getattr(checker, step["op"])(**args)
    checker.drain()
    return checker


# ------------------------------------------------------------ the machine

CHANNELS = [
    "news", "cache-news", "private-a", "private-cache-b", "private-encrypted-c", "presence-r",
    "presence-cache-s", "#server-to-user-u1", "#server-to-user-u2", "bad channel", "", "c" * 170,
]
USERS = ["u1", "u2", "u3"]
SOCKET_SEEDS = corpus_texts("pusher_codec", role="server") or ['{"event":"pusher:ping","data":{}}']
PIPE_SEEDS = corpus_texts("pipe_codec", kind="request") or ['{"id":1,"method":"ping","params":{}}']
EVENT_TYPES = ["socket_existence", "socket_message", "channel_existence", "presence", "auth", "nonsense"]
IDS = st.sampled_from([1, "r", None, None, 2.5, "\x00inf\x00", True, [1]])


class RelayMachine(RuleBasedStateMachine):
    """Sockets and pipes come and go, send valid and invalid frames, and time jumps; the checker checks."""

    def __init__(self) -> None:
        super().__init__()
        self.c = RelayChecker()
        self.nonce = 0
        self.since_drain = 0

    # ------------------------------------------------------------ helpers

    def _nonce(self) -> int:
        self.nonce += 1
        return self.nonce * 7919

    def _answer(self, out: list[Output]) -> None:
        """Live peers answer heartbeats: pipes' WebSocket pings, sockets' pusher:ping."""
        for item in out:
            if isinstance(item, Probe) and item.target in self.c.pipes and self.c.pipes[item.target].responsive:
                self.c.pipe_heard(item.target)
            elif isinstance(item, Send) and item.text.startswith('{"event":"pusher:ping"'):
                for target in item.targets:
                    model = self.c.sockets.get(target)
                    if model is not None and model.responsive:
                        self.c.socket_message(target, '{"event":"pusher:pong","data":{}}')

    def _pick(self, ids: list[str], index: int) -> str:
        return sorted(ids)[index % len(ids)]

    def _socket_ids(self, data: st.DataObject) -> str:
        choices = [*self.c.sockets, *self.c.gone_ids[-2:], "1.1", "12.345", "bad", ""]
        return data.draw(st.sampled_from(choices))

    # ------------------------------------------------------------ sockets

    @precondition(lambda self: len(self.c.sockets) < 6)
    @rule(
        key=st.sampled_from(["app-key"] * 5 + ["quiet-key", "off-key", "nope"]),
        protocol=st.sampled_from(["7"] * 6 + ["5", "4", "8", "x", "", "\u0663", None]),
        responsive=st.booleans(),
        forwarded=st.booleans(),
    )
    def open_socket(self, key: str, protocol: str | None, responsive: bool, forwarded: bool) -> None:
        query = {} if protocol is None else {"protocol": protocol}
        details = {"remote_addr": "127.0.0.1", "headers": {"x-forwarded-for": "10.0.0.1"}} if forwarded else None
        sid, _ = self.c.open_socket(key, query, self._nonce(), details)
        if sid in self.c.sockets:
            self.c.sockets[sid].responsive = responsive

    @precondition(lambda self: self.c.sockets)
    @rule(index=st.integers(0, 50), data=st.data())
    def socket_sends(self, index: int, data: st.DataObject) -> None:
        sid = self._pick(list(self.c.sockets), index)
        self._answer(self.c.socket_message(sid, self._socket_frame(sid, data)))

    def _socket_frame(self, sid: str, data: st.DataObject) -> str:
        model = self.c.sockets[sid]
        app = self.c.app_by_id.get(model.app_id or "")
        key, secret = (app.key, app.secret) if app else ("k", "s")
        kind = data.draw(
            st.sampled_from(
                ["subscribe"] * 5 + ["unsubscribe", "client", "client", "back", "signin", "signin", "ping", "seed",
                                     "garbage"]
            )
        )
        known = sorted(model.joined)
        channel = data.draw(st.sampled_from(known + CHANNELS) if known else st.sampled_from(CHANNELS))
        if kind == "subscribe":
            sub: dict[str, Any] = {"channel": channel}
            channel_data = None
            if channel.startswith("presence-") and data.draw(st.integers(0, 3)):
                member: Any = {"user_id": data.draw(st.sampled_from([*USERS, 7, 0, "", "x" * 20, None]))}
                if data.draw(st.booleans()):
                    member["user_info"] = data.draw(json_values)
                channel_data = data.draw(st.sampled_from([to_text(member), json.dumps(member), "{not json"]))
                sub["channel_data"] = channel_data
            how = data.draw(st.sampled_from(["valid", "valid", "valid", "none", "wrong", "other", "key", "two"]))
            signed = f"{sid}:{channel}" if channel_data is None or how == "two" else f"{sid}:{channel}:{channel_data}"
            if how in ("valid", "two"):
                sub["auth"] = f"{key}:{_hmac(secret, signed)}"
            elif how == "wrong":
                sub["auth"] = f"{key}:{_hmac(secret, signed + 'x')}"
            elif how == "other":
                sub["auth"] = f"{key}:{_hmac(secret, '1.1' + signed[len(sid):])}"
            elif how == "key":
                sub["auth"] = f"other:{_hmac(secret, signed)}"
            return to_text({"event": "pusher:subscribe", "data": sub})
        if kind == "unsubscribe":
            return to_text({"event": "pusher:unsubscribe", "data": {"channel": channel}})
        if kind == "client":
            name = "client-" + data.draw(st.sampled_from(["move", "typing", ""]))
            return to_text({"event": name, "channel": channel, "data": data.draw(json_values)})
        if kind == "back":
            frame = {"event": data.draw(st.sampled_from(["hello", "eventFromBrowser", "x" * 201])),
                     "data": data.draw(json_values)}
            if data.draw(st.booleans()):
                frame["channel"] = channel
            return to_text(frame)
        if kind == "signin":
            user: dict[str, Any] = {"id": data.draw(st.sampled_from([*USERS, "", "bad id", 5]))}
            if data.draw(st.booleans()):
                user["watchlist"] = data.draw(st.lists(st.sampled_from(USERS), max_size=5))
            if data.draw(st.booleans()):
                user["user_info"] = data.draw(json_values)
            user_data = to_text(user)
            how = data.draw(st.sampled_from(["valid", "valid", "pipe", "wrong"]))
            auth = {"valid": f"{key}:{_hmac(secret, f'{sid}::user::{user_data}')}", "pipe": "", "wrong": f"{key}:00"}
            return to_text({"event": "pusher:signin", "data": {"auth": auth[how], "user_data": user_data}})
        if kind == "ping":
            return '{"event":"pusher:ping","data":{}}'
        if kind == "seed":
            return data.draw(seeded_frames(SOCKET_SEEDS))
        return data.draw(st.text(max_size=30) | seeded_frames(SOCKET_SEEDS))

    @precondition(lambda self: self.c.sockets)
    @rule(
        index=st.integers(0, 50),
        channel=st.sampled_from(["private-a", "private-cache-b", "presence-r", "presence-cache-s", "news"]),
        user=st.sampled_from(USERS),
        info=st.none() | json_values,
    )
    def join_signed(self, index: int, channel: str, user: str, info: Any) -> None:
        """A subscription signed as an app's auth endpoint would sign it (the common case, made frequent)."""
        sid = self._pick(list(self.c.sockets), index)
        app = self.c.app_by_id.get(self.c.sockets[sid].app_id or "")
        if app is None:
            return
        sub: dict[str, Any] = {"channel": channel}
        signed = f"{sid}:{channel}"
        if channel.startswith("presence-"):
            sub["channel_data"] = to_text({"user_id": user} if info is None else {"user_id": user, "user_info": info})
            signed += ":" + sub["channel_data"]
        if channel != "news":
            sub["auth"] = f"{app.key}:{_hmac(app.secret, signed)}"
        self._answer(self.c.socket_message(sid, to_text({"event": "pusher:subscribe", "data": sub})))

    @precondition(lambda self: any(m.joined for m in self.c.sockets.values()))
    @rule(index=st.integers(0, 50), name=st.sampled_from(["client-move", "client-typing", "move"]), data=st.data())
    def client_event(self, index: int, name: str, data: st.DataObject) -> None:
        """A client event on a channel the sender is in: relayed to the others on private and presence channels."""
        sid = self._pick([s for s, m in self.c.sockets.items() if m.joined], index)
        channel = data.draw(st.sampled_from(sorted(self.c.sockets[sid].joined)))
        frame = {"event": name, "channel": channel, "data": data.draw(json_values)}
        self._answer(self.c.socket_message(sid, to_text(frame)))

    @precondition(lambda self: self.c.sockets or self.c.gone_ids)
    @rule(index=st.integers(0, 50), how=st.sampled_from(["closed", "closed", "kick", "oversized", "heard", "gone"]))
    def socket_goes(self, index: int, how: str) -> None:
        if how == "gone" or not self.c.sockets:
            sid = self.c.gone_ids[index % len(self.c.gone_ids)] if self.c.gone_ids else "1.1"
            self.c.socket_message(sid, '{"event":"pusher:ping","data":{}}')
            self.c.socket_closed(sid)
            return
        sid = self._pick(list(self.c.sockets), index)
        if how == "closed":
            self.c.socket_closed(sid, 1001, "going away")
        elif how == "kick":
            self.c.close_socket(sid, 4101, "slow consumer")
        elif how == "oversized":
            self.c.socket_oversized(sid, 40_000)
        else:
            self.c.socket_heard(sid)

    # -------------------------------------------------------------- pipes

    @precondition(lambda self: len(self.c.pipes) < 4)
    @rule(
        app_id=st.sampled_from(["1", "1", "1", "2", "3", "9"]),
        version=st.sampled_from(["1.0", "1.0", "0.2", "2.0"]),
        group=st.sampled_from(["default", "default", "g2", "bad group"]),
        resume=st.booleans(),
        last_seq=st.none() | st.integers(0, 8),
        tamper=st.sampled_from([None] * 6 + ["signature", "timestamp", "key"]),
        responsive=st.booleans(),
        data=st.data(),
    )
    def open_pipe(
        self, app_id: str, version: str, group: str, resume: bool, last_seq: int | None, tamper: str | None,
        responsive: bool, data: st.DataObject,
    ) -> None:
        app = self.c.app_by_id.get(app_id)
        key, secret = (app.key, app.secret) if app else ("x", "y")
        params: dict[str, Any] = {"group": group} if version != "0.2" else {}
        if resume and self.c.sessions:
            params["session"] = data.draw(st.sampled_from(sorted(self.c.sessions)))
            params["last_seq"] = last_seq
        url = pipe_url("ws://x", app_id=app_id, key=key, secret=secret, now=self.c.now, version=version, **params)
        query = split_target(url.split("ws://x", 1)[1])[1]
        if tamper == "signature":
            query["auth_signature"] = "0" * 64
        elif tamper == "timestamp":
            query["auth_timestamp"] = str(int(self.c.now) - 700)
        elif tamper == "key":
            query["auth_key"] = "nope"
        pid, out = self.c.open_pipe(app_id, query, self._nonce())
        if pid is not None and pid in self.c.pipes:
            self.c.pipes[pid].responsive = responsive
            self._answer(out)

    @precondition(lambda self: self.c.pipes)
    @rule(index=st.integers(0, 50), data=st.data())
    def pipe_sends(self, index: int, data: st.DataObject) -> None:
        pid = self._pick(list(self.c.pipes), index)
        kind = data.draw(st.sampled_from(["call"] * 6 + ["batch", "seed", "garbage"]))
        if kind == "seed":
            text = data.draw(seeded_frames(PIPE_SEEDS))
        elif kind == "garbage":
            text = data.draw(st.text(max_size=30))
        else:
            if kind == "batch":
                calls = [self._pipe_call(pid, data) for _ in range(data.draw(st.integers(1, 4)))]
                method, params = "batch", {"calls": [{"method": m, "params": p} for m, p in calls]}
            else:
                method, params = self._pipe_call(pid, data)
            text = to_text({"id": data.draw(IDS), "method": method, "params": params})
        self._answer(self.c.pipe_message(pid, text))

    def _pipe_call(self, pid: str, data: st.DataObject) -> tuple[str, dict[str, Any]]:
        method = data.draw(
            st.sampled_from(
                ["subscribe"] * 3 + ["unsubscribe", "send_to_socket", "send_to_channel", "disconnect_socket",
                                     "terminate_user", "auth_response", "auth_response", "auth_response", "ack",
                                     "ping", "leave", "nope"]
            )
        )
        draw = data.draw
        if method in ("subscribe", "unsubscribe"):
            return method, {"events": draw(st.lists(st.sampled_from(EVENT_TYPES), min_size=1, max_size=3))}
        if method == "send_to_socket":
            params: dict[str, Any] = {"socket_id": self._socket_ids(data), "event": draw(st.sampled_from(["a", ""])),
                                      "data": draw(json_values)}
            if draw(st.booleans()):
                params["channel"] = draw(st.sampled_from(CHANNELS))
            return method, params
        if method == "send_to_channel":
            return method, {"channels": draw(st.lists(st.sampled_from(CHANNELS[:8]), min_size=1, max_size=3)),
                            "event": draw(st.sampled_from(["news", "client-x", "pusher:x"])), "data": draw(json_values),
                            "socket_id": draw(st.none() | st.just(self._socket_ids(data)))}
        if method == "disconnect_socket":
            return method, {"socket_id": self._socket_ids(data), "code": draw(st.sampled_from([4009, 4100, 4200, 1000,
                                                                                                None, 4301]))}
        if method == "terminate_user":
            return method, {"user_id": draw(st.sampled_from([*USERS, ""]))}
        if method == "auth_response":
            request_ids = sorted(self.c.auths)
            params = {"request_id": draw(st.sampled_from([*request_ids[-4:], "999"]) if request_ids else st.just("1")),
                      "allow": draw(st.sampled_from([True, True, False, "yes"]))}
            if draw(st.booleans()):
                member: dict[str, Any] = {"user_id": draw(st.sampled_from([*USERS, 7, "", None]))}
                if draw(st.booleans()):
                    member["user_info"] = draw(json_values)
                params["channel_data"] = draw(st.sampled_from([member, to_text(member), "nope", 5]))
            if draw(st.booleans()):
                user: dict[str, Any] = {"id": draw(st.sampled_from([*USERS, "", 5]))}
                if draw(st.booleans()):
                    user["user_info"] = draw(json_values)
                if draw(st.booleans()):
                    user["watchlist"] = draw(st.lists(st.sampled_from(USERS), max_size=4))
                params["user_data"] = user
            if draw(st.booleans()):
                params["reason"] = "no"
            return method, params
        if method == "ack":
            seq = self.c.pipes[pid].max_seq
            return method, {"seq": draw(st.sampled_from([seq, max(0, seq - 1), seq + 5, -1, 0]))}
        return method, {}

    @precondition(lambda self: self.c.pipes or self.c.gone_ids)
    @rule(index=st.integers(0, 50), how=st.sampled_from(["closed", "closed", "oversized", "heard", "gone"]))
    def pipe_goes(self, index: int, how: str) -> None:
        if how == "gone" or not self.c.pipes:
            pid = self.c.gone_ids[index % len(self.c.gone_ids)] if self.c.gone_ids else "1.1"
            self.c.pipe_message(pid, '{"id":1,"method":"ping"}')
            self.c.pipe_closed(pid)
            return
        pid = self._pick(list(self.c.pipes), index)
        if how == "closed":
            self.c.pipe_closed(pid)
        elif how == "oversized":
            self.c.pipe_oversized(pid)
        else:
            self.c.pipe_heard(pid)

    # ------------------------------------------------------ time and API

    @rule(dt=st.sampled_from([0.0, 0.3, 1.0, 2.5, 3.5, 4.5, 6.5, 13.0, 31.0, 45.0, 75.0]))
    def time_passes(self, dt: float) -> None:
        self.c.now += dt
        self._answer(self.c.tick())

    @rule(
        app_id=st.sampled_from(["1", "1", "2"]),
        channels=st.lists(st.sampled_from(CHANNELS[:9]), min_size=1, max_size=3, unique=True),
        event=st.sampled_from(["news", "client-fake", "update"]),
        data=st.text(max_size=20),
        exclude=st.booleans(),
    )
    def publish(self, app_id: str, channels: list[str], event: str, data: str, exclude: bool) -> None:
        excluded = sorted(self.c.sockets)[0] if exclude and self.c.sockets else None
        self.c.publish(app_id, channels, event, data, excluded)

    @rule(app_id=st.sampled_from(["1", "2"]), user_id=st.sampled_from(USERS))
    def terminate_user(self, app_id: str, user_id: str) -> None:
        self.c.terminate_user(app_id, user_id)

    @precondition(lambda self: self.since_drain >= 25)
    @rule(shutdown=st.booleans())
    def everything_closes(self, shutdown: bool) -> None:
        if shutdown:
            self.c.shutdown()
        self.c.drain()
        self.since_drain = 0

    @invariant()
    def count_steps(self) -> None:
        self.since_drain += 1

    def teardown(self) -> None:
        if not self.c.broken:
            self.c.drain()


def run_machine(chosen: Any) -> None:
    """Run the state machine under ``chosen`` settings (used by pytest and by fuzz/run.py)."""
    run_state_machine_as_test(RelayMachine, settings=chosen)


CAMPAIGN = [("relay_machine", lambda chosen: run_machine(settings(chosen, stateful_step_count=80)), 20)]


def test_relay_machine() -> None:
    """Random interleavings of sockets, pipes and time: every check above holds after every step."""
    run_machine(profile_settings(1000, stateful_step_count=60))


@pytest.mark.parametrize("program", corpus_params(TARGET))
def test_replay_corpus(program: dict[str, Any]) -> None:
    """Captured pusher-js / 2011-client / open_pipe sessions and past crashes replay with every check."""
    run_program(program)
