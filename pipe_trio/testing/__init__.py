"""Test peers that do I/O, for testing other people's clients and servers.

* :func:`serve_fake_relay`: a scripted relay on a port for a Pipe client
  under test (the script is :class:`pipe_proto.testing.FakeRelay`);
* :func:`open_fake_backend`: a raw pipe for a relay under test;
* :func:`open_fake_socket`: a raw Pusher socket for a server under test;
* :func:`rest_request` and :class:`WebhookReceiver`: the REST API as the SDKs
  call it, and webhooks as a receiver gets them.

docs/testing.md has two short examples; the conformance kit
(:mod:`pipe_trio.conformance`) is built from these pieces.
"""

from .backend import FakeBackend, open_fake_backend, signed_pipe_url
from .http import HttpResponse, ReceivedRequest, WebhookReceiver, http_request, rest_request
from .relay import FakeRelayServer, serve_fake_relay
from .sockets import FakeSocket, SocketClosed, Unreadable, open_fake_socket

__all__ = [
    "FakeBackend",
    "FakeRelayServer",
    "FakeSocket",
    "HttpResponse",
    "ReceivedRequest",
    "SocketClosed",
    "Unreadable",
    "WebhookReceiver",
    "http_request",
    "open_fake_backend",
    "open_fake_socket",
    "rest_request",
    "serve_fake_relay",
    "signed_pipe_url",
]
