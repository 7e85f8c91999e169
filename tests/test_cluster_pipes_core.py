"""A cluster node's pipes without Redis: the calls it makes, and what it does with the answers.

Redis's side is played by hand, as in tests/test_cluster_directory.py.
"""

from __future__ import annotations

import json
from functools import partial
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from pipe_proto import App, PipeSettings, Relay, Send
from pipe_proto.cluster import ClusterDirectory
from pipe_proto.pipe.events import SocketMessage
from pipe_proto.pipe.handshake import PipeAccepted, pipe_url
from pipe_proto.relay.outputs import ClusterCall, Output

APP = App(id="1", key="key", secret="secret", pipe=PipeSettings(window=2))


def node() -> Relay:
    relay = Relay([APP], directory=partial(ClusterDirectory, node="7", prefix="p"))
    relay.cluster_up(0.0)
    return relay


def calls(out: list[Output], op: str | None = None) -> list[ClusterCall]:
    return [o for o in out if isinstance(o, ClusterCall) and (op is None or o.args[0] == op)]


def frames(out: list[Output], target: str) -> list[dict[str, Any]]:
    return [json.loads(o.text) for o in out if isinstance(o, Send) and target in o.targets]


def open_pipe(relay: Relay, version: str = "1.0") -> tuple[str, list[Output]]:
    url = pipe_url("ws://relay", app_id="1", key="key", secret="secret", now=0.0, version=version)
    decision = relay.pipe_handshake("1", dict(parse_qsl(urlsplit(url).query)), 0.0)
    assert isinstance(decision, PipeAccepted)
    return relay.open_pipe(decision, 0.0, nonce=5)


def answer(relay: Relay, call: ClusterCall, reply: Any) -> list[Output]:
    """The inbox answer to a call that gave its token as its last argument."""
    return relay.cluster_message(f"r {call.args[-1]}\n{json.dumps(reply)}".encode(), 0.0)


def test_a_pipe_is_greeted_once_redis_attached_it_and_its_early_requests_wait() -> None:
    """No connection_established before the attach's answer; a request sent meanwhile runs after it, in order."""
    relay = node()
    pipe_id, out = open_pipe(relay)
    (attach,) = calls(out, "pattach")
    assert attach.args[3:7] == ("1", pipe_id, "1.0", "default")
    assert frames(out, pipe_id) == []
    early = relay.pipe_message(pipe_id, json.dumps({"id": 1, "method": "ping", "params": {}}), 0.0)
    assert early == []
    out = answer(relay, attach, {"session": "s1", "resumed": False, "gap": 0, "types": ""})
    sent = frames(out, pipe_id)
    assert sent[0]["result"]["event"] == "connection_established"
    assert sent[0]["result"]["data"]["session"] == "s1"
    assert sent[1] == {"id": 1, "error": None, "result": {}}


def test_events_are_read_while_the_window_has_room_and_acks_make_more() -> None:
    """'pn' makes the node read at most the window; the answer becomes frames with their seqs; an ack reads again."""
    relay = node()
    pipe_id, out = open_pipe(relay)
    (attach,) = calls(out, "pattach")
    out = answer(relay, attach, {"session": "s1", "resumed": False, "gap": 0, "types": ""})
    (read,) = calls(out, "pread")  # what a new session is owed
    assert read.args[3:7] == ("1", "s1", pipe_id, "2")
    assert read.token is not None
    entries = [[1, "socket_message", '{"socket_id":"1.2","event":"e","data":1}', 1000, "0"],
               [2, "socket_message", '{"socket_id":"1.2","event":"e","data":2}', 1001, "1"]]
    out = relay.cluster_result(read.token, [entries, 1], 0.1)
    sent = frames(out, pipe_id)
    assert [f["result"]["seq"] for f in sent] == [1, 2]
    assert "redelivered" not in sent[0]["result"] and sent[1]["result"]["redelivered"] is True
    assert calls(out, "pread") == []  # the window (2) is full: more waits for acks
    out = relay.pipe_message(pipe_id, json.dumps({"id": None, "method": "ack", "params": {"seq": 2}}), 0.2)
    assert [c.args[0] for c in calls(out)] == ["pack", "pread"]
    # The ack, the room the window has now (events, bytes) and the last seq this node has.
    assert calls(out, "pack")[0].args[3:] == ("1", "s1", "2", "2", str(4 * 1024 * 1024), "2")


