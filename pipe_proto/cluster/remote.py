"""Requests between nodes: what a pipe asks of sockets that live on other nodes.

A pipe connected to node A may name a socket of node B (``send_to_socket``,
``disconnect_socket``, an ``auth_response`` to B's request), or reach
sockets on many nodes (``send_to_channel``, ``terminate_user``) and want to
know how many. A asks through B's inbox (``q TOKEN A APP KIND\\nJSON``), B
does it and answers through A's (``r TOKEN\\nJSON``); a count over several
nodes adds their answers, the number of nodes coming from the script that
reached them. Whatever has not answered within :data:`REMOTE_TIMEOUT`
seconds (a node died) counts as nothing: the pipe gets its reply anyway.
"""

from __future__ import annotations

import math
from collections import deque
from typing import TYPE_CHECKING, Any

from .. import jsontext
from ..errors import PipeCode
from ..pipe.codec import PipeFrameError
from ..pipe.events import AuthResponse
from ..relay.later import Later
from ..relay.outputs import Send

if TYPE_CHECKING:
    from ..relay.state import AppState
    from .directory import ClusterDirectory

__all__ = ["REMOTE_TIMEOUT", "RemoteRequests", "unknown_request"]

#: Seconds a node waits for other nodes' answers.
REMOTE_TIMEOUT = 5.0


class _Count:
    """Answers to add up: how many are expected (once known), and their sum so far."""

    __slots__ = ("deadline", "expected", "later", "received", "total")

    def __init__(self, deadline: float) -> None:
        self.later = Later()
        self.expected: int | None = None
        self.received = 0
        self.total = 0
        self.deadline = deadline

    def add(self, value: int) -> None:
        self.received += 1
        self.total += value
        self.check()

    def check(self) -> None:
        if self.expected is not None and self.received >= self.expected:
            self.later.resolve(self.total)


