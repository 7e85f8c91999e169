"""The relay core: every decision about apps, sockets, channels and pipes."""

from .authorization import Allow, AskPipe, Member, Refuse, SignedInUser
from .observe import Observed, Observer
from .outputs import Close, Failure, Output, Probe, Send, WebhookEvent
from .relay import SUPPORTED_PROTOCOLS, Relay
from .state import AppCounts, SocketDetails

__all__ = [
    "SUPPORTED_PROTOCOLS",
    "Allow",
    "AppCounts",
    "AskPipe",
    "Close",
    "Failure",
    "Member",
    "Observed",
    "Observer",
    "Output",
    "Probe",
    "Refuse",
    "Relay",
    "Send",
    "SignedInUser",
    "SocketDetails",
    "WebhookEvent",
]
