"""Applications: identity, secrets, limits and features, from configuration.

An :class:`App` is immutable; the relay's mutable state for it lives in the
relay. :func:`apps_from_config` turns the parsed TOML configuration (a plain
dict, so the core never reads files) into apps, with every default in one
place: :class:`Limits`, :class:`Features`, :class:`PipeSettings`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, NamedTuple
from urllib.parse import urlsplit

import attrs

from .names import MAX_CHANNEL_NAME_CEILING, is_token

__all__ = [
    "WEBHOOK_KINDS",
    "App",
    "AppChanges",
    "AppRegistry",
    "ConfigError",
    "Features",
    "Limits",
    "PipeSettings",
    "WebhookTarget",
    "app_changes",
    "apps_from_config",
]

#: Every webhook event kind the relay can send (pusher-channels.md 10).
WEBHOOK_KINDS = frozenset(
    {
        "channel_occupied",
        "channel_vacated",
        "member_added",
        "member_removed",
        "client_event",
        "cache_miss",
        "subscription_count",
    }
)


class ConfigError(ValueError):
    """The configuration is invalid; the message names the offending setting."""


def _positive(_inst: object, attr: attrs.Attribute[Any], value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ConfigError(f"{attr.name} must be a positive number, not {value!r}")


def _positive_int(_inst: object, attr: attrs.Attribute[Any], value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{attr.name} must be a positive whole number, not {value!r}")


@attrs.frozen(kw_only=True)
class Limits:
    """Per-app limits of the Pusher side, with the documented defaults."""

    #: Largest event ``data`` in bytes (REST, client events, back channel).
    max_event_bytes: int = attrs.field(default=10240, validator=_positive)
    #: Largest WebSocket message a socket may send; bigger ones are discarded
    #: as they stream in and answered with an error frame.
    max_socket_message_bytes: int = attrs.field(default=32768, validator=_positive)
    max_channel_name: int = attrs.field(default=164, validator=_positive)
    max_channels_per_trigger: int = attrs.field(default=100, validator=_positive)
    max_batch_events: int = attrs.field(default=10, validator=_positive)
    max_presence_members: int = attrs.field(default=100, validator=_positive)
    max_user_info_bytes: int = attrs.field(default=1024, validator=_positive)
    max_presence_user_id: int = attrs.field(default=128, validator=_positive)
    client_events_per_second: int = attrs.field(default=10, validator=_positive)
    back_channel_per_second: int = attrs.field(default=50, validator=_positive)
    max_watchlist: int = attrs.field(default=100, validator=_positive)
    #: Channels one socket may be subscribed to at once.
    max_channels_per_socket: int = attrs.field(default=1000, validator=_positive)
    #: Subscribe requests one socket may make per second, on average; a burst
    #: of ``max_channels_per_socket`` is allowed (a client resubscribing to
    #: all its channels after a reconnect). Over it, ``LimitReached`` 429.
    subscriptions_per_second: float = attrs.field(default=10, validator=_positive)
    #: Sockets the app may hold at once (``None``: no limit); over it, 4004.
    max_connections: int | None = attrs.field(
        default=None, validator=attrs.validators.optional(_positive)
    )
    #: Seconds, a whole number (the protocol announces an integer).
    activity_timeout: int = attrs.field(default=120, validator=_positive_int)
    cache_ttl: float = attrs.field(default=1800.0, validator=_positive)
    #: Cache channels whose last event is kept; the oldest is forgotten first.
    max_cached_channels: int = attrs.field(default=10000, validator=_positive)

    def __attrs_post_init__(self) -> None:
        if self.max_channel_name > MAX_CHANNEL_NAME_CEILING:
            raise ConfigError(f"max_channel_name may not exceed {MAX_CHANNEL_NAME_CEILING}")


@attrs.frozen(kw_only=True)
class Features:
    """Per-app switches."""

    client_events: bool = True
    user_authentication: bool = True
    watchlist: bool = True
    subscription_count: bool = False
    #: Refuse plain (non-TLS) sockets with 4000 so pusher-js retries over TLS.
    tls_only: bool = False


def _lowercase(names: Iterable[str]) -> tuple[str, ...]:
    return tuple(name.lower() for name in names)


@attrs.frozen(kw_only=True)
class PipeSettings:
    """Per-app Pipe settings (pipe-protocol.md), with the spec's defaults."""

    max_pipes: int = attrs.field(default=64, validator=_positive)
    heartbeat: float = attrs.field(default=25.0, validator=_positive)
    auth_timeout: float = attrs.field(default=5.0, validator=_positive)
    max_frame_bytes: int = attrs.field(default=1024 * 1024, validator=_positive)
    window: int = attrs.field(default=1000, validator=_positive)
    #: Bytes a member may have in flight (sent, not acked), as held in memory.
    window_bytes: int = attrs.field(default=4 * 1024 * 1024, validator=_positive)
    resume_grace: float = attrs.field(default=10.0, validator=_positive)
    buffer_events: int = attrs.field(default=10000, validator=_positive)
    buffer_bytes: int = attrs.field(default=16 * 1024 * 1024, validator=_positive)
    buffer_ttl: float = attrs.field(default=60.0, validator=_positive)
    #: Request headers of a socket passed to 1.0 pipes (lowercase names).
    expose_headers: tuple[str, ...] = attrs.field(default=(), converter=_lowercase)


