"""The former home of :func:`router_ml.optional.require`.

Kept only while ``router_ml/serve.py`` and ``training/featurizers`` still import it from here;
delete it once they import :mod:`router_ml.optional`.
"""

from router_ml.optional import require

__all__ = ["require"]
