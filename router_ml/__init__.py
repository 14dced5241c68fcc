"""router-ml: learned LLM routing.

The runtime package: it needs numpy, onnxruntime, tokenizers and httpx only, and importing it
never imports torch, transformers, datasets or mlflow. Training lives in the ``training`` package
(``pip install "router-ml[train]"``).

``__all__`` is the public surface (``tests/test_public_api.py`` keeps it honest): the router and
its decisions, prices, the provider catalog, the routed clients, the decision log, the errors and
the :mod:`router_ml.metrics` module. The routed clients and their errors are imported on first
use: they bring httpx and asyncio, which a process that only routes (``Router``) never needs.

>>> from router_ml import Router, RoutedClient, metrics
"""

import typing

from router_ml import metrics
from router_ml.decision_log import DecisionLog, FeedbackError
from router_ml.errors import CatalogError, DataError, RouterMLError
from router_ml.exploration import Exploration
from router_ml.messages import routed_text
from router_ml.optional import lazy_attributes as _lazy_attributes
from router_ml.pricing import ModelPrice, PriceCatalog
from router_ml.providers import ProviderCatalog
from router_ml.router import ArtifactError, Decision, Router
from router_ml.scorer import AnswerScorer

if typing.TYPE_CHECKING:
    from router_ml.client import AsyncRoutedClient, RequestError, RoutedClient, StreamInterrupted, UpstreamError

__version__ = "0.1.0"

__all__ = [
    "AnswerScorer",
    "ArtifactError",
    "AsyncRoutedClient",
    "CatalogError",
    "DataError",
    "Decision",
    "DecisionLog",
    "Exploration",
    "FeedbackError",
    "ModelPrice",
    "PriceCatalog",
    "ProviderCatalog",
    "RequestError",
    "RoutedClient",
    "Router",
    "RouterMLError",
    "StreamInterrupted",
    "UpstreamError",
    "__version__",
    "metrics",
    "routed_text",
]

# name -> the module it is imported from on first use (PEP 562)
_LAZY = {name: "router_ml.client" for name in
         ("AsyncRoutedClient", "RequestError", "RoutedClient", "StreamInterrupted", "UpstreamError")}

__getattr__, __dir__ = _lazy_attributes(__name__, _LAZY)
