"""Router variants: a registry from name to class.

Learned routers predict every candidate model's quality for a prompt; the policy in
:mod:`router_ml.policy` turns predictions and prices into a choice. Baselines that need no
training (``random``, ``best-single``, ``oracle``) are computed in :mod:`training.baselines`.
"""

from training.routers.auto import AutoRouter
from training.routers.baselines import KNNRouter, LogRegRouter
from training.routers.neural import EncoderRouter, MFRouter, MLPRouter, TorchRouter

#: name -> router class (learned routers and the trainable baselines).
ROUTERS = {
    "mlp": MLPRouter,
    "mf": MFRouter,
    "encoder": EncoderRouter,
    "knn": KNNRouter,
    "logreg": LogRegRouter,
    "auto": AutoRouter,
}

__all__ = ["ROUTERS", "AutoRouter", "EncoderRouter", "KNNRouter", "LogRegRouter", "MFRouter", "MLPRouter",
           "TorchRouter"]
