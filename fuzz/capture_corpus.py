"""Record real traffic into the fuzz corpus: ``python fuzz/capture_corpus.py [--out DIR]``.

Runs a relay (``pipe_trio.serve``) whose core records every call, then drives
it with the real clients: the official pusher-js (tests/interop/driver.js) for
public, private, presence, encrypted and cache channels, client events, sign-in
with a watchlist, server-to-user events and back-channel messages; the 2011
``pusher-pipe`` client (tests/interop/pipe2011.js); ``open_pipe`` (1.0, with
authorization through the pipe); and the official Python SDK over REST, with
its auth endpoints signing for pusher-js. What the relay received and sent is
written to ``fuzz/corpus``:

* ``pusher_codec/pusher-js-*.json``: frames pusher-js sent (decoded by the
  relay, role ``server``) and frames the relay sent it (role ``client``);
* ``pipe_codec/{pipe2011,open_pipe}-*.json``: requests from the two pipe
  clients, and the frames the relay sent them;
* ``relay/session-*.json``: the whole session as one program of relay calls,
  replayable with the same socket ids, nonces and clock;
* ``rest/python-sdk-*.json``: the SDK's REST requests;
* ``signatures/*.json``: the channel and user authorizations pusher-js sent
  (signed by the SDK) and the SDK's signed REST requests.

Needs Node and ``npm ci`` in tests/interop (``bash tests/run`` does both).
Files are named by content hash: a rerun adds what is new and keeps the rest.
"""

from __future__ import annotations

import base64
import json
import sys
from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import Any

import pusher
import trio

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import pipe_trio.server as server_module  # noqa: E402
from fuzz import _support  # noqa: E402
from fuzz._support import save_entry, text_entry  # noqa: E402
from pipe_proto import Relay, Send  # noqa: E402
from pipe_proto.pipe.events import AuthRequest  # noqa: E402
from pipe_proto.pipe.handshake import PipeAccepted, PipeRefused  # noqa: E402
from pipe_proto.pusher.codec import Role, decode  # noqa: E402
from pipe_proto.pusher.events import SignIn, Subscribe  # noqa: E402
from pipe_proto.relay.outputs import Output  # noqa: E402
from pipe_proto.rest import RestResponse  # noqa: E402
from pipe_trio import RelayServer, open_pipe, serve  # noqa: E402
from tests.interop.node import AuthServer, open_driver, publish  # noqa: E402
from tests.support import APP_ID, APP_KEY, APP_SECRET, default_apps  # noqa: E402

MASTER_KEY = base64.b64encode(bytes(range(32))).decode()
Sink = dict[str, list[tuple[str, dict[str, Any]]]]