def _webhook_url(instance: Any, attr: Any, value: Any) -> None:
    # Checked whole here: a URL the sender cannot connect to (a port out of
    # range, no host) must fail the configuration, not the first webhook.
    if not isinstance(value, str) or not value.isascii() or not re.fullmatch(r"https?://\S+", value):
        # ASCII: the request line and Host header are (an IDN host goes in its xn-- form,
        # other characters percent-encoded).
        raise ConfigError(f"webhook url must be an http:// or https:// URL in ASCII, not {value!r}")
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError for a port that is not one
    except ValueError as exc:
        raise ConfigError(f"webhook url {value!r} is not usable: {exc}") from None
    if not parts.hostname:
        raise ConfigError(f"webhook url {value!r} has no host")


@attrs.frozen(kw_only=True)
class WebhookTarget:
    """Where an app's webhooks go and which kinds (empty: all kinds)."""

    url: str = attrs.field(validator=_webhook_url)
    kinds: frozenset[str] = attrs.field(default=frozenset(), converter=frozenset)

    def __attrs_post_init__(self) -> None:
        unknown = self.kinds - WEBHOOK_KINDS
        if unknown:
            raise ConfigError(f"unknown webhook kinds: {', '.join(sorted(unknown))}")

    def wants(self, kind: str) -> bool:
        """Whether this target receives events of ``kind``."""
        return not self.kinds or kind in self.kinds


_ID = re.compile(r"[0-9]+")


@attrs.frozen(kw_only=True)
class App:
    """One application: its credentials and settings.

    ``id`` is numeric (the Python SDK only accepts digits); ``key`` and
    ``secret`` are tokens of letters, digits and ``_-.``.
    """

    id: str = attrs.field()
    key: str = attrs.field()
    secret: str = attrs.field(repr=False)
    name: str = ""
    enabled: bool = True
    limits: Limits = attrs.Factory(Limits)
    features: Features = attrs.Factory(Features)
    pipe: PipeSettings = attrs.Factory(PipeSettings)
    webhooks: tuple[WebhookTarget, ...] = attrs.field(default=(), converter=tuple)

    def __attrs_post_init__(self) -> None:
        if not isinstance(self.id, str) or not _ID.fullmatch(self.id):
            raise ConfigError(f"app id must be digits, not {self.id!r}")
        for field in ("key", "secret"):
            value = getattr(self, field)
            if value == "":
                raise ConfigError(f"app {field} is missing (app {self.id})")
            if not is_token(value):
                raise ConfigError(f"app {field} must be letters, digits or _-. (app {self.id})")


