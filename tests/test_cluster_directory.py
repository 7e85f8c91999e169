"""A cluster node's core without Redis: the calls it makes, and what it does with answers and messages.

Redis's side is played by hand: the tests read the ClusterCall outputs and feed inbox messages and call
results back, as the adapter would.
"""

from __future__ import annotations

import json
from functools import partial
from typing import Any

from pipe_proto import App, Close, Features, Relay, Send, WebhookEvent, WebhookTarget
from pipe_proto.cluster import ClusterDirectory, merged, multi, weight
from pipe_proto.cluster.directory import MERGE_EVENTS, MERGE_LIMIT
from pipe_proto.relay.outputs import ClusterCall, Output
from pipe_proto.signatures import channel_auth

KEY, SECRET = "key", "secret"
HOOK = "http://hooks/x"


def node(**options: Any) -> Relay:
    app = App(id="1", key=KEY, secret=SECRET, webhooks=[WebhookTarget(url=HOOK)], **options)
    return Relay([app], id_base=100, directory=partial(ClusterDirectory, node="7", prefix="p"))


def calls(out: list[Output]) -> list[tuple[str, ...]]:
    """The script operations called, with their arguments after prefix and node."""
    found = []
    for item in out:
        if isinstance(item, ClusterCall):
            assert item.args[1:3] == ("p", "7")
            found.append((item.args[0], *item.args[3:]))
    return found


def frames(out: list[Output], target: str) -> list[dict[str, Any]]:
    return [json.loads(o.text) for o in out if isinstance(o, Send) and target in o.targets]


def connected(relay: Relay) -> list[Output]:
    return relay.cluster_up(0.0)


def open_socket(relay: Relay, nonce: int) -> str:
    socket_id, out = relay.open_socket(KEY, {"protocol": "7"}, 0.0, nonce=nonce)
    assert [f["event"] for f in frames(out, socket_id)] == ["pusher:connection_established"]
    return socket_id


def subscribe(relay: Relay, socket_id: str, channel: str, **data: Any) -> list[Output]:
    message = {"event": "pusher:subscribe", "data": {"channel": channel, **data}}
    return relay.socket_message(socket_id, json.dumps(message), 0.0)


def test_a_node_starts_by_putting_its_share_right_and_beating() -> None:
    """cluster_up: resync (begin, end: nothing to add yet), the pipes' members, a heartbeat, a look for dead nodes."""
    relay = node()
    assert [c[0] for c in calls(connected(relay))] == ["rs_begin", "rs_end", "pmembers", "beat", "reap", "pexpire"]


def test_a_join_waits_for_its_answer_from_the_inbox() -> None:
    """subscription_succeeded comes with the inbox answer, with the cluster's members; not before."""
    relay = node()
    connected(relay)
    sid = open_socket(relay, 1)
    data = json.dumps({"user_id": "u1", "user_info": {"n": 1}})
    out = subscribe(relay, sid, "presence-room", auth=channel_auth(KEY, SECRET, sid, "presence-room", data), channel_data=data)
    assert frames(out, sid) == []
    (join,) = calls(out)
    assert join[:2] == ("join", "1") and join[2] == "presence-room" and join[6] == "u1"
    token = join[3]
    # A member event that Redis ran before this join: the socket is not in yet, so it is not sent.
    assert frames(relay.cluster_message(b'm 1 presence-room\n{"event":"x"}', 0.0), sid) == []
    reply = {"count": 2, "members": [["u0", None], ["u1", {"n": 1}]], "cache": None, "miss": False,
             "transitions": [["added", "1", "presence-room", "u1"]]}
    out = relay.cluster_message(f"r {token}\n{json.dumps(reply)}".encode(), 0.0)
    (succeeded,) = frames(out, sid)
    assert succeeded["event"] == "pusher_internal:subscription_succeeded"
    assert json.loads(succeeded["data"])["presence"]["ids"] == ["u0", "u1"]
    hooks = [o.event for o in out if isinstance(o, WebhookEvent)]
    assert hooks == [{"name": "member_added", "channel": "presence-room", "user_id": "u1"}]
    # Events after the answer reach it.
    assert frames(relay.cluster_message(b'm 1 presence-room\n{"event":"y"}', 0.0), sid) == [{"event": "y"}]


