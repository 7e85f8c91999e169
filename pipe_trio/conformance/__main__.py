"""``python -m pipe_trio.conformance URL --app ID:KEY:SECRET ...``."""

import sys

from . import main

sys.exit(main())
