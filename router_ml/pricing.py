"""Price catalogs: USD per million input and output tokens for each model.

A catalog is a JSON or TOML file with one table per model::

    ["gpt-4o-mini"]                  # TOML; JSON: {"gpt-4o-mini": {"input_per_mtok": 0.15, ...}}
    input_per_mtok = 0.15
    output_per_mtok = 0.60

Prices change more often than routers are retrained, so the runtime reads them at decision time
and training uses them only where a record logs tokens but no cost.
"""

from __future__ import annotations

import json
import math
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from router_ml._numbers import is_number
from router_ml.errors import CatalogError

__all__ = ["ModelPrice", "PriceCatalog"]


@dataclass(frozen=True, slots=True)
class ModelPrice:
    """Prices of one model in USD per million tokens."""

    input_per_mtok: float
    output_per_mtok: float

    def __post_init__(self) -> None:
        for key in ("input_per_mtok", "output_per_mtok"):
            _check_price(getattr(self, key), f"ModelPrice: '{key}'")

    def cost(self, input_tokens: float, output_tokens: float) -> float:
        """Return the cost in USD of one call with the given token counts."""
        return (input_tokens * self.input_per_mtok + output_tokens * self.output_per_mtok) / 1e6


def _check_price(value: object, where: str) -> None:
    if not is_number(value):
        raise CatalogError(f"{where} must be a number of USD per 1M tokens, got {value!r}")
    if not math.isfinite(value) or value < 0:
        raise CatalogError(f"{where} must be finite and >= 0, got {value!r}")


class PriceCatalog(Mapping[str, ModelPrice]):
    """A read-only mapping from model name to :class:`ModelPrice`.

    >>> catalog = PriceCatalog({"m": {"input_per_mtok": 1.0, "output_per_mtok": 2.0}})
    >>> catalog.cost("m", input_tokens=1000, output_tokens=500)
    0.002
    """

    def __init__(self, prices: Mapping[str, Mapping[str, float] | ModelPrice], *, source: str = "<dict>"):
        self.source = source
        parsed: dict[str, ModelPrice] = {}
        for model, entry in prices.items():
            if isinstance(entry, ModelPrice):
                parsed[str(model)] = entry
                continue
            if not isinstance(entry, Mapping):
                raise CatalogError(
                    f"{source}: model '{model}': expected a table with input_per_mtok and "
                    f"output_per_mtok, got {type(entry).__name__}"
                )
            values = []
            for key in ("input_per_mtok", "output_per_mtok"):
                value = entry.get(key)
                _check_price(value, f"{source}: model '{model}': '{key}'")
                values.append(float(value))
            parsed[str(model)] = ModelPrice(*values)
        self._prices = parsed

    @classmethod
    def load(cls, path: str | Path) -> PriceCatalog:
        """Read a catalog from a ``.json`` or ``.toml`` file."""
        path = Path(path)
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise CatalogError(f"cannot read price catalog {path}: {exc.strerror}") from exc
        try:
            if path.suffix.lower() == ".toml":
                data = tomllib.loads(raw.decode("utf-8-sig"))
            else:
                data = json.loads(raw.decode("utf-8-sig"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise CatalogError(f"{path}: not a valid JSON/TOML price catalog: {exc}") from exc
        if not isinstance(data, dict):
            raise CatalogError(f"{path}: a price catalog must map model names to price tables")
        return cls(data, source=str(path))

    def __getitem__(self, model: str) -> ModelPrice:
        try:
            return self._prices[model]
        except KeyError:
            raise CatalogError(
                f"{self.source}: no price for model '{model}'; add it to the catalog"
            ) from None

    def __contains__(self, model: object) -> bool:
        # Mapping's default asks __getitem__ and catches KeyError only: an unpriced model would raise
        return model in self._prices

    def __iter__(self) -> Iterator[str]:
        return iter(self._prices)

    def __len__(self) -> int:
        return len(self._prices)

    def cost(self, model: str, *, input_tokens: float, output_tokens: float) -> float:
        """Return the cost in USD of one call to ``model``."""
        return self[model].cost(input_tokens, output_tokens)

    def to_dict(self) -> dict[str, dict[str, float]]:
        """Return the catalog as plain data (the JSON file layout)."""
        return {
            m: {"input_per_mtok": p.input_per_mtok, "output_per_mtok": p.output_per_mtok}
            for m, p in self._prices.items()
        }
