"""JSON text in and out: the core's shortcuts give exactly what the standard library's encoder and decoder give."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipe_proto import jsontext
from tests.support import COMPILED_CORE

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
    max_leaves=30,
)


def _reference_loads(text: str) -> Any:
    # The standard library's decoder, with the core's hooks: what loads was before its shortcut.
    return jsontext._decoder.decode(text)


def _outcome(parse: Any, text: str) -> tuple[str, Any]:
    try:
        return "value", parse(text)
    except ValueError as exc:
        return "error", str(exc)


@given(JSON_VALUES)
def test_dumps_is_the_compact_ascii_encoding(value: Any) -> None:
    assert jsontext.dumps(value) == json.dumps(value, separators=(",", ":"), allow_nan=False)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, [1, {"a": math.nan}]])
def test_dumps_refuses_what_json_cannot_say(value: Any) -> None:
    with pytest.raises(ValueError, match="not JSON compliant"):
        jsontext.dumps(value)


def test_dumps_refuses_values_json_has_no_form_for() -> None:
    with pytest.raises(TypeError, match="not JSON serializable"):
        jsontext.dumps({"a": object()})


@given(JSON_VALUES, st.sampled_from(["", " ", "\n", "\t \r\n"]), st.sampled_from(["", " ", "\r\n", " x", "}", ",1"]))
def test_loads_reads_what_the_reference_reads_and_refuses_the_same_with_its_message(
    value: Any, before: str, after: str
) -> None:
    text = before + json.dumps(value) + after
    assert _outcome(jsontext.loads, text) == _outcome(_reference_loads, text)


@given(st.text(max_size=40))
def test_loads_of_any_text_matches_the_reference(text: str) -> None:
    assert _outcome(jsontext.loads, text) == _outcome(_reference_loads, text)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "Expecting value: line 1 column 1 (char 0)"),
        ("   ", "Expecting value: line 1 column 4 (char 3)"),
        ('{"a":1} x', "Extra data: line 1 column 9 (char 8)"),
        ("NaN", "NaN is not JSON"),
        ("[1e400]", "number 1e400 is out of range"),
        ("[" * 100_000, "JSON nested too deeply"),
        (b"\xff", "not UTF-8"),
    ],
)
def test_loads_errors_say_why(text: str | bytes, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        jsontext.loads(text)
    assert str(caught.value) == message


def test_dumps_of_a_value_containing_itself_is_a_value_error() -> None:
    cycle: list[Any] = []
    cycle.append(cycle)
    with pytest.raises(ValueError, match="Circular reference"):
        jsontext.dumps({"a": cycle})


def test_dumps_nested_deeper_than_python_recurses_fails_as_the_reference_does() -> None:
    deep: list[Any] = []
    for _ in range(100_000):
        deep = [deep]
    with pytest.raises(RecursionError):
        json.dumps(deep, separators=(",", ":"), allow_nan=False)
    with pytest.raises(RecursionError):
        jsontext.dumps(deep)


@pytest.mark.parametrize("value", [None, {}, {"a": 1}, [" "], 5])
def test_loads_of_something_not_text_is_the_references_type_error(value: Any) -> None:
    with pytest.raises(TypeError) as ours:
        jsontext.loads(value)
    with pytest.raises(TypeError) as reference:
        _reference_loads(value)
    if not COMPILED_CORE:  # compiled, the argument's annotation is checked first, in mypyc's words
        assert str(ours.value) == str(reference.value)
