from pathlib import Path

import pytest

from training.config import ConfigError, TrainConfig, load_config

CONFIGS = Path(__file__).resolve().parents[1] / "training" / "configs"


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.toml")), ids=lambda p: p.name)
def test_shipped_configs_load(path):
    config = load_config(path)
    assert config.router.kind in {"mlp", "mf", "encoder"}


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
