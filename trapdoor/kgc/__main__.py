"""``python -m trapdoor.kgc init|serve ...`` (see :mod:`trapdoor.kgc.cli`)."""

import sys

from trapdoor.kgc.cli import main

sys.exit(main())