class RecordingRelay(Relay):
    """A relay that logs every call as a program step (fuzz/fuzz_relay.py's format) and every frame."""

    def __init__(self) -> None:
        super().__init__(default_apps(), id_base=1000)
        self.steps: list[dict[str, Any]] = []
        self.frames: Sink = {"pusher_codec": [], "pipe_codec": [], "signatures": []}
        self.pipe_kind: dict[str, str] = {}
        self._handshake: tuple[str, dict[str, str]] | None = None

    def _step(self, op: str, now: float, **args: Any) -> None:
        self.steps.append({"op": op, "t": now, **args})

    def _sent(self, outputs: list[Output]) -> list[Output]:
        for output in outputs:
            if isinstance(output, Send):
                for target in output.targets:
                    if target in self.pipe_kind:
                        entry = text_entry(output.text, kind="server_frame")
                        self.frames["pipe_codec"].append((self.pipe_kind[target], entry))
                    else:
                        self.frames["pusher_codec"].append(("pusher-js", text_entry(output.text, role="client")))
        return outputs

    # sockets
    def open_socket(self, app_key: str, query: Mapping[str, str], now: float, *, nonce: int, details: Any = None,
                    secure: bool = False) -> tuple[str, list[Output]]:
        plain = None if details is None else {k: v for k, v in details._asdict().items()}
        self._step("open_socket", now, key=app_key, query=dict(query), nonce=nonce, details=plain, secure=secure)
        sid, out = super().open_socket(app_key, query, now, nonce=nonce, details=details, secure=secure)
        return sid, self._sent(out)

    def socket_message(self, socket_id: str, text: str, now: float) -> list[Output]:
        self._step("socket_message", now, socket_id=socket_id, text=text)
        self.frames["pusher_codec"].append(("pusher-js", text_entry(text, role="server")))
        self._authorization(socket_id, text, now)
        return self._sent(super().socket_message(socket_id, text, now))

    def socket_closed(self, socket_id: str, now: float, code: int | None = None,
                      reason: str | None = None) -> list[Output]:
        self._step("socket_closed", now, socket_id=socket_id, code=code, reason=reason)
        return self._sent(super().socket_closed(socket_id, now, code, reason))

    def socket_heard(self, socket_id: str, now: float) -> None:
        self._step("socket_heard", now, socket_id=socket_id)
        super().socket_heard(socket_id, now)

    # pipes
    def pipe_handshake(self, app_id: str, query: Mapping[str, str], now: float) -> PipeAccepted | PipeRefused:
        decision = super().pipe_handshake(app_id, query, now)
        if isinstance(decision, PipeRefused):
            self._step("open_pipe", now, app_id=app_id, query=dict(query), nonce=0)
        else:
            self._handshake = (app_id, dict(query))
        return decision

    def open_pipe(self, accepted: PipeAccepted, now: float, *, nonce: int) -> tuple[str, list[Output]]:
        assert self._handshake is not None
        app_id, query = self._handshake
        self._step("open_pipe", now, app_id=app_id, query=query, nonce=nonce)
        pipe_id, out = super().open_pipe(accepted, now, nonce=nonce)
        self.pipe_kind[pipe_id] = "pipe2011" if accepted.version == "0.2" else "open_pipe"
        return pipe_id, self._sent(out)

    def pipe_message(self, pipe_id: str, text: str, now: float) -> list[Output]:
        self._step("pipe_message", now, pipe_id=pipe_id, text=text)
        self.frames["pipe_codec"].append((self.pipe_kind.get(pipe_id, "pipe"), text_entry(text, kind="request")))
        return self._sent(super().pipe_message(pipe_id, text, now))

    def pipe_closed(self, pipe_id: str, now: float) -> list[Output]:
        self._step("pipe_closed", now, pipe_id=pipe_id)
        return self._sent(super().pipe_closed(pipe_id, now))

    def pipe_heard(self, pipe_id: str, now: float) -> None:
        self._step("pipe_heard", now, pipe_id=pipe_id)
        super().pipe_heard(pipe_id, now)

    # server side
    def publish(self, app_id: str, channels: Any, event: str, data: str, exclude: str | None,
                now: float) -> list[Output]:
        channels = list(channels)
        self._step("publish", now, app_id=app_id, channels=channels, event=event, data=data, exclude=exclude)
        return self._sent(super().publish(app_id, channels, event, data, exclude, now))

    def terminate_user(self, app_id: str, user_id: str, now: float) -> list[Output]:
        self._step("terminate_user", now, app_id=app_id, user_id=user_id)
        return self._sent(super().terminate_user(app_id, user_id, now))

    def tick(self, now: float) -> list[Output]:
        self._step("tick", now)
        return self._sent(super().tick(now))

    def shutdown(self, now: float) -> list[Output]:
        self._step("shutdown", now)
        return self._sent(super().shutdown(now))

    def _authorization(self, socket_id: str, text: str, now: float) -> None:
        """Keep the signed subscriptions and sign-ins pusher-js sent, for the signatures corpus."""
        sock = self._sockets.get(socket_id)
        try:
            event = decode(text, role=Role.SERVER)
        except ValueError:
            return
        if sock is None:
            return
        app = sock.app.app
        common = {"key": app.key, "secret": app.secret, "socket_id": socket_id, "expect": True}
        if isinstance(event, Subscribe) and event.auth:
            entry = {"kind": "channel", "channel": event.channel, "channel_data": event.channel_data,
                     "auth": event.auth, "two_part": not event.channel.startswith("presence-"), **common}
            self.frames["signatures"].append(("pusher-js", entry))
        elif isinstance(event, SignIn) and event.auth:
            entry = {"kind": "user", "user_data": event.user_data, "auth": event.auth, **common}
            self.frames["signatures"].append(("pusher-js", entry))


