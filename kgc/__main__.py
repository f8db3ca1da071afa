"""``python -m kgc init|serve ...`` (see :mod:`kgc.cli`)."""

import sys

from kgc.cli import main

sys.exit(main())
