import re
from pathlib import Path

import pytest

from training.config import BASELINE_NAMES, ConfigError, TrainConfig, load_config

CONFIGS = Path(__file__).resolve().parents[1] / "training" / "configs"


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.toml")), ids=lambda p: p.name)
def test_shipped_configs_load(path):
    config = load_config(path)
    assert config.router.kind in {"auto", "mlp", "mf", "encoder"}


def test_overrides_are_typed_and_round_trip():
    config = load_config(CONFIGS / "mlp_static.toml", ["router.hidden=512", "loss.tradeoff_weight=0",
                                                       "tracking.enabled=false", "eval.baselines=random,oracle",
                                                       "data.train_size=1500"])
    assert config.router.hidden == 512 and config.loss.tradeoff_weight == 0.0
    assert config.tracking.enabled is False and config.eval.baselines == ("random", "oracle")
    assert TrainConfig.from_flat(config.to_flat()) == config
    assert config.replace(**{"router.layers": 3}).router.layers == 3


@pytest.mark.parametrize("overrides, needle", [
    (["router.hiden=3"], "unknown key 'router.hiden'"),
    (["nosection=3"], "SECTION.KEY=VALUE"),
    (["router.hidden=wide"], "router.hidden: expected a number"),
    (["router.hidden=1.5"], "expected a whole number"),
    (["tracking.enabled=maybe"], "expected true or false"),
    (["train.epochs=inf"], "train.epochs: expected a whole number, got 'inf'"),  # once an OverflowError
    (["router.hidden=nan"], "router.hidden: expected a whole number, got 'nan'"),
])
def test_bad_overrides_are_rejected(overrides, needle):
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        load_config(None, overrides)