class RemoteRequests:
    """This node's requests to others, and its answers to theirs."""

    def __init__(self, directory: ClusterDirectory) -> None:
        self.directory = directory
        self._counts: dict[str, _Count] = {}
        self._single: dict[str, tuple[Later, float, Any]] = {}
        # (deadline, token) of every request in the order made, so in the
        # order of their deadlines (see _deadline); answered ones stay until
        # they reach the front. The timer's questions (next_deadline, tick)
        # then look at the front only, not at every request in flight.
        self._order: deque[tuple[float, str]] = deque()

    def _deadline(self, token: str, now: float) -> float:
        # Never before the last request's, so the queue stays in deadline
        # order even if a caller's clock went back.
        deadline = now + REMOTE_TIMEOUT
        if self._order and self._order[-1][0] > deadline:
            deadline = self._order[-1][0]
        self._order.append((deadline, token))
        return deadline

    # ------------------------------------------------------------ asking

    def count(self, now: float) -> tuple[str, _Count]:
        """A token for answers to add up; set ``expected`` once known."""
        token = self.directory.expect_many()
        entry = self._counts[token] = _Count(self._deadline(token, now))
        return token, entry

    def expecting(self, token: str, nodes: int) -> None:
        """The script reached ``nodes`` nodes for ``token``'s count."""
        entry = self._counts.get(token)
        if entry is not None:
            entry.expected = nodes
            entry.check()
            if entry.later.settled:
                del self._counts[token]

    def ask(self, node: str, state: AppState, kind: str, body: Any, now: float, default: Any) -> Later:
        """Ask ``node`` to do ``kind`` for app ``state``; ``default`` if it does not answer in time."""
        token = self.directory.expect_many()
        later = Later()
        self._single[token] = (later, self._deadline(token, now), default)
        self.directory.call("tell", node, self._message(token, state, kind, body))
        return later

    def tell(self, node: str, state: AppState, kind: str, body: Any) -> None:
        """Ask ``node`` to do ``kind`` for app ``state``, wanting no answer."""
        self.directory.call("tell", node, self._message("-", state, kind, body))

    def _message(self, token: str, state: AppState, kind: str, body: Any) -> str:
        head = f"q {token} {self.directory.node} {state.app.id} {kind}"
        if kind == "ss":
            # (ids, frame): the ids in the head, the frame (one line of JSON) as it is, not encoded again.
            ids, text = body
            return f"{head} {','.join(ids)}\n{text}"
        return f"{head}\n{jsontext.dumps(body)}"

    def answered(self, token: str, body: str) -> bool:
        """An answer from another node; False if it is not one of these."""
        entry = self._counts.get(token)
        if entry is not None:
            entry.add(int(body))
            if entry.later.settled:
                del self._counts[token]
            return True
        single = self._single.pop(token, None)
        if single is None:
            return False
        later, _, _ = single
        value = jsontext.loads(body)
        if isinstance(value, dict) and "error" in value:
            later.fail(PipeFrameError(int(value["error"]["code"]), str(value["error"]["message"])))
        else:
            later.resolve(value)
        return True

    def next_deadline(self) -> float:
        """When the oldest request still waiting times out (``inf``: none waits)."""
        order = self._order
        while order and order[0][1] not in self._counts and order[0][1] not in self._single:
            order.popleft()  # answered meanwhile
        return order[0][0] if order else math.inf

    def tick(self, now: float) -> None:
        """Settle what waited too long with what it has."""
        order = self._order
        while order and order[0][0] <= now:
            _, token = order.popleft()
            entry = self._counts.pop(token, None)
            if entry is not None:
                entry.later.resolve(entry.total)
                continue
            single = self._single.pop(token, None)
            if single is not None:
                later, _, default = single
                if isinstance(default, PipeFrameError):
                    later.fail(default)
                else:
                    later.resolve(default)

    def down(self) -> None:
        """Redis went away: nobody will answer; settle everything now."""
        for entry in self._counts.values():
            entry.later.resolve(entry.total)
        for later, _, default in self._single.values():
            if isinstance(default, PipeFrameError):
                later.fail(default)
            else:
                later.resolve(default)
        self._counts.clear()
        self._single.clear()
        self._order.clear()

    # ---------------------------------------------------------- answering

    def handle(self, head: list[str], body: str, now: float) -> None:
        """A request from another node: ``[token, node, app, kind]`` (``ss``: and its ids) and its body."""
        token, asker, app_id, kind = head[:4]
        directory = self.directory
        state = directory.core.states.get(app_id)
        answer: Any = None
        if state is not None:
            request = ((head[4].split(",") if len(head) > 4 else []), body) if kind == "ss" else jsontext.loads(body)
            answer = self._do(state, kind, request, now)
        if token != "-":
            directory.call("tell", asker, f"r {token}\n{jsontext.dumps(answer)}")

    def _do(self, state: AppState, kind: str, request: Any, now: float) -> Any:
        directory = self.directory
        core = directory.core
        if kind == "ss":
            ids, text = request
            targets = tuple(s for s in ids if s in core.sockets and core.sockets[s].app is state)
            if targets:
                core.out.append(Send(targets, text))
            return len(targets)
        if kind == "sd":
            sock = core.sockets.get(request["id"])
            if sock is None or sock.app is not state:
                return False
            assert directory.sockets is not None
            directory.sockets.kick(sock, int(request["code"]), request["reason"] or "Disconnected by the app", now)
            return True
        if kind == "ar":
            assert directory.asking is not None
            answer = AuthResponse(**request)
            try:
                directory.asking.answer(state, answer, now)
            except PipeFrameError as exc:
                return {"error": {"code": exc.code, "message": exc.message}}
            return {}
        return None


def unknown_request(request_id: str) -> PipeFrameError:
    """The 4222 of an auth_response nobody is waiting for."""
    message = f"request_id {request_id!r} is unknown, already answered or timed out"
    return PipeFrameError(PipeCode.UNKNOWN_REQUEST_ID, message)

