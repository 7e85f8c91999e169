"""JSON text in and out, the same way everywhere in the core (and in its adapters).

Output is compact (no spaces), as pusher-js and the Pusher docs write it, and
ASCII-escaped so that a lone surrogate smuggled in through a ``\\ud800``
escape can never make a later UTF-8 encode fail. Input rejects the
non-standard constants Python accepts (``NaN``, ``Infinity``) and numbers too
large for a float (``1e400``, which would become ``inf``), and turns every
way ``json.loads`` can fail, including deep nesting, into ``ValueError``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

__all__ = ["dumps", "encoded_size", "loads"]

_encoder = json.JSONEncoder(separators=(",", ":"), allow_nan=False)

try:
    from _json import encode_basestring_ascii as _string
    from _json import make_encoder
except ImportError:  # pragma: no cover - CPython always has its accelerator
    _one_shot = None
else:
    # What JSONEncoder.encode builds on every call, built once: it keeps no
    # state between calls, as it has no circular-reference table (a cycle
    # recurses to a RecursionError, and dumps asks the general encoder). About
    # half the cost of a small object's encoding, on every frame's path.
    _one_shot = make_encoder(None, _encoder.default, _string, None, ":", ",", False, False, False)


def dumps(value: Any) -> str:
    """Compact, ASCII-escaped JSON text of ``value``.

    Raises:
        ValueError: NaN or an infinity.
        TypeError: a value JSON has no form for.
    """
    if _one_shot is None:  # pragma: no cover
        return _encoder.encode(value)
    if type(value) is str:
        return _string(value)
    try:
        return "".join(_one_shot(value, 0))
    except RecursionError:
        # Too deep, or a value that contains itself: the general encoder
        # says which (ValueError for a cycle, as ever).
        return _encoder.encode(value)


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite(text: str) -> float:
    # 1e400 is valid JSON but a float overflows to inf, which no encoder writes back.
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"number {text[:20]} is out of range")
    return value


_decoder = json.JSONDecoder(parse_constant=_no_constants, parse_float=_finite)
_scan: Callable[[str, int], tuple[Any, int]] = _decoder.scan_once  # type: ignore[attr-defined]
_WHITESPACE = " \t\n\r"  # JSON's, RFC 8259 section 2


def loads(text: str | bytes) -> Any:
    """Parse one JSON document.

    Raises:
        ValueError: ``text`` is not one JSON document (including nesting too
            deep for the parser and non-UTF-8 bytes).
    """
    try:
        if isinstance(text, bytes):
            text = text.decode("utf-8")
        elif not isinstance(text, str):
            return _decoder.decode(text)  # its TypeError
        # JSONDecoder.decode, without its two regular expressions around the
        # scan when there is no whitespace to skip; anything it would refuse
        # goes to it, for its error and message.
        start = 0
        if text and text[0] in _WHITESPACE:
            start = len(text) - len(text.lstrip(_WHITESPACE))
        try:
            value, end = _scan(text, start)
        except StopIteration:
            return _decoder.decode(text)
        if end != len(text) and text[end:].strip(_WHITESPACE):
            return _decoder.decode(text)
        return value
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
    except UnicodeDecodeError:
        raise ValueError("not UTF-8") from None


def encoded_size(value: Any) -> int:
    """The UTF-8 size in bytes of ``value`` as it goes on the wire.

    A string counts as itself (publishers' ``data`` is relayed verbatim);
    anything else counts as its compact JSON encoding.
    """
    text = value if isinstance(value, str) else dumps(value)
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))
