"""router-ml: learned LLM routing.

The runtime package: it needs numpy, onnxruntime, tokenizers and httpx only, and importing it
never imports torch, transformers, datasets or mlflow. Training lives in the ``training`` package
(``pip install "router-ml[train]"``).
"""

from router_ml.errors import CatalogError, DataError, RouterMLError
from router_ml.messages import routed_text
from router_ml.pricing import ModelPrice, PriceCatalog
from router_ml.router import ArtifactError, Decision, Router

__version__ = "0.1.0"

__all__ = [
    "ArtifactError",
    "CatalogError",
    "DataError",
    "Decision",
    "ModelPrice",
    "PriceCatalog",
    "Router",
    "RouterMLError",
    "__version__",
    "routed_text",
]
