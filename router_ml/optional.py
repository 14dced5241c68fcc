"""Deferred imports: optional dependencies with an error that names the extra to install, and
package attributes imported on first use.

Shared by the runtime (the ``serve`` extra, ``router_ml/__init__.py``) and the training package
(the ``train`` extra, ``training/__init__.py``), so it is a public module rather than a private
one; it is not part of ``router_ml.__all__``.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from types import ModuleType

from router_ml.errors import RouterMLError

__all__ = ["lazy_attributes", "require"]


def require(module: str, *, extra: str = "train", purpose: str = "this") -> ModuleType:
    """Import ``module`` or raise :class:`RouterMLError` naming the extra that provides it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise RouterMLError(
            f'{purpose} needs {module.split(".")[0]}, which is not installed: pip install "router-ml[{extra}]"'
        ) from exc


def lazy_attributes(package: str, homes: Mapping[str, str]) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """A package's ``__getattr__`` and ``__dir__`` (PEP 562) that import each name from its home module on first use.

    ``homes`` maps a public name to the module that defines it. A package re-exports names this
    way when importing their modules eagerly would cost every user (httpx for the routed client;
    torch for the training pipeline, which ``router-ml route`` must not pay for).

    >>> __getattr__, __dir__ = lazy_attributes(__name__, {"RoutedClient": "router_ml.client"})
    """
    namespace = sys.modules[package].__dict__

    def __getattr__(name: str) -> object:
        if name not in homes:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(homes[name]), name)
        namespace[name] = value  # later lookups find it without calling this function
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(namespace.get("__all__", ())))

    return __getattr__, __dir__
