"""Webhooks: which events to send, when, and the signed request that carries them.

:class:`WebhookScheduler` (one per app, inside the relay) turns relay
happenings into webhook events. ``channel_vacated`` and ``member_removed``
wait :data:`LEAVE_DELAY` seconds and are cancelled, together with the
matching ``channel_occupied``/``member_added``, when the channel or member
comes back in time, as Pusher does (pusher-channels.md 10); everything else
goes out at once. The adapter's sender batches the events it is given into
one body per target with :func:`build_request` and retries failures on the
schedule of :func:`retry_delay`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from . import jsontext
from .apps import App
from .departures import LEAVE_DELAY, Departures
from .signatures import webhook_signature

__all__ = [
    "LEAVE_DELAY",
    "MAX_RETRY_SECONDS",
    "WebhookRequest",
    "WebhookScheduler",
    "build_request",
    "retry_delay",
]

#: Seconds after which a failing webhook is given up (Pusher retries for 5 minutes;
#: the Python SDK rejects bodies older than that anyway).
MAX_RETRY_SECONDS = 300.0

# The event kinds that wait, and the kinds that cancel them.
_DELAYED = {"channel_vacated": "channel_occupied", "member_removed": "member_added"}
_CANCELS = {arrival: departure for departure, arrival in _DELAYED.items()}


class WebhookRequest(NamedTuple):
    """A webhook POST: body bytes and headers (``Content-Type`` exactly ``application/json``)."""

    body: bytes
    headers: tuple[tuple[str, str], ...]


def build_request(app: App, events: Sequence[dict[str, Any]], now: float) -> WebhookRequest:
    """The signed body ``{"time_ms", "events"}`` for ``events``, created at ``now``."""
    body = jsontext.dumps({"time_ms": int(now * 1000), "events": list(events)}).encode()
    return WebhookRequest(
        body=body,
        headers=(
            ("Content-Type", "application/json"),
            ("X-Pusher-Key", app.key),
            ("X-Pusher-Signature", webhook_signature(app.secret, body)),
        ),
    )


def retry_delay(attempt: int) -> float:
    """Seconds to wait before retry number ``attempt`` (1, 2, ...): 1, 2, 4 ... 60."""
    return float(min(60, 2 ** max(0, attempt - 1)))


class WebhookScheduler:
    """Webhook events of one app, with the delay and cancellation rules.

    Args:
        app: the app, whose ``webhooks`` say which kinds go where.
        emit: called with ``(urls, event)`` for every event due.
    """

    def __init__(self, app: App, emit: Callable[[tuple[str, ...], dict[str, Any]], None]) -> None:
        self._emit = emit
        self._urls: dict[str, tuple[str, ...]] = {}
        self.retarget(app)
        #: Departures by (kind, channel, user), waiting to go out.
        self._delayed: Departures[dict[str, Any]] = Departures(LEAVE_DELAY)

    def retarget(self, app: App) -> None:
        """Send to ``app``'s webhooks from now on (a reload); delayed events go to the new targets."""
        urls: dict[str, tuple[str, ...]] = {}
        for target in app.webhooks:
            for kind in ("channel_occupied", "channel_vacated", "member_added", "member_removed",
                         "client_event", "cache_miss", "subscription_count"):
                if target.wants(kind):
                    urls[kind] = (*urls.get(kind, ()), target.url)
        self._urls = urls

    def wants(self, kind: str) -> bool:
        """Whether any target takes ``kind`` (checked before building events)."""
        return kind in self._urls

    def event(self, kind: str, now: float, *, confirmed: bool = False, **fields: Any) -> None:
        """Record that ``kind`` happened, with the event's ``fields``.

        ``confirmed``: a departure whose delay already passed elsewhere (a
        cluster confirms it against Redis): it goes out at once.
        """
        if self._delayed:
            # Departures already due go out first: only a return within the
            # delay cancels one, even if the owner has not ticked since.
            self.tick(now)
        departure = _CANCELS.get(kind)
        key = (departure or kind, fields.get("channel", ""), str(fields.get("user_id", "")))
        if departure is not None and self._delayed.arrive(key)[0]:
            return  # it came back in time: neither the departure nor this arrival
        if kind not in self._urls:
            return
        event = {"name": kind, **fields}
        if kind in _DELAYED and not confirmed:
            self._delayed.hold(key, event, now)
        else:
            self._emit(self._urls[kind], event)

    def next_deadline(self) -> float:
        """When :meth:`tick` next has an event due."""
        return self._delayed.next_deadline()

    def tick(self, now: float) -> None:
        """Emit the delayed events now due."""
        for event in self._delayed.due(now):
            urls = self._urls.get(event["name"])
            if urls:  # none: a reload removed the kind's targets meanwhile
                self._emit(urls, event)

    def __len__(self) -> int:
        return len(self._delayed)
