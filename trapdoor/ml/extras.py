"""Optional dependencies, imported only where they are needed, with one error that names the extra.

A participant node's core install carries no plotting, data-set or benchmark packages:
the bundled data sets and the demo's plot come with the ``demo`` extra, PyTorch with
``torch``. Code that needs one imports it inside :func:`needs_extra`, so a missing package
says which extra to install instead of ending in a bare ``ModuleNotFoundError``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["DISTRIBUTION", "MissingExtraError", "needs_extra"]

DISTRIBUTION = "trapdoor-fl"


class MissingExtraError(ImportError):
    """An optional package is not installed; the message says which extra brings it."""


@contextmanager
def needs_extra(extra: str, purpose: str) -> Iterator[None]:
    """Turn a ``ModuleNotFoundError`` raised by the imports in the block into a
    :class:`MissingExtraError` naming ``extra``; ``purpose`` says what needed it.

    Only a missing module is translated: any other error of a package that is installed
    but broken propagates unchanged.
    """
    try:
        yield
    except ModuleNotFoundError as exc:
        raise MissingExtraError(
            f"{purpose} needs {exc.name or 'a package'}, which comes with the {extra!r} extra: "
            f"pip install '{DISTRIBUTION}[{extra}]' (from a checkout: pip install -e '.[{extra}]')",
            name=exc.name,
        ) from exc
