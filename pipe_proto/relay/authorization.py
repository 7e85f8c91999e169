"""Who may join which channel and sign in as whom: pure decisions.

The relay asks :func:`authorize_subscription` and :func:`authorize_signin`
what to do with a ``pusher:subscribe`` or ``pusher:signin``; the answer is
:class:`Allow` (with the presence member or the signed-in user), :class:`Refuse`
(with the subscription error to send), or :class:`AskPipe` (no signature was
given: a pipe holding ``auth`` decides, pipe-protocol.md 5). Stateful checks
(member limits, channels per socket) stay in the relay.

Presence subscriptions that carry ``channel_data`` are checked against the
three-part signature only: accepting the two-part form there would let a
client attach any ``user_id`` to a signature made for a signed-in user.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from .. import jsontext
from ..apps import App, Limits
from ..names import SERVER_TO_USER_PREFIX, ChannelKind, channel_name_error, channel_type, user_id_error
from ..pusher.events import SignIn, Subscribe
from ..signatures import check_channel_auth, check_signin

__all__ = [
    "Allow",
    "AskPipe",
    "Member",
    "Refuse",
    "SignedInUser",
    "authorize_signin",
    "authorize_subscription",
    "member_from_data",
    "user_from_data",
]


class Member(NamedTuple):
    """A presence member: the user id as sent, its info, and its string key."""

    user_id: str | int
    info: Any
    key: str


class SignedInUser(NamedTuple):
    """A socket's signed-in user (pusher-channels.md 8.1)."""

    id: str
    info: Any
    user_data: str
    watchlist: tuple[str, ...]
    watchlist_truncated: bool


class Allow(NamedTuple):
    """Go ahead; ``member`` for presence channels, ``user`` for sign-in."""

    member: Member | None = None
    user: SignedInUser | None = None


class Refuse(NamedTuple):
    """Refused: the fields of a ``pusher:subscription_error``."""

    type: str
    error: str
    status: int


class AskPipe(NamedTuple):
    """No signature was given: ask the pipe holding ``auth``."""


def _auth_error(message: str, status: int = 401) -> Refuse:
    return Refuse("AuthError", message, status)


def member_from_data(data: Any, limits: Limits) -> Member | Refuse:
    """A presence member from decoded channel data ``{user_id, user_info?}``."""
    if not isinstance(data, dict) or "user_id" not in data:
        return _auth_error("channel_data must be a JSON object with a user_id", 400)
    user_id = data["user_id"]
    if isinstance(user_id, bool) or not isinstance(user_id, (str, int)) or user_id == "":
        return _auth_error("user_id must be a non-empty string or a number", 400)
    key = str(user_id)
    if len(key) > limits.max_presence_user_id:
        return Refuse(
            "LimitReached", f"user_id is longer than {limits.max_presence_user_id} characters", 413
        )
    info = data.get("user_info")
    # Measured as members receive it: JSON, so a string counts with its quotes.
    if info is not None and jsontext.encoded_size(jsontext.dumps(info)) > limits.max_user_info_bytes:
        return Refuse(
            "LimitReached", f"user_info is larger than {limits.max_user_info_bytes} bytes", 413
        )
    return Member(user_id, info, key)


def authorize_subscription(
    app: App, socket_id: str, request: Subscribe, user: SignedInUser | None
) -> Allow | Refuse | AskPipe:
    """Decide a subscription (pusher-channels.md 4.3 and 5)."""
    name = request.channel
    problem = channel_name_error(name, app.limits.max_channel_name)
    if problem is not None:
        return Refuse("InvalidChannel", problem, 400)
    kind = channel_type(name).kind
    if kind is ChannelKind.PUBLIC:
        return Allow()
    if kind is ChannelKind.USER:
        if user is not None and name == SERVER_TO_USER_PREFIX + user.id:
            return Allow()
        return _auth_error(f"{name} is only for the connection signed in as that user")
    if not request.auth:
        return AskPipe()
    if kind is not ChannelKind.PRESENCE:
        problem = check_channel_auth(
            app.key, app.secret, socket_id, name, request.auth, request.channel_data
        )
        return _auth_error(problem) if problem else Allow()
    if request.channel_data is None:
        if user is None:
            return _auth_error("presence without channel_data needs a signed-in connection")
        problem = check_channel_auth(app.key, app.secret, socket_id, name, request.auth)
        if problem:
            return _auth_error(problem)
        # The presence limits (user_id length, user_info size) apply to signed-in members too.
        member = member_from_data({"user_id": user.id, "user_info": user.info}, app.limits)
        return member if isinstance(member, Refuse) else Allow(member=member)
    # Only the three-part form: see the module docstring.
    problem = check_channel_auth(
        app.key, app.secret, socket_id, name, request.auth, request.channel_data,
        two_part=False,
    )
    if problem:
        return _auth_error(problem)
    try:
        data = jsontext.loads(request.channel_data)
    except ValueError:
        return _auth_error("channel_data is not JSON", 400)
    member = member_from_data(data, app.limits)
    return member if isinstance(member, Refuse) else Allow(member=member)


def user_from_data(user_data: str, max_watchlist: int) -> SignedInUser | str:
    """The user a sign-in names, or why ``user_data`` is unacceptable."""
    try:
        data = jsontext.loads(user_data)
    except ValueError:
        return "user_data is not JSON"
    if not isinstance(data, dict):
        return "user_data must be a JSON object"
    problem = user_id_error(data.get("id"))
    if problem is not None:
        return f"user_data: {problem}"
    raw_watchlist = data.get("watchlist", [])
    if not isinstance(raw_watchlist, list) or not all(isinstance(i, str) for i in raw_watchlist):
        return "user_data.watchlist must be a list of user id strings"
    watchlist = tuple(dict.fromkeys(raw_watchlist))
    return SignedInUser(
        id=data["id"],
        info=data.get("user_info"),
        user_data=user_data,
        watchlist=watchlist[:max_watchlist],
        watchlist_truncated=len(watchlist) > max_watchlist,
    )


def authorize_signin(app: App, socket_id: str, request: SignIn) -> Allow | Refuse | AskPipe:
    """Decide a ``pusher:signin`` (pusher-channels.md 8.1)."""
    if not request.auth:
        return AskPipe()
    problem = check_signin(app.key, app.secret, socket_id, request.auth, request.user_data)
    if problem:
        return _auth_error(problem)
    user = user_from_data(request.user_data, app.limits.max_watchlist)
    if isinstance(user, str):
        return _auth_error(user, 400)
    return Allow(user=user)
