"""The conformance kit against our relay (nothing fails), against a relay wrong on purpose
(exactly those cases fail), against a server that dies mid-run, and from the command line."""

from __future__ import annotations

import io
import json
import socket
from collections.abc import Iterator
from typing import Any

import pytest
import trio

from pipe_proto import App, Limits, Relay, WebhookTarget
from pipe_proto.pipe import SocketClosed, SubscribeEvents
from pipe_proto.relay import authorization
from pipe_proto.rest import auth as rest_auth
from pipe_trio import RelayServer, cli, serve
from pipe_trio.conformance import CASES, Credentials, Level, Status, Target, run_conformance
from pipe_trio.testing import open_fake_backend, open_fake_socket
from tests.support import pure_core_only, url_of

pytestmark = pytest.mark.both_transports

APP = Credentials("1", "app-key", "app-secret")
APP2 = Credentials("2", "key-two", "secret-two")


def free_port() -> int:
    """A port nothing listens on right now (for the webhook receiver the relay is told about)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def conformance_apps(webhook_url: str) -> list[App]:
    """The apps the kit is run with: a short activity timeout so the heartbeat cases run."""
    return [
        App(id=APP.id, key=APP.key, secret=APP.secret, limits=Limits(activity_timeout=2),
            webhooks=[WebhookTarget(url=webhook_url)]),
        App(id=APP2.id, key=APP2.key, secret=APP2.secret),
        App(id="3", key="off-key", secret="off-secret", enabled=False),
    ]


async def start(nursery: trio.Nursery, relay: Relay) -> RelayServer:
    server: RelayServer = await nursery.start(lambda task_status: serve(relay, "127.0.0.1", 0, task_status=task_status))
    return server


def target_of(server: RelayServer, webhook_url: str, **options: object) -> Target:
    return Target(url=url_of(server), app=APP, app2=APP2, webhook_url=webhook_url, disabled_key="off-key",
                  **options)  # type: ignore[arg-type]


@pytest.mark.slow
@pytest.mark.no_cover  # traced, its cases miss their real-time budgets; the units cover the core
async def test_our_relay_passes_every_case(nursery: trio.Nursery) -> None:
    """Every case of every group, the pipe included, passes against this relay (only the 4201 case skips)."""
    hooks = f"http://127.0.0.1:{free_port()}/hooks"
    server = await start(nursery, Relay(conformance_apps(hooks), id_base=1000))
    with trio.fail_after(120):
        results = await run_conformance(target_of(server, hooks, pipe=True))
    failed = [f"{r.case.id}: {r.got}" for r in results if r.status is Status.FAIL]
    assert failed == []
    assert [r.case.id for r in results if r.status is Status.SKIP] == ["heartbeat.silent-socket-closed"]
    assert len(results) == len(CASES)


class ForgetfulRelay(Relay):
    """Wrong on purpose: publishes to every subscriber, the excluded socket_id included."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        deliver = self._channels.deliver
        self._channels.deliver = lambda channel, text, exclude: deliver(channel, text, None)  # type: ignore[method-assign]


#: What the wrong relay of the next test gets wrong, and the cases that must catch it.
WRONG_ON_PURPOSE = {
    "accepts any channel signature": {"private.bad-signature", "private.foreign-key", "private.other-socket-signature"},
    "forgets to exclude socket_id": {"rest.socket-id-excluded", "pipe.send-to-channel-excluding"},
    "accepts stale REST timestamps": {"rest.stale-timestamp-401"},
}


