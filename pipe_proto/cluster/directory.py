"""A relay as one node of a cluster: the directory answered by Redis.

Theory of operation (docs/cluster.md). Every node keeps the records of its
own sockets, as a lone relay does, and shares through Redis what holds for
the whole cluster: channel counts, presence members, signed-in users,
connection counts, the last event of cache channels, and which nodes want
which traffic. Every change goes through one Lua script
(:mod:`.script`), called with :class:`~pipe_proto.relay.outputs.ClusterCall`
outputs that the adapter sends to Redis in order; each node's own share of
every count is kept apart so that another node can take it out again when
this one dies.

Each node has an inbox, a Redis pub/sub channel only it reads. The script
publishes there what a node must act on: channel events published on other
nodes (only to nodes with subscribers to that channel), presence frames and
subscription counts, events and terminations for users, watchlist changes,
and the answers to this node's own joins and sign-ins. Answers and events
travel the same road, so a node sees them in the order Redis ran them: a
socket's ``subscription_succeeded`` lists exactly the members whose
``member_added`` it will not receive.

Liveness: every node writes a heartbeat every :data:`BEAT` seconds and
reaps nodes silent for :data:`DEAD_AFTER`: the reaping script removes a dead
node's share in one step (its members leave, the channels it alone occupied
are vacated), exactly once. Webhooks of departures wait
:data:`~pipe_proto.webhooks.LEAVE_DELAY` and are confirmed against Redis, so
that a return on any node cancels them, as on one relay.

When Redis is unreachable a node keeps serving its own sockets from its own
records (joins answered at once with the members it knows of); events for
other nodes are lost and counted. When Redis is back the node resynchronises:
its share in Redis is replaced by what its records say now, and the counts
move by the difference.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from .. import jsontext
from ..apps import App
from ..errors import PusherCode
from ..pipe import events as pipe_events
from ..pipe.codec import PipeFrameError
from ..pipe.events import AuthResponse
from ..pusher.events import MemberAdded, MemberRemoved
from ..relay.authorization import Member, Refuse, SignedInUser
from ..relay.core import Core, frame
from ..relay.directory import Answer, ChannelFacts, Joined, LocalDirectory, Pending
from ..relay.later import Later, gather
from ..relay.outputs import ClusterCall, Send
from ..relay.pipes import TAKEN_OVER, Hub
from ..relay.state import AppState, Cached, Channel, PresenceMember, Socket
from ..webhooks import LEAVE_DELAY
from .pipes import PP_RECORD, ClusterHub
from .remote import RemoteRequests, unknown_request

if TYPE_CHECKING:
    from ..relay.channels import Channels
    from ..relay.pipe_auth import PipeAuthorizations
    from ..relay.pipe_connections import PipeConnections
    from ..relay.sockets import Sockets
    from ..relay.users import Users

__all__ = [
    "BEAT", "DEAD_AFTER", "ID_SPAN", "MERGE_ARGS", "MERGE_CALLS", "MERGE_EVENTS", "MERGE_LIMIT", "RESYNC_CHUNK",
    "ClusterDirectory", "inbox", "merged", "multi", "weight",
]

#: Seconds between a node's heartbeats (and its look for dead nodes).
BEAT = 2.0
#: A node silent this long is dead: the others clean up after it.
DEAD_AFTER = 10.0
#: Fields of a node's share sent per resynchronising call.
RESYNC_CHUNK = 200
#: Most characters of frames or messages one merged call carries (see :func:`merged`).
MERGE_LIMIT = 64 * 1024
#: Most pipe events one merged ``pp`` call carries.
MERGE_EVENTS = 32
#: Most calls one ``multi`` call runs (see :func:`multi`), and about how many
#: arguments they have in all (a ``pp`` call of many events counts for many).
MERGE_CALLS = 64
MERGE_ARGS = 512
#: Connection numbers per node (ids are ``{node * ID_SPAN + n}.{nonce}``).
ID_SPAN = 10**12


def merged(last: ClusterCall, call: ClusterCall) -> ClusterCall | None:
    """``last`` and ``call`` as one call, if they can travel together.

    An adapter queueing calls while Redis answers earlier ones merges each
    new call into the last queued one when this says so (neither waiting
    for a result). Only the last call is merged into, so calls keep their
    order. What merges:

    * publishes to one channel, uncounted and uncached (a REST batch, a
      pipe's stream of ``send_to_channel``, triggers arriving together):
      they reach each other node as one inbox message of several frames,
      written to each subscriber at once (one write per connection, not one
      per event);
    * events for the pipes (``pp``): one script run routes them all, and
      tells each member's node once;
    * messages for one node (``tell``): one inbox message, a bundle (``b``);
    * acks of one session (``pack``): the later one, acks being cumulative.
    """
    a, b = last.args, call.args
    op = a[0]
    if op != b[0] or last.token is not None or call.token is not None or a[1:4] != b[1:4]:
        return None
    if op == "pub":
        if a[4:6] == b[4:6] and a[7] == b[7] == "0" and a[9] == b[9] == "-" and len(a[6]) + len(b[6]) < MERGE_LIMIT:
            return ClusterCall((*a[:6], a[6] + "\n" + b[6], *a[7:]))
    elif op == "pp":
        if a[4:6] == b[4:6] and len(a[6]) + len(b[6]) < MERGE_LIMIT and a[6].count(PP_RECORD) + 1 < MERGE_EVENTS:
            return ClusterCall((*a[:6], a[6] + PP_RECORD + b[6]))
    elif op == "tell":
        message = b[4]
        if message.count("\n") == 1 and len(a[4]) + len(message) < MERGE_LIMIT:
            first = a[4] if a[4].startswith("b\n") else None
            if first is None and a[4].count("\n") == 1:
                first = "b\n" + a[4]
            if first is not None:
                return ClusterCall((*a[:4], first + "\n" + message))
    elif op == "pack" and a[4] == b[4]:
        return call if int(b[5]) >= int(a[5]) else last
    return None


def weight(call: ClusterCall) -> int:
    """About how many arguments ``call`` is for the script: each event of a ``pp`` call counts as its six fields."""
    args = call.args
    if args[0] == "pp":
        return len(args) + 6 * args[6].count(PP_RECORD)
    return len(args)


def multi(calls: Sequence[ClusterCall]) -> ClusterCall:
    """Calls whose results nobody reads, as one call of the script (its ``multi`` operation).

    They run in one go, in their order, each as if called alone; an
    adapter sends runs of such calls (up to :data:`MERGE_CALLS`) this way
    to spare Redis and itself the cost of a call for each.
    """
    if len(calls) == 1:
        return calls[0]
    prefix, node = calls[0].args[1:3]
    args: list[str] = ["multi", prefix, node]
    for call in calls:
        own = call.args
        args.append(str(len(own) - 2))
        args.append(own[0])
        args.extend(own[3:])
    return ClusterCall(tuple(args))


def inbox(prefix: str, node: str) -> str:
    """The pub/sub channel a node reads its messages from."""
    return f"{prefix}:n:{node}"


class _Join(NamedTuple):
    sock: Socket
    channel: Channel
    member: Member | None
    #: Set when the socket left before the answer came: leave once it does.
    leaving: list[bool]


class ClusterDirectory:
    """The :class:`~pipe_proto.relay.directory.Directory` of a cluster node.

    Args:
        core: the relay's records.
        node: this node's id: digits, unique in the cluster (socket, pipe and
            session ids start with it times 10**12, so any node can tell
            which node holds a socket).
        prefix: the cluster's name: every Redis key and channel starts with it.
        beat: seconds between heartbeats.
        dead_after: seconds of silence after which a node is reaped.
    """

    remote = True

    def __init__(
        self, core: Core, *, node: str, prefix: str = "pipe-relay", beat: float = BEAT, dead_after: float = DEAD_AFTER
    ) -> None:
        if not node.isdigit() or len(node) > 9:
            raise ValueError(f"a node id is 1 to 9 digits, not {node!r}")
        self.core = core
        self._local = LocalDirectory(core)
        self.node = str(int(node))
        #: The first connection number of this node (see ``node``).
        self.id_base = int(node) * ID_SPAN
        self.prefix = prefix
        self.beat = beat
        self.dead_after = dead_after
        #: Whether Redis is reachable (both the calls and the inbox).
        self.connected = False
        self._channels: Channels | None = None
        self._users: Users | None = None
        self._sockets: Sockets | None = None
        self._pipes: PipeConnections | None = None
        self._asking: PipeAuthorizations | None = None
        self._hubs: dict[str, ClusterHub] = {}
        #: Sockets pipes were told of (their node's share lists them).
        self._known: set[str] = set()
        self.remote_requests = RemoteRequests(self)
        self._token = 0
        #: Answers awaited from the inbox or from a call's result, by token.
        self._waiting: dict[int, Callable[[Any, float], None]] = {}
        self._joins: dict[int, _Join] = {}
        #: The latest join of a socket to a channel still waiting for its answer.
        self._joining: dict[tuple[str, str], int] = {}
        self._signins: dict[int, tuple[Socket, SignedInUser]] = {}
        #: Sockets waiting to know whether they fit the app's connection limit.
        self._admissions: dict[str, tuple[AppState, Callable[[bool, float], None]]] = {}
        self._next_beat = math.inf
        #: Departures whose webhooks wait: (due, app id, field, token).
        self._departures: list[tuple[float, str, str, str]] = []
        #: Presence members whose arrival this node told its own subscribers
        #: while Redis was down, (app, channel, key): their departure in the
        #: same outage is told here too.
        self._told_while_down: set[tuple[str, str, str]] = set()
        self.counters = {
            "messages_in": 0,
            "calls": 0,
            "lost_while_down": 0,
            "resyncs": 0,
            "nodes_reaped": 0,
            "outages": 0,
            "fenced": 0,
        }

    def bind(
        self, sockets: Sockets, channels: Channels, users: Users, pipes: PipeConnections, asking: PipeAuthorizations
    ) -> None:
        """Attach the rules the answers go to."""
        self._sockets, self._channels, self._users = sockets, channels, users
        self._pipes, self._asking = pipes, asking

    def new_hub(self, app: App, send: Callable[[str, str], None]) -> Hub:
        hub = self._hubs[app.id] = ClusterHub(app, send, self)
        return hub

    def node_of(self, conn_id: str) -> str | None:
        """The node that made a socket, pipe or session id (``None``: not a cluster id)."""
        number = conn_id.partition(".")[0]
        return str(int(number) // ID_SPAN) if number.isdigit() else None

    def socket_known(self, state: AppState, socket_id: str) -> None:
        self._known.add(socket_id)
        if self.connected:
            self.call("sock", state.app.id, socket_id, "1")

    def socket_gone(self, state: AppState, socket_id: str) -> None:
        if socket_id in self._known:
            self._known.discard(socket_id)
            if self.connected:
                self.call("sock", state.app.id, socket_id, "-1")

    @property
    def sockets(self) -> Sockets | None:
        """The socket rules (for other nodes' requests)."""
        return self._sockets

    @property
    def asking(self) -> PipeAuthorizations | None:
        """The pipe authorizations (for other nodes' requests)."""
        return self._asking

    def expect_many(self) -> str:
        """A fresh token for answers that come as messages (not kept in ``_waiting``)."""
        self._token += 1
        return str(self._token)

    @property
    def inbox(self) -> str:
        """This node's inbox channel."""
        return inbox(self.prefix, self.node)

    # ------------------------------------------------------------- calling

    def call(self, op: str, *args: str, answer: Callable[[Any, float], None] | None = None) -> int:
        """Queue a call of the script; ``answer`` gets its result (or its inbox reply, by token)."""
        if not self.connected:
            return 0  # nothing reaches Redis now; the resync makes up for it
        token = 0
        if answer is not None:
            self._token += 1
            token = self._token
            self._waiting[token] = answer
        self.counters["calls"] += 1
        self.core.out.append(ClusterCall((op, self.prefix, self.node, *args), token or None))
        return token

    def expect(self, answer: Callable[[Any, float], None]) -> str:
        """A token for an answer that comes through the inbox."""
        self._token += 1
        self._waiting[self._token] = answer
        return str(self._token)

    def _ask(self, op: str, *args: str, parse: Callable[[Any], Any]) -> Pending[Any]:
        """A question the REST API waits for: the adapter runs the call and resumes."""
        return Pending(ClusterCall((op, self.prefix, self.node, *args)), parse)

    def result(self, token: int, result: Any, now: float) -> None:
        """The result of a call made with an answer."""
        answer = self._waiting.pop(token, None)
        if answer is not None:
            answer(result, now)

    # ------------------------------------------------------------- sockets

    def admit(self, state: AppState, socket_id: str, now: float, answer: Callable[[bool, float], None]) -> None:
        limit = state.app.limits.max_connections
        if limit is None:
            answer(True, now)
            return
        if not self.connected:
            answer(state.socket_count < limit, now)
            return

        def admitted(reply: Any, now: float) -> None:
            if self._admissions.pop(socket_id, None) is None:
                # It went away meanwhile: give its place back.
                if not reply.get("refused"):
                    self.call("conn", state.app.id, "-1", "0")
                return
            answer(not reply.get("refused"), now)

        self._admissions[socket_id] = (state, answer)
        self.call("conn", state.app.id, "1", str(limit), self.expect(admitted))

    def released(self, state: AppState, socket_id: str) -> None:
        if state.app.limits.max_connections is not None and self.connected:
            self.call("conn", state.app.id, "-1", "0")

    def abandoned(self, socket_id: str) -> None:
        self._admissions.pop(socket_id, None)

    # ------------------------------------------------------------ channels

    @staticmethod
    def _counted(state: AppState, channel: Channel) -> str:
        return "1" if state.app.features.subscription_count and channel.members is None else "0"

    def join(self, state: AppState, channel: Channel, sock: Socket, member: Member | None, now: float) -> None:
        assert self._channels is not None
        if not self.connected:
            self._join_here(state, channel, sock, member)
            self._channels.joined(sock, channel, Joined(members=self._local_members(channel)), now)
            return
        join = _Join(sock, channel, member, [False])
        token = self.expect(lambda reply, now: self._joined(number, reply, now))
        number = int(token)
        self._joins[number] = join
        self._joining[sock.id, channel.name] = number
        args = [state.app.id, channel.name, token, self._counted(state, channel), "1" if channel.type.cached else "0"]
        if member is not None:
            args += [member.key, *self._member_texts(channel.name, member.user_id, member.info)]
            args.append(str(state.app.limits.max_presence_members))
        self.call("join", *args)

    @staticmethod
    def _member_texts(channel: str, user_id: str | int, info: Any) -> tuple[str, str, str]:
        """A member as the script keeps it: its entry in the list, its removal frame, its arrival frame."""
        return (
            jsontext.dumps([user_id, info]),
            frame(MemberRemoved(channel=channel, user_id=user_id)),
            frame(MemberAdded(channel=channel, user_id=user_id, user_info=info)),
        )

    @staticmethod
    def _add_member(channel: Channel, sock: Socket, member: Member | None) -> None:
        if member is None or channel.members is None:
            return
        known = channel.members.get(member.key)
        if known is None:
            channel.members[member.key] = PresenceMember(member, sock.id)
        else:
            known.sockets.add(sock.id)

    def _join_here(self, state: AppState, channel: Channel, sock: Socket, member: Member | None) -> None:
        """A join answered from this node's records (Redis is down).

        As one relay would with this node's members, its other subscribers
        hear of a new one (the resync's announcement of it is then known
        here, and not passed on). A member also on another node may so be
        announced twice: this node cannot know.
        """
        if member is not None and channel.members is not None and member.key not in channel.members:
            self._told_while_down.add((state.app.id, channel.name, member.key))
            self._tell_here(channel, MemberAdded(channel=channel.name, user_id=member.user_id, user_info=member.info))
        self._add_member(channel, sock, member)

    def _tell_here(self, channel: Channel, event: MemberAdded | MemberRemoved) -> None:
        """Send a member's arrival or departure to this node's subscribers of ``channel``."""
        if channel.sockets:
            self.core.out.append(Send(tuple(channel.sockets), frame(event)))

    @staticmethod
    def _local_members(channel: Channel) -> list[tuple[str | int, Any]] | None:
        if channel.members is None:
            return None
        return [(m.user_id, m.info) for m in channel.members.values()]

    def _joined(self, token: int, reply: Any, now: float) -> None:
        join = self._joins.pop(token, None)
        if join is None:
            return
        assert self._channels is not None
        sock, channel, member = join.sock, join.channel, join.member
        if self._joining.get((sock.id, channel.name)) == token:
            del self._joining[sock.id, channel.name]
        state = sock.app
        if reply.get("refused"):
            if join.leaving[0]:
                channel.joining -= 1
                self._channels.forget_if_empty(state, channel)
            else:
                limit = state.app.limits.max_presence_members
                full = Refuse("LimitReached", f"presence channel is full ({limit} members)", 413)
                self._channels.join_refused(sock, channel, full)
            return
        self._transitions(reply.get("transitions") or [], now, member)
        if join.leaving[0] or sock.id not in self.core.sockets:
            # It left before the answer: the join happened, so leave now.
            channel.joining -= 1
            self._call_leave(state, channel, member.key if member else None)
            self._channels.forget_if_empty(state, channel)
            return
        self._add_member(channel, sock, member)
        cached = None
        if reply.get("cache") is not None:
            value = reply["cache"]
            cached = Cached(value["event"], value["data"], math.inf)
        members = reply.get("members")
        count = reply.get("count") if self._counted(state, channel) == "1" else None
        joined = Joined(
            members=None if members is None else [(m[0], m[1]) for m in members],
            cached=cached,
            miss_first=bool(reply.get("miss")),
            subscription_count=count,
        )
        self._channels.joined(sock, channel, joined, now)
        if count is not None:
            # As on one relay: each join's node sends the count it made, each leave's the one it left.
            self._count_hook(state, channel, int(count), now)

    def leave(self, state: AppState, channel: Channel, sock: Socket, key: str | None, joined: bool, now: float) -> None:
        if not joined:
            token = self._joining.pop((sock.id, channel.name), None)
            join = self._joins.get(token) if token is not None else None
            if join is not None:
                join.leaving[0] = True
            return
        if key is not None and channel.members is not None:
            known = channel.members.get(key)
            if known is not None:
                known.sockets.discard(sock.id)
                if not known.sockets:
                    del channel.members[key]
                    told = (state.app.id, channel.name, key)
                    if not self.connected and told in self._told_while_down:
                        # Its arrival was told here in this outage, so is its departure.
                        # Others' wait for the resync: the member may be on another node.
                        self._told_while_down.discard(told)
                        self._tell_here(channel, MemberRemoved(channel=channel.name, user_id=known.user_id))
        if self.connected:
            self._call_leave(state, channel, key)

    def _call_leave(self, state: AppState, channel: Channel, key: str | None) -> None:
        args = [state.app.id, channel.name, self._counted(state, channel)]
        if key is not None:
            args.append(key)

        def left(result: Any, now: float) -> None:
            reply = jsontext.loads(result)
            self._transitions(reply["transitions"], now, None)
            if self._counted(state, channel) == "1" and reply["count"]:
                # None when the channel emptied: channel_vacated says so (as on one relay).
                self._count_hook(state, channel, int(reply["count"]), now)

        self.call("leave", *args, answer=left)

    @staticmethod
    def _count_hook(state: AppState, channel: Channel, count: int, now: float) -> None:
        if state.webhooks.wants("subscription_count"):
            state.webhooks.event("subscription_count", now, channel=channel.name, subscription_count=count)

    def members(self, state: AppState, channel: Channel, sock: Socket, now: float) -> None:
        assert self._channels is not None
        if channel.members is None or not self.connected:
            self._channels.joined_again(sock, channel, self._local_members(channel))
            return

        def answer(result: Any, now: float) -> None:
            assert self._channels is not None
            members = [tuple(jsontext.loads(m)) for m in result]
            self._channels.joined_again(sock, channel, [(m[0], m[1]) for m in members])

        self.call("members", state.app.id, channel.name, answer=answer)

    def publish(
        self,
        state: AppState,
        name: str,
        text: str,
        exclude: str | None,
        cached: Cached | None,
        now: float,
        *,
        counted: bool = False,
    ) -> Later | None:
        if not self.connected:
            self.counters["lost_while_down"] += 1
            return None
        args = [state.app.id, name, exclude or "-", text]
        if cached is None:
            args += ["0", ""]
        else:
            ttl = max(1, int((cached.expires - now) * 1000))
            args += [str(ttl), jsontext.dumps({"event": cached.event, "data": cached.data})]
        return self._counted_call("pub", args, counted, now)

    def _counted_call(self, op: str, args: list[str], counted: bool, now: float) -> Later | None:
        """Call ``op``; with ``counted``, a count the nodes it reached will answer."""
        if not counted:
            self.call(op, *args, "-")
            return None
        token, entry = self.remote_requests.count(now)
        self.call(op, *args, token, answer=lambda reached, now: self.remote_requests.expecting(token, int(reached)))
        return entry.later

    def cached(self, state: AppState, name: str, now: float) -> Answer[Cached | None]:
        return self._ask("channel", state.app.id, name, parse=lambda r: self._facts(r, now).cached)

    # --------------------------------------------------------------- users

    def sign_in(self, state: AppState, sock: Socket, user: SignedInUser, now: float) -> None:
        assert self._users is not None
        users = self._users
        if not self.connected:
            online = [uid for uid in user.watchlist if uid in state.users]
            users.watching(sock, user, online)
            return
        def answer(reply: Any, now: float) -> None:
            self._signins.pop(number, None)
            users.watching(sock, user, list(reply.get("online") or []))

        token = self.expect(answer)
        number = int(token)
        self._signins[number] = (sock, user)
        self.call("signin", state.app.id, user.id, token, *user.watchlist)

    def sign_out(self, state: AppState, sock: Socket, user: SignedInUser, now: float) -> None:
        if self.connected:
            self.call("signout", state.app.id, user.id, *user.watchlist)

    def to_user(
        self, state: AppState, user_id: str, text: str, exclude: str | None, now: float, *, counted: bool = False
    ) -> Later | None:
        if not self.connected:
            self.counters["lost_while_down"] += 1
            return None
        return self._counted_call("touser", [state.app.id, user_id, exclude or "-", text], counted, now)

    def terminate(self, state: AppState, user_id: str, now: float, *, counted: bool = False) -> Later | None:
        if not self.connected:
            self.counters["lost_while_down"] += 1
            return None
        return self._counted_call("term", [state.app.id, user_id], counted, now)

    # ----------------------------------------------------- other nodes' sockets

    def send_to_sockets(
        self, state: AppState, socket_ids: list[str], text: str, now: float, *, counted: bool = True
    ) -> int | Later:
        by_node: dict[str, list[str]] = {}
        for socket_id in socket_ids:
            node = self.node_of(socket_id)
            if node is not None and node != self.node:
                by_node.setdefault(node, []).append(socket_id)
        if not by_node or not self.connected:
            return 0
        if not counted:
            for node, ids in by_node.items():
                self.remote_requests.tell(node, state, "ss", (ids, text))
            return 0
        asks = [
            self.remote_requests.ask(node, state, "ss", (ids, text), now, 0)
            for node, ids in by_node.items()
        ]
        def total(counts: list[Any]) -> int:
            return sum(int(c) for c in counts if not isinstance(c, PipeFrameError))

        found: int | Later = gather(asks, total)
        return found

    def disconnect_elsewhere(
        self, state: AppState, socket_id: str, code: int, reason: str | None, now: float
    ) -> bool | Later:
        node = self.node_of(socket_id)
        if node is None or node == self.node or not self.connected:
            return False
        body = {"id": socket_id, "code": code, "reason": reason}
        return self.remote_requests.ask(node, state, "sd", body, now, False)

    def answer_elsewhere(self, state: AppState, answer: AuthResponse, now: float) -> Later:
        node = answer.request_id.partition(":")[0]
        if not node.isdigit() or node == self.node or not self.connected:
            raise unknown_request(answer.request_id)
        body = {
            "request_id": answer.request_id,
            "allow": answer.allow,
            "channel_data": answer.channel_data,
            "user_data": answer.user_data,
            "reason": answer.reason,
        }
        return self.remote_requests.ask(node, state, "ar", body, now, unknown_request(answer.request_id))

    # ---------------------------------------------------------------- REST

    # Without Redis, this node's records answer, as a lone relay's would.

    def app_status(self, state: AppState, local: dict[str, Any]) -> Answer[dict[str, Any]]:
        if not self.connected:
            return local

        def merged(result: Any) -> dict[str, Any]:
            # This node's counts, with the groups' counters of the whole cluster.
            items = list(result)
            groups = local["pipe"]["groups"]
            for index in range(0, len(items), 2):
                name = _text(items[index])
                counters = _pairs(items[index + 1])
                group = groups.setdefault(name, {"members": 0, "sessions": 0, "here": 0})
                for field in ("pending", "pending_bytes", "delivered", "redelivered", "dropped"):
                    group[field] = int(counters.get(field, "0"))
            local["node"] = self.node
            return local

        return self._ask("pstats", state.app.id, parse=merged)

    def channels(self, state: AppState, prefix: str, users: bool) -> Answer[dict[str, tuple[int, int]]]:
        if not self.connected:
            return self._local.channels(state, prefix, users)

        def parse(result: Any) -> dict[str, tuple[int, int]]:
            items = list(result)
            return {
                _text(items[i]): (int(items[i + 1]), int(items[i + 2])) for i in range(0, len(items), 3)
            }

        return self._ask("channels", state.app.id, prefix, "1" if users else "0", parse=parse)

    def channel(self, state: AppState, name: str, now: float) -> Answer[ChannelFacts]:
        if not self.connected:
            return self._local.channel(state, name, now)
        return self._ask("channel", state.app.id, name, parse=lambda r: self._facts(r, now))

    @staticmethod
    def _facts(result: Any, now: float) -> ChannelFacts:
        count, users, cache, ttl = result
        cached = None
        if cache:
            value = jsontext.loads(cache)
            cached = Cached(value["event"], value["data"], now + max(0, int(ttl)) / 1000)
        return ChannelFacts(int(count), int(users), cached)

    def channel_users(self, state: AppState, name: str) -> Answer[list[str]]:
        if not self.connected:
            return self._local.channel_users(state, name)
        return self._ask("users", state.app.id, name, parse=lambda r: [_text(u) for u in r])

    # --------------------------------------------------------------- inbox

    def message(self, data: bytes, now: float) -> None:
        """A message from this node's inbox (docs/cluster.md lists them)."""
        self.counters["messages_in"] += 1
        text = data.decode("utf-8", "surrogatepass") if isinstance(data, bytes) else data
        if text.startswith("b\n"):
            # A bundle: messages of one line of head and one of body each.
            lines = text.split("\n")
            for index in range(1, len(lines) - 1, 2):
                self._handle(lines[index], lines[index + 1], now)
            return
        head, _, body = text.partition("\n")
        self._handle(head, body, now)

    def _handle(self, head: str, body: str, now: float) -> None:
        kind, _, rest = head.partition(" ")
        if kind == "r":
            if self.remote_requests.answered(rest, body):
                return
            answer = self._waiting.pop(int(rest), None)
            if answer is not None:
                answer(jsontext.loads(body), now)
            return
        words = rest.split(" ")
        if kind == "q":
            self.remote_requests.handle(words, body, now)
            return
        state = self.core.states.get(words[0])
        if state is None:
            return
        if kind[0] == "p":
            self._pipe_message(kind, words, body, now)
            return
        assert self._channels is not None and self._users is not None
        reached = 0
        if kind in ("e", "m", "n"):
            channel = state.channels.get(words[1])
            if channel is not None and channel.sockets and not (kind == "m" and self._known_member(channel, body)):
                if kind == "e":
                    # Events published together: one frame per line (a frame is one line of JSON).
                    exclude = words[2] if words[2] != "-" else None
                    for text in body.split("\n"):
                        reached = self._channels.deliver(channel, text, exclude)
                else:
                    reached = self._channels.deliver(channel, body, None)
        elif kind == "u":
            reached = self._users.deliver_to_user(state, words[1], body, None if words[2] == "-" else words[2])
        elif kind == "t":
            reached = self._users.terminate_here(state, words[1], now)
        elif kind == "w":
            self._users.went(state, words[1], online=words[2] == "online")
            return
        # A counted publish or termination: [... node token] at the end.
        if len(words) >= (5 if kind in ("e", "u") else 4) and kind in ("e", "u", "t"):
            asker, token = words[-2], words[-1]
            self.call("tell", asker, f"r {token}\n{reached}")

    @staticmethod
    def _known_member(channel: Channel, frame: str) -> bool:
        """Whether a member_added names a member this node has on the channel.

        A join's frame always comes before its own answer, so this only
        happens when a resync announces this node's own members back to it
        (after Redis lost its data, or for members that joined while it was
        down, told here then): its sockets knew them all along.
        """
        if not channel.members or '"pusher_internal:member_added"' not in frame:
            return False
        user_id = jsontext.loads(jsontext.loads(frame)["data"])["user_id"]
        return str(user_id) in channel.members

    def _pipe_message(self, kind: str, words: list[str], body: str, now: float) -> None:
        hub = self._hubs.get(words[0])
        if hub is None:
            return
        if kind == "pm":
            hub.learn(words[1], body)
        elif kind == "pe":
            hub.pushed(words[1], body)
        elif kind == "pn":
            hub.notified(words[1])
        elif kind == "pl":
            hub.legacy(words[1], body)
        elif kind == "px":
            pipe_id = hub.taken_over(words[1], words[2])
            if pipe_id is not None and self._pipes is not None:
                self._pipes.drop(pipe_id, now, TAKEN_OVER)

    # --------------------------------------------------------- transitions

    def _transitions(self, transitions: list[list[str]], now: float, member: Member | None) -> None:
        """Webhooks and pipe notices for what a call changed in the cluster."""
        assert self._channels is not None
        rules = self._channels
        for transition in transitions:
            kind, rest = transition[0], transition[1:]
            if kind == "reaped":
                self.counters["nodes_reaped"] += 1
                continue
            state = self.core.states.get(rest[0])
            if state is None:
                continue
            if kind == "occupied":
                rules.occupied(state, rest[1], now)
            elif kind == "added":
                user_id: str | int = rest[2]
                info = None
                if member is not None and member.key == rest[2]:
                    user_id, info = member.user_id, member.info
                rules.member_added(state, rest[1], user_id, info, now)
            elif kind in ("vacated", "removed"):
                field = ("v|" + rest[1]) if kind == "vacated" else f"r|{rest[1]}|{rest[2]}"
                self._departures.append((now + LEAVE_DELAY, rest[0], field, rest[-1]))
            elif kind == "due":
                self._departed(state, rest[1], now)
            elif kind == "lost":
                # A dead node's socket: its pipes hear of it once, from the node that reaped it.
                closed = pipe_events.SocketClosed(socket_id=rest[1], code=None, reason=None)
                state.hub.publish("socket_existence", rest[1], closed, now)
            # "reoccupied" and "readded": back in time, nothing to tell.

    def _departed(self, state: AppState, field: str, now: float) -> None:
        assert self._channels is not None
        kind, _, rest = field.partition("|")
        if kind == "v":
            self._channels.vacated(state, rest, now, confirmed=True)
        else:
            channel, _, user = rest.partition("|")
            self._channels.member_removed(state, channel, user, None, now, confirmed=True)

    # ---------------------------------------------------------------- time

    def next_deadline(self) -> float:
        deadline = min(self._next_beat, self.remote_requests.next_deadline())
        if self._departures:
            deadline = min(deadline, self._departures[0][0])
        return deadline

    def tick(self, now: float) -> None:
        self.remote_requests.tick(now)
        while self._departures and self._departures[0][0] <= now:
            _, app_id, field, token = self._departures.pop(0)
            state = self.core.states.get(app_id)
            if state is None or not self.connected:
                continue

            def confirmed(result: Any, now: float, state: AppState = state, field: str = field) -> None:
                if int(result) == 1:
                    self._departed(state, field, now)

            self.call("confirm", app_id, field, token, answer=confirmed)
        if now >= self._next_beat:
            self._next_beat = now + self.beat
            if self.connected:
                self._heartbeat()

    def _heartbeat(self) -> None:
        core = self.core
        info = jsontext.dumps({"sockets": len(core.sockets), "pipes": len(core.pipes)})
        self.call("beat", info, answer=self._beaten)
        apps = list(core.apps)
        graces = " ".join(str(int(app.pipe.resume_grace * 1000)) for app in apps)
        self.call(
            "reap",
            str(int(self.dead_after * 1000)),
            " ".join(self._counted_apps()),
            " ".join(app.id for app in apps),
            graces,
            answer=lambda result, now: self._transitions(jsontext.loads(result), now, None),
        )
        for app in apps:
            # Sessions whose grace is over end, buffered events too old go (any node may: it is atomic).
            settings = app.pipe
            self.call(
                "pexpire", app.id, str(settings.buffer_events), str(settings.buffer_bytes),
                str(int(settings.buffer_ttl * 1000)),
            )

    def _beaten(self, result: Any, now: float) -> None:
        if int(result[1]) == 1:
            self._fence(now)

    def _fence(self, now: float) -> None:
        """This node was reaped while it was silent (paused past ``dead_after``).

        The others already told everyone its sockets closed, its members
        left, its pipes' sessions wait for a resume: so they must. Its
        connections are closed with 4200 (pusher-js reconnects, pipes
        resume), without a word to Redis, and the node starts afresh.
        """
        self.counters["fenced"] += 1
        self.connected = False
        assert self._sockets is not None and self._pipes is not None
        reason = "This node left the cluster for a while. Please reconnect."
        for sock in list(self.core.sockets.values()):
            self._sockets.kick(sock, PusherCode.RECONNECT, reason, now)
        for pipe_id in list(self.core.pipes):
            self._pipes.drop(pipe_id, now, (PusherCode.RECONNECT, reason))
        self._known.clear()
        self.up(now)

    def _counted_apps(self) -> list[str]:
        return [app.id for app in self.core.apps if app.features.subscription_count]

    # ------------------------------------------------------------- outages

    def up(self, now: float) -> None:
        """Redis is reachable (again): put this node's share right, then carry on."""
        self.connected = True
        self.counters["resyncs"] += 1
        self._told_while_down.clear()
        on_result = lambda result, now: self._transitions(jsontext.loads(result), now, None)  # noqa: E731
        apps = " ".join(app.id for app in self.core.apps)
        self.call("rs_begin", apps)
        counted = " ".join(self._counted_apps())
        chunk: list[str] = []
        for field in self._share():
            chunk.extend(field)
            if len(chunk) >= RESYNC_CHUNK * 5:
                self.call("rs_add", counted, *chunk, answer=on_result)
                chunk = []
        if chunk:
            self.call("rs_add", counted, *chunk, answer=on_result)
        self.call("rs_end", counted, apps, answer=on_result)
        for app_id, hub in self._hubs.items():
            hub.restore(now)
            self.call("pmembers", app_id, answer=_resetting(hub))
        self._next_beat = now
        self.tick(now)

    def down(self, now: float) -> None:
        """Redis is unreachable: answer what waits from this node's own records."""
        if self.connected:
            self.counters["outages"] += 1
        self.connected = False
        joins = list(self._joins.values())
        signins = list(self._signins.values())
        self._joins.clear()
        self._joining.clear()
        self._signins.clear()
        self._waiting.clear()
        self._departures.clear()
        self._told_while_down.clear()
        self.remote_requests.down()
        for hub in self._hubs.values():
            hub.down()
        assert self._channels is not None
        for join in joins:
            sock, channel = join.sock, join.channel
            if join.leaving[0] or sock.id not in self.core.sockets:
                channel.joining -= 1
                self._channels.forget_if_empty(sock.app, channel)
                continue
            self._join_here(sock.app, channel, sock, join.member)
            self._channels.joined(sock, channel, Joined(members=self._local_members(channel)), now)
        # Admissions waiting: the records answer.
        admissions = list(self._admissions.values())
        self._admissions.clear()
        for state, answer in admissions:
            limit = state.app.limits.max_connections
            answer(limit is None or state.socket_count < limit, now)
        # Sign-ins waiting for their watchlist: the records answer.
        assert self._users is not None
        for sock, user in signins:
            online = [uid for uid in user.watchlist if uid in sock.app.users]
            self._users.watching(sock, user, online)

    def _share(self) -> list[tuple[str, ...]]:
        """This node's share of the cluster's counts, as its records say now."""
        share: list[tuple[str, ...]] = []
        for app_id, state in self.core.states.items():
            for name, channel in state.channels.items():
                if channel.sockets:
                    share.append((f"s|{app_id}|{name}", str(len(channel.sockets)), "", "", ""))
                for key, known in (channel.members or {}).items():
                    texts = self._member_texts(name, known.user_id, known.info)
                    share.append((f"m|{app_id}|{name}|{key}", str(len(known.sockets)), *texts))
            for uid, sockets in state.users.items():
                share.append((f"u|{app_id}|{uid}", str(len(sockets)), "", "", ""))
            for uid, sockets in state.watchers.items():
                share.append((f"w|{app_id}|{uid}", str(len(sockets)), "", "", ""))
            if state.app.limits.max_connections is not None and state.socket_count:
                share.append((f"c|{app_id}", str(state.socket_count), "", "", ""))
        for socket_id in self._known:
            sock = self.core.sockets.get(socket_id)
            if sock is not None:
                share.append((f"k|{sock.app.app.id}|{socket_id}", "1", "", "", ""))
        return share

    def stats(self) -> dict[str, Any]:
        return {"node": self.node, "connected": self.connected, **self.counters}


def _resetting(hub: ClusterHub) -> Callable[[Any, float], None]:
    def reset(result: Any, now: float) -> None:
        hub.reset(_pairs(result))

    return reset


def _pairs(flat: Any) -> dict[str, str]:
    items = [_text(item) for item in flat]
    return dict(zip(items[0::2], items[1::2], strict=True))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
