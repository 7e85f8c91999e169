"""What every fuzz target shares: settings profiles, the corpus, the crash recorder, JSON mutation.

Profiles (``FUZZ_PROFILE``):

* ``ci`` (default): a bounded, derandomized budget, so the normal pytest run
  stays fast and a red run is always reproducible;
* ``dev``: the same budget with fresh random examples on every run;
* ``long``: a large ``max_examples`` and no deadline, for campaigns
  (``fuzz/run.py`` builds its own chunked settings from it).

Every target funnels each input through one ``check_*`` function that first
calls :func:`record`: the recorder then holds the input that was running when
an exception escaped. Hypothesis replays the shrunk failing example last, so
after a failed run :data:`RECORDER` holds the minimal crashing input, ready to
be written to ``fuzz/corpus/<target>/`` as a JSON file that the target's replay
test runs from then on.
"""

from __future__ import annotations

import base64
import copy
import functools
import hashlib
import json
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parent.parent
CORPUS = Path(__file__).resolve().parent / "corpus"

# ----------------------------------------------------------------- profiles

_QUIET = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much, HealthCheck.large_base_example]
settings.register_profile("fuzz-ci", deadline=None, derandomize=True, database=None, suppress_health_check=_QUIET)
settings.register_profile("fuzz-dev", deadline=None, suppress_health_check=_QUIET)
settings.register_profile(
    "fuzz-long", deadline=None, max_examples=1_000_000, suppress_health_check=_QUIET, print_blob=True
)

PROFILE = os.environ.get("FUZZ_PROFILE", "ci")
if PROFILE not in ("ci", "dev", "long"):
    raise RuntimeError(f"FUZZ_PROFILE must be ci, dev or long, not {PROFILE!r}")


def profile_settings(ci_examples: int, **overrides: Any) -> settings:
    """The settings of the selected profile; ``ci_examples`` is the bounded budget."""
    base = settings.get_profile(f"fuzz-{PROFILE}")
    if PROFILE == "long":
        return settings(base, **overrides)
    return settings(base, max_examples=ci_examples, **overrides)


def campaign_settings(max_examples: int) -> settings:
    """One chunk of a campaign: random, no deadline, no database, shrink what fails."""
    return settings(
        settings.get_profile("fuzz-long"),
        max_examples=max_examples,
        database=None,
        derandomize=False,
        phases=[Phase.generate, Phase.shrink],
        print_blob=False,
    )


# ----------------------------------------------------------------- properties


class Property:
    """A fuzz property: a check over drawn arguments, runnable by pytest and by the campaign runner."""

    def __init__(self, target: str, fn: Callable[..., None], strategies: dict[str, Any], ci_examples: int) -> None:
        self.target = target
        self.fn = fn
        self.name = fn.__name__
        self.strategies = strategies
        self.ci_examples = ci_examples

    def build(self, chosen: settings) -> Callable[[], None]:
        """A Hypothesis test of this property under ``chosen`` settings."""
        fn, target = self.fn, self.target

        @functools.wraps(fn)
        def watched(**kwargs: Any) -> None:
            try:
                fn(**kwargs)
            except BaseException as exc:
                RECORDER.failed(target, exc)
                raise

        test: Callable[[], None] = settings(chosen)(given(**self.strategies)(watched))
        return test


PROPERTIES: dict[str, list[Property]] = {}


def fuzz_property(target: str, ci_examples: int, /, **strategies: Any) -> Callable[[Callable[..., None]], Any]:
    """Declare a property of ``target``; returns the pytest test (the profile's settings)."""

    def decorate(fn: Callable[..., None]) -> Any:
        prop = Property(target, fn, strategies, ci_examples)
        PROPERTIES.setdefault(target, []).append(prop)
        test = prop.build(profile_settings(ci_examples))
        test.fuzz_property = prop  # type: ignore[attr-defined]
        return test

    return decorate


# ------------------------------------------------------------------ recorder


def failure_key(exc: BaseException) -> str:
    """A name for a distinct failure: the exception type and where it was raised."""
    tb = exc.__traceback__
    where = "?"
    while tb is not None:
        where = f"{Path(tb.tb_frame.f_code.co_filename).name}:{tb.tb_lineno}"
        tb = tb.tb_next
    return f"{type(exc).__name__} at {where}"


