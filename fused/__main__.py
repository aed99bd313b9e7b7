"""``python -m fused`` is the ``facefuse`` command."""

import sys

from .cli import main

sys.exit(main())