def test_leaving_before_the_answer_leaves_once_the_join_happened() -> None:
    """An unsubscribe while the join is in flight: nothing sent now; the leave follows the answer."""
    relay = node()
    connected(relay)
    sid = open_socket(relay, 1)
    (join,) = calls(subscribe(relay, sid, "news"))
    out = relay.socket_message(sid, json.dumps({"event": "pusher:unsubscribe", "data": {"channel": "news"}}), 0.0)
    assert calls(out) == []
    out = relay.cluster_message(f"r {join[3]}\n" .encode() + b'{"count":1,"members":null,"cache":null,"miss":false,"transitions":[["occupied","1","news"]]}', 0.0)
    assert frames(out, sid) == []
    assert [c[0] for c in calls(out)] == ["leave"]
    assert relay.stats()["apps"]["1"]["channels"] == 0


def test_a_presence_channel_full_in_the_cluster_refuses_with_413() -> None:
    """The script's refusal becomes the same subscription_error a lone relay sends."""
    relay = node()
    connected(relay)
    sid = open_socket(relay, 1)
    data = json.dumps({"user_id": "u9"})
    out = subscribe(relay, sid, "presence-full", auth=channel_auth(KEY, SECRET, sid, "presence-full", data), channel_data=data)
    (join,) = calls(out)
    out = relay.cluster_message(f"r {join[3]}\n{{\"refused\":true}}".encode(), 0.0)
    (error,) = frames(out, sid)
    assert error["event"] == "pusher:subscription_error"
    assert error["data"]["status"] == 413
    assert relay.stats()["apps"]["1"]["channels"] == 0


def test_channel_events_from_other_nodes_skip_the_excluded_socket() -> None:
    """An 'e' message is delivered to this node's subscribers but the excluded one."""
    relay = node()
    connected(relay)
    a, b = open_socket(relay, 1), open_socket(relay, 2)
    for sid in (a, b):
        (join,) = calls(subscribe(relay, sid, "news"))
        relay.cluster_message(f"r {join[3]}\n".encode() + b'{"count":1,"members":null,"cache":null,"miss":false,"transitions":[]}', 0.0)
    out = relay.cluster_message(f"e 1 news {a}\n{{\"event\":\"tick\"}}".encode(), 0.0)
    assert out == [Send((b,), '{"event":"tick"}')]


def test_publishing_goes_to_the_cluster_and_to_local_subscribers() -> None:
    """A REST trigger calls 'pub' with the frame (and the cache for cache channels) and sends locally."""
    relay = node()
    connected(relay)
    out = relay.publish("1", ["cache-x"], "e", "{}", None, 5.0)
    (pub,) = calls(out)
    assert pub[:5] == ("pub", "1", "cache-x", "-", '{"event":"e","channel":"cache-x","data":"{}"}')
    assert pub[5] == str(1800 * 1000) and json.loads(pub[6]) == {"event": "e", "data": "{}"}