def test_pushed_events_and_a_reads_answer_reach_the_pipe_in_seq_order_whichever_comes_first() -> None:
    """'pe' lines and a read's answer, out of order and repeated: the pipe gets each seq once, in order, within its window."""
    relay = node()
    pipe_id, out = open_pipe(relay)
    (attach,) = calls(out, "pattach")
    # A resumed session acked up to 4: what comes next is seq 5.
    out = answer(relay, attach, {"session": "s1", "resumed": True, "gap": 0, "types": "", "seq": 4})
    (read,) = calls(out, "pread")
    assert read.args[-1] == "4"  # the last seq this node has
    data = '{"socket_id":"1.2","event":"e","data":%d}'
    # A push made after the read ran in Redis, come before the read's answer.
    out = relay.cluster_message(f"pe 1 s1\n7 1002 socket_message {data % 7}".encode(), 0.1)
    assert frames(out, pipe_id) == []
    entries = [[5, "socket_message", data % 5, 1000, "0"], [6, "socket_message", data % 6, 1001, "0"]]
    out = relay.cluster_result(read.token, [entries, 0], 0.1)
    assert [f["result"]["seq"] for f in frames(out, pipe_id)] == [5, 6]  # the window (2) is full
    # The same event again (an outage's rewind reads it once more) is one event.
    relay.cluster_message(f"pe 1 s1\n7 1002 socket_message {data % 7}".encode(), 0.1)
    out = relay.pipe_message(pipe_id, json.dumps({"id": None, "method": "ack", "params": {"seq": 6}}), 0.2)
    assert [(f["result"]["seq"], f["result"]["data"]["data"]) for f in frames(out, pipe_id)] == [(7, 7)]
    # The room it reports counts what it wrote; the last seq it has is 7.
    assert calls(out, "pack")[0].args[3:] == ("1", "s1", "6", "1", str(4 * 1024 * 1024 - len(data % 7) - 320), "7")
    out = relay.pipe_message(pipe_id, json.dumps({"id": None, "method": "ack", "params": {"seq": 7}}), 0.3)
    assert frames(out, pipe_id) == []


def test_a_subscribe_is_answered_once_the_cluster_checked_auth_is_free() -> None:
    """subscribe waits for the script; 'AUTH_HELD' becomes error 4230."""
    relay = node()
    pipe_id, out = open_pipe(relay)
    (attach,) = calls(out, "pattach")
    answer(relay, attach, {"session": "s1", "resumed": False, "gap": 0, "types": ""})
    out = relay.pipe_message(pipe_id, json.dumps({"id": 9, "method": "subscribe", "params": {"events": ["auth"]}}), 0.1)
    (sub,) = calls(out, "psub")
    assert frames(out, pipe_id) == []
    assert sub.token is not None
    out = relay.cluster_result(sub.token, b"AUTH_HELD other", 0.2)
    (reply,) = frames(out, pipe_id)
    assert reply["id"] == 9 and reply["error"]["code"] == 4230


def test_a_node_copies_the_clusters_members_and_knows_who_wants_what() -> None:
    """'pm' announcements keep the copy: wants() and the cluster's pipe count follow them."""
    relay = node()
    state = relay.state_of("1")
    assert state is not None
    hub = state.hub
    assert not hub.wants("socket_message")
    member = {"g": "default", "v": "1.0", "t": "socket_message auth", "n": "8", "p": "8000.1"}
    relay.cluster_message(f"pm 1 s9\n{json.dumps(member)}".encode(), 0.0)
    assert hub.wants("socket_message") and hub.holder("auth") == "default" and hub.pipe_count == 1
    relay.cluster_message(b"pm 1 s9\n", 0.0)
    assert not hub.wants("socket_message") and hub.pipe_count == 0


