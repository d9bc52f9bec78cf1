"""``python -m processors.cli``: the ``skyloop`` command (how the local stack starts workers)."""

import sys

from processors.cli import main

sys.exit(main())
