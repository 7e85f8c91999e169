"""What the relay asks its adapter to do: plain data, no behaviour.

Every call into :class:`~pipe_proto.relay.Relay` returns a list of these, to
be carried out in order. They name connections by id (a socket id; pipes have
one too). One :class:`Send` may name many targets: the adapter builds the
WebSocket frame once and writes the same bytes to each.
"""

from __future__ import annotations

from typing import Any, NamedTuple

__all__ = ["Close", "ClusterCall", "Failure", "Output", "Probe", "Send", "WebhookEvent"]


class Send(NamedTuple):
    """Send ``text`` as one text message to every connection in ``targets``."""

    targets: tuple[str, ...]
    text: str


class Close(NamedTuple):
    """Close connection ``target`` with a WebSocket close ``code`` and ``reason``.

    The relay has already forgotten the connection: nothing more will be sent
    to it, and the adapter need not report its closing back.
    """

    target: str
    code: int
    reason: str


class Probe(NamedTuple):
    """Send a WebSocket ping to ``target`` (pipe heartbeats)."""

    target: str


class WebhookEvent(NamedTuple):
    """Queue one webhook event of app ``app_id`` for the webhook sender.

    ``event`` is the JSON object that goes into the ``events`` array of a
    webhook body; ``urls`` the targets configured for its kind.
    """

    app_id: str
    urls: tuple[str, ...]
    event: dict[str, Any]


class Failure(NamedTuple):
    """Handling an input raised ``error`` (a bug): the adapter logs it.

    Nothing the input had queued is returned, and ``target``, the connection
    whose input it was (``None`` for inputs of no connection), is closed
    with 1011 by the :class:`Close` that follows.
    """

    target: str | None
    error: Exception


class ClusterCall(NamedTuple):
    """Run the cluster's script (:mod:`pipe_proto.cluster.script`) with ``args``.

    Only a node of a cluster emits these. Calls must reach Redis in the
    order they were emitted. With a ``token``, what the call returns goes
    back to the relay through ``Relay.cluster_result(token, result, now)``.
    """

    args: tuple[str, ...]
    token: int | None = None


Output = Send | Close | Probe | WebhookEvent | Failure | ClusterCall
