"""The exception hierarchy of router-ml.

Every error that router-ml raises on purpose derives from :class:`RouterMLError`, so callers can
catch one type. Messages say what was wrong, where (file, line or row, field) and what to do.
"""

from __future__ import annotations

__all__ = ["CatalogError", "DataError", "RouterMLError", "UsageError"]


class RouterMLError(Exception):
    """Base class of every error router-ml raises on purpose."""


class UsageError(RouterMLError):
    """Command-line flags that do not go together (or lack one they need), found before anything is read:
    the CLI exits 2 for it, as argparse does for a flag it refuses."""


class DataError(RouterMLError, ValueError):
    """Input data is malformed or cannot be read.

    ``location`` is the place in the input (``"path:line"`` or ``"path row N"``) when known and
    ``field`` names the offending field, so tools can point at it without parsing the message.
    """

    def __init__(self, message: str, *, location: str | None = None, field: str | None = None):
        self.location = location
        self.field = field
        self.reason = message
        prefix = f"{location}: " if location else ""
        where = f"field '{field}': " if field else ""
        super().__init__(f"{prefix}{where}{message}")


class CatalogError(RouterMLError, ValueError):
    """A price catalog is malformed or lacks a model that was asked for."""
