"""The README's first example of the core runs and prints what it says."""

from __future__ import annotations

import doctest
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_first_screen_example_is_true() -> None:
    """The README's ``>>>`` block of the core gives exactly the outputs it shows."""
    blocks = re.findall(r"```python\n(>>> .*?)```", README.read_text(encoding="utf-8"), re.S)
    assert blocks, "the README shows the core in a >>> block"
    test = doctest.DocTestParser().get_doctest(blocks[0], {}, "README", str(README), 0)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    result = runner.run(test)
    assert result.attempted >= 5 and result.failed == 0
