"""Checks shared by the cases: each raises :class:`~..runner.Failed` with what it wanted and what came."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import trio

from pipe_proto.pusher import Error, Message, Pong, PusherEvent, SubscriptionError, SubscriptionSucceeded

from ...testing.http import HttpResponse
from ...testing.sockets import FakeSocket, SocketClosed
from ..runner import Failed, describe, describe_refusal, subscription_outcome

__all__ = [
    "expect_event",
    "expect_nothing",
    "expect_open",
    "expect_refused",
    "expect_rejected",
    "expect_status",
    "message_on",
]


def expect_refused(sock: FakeSocket, code: int) -> None:
    """The handshake was refused with ``code`` (as the ``pusher:error`` or as the close)."""
    if sock.established is not None:
        raise Failed(f"refusal {code} (pusher:error and close)", "pusher:connection_established")
    if not ((sock.refusal is not None and sock.refusal.code == code) or sock.close_code == code):
        raise Failed(f"refusal {code} (pusher:error and close)", describe_refusal(sock))


async def expect_open(sock: FakeSocket, why: str = "the connection to stay open") -> None:
    """The connection still works: a ``pusher:ping`` gets its ``pusher:pong``."""
    try:
        await sock.send_json({"event": "pusher:ping", "data": {}})
        await sock.expect(Pong, timeout=2)
    except SocketClosed as exc:
        raise Failed(why, f"closed with {exc.code} {exc.reason}".rstrip()) from None
    except trio.TooSlowError:
        raise Failed(why, "no pusher:pong to a pusher:ping any more") from None


async def expect_rejected(sock: FakeSocket, channel: str, *, statuses: tuple[int, ...] = ()) -> Any:
    """The subscribe to ``channel`` was refused (``pusher:subscription_error``, or
    ``pusher:error`` as hosted Pusher does), no ``subscription_succeeded`` came, and
    the connection stayed open. ``statuses``: accepted ``status`` values, if checked."""
    outcome = await subscription_outcome(sock, channel)
    if outcome is None or isinstance(outcome, SubscriptionSucceeded):
        raise Failed(f"a subscription error for {channel}", describe(outcome))
    if statuses and isinstance(outcome, SubscriptionError) and outcome.status not in statuses:
        raise Failed(f"a subscription error with status {' or '.join(map(str, statuses))}", describe(outcome))
    late = [e for e in await sock.gather(0.2) if isinstance(e, SubscriptionSucceeded)]
    if late:
        raise Failed("no subscription_succeeded after the error", describe(late[0]))
    await expect_open(sock, "the connection to stay open after a subscription error")
    return outcome


def message_on(channel: str, event: str | None = None) -> Callable[[PusherEvent], bool]:
    """A matcher for an application event on ``channel`` (named ``event``, if given)."""
    def match(item: PusherEvent) -> bool:
        return isinstance(item, Message) and item.channel == channel and (event is None or item.event == event)

    return match


async def expect_event(sock: FakeSocket, match: Callable[[PusherEvent], bool] | type, what: str,
                       timeout: float = 2.0) -> Any:  # noqa: ASYNC109
    """The first event matching ``match``, or :class:`Failed` naming ``what`` and what came instead."""
    seen = len(sock.received)
    try:
        return await sock.expect(match, timeout=timeout)
    except (trio.TooSlowError, SocketClosed) as exc:
        others = [describe(e) for e in sock.received[seen:]]
        closed = f"; closed with {exc.code}" if isinstance(exc, SocketClosed) else ""
        got = ("only " + "; ".join(others[:3])) if others else "nothing"
        raise Failed(what, got + closed) from None


async def expect_nothing(sock: FakeSocket, match: Callable[[PusherEvent], bool], what: str,
                         seconds: float = 0.5) -> None:
    """Nothing matching ``match`` arrives within ``seconds``."""
    for item in await sock.gather(seconds):
        if match(item):
            raise Failed(what, describe(item))


def expect_status(response: HttpResponse, *statuses: int, what: str = "") -> Any:
    """The response has one of ``statuses``; returns its JSON body."""
    if response.status not in statuses:
        wanted = " or ".join(map(str, statuses))
        raise Failed(f"HTTP {wanted}{' ' + what if what else ''}",
                     f"HTTP {response.status} {response.body[:160].decode('utf-8', 'replace')}")
    return response.json()


def data_of(message: Message) -> Any:
    """A message's ``data`` decoded once when it is a JSON string."""
    if isinstance(message.data, str):
        try:
            return json.loads(message.data)
        except ValueError:
            return message.data
    return message.data


def is_error(item: PusherEvent, code: int | None = None, *, any_code: bool = False) -> bool:
    """Whether ``item`` is a ``pusher:error`` (with ``code``, unless ``any_code``)."""
    return isinstance(item, Error) and (any_code or item.code == code)
