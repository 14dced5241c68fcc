"""router-ml training: train, evaluate, compare and export learned routers (``pip install "router-ml[train]"``).

``__all__`` is the public surface of the pipeline (``tests/test_public_api.py`` keeps it honest);
the data layer is :mod:`training.data`. Every name is imported on first use (PEP 562): importing
``training`` - and so ``training.cli``, which the ``router-ml`` script loads for every command -
does not import torch, transformers or mlflow, and a missing ``train`` extra surfaces only in the
command that needs it, with the extra to install.

>>> from training import load_config, train_router
>>> summary = train_router(load_config("training/configs/mlp_static.toml"), "data/demo/traffic.jsonl",
...                        out_dir="models/demo")
"""

import typing

from router_ml.optional import lazy_attributes as _lazy_attributes

if typing.TYPE_CHECKING:
    from training.compare import compare_runs
    from training.config import ConfigError, TrainConfig, load_config
    from training.export import ExportError, export_router
    from training.pipeline import evaluate_many, evaluate_router, train_router
    from training.sweep import run_sweep

__all__ = [
    "ConfigError",
    "ExportError",
    "TrainConfig",
    "compare_runs",
    "evaluate_many",
    "evaluate_router",
    "export_router",
    "load_config",
    "run_sweep",
    "train_router",
]

# name -> the module it is imported from on first use
_LAZY = {
    "ConfigError": "training.config",
    "ExportError": "training.export",
    "TrainConfig": "training.config",
    "compare_runs": "training.compare",
    "evaluate_many": "training.pipeline",
    "evaluate_router": "training.pipeline",
    "export_router": "training.export",
    "load_config": "training.config",
    "run_sweep": "training.sweep",
    "train_router": "training.pipeline",
}
__getattr__, __dir__ = _lazy_attributes(__name__, _LAZY)
