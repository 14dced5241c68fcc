"""The evaluation protocols behind the README's results tables, on the shared public routing data.

- ``routellm``: RouteLLM's MMLU responses (GPT-4 vs Mixtral) minus its contaminated prompts, 1,500
  training labels (train + validation), the other 12,537 prompts as test - RouteLLM's augmented-MMLU
  setting;
- ``mmlu-pro``: MMLU-Pro outcomes for 29 models, 70% train + validation / 30% test.

The data is read by path, never copied: from ``$ROUTER_ML_SHARED_DATA`` when set, else from
``../shared/data`` beside a source checkout.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

__all__ = ["protocols", "shared_data_dir"]


def shared_data_dir() -> Path:
    """Where the shared routing data lies: ``$ROUTER_ML_SHARED_DATA`` or ``<checkout>/../shared/data``."""
    env = os.environ.get("ROUTER_ML_SHARED_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"


def protocols(shared: str | Path | None = None) -> dict[str, dict[str, Any]]:
    """name -> ``{"data": path, "train_size": int | float, "exclude": path | None}``."""
    root = Path(shared) if shared is not None else shared_data_dir()
    return {
        "routellm": {"data": root / "routellm-mmlu" / "responses", "train_size": 1500,
                     "exclude": root / "routellm-mmlu" / "contaminated_prompts.jsonl"},
        "mmlu-pro": {"data": root / "mmlu-pro-29" / "mmlu_pro_29.parquet", "train_size": 0.7, "exclude": None},
    }