def test_departure_webhooks_wait_and_are_confirmed_against_redis() -> None:
    """A vacated transition is confirmed after 3 s; only a confirmed departure is sent."""
    relay = node()
    connected(relay)
    sid = open_socket(relay, 1)
    (join,) = calls(subscribe(relay, sid, "news"))
    relay.cluster_message(f"r {join[3]}\n".encode() + b'{"count":1,"members":null,"cache":null,"miss":false,"transitions":[]}', 0.0)
    out = relay.socket_closed(sid, 1.0, 1000, "bye")
    (leave,) = [c for c in out if isinstance(c, ClusterCall)]
    assert leave.token is not None
    relay.cluster_result(leave.token, json.dumps({"count": 0, "transitions": [["vacated", "1", "news", "7|1"]]}), 1.0)
    assert [c for c in calls(relay.tick(2.0)) if c[0] not in ("beat", "reap", "pexpire")] == []
    (confirm,) = [c for c in relay.tick(4.5) if isinstance(c, ClusterCall) and c.args[0] == "confirm"]
    assert confirm.args[3:] == ("1", "v|news", "7|1")
    assert confirm.token is not None
    out = relay.cluster_result(confirm.token, 1, 4.6)
    assert [o.event["name"] for o in out if isinstance(o, WebhookEvent)] == ["channel_vacated"]
    # A departure that came back in time is not confirmed: nothing is sent.
    assert relay.cluster_result(confirm.token, 0, 4.7) == []


def test_subscription_count_webhooks_follow_joins_and_leaves_as_on_one_relay() -> None:
    """Each join's answer brings the cluster's count, sent as a webhook; each leave's too, but for
    the last (channel_vacated says that one), as a lone relay sends them."""
    relay = node(features=Features(subscription_count=True))
    connected(relay)
    sid = open_socket(relay, 1)
    (join,) = calls(subscribe(relay, sid, "news"))
    answer = b'{"count":3,"members":null,"cache":null,"miss":false,"transitions":[]}'
    out = relay.cluster_message(f"r {join[3]}\n".encode() + answer, 0.0)
    hooks = [o.event for o in out if isinstance(o, WebhookEvent)]
    assert [(e["name"], e["subscription_count"]) for e in hooks] == [("subscription_count", 3)]
    for count, expected in ((2, [("subscription_count", 2)]), (0, [])):
        other = open_socket(relay, 10 + count)
        (join,) = calls(subscribe(relay, other, "news"))
        relay.cluster_message(f"r {join[3]}\n".encode() + answer, 0.0)
        out = relay.socket_closed(other, 1.0, 1000, "bye")
        (leave,) = [c for c in out if isinstance(c, ClusterCall) and c.args[0] == "leave"]
        assert leave.token is not None
        out = relay.cluster_result(leave.token, json.dumps({"count": count, "transitions": []}), 1.0)
        assert [(o.event["name"], o.event["subscription_count"]) for o in out if isinstance(o, WebhookEvent)] == expected


def test_without_redis_a_node_answers_from_its_own_records_and_resyncs_after() -> None:
    """cluster_down: waiting joins are answered from this node's records; cluster_up sends its share."""
    relay = node(features=Features(subscription_count=True))
    connected(relay)
    sid = open_socket(relay, 1)
    data = json.dumps({"user_id": "u1"})
    subscribe(relay, sid, "presence-room", auth=channel_auth(KEY, SECRET, sid, "presence-room", data), channel_data=data)
    out = relay.cluster_down(1.0)
    (succeeded,) = frames(out, sid)
    assert json.loads(succeeded["data"])["presence"]["ids"] == ["u1"]
    assert calls(relay.publish("1", ["presence-room"], "e", "{}", None, 1.0)) == []
    assert relay.stats()["cluster"]["lost_while_down"] == 1
    share = [c for c in calls(relay.cluster_up(2.0)) if c[0] == "rs_add"]
    fields = share[0][2:]
    assert fields[0::5] == ("s|1|presence-room", "m|1|presence-room|u1")
    assert fields[1::5] == ("1", "1")


