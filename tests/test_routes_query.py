"""A request target's query is decoded as parse_qsl decodes it, whichever way it is read."""

from __future__ import annotations

from urllib.parse import parse_qsl

from hypothesis import given
from hypothesis import strategies as st

from pipe_proto.names import _PREFIXES, ChannelKind, channel_type
from pipe_proto.routes import split_target

_QUERY = st.text(alphabet=st.sampled_from(list("ab=&%+2F0 é?#;")), max_size=40) | st.text(max_size=40)


@given(_QUERY)
def test_a_query_reads_as_parse_qsl_reads_it(query: str) -> None:
    path, fields = split_target("/app/key?" + query)
    assert path == "/app/key"
    assert fields == dict(parse_qsl(query, keep_blank_values=True))


def test_pusher_js_query() -> None:
    assert split_target("/app/key?protocol=7&client=js&version=8.6.0&flash=false")[1] == {
        "protocol": "7", "client": "js", "version": "8.6.0", "flash": "false",
    }


@given(st.sampled_from(["", "p", "c", "#", "presence", "private-", "cache", "x"]), st.text(max_size=12))
def test_a_channel_is_classified_by_its_first_matching_prefix(start: str, rest: str) -> None:
    name = start + rest
    expected = next((kind for prefix, kind in _PREFIXES if name.startswith(prefix)), None)
    got = channel_type(name)
    if expected is None:
        assert got.kind is ChannelKind.PUBLIC and not got.cached
    else:
        assert got == expected
