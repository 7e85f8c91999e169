"""Fuzz targets run with the test suite under a bounded profile (``FUZZ_PROFILE``, see fuzz/_support.py)."""

from __future__ import annotations

import fuzz._support  # noqa: F401  (registers the Hypothesis profiles)
