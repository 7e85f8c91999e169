"""The relay core: every decision about apps, sockets, channels and pipes."""

from .authorization import Allow, AskPipe, Member, Refuse, SignedInUser
from .outputs import Close, Failure, Output, Probe, Send, WebhookEvent
from .relay import SUPPORTED_PROTOCOLS, Relay
from .state import SocketDetails

__all__ = [
    "SUPPORTED_PROTOCOLS",
    "Allow",
    "AskPipe",
    "Close",
    "Failure",
    "Member",
    "Output",
    "Probe",
    "Refuse",
    "Relay",
    "Send",
    "SignedInUser",
    "SocketDetails",
    "WebhookEvent",
]
