"""``python -m server ...`` is ``nstudio ...``."""

import sys

from .cli import main

sys.exit(main())
