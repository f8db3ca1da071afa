"""``python -m param_server serve ...`` (see :mod:`param_server.cli`)."""

import sys

from param_server.cli import main

sys.exit(main())
