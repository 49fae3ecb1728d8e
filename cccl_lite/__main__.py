"""``python -m cccl_lite``: see :mod:`cccl_lite.cli`."""

import sys

from .cli import main

sys.exit(main())
