"""The scripted peers of pipe_proto.testing / pipe_trio.testing, and the examples of docs/testing.md."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import trio

from pipe_proto import App
from pipe_proto.pipe import AuthResponse, PipeRefused, SocketOpened, decode_server_frame, pipe_url
from pipe_proto.testing import FakeRelay, PipeConnection, signed_rest_params, webhook_problem
from pipe_proto.webhooks import build_request
from pipe_trio import RelayServer
from tests.support import url_of

APP = App(id="1", key="app-key", secret="app-secret")
DOC = Path(__file__).resolve().parent.parent / "docs" / "testing.md"


def example(name: str) -> dict[str, Any]:
    """Run the code block after ``<!-- example: name -->`` in docs/testing.md; returns its namespace."""
    text = DOC.read_text()
    block = re.search(rf"<!-- example: {name} -->\n```python\n(.*?)```", text, flags=re.S)
    assert block is not None, name
    namespace: dict[str, Any] = {}
    exec(compile(block.group(1), f"docs/testing.md:{name}", "exec"), namespace)
    return namespace


async def test_example_pipe_client() -> None:
    """Example 1 runs: a refusal is reported, and a resumed client sees each event once."""
    namespace = example("pipe-client")
    with trio.fail_after(20):
        await namespace["test_client_reports_a_refusal"]()
        await namespace["test_client_resumes_and_sees_nothing_twice"]()


async def test_example_deployment(relay_server: RelayServer) -> None:
    """Example 2 runs against a relay: the conformance groups pass and the own check too."""
    with trio.fail_after(60):
        await example("deployment")["check_deployment"](url_of(relay_server), "1", "app-key", "app-secret")


def query_of(url: str) -> dict[str, str]:
    from urllib.parse import parse_qsl, urlsplit

    return dict(parse_qsl(urlsplit(url).query))


def frames(texts: list[str]) -> list[Any]:
    return [decode_server_frame(t) for t in texts]


def connect(relay: FakeRelay, now: float = 1000.0, **options: Any) -> PipeConnection | PipeRefused:
    url = pipe_url("ws://x", app_id="1", key="app-key", secret="app-secret", now=now, **options)
    return relay.connect("1", query_of(url), now)


def test_fake_relay_checks_the_handshake_and_scripted_refusals() -> None:
    """A badly signed handshake is refused as the relay would (401); a scripted refusal comes first."""
    relay = FakeRelay(APP)
    relay.refuse_next(503, "busy")
    refused = connect(relay)
    assert isinstance(refused, PipeRefused) and refused.status == 503
    url = pipe_url("ws://x", app_id="1", key="app-key", secret="wrong", now=1000.0)
    bad = relay.connect("1", query_of(url), 1000.0)
    assert isinstance(bad, PipeRefused) and bad.status == 401
    assert isinstance(connect(relay), PipeConnection)


def test_fake_relay_replays_unacked_events_on_resume_and_reports_gaps() -> None:
    """Notifications get seqs; after a reconnection with session and last_seq the unacked ones come
    again with the same seq, then the scripted gap."""
    relay = FakeRelay(APP)
    conn = connect(relay)
    assert isinstance(conn, PipeConnection)
    opening = frames(conn.opening_frames(1000.0))
    session = opening[0].notice.session
    sent = [frames(relay.notify(SocketOpened(socket_id=f"1.{n}"), 1000.0))[0] for n in (1, 2, 3)]
    assert [f.seq for f in sent] == [1, 2, 3]
    conn.receive(json.dumps({"id": None, "method": "ack", "params": {"seq": 1}}), 1000.0)
    conn.closed()
    assert relay.notify(SocketOpened(socket_id="1.4"), 1000.0) == []  # kept for the replay
    relay.drop(7)
    again = connect(relay, session=session, last_seq=1)
    assert isinstance(again, PipeConnection) and again.resumed
    replay = frames(again.opening_frames(1001.0))
    assert replay[0].notice.resumed and replay[0].notice.gap == 7
    assert [(f.seq, getattr(f.notice, "socket_id", None)) for f in replay[1:4]] == [(2, "1.2"), (3, "1.3"), (4, "1.4")]
    assert replay[4].notice.dropped == 7 and replay[4].seq == 5
    relay.expire_sessions()
    fresh = connect(relay, session=session, last_seq=4)
    assert isinstance(fresh, PipeConnection) and not fresh.resumed


def test_fake_relay_records_calls_answers_and_scripted_failures() -> None:
    """Calls are checked with the relay's rules and recorded; auth answers land by request id;
    a scripted failure answers the next call of that method."""
    relay = FakeRelay(APP)
    conn = connect(relay)
    assert isinstance(conn, PipeConnection)
    request_id, texts = relay.auth_request("1.1", 1000.0, channel="private-x")
    assert frames(texts)[0].notice.channel == "private-x"
    answer = {"id": 1, "method": "auth_response", "params": {"request_id": request_id, "allow": True}}
    assert frames(conn.receive(json.dumps(answer), 1000.0))[0].result == {}
    assert relay.auth_answers[request_id] == AuthResponse(request_id=request_id, allow=True)
    send = {"id": 2, "method": "send_to_socket", "params": {"socket_id": "1.1", "event": "e", "data": "x"}}
    assert frames(conn.receive(json.dumps(send), 1000.0))[0].result == {"delivered": 1}
    relay.fail_next("send_to_socket", 4212, "no such socket")
    assert frames(conn.receive(json.dumps({**send, "id": 3}), 1000.0))[0].code == 4212
    bad = {"id": 4, "method": "send_to_socket", "params": {"socket_id": "1.1", "event": "pusher:x", "data": ""}}
    assert frames(conn.receive(json.dumps(bad), 1000.0))[0].code == 4210
    assert [r.call.method for r in relay.calls] == ["auth_response", "send_to_socket", "send_to_socket"]


def test_signers_sign_rest_requests_and_check_webhooks() -> None:
    """signed_rest_params reproduces the documented REST vector; webhook_problem accepts the relay's
    own webhooks and names what is wrong with others."""
    body = b'{"name":"foo","channels":["project-3"],"data":"{\\"some\\":\\"data\\"}"}'
    query = signed_rest_params("278d425bdf160c739803", "7ad3773142a6692b25b8", "POST", "/apps/3/events",
                               now=1353088179, body=body)
    assert query["body_md5"] == "ec365a775a4cd0599faeb73354201b6f"
    assert query["auth_signature"] == "da454824c97ba181a32ccc17a72625ba02771f50b50e1e7430e47a1f3f457e6c"
    request = build_request(APP, [{"name": "channel_occupied", "channel": "c"}], now=1000.0)
    headers = dict(request.headers)
    assert webhook_problem("app-key", "app-secret", headers, request.body, now=1001.0) is None
    assert "signature" in (webhook_problem("app-key", "other", headers, request.body, now=1001.0) or "").lower()
    assert "time_ms" in (webhook_problem("app-key", "app-secret", headers, request.body, now=2000.0) or "")
    loose = {**headers, "Content-Type": "application/json; charset=utf-8"}
    assert "Content-Type" in (webhook_problem("app-key", "app-secret", loose, request.body, now=1001.0) or "")


def test_pipe_proto_testing_does_no_io() -> None:
    """pipe_proto.testing stays sans-I/O: importing it brings in no event loop, socket or randomness."""
    import subprocess
    import sys

    code = ("import sys, pipe_proto.testing; "
            "print(sorted(m for m in ('trio', 'socket', 'asyncio', 'ssl', 'select', 'random') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
