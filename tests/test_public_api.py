"""The public surface of each package users import: ``__all__`` is written out here, so adding or
removing a public name is a deliberate change to this file, not an accident."""

import importlib
import json
import subprocess
import sys
import types

import pytest

EXPECTED = {
    "router_ml": [
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
    ],
    "training": [
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
    ],
    "training.data": [
        "FORMATS",
        "FORMAT_VERSION",
        "LoadReport",
        "Outcome",
        "Preference",
        "Record",
        "RecordError",
        "Split",
        "TrafficTable",
        "build_record",
        "detect_format",
        "load_exclude_list",
        "load_traffic",
        "normalize_prompt",
        "split_table",
        "write_jsonl",
        "write_parquet",
    ],
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_all_is_the_expected_sorted_list_and_every_name_resolves(name):
    module = importlib.import_module(name)
    assert list(module.__all__) == sorted(module.__all__)
    assert list(module.__all__) == EXPECTED[name]
    for public in module.__all__:
        assert getattr(module, public) is not None, public
        assert public in dir(module), public
    # nothing public-looking is defined or imported at module level without being listed
    unlisted = {n for n, v in vars(module).items() if not n.startswith("_") and not isinstance(v, types.ModuleType)}
    assert unlisted <= set(module.__all__), unlisted - set(module.__all__)
    with pytest.raises(AttributeError, match="no attribute 'not_a_name'"):
        module.not_a_name  # noqa: B018


def test_the_readme_names_resolve_to_their_home_modules():
    import router_ml
    import training
    from router_ml import client, decision_log, providers

    assert router_ml.RoutedClient is client.RoutedClient
    assert router_ml.AsyncRoutedClient is client.AsyncRoutedClient
    assert router_ml.UpstreamError is client.UpstreamError
    assert router_ml.ProviderCatalog is providers.ProviderCatalog
    assert router_ml.DecisionLog is decision_log.DecisionLog
    assert router_ml.metrics is importlib.import_module("router_ml.metrics")
    assert callable(router_ml.metrics.aiq)
    from training.pipeline import train_router

    assert training.train_router is train_router


def fresh(code: str) -> str:
    """What ``code`` prints in a fresh interpreter (nothing imported before it)."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()


def test_star_imports_give_exactly_all():
    printed = fresh("import json\nout = []\nfor name in ('router_ml', 'training'):\n    ns = {}\n"
                    "    exec(f'from {name} import *', ns)\n"
                    "    out.append(sorted(k for k in ns if k != '__builtins__'))\n"
                    "print(json.dumps(out))")
    assert json.loads(printed) == [EXPECTED["router_ml"], EXPECTED["training"]]


HEAVY = ("torch", "transformers", "datasets", "mlflow", "sklearn", "pyarrow", "pandas")


@pytest.mark.parametrize(("imports", "absent"), [
    ("router_ml, router_ml.cli, router_ml.client, router_ml.serve, router_ml.providers",
     (*HEAVY, "training", "starlette", "uvicorn")),
    # the script loads training.cli for every command: it must not pull the training stack in
    ("training, training.cli, router_ml.cli", (*HEAVY, "training.pipeline", "training.data")),
    # a process that only routes never loads the routed clients' httpx/asyncio
    ("router_ml; from router_ml import Router, metrics, DecisionLog, ProviderCatalog",
     ("httpx", "asyncio", "router_ml.client")),
])
def test_imports_stay_light(imports, absent):
    assert fresh(f"import sys, {imports}; print([m for m in {absent!r} if m in sys.modules])") == "[]"


def test_the_routed_client_loads_on_first_use():
    assert fresh("import sys; from router_ml import RoutedClient; print('httpx' in sys.modules)") == "True"
