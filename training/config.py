"""Training configuration: frozen dataclasses loaded from TOML, overridable with ``--set``.

A config file has one table per section (``[data]``, ``[featurizer]``, ``[router]``, ``[loss]``,
``[train]``, ``[eval]``, ``[tracking]``); every key is optional and defaults below. Overrides use
dotted keys (``router.hidden=512``); unknown sections or keys are rejected with the list of valid
ones. ``to_flat()`` gives the ``section.key -> value`` dict that is logged to MLflow and saved with
the router, and ``from_flat`` reads it back.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from router_ml.errors import RouterMLError

__all__ = ["ConfigError", "TrainConfig", "load_config"]


class ConfigError(RouterMLError, ValueError):
    """A config file or override is invalid."""


@dataclass(frozen=True)
class DataConfig:
    train_size: float = 0.7        #: records (count) or share (fraction < 1) of train + validation
    val_size: float = 0.1          #: count or share of the train part held out for early stopping
    seed: int = 0                  #: split and training seed


@dataclass(frozen=True)
class FeaturizerConfig:
    name: str = "static"           #: static | minilm | path to a local encoder directory
    max_tokens: int = 256          #: longer prompts keep head and tail tokens
    batch_size: int = 64
    num_proc: int = 1


@dataclass(frozen=True)
class RouterConfig:
    kind: str = "mlp"              #: mlp | mf | encoder (see training.routers.ROUTERS)
    hidden: int = 512
    layers: int = 1
    dropout: float = 0.3
    ensemble: int = 1              #: members trained with seeds seed, seed+1, ...; their logits averaged
    model_dim: int = 64            #: mf: size of the learned model embeddings
    encoder: str = "minilm"        #: encoder: checkpoint directory (or "minilm")
    max_length: int = 256          #: encoder: tokens per prompt
    encoder_layers: int = 0        #: encoder: keep only the first N transformer layers (0 = all); faster
    groups: str = ""               #: mlp/mf: "task" or "metadata.<key>": blend in p(group | prompt) x group means
    group_weight: float = 0.5      #: mlp/mf with groups: weight of the group estimate in the blend


@dataclass(frozen=True)
class LossConfig:
    tradeoff_weight: float = 0.05  #: weight of the cost-aware regret term; 0 = plain quality loss
    temperature: float = 0.2       #: softness of the choice distribution in the regret term
    knob_samples: int = 8          #: willingness-to-pay values sampled per batch
    pairwise_weight: float = 1.0   #: weight of Bradley-Terry loss on preferences (mf)


@dataclass(frozen=True)
class TrainLoopConfig:
    epochs: int = 60
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 1e-4
    patience: int = 8              #: epochs without validation improvement before stopping
    device: str = "auto"           #: auto | cpu | cuda
    threads: int = 0               #: torch CPU threads; 0 = 1 for mlp/mf (tiny matrices), torch's default for encoder


@dataclass(frozen=True)
class EvalConfig:
    knob_points: int = 81          #: willingness-to-pay values in the cost-quality sweep
    n_boot: int = 200              #: bootstrap resamples for confidence intervals
    baselines: tuple[str, ...] = ("random", "best-single", "knn", "logreg", "oracle")


@dataclass(frozen=True)
class TrackingConfig:
    experiment: str = "router-ml"
    enabled: bool = True


@dataclass(frozen=True)
class TrainConfig:
    """The whole resolved configuration of one training run."""

    data: DataConfig = field(default_factory=DataConfig)
    featurizer: FeaturizerConfig = field(default_factory=FeaturizerConfig)
    router: RouterConfig = field(default_factory=RouterConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainLoopConfig = field(default_factory=TrainLoopConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def to_flat(self) -> dict[str, Any]:
        """``{"section.key": value}`` for every setting (tuples as lists)."""
        out = {}
        for section in fields(self):
            for f in fields(getattr(self, section.name)):
                value = getattr(getattr(self, section.name), f.name)
                out[f"{section.name}.{f.name}"] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_flat(cls, flat: dict[str, Any]) -> TrainConfig:
        nested: dict[str, dict[str, Any]] = {}
        for key, value in flat.items():
            section, _, name = key.partition(".")
            nested.setdefault(section, {})[name] = value
        return _build(nested, source="<flat config>")

    def replace(self, **overrides: Any) -> TrainConfig:
        """A copy with dotted-key overrides applied, e.g. ``replace(**{"loss.tradeoff_weight": 0})``."""
        flat = self.to_flat()
        for key, value in overrides.items():
            flat[key] = value
        return TrainConfig.from_flat(flat)


def _coerce(value: Any, target: Any, where: str) -> Any:
    kind = type(target)
    if isinstance(target, bool):
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in {"true", "false", "1", "0"}:
            return value.lower() in {"true", "1"}
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if isinstance(target, tuple):
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return tuple(str(v) for v in value)
    if kind in (int, float):
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        try:
            number = float(value) if isinstance(value, str) else value
        except ValueError:
            raise ConfigError(f"{where}: expected a number, got {value!r}") from None
        if not isinstance(number, int | float):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        if kind is int:
            if float(number) != int(number):
                raise ConfigError(f"{where}: expected a whole number, got {value!r}")
            return int(number)
        return float(number)
    if not isinstance(value, str):
        raise ConfigError(f"{where}: expected text, got {value!r}")
    return value


def _build(nested: dict[str, dict[str, Any]], *, source: str) -> TrainConfig:
    sections = {f.name: f for f in fields(TrainConfig)}
    unknown = set(nested) - set(sections)
    if unknown:
        raise ConfigError(f"{source}: unknown section(s) {sorted(unknown)}; valid: {sorted(sections)}")
    built = {}
    for name, f in sections.items():
        default = f.default_factory()  # type: ignore[misc]
        values = nested.get(name, {})
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: [{name}] must be a table")
        valid = {x.name: getattr(default, x.name) for x in fields(default)}
        bad = set(values) - set(valid)
        if bad:
            raise ConfigError(f"{source}: unknown key(s) {sorted(f'{name}.{b}' for b in bad)}; "
                              f"valid keys in [{name}]: {sorted(valid)}")
        built[name] = dataclasses.replace(
            default, **{k: _coerce(v, valid[k], f"{source}: {name}.{k}") for k, v in values.items()})
    return TrainConfig(**built)


def parse_override(text: str) -> tuple[str, str]:
    """Split ``section.key=value``; the value is coerced later against the field's type."""
    key, sep, value = text.partition("=")
    if not sep or "." not in key:
        raise ConfigError(f"--set expects SECTION.KEY=VALUE, got {text!r}")
    return key.strip(), value.strip()


def load_config(path: str | Path | None = None, overrides: list[str] | dict[str, Any] | None = None) -> TrainConfig:
    """Read a TOML config (or the defaults when ``path`` is None) and apply overrides.

    >>> load_config(None, ["router.hidden=512"]).router.hidden
    512
    """
    nested: dict[str, Any] = {}
    source = "<defaults>"
    if path is not None:
        source = str(path)
        try:
            nested = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"cannot read config {path}: {exc.strerror}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: invalid TOML: {exc}") from exc
    config = _build(nested, source=source)
    if overrides:
        pairs = overrides.items() if isinstance(overrides, dict) else map(parse_override, overrides)
        flat = config.to_flat()
        for key, value in pairs:
            if key not in flat:
                raise ConfigError(f"--set: unknown key '{key}'; valid keys: {', '.join(sorted(flat))}")
            flat[key] = value
        config = TrainConfig.from_flat(flat)
    return config
