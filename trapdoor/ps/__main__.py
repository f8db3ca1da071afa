"""``python -m trapdoor.ps serve ...`` (see :mod:`trapdoor.ps.cli`)."""

import sys

from trapdoor.ps.cli import main

sys.exit(main())