class Recorder:
    """The input each target is checking right now, how many it checked, and what failed.

    ``failures[target]`` maps each distinct failure (:func:`failure_key`) to the
    last input that raised it: Hypothesis replays every distinct failure's
    shrunk example last, so after a run that is the minimal one.
    """

    def __init__(self) -> None:
        self.last: dict[str, dict[str, Any]] = {}
        self.counts: dict[str, int] = {}
        self.failures: dict[str, dict[str, tuple[dict[str, Any], BaseException]]] = {}

    def record(self, target: str, entry: dict[str, Any]) -> None:
        self.last[target] = entry
        self.counts[target] = self.counts.get(target, 0) + 1

    def failed(self, target: str, exc: BaseException) -> None:
        """Keep the current input of ``target`` as the example of ``exc``'s failure."""
        if target in self.last and not isinstance(exc, (KeyboardInterrupt, SystemExit)):
            # A copy: a state machine's program may still grow (its teardown) after the failure.
            self.failures.setdefault(target, {})[failure_key(exc)] = (copy.deepcopy(self.last[target]), exc)


RECORDER = Recorder()
record = RECORDER.record


# -------------------------------------------------------------------- corpus


def text_entry(text: str | bytes, **fields: Any) -> dict[str, Any]:
    """A corpus entry carrying ``text``; bytes that are not UTF-8 travel as base64."""
    if isinstance(text, bytes):
        return {**fields, "bytes_b64": base64.b64encode(text).decode()}
    return {**fields, "text": text}


def entry_text(entry: dict[str, Any]) -> str | bytes:
    """The text (or bytes) of an entry made by :func:`text_entry`."""
    if "bytes_b64" in entry:
        return base64.b64decode(entry["bytes_b64"])
    text: str = entry["text"]
    return text


def _encode_entry(entry: dict[str, Any]) -> str:
    # ensure_ascii: lone surrogates and control characters survive as escapes.
    return json.dumps(entry, indent=1, sort_keys=True, ensure_ascii=True) + "\n"


def entry_digest(entry: dict[str, Any]) -> str:
    """A short content hash naming an entry's file."""
    clean = {k: v for k, v in entry.items() if k != "note"}
    return hashlib.sha1(_encode_entry(clean).encode()).hexdigest()[:12]


def save_entry(target: str, entry: dict[str, Any], prefix: str) -> Path:
    """Write ``entry`` to ``fuzz/corpus/<target>/<prefix>-<hash>.json`` (idempotent)."""
    folder = CORPUS / target
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{prefix}-{entry_digest(entry)}.json"
    if not path.exists():
        path.write_text(_encode_entry(entry))
    return path


def corpus_files(target: str) -> list[Path]:
    """The corpus files of ``target``, sorted."""
    return sorted((CORPUS / target).glob("*.json"))


def load_corpus(target: str) -> list[tuple[str, dict[str, Any]]]:
    """``(file stem, entry)`` for every corpus file of ``target``."""
    return [(path.stem, json.loads(path.read_text())) for path in corpus_files(target)]


def corpus_params(target: str) -> list[Any]:
    """pytest parameters replaying the corpus of ``target``, one per file."""
    return [pytest.param(entry, id=name) for name, entry in load_corpus(target)]


def corpus_texts(target: str, **match: Any) -> list[str]:
    """The texts of corpus entries whose fields equal ``match`` (seeds for mutation)."""
    texts = []
    for _, entry in load_corpus(target):
        if "text" in entry and all(entry.get(k) == v for k, v in match.items()):
            texts.append(entry["text"])
    return texts


# --------------------------------------------------------------- JSON values

# Markers stand for JSON texts no Python value dumps to; :func:`to_text` swaps them in.
MARKERS = {
    "\x00inf\x00": "1e400",
    "\x00-inf\x00": "-1E999",
    "\x00nan\x00": "NaN",
    "\x00infinity\x00": "Infinity",
    "\x00bigint\x00": "9" * 5000,
    "\x00deep\x00": "[" * 5000 + "]" * 5000,
    "\x00deep990\x00": "[" * 990 + "]" * 990,
    "\x00surrogate\x00": '"\\ud800"',
    "\x00dupkey\x00": '{"channel":"a","channel":"b","event":"x","event":"pusher:ping"}',
}
_MARKER_TEXT = {json.dumps(marker): text for marker, text in MARKERS.items()}
_MARKER_RE = re.compile("|".join(re.escape(m) for m in _MARKER_TEXT))


