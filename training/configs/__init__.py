"""The TOML configs shipped with the package, and the one the training commands read by default.

A module of its own (paths only) so that ``router-ml``'s parser, which every command builds, can name
the default without importing the training stack.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["CONFIGS_DIR", "DEFAULT_CONFIG", "packaged_config"]

#: the TOML configs shipped with the package (``training/configs``)
CONFIGS_DIR = Path(__file__).resolve().parent
#: what ``train``, ``simulate-log``, ``sweep`` and ``featurize`` read when no ``--config`` is given: the
#: self-selecting router. (``TrainConfig()`` in code stays the plain building-block defaults: an MLP.)
DEFAULT_CONFIG = CONFIGS_DIR / "auto.toml"


def packaged_config(name: str) -> Path:
    """The path of a shipped config by name (``"encoder_fast"`` -> ``training/configs/encoder_fast.toml``)."""
    return CONFIGS_DIR / f"{name}.toml"