def test_unknown_keys_in_files_are_rejected(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[router]\nkind = 'mlp'\nhiden = 3\n")
    with pytest.raises(ConfigError, match=r"bad.toml: unknown key\(s\) \['router.hiden'\]"):
        load_config(bad)
    bad.write_text("[routr]\nkind = 'mlp'\n")
    with pytest.raises(ConfigError, match=r"unknown section\(s\) \['routr'\]"):
        load_config(bad)
    bad.write_text("[router\n")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_config(bad)


def test_importing_training_sets_no_seed():
    import subprocess
    import sys

    code = ("import torch; a = torch.initial_seed(); import training.pipeline, training.routers; "
            "print(a == torch.initial_seed())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"


@pytest.mark.parametrize("overrides, message", [
    # names
    (["router.kind=forest"], "router.kind: unknown router 'forest'; choose one of auto, encoder, mf, mlp"),
    (["router.kind=knn"], "router.kind: unknown router 'knn'"),  # a baseline, not a router to train
    (["featurizer.name=statik"], "featurizer.name: unknown featurizer 'statik'; choose one of minilm, static"),
    (["eval.baselines=random,best-single,knm"],
     "eval.baselines[2]: unknown baseline 'knm'; choose from random, best-single, knn, logreg, oracle"),
    (["eval.baselines=random,oracle,random"], "eval.baselines[2]: 'random' is listed twice"),
    (["router.groups=topic"], "router.groups: expected '', 'task' or 'metadata.<key>', got 'topic'"),
    (["router.groups=metadata."], "router.groups: expected"),
    (["router.encoder=bert-base-uncased"], "router.encoder: expected 'minilm' or the path of a local"),
    (["train.device=tpu"], "train.device: expected one of auto, cpu, cuda, got 'tpu'"),
    (["tracking.experiment= "], "tracking.experiment: expected a non-empty"),
    # ranges
    (["data.train_size=0"], "data.train_size: expected a fraction in (0, 1) or a whole count >= 1, got 0.0"),
    (["data.train_size=1.5"], "data.train_size: expected a fraction in (0, 1) or a whole count >= 1, got 1.5"),
    (["data.val_size=-0.1"], "data.val_size: expected 0, a fraction in (0, 1) or a whole count, got -0.1"),
    (["data.seed=-1"], "data.seed: expected an integer >= 0"),
    (["featurizer.max_tokens=0"], "featurizer.max_tokens: expected an integer >= 1, got 0"),
    (["featurizer.num_proc=-1"], "featurizer.num_proc: expected an integer >= 0"),
    (["router.hidden=0"], "router.hidden: expected an integer >= 1, got 0"),
    (["router.layers=-1"], "router.layers: expected an integer >= 0"),
    (["router.dropout=1"], "router.dropout: expected a probability in [0, 1), got 1.0"),
    (["router.ensemble=0"], "router.ensemble: expected an integer >= 1"),
    (["router.max_length=2"], "router.max_length: expected an integer >= 3"),
    (["router.group_weight=1.5"], "router.group_weight: expected a weight in [0, 1], got 1.5"),
    (["loss.temperature=0"], "loss.temperature: expected a number > 0"),
    (["loss.tradeoff_weight=-1"], "loss.tradeoff_weight: expected a number >= 0"),
    (["train.epochs=0"], "train.epochs: expected an integer >= 1, got 0"),
    (["train.lr=0"], "train.lr: expected a number > 0, got 0.0"),
    (["train.lr=nan"], "train.lr: expected a number > 0, got nan"),
    (["train.batch_size=0"], "train.batch_size: expected an integer >= 1"),
    (["train.patience=0"], "train.patience: expected an integer >= 1"),
    (["eval.knob_points=1"], "eval.knob_points: expected an integer >= 2"),
    (["eval.knob_refine=-1"], "eval.knob_refine: expected an integer >= 0"),
    (["eval.n_boot=-5"], "eval.n_boot: expected an integer >= 0"),
    # combinations
    (["router.kind=encoder", "router.groups=task"], "router.groups: works with the mlp and mf routers"),
])
def test_bad_values_fail_at_load_naming_the_key(overrides, message):
    with pytest.raises(ConfigError, match=re.escape(f"{CONFIGS / 'mlp_static.toml'} with --set: {message}")):
        load_config(CONFIGS / "mlp_static.toml", overrides)


def test_every_way_in_validates(tmp_path):
    """A saved flat config, ``replace`` and a config file are checked like overrides, each naming its source."""
    flat = load_config(None).to_flat()
    with pytest.raises(ConfigError, match=re.escape("<flat config>: eval.baselines[0]: unknown baseline 'nope'")):
        TrainConfig.from_flat({**flat, "eval.baselines": ["nope"]})
    with pytest.raises(ConfigError, match=re.escape("router.dropout: expected a probability in [0, 1), got 2.0")):
        load_config(None).replace(**{"router.dropout": 2})
    bad = tmp_path / "bad.toml"
    bad.write_text("[router]\nkind = 'encoder'\ngroups = 'task'\n")
    with pytest.raises(ConfigError, match=re.escape(f"{bad}: router.groups: works with the mlp and mf routers")):
        load_config(bad)
    # an override may mend the file: the combination that results is what is checked
    assert load_config(bad, ["router.kind=mlp"]).router.groups == "task"


def test_model_directories_must_exist_in_a_config_but_not_in_a_saved_one(tmp_path):
    missing = str(tmp_path / "no-such-model")
    with pytest.raises(ConfigError, match=re.escape(f"featurizer.name: '{missing}' is not a directory")):
        load_config(None, [f"featurizer.name={missing}"])
    with pytest.raises(ConfigError, match=re.escape(f"router.encoder: '{missing}' is not a directory")):
        load_config(None, ["router.kind=encoder", f"router.encoder={missing}"])
    assert load_config(None, [f"router.encoder={missing}"]).router.encoder == missing  # unused by an mlp
    assert load_config(None, [f"featurizer.name={tmp_path}"]).featurizer.name == str(tmp_path)
    # a checkpoint's saved config still loads after its model directory moved
    saved = {**load_config(None).to_flat(), "router.kind": "encoder", "router.encoder": missing}
    assert TrainConfig.from_flat(saved).router.encoder == missing


def test_the_baseline_names_are_one_list():
    assert TrainConfig().eval.baselines == BASELINE_NAMES
    assert load_config(None, [f"eval.baselines={','.join(BASELINE_NAMES)}"]).eval.baselines == BASELINE_NAMES


def test_every_numeric_setting_has_a_range():
    """A new numeric key must say what it accepts, or it would load unchecked."""
    from training.config import _RANGES

    numeric = {k for k, v in TrainConfig().to_flat().items() if isinstance(v, int | float) and not isinstance(v, bool)}
    assert numeric == set(_RANGES)


def test_files_saved_with_a_byte_order_mark_read_as_without(tmp_path):
    """Editors on some systems put a UTF-8 byte-order mark in front of a file they save; TOML and JSON
    parsers reject it, so every text file router-ml reads drops it: configs, price and provider catalogs,
    variants files and exclude lists."""
    from router_ml import PriceCatalog, ProviderCatalog
    from router_ml.variants import read_variants_file
    from training.data import load_exclude_list, normalize_prompt

    root = Path(__file__).resolve().parents[1]
    files = {"config.toml": (root / "training/configs/mlp_static.toml").read_text(),
             "prices.json": '{"m": {"input_per_mtok": 1.0, "output_per_mtok": 2.0}}',
             "providers.toml": (root / "data/demo/providers.toml").read_text(),
             "variants.toml": '[variants.a]\nartifact = "r"\nweight = 1\n',
             "exclude.jsonl": '{"prompt": "Some prompt"}\n'}
    for name, text in files.items():
        (tmp_path / name).write_text(text, encoding="utf-8-sig")
    assert load_config(tmp_path / "config.toml").router.kind == "mlp"
    assert PriceCatalog.load(tmp_path / "prices.json").to_dict() == PriceCatalog.load(
        _plain(tmp_path, "prices.json", files)).to_dict()
    assert list(ProviderCatalog.load(tmp_path / "providers.toml")) == list(ProviderCatalog.load(
        _plain(tmp_path, "providers.toml", files)))
    assert [(v.name, v.weight) for v in read_variants_file(tmp_path / "variants.toml")] == [("a", 1.0)]
    assert load_exclude_list(tmp_path / "exclude.jsonl") == {normalize_prompt("Some prompt")}


def _plain(tmp_path: Path, name: str, files: dict) -> Path:
    path = tmp_path / f"plain-{name}"
    path.write_text(files[name], encoding="utf-8")
    return path


def test_a_shipped_config_is_found_by_name_and_a_missing_one_lists_them(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    by_name = load_config("mlp_static")
    assert by_name == load_config(Path(__file__).parents[1] / "training/configs/mlp_static.toml")
    assert by_name.router.kind == "mlp" and load_config("auto").router.kind == "auto"
    with pytest.raises(ConfigError, match=r"cannot read config mlp_statc: .*shipped config: auto, encoder, "
                                          r"encoder_fast, mf, mlp_minilm, mlp_static"):
        load_config("mlp_statc")
    (tmp_path / "mlp_static").write_text('[router]\nkind = "mf"\n')  # a file of that name wins
    assert load_config("mlp_static").router.kind == "mf"


def test_a_config_that_is_not_utf8_or_holds_inf_for_a_whole_number_is_an_error_naming_the_file(tmp_path):
    """A UTF-16 config (as some editors save) was a UnicodeDecodeError traceback, `epochs = inf` an
    OverflowError."""
    shipped = (Path(__file__).resolve().parents[1] / "training/configs/mlp_static.toml").read_text()
    utf16 = tmp_path / "utf16.toml"
    utf16.write_text(shipped, encoding="utf-16")
    with pytest.raises(ConfigError, match=rf"{re.escape(str(utf16))}: not UTF-8 text .*save it as UTF-8"):
        load_config(utf16)
    inf = tmp_path / "inf.toml"
    inf.write_text("[train]\nepochs = inf\n")
    with pytest.raises(ConfigError, match=r"train.epochs: expected a whole number, got inf"):
        load_config(inf)


def test_train_device_cuda_without_a_cuda_device_is_an_error_before_the_data_is_read(tmp_path):
    import torch

    from router_ml.errors import RouterMLError
    from training.pipeline import train_router

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device: train.device = cuda is right here")
    config = load_config(None, ["train.device=cuda", "tracking.enabled=false"])
    with pytest.raises(RouterMLError, match='train.device = "cuda": this machine has no CUDA device'):
        train_router(config, tmp_path / "missing.jsonl", out_dir=tmp_path / "out", progress=False)
