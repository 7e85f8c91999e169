"""JSON in and out, the same way everywhere in the core.

Output is compact (no spaces), as pusher-js and the Pusher docs write it, and
ASCII-escaped so that a lone surrogate smuggled in through a ``\\ud800``
escape can never make a later UTF-8 encode fail. Input rejects the
non-standard constants Python accepts (``NaN``, ``Infinity``) and turns every
way ``json.loads`` can fail, including deep nesting, into ``ValueError``.
"""

from __future__ import annotations

import json
from typing import Any

_encoder = json.JSONEncoder(separators=(",", ":"), allow_nan=False)
dumps = _encoder.encode


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


_decoder = json.JSONDecoder(parse_constant=_no_constants)


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
