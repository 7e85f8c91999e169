"""The case model and the runner of the conformance kit.

A :class:`Case` is one black-box check of a server: an id
(``group.what-is-checked``), the section of the protocol reference or of
``docs/`` it checks, whether it checks a *protocol requirement* or one of
the choices the protocol leaves open (a *relay decision*: a case of that
level fails only a server that made another choice, and says so), a hard
timeout, and a coroutine that gets a :class:`Context`. The coroutine passes
by returning, fails by raising :class:`Failed` (what was expected, what
came), and skips by raising :class:`Skipped` (why it cannot run here).

The :class:`Context` hands out what a case needs and takes it back at the
end: sockets, pipes (closed when the case ends, whatever happened), signed
REST requests, channel names unique to this run, and the webhook receiver.

:func:`run_cases` runs cases one after the other. Anything unexpected a case
raises (a connection refused, a timeout) fails that case with a one-line
explanation, never a traceback. After a failure the runner checks that the
server still answers (a fresh socket reaches ``connection_established``);
if it does not, every remaining case fails with "server stopped answering"
at once, instead of each waiting for its timeout.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from enum import Enum
from typing import Any

import attrs
import trio

from ..testing.backend import FakeBackend, open_fake_backend
from ..testing.http import HttpResponse, WebhookReceiver, rest_request
from ..testing.sockets import FakeSocket, SocketClosed, open_fake_socket

__all__ = [
    "CASES",
    "Case",
    "Context",
    "Credentials",
    "Failed",
    "Level",
    "Result",
    "Skipped",
    "Status",
    "Target",
    "case",
    "run_cases",
    "select_cases",
]


class Level(Enum):
    """What a case checks."""

    #: Required by the Pusher protocol reference (or the Pipe protocol): every server should pass.
    PROTOCOL = "protocol requirement"
    #: A choice the protocol leaves open, as this project's docs/ make it.
    DECISION = "relay decision"


class Status(Enum):
    """The outcome of a case."""

    PASS = "PASS"
    FAIL = "FAIL"
    SKIP = "SKIP"


class Failed(Exception):
    """The server did not do what the case expects."""

    def __init__(self, expected: str, got: str) -> None:
        super().__init__(f"expected {expected}, got {got}")
        self.expected = expected
        self.got = got


class Skipped(Exception):
    """The case cannot run against this target (the reason says why)."""


@attrs.frozen
class Credentials:
    """An app's id, key and secret (``ID:KEY:SECRET`` on the command line)."""

    id: str
    key: str
    secret: str

    @classmethod
    def parse(cls, spec: str) -> Credentials:
        """Read ``ID:KEY:SECRET``.

        Raises:
            ValueError: not three non-empty parts.
        """
        parts = spec.split(":")
        if len(parts) != 3 or not all(parts):
            raise ValueError(f"expected ID:KEY:SECRET, not {spec!r}")
        return cls(*parts)


@attrs.frozen(kw_only=True)
class Target:
    """The server under test and what the operator told the kit about it.

    Attributes:
        url: ``ws://host:port`` (or ``wss://``).
        app: the app the cases use.
        app2: a second app of the same server (foreign-key and isolation cases).
        pipe: whether the server speaks the Pipe protocol (the ``pipe`` group).
        webhook_url: where the server was configured to send ``app``'s webhooks
            (the kit listens there), or ``None``.
        disabled_key: the key of a disabled app, for the 4003 case.
        max_wait: the longest a heartbeat case may wait for the server's
            ``activity_timeout`` (longer ones are skipped).
        pong_wait: the server's wait for a pong before it closes with 4201, if known.
    """

    url: str
    app: Credentials
    app2: Credentials | None = None
    pipe: bool = False
    webhook_url: str | None = None
    disabled_key: str | None = None
    max_wait: float = 5.0
    pong_wait: float | None = None


Run = Callable[["Context"], Awaitable[None]]


