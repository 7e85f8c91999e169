"""The relay core: every decision about apps, sockets, channels and pipes."""

from .authorization import Allow, AskPipe, Member, Refuse, SignedInUser
from .outputs import Close, Output, Probe, Send, WebhookEvent
from .relay import SUPPORTED_PROTOCOLS, Relay
from .state import SocketDetails

__all__ = [
    "SUPPORTED_PROTOCOLS",
    "Allow",
    "AskPipe",
    "Close",
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