def test_without_redis_a_node_tells_its_own_subscribers_of_its_members_coming_and_going() -> None:
    """A presence member joining while Redis is down (or whose join was on its way) is announced to the
    node's other subscribers, as one relay would, and so is its leaving in the same outage; the resync's
    announcement of the join is not passed on again. A member that was there before the outage may be
    on another node too: its leaving waits for the resync's word."""
    from pipe_proto.pusher.events import MemberAdded
    from pipe_proto.relay.core import frame

    room = "presence-room"
    relay = node()
    connected(relay)

    def enter(nonce: int, user: str) -> tuple[str, list[Output]]:
        sid = open_socket(relay, nonce)
        data = json.dumps({"user_id": user})
        return sid, subscribe(relay, sid, room, auth=channel_auth(KEY, SECRET, sid, room, data), channel_data=data)

    def told(out: list[Output], sid: str) -> list[tuple[str, str]]:
        return [(f["event"].rpartition(":")[2], json.loads(f["data"])["user_id"]) for f in frames(out, sid)]

    alice, out = enter(1, "alice")
    (join,) = calls(out)
    answer = {"count": 1, "members": [["alice", None]], "cache": None, "miss": False, "transitions": []}
    relay.cluster_message(f"r {join[3]}\n".encode() + json.dumps(answer).encode(), 0.0)
    carol, out = enter(3, "carol")
    (join,) = calls(out)
    relay.cluster_message(f"r {join[3]}\n".encode() + json.dumps({**answer, "members": [["carol", None]]}).encode(), 0.0)
    enter(4, "dave")  # its answer never comes: the link breaks first
    assert told(relay.cluster_down(1.0), alice) == [("member_added", "dave")]
    bob, out = enter(2, "bob")
    assert told(out, alice) == [("member_added", "bob")]
    assert told(relay.socket_closed(bob, 1.1, 1000, "bye"), alice) == [("member_removed", "bob")]
    assert told(relay.socket_closed(carol, 1.2, 1000, "bye"), alice) == []  # there before: the resync tells
    relay.cluster_up(2.0)
    echo = frame(MemberAdded(channel=room, user_id="dave", user_info=None))
    assert frames(relay.cluster_message(f"m 1 {room}\n{echo}".encode(), 2.1), alice) == []


def test_a_node_reaped_while_paused_closes_its_connections_and_starts_afresh() -> None:
    """A heartbeat that finds the node unlisted: its sockets get 4200, nothing is said to Redis for them, resync."""
    relay = node()
    out = relay.cluster_up(0.0)
    (beat,) = [c for c in out if isinstance(c, ClusterCall) and c.args[0] == "beat"]
    assert beat.token is not None
    sid = open_socket(relay, 1)
    (join,) = calls(subscribe(relay, sid, "news"))
    relay.cluster_message(f"r {join[3]}\n".encode() + b'{"count":1,"members":null,"cache":null,"miss":false,"transitions":[]}', 0.0)
    out = relay.cluster_result(beat.token, [1000, 1], 5.0)
    closes = [o for o in out if isinstance(o, Close)]
    assert [(c.target, c.code) for c in closes] == [(sid, 4200)]
    assert [c[0] for c in calls(out)][:2] == ["rs_begin", "rs_end"], "no leave for the closed socket: a fresh start"
    assert relay.stats()["cluster"]["fenced"] == 1


def test_publishes_to_one_channel_merge_into_one_call_and_arrive_as_one_message() -> None:
    """merged(): consecutive plain publishes to one channel become one call; an 'e' message of two lines is two frames."""
    relay = node()
    connected(relay)
    first, second, other, cached = (
        next(o for o in relay.publish("1", [channel], name, "{}", None, 5.0) if isinstance(o, ClusterCall))
        for channel, name in (("news", "a"), ("news", "b"), ("sport", "c"), ("cache-x", "d"))
    )
    both = merged(first, second)
    assert both is not None
    assert both.args[6].split("\n") == [first.args[6], second.args[6]] and both.args[:6] == first.args[:6]
    assert merged(first, other) is None  # another channel
    assert merged(cached, cached) is None  # a cache channel's publish stores its event
    counted = ClusterCall((*first.args[:9], "12"), 3)
    assert merged(first, counted) is None and merged(counted, first) is None
    big = ClusterCall((*first.args[:6], "x" * MERGE_LIMIT, *first.args[7:]))
    assert merged(first, big) is None
    # The node receiving it writes both frames.
    a = open_socket(relay, 1)
    (join,) = calls(subscribe(relay, a, "news"))
    relay.cluster_message(f"r {join[3]}\n".encode() + b'{"count":1,"members":null,"cache":null,"miss":false,"transitions":[]}', 0.0)
    out = relay.cluster_message(f"e 1 news -\n{first.args[6]}\n{second.args[6]}".encode(), 0.0)
    assert [f["event"] for f in frames(out, a)] == ["a", "b"]