def record_rest(rest: list[dict[str, Any]], real: Any) -> Any:
    """Wrap pipe_trio's REST handler to keep each request."""

    def handle(relay: Relay, method: str, path: str, query: Mapping[str, str], body: bytes,
               now: float) -> RestResponse:
        rest.append({"method": method, "path": path, "query": dict(query),
                     "body_b64": base64.b64encode(body).decode(), "now": now})
        return real(relay, method, path, query, body, now)

    return handle


# ----------------------------------------------------------------- scenario


async def scenario(server: RelayServer, auth: AuthServer) -> None:
    """Everything the real clients do, each step awaited so the recording is in a known order."""
    url = f"ws://127.0.0.1:{server.port}"
    sdk = pusher.Pusher(app_id=APP_ID, key=APP_KEY, secret=APP_SECRET, host="127.0.0.1", port=server.port,
                        ssl=False, encryption_master_key_base64=MASTER_KEY)

    async def rest(call: Any) -> Any:
        return await trio.to_thread.run_sync(call)

    async def decide(request: AuthRequest) -> Any:
        if request.kind == "user":
            return {"id": "piped", "user_info": {"name": "Pip"}}
        if request.channel == "private-no":
            return False
        if request.channel and request.channel.startswith("presence-"):
            return {"user_id": "piped", "user_info": {"name": "Pip"}}
        return True

    config_2011 = {"key": APP_KEY, "secret": APP_SECRET, "app_id": int(APP_ID), "host": "127.0.0.1",
                   "port": server.port}
    endpoint = auth.url("/pusher/auth")
    async with open_driver() as js, open_driver("pipe2011.js") as old, open_pipe(
        url, app_id=APP_ID, key=APP_KEY, secret=APP_SECRET,
        events=["socket_existence", "channel_existence", "presence"], auth=decide,
    ):
        await old.call("connect", config=config_2011, events=["socket_message", "socket_existence"])
        await old.expect({"type": "connected"})
        await old.call("listen", channel="private-room", event="client-move")
        ids = {}
        for client, user in (("alice", "alice"), ("bob", "bob")):
            ids[client] = await js.connected(
                client, server,
                channelAuthorization={"endpoint": endpoint, "params": {"user_id": user, "name": user.title()}},
                userAuthentication={"endpoint": auth.url("/pusher/user-auth"),
                                    "params": {"user_id": user, "watchlist": "alice,bob"}},
            )
            await js.call("signin", client)
            await js.expect({"type": "signin_success", "id": client})
            for channel in ("news", "private-room", "presence-lobby", "cache-scores", "private-encrypted-vault"):
                await js.subscribed(client, channel, "update", "client-move", "reveal")
        publish(server, "news", "update", {"n": 1, "text": "h\u00e9llo"})
        await js.expect({"type": "event", "id": "bob", "event": "update"})
        assert await js.call("trigger", "alice", channel="private-room", event="client-move", data={"x": 1}) is True
        await js.expect({"type": "event", "id": "bob", "event": "client-move"})
        await old.expect({"type": "channel_listener", "channel": "private-room"})
        assert await js.call("trigger", "bob", channel="presence-lobby", event="client-move", data={"to": "e4"})
        await js.expect({"type": "event", "id": "alice", "event": "client-move"})
        await js.call("trigger", "alice", channel="news", event="client-shout", data={})
        await js.expect({"type": "error", "id": "alice"})
        await js.call("send_event", "alice", event="eventFromBrowser", data={"some": "data"})
        message = await old.expect({"type": "socket_event", "event": "eventFromBrowser"})
        await old.call("socket", socket_id=message["socket_id"], event="acknowledge", data={"message": "Rodger"})
        await old.call("channel", channel="private-room", event="update", data={"v": 1}, socket_id=ids["alice"])
        await js.expect({"type": "event", "id": "bob", "event": "update", "channel": "private-room"})
        await old.send("channel", channel="private-room", event="pusher:bad", data="")
        await old.expect({"type": "reply", "cmd": "channel"})
        await old.send("rpc", method="subscribe", params={"events": ["nonsense"]})
        await old.expect({"type": "reply", "cmd": "rpc"})
        # The Python SDK over REST.
        await rest(lambda: sdk.trigger(["news", "cache-scores"], "update", {"n": 2}, socket_id=ids["alice"]))
        await js.expect({"type": "event", "id": "bob", "event": "update", "channel": "cache-scores"})
        await rest(lambda: sdk.trigger(["private-encrypted-vault"], "reveal", {"pin": 1234}))
        await js.expect({"type": "event", "id": "alice", "event": "reveal"})
        await rest(lambda: sdk.trigger_batch([{"channel": "news", "name": "update", "data": {"n": 3}},
                                              {"channel": "presence-lobby", "name": "update", "data": "text"}]))
        await js.expect({"type": "event", "id": "alice", "event": "update", "data": "text"})
        await rest(lambda: sdk.channels_info(prefix_filter="presence-", attributes=["user_count"]))
        await rest(lambda: sdk.channel_info("presence-lobby", ["user_count", "subscription_count"]))
        await rest(lambda: sdk.users_info("presence-lobby"))
        await rest(sdk.channels_info)
        await rest(lambda: sdk.send_to_user("bob", "notice", {"hi": True}))
        # Authorization and sign-in through the pipe.
        await js.connected("carol", server, pipeAuth=True, pipeSignin=True)
        await js.subscribed("carol", "private-yes")
        await js.call("subscribe", "carol", channel="private-no")
        await js.expect({"type": "subscription_error", "id": "carol", "channel": "private-no"})
        await js.call("signin", "carol")
        await js.expect({"type": "signin_success", "id": "carol"})
        await js.subscribed("carol", "presence-lobby")
        await js.call("unsubscribe", "bob", channel="presence-lobby")
        await js.expect({"type": "member_removed", "id": "alice"})
        await rest(lambda: sdk.terminate_user_connections("bob"))
        await js.expect({"type": "error", "id": "bob"})
        for client in ("alice", "carol"):
            await js.call("disconnect", client)
        await old.call("disconnect")


