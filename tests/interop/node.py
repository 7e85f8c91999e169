"""Run the official pusher-js under Node (driver.js) from Trio tests, and serve its auth endpoints.

:func:`open_driver` starts ``driver.js`` and yields a :class:`Driver`: send
commands with :meth:`Driver.send` / :meth:`Driver.call`, wait for reports with
:meth:`Driver.expect`. Reports that do not match an expectation stay buffered
for later ones, so a test can wait for things in any order.

:class:`AuthServer` is the app's HTTP side that pusher-js calls for channel
authorization and user sign-in; it signs with the official Python ``pusher``
SDK, so what the relay verifies is exactly what a real app would send.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from subprocess import PIPE
from typing import Any
from urllib.parse import parse_qsl

import h11
import pusher
import trio

from pipe_trio import RelayServer
from tests.http_receiver import read_request, respond
from tests.processes import line_batches
from tests.support import APP_ID, APP_KEY, APP_SECRET

__all__ = ["AuthServer", "Driver", "Match", "matches", "open_driver", "publish"]

HERE = Path(__file__).resolve().parent
DEFAULT_TIMEOUT = 5.0

#: What :meth:`Driver.expect` accepts: a dict of expected fields (nested
#: dicts match as subsets) or a predicate over a report.
Match = Mapping[str, Any] | Callable[[dict[str, Any]], bool]


def matches(match: Match, report: dict[str, Any]) -> bool:
    """Whether ``report`` has every field of ``match`` (or satisfies the predicate)."""
    if callable(match):
        return bool(match(report))
    return _subset(match, report)


def _subset(expected: Any, actual: Any) -> bool:
    if isinstance(expected, Mapping):
        return isinstance(actual, Mapping) and all(
            key in actual and _subset(value, actual[key]) for key, value in expected.items()
        )
    return bool(expected == actual)


def publish(server: RelayServer, channel: str, event: str, data: Any, app_id: str = APP_ID) -> None:
    """Publish a channel event through the relay core, as the REST API would (``data`` JSON-encoded)."""
    text = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    server.execute(server.relay.publish(app_id, [channel], event, text, None, server.now()))


class DriverError(AssertionError):
    """driver.js reported a bug, exited, or an expectation timed out."""


class Driver:
    """A running driver.js; one instance hosts any number of pusher-js clients by id."""

    def __init__(self, process: trio.Process) -> None:
        self._process = process
        self._reports: list[dict[str, Any]] = []
        self._arrived = trio.Event()
        self._seq = 0
        self._stderr: list[str] = []
        self._ended = False

    # ------------------------------------------------------------ plumbing

    async def _read_stdout(self) -> None:
        assert self._process.stdout is not None
        async for lines in line_batches(self._process.stdout):
            for line in lines:
                if line.strip():
                    try:
                        report = json.loads(line)
                    except ValueError:
                        report = {"type": "driver_error", "error": f"not a JSON line: {line!r}"}
                    self._add(report)
        self._ended = True
        self._wake()

    async def _read_stderr(self) -> None:
        # Drained continuously so pusher-js's log can never fill the pipe and
        # block the driver; the tail goes into failure messages.
        assert self._process.stderr is not None
        async for chunk in self._process.stderr:
            self._stderr.extend(chunk.decode(errors="replace").splitlines())
            del self._stderr[:-200]

    def _add(self, report: dict[str, Any]) -> None:
        # ``seq`` records arrival order, so tests can check the order of reports
        # that were awaited separately.
        self._seq += 1
        report["seq"] = self._seq
        self._reports.append(report)
        self._wake()

    def _wake(self) -> None:
        self._arrived.set()
        self._arrived = trio.Event()

    def _failure(self, why: str) -> DriverError:
        buffered = "\n  ".join(json.dumps(r) for r in self._reports[-30:]) or "(none)"
        log = "\n  ".join(self._stderr[-30:]) or "(empty)"
        return DriverError(f"{why}\nunconsumed reports:\n  {buffered}\ndriver stderr:\n  {log}")

    # ------------------------------------------------------------- the API

    async def send(self, cmd: str, id: str | None = None, **fields: Any) -> None:
        """Send one command line (see the top of driver.js for the commands)."""
        assert self._process.stdin is not None
        line = json.dumps({"cmd": cmd, "id": id, **fields}) + "\n"
        await self._process.stdin.send_all(line.encode())

    # An explicit ``timeout`` (not a caller's cancel scope) keeps each wait
    # bounded even in tests that forget one, and names the wait that expired.
    async def call(
        self,
        cmd: str,
        id: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,  # noqa: ASYNC109
        **fields: Any,
    ) -> Any:
        """Send a command and return its ``result``; a command that threw fails the test."""
        await self.send(cmd, id, **fields)
        reply = await self.expect({"type": "reply", "cmd": cmd, "id": id}, timeout=timeout)
        if not reply["ok"]:
            raise self._failure(f"{cmd} on client {id!r} failed in the driver: {reply['error']}")
        return reply["result"]

    async def expect(self, match: Match, timeout: float = DEFAULT_TIMEOUT) -> dict[str, Any]:  # noqa: ASYNC109
        """Wait for the first report matching ``match``, remove it from the buffer and return it."""
        try:
            with trio.fail_after(timeout):
                while True:
                    for index, report in enumerate(self._reports):
                        if report["type"] == "driver_error":
                            raise self._failure(f"driver.js reported an error: {report['error']}")
                        if matches(match, report):
                            return self._reports.pop(index)
                    if self._ended:
                        raise self._failure(f"driver.js exited while waiting for {match!r}")
                    await self._arrived.wait()
        except trio.TooSlowError:
            raise self._failure(f"no report matching {match!r} within {timeout} s") from None

    def seen(self, match: Match) -> list[dict[str, Any]]:
        """The buffered (not yet consumed) reports matching ``match``, without consuming them."""
        return [report for report in self._reports if matches(match, report)]

    async def connect(self, id: str, server: RelayServer, key: str = APP_KEY, **options: Any) -> None:
        """Create pusher-js client ``id`` for ``server``; ``options`` are pusher-js options."""
        await self.call("connect", id, key=key, host="127.0.0.1", port=server.port, options=options)

    async def connected(self, id: str, server: RelayServer, key: str = APP_KEY, **options: Any) -> str:
        """Like :meth:`connect`, then wait for the ``connected`` state; returns the socket id."""
        await self.connect(id, server, key, **options)
        await self.expect({"type": "state", "id": id, "previous": None, "current": "connecting"})
        report = await self.expect({"type": "state", "id": id, "previous": "connecting", "current": "connected"})
        socket_id: str = report["socket_id"]
        return socket_id

    async def subscribed(self, id: str, channel: str, *events: str) -> dict[str, Any]:
        """Subscribe (binding ``events`` on the channel at once) and wait for success."""
        await self.call("subscribe", id, channel=channel, events=list(events))
        return await self.expect({"type": "subscription_succeeded", "id": id, "channel": channel})


@asynccontextmanager
async def open_driver(script: str = "driver.js", *args: str) -> AsyncIterator[Driver]:
    """Start a JSON-lines Node script (driver.js by default) in tests/interop; stop it on exit.

    Other scripts speaking the same protocol: ``sdk.js`` (the ``pusher`` server
    SDK) and ``pipe2011.js`` (the 2011 ``pusher-pipe`` client).
    """
    node = shutil.which("node")
    if node is None:
        raise RuntimeError("node is not on PATH; the interop tests need Node 20 (see tests/run)")
    process = await trio.lowlevel.open_process(
        [node, str(HERE / script), *args], cwd=str(HERE), stdin=PIPE, stdout=PIPE, stderr=PIPE
    )
    driver = Driver(process)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(driver._read_stdout)
            nursery.start_soon(driver._read_stderr)
            try:
                yield driver
            finally:
                # Closing stdin is the driver's signal to disconnect everyone and exit.
                assert process.stdin is not None
                with trio.CancelScope(shield=True):
                    await process.stdin.aclose()
                    with trio.move_on_after(5):
                        await process.wait()
                nursery.cancel_scope.cancel()
    finally:
        if process.returncode is None:
            process.kill()
        with trio.CancelScope(shield=True):
            await process.wait()


# ----------------------------------------------------------------- auth


#: A route of the auth server: gets the form fields, returns (status, JSON body).
Route = Callable[[dict[str, str]], tuple[int, Any]]


class AuthServer:
    """A tiny HTTP app server (h11 on Trio) with the two auth endpoints pusher-js calls.

    ``/pusher/auth`` authorizes channels; on presence channels the member is
    taken from the form fields ``user_id`` and ``name``, which a test sets per
    client through ``channelAuthorization.params``. ``/pusher/user-auth``
    signs users in as ``user_id`` watching the comma-separated ``watchlist``
    (``userAuthentication.params``). :meth:`route` adds endpoints, e.g. one
    signing with the wrong secret. With ``master_key_b64`` it also answers
    ``private-encrypted-`` channels (with their ``shared_secret``). Every request's form is kept in
    :attr:`requests` as ``(path, form)``.
    """

    def __init__(
        self, app_id: str = APP_ID, key: str = APP_KEY, secret: str = APP_SECRET, master_key_b64: str | None = None
    ) -> None:
        self.sdk = pusher.Pusher(app_id=app_id, key=key, secret=secret, encryption_master_key_base64=master_key_b64)
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.port = 0
        self._routes: dict[str, Route] = {
            "/pusher/auth": self.authorize_channel,
            "/pusher/user-auth": self.authenticate_user,
        }

    async def start(self, nursery: trio.Nursery) -> AuthServer:
        """Listen on 127.0.0.1 and a free port until ``nursery`` is cancelled."""
        listeners = await nursery.start(partial(trio.serve_tcp, self._handle, 0, host="127.0.0.1"))
        self.port = listeners[0].socket.getsockname()[1]
        return self

    def url(self, path: str) -> str:
        """The absolute URL of ``path`` on this server."""
        return f"http://127.0.0.1:{self.port}{path}"

    def route(self, path: str, answer: Route) -> str:
        """Serve ``answer`` at ``path``; returns its URL."""
        self._routes[path] = answer
        return self.url(path)

    def authorize_channel(self, form: dict[str, str]) -> tuple[int, Any]:
        """Channel authorization as a real app does it, with the Python SDK."""
        channel, socket_id = form["channel_name"], form["socket_id"]
        member = None
        if channel.startswith("presence-"):
            user_id = form.get("user_id", "anonymous")
            member = {"user_id": user_id, "user_info": {"name": form.get("name", user_id)}}
        answer = self.sdk.authenticate(channel=channel, socket_id=socket_id, custom_data=member)
        # The SDK returns ``shared_secret`` (encrypted channels) as base64 bytes;
        # an app has to turn it into text before sending JSON.
        return 200, {key: value.decode() if isinstance(value, bytes) else value for key, value in answer.items()}

    def authenticate_user(self, form: dict[str, str]) -> tuple[int, Any]:
        """User authentication (sign-in) with the Python SDK."""
        user: dict[str, Any] = {"id": form["user_id"]}
        if form.get("watchlist"):
            user["watchlist"] = form["watchlist"].split(",")
        return 200, self.sdk.authenticate_user(socket_id=form["socket_id"], user_data=user)

    async def _handle(self, stream: trio.SocketStream) -> None:
        try:
            with trio.fail_after(DEFAULT_TIMEOUT):
                await self._serve(stream)
        except (trio.TooSlowError, trio.BrokenResourceError, h11.ProtocolError):
            pass  # the client went away or spoke nonsense: nothing to answer
        finally:
            await trio.aclose_forcefully(stream)

    async def _serve(self, stream: trio.SocketStream) -> None:
        read = await read_request(stream)
        if read is None:
            return
        conn, request, body = read
        path = request.target.decode("latin-1").partition("?")[0]
        form = dict(parse_qsl(body.decode(), keep_blank_values=True))
        self.requests.append((path, form))
        answer = self._routes.get(path)
        status, payload = answer(form) if answer is not None else (404, {"error": f"no route {path}"})
        await respond(stream, conn, status, json.dumps(payload).encode(), "application/json")