def test_pipe_events_tells_and_acks_merge_as_the_script_takes_them() -> None:
    """merged(): pp calls concatenate their events (up to MERGE_EVENTS), tells to one node bundle, acks keep the last."""
    head = ("pp", "p", "7", "1", "100", "1000")
    one = ClusterCall((*head, "\x1f".join(("socket_message", "1.2", "socket_message", "{}", "", "1000"))))
    two = ClusterCall((*head, "\x1f".join(("socket_opened", "1.3", "socket_opened", "{}", "", "1001"))))
    both = merged(one, two)
    # One argument of records, as the script splits it.
    assert both is not None and both.args == (*head, one.args[6] + "\x1e" + two.args[6])
    assert weight(both) == 7 + 6
    assert merged(one, ClusterCall(("pp", "p", "7", "2", *head[4:], one.args[6]))) is None  # another app
    almost = ClusterCall((*head, "\x1e".join([one.args[6]] * (MERGE_EVENTS - 1))))
    full = merged(almost, one)
    assert full is not None and full.args[6].count("\x1e") == MERGE_EVENTS - 1
    assert merged(full, one) is None
    tell = ClusterCall(("tell", "p", "7", "8", 'q - 7 1 ss\n{"ids":["8000000000001.1"],"text":"a"}'))
    answer = ClusterCall(("tell", "p", "7", "8", "r 12\n1"))
    bundle = merged(tell, answer)
    assert bundle is not None and bundle.args[4] == "b\n" + tell.args[4] + "\nr 12\n1"
    again = merged(bundle, tell)
    assert again is not None and again.args[4] == bundle.args[4] + "\n" + tell.args[4]
    assert merged(tell, ClusterCall(("tell", "p", "7", "9", "r 12\n1"))) is None  # another node
    assert merged(tell, ClusterCall(("tell", "p", "7", "8", "t 1 u"))) is None  # not one head and one body
    assert merged(ClusterCall(("tell", "p", "7", "8", "x\ny\nz")), tell) is None
    acks = [ClusterCall(("pack", "p", "7", "1", "s1", seq)) for seq in ("4", "9")]
    assert merged(*acks) == acks[1] and merged(acks[1], acks[0]) == acks[1]
    assert merged(acks[0], ClusterCall(("pack", "p", "7", "1", "s2", "9"))) is None


def test_a_bundle_is_each_of_its_messages_in_order() -> None:
    """A 'b' message: each head and body pair handled as its own message (two sends to local sockets here)."""
    relay = node()
    connected(relay)
    a, b = open_socket(relay, 1), open_socket(relay, 2)
    parts = [f'q - 8 1 ss {sid}\n{{"event":"{sid}"}}' for sid in (a, b, a)]
    out = relay.cluster_message(("b\n" + "\n".join(parts)).encode(), 0.0)
    assert [o.targets for o in out if isinstance(o, Send)] == [(a,), (b,), (a,)]
    assert relay.stats()["cluster"]["messages_in"] == 1


def test_multi_is_each_call_with_its_argument_count() -> None:
    """multi(): one call stays itself; several become [count, op, args...] each, after one prefix and node."""
    one = ClusterCall(("pack", "p", "7", "1", "s1", "4"))
    two = ClusterCall(("tell", "p", "7", "8", "r 1\n1"))
    assert multi([one]) is one
    assert multi([one, two]).args == ("multi", "p", "7", "4", "pack", "1", "s1", "4", "3", "tell", "8", "r 1\n1")