@pytest.fixture
def wrong_on_purpose(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Channel signatures are not checked and REST timestamps never expire (for this test only)."""
    monkeypatch.setattr(authorization, "check_channel_auth", lambda *args, **kwargs: None)
    monkeypatch.setattr(rest_auth, "timestamp_problem", lambda value, now: None)
    yield


@pure_core_only
@pytest.mark.slow
@pytest.mark.usefixtures("wrong_on_purpose")
async def test_a_wrong_relay_fails_exactly_the_cases_that_check_its_mistakes(nursery: trio.Nursery) -> None:
    """The kit fails the cases aimed at each deliberate mistake, and no other."""
    hooks = f"http://127.0.0.1:{free_port()}/hooks"
    server = await start(nursery, ForgetfulRelay(conformance_apps(hooks), id_base=1000))
    with trio.fail_after(120):
        results = await run_conformance(target_of(server, hooks, pipe=True),
                                        only=["private", "presence", "rest", "pipe", "channels"])
    failed = {r.case.id for r in results if r.status is Status.FAIL}
    assert failed == set().union(*WRONG_ON_PURPOSE.values())


async def test_a_server_that_dies_fails_the_remaining_cases_at_once(nursery: trio.Nursery) -> None:
    """When the server goes away mid-run, the case that saw it fails and the rest fail with
    "server stopped answering" without each waiting for its timeout."""
    hooks = f"http://127.0.0.1:{free_port()}/hooks"
    scope = trio.CancelScope()
    relay = Relay(conformance_apps(hooks), id_base=1000)

    async def run_relay(task_status: trio.TaskStatus[RelayServer]) -> None:
        with scope:
            await serve(relay, "127.0.0.1", 0, task_status=task_status)

    server: RelayServer = await nursery.start(run_relay)
    seen: list[str] = []

    def after(result: object) -> None:
        seen.append(result.case.id)  # type: ignore[attr-defined]
        if len(seen) == 3:
            scope.cancel()

    with trio.fail_after(30):
        results = await run_conformance(target_of(server, hooks), only=["connection", "channels"], on_result=after)
    statuses = [r.status for r in results]
    assert statuses[:3] == [Status.PASS] * 3
    assert all(s is Status.FAIL for s in statuses[3:])
    assert sum("server stopped answering" in r.got for r in results) == len(results) - 3


async def test_socket_closed_reports_the_close_code_the_socket_sent(relay_server: RelayServer) -> None:
    """A 1.0 pipe's socket_closed carries the code and reason of the socket's own close (pipe-protocol.md 3)."""
    url = url_of(relay_server)
    with trio.fail_after(10):
        async with open_fake_backend(url, app_id="1", key="app-key", secret="app-secret") as pipe:
            await pipe.call(SubscribeEvents(events=["socket_existence"]))
            async with open_fake_socket(url, "app-key") as sock:
                socket_id = sock.socket_id
                await sock.close(4021, "bye")
            note = await pipe.notification(lambda n: isinstance(n.notice, SocketClosed)
                                           and n.notice.socket_id == socket_id)
    assert (note.notice.code, note.notice.reason) == (4021, "bye")  # type: ignore[attr-defined]


def test_every_case_names_its_group_reference_and_level() -> None:
    """Ids are group.what, unique, each with a reference, a level and a timeout of a few seconds."""
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids))
    for item in CASES:
        assert item.group and "." in item.id and item.ref and item.title
        assert isinstance(item.level, Level)
        assert 0 < item.timeout <= 16
    assert {c.group for c in CASES} >= {"connection", "heartbeat", "channels", "private", "presence", "encrypted",
                                        "cache", "client-events", "users", "rest", "webhooks", "limits", "pipe"}


def test_cli_lists_cases_and_refuses_bad_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    """--list prints every case; a malformed --app or an unknown group exits 2 with a message."""
    assert cli.main(["conformance", "ws://127.0.0.1:1", "--app", "1:k:s", "--list"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert len(listed) == len(CASES) and listed[0].startswith("connection.")
    assert cli.main(["conformance", "ws://127.0.0.1:1", "--app", "1:k"]) == 2
    assert "ID:KEY:SECRET" in capsys.readouterr().out
    assert cli.main(["conformance", "ws://127.0.0.1:1", "--app", "1:k:s", "--only", "nonsense"]) == 2
    assert "nonsense" in capsys.readouterr().out


async def test_cli_prints_a_line_per_case_a_table_and_the_count(relay_server: RelayServer) -> None:
    """Text: one PASS line per case, a table, and "N passed, 0 failed, K skipped" last; exit 0."""
    out = io.StringIO()

    def run() -> int:
        from pipe_trio import conformance

        args = cli.build_parser().parse_args(
            ["conformance", url_of(relay_server), "--app", "1:app-key:app-secret", "--only", "connection"])
        return conformance.command(args, out)

    with trio.fail_after(60):
        status = await trio.to_thread.run_sync(run)
    lines = out.getvalue().strip().splitlines()
    assert status == 0
    assert lines[0].startswith("PASS connection.")
    assert any(line.startswith("SKIP connection.disabled-app-4003") for line in lines)
    assert "group" in out.getvalue() and lines[-1] == "9 passed, 0 failed, 1 skipped"


async def test_cli_json_and_exit_status_when_nothing_answers() -> None:
    """--json reports every case; with nothing listening every case fails, quickly, and the exit status is 1."""
    out = io.StringIO()
    port = free_port()

    def run() -> int:
        from pipe_trio import conformance

        args = cli.build_parser().parse_args(
            ["conformance", f"ws://127.0.0.1:{port}", "--app", "1:k:s", "--only", "rest,users", "--json"])
        return conformance.command(args, out)

    with trio.fail_after(30):
        status = await trio.to_thread.run_sync(run)
    report = json.loads(out.getvalue())
    assert status == 1
    assert report["passed"] == 0 and report["failed"] > 10
    assert {r["status"] for r in report["results"]} == {"FAIL", "SKIP"}  # SKIP: the cases that need --app2
    failed = [r for r in report["results"] if r["status"] == "FAIL"]
    assert "connection error" in failed[0]["got"]
    assert all(r["got"] == "server stopped answering" for r in failed[1:])