class AppRegistry:
    """The configured apps, found by id (REST, Pipe) or by key (sockets)."""

    def __init__(self, apps: Iterable[App]) -> None:
        self._by_id: dict[str, App] = {}
        self._by_key: dict[str, App] = {}
        self.replace(apps)

    def replace(self, apps: Iterable[App]) -> None:
        """Hold ``apps`` instead (a reload); unchanged if they are invalid.

        Raises:
            ConfigError: two apps have the same id or the same key.
        """
        by_id: dict[str, App] = {}
        by_key: dict[str, App] = {}
        for app in apps:
            if app.id in by_id:
                raise ConfigError(f"two apps have the id {app.id}")
            if app.key in by_key:
                raise ConfigError(f"two apps have the key {app.key}")
            by_id[app.id] = app
            by_key[app.key] = app
        self._by_id, self._by_key = by_id, by_key

    def by_id(self, app_id: str) -> App | None:
        """The app with this id, if any."""
        return self._by_id.get(app_id)

    def by_key(self, key: str) -> App | None:
        """The app with this key, if any."""
        return self._by_key.get(key)

    def __iter__(self) -> Iterator[App]:
        return iter(self._by_id.values())

    def __len__(self) -> int:
        return len(self._by_id)


class AppChanges(NamedTuple):
    """How a new configuration's apps differ from the ones served (:func:`app_changes`)."""

    added: tuple[App, ...]
    removed: tuple[App, ...]
    #: The new versions of apps whose settings changed.
    changed: tuple[App, ...]
    #: Of ``changed``, those whose key or secret changed.
    credentials: tuple[App, ...]


def app_changes(old: Iterable[App], new: Iterable[App]) -> AppChanges:
    """Compare two sets of apps by id."""
    before = {app.id: app for app in old}
    after = {app.id: app for app in new}
    changed = tuple(app for app_id, app in after.items() if app_id in before and before[app_id] != app)
    return AppChanges(
        added=tuple(app for app_id, app in after.items() if app_id not in before),
        removed=tuple(app for app_id, app in before.items() if app_id not in after),
        changed=changed,
        credentials=tuple(
            app for app in changed if (app.key, app.secret) != (before[app.id].key, before[app.id].secret)
        ),
    )


def _section(cls: type[Any], raw: object, where: str) -> Any:
    if raw is None:
        return cls()
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where} must be a table")
    names = {f.name for f in attrs.fields(cls)}
    unknown = set(raw) - names
    if unknown:
        raise ConfigError(f"unknown setting(s) in {where}: {', '.join(sorted(unknown))}")
    try:
        return cls(**raw)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from None


def apps_from_config(config: Mapping[str, Any]) -> list[App]:
    """Build apps from a parsed configuration.

    The shape (TOML)::

        [defaults.limits]          # optional, applies to every app
        max_presence_members = 200

        [[apps]]
        id = "1"
        key = "app-key"
        secret = "app-secret"
        enabled = true
        [apps.limits]              # any Limits field
        [apps.features]            # any Features field
        [apps.pipe]                # any PipeSettings field
        [[apps.webhooks]]
        url = "http://localhost:8000/pusher/webhooks"
        kinds = ["channel_occupied", "channel_vacated"]

    Raises:
        ConfigError: a setting is unknown or invalid.
    """
    defaults = config.get("defaults", {})
    if not isinstance(defaults, Mapping):
        raise ConfigError("defaults must be a table")
    raw_apps = config.get("apps", [])
    if not isinstance(raw_apps, list):
        raise ConfigError("apps must be an array of tables ([[apps]])")
    apps = []
    for index, raw in enumerate(raw_apps):
        where = f"apps[{index}]"
        if not isinstance(raw, Mapping):
            raise ConfigError(f"{where} must be a table")
        known = {"id", "key", "secret", "name", "enabled", "limits", "features", "pipe", "webhooks"}
        unknown = set(raw) - known
        if unknown:
            raise ConfigError(f"unknown setting(s) in {where}: {', '.join(sorted(unknown))}")
        sections = {}
        for name, cls in (("limits", Limits), ("features", Features), ("pipe", PipeSettings)):
            merged = {**defaults.get(name, {}), **raw.get(name, {})}
            sections[name] = _section(cls, merged, f"{where}.{name}")
        hooks = raw.get("webhooks", [])
        if not isinstance(hooks, list):
            raise ConfigError(f"{where}.webhooks must be an array of tables")
        try:
            apps.append(
                App(
                    id=str(raw.get("id", "")),
                    key=raw.get("key", ""),
                    secret=raw.get("secret", ""),
                    name=str(raw.get("name", "")),
                    enabled=bool(raw.get("enabled", True)),
                    webhooks=[_section(WebhookTarget, h, f"{where}.webhooks") for h in hooks],
                    **sections,
                )
            )
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{where}: {exc}") from None
    return apps