@attrs.frozen(kw_only=True)
class Case:
    """One check (see the module docstring)."""

    id: str
    title: str
    ref: str
    level: Level
    timeout: float
    run: Run = attrs.field(repr=False)
    needs: frozenset[str] = frozenset()

    @property
    def group(self) -> str:
        """The group: the id up to its first dot."""
        return self.id.split(".", 1)[0]


@attrs.frozen(kw_only=True)
class Result:
    """What one case found."""

    case: Case
    status: Status
    expected: str = ""
    got: str = ""
    seconds: float = 0.0


#: Every case, in catalogue order (filled by the modules of :mod:`.cases`).
CASES: list[Case] = []


def case(
    id: str,
    title: str,
    *,
    ref: str,
    level: Level = Level.PROTOCOL,
    timeout: float = 3.0,
    needs: Iterable[str] = (),
) -> Callable[[Run], Run]:
    """Register the decorated coroutine as a case."""
    def register(run: Run) -> Run:
        if any(c.id == id for c in CASES):
            raise ValueError(f"two cases are called {id}")
        CASES.append(Case(id=id, title=title, ref=ref, level=level, timeout=timeout, run=run,
                          needs=frozenset(needs)))
        return run

    return register


def select_cases(cases: Sequence[Case], only: Iterable[str] = (), *, pipe: bool = False) -> list[Case]:
    """The cases to run: those of the groups (or ids) in ``only`` when given; the
    ``pipe`` group only with ``pipe``."""
    wanted = [w.strip() for w in only if w.strip()]
    chosen = []
    for item in cases:
        if wanted:
            if not any(w in (item.group, item.id) for w in wanted):
                continue
        elif item.group == "pipe" and not pipe:
            continue
        chosen.append(item)
    return chosen


class Context:
    """What a case works with; everything it opens is closed when the case ends."""

    def __init__(self, target: Target, run_id: str, stack: AsyncExitStack, webhooks: WebhookReceiver | None,
                 serial: list[int]) -> None:
        self.target = target
        self.app = target.app
        self.run_id = run_id
        self._stack = stack
        self.webhooks = webhooks
        self._serial = serial

    # ------------------------------------------------------------- names

    def channel(self, prefix: str = "") -> str:
        """A channel name used by no other case of any run: ``{prefix}cf-{run}-{n}``."""
        self._serial[0] += 1
        return f"{prefix}cf-{self.run_id}-{self._serial[0]}"

    def user(self, name: str = "u") -> str:
        """A user id unique to this run."""
        self._serial[0] += 1
        return f"{name}-{self.run_id}-{self._serial[0]}"

    # ----------------------------------------------------------- sockets

    async def raw_socket(self, key: str | None = None, *, secret: str | None = None, **options: Any) -> FakeSocket:
        """A socket whatever the handshake's outcome (check ``established``)."""
        cm = open_fake_socket(self.target.url, key or self.app.key,
                              secret=secret if secret is not None else self.app.secret, **options)
        sock: FakeSocket = await self._stack.enter_async_context(cm)
        return sock

    async def socket(self, app: Credentials | None = None, **options: Any) -> FakeSocket:
        """An established socket of ``app`` (the target's app by default).

        Raises:
            Failed: the server refused the connection.
        """
        app = app or self.app
        sock = await self.raw_socket(app.key, secret=app.secret, **options)
        if sock.established is None:
            raise Failed("pusher:connection_established", describe_refusal(sock))
        return sock

    async def subscribed(self, sock: FakeSocket, channel: str, **options: Any) -> Any:
        """Subscribe and require ``subscription_succeeded``; returns it."""
        from pipe_proto.pusher import SubscriptionSucceeded

        await sock.subscribe(channel, **options)
        outcome = await subscription_outcome(sock, channel)
        if not isinstance(outcome, SubscriptionSucceeded):
            raise Failed(f"subscription_succeeded on {channel}", describe(outcome))
        return outcome

    # ------------------------------------------------------------- pipes

    async def raw_backend(self, app: Credentials | None = None, **options: Any) -> FakeBackend:
        """A pipe whatever the handshake's outcome (check ``established``)."""
        app = app or self.app
        cm = open_fake_backend(self.target.url, app_id=app.id, key=app.key, secret=app.secret, **options)
        backend: FakeBackend = await self._stack.enter_async_context(cm)
        return backend

    async def backend(self, **options: Any) -> FakeBackend:
        """An established pipe (protocol 1.0 unless ``version`` says otherwise).

        Raises:
            Failed: the server refused it.
        """
        backend = await self.raw_backend(**options)
        if backend.established is None:
            raise Failed("the pipe's connection_established",
                         f"HTTP {backend.http_status} {backend.http_body[:200]!r}" if backend.http_status
                         else f"closed with {backend.close_code}")
        return backend

    # -------------------------------------------------------------- REST

    async def rest(self, method: str, path: str, *, app: Credentials | None = None,
                   params: Mapping[str, str] | None = None, body: Any = None, absolute: bool = False,
                   **signing: Any) -> HttpResponse:
        """A signed REST request; ``path`` is relative to ``/apps/{id}`` unless ``absolute``."""
        app = app or self.app
        full = path if absolute else f"/apps/{app.id}{path}"
        key = signing.pop("key", app.key)
        secret = signing.pop("secret", app.secret)
        return await rest_request(self.target.url, method, full, key=key, secret=secret, params=params,
                                  body=body, **signing)

    async def trigger(self, channels: Sequence[str], event: str, data: str, **fields: Any) -> HttpResponse:
        """``POST /events`` and require a 2xx."""
        response = await self.rest("POST", "/events",
                                   body={"name": event, "channels": list(channels), "data": data, **fields})
        if not 200 <= response.status < 300:
            raise Failed("2xx from POST /events", f"{response.status} {response.body[:200]!r}")
        return response


