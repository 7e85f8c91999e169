"""pipe_proto: the sans-I/O core of a Pusher-compatible relay with a Pipe.

Pure state machines and codecs: nothing here opens a socket, reads a clock
or draws a random number. Time and entropy come in as arguments, and every
decision comes out as plain data for an adapter (see ``pipe_trio``) to carry
out::

    from pipe_proto import App, Relay

    relay = Relay([App(id="1", key="key", secret="secret")])
    socket_id, outputs = relay.open_socket("key", {"protocol": "7"}, now=0.0, nonce=42)
    outputs = relay.socket_message(
        socket_id, '{"event":"pusher:subscribe","data":{"channel":"news"}}', now=0.1
    )
    # outputs == [Send(targets=(socket_id,), text='{"event":"pusher_internal:...'})]
"""

from ._version import __version__
from .apps import (
    App,
    AppChanges,
    AppRegistry,
    ConfigError,
    Features,
    Limits,
    PipeSettings,
    WebhookTarget,
    app_changes,
    apps_from_config,
)
from .errors import (
    CloseCode,
    LocalProtocolError,
    PipeCode,
    ProtocolError,
    PusherCode,
    RemoteProtocolError,
)
from .forwarded import TrustedProxies
from .relay import Close, Failure, Observed, Observer, Output, Probe, Relay, Send, SocketDetails, WebhookEvent

__all__ = [
    "App",
    "AppChanges",
    "AppRegistry",
    "Close",
    "CloseCode",
    "ConfigError",
    "Failure",
    "Features",
    "Limits",
    "LocalProtocolError",
    "Observed",
    "Observer",
    "Output",
    "PipeCode",
    "PipeSettings",
    "Probe",
    "ProtocolError",
    "PusherCode",
    "Relay",
    "RemoteProtocolError",
    "Send",
    "SocketDetails",
    "TrustedProxies",
    "WebhookEvent",
    "WebhookTarget",
    "__version__",
    "app_changes",
    "apps_from_config",
]
