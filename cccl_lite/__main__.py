"""``python -m cccl_lite``: see :mod:`cccl_lite.cli`."""

import sys

from cccl_lite.cli import main

sys.exit(main())
