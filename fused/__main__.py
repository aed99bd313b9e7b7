"""``python -m fused`` is the ``facefuse`` command (:mod:`fused.cli`)."""

import sys

from .cli import main

sys.exit(main())