async def subscription_outcome(sock: FakeSocket, channel: str, timeout: float = 2.0) -> Any:  # noqa: ASYNC109
    """What answered a subscribe to ``channel``: ``SubscriptionSucceeded``,
    ``SubscriptionError``, an ``Error`` frame (hosted Pusher's way of refusing),
    or ``None`` when nothing came within ``timeout``."""
    from pipe_proto.pusher import Error, SubscriptionError, SubscriptionSucceeded

    def answer(event: Any) -> bool:
        if isinstance(event, (SubscriptionSucceeded, SubscriptionError)):
            return bool(event.channel == channel)
        return isinstance(event, Error)

    try:
        return await sock.expect(answer, timeout=timeout)
    except trio.TooSlowError:
        return None


def describe(event: Any) -> str:
    """A short, readable form of a received event (or ``nothing``)."""
    if event is None:
        return "nothing"
    name = type(event).__name__
    fields = attrs.asdict(event, recurse=False) if attrs.has(type(event)) else {}
    text = ", ".join(f"{k}={v!r}" for k, v in fields.items())
    return f"{name}({text})"[:300]


def describe_refusal(sock: FakeSocket) -> str:
    """How a socket's handshake ended, in words."""
    if sock.http_status is not None:
        return f"HTTP {sock.http_status} instead of an upgrade"
    parts = []
    if sock.refusal is not None:
        parts.append(f"pusher:error {sock.refusal.code} {sock.refusal.message!r}")
    if sock.close_code is not None:
        parts.append(f"close {sock.close_code}")
    return ", ".join(parts) or "nothing"


def _explain(exc: BaseException) -> str:
    if isinstance(exc, SocketClosed):
        return f"the connection closed ({exc.code} {exc.reason})".replace(" )", ")")
    if isinstance(exc, trio.TooSlowError):
        return "no answer in time"
    if isinstance(exc, OSError):
        return f"connection error: {exc}"
    if isinstance(exc, BaseExceptionGroup):
        leaves = exc.exceptions
        return _explain(leaves[0]) if len(leaves) == 1 else f"{len(leaves)} errors: {_explain(leaves[0])}"
    return f"{type(exc).__name__}: {exc}"


