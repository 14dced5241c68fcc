"""Importing optional dependencies with an error that says which extra to install.

Shared by the runtime (the ``serve`` extra) and the training package (the ``train`` extra), so it
is a public module rather than a private one; it is not part of ``router_ml.__all__``.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from router_ml.errors import RouterMLError

__all__ = ["require"]


def require(module: str, *, extra: str = "train", purpose: str = "this") -> ModuleType:
    """Import ``module`` or raise :class:`RouterMLError` naming the extra that provides it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise RouterMLError(
            f'{purpose} needs {module.split(".")[0]}, which is not installed: pip install "router-ml[{extra}]"'
        ) from exc
