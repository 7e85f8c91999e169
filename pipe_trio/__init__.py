"""pipe_trio: the Trio adapter for pipe_proto.

The relay server (HTTP and WebSocket on one port), the backend's Pipe client
(:func:`open_pipe`), a Python Pusher socket client (:func:`connect`), the
webhook sender and the ``pipe-relay`` command line.
"""

from pipe_proto import RemoteProtocolError, __version__

from .pipe import AuthAnswer, Pipe, PipeDisconnectedError, PipeError, PipeRefusedError, open_pipe
from .pusher_client import PusherClient, SignInFailed, SubscriptionFailed, connect
from .server import RelayServer, serve
from .webhooks import WebhookSender

__all__ = [
    "AuthAnswer",
    "Pipe",
    "PipeDisconnectedError",
    "PipeError",
    "PipeRefusedError",
    "PusherClient",
    "RelayServer",
    "RemoteProtocolError",
    "SignInFailed",
    "SubscriptionFailed",
    "WebhookSender",
    "__version__",
    "connect",
    "open_pipe",
    "serve",
]
