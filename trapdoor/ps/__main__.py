"""``python -m trapdoor.ps enrol|serve ...``: the ``ps`` group of :mod:`trapdoor.ps.cli`."""

from trapdoor.ps.cli import ps

ps()
