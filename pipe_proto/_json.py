"""The former name of :mod:`pipe_proto.jsontext`, for modules not yet moved to it."""

from .jsontext import dumps, encoded_size, loads

__all__ = ["dumps", "encoded_size", "loads"]
