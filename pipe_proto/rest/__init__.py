"""The Pusher HTTP REST API: request authentication and the endpoints' logic."""

from .api import MAX_BODY_BYTES, RestResponse, describe_request, handle
from .auth import authenticate

__all__ = ["MAX_BODY_BYTES", "RestResponse", "authenticate", "describe_request", "handle"]
