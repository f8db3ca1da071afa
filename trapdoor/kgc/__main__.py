"""``python -m trapdoor.kgc init|serve ...``: the ``kgc`` group of :mod:`trapdoor.kgc.cli`."""

from trapdoor.kgc.cli import kgc

kgc()
