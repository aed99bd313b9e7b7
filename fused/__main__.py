"""``python -m fused`` is the ``facefuse`` command (:mod:`fused.measure.cli`)."""

import sys

from .measure.cli import main

sys.exit(main())
