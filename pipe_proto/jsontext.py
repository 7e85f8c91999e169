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
from typing import Any

__all__ = ["dumps", "encoded_size", "loads"]

_encoder = json.JSONEncoder(separators=(",", ":"), allow_nan=False)
#: ``dumps(value) -> str``: compact, ASCII-escaped JSON text; ``ValueError`` for
#: NaN or infinities. The encoder's bound method itself, as it is on every
#: frame's path.
dumps = _encoder.encode


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite(text: str) -> float:
    # 1e400 is valid JSON but a float overflows to inf, which no encoder writes back.
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"number {text[:20]} is out of range")
    return value


_decoder = json.JSONDecoder(parse_constant=_no_constants, parse_float=_finite)


def loads(text: str | bytes) -> Any:
    """Parse one JSON document.

    Raises:
        ValueError: ``text`` is not one JSON document (including nesting too
            deep for the parser and non-UTF-8 bytes).
    """
    try:
        if isinstance(text, bytes):
            text = text.decode("utf-8")
        return _decoder.decode(text)
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
