"""Scripted peers for testing other people's code against the protocols, without I/O.

* :class:`FakeRelay`: the relay's side of the Pipe, scripted, for testing a
  Pipe client written by someone else (resume, gaps, authorization requests,
  refusals), fed text frames and returning the frames to send;
* the signers (:mod:`.signers`): what an auth endpoint, a server SDK or a
  webhook receiver computes, with every part overridable.

The I/O around them is in :mod:`pipe_trio.testing`; docs/testing.md shows both at work.
"""

from .fake_relay import FakeRelay, PipeConnection
from .signers import (
    WEBHOOK_MAX_AGE,
    channel_auth,
    shared_secret,
    sign,
    sign_query,
    signed_rest_params,
    signin_auth,
    webhook_problem,
    webhook_signature,
)

__all__ = [
    "WEBHOOK_MAX_AGE",
    "FakeRelay",
    "PipeConnection",
    "channel_auth",
    "shared_secret",
    "sign",
    "sign_query",
    "signed_rest_params",
    "signin_auth",
    "webhook_problem",
    "webhook_signature",
]