async def main() -> None:
    relay = RecordingRelay()
    rest: list[dict[str, Any]] = []
    server_module.handle_rest = record_rest(rest, server_module.handle_rest)  # type: ignore[assignment]
    async with trio.open_nursery() as nursery:
        server: RelayServer = await nursery.start(partial(serve, relay, "127.0.0.1", 0))
        auth = await AuthServer(master_key_b64=MASTER_KEY).start(nursery)
        with trio.fail_after(60):
            await scenario(server, auth)
            await trio.sleep(0.5)  # let the closes reach the relay
        nursery.cancel_scope.cancel()
    written: dict[str, int] = {}

    def keep(target: str, prefix: str, entry: dict[str, Any]) -> None:
        before = len(list((_support.CORPUS / target).glob("*.json")))
        save_entry(target, entry, prefix)
        after = len(list((_support.CORPUS / target).glob("*.json")))
        written[target] = written.get(target, 0) + after - before

    keep("relay", "session", {"apps": "interop", "id_base": 1000, "t0": relay.steps[0]["t"], "steps": relay.steps})
    for target, entries in relay.frames.items():
        for prefix, entry in entries:
            keep(target, prefix, entry)
    for request in rest:
        keep("rest", "python-sdk", request)
        if "%" not in request["path"]:
            entry = {"kind": "request", "key": APP_KEY, "secret": APP_SECRET, "expect": True, **request}
            keep("signatures", "python-sdk", entry)
    print(json.dumps({"steps": len(relay.steps), "rest requests": len(rest), "new corpus files": written}))


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--out":
        # Write somewhere else (a trial run), e.g. --out /tmp/corpus.
        _support.CORPUS = Path(sys.argv[2])
    trio.run(main)