def to_text(value: Any) -> str:
    """``value`` as JSON, with every marker string replaced by the literal it stands for."""
    text = json.dumps(value, allow_nan=True)
    if "\\u0000" not in text:
        return text
    return _MARKER_RE.sub(lambda m: _MARKER_TEXT[m.group(0)], text)


names = st.sampled_from(
    ["event", "data", "channel", "auth", "channel_data", "user_data", "user_id", "user_info", "presence", "hash",
     "ids", "socket_id", "activity_timeout", "code", "message", "events", "name", "user_ids", "id", "method",
     "params", "result", "error", "request_id", "allow", "calls", "seq", "channels", "socket_ids", "watchlist", "x"]
)
texts = st.text(max_size=12) | st.sampled_from(
    ["", "pusher:subscribe", "pusher:ping", "pusher_internal:member_added", "client-x", "private-a", "presence-a",
     "private-encrypted-a", "cache-a", "#server-to-user-u1", "1.1", "{}", "[]", "null", '{"user_id":"u1"}',
     "app-key:" + "0" * 64, "é", "\ud800", "\x00"]
)
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | texts
)
special = st.sampled_from(sorted(MARKERS))
json_values = st.recursive(
    scalars | special,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(names | texts, inner, max_size=4),
    max_leaves=10,
)
"""JSON-able values, including markers for out-of-range numbers, NaN, deep nesting and duplicate keys."""

plain_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)
"""Values any JSON encoder round-trips (no markers)."""


# ------------------------------------------------------------- JSON mutation


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield prefix
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _paths(item, (*prefix, index))


def _get(value: Any, path: tuple[Any, ...]) -> Any:
    for step in path:
        value = value[step]
    return value


def _expand(value: Any) -> Any:
    """Decode double-encoded JSON strings (``data``, ``channel_data``) so mutations reach inside."""
    if isinstance(value, str) and value[:1] in "{[":
        try:
            return {"\x00json\x00": _expand(json.loads(value))}
        except ValueError:
            return value
    if isinstance(value, dict):
        return {k: _expand(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v) for v in value]
    return value


def _collapse(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"\x00json\x00"}:
            return to_text(_collapse(value["\x00json\x00"]))
        return {k: _collapse(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_collapse(v) for v in value]
    return value


@st.composite
def mutated_json(draw: st.DrawFn, seeds: list[str]) -> str:
    """A seed frame with 1-4 structural mutations: replace, delete, add, stringify, nest, retype a field."""
    seed = draw(st.sampled_from(seeds))
    try:
        tree = _expand(json.loads(seed))
    except ValueError:
        return seed
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        paths = list(_paths(tree))
        path = draw(st.sampled_from(paths))
        target = _get(tree, path)
        how = draw(st.sampled_from(["replace", "delete", "add", "stringify", "nest", "retype"]))
        new: Any
        if how == "delete" and path:
            del _get(tree, path[:-1])[path[-1]]
            continue
        if how == "add" and isinstance(target, dict):
            target[draw(names | texts)] = draw(json_values)
            continue
        if how == "replace":
            new = draw(json_values)
        elif how == "stringify":
            new = to_text(_collapse(target))
        elif how == "nest":
            new = target
            for _ in range(draw(st.sampled_from([1, 2, 3]))):
                new = [new] if draw(st.booleans()) else {"x": new}
        else:
            new = draw(st.sampled_from([None, True, False, 0, -1, 1.5, "", [], {}, "\x00inf\x00", "\x00bigint\x00"]))
        if path:
            _get(tree, path[:-1])[path[-1]] = new
        else:
            tree = new
    return to_text(_collapse(tree))


@st.composite
def char_edits(draw: st.DrawFn, seeds: list[str]) -> str:
    """A seed frame with 1-6 characters inserted, deleted or replaced."""
    chars = list(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(min_value=1, max_value=6))):
        index = draw(st.integers(min_value=0, max_value=len(chars)))
        edit = draw(st.sampled_from(["insert", "delete", "replace"]))
        char = draw(st.sampled_from([*'{}[]",:\\ 0aeE-+.tnu9', "\x00", "\ud800", "é", "\u2028"]))
        if edit == "insert":
            chars.insert(index, char)
        elif index < len(chars):
            if edit == "delete":
                del chars[index]
            else:
                chars[index] = char
    return "".join(chars)


def seeded_frames(seeds: list[str]) -> st.SearchStrategy[str]:
    """Seeds as they are, structurally mutated, or with character edits."""
    return st.sampled_from(seeds) | mutated_json(seeds) | char_edits(seeds)
