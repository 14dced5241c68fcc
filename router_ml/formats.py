"""Reading the versioned JSON files router-ml writes, by one rule.

Every saved format carries a version (``format_version``; the artifact manifest, ``router.json``,
``metrics.json``, the parity sample, decision-log lines) and every reader checks it with
:func:`read_versioned`: a file of another format or version is refused with its path, the version
found, the version this router-ml reads, and what to do. Formats that existed before versions were
written (``legacy=True``) read a missing version as version 1 - refusing them would orphan every file
written so far.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from router_ml.errors import RouterMLError

__all__ = ["VERSION_FIELD", "read_versioned"]

#: the key that holds a saved format's version number
VERSION_FIELD = "format_version"


def read_versioned(path: str | Path, *, what: str, version: int, fix: str, fmt: str | None = None,
                   legacy: bool = False, error: type[Exception] = RouterMLError) -> dict[str, Any]:
    """Return the JSON object in ``path`` after checking its ``format`` (when ``fmt`` is given) and version.

    ``what`` names the file for messages ("router artifact"), ``fix`` says what to do about another
    version ("re-export the router"), ``error`` is the exception type raised.

    >>> read_versioned("missing/router.json", what="router checkpoint", version=1, fix="retrain")
    Traceback (most recent call last):
    router_ml.errors.RouterMLError: missing: not a router checkpoint (no router.json)
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise error(f"{path.parent}: not a {what} (no {path.name})") from None
    except NotADirectoryError:  # a file where the directory belongs: router.json given for its checkpoint
        raise error(f"{path.parent}: a file, not a {what} directory; give the directory that holds "
                    f"{path.name}") from None
    except (OSError, ValueError) as exc:
        raise error(f"{path}: unreadable {what} ({exc})") from exc
    if not isinstance(data, dict):
        raise error(f"{path}: not a {what} (expected a JSON object)")
    if fmt is not None and data.get("format", fmt if legacy else None) != fmt:
        raise error(f"{path}: not a {fmt} file (format {data.get('format')!r})")
    found = data.get(VERSION_FIELD, 1 if legacy else None)
    if found != version:
        raise error(f"{path}: {what} format version {found!r}; this router-ml reads version {version} - "
                    f"upgrade router-ml or {fix}")
    return data