def test_a_send_to_a_socket_of_another_node_waits_for_its_answer() -> None:
    """send_to_socket to a socket whose id names node 8: asked of node 8; 'delivered' counts its answer."""
    relay = node()
    pipe_id, out = open_pipe(relay)
    (attach,) = calls(out, "pattach")
    answer(relay, attach, {"session": "s1", "resumed": False, "gap": 0, "types": ""})
    remote = f"{8 * 10**12 + 5}.123"
    request = {"id": 3, "method": "send_to_socket", "params": {"socket_id": remote, "event": "e", "data": "x"}}
    out = relay.pipe_message(pipe_id, json.dumps(request), 0.1)
    (tell,) = calls(out, "tell")
    assert tell.args[3] == "8"
    head, _, body = tell.args[4].partition("\n")
    kind, token, asker, app, what, ids = head.split(" ")
    # The socket ids in the head, the frame as the socket gets it.
    assert (kind, asker, app, what, ids) == ("q", "7", "1", "ss", remote)
    assert json.loads(body) == {"event": "e", "data": "x"}
    out = relay.cluster_message(f"r {token}\n1".encode(), 0.2)
    assert frames(out, pipe_id) == [{"id": 3, "error": None, "result": {"delivered": 1}}]


def test_a_send_nobody_waits_for_asks_no_count_of_the_other_node() -> None:
    """send_to_socket with id null to another node's socket: told with no token, and that node answers nothing."""
    relay = node()
    pipe_id, out = open_pipe(relay)
    (attach,) = calls(out, "pattach")
    answer(relay, attach, {"session": "s1", "resumed": False, "gap": 0, "types": ""})
    remote = f"{8 * 10**12 + 5}.123"
    request = {"id": None, "method": "send_to_socket", "params": {"socket_id": remote, "event": "e", "data": "x"}}
    (tell,) = calls(relay.pipe_message(pipe_id, json.dumps(request), 0.1), "tell")
    assert tell.args[4].startswith(f"q - 7 1 ss {remote}\n")
    # The other side: a request with no token gets no answer.
    assert calls(relay.cluster_message(b"q - 8 1 ss 1.2\n{}", 0.2), "tell") == []


def test_after_an_outage_the_session_goes_back_to_the_last_seq_written_and_keeps_its_window() -> None:
    """A read answered while the link broke never arrived: prestore names the last seq written (2), not 3."""
    relay = node()
    state = relay.state_of("1")
    assert state is not None
    pipe_id, out = open_pipe(relay)
    (attach,) = calls(out, "pattach")
    (read,) = calls(answer(relay, attach, {"session": "s1", "resumed": False, "gap": 0, "types": ""}), "pread")
    assert read.token is not None
    entries = [[1, "socket_message", '{"socket_id":"1.2","event":"e","data":1}', 1000, "0"],
               [2, "socket_message", '{"socket_id":"1.2","event":"e","data":2}', 1001, "0"]]
    relay.cluster_result(read.token, [entries, 1], 0.1)
    # The ack makes room: the next read goes out, and the link breaks before its answer.
    (_reread,) = calls(relay.pipe_message(pipe_id, json.dumps({"id": None, "method": "ack", "params": {"seq": 1}}), 0.2),
                      "pread")
    relay.cluster_down(0.3)
    # Meanwhile a socket's message for the pipes cannot reach Redis: counted as lost.
    member = {"g": "default", "v": "1.0", "t": "socket_message", "n": "8", "p": "8000.1"}
    relay.cluster_message(f"pm 1 s9\n{json.dumps(member)}".encode(), 0.0)
    before = relay.stats()["cluster"]["lost_while_down"]
    state.hub.publish("socket_message", "1.2", SocketMessage(socket_id="1.2", name="e"), 0.35)
    assert relay.stats()["cluster"]["lost_while_down"] == before + 1
    out = relay.cluster_up(0.4)
    (restore,) = calls(out, "prestore")
    assert restore.args[3:] == ("1", "s1", pipe_id, "1.0", "default", "", "2")
    # Seq 2 is still in flight (not acked): the window (2) has room for one.
    (again,) = calls(out, "pread")
    assert again.args[6] == "1"
