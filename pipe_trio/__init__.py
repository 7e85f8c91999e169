"""pipe_trio: the Trio adapter for pipe_proto.

The relay server (HTTP and WebSocket on one port), the backend's Pipe client
(:func:`open_pipe`), a Python Pusher socket client (:func:`connect`), the
webhook sender and the ``pipe-relay`` command line.
"""

from pipe_proto import __version__

from .server import RelayServer, serve
from .webhooks import WebhookSender

__all__ = ["RelayServer", "WebhookSender", "__version__", "serve"]
