"""The case catalogue, one module per family of groups; importing it registers every case."""

from . import connection, channels, events, rest, webhooks, pipe  # noqa: I001  (catalogue order)

__all__ = ["channels", "connection", "events", "pipe", "rest", "webhooks"]
