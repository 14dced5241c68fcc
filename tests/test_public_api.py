import subprocess
import sys

import router_ml
import training.data


def test_all_is_sorted_and_complete():
    for module in (router_ml, training.data):
        assert list(module.__all__) == sorted(module.__all__)
        for name in module.__all__:
            assert hasattr(module, name), name
        public = {n for n in vars(module) if not n.startswith("_") and not isinstance(
            getattr(module, n), type(sys))}
        assert public <= set(module.__all__), public - set(module.__all__)


def test_import_router_ml_stays_light():
    code = ("import sys, router_ml, router_ml.cli, router_ml.client, router_ml.serve, router_ml.providers; "
            "heavy = [m for m in ('torch', 'transformers', 'datasets', 'mlflow', 'sklearn', "
            "'pyarrow', 'pandas', 'training', 'starlette', 'uvicorn') if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