async def server_answers(url: str, key: str, timeout: float = 3.0) -> bool:  # noqa: ASYNC109
    """Whether a fresh socket of app ``key`` reaches ``connection_established`` within ``timeout``."""
    try:
        with trio.fail_after(timeout):
            async with open_fake_socket(url, key, timeout=timeout) as sock:
                return sock.established is not None
    except (OSError, trio.TooSlowError, SocketClosed):
        return False


@asynccontextmanager
async def _webhook_receiver(url: str | None) -> AsyncIterator[WebhookReceiver | None]:
    if url is None:
        yield None
        return
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    receiver = WebhookReceiver()
    async with trio.open_nursery() as nursery:
        await nursery.start(receiver.serve, parts.hostname or "127.0.0.1", parts.port or 80)
        try:
            yield receiver
        finally:
            nursery.cancel_scope.cancel()


async def run_cases(
    target: Target,
    cases: Sequence[Case],
    *,
    on_result: Callable[[Result], None] | None = None,
) -> list[Result]:
    """Run ``cases`` against ``target`` one after the other; returns their results.

    ``on_result`` is called as each case ends (to print as the run goes).

    Raises:
        OSError: the webhook receiver cannot listen at ``target.webhook_url``.
    """
    run_id = secrets.token_hex(3)
    serial = [0]
    results: list[Result] = []
    down = False

    def report(result: Result) -> None:
        results.append(result)
        if on_result is not None:
            on_result(result)

    async with _webhook_receiver(target.webhook_url) as webhooks:
        for item in cases:
            missing = _missing(item, target)
            if missing:
                report(Result(case=item, status=Status.SKIP, got=missing))
                continue
            if down:
                report(Result(case=item, status=Status.FAIL, expected=item.title, got="server stopped answering"))
                continue
            started = time.monotonic()
            result = await _run_one(item, target, run_id, webhooks, serial)
            result = attrs.evolve(result, seconds=time.monotonic() - started)
            if result.status is Status.FAIL and not await server_answers(target.url, target.app.key):
                down = True
                result = attrs.evolve(result, got=f"{result.got}; then the server stopped answering")
            report(result)
    return results


def _missing(item: Case, target: Target) -> str:
    reasons = {
        "app2": (target.app2 is None, "needs a second app (--app2)"),
        "webhooks": (target.webhook_url is None,
                     "needs --webhook-url, a URL the server sends this app's webhooks to"),
        "disabled_key": (target.disabled_key is None, "needs --disabled-key, the key of a disabled app"),
        "pipe": (not target.pipe, "needs --pipe"),
    }
    for need in sorted(item.needs):
        lacking, why = reasons.get(need, (False, ""))
        if lacking:
            return why
    return ""


def _leaf(exc: BaseException) -> BaseException:
    """The exception that matters in a group (nurseries wrap what a case raises)."""
    if not isinstance(exc, BaseExceptionGroup):
        return exc
    leaves: list[BaseException] = []
    pending: list[BaseException] = [exc]
    while pending:
        item = pending.pop()
        if isinstance(item, BaseExceptionGroup):
            pending.extend(item.exceptions)
        else:
            leaves.append(item)
    for kind in (Failed, Skipped):
        for leaf in leaves:
            if isinstance(leaf, kind):
                return leaf
    return leaves[0] if leaves else exc


async def _run_one(item: Case, target: Target, run_id: str, webhooks: WebhookReceiver | None,
                   serial: list[int]) -> Result:
    try:
        with trio.move_on_after(item.timeout) as scope:
            async with AsyncExitStack() as stack:
                await item.run(Context(target, run_id, stack, webhooks, serial))
        if scope.cancelled_caught:
            return Result(case=item, status=Status.FAIL, expected=item.title,
                          got=f"no answer within the case's {item.timeout:g} s")
    except Exception as group:
        exc = _leaf(group)
        if isinstance(exc, Failed):
            return Result(case=item, status=Status.FAIL, expected=exc.expected, got=exc.got)
        if isinstance(exc, Skipped):
            return Result(case=item, status=Status.SKIP, got=str(exc))
        return Result(case=item, status=Status.FAIL, expected=item.title, got=_explain(exc))
    return Result(case=item, status=Status.PASS, expected=item.title, got="as expected")
