"""``python -m tools.gpu_check``: the same as ``facefuse gpu-check``."""

import sys

from . import main

sys.exit(main())
